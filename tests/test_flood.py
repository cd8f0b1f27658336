"""
Flood control (L{sipleg.flood}) as time-free rules, and in front of a
proxy: untrusted sources over their rate are banned and dropped without
an answer, scanners are dropped, trusted sources are never counted.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.flood import EdgePolicy, FloodControl, FloodLimits, Verdict
from sipleg.leg import Leg
from sipleg.proxy import StatelessProxy
from sipleg.routing import NetworkAccessPolicy
from sipleg.transport.memory import MemorySocketPool
from tests.support import fail2ban_patterns, proxy_log_lines


class FloodControlTests(TestCase):
    def test_rate_ban_and_release(self) -> None:
        flood = FloodControl(FloodLimits(limit=3, window=2, ban=10))
        verdicts = [flood.check("192.0.2.1", t) for t in (0, 0.5, 1, 1.5, 1.6, 5, 11.5, 11.6)]
        self.assertEqual(
            verdicts,
            [
                Verdict.ADMIT,
                Verdict.ADMIT,
                Verdict.ADMIT,
                Verdict.BANNED,  # the fourth in 2 s
                Verdict.DROP,
                Verdict.DROP,
                Verdict.ADMIT,  # the ban (1.5 + 10) is over
                Verdict.ADMIT,
            ],
        )
        self.assertEqual(flood.banned(11.6), [])

    def test_windows_and_sources_apart(self) -> None:
        flood = FloodControl(FloodLimits(limit=2, window=1, ban=10))
        for t in (0, 0.5, 1.0, 1.5, 2.0, 2.5):
            self.assertIs(flood.check("192.0.2.1", t), Verdict.ADMIT, t)
        self.assertIs(flood.check("192.0.2.2", 2.5), Verdict.ADMIT)
        self.assertIs(flood.check("192.0.2.1", 2.6), Verdict.BANNED)
        self.assertEqual(flood.banned(3), ["192.0.2.1"])

    def test_memory_bounded(self) -> None:
        flood = FloodControl(FloodLimits(limit=1, window=100, ban=100, max_sources=10))
        for n in range(100):
            flood.check(f"10.0.0.{n}", 0)
            flood.check(f"10.0.0.{n}", 0)
        self.assertLessEqual(len(flood._rates), 10)
        self.assertEqual(len(flood.banned(1)), 10)

    def test_defaults_spare_a_busy_pbx(self) -> None:
        """
        A PBX behind one address placing 20 calls/s (60 requests/s) for a
        minute is never banned with the defaults; 20,000 requests/s are
        banned within the first 10 ms.
        """
        flood = FloodControl()
        for n in range(60 * 60):
            self.assertIs(flood.check("192.0.2.1", n / 60), Verdict.ADMIT)
        verdicts = [flood.check("198.51.100.1", n / 20000) for n in range(200)]
        self.assertIs(verdicts[-1], Verdict.ADMIT)
        self.assertIs(flood.check("198.51.100.1", 0.01), Verdict.BANNED)

    def test_limits_checked(self) -> None:
        for bad in ({"limit": 0}, {"window": 0}, {"ban": -1}, {"max_sources": 0}):
            self.assertRaises(ValueError, FloodLimits, **bad)


def options(user_agent: str = "", n: int = 1) -> bytes:
    agent = f"User-Agent: {user_agent}\r\n" if user_agent else ""
    return (
        "OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{n}\r\n"
        f"From: <sip:a@127.0.0.1>;tag={n}\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: {n}@x\r\n"
        f"CSeq: 1 OPTIONS\r\n{agent}Content-Length: 0\r\n\r\n"
    ).encode()


class ProxyFloodTests(TestCase):
    """
    A proxy whose trusted network is 127.0.0.2 only, so 127.0.0.1 is a
    stranger.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = MemorySocketPool(Address("127.0.0.1", 5060))
        leg = Leg(socketpool=self.pool)
        self.proxy = StatelessProxy(
            Dispatcher([leg]),
            access=NetworkAccessPolicy(["127.0.0.2/32"]),
            edge=EdgePolicy(flood=FloodLimits(limit=5, window=2, ban=300)),
            clock=self.clock,
        )
        self.logged = proxy_log_lines(self)

    def send(self, source: Address, data: bytes) -> int:
        self.pool.sent.clear()
        self.pool.deliver(data, source)
        return len(self.pool.sent)

    def test_flooder_banned_silently(self) -> None:
        stranger = Address("127.0.0.1", 5099)
        answered = [self.send(stranger, options(n=n)) for n in range(8)]
        self.assertEqual(answered, [1, 1, 1, 1, 1, 0, 0, 0])
        self.assertEqual((self.proxy.stats.dropped["ban"], self.proxy.stats.dropped["banned"]), (1, 2))
        # A trusted source is never counted.
        self.assertEqual([self.send(Address("127.0.0.2", 5099), options(n=n)) for n in range(8)], [1] * 8)
        # The ban ends.
        self.clock.advance(301)
        self.assertEqual(self.send(stranger, options(n=99)), 1)

    def test_ban_line_matches_the_fail2ban_filter(self) -> None:
        stranger = Address("127.0.0.1", 5099)
        for n in range(6):
            self.send(stranger, options(n=n))
        bans = [line for line in self.logged if "banned source" in line]
        self.assertEqual(len(bans), 1)
        found = [match for pattern in fail2ban_patterns() if (match := pattern.match(bans[0]))]
        self.assertEqual([match.group("host") for match in found], ["127.0.0.1"], bans[0])

    def test_scanners_dropped_from_strangers_only(self) -> None:
        self.assertEqual(self.send(Address("127.0.0.1", 5099), options("friendly-scanner")), 0)
        self.assertEqual(self.send(Address("127.0.0.1", 5099), options("SIPVicious 0.3.4", n=2)), 0)
        self.assertEqual(self.send(Address("127.0.0.1", 5099), options("Linphone 5.2", n=3)), 1)
        self.assertEqual(self.send(Address("127.0.0.2", 5099), options("friendly-scanner", n=4)), 1)


class OptionsTests(TestCase):
    def config(self, *argv: str) -> EdgePolicy:
        from sipleg.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options.config().edge

    def test_defaults(self) -> None:
        self.assertEqual(self.config(), EdgePolicy())

    def test_options(self) -> None:
        self.assertEqual(
            self.config("--flood-limit", "10/1", "--ban-time", "60", "--scanners", "Foo, bar"),
            EdgePolicy(FloodLimits(limit=10, window=1.0, ban=60.0), ("foo", "bar")),
        )
        self.assertEqual(self.config("--no-flood-control", "--scanners", "").flood, None)
        self.assertEqual(self.config("--scanners", "").scanners, ())

    def test_stream_limits(self) -> None:
        from sipleg.tap import Options
        from sipleg.transport.base import StreamLimits

        options = Options()
        options.parseOptions(
            ["--max-connections", "50", "--max-per-source", "5", "--first-message-timeout", "4"]
        )
        self.assertEqual(
            options.config().stream_limits,
            StreamLimits(max_connections=50, max_per_source=5, first_message_timeout=4.0),
        )
