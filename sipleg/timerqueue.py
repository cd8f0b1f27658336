"""
Many timers of one and the same duration, as one reactor timer.

A transaction-stateful proxy under load keeps tens of thousands of
transactions waiting for a timer of a fixed length (RFC 3261 Timer J and
H: 64*T1; Timer K: T4).  One C{IDelayedCall} each costs a heap entry in
the reactor, ~400 bytes and a handful of objects the garbage collector
walks at every full collection.  Timers that all last as long expire in
the order they were started, so a FIFO and one C{IDelayedCall} for its
head do the same work in O(1) per timer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["TimerQueue"]

T = TypeVar("T")


class TimerQueue(Generic[T]):
    """
    Items that expire C{delay} seconds after they were added, in order.

    There is no cancelling: an item that should no longer expire is told
    by the C{expire} callback itself (it checks whether the item is still
    current), and waits in the queue until then: the memory of at most
    C{delay} seconds of additions.
    """

    def __init__(self, clock: IReactorTime, delay: float, expire: Callable[[T], object]) -> None:
        """
        @param clock: the time.
        @param delay: seconds from L{add} to C{expire}.
        @param expire: called with each item when its time has come.
        """
        self._clock = clock
        self.delay = delay
        self._expire = expire
        self._items: deque[tuple[float, T]] = deque()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        """
        Expire C{item} in L{delay} seconds.
        """
        self._items.append((self._clock.seconds() + self.delay, item))
        if self._call is None:
            self._call = self._clock.callLater(self.delay, self._fire)

    def _fire(self) -> None:
        items = self._items
        now = self._clock.seconds()
        while items and items[0][0] <= now:
            # (The call stays set meanwhile: what expiring adds is
            # scheduled below, with the head.)
            self._expire(items.popleft()[1])
        self._call = self._clock.callLater(items[0][0] - now, self._fire) if items else None

    def stop(self) -> None:
        """
        Forget every item without expiring it (the service stops).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._items.clear()
