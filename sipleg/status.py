"""
What the proxy has done, for operators: a small HTTP status page
(C{twistd sipproxy --status tcp:8060:interface=127.0.0.1}).

L{StatusPage} renders the counters of L{sipleg.stats.ProxyStats} with
C{twisted.web} as JSON (C{/status.json}) and in the Prometheus text
format (C{/metrics}).  This module (and C{twisted.web} with it) is
imported only when C{--status} is given.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request as HTTPRequest

from sipleg.stats import ProxyStats

__all__ = ["ProxyStats", "StatusPage"]


def _prometheus(name: str, label: str, counts: Counter[Any], help_text: str) -> list[str]:
    lines = [f"# HELP sipleg_{name} {help_text}", f"# TYPE sipleg_{name} counter"]
    for key, value in sorted(counts.items(), key=lambda item: str(item[0])):
        text = str(key).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'sipleg_{name}{{{label}="{text}"}} {value}')
    return lines


class StatusPage(Resource):
    """
    The status site: C{/status.json} and C{/metrics}.
    """

    def __init__(self, stats: ProxyStats, legs: Callable[[], Sequence[str]]) -> None:
        """
        @param stats: the proxy's counters.
        @param legs: returns a description of each leg (L{Leg.dump}).
        """
        super().__init__()
        self.putChild(b"status.json", _JSON(stats, legs))
        self.putChild(b"metrics", _Metrics(stats))

    def render_GET(self, request: HTTPRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"sipleg proxy status: /status.json, /metrics\n"

    def getChild(self, path: bytes, request: HTTPRequest) -> IResource:
        return notFound()


class _JSON(Resource):
    isLeaf = True

    def __init__(self, stats: ProxyStats, legs: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self.stats = stats
        self.legs = legs

    def render_GET(self, request: HTTPRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        body = {"legs": list(self.legs()), **self.stats.snapshot()}
        return json.dumps(body, sort_keys=True).encode() + b"\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, stats: ProxyStats) -> None:
        super().__init__()
        self.stats = stats

    def render_GET(self, request: HTTPRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4")
        stats = self.stats
        lines = [
            "# HELP sipleg_uptime_seconds Seconds since the proxy started.",
            "# TYPE sipleg_uptime_seconds gauge",
            f"sipleg_uptime_seconds {stats.snapshot()['uptime']}",
        ]
        lines += _prometheus("requests_total", "method", stats.requests, "Requests received.")
        lines += _prometheus("forwarded_total", "method", stats.forwarded, "Requests forwarded.")
        lines += _prometheus("responses_total", "class", stats.responses, "Responses forwarded.")
        lines += _prometheus("answered_total", "code", stats.answered, "Requests answered by the proxy.")
        lines += _prometheus("dropped_total", "reason", stats.dropped, "Packets dropped.")
        if stats.registrar is not None:
            registrar = stats.registrar()
            lines += [
                "# HELP sipleg_bindings Registrations held.",
                "# TYPE sipleg_bindings gauge",
                f"sipleg_bindings {registrar['bindings']}",
                "# HELP sipleg_store_write_seconds Time the location store took to keep a change.",
                "# TYPE sipleg_store_write_seconds summary",
                f"sipleg_store_write_seconds_count {registrar['store_writes']}",
                f"sipleg_store_write_seconds_sum {registrar['store_write_seconds']}",
            ]
        return ("\n".join(lines) + "\n").encode()
