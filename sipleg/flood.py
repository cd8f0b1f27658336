"""
Flood control: per-source request rates and bans, as time-free rules
(C{now} is an argument), the way Kamailio's pike module is used in its
default configuration.

A source (an IP address) may send C{limit} requests in every C{window}
seconds; the request that goes over bans it for C{ban} seconds, during
which everything it sends is dropped without an answer (answering a flood
would amplify it).  Responses are not counted (a trunk answering our calls
is no flood), only dropped while their source is banned.  Only sources
outside the trusted networks are counted (the caller decides).  Memory is
bounded: at most C{max_sources} sources are tracked and C{max_sources}
banned; past that the oldest are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

__all__ = ["SCANNERS", "EdgePolicy", "FloodControl", "FloodLimits", "Verdict"]

#: User-Agent fragments of SIP scanners (lower-case): their requests from
#: untrusted sources are dropped without an answer.
SCANNERS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sipscan",
    "iwar",
    "sundayddr",
    "pplsip",
    "smap",
)


class Verdict(Enum):
    """
    What to do with one packet from a source.
    """

    #: Within its rate: handle it.
    ADMIT = "admit"
    #: This packet went over the rate: the source is banned from now on
    #: (log it once).
    BANNED = "banned"
    #: The source is banned: drop the packet silently.
    DROP = "drop"


@dataclass(frozen=True)
class FloodLimits:
    """
    @ivar limit: packets a source may send per window.
    @ivar window: the window, in seconds.
    @ivar ban: how long a source that went over is banned, in seconds.
    @ivar max_sources: how many sources are tracked (and banned) at most.
    """

    limit: int = 200
    window: float = 2.0
    ban: float = 300.0
    max_sources: int = 65536

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0 or self.ban <= 0 or self.max_sources < 1:
            raise ValueError("flood limits must be positive")


@dataclass(frozen=True)
class EdgePolicy:
    """
    What untrusted sources may send.

    @ivar flood: the rate limits (L{None}: no flood control).
    @ivar scanners: lower-case User-Agent fragments whose requests are
        dropped without an answer.
    """

    flood: FloodLimits | None = FloodLimits()
    scanners: tuple[str, ...] = SCANNERS


class FloodControl:
    """
    The rates and bans of the sources seen so far.
    """

    def __init__(self, limits: FloodLimits = FloodLimits()) -> None:
        self.limits = limits
        # source -> (window start, packets in the window), oldest first.
        self._rates: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # source -> end of its ban, oldest first.
        self._bans: OrderedDict[str, float] = OrderedDict()

    def check(self, source: str, now: float) -> Verdict:
        """
        Count one packet from C{source} at time C{now}.
        """
        until = self._bans.get(source)
        if until is not None:
            if now < until:
                return Verdict.DROP
            del self._bans[source]
        limits = self.limits
        start, count = self._rates.get(source, (now, 0))
        if now - start >= limits.window:
            start, count = now, 0
        count += 1
        if count > limits.limit:
            self.ban(source, now)
            return Verdict.BANNED
        rates = self._rates
        rates[source] = (start, count)
        rates.move_to_end(source)
        if len(rates) > limits.max_sources:
            rates.popitem(last=False)
        return Verdict.ADMIT

    def ban(self, source: str, now: float) -> None:
        """
        Ban C{source} from C{now} for the ban time, whatever its rate (it
        failed to authenticate too often, say).
        """
        self._rates.pop(source, None)
        self._bans[source] = now + self.limits.ban
        self._bans.move_to_end(source)
        if len(self._bans) > self.limits.max_sources:
            self._bans.popitem(last=False)

    def is_banned(self, source: str, now: float) -> bool:
        """
        Whether C{source} is banned at C{now} (without counting a packet).
        """
        until = self._bans.get(source)
        return until is not None and now < until

    def banned(self, now: float) -> list[str]:
        """
        The sources banned at C{now}.
        """
        return [source for source, until in self._bans.items() if now < until]
