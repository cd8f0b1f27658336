"""
The log of refused requests (403): one line per source, not one per
packet.

An operator who set C{--allow} and sees a phone get 403 must find out why
in the log; a scanner sending thousands of requests must not fill it.  So
each source gets one line per minute and the others are counted
(L{sipleg.logwindow.LogWindow}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipleg.address import Address
from sipleg.logwindow import LogWindow

__all__ = ["RefusalLog"]

log = Logger()


class RefusalLog:
    """
    Logs refused requests, rate-limited per source (see the module).
    """

    def __init__(self, clock: IReactorTime, window: float = 60.0, max_sources: int = 1000) -> None:
        """
        @param clock: the time (the reactor; a L{twisted.internet.task.Clock}
            in tests).
        @param window: seconds during which a source is logged once.
        @param max_sources: sources remembered (and logged) per window.
        """
        self._window = LogWindow(clock, window, max_sources)

    def refused(self, source: Address, method: str, uri: str, code: int, reason: str) -> None:
        """
        A request from C{source} was answered C{code} C{reason}: log it,
        unless this source was logged in this window already.
        """
        logged, previous = self._window.admit(source.host)
        window = self._window.window
        if previous:
            log.info(
                "{count} more refused requests in the previous {window} s, not logged one by one",
                count=previous,
                window=window,
            )
        if logged:
            log.info(
                "refused {method} {uri} from {source}: {code} {reason}"
                " (a source is logged once per {window} s)",
                method=method,
                uri=uri,
                source=source,
                code=code,
                reason=reason,
                window=window,
            )
