"""
Flows across the workers of C{--workers N}: the worker holding a
registration's connection sends what the others route to it.

The workers share the listening ports (C{SO_REUSEPORT}), so the phone's
connection lives in one worker while a call for it may arrive at any
other.  Each worker therefore has a private UDP socket on 127.0.0.1 (its
relay); the stream flows it records in the shared store carry that
address as their C{owner} (L{sipleg.flows.Flow}).  A worker forwarding a
request over a flow another worker owns builds the request as it would
send it (its Via and Record-Route name the shared ports, so the answers
find their way back whichever worker gets them) and hands the bytes to
the owner's relay with the flow; the owner writes them on the
connection, or drops them when it is gone (logged).

A relay datagram is C{SECRET SP FLOW LF MESSAGE}: C{SECRET} is the one
the supervisor gives all its workers
(L{sipleg.service.RELAY_SECRET_VARIABLE}), so nothing
else on the machine can make a worker write on a phone's connection.
The stateless proxy relays; the stateful one does not (the answers would
reach the owner, which has no transaction for them): there a flow of
another worker counts as gone (TCP dials the Contact, TLS and WebSocket
answer 480).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sipleg.errors import DeliveryError
from sipleg.flows import Flow, parse_flow
from sipleg.leg import Leg
from sipleg.proxy import flow_hop

__all__ = ["FlowRelay"]

log = Logger()


class FlowRelay(DatagramProtocol):
    """
    A worker's relay socket on 127.0.0.1.

    @ivar address: C{"127.0.0.1:PORT"} once listening: the owner of the
        stream flows this worker records.
    @ivar relayed: requests handed to other workers.
    @ivar delivered: requests of other workers written on our flows.
    @ivar dropped: relay datagrams dropped (bad secret or form, flow gone).
    """

    def __init__(self, legs: Callable[[], Sequence[Leg]], secret: str, reactor: Any) -> None:
        """
        @param legs: this worker's legs.
        @param secret: the workers' shared secret.
        """
        self.legs = legs
        self.secret = secret.encode()
        self.reactor = reactor
        self.address = ""
        self.relayed = self.delivered = self.dropped = 0
        self._port: Any = None

    def listen(self) -> str:
        """
        Bind the relay socket.

        @return: its L{address}.
        """
        self._port = self.reactor.listenUDP(0, self, interface="127.0.0.1")
        self.address = f"127.0.0.1:{self._port.getHost().port}"
        return self.address

    def stop(self) -> None:
        """
        Close the relay socket.
        """
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()

    def foreign(self, flow: Flow) -> bool:
        """
        Whether another worker holds C{flow}'s connection.
        """
        return bool(flow.owner) and flow.owner != self.address and flow.transport != "udp"

    def send(self, flow: Flow, data: bytes) -> None:
        """
        Hand C{data}, a request to send over C{flow}, to its owner.

        @raise DeliveryError: it cannot be handed over (too big for a
            datagram, or the relay is closed).
        """
        if self.transport is None:
            raise DeliveryError(None, "flow relay closed")
        host, _, port = flow.owner.rpartition(":")
        try:
            self.transport.write(
                b"".join((self.secret, b" ", str(flow).encode(), b"\n", data)), (host, int(port))
            )
        except (OSError, ValueError) as e:
            raise DeliveryError(None, f"flow relay to {flow.owner}: {e}") from None
        self.relayed += 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        head, _, data = datagram.partition(b"\n")
        secret, _, text = head.partition(b" ")
        if not hmac.compare_digest(secret, self.secret):
            self.dropped += 1
            log.warn("flow relay: dropping a datagram from {addr} without the workers' secret", addr=addr)
            return
        try:
            flow = parse_flow(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            self.dropped += 1
            return
        hop = flow_hop(flow, self.legs())
        if not isinstance(hop, tuple) or hop[2] is None:
            self.dropped += 1
            log.info("flow relay: the connection of {flow} is gone; request dropped", flow=str(flow))
            return
        leg, address, conn = hop
        try:
            leg.send_now(data, address, conn)
        except DeliveryError as e:
            self.dropped += 1
            log.info("flow relay: cannot write on {flow}: {error}", flow=str(flow), error=str(e))
            return
        self.delivered += 1
