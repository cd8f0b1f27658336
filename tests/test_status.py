"""
Tests for L{sipleg.status}, L{sipleg.metrics} and L{sipleg.statusport}:
the status site over real loopback sockets (fetched with treq, C{/metrics}
parsed with C{prometheus_client}'s parser), a proxy's status after real
traffic, and the C{--status} option as an operator gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sipleg.errors import ConfigError
from sipleg.flood import EdgePolicy, FloodLimits
from sipleg.service import ProxyConfig, make_service, parse_listen
from sipleg.status import ProxyStats, status_site
from sipleg.statusport import StatusEndpoint, StatusServer, bind_status, parse_status
from tests.support import child_env, fetch, metric_values, options, poll_status, register, twistd_argv


def sample(values: dict[Any, float], name: str, **labels: str) -> float:
    """
    The value of one sample of L{metric_values}.
    """
    return values[(name, tuple(sorted(labels.items())))]


class StatusPageTests(unittest.TestCase):
    """
    The site renders whatever status its source gives.
    """

    def setUp(self) -> None:
        self.now = 1000.0
        self.stats = ProxyStats(clock=lambda: self.now)
        self.stats.requests["INVITE"] += 3
        self.stats.forwarded["INVITE"] += 2
        self.stats.answered[483] += 1
        self.stats.responses["2xx"] += 2
        self.stats.dropped['odd "reason"\\'] += 1
        self.stats.registrar = lambda: {"bindings": 7, "store_writes": 4, "store_write_seconds": 0.012}
        self.now = 1012.5

        def source() -> dict[str, Any]:
            return {"legs": ["Leg udp:127.0.0.1:5060"], **self.stats.snapshot(), "banned_sources": 2}

        self.port = reactor.listenTCP(0, status_site(source), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    @inlineCallbacks
    def test_json(self) -> Any:
        response, body = yield fetch(self.base + "/status.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        data = json.loads(body)
        self.assertEqual(data["legs"], ["Leg udp:127.0.0.1:5060"])
        self.assertEqual(data["uptime"], 12.5)
        self.assertEqual(data["requests"], {"INVITE": 3})
        self.assertEqual(data["answered"], {"483": 1})
        self.assertEqual(data["registrar"], {"bindings": 7, "store_writes": 4, "store_write_seconds": 0.012})

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        The metric names of the hand-written exposition are kept; labels
        are escaped by the library (the parser reads back the original).
        """
        response, body = yield fetch(self.base + "/metrics")
        self.assertEqual(response.code, 200)
        values = metric_values(body)
        self.assertEqual(sample(values, "sipleg_requests_total", method="INVITE"), 3)
        self.assertEqual(sample(values, "sipleg_forwarded_total", method="INVITE"), 2)
        self.assertEqual(sample(values, "sipleg_answered_total", code="483"), 1)
        self.assertEqual(sample(values, "sipleg_responses_total", **{"class": "2xx"}), 2)
        self.assertEqual(sample(values, "sipleg_dropped_total", reason='odd "reason"\\'), 1)
        self.assertEqual(sample(values, "sipleg_uptime_seconds"), 12.5)
        self.assertEqual(sample(values, "sipleg_bindings"), 7)
        self.assertEqual(sample(values, "sipleg_banned_sources"), 2)
        self.assertEqual(sample(values, "sipleg_store_write_seconds_count"), 4)
        self.assertEqual(sample(values, "sipleg_store_write_seconds_sum"), 0.012)
        self.assertIn(b"# TYPE sipleg_requests_total counter", body)

    @inlineCallbacks
    def test_openmetrics(self) -> Any:
        """
        A scraper asking for OpenMetrics gets it.
        """
        response, body = yield fetch(
            self.base + "/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text")
        )
        self.assertTrue(body.endswith(b"# EOF\n"))

    @inlineCallbacks
    def test_unknown_path(self) -> Any:
        response, _ = yield fetch(self.base + "/nothing")
        self.assertEqual(response.code, 404)


class ProxyStatusTests(unittest.TestCase):
    """
    A proxy's status after real traffic over loopback: requests, answers,
    forwards, a ban, bindings and the per-leg figures.
    """

    @inlineCallbacks
    def start(self, config: ProxyConfig) -> Any:
        """
        Run the service of C{config}, stopped at cleanup.

        @return: fires with its status page's base URL and first status.
        """
        service = make_service(config)
        service.startService()
        self.addCleanup(service.stopService)
        server = [s for s in service if isinstance(s, StatusServer)][0]
        base = f"http://127.0.0.1:{server.port.getHost().port}"
        status = yield poll_status(base, lambda status: True)
        return base, status

    @inlineCallbacks
    def test_stateful_transactions(self) -> Any:
        """
        With C{--stateful}, the live transactions and kept branches: an
        OPTIONS to a phone that never answers is one of each.
        """
        from sipleg.stateful import TransactionTimers

        config = ProxyConfig(
            listen=[parse_listen("udp:127.0.0.1:0")],
            status="tcp:127.0.0.1:0",
            transactions=TransactionTimers(),
        )
        base, status = yield self.start(config)
        self.assertEqual(status["stateful"], {"transactions": 0, "branches": 0})
        (udp,) = status["leg_counters"]
        phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(phone.close)
        phone.bind(("127.0.0.1", 0))
        port = phone.getsockname()[1]
        phone.sendto(
            options(f"sip:silent@127.0.0.1:{port}", 1, port), ("127.0.0.1", int(udp.rsplit(":", 1)[1]))
        )
        status = yield poll_status(base, lambda status: status["stateful"]["transactions"] == 1)
        self.assertEqual(status["stateful"], {"transactions": 1, "branches": 1})
        _, body = yield fetch(base + "/metrics")
        values = metric_values(body)
        self.assertEqual((sample(values, "sipleg_transactions"), sample(values, "sipleg_branches")), (1, 1))

    @inlineCallbacks
    def test_traffic_bans_bindings_legs(self) -> Any:
        config = ProxyConfig(
            listen=[parse_listen("udp:127.0.0.1:0"), parse_listen("tcp:127.0.0.1:0")],
            status="tcp:127.0.0.1:0",
            registrar=True,
            domains=["example.test"],
            allow=["127.0.0.1/32"],
            edge=EdgePolicy(flood=FloodLimits(limit=5, window=60, ban=60)),
        )
        base, status = yield self.start(config)
        udp, tcp = sorted(status["leg_counters"])[::-1]
        self.assertTrue(udp.startswith("udp:127.0.0.1:") and tcp.startswith("tcp:127.0.0.1:"))
        proxy = ("127.0.0.1", int(udp.rsplit(":", 1)[1]))

        trusted = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        untrusted = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stream = socket.create_connection(("127.0.0.1", int(tcp.rsplit(":", 1)[1])))
        for sock in (trusted, untrusted, stream):
            self.addCleanup(sock.close)
        trusted.bind(("127.0.0.1", 0))
        untrusted.bind(("127.0.0.2", 0))
        own = trusted.getsockname()[1]
        for n in range(3):
            trusted.sendto(register(n, own), proxy)
        yield poll_status(base, lambda status: status["registrar"]["bindings"] == 3)
        # To the proxy itself (answered), and to a registered user
        # (forwarded to its contact).
        trusted.sendto(options(f"sip:127.0.0.1:{proxy[1]}", 1, own), proxy)
        trusted.sendto(options("sip:u0@example.test", 2, own), proxy)
        # Eight from an untrusted source allowed five: the sixth bans it,
        # the last two are dropped.
        for n in range(8):
            untrusted.sendto(options(f"sip:127.0.0.1:{proxy[1]}", 10 + n, untrusted.getsockname()[1]), proxy)
        status = yield poll_status(
            base,
            lambda status: (
                status["dropped"].get("banned") == 2
                and status["forwarded"].get("OPTIONS") == 1
                and status["leg_counters"][tcp]["connections"] == 1
            ),
        )
        # /status.json keeps its shape, and grows.
        self.assertEqual(status["requests"], {"REGISTER": 3, "OPTIONS": 7})
        self.assertEqual(status["answered"], {"200": 9})
        self.assertEqual(status["dropped"], {"ban": 1, "banned": 2})
        self.assertEqual(status["banned_sources"], 1)
        self.assertEqual(status["registrar"]["bindings"], 3)
        self.assertEqual(len(status["legs"]), 2)
        self.assertIsInstance(status["uptime"], float)
        self.assertEqual(status["leg_counters"][udp]["connections"], 0)
        # 3 REGISTERs, 2 OPTIONS and 8 from the banned source came in; 9
        # answers and the forwarded OPTIONS went out.
        self.assertEqual(
            (status["leg_counters"][udp]["received"], status["leg_counters"][udp]["sent"]), (13, 10)
        )
        self.assertEqual(
            (status["leg_counters"][tcp]["received"], status["leg_counters"][tcp]["sent"]), (0, 0)
        )
        self.assertIn("kernel_drops", status["leg_counters"][udp])

        _, body = yield fetch(base + "/metrics")
        values = metric_values(body)
        self.assertEqual(sample(values, "sipleg_requests_total", method="REGISTER"), 3)
        self.assertEqual(sample(values, "sipleg_requests_total", method="OPTIONS"), 7)
        self.assertEqual(sample(values, "sipleg_forwarded_total", method="OPTIONS"), 1)
        self.assertEqual(sample(values, "sipleg_answered_total", code="200"), 9)
        self.assertEqual(sample(values, "sipleg_dropped_total", reason="ban"), 1)
        self.assertEqual(sample(values, "sipleg_dropped_total", reason="banned"), 2)
        self.assertEqual(sample(values, "sipleg_banned_sources"), 1)
        self.assertEqual(sample(values, "sipleg_bindings"), 3)
        self.assertEqual(sample(values, "sipleg_leg_connections", leg=tcp), 1)
        self.assertEqual(sample(values, "sipleg_leg_received_total", leg=udp), 13)
        self.assertEqual(sample(values, "sipleg_leg_sent_total", leg=udp), 10)
        self.assertEqual(sample(values, "sipleg_leg_connections", leg=udp), 0)
        self.assertEqual(sample(values, "sipleg_leg_kernel_drops_total", leg=udp), 0)
        self.assertGreaterEqual(sample(values, "sipleg_leg_receive_queue_bytes", leg=udp), 0)
        self.assertGreater(sample(values, "sipleg_uptime_seconds"), 0)


class ParseStatusTests(unittest.TestCase):
    """
    C{--status} takes the form of C{--listen}, a bare port, a UNIX path,
    and Twisted's endpoint strings.
    """

    def test_forms(self) -> None:
        forms = {
            "tcp:8060": "tcp:127.0.0.1:8060",
            "tcp:127.0.0.1:8060": "tcp:127.0.0.1:8060",
            "TCP:127.0.0.2:8060": "tcp:127.0.0.2:8060",
            "tcp:[::1]:8060": "tcp:[::1]:8060",
            "tcp6:8060": "tcp:[::1]:8060",
            "tcp:8060:interface=127.0.0.1": "tcp:127.0.0.1:8060",
            "tcp6:8060:interface=::1": "tcp:[::1]:8060",
            "tcp6:8060:interface=\\:\\:1:backlog=5": "tcp:[::1]:8060",
            "tcp:8060:127.0.0.3": "tcp:127.0.0.3:8060",
            "unix:/run/sipleg/status.sock": "unix:/run/sipleg/status.sock",
        }
        for text, expected in forms.items():
            self.assertEqual(str(parse_status(text)), expected, text)
        self.assertEqual(parse_status("unix:/tmp/s:mode=600").mode, 0o600)
        self.assertEqual(parse_status("tcp:1:backlog=5").backlog, 5)

    def test_errors(self) -> None:
        for text, reason in [
            ("ssl:443", "expected tcp:[ADDR:]PORT or unix:PATH"),
            ("8060", "expected tcp:[ADDR:]PORT or unix:PATH"),
            ("tcp:localhost:8060", "'localhost' is not an IP address"),
            ("tcp:99999", "bad port '99999'"),
            ("tcp:[::1]", "expected ADDR:PORT"),
            ("tcp:1:2:3", "expected tcp:[ADDR:]PORT"),
            ("tcp:8060:reuse=1", "unknown option 'reuse'"),
            ("unix:", "expected unix:PATH"),
            ("unix:/x:mode=999", "bad mode '999'"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse_status(text)
            self.assertEqual(str(caught.exception), f"--status {text!r}: {reason}")


class BindStatusTests(unittest.TestCase):
    """
    The status socket is bound at configuration time.
    """

    def test_port_in_use(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with self.assertRaises(ConfigError) as caught:
                bind_status(parse_status(f"tcp:127.0.0.1:{port}"))
        self.assertEqual(
            str(caught.exception), f"--status: cannot listen on tcp:127.0.0.1:{port}: Address already in use"
        )

    def test_unix_socket_left_behind(self) -> None:
        """
        A socket file nobody listens on (its process died) is replaced;
        one in use is not.
        """
        folder = tempfile.mkdtemp(prefix="sipleg-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "status.sock")
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(path)
        endpoint = StatusEndpoint(socket.AF_UNIX, path, mode=0o600)
        sock = bind_status(endpoint)
        self.addCleanup(sock.close)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with self.assertRaises(ConfigError) as caught:
            bind_status(endpoint)
        self.assertIn("Address already in use", str(caught.exception))

    @inlineCallbacks
    def test_unix_served_and_removed(self) -> Any:
        """
        A UNIX status socket serves the page and is removed on stop.
        """
        folder = tempfile.mkdtemp(prefix="sipleg-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "status.sock")
        server = StatusServer(bind_status(parse_status(f"unix:{path}")), status_site(lambda: {}))
        server.startService()

        class Endpoints:
            def endpointForURI(self, uri: Any) -> Any:
                return UNIXClientEndpoint(reactor, path)

        agent = Agent.usingEndpointFactory(
            reactor, Endpoints(), HTTPConnectionPool(reactor, persistent=False)
        )
        response = yield agent.request(b"GET", b"http://status/status.json")
        self.assertEqual(json.loads((yield treq.content(response))), {})
        yield server.stopService()
        self.assertFalse(os.path.exists(path))


class StatusOptionTests(unittest.TestCase):
    """
    C{twistd sipproxy --status ...} that cannot work stops at once with
    one line on stderr and exit status 1.
    """

    def refused(self, *args: str) -> str:
        done = subprocess.run(
            twistd_argv("sipproxy", "--listen", "udp:127.0.0.1:0", *args),
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        self.assertEqual(done.returncode, 1, done.stdout[-500:])
        self.assertEqual(done.stdout, "")
        lines = done.stderr.splitlines()
        self.assertEqual(len(lines), 1, done.stderr)
        return lines[0]

    def test_port_in_use(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for status in (f"tcp:127.0.0.1:{port}", f"tcp:{port}", f"tcp:{port}:interface=127.0.0.1"):
                self.assertEqual(
                    self.refused("--status", status),
                    f"sipproxy: --status: cannot listen on tcp:127.0.0.1:{port}: Address already in use",
                )
            line = self.refused("--workers", "2", "--status", f"tcp:127.0.0.1:{port}")
        self.assertIn("Address already in use", line)

    def test_unix_directory_missing(self) -> None:
        self.assertEqual(
            self.refused("--status", "unix:/nonexistent/dir/sock"),
            "sipproxy: --status: cannot listen on unix:/nonexistent/dir/sock: No such file or directory",
        )
        long = "/tmp/" + "x" * 200
        self.assertEqual(
            self.refused("--status", f"unix:{long}"),
            f"sipproxy: --status: cannot listen on unix:{long}: AF_UNIX path too long",
        )

    def test_bad_address(self) -> None:
        self.assertEqual(
            self.refused("--status", "tcp:example.com:8060"),
            "sipproxy: --status 'tcp:example.com:8060': 'example.com' is not an IP address",
        )
        self.assertIn("Cannot assign requested address", self.refused("--status", "tcp:192.0.2.1:8060"))

    def test_given_twice(self) -> None:
        self.assertEqual(
            self.refused("--status", "tcp:8060", "--status", "tcp:8061"), "sipproxy: --status given twice"
        )


class BoundedCountersTests(unittest.TestCase):
    def test_invented_methods_share_one_key(self) -> None:
        stats = ProxyStats()
        for method in ("INVITE", "FOO", "BAR", "X" * 100):
            stats.requests[stats.method(method)] += 1
        self.assertEqual(dict(stats.requests), {"INVITE": 1, "other": 3})
