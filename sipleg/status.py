"""
What the proxy has done, for operators: a small HTTP status site
(C{twistd sipproxy --status tcp:8060}).

L{StatusPage} serves a status (L{proxy_status}: the counters of
L{sipleg.stats.ProxyStats}, the registrar's figures, the banned sources and
each leg's socket) as JSON (C{/status.json}) and, through
C{prometheus_client}, in the Prometheus and OpenMetrics text formats
(C{/metrics}, L{sipleg.metrics}).  This module (and C{twisted.web} and
C{prometheus_client} with it) is imported only when C{--status} is given.
Everything is read when a page is asked for: the proxy's hot path keeps
its plain counters and pays nothing for the page.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.server import Request as HTTPRequest

from sipleg.stats import ProxyStats

if TYPE_CHECKING:
    from sipleg.leg import Leg
    from sipleg.proxy import StatelessProxy

__all__ = ["ProxyStats", "StatusPage", "StatusSource", "leg_name", "proxy_status", "status_site"]

log = Logger()

#: Returns the status (JSON-able), or a L{Deferred} firing with it.
StatusSource = Callable[[], "dict[str, Any] | Deferred[dict[str, Any]]"]

#: C{getsockopt(SOL_SOCKET, SO_MEMINFO)} (Linux): the socket's memory
#: figures, of which we read the bytes queued for reading (index 0) and
#: the packets the kernel dropped (index 8, C{SK_MEMINFO_DROPS}).
_SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")


def leg_name(leg: Leg) -> str:
    """
    The name of a leg in the status: C{udp:127.0.0.1:5060}.
    """
    return f"{leg.proto}:{leg.local.hostport}"


def socket_counters(sock: socket.socket | None) -> dict[str, int]:
    """
    What the kernel counts for a socket: the bytes waiting to be read and
    the packets it dropped (a full receive buffer), on Linux; nothing
    elsewhere or without a socket.
    """
    if sock is None or not sys.platform.startswith("linux"):
        return {}
    try:
        info = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))
    except (OSError, struct.error):
        return {}
    return {"receive_queue_bytes": info[0], "kernel_drops": info[8]}


def proxy_status(proxy: StatelessProxy, legs: Sequence[Leg]) -> dict[str, Any]:
    """
    The status of a proxy process, as plain JSON-able data: the counters
    of L{ProxyStats.snapshot}, C{legs} (each leg's L{Leg.dump}), the
    number of C{banned_sources}, and C{leg_counters}: per leg, the
    messages received and sent, the open connections and its socket's
    kernel counters.
    """
    counters = {}
    for leg in legs:
        pool = leg.socketpool
        counters[leg_name(leg)] = {
            "received": leg.received,
            "sent": leg.sent,
            "connections": len(pool.connections()),
            **socket_counters(getattr(pool, "listening_socket", None)),
        }
    return {
        "legs": [leg.dump() for leg in legs],
        **proxy.stats.snapshot(),
        "banned_sources": len(proxy.banned()),
        "leg_counters": counters,
    }


class StatusPage(Resource):
    """
    The status site: C{/status.json} and C{/metrics}.
    """

    def __init__(self, source: StatusSource, reactor: Any = None) -> None:
        """
        @param source: gives the status when a page is asked for.
        @param reactor: the reactor the metrics are read on (from
            C{prometheus_client}'s thread).
        """
        super().__init__()
        # prometheus_client (and its registry types) only with --status.
        from prometheus_client import CollectorRegistry
        from prometheus_client.twisted import MetricsResource

        from sipleg.metrics import StatusCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(source, reactor))
        self.putChild(b"status.json", _JSON(source))
        self.putChild(b"metrics", MetricsResource(registry=registry))

    def render_GET(self, request: HTTPRequest) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"sipleg proxy status: /status.json, /metrics\n"

    def getChild(self, path: bytes, request: HTTPRequest) -> IResource:
        return notFound()


def status_site(source: StatusSource, reactor: Any = None) -> Site:
    """
    The HTTP site serving L{StatusPage}.
    """
    return Site(StatusPage(source, reactor))


class _JSON(Resource):
    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self.source = source

    def render_GET(self, request: HTTPRequest) -> Any:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def write(status: dict[str, Any]) -> None:
            if gone:
                return
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(status, sort_keys=True).encode() + b"\n")
            request.finish()

        def failed(reason: Failure) -> None:
            log.failure("status page failed", reason)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        found: Deferred[Any] = maybeDeferred(self.source)
        found.addCallback(write).addErrback(failed)
        return NOT_DONE_YET
