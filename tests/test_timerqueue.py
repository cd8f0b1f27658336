"""
L{sipleg.timerqueue.TimerQueue}: timers of one duration as one reactor
timer.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sipleg.timerqueue import TimerQueue


class TimerQueueTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.queue: TimerQueue[str] = TimerQueue(self.clock, 10.0, self.expired.append)

    def test_in_order_with_one_reactor_timer(self) -> None:
        """
        Items expire C{delay} after they were added, in order, while the
        reactor holds one timer for all of them.
        """
        self.queue.add("a")
        self.clock.advance(3)
        self.queue.add("b")
        self.queue.add("c")
        self.assertEqual((len(self.queue), len(self.clock.getDelayedCalls())), (3, 1))
        self.clock.advance(6.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(2.9)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(
            (self.expired, len(self.queue), self.clock.getDelayedCalls()), (["a", "b", "c"], 0, [])
        )
        self.queue.add("d")
        self.clock.advance(10)
        self.assertEqual(self.expired[-1], "d")

    def test_added_while_expiring(self) -> None:
        """
        An item added by the expiry callback waits its full delay, still
        with one reactor timer.
        """

        def expire(item: str) -> None:
            self.expired.append(item)
            if item == "a":
                queue.add("again")

        queue: TimerQueue[str] = TimerQueue(self.clock, 10.0, expire)
        queue.add("a")
        self.clock.advance(5)
        queue.add("b")
        self.clock.advance(5)
        self.assertEqual((self.expired, len(self.clock.getDelayedCalls())), (["a"], 1))
        self.clock.advance(5)
        self.assertEqual(self.expired, ["a", "b"])
        self.clock.advance(5)
        self.assertEqual((self.expired, self.clock.getDelayedCalls()), (["a", "b", "again"], []))

    def test_stop(self) -> None:
        self.queue.add("a")
        self.queue.stop()
        self.clock.advance(20)
        self.assertEqual((self.expired, len(self.queue), self.clock.getDelayedCalls()), ([], 0, []))
