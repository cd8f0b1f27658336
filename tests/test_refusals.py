"""
Tests for L{sipleg.refusals}: refused requests are logged, one line per
source per window, with a count of the rest.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.refusals import RefusalLog
from tests.support import proxy_log_lines


class RefusalLogTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lines = proxy_log_lines(self, "sipleg.refusals")
        self.refusals = RefusalLog(self.clock, window=60.0, max_sources=2)

    def refuse(self, host: str, count: int = 1) -> None:
        for _ in range(count):
            source = Address(host, 5060, "udp")
            self.refusals.refused(source, "INVITE", "sip:bob@example.org", 403, "Forbidden")

    def test_one_line_per_source(self) -> None:
        """
        A source refused many times in a window is logged once, naming the
        request, the source and the answer.
        """
        self.refuse("192.0.2.7", 50)
        self.assertEqual(len(self.lines), 1)
        self.assertIn("refused INVITE sip:bob@example.org from 192.0.2.7:5060: 403 Forbidden", self.lines[0])
        self.refuse("192.0.2.8")
        self.assertEqual(len(self.lines), 2)
        self.assertIn("192.0.2.8", self.lines[1])

    def test_count_of_the_rest(self) -> None:
        """
        The next window starts with one line counting the refusals of the
        previous one that were not logged; the source is logged again.
        """
        self.refuse("192.0.2.7", 5)
        self.clock.advance(59)
        self.refuse("192.0.2.7")
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(1)
        self.refuse("192.0.2.7")
        self.assertEqual(len(self.lines), 3)
        self.assertIn("5 more refused requests in the previous 60.0 s", self.lines[1])
        self.assertIn("from 192.0.2.7", self.lines[2])
        # A quiet window has no count line.
        self.clock.advance(60)
        self.refuse("192.0.2.7")
        self.assertEqual(len(self.lines), 4)
        self.assertIn("from 192.0.2.7", self.lines[3])

    def test_sources_bounded(self) -> None:
        """
        Beyond C{max_sources} sources in a window, refusals are only
        counted: a spoofed flood from many addresses costs bounded memory
        and log.
        """
        for n in range(100):
            self.refuse(f"198.51.100.{n}")
        self.assertEqual(len(self.lines), 2)
        self.clock.advance(60)
        self.refuse("192.0.2.7")
        self.assertIn("98 more refused requests", self.lines[2])
