"""
Keep-alives to NAT'ed UDP phones: C{--keepalive SECONDS}.

A phone behind NAT that registered over UDP is reached at the public
side of its NAT binding (its UDP flow, L{sipleg.flows}); the NAT forgets
that binding after a quiet minute or so, and calls no longer reach the
phone.  So each UDP flow of a live registration gets a keep-alive every
C{interval} seconds: the four bytes C{"\\r\\n\\r\\n"}, as Kamailio's
nathelper sends to phones that do not speak RFC 5626 (their SIP stacks
ignore it, as ours does; RFC 5626 §4.4.1's STUN keep-alive is the
phone's to send, and is not answered here).

The work is bounded per tick: a tick every second (or every C{interval}
when shorter) sends to at most C{ceil(flows / ticks per interval)} of
them, so the keep-alives are spread over the interval.  The flows are
listed once per round.  With C{--workers N}, worker C{k} keeps alive the
flows whose hash falls to it: every flow once, from the shared port.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipleg.errors import DeliveryError
from sipleg.flows import Flow
from sipleg.leg import Leg
from sipleg.registrar import Registrar

__all__ = ["KEEPALIVE", "KeepAlive"]

log = Logger()

#: What is sent: a double CRLF, which a SIP parser skips.
KEEPALIVE = b"\r\n\r\n"


class KeepAlive:
    """
    Sends keep-alives to the UDP flows of a registrar's bindings.

    @ivar sent: how many keep-alives were sent.
    """

    def __init__(
        self,
        registrar: Registrar,
        legs: Callable[[], Sequence[Leg]],
        interval: float,
        clock: IReactorTime,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """
        @param legs: the legs to send from (the UDP leg of a flow's
            address family is used).
        @param interval: the seconds between two keep-alives to a flow.
        @param share: C{(k, n)}: keep alive only the flows whose hash is
            C{k} modulo C{n} (worker C{k} of C{n}).
        @raise ValueError: C{interval} not positive, or a bad C{share}.
        """
        if interval <= 0 or not 0 <= share[0] < share[1]:
            raise ValueError("need a positive interval and 0 <= k < n")
        self.registrar = registrar
        self.legs = legs
        self.interval = interval
        self.tick = min(1.0, interval)
        self.clock = clock
        self.share = share
        self.sent = 0
        self._round: deque[Flow] = deque()
        self._per_tick = 0
        self._ticks_left = 0
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        """
        Start ticking.
        """
        if self._timer is None:
            self._timer = self.clock.callLater(self.tick, self._tick)

    def stop(self) -> None:
        """
        Stop ticking.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def flows(self) -> list[Flow]:
        """
        The UDP flows of the live bindings that are ours to keep alive,
        each once.
        """
        k, n = self.share
        found = {
            binding.flow
            for binding in self.registrar.bindings()
            if binding.flow is not None and binding.flow.transport == "udp"
        }
        return [flow for flow in found if n == 1 or zlib.crc32(str(flow).encode()) % n == k]

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.tick, self._tick)
        if not self._ticks_left:
            # A round: every flow once over the interval's ticks.
            ticks = self._ticks_left = max(1, round(self.interval / self.tick))
            self._round = deque(self.flows())
            self._per_tick = math.ceil(len(self._round) / ticks)
        self._ticks_left -= 1
        legs = self.legs()
        for _ in range(min(self._per_tick, len(self._round))):
            self._send(self._round.popleft(), legs)

    def _send(self, flow: Flow, legs: Sequence[Leg]) -> None:
        address = flow.address
        for leg in legs:
            if leg.proto == "udp" and leg.family == address.family:
                try:
                    leg.send_now(KEEPALIVE, address, None, _unsent)
                except DeliveryError as e:
                    _unsent(e)
                    return
                self.sent += 1
                return


def _unsent(error: DeliveryError) -> None:
    log.debug("keep-alive not sent: {error}", error=str(error))
