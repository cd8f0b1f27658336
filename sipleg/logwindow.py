"""
Which of many alike events to log: the first of each key (a source, a
destination) per window of time, and a count of the others.

A peer sending thousands of refused requests, or a destination that
refuses thousands of datagrams, gets one line per window instead of one
per packet.  At most L{LogWindow.max_keys} keys are remembered per
window (a flood from spoofed addresses costs bounded memory); beyond
them events are only counted.  No timer is kept: the count of the
previous window is handed over at the first event of the next.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

__all__ = ["LogWindow"]


class LogWindow:
    """
    Decides which events are logged (see the module).

    @ivar window: seconds during which a key is logged once.
    @ivar max_keys: keys remembered (and logged) per window.
    """

    def __init__(self, clock: IReactorTime, window: float = 60.0, max_keys: int = 1000) -> None:
        """
        @param clock: the time (the reactor; a L{twisted.internet.task.Clock}
            in tests).
        @param window: see L{window}.
        @param max_keys: see L{max_keys}.
        """
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._start = 0.0
        self._logged: set[object] = set()
        self._unlogged = 0

    def admit(self, key: object) -> tuple[bool, int]:
        """
        An event about C{key} happened.

        @return: whether to log it, and how many events of the previous
            window were not logged when this one starts a new window (to
            be logged as one line), else 0.
        """
        now = self._clock.seconds()
        previous = 0
        if now - self._start >= self.window:
            previous = self._unlogged
            self._start = now
            self._logged.clear()
            self._unlogged = 0
        if key in self._logged or len(self._logged) >= self.max_keys:
            self._unlogged += 1
            return False, previous
        self._logged.add(key)
        return True, previous
