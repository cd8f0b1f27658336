"""
The log of refused requests (403): one line per source, not one per
packet.

An operator who set C{--allow} and sees a phone get 403 must find out why
in the log; a scanner sending thousands of requests must not fill it.  So
each source gets one line per window of L{RefusalLog.window} seconds, the
other refusals of the window are counted, and the count is logged in one
line when the next window starts (at the next refusal: no timer is
kept).  At most L{RefusalLog.max_sources} sources are remembered per
window; beyond them refusals are only counted.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipleg.address import Address

__all__ = ["RefusalLog"]

log = Logger()


class RefusalLog:
    """
    Logs refused requests, rate-limited per source (see the module).

    @ivar window: seconds during which a source is logged once.
    @ivar max_sources: sources remembered (and logged) per window.
    """

    def __init__(self, clock: IReactorTime, window: float = 60.0, max_sources: int = 1000) -> None:
        """
        @param clock: the time (the reactor; a L{twisted.internet.task.Clock}
            in tests).
        @param window: see L{window}.
        @param max_sources: see L{max_sources}.
        """
        self.window = window
        self.max_sources = max_sources
        self._clock = clock
        self._start = 0.0
        self._logged: set[str] = set()
        self._unlogged = 0

    def refused(self, source: Address, method: str, uri: str, code: int, reason: str) -> None:
        """
        A request from C{source} was answered C{code} C{reason}: log it,
        unless this source was logged in this window already.
        """
        now = self._clock.seconds()
        if now - self._start >= self.window:
            self._new_window(now)
        host = source.host
        if host in self._logged or len(self._logged) >= self.max_sources:
            self._unlogged += 1
            return
        self._logged.add(host)
        log.info(
            "refused {method} {uri} from {source}: {code} {reason} (a source is logged once per {window} s)",
            method=method,
            uri=uri,
            source=source,
            code=code,
            reason=reason,
            window=self.window,
        )

    def _new_window(self, now: float) -> None:
        """
        Start a window at C{now}, after one line for the refusals of the
        previous window that were not logged.
        """
        if self._unlogged:
            log.info(
                "{count} more refused requests in the previous {window} s, not logged one by one",
                count=self._unlogged,
                window=self.window,
            )
        self._start = now
        self._logged.clear()
        self._unlogged = 0
