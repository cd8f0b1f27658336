"""
Tests for L{sipleg.status}: counters and the HTTP status page (over a real
loopback socket, fetched with treq).
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from sipleg.service import ProxyConfig, make_service, parse_listen
from sipleg.status import ProxyStats, StatusPage


class StatusPageTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        self.now = 1000.0
        self.stats = ProxyStats(clock=lambda: self.now)
        self.stats.requests["INVITE"] += 3
        self.stats.forwarded["INVITE"] += 2
        self.stats.answered[483] += 1
        self.stats.responses["2xx"] += 2
        self.stats.dropped['odd "reason"'] += 1
        self.stats.registrar = lambda: {"bindings": 7, "store_writes": 4, "store_write_seconds": 0.012}
        self.now = 1012.5
        page = StatusPage(self.stats, lambda: ["Leg udp:127.0.0.1:5060"])
        self.port = reactor.listenTCP(0, Site(page), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        yield None

    @inlineCallbacks
    def get(self, path: str) -> Any:
        response = yield treq.get(self.base + path, pool=HTTPConnectionPool(reactor, persistent=False))
        body = yield treq.content(response)
        return response, body

    @inlineCallbacks
    def test_json(self) -> Any:
        response, body = yield self.get("/status.json")
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
        response, body = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        lines = body.decode().splitlines()
        self.assertIn('sipleg_requests_total{method="INVITE"} 3', lines)
        self.assertIn('sipleg_forwarded_total{method="INVITE"} 2', lines)
        self.assertIn('sipleg_answered_total{code="483"} 1', lines)
        self.assertIn('sipleg_responses_total{class="2xx"} 2', lines)
        self.assertIn('sipleg_dropped_total{reason="odd \\"reason\\""} 1', lines)
        self.assertIn("# TYPE sipleg_requests_total counter", lines)
        self.assertIn("sipleg_bindings 7", lines)
        self.assertIn("sipleg_store_write_seconds_count 4", lines)
        self.assertIn("sipleg_store_write_seconds_sum 0.012", lines)

    @inlineCallbacks
    def test_unknown_path(self) -> Any:
        response, _ = yield self.get("/nothing")
        self.assertEqual(response.code, 404)


class StatusServiceTests(unittest.TestCase):
    @inlineCallbacks
    def test_proxy_serves_status(self) -> Any:
        config = ProxyConfig(listen=[parse_listen("udp:127.0.0.1:0")], status="tcp:0:interface=127.0.0.1")
        service = make_service(config)
        service.startService()
        self.addCleanup(service.stopService)
        status = [s for s in service if type(s).__name__ == "StreamServerEndpointService"][0]
        # Not yielding the service's own Deferred: stopService needs its
        # result (the port) later.
        listening: Deferred[Any] = Deferred()
        status._waitingForPort.addCallback(lambda port: listening.callback(port) or port)
        port = yield listening
        response = yield treq.get(
            f"http://127.0.0.1:{port.getHost().port}/status.json",
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        data = json.loads((yield treq.content(response)))
        self.assertEqual(len(data["legs"]), 1)
        self.assertTrue(data["legs"][0].startswith("Leg udp:127.0.0.1:"))


class BoundedCountersTests(unittest.TestCase):
    def test_invented_methods_share_one_key(self) -> None:
        stats = ProxyStats()
        for method in ("INVITE", "FOO", "BAR", "X" * 100):
            stats.requests[stats.method(method)] += 1
        self.assertEqual(dict(stats.requests), {"INVITE": 1, "other": 3})
