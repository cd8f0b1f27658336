"""
The proxy's status (L{sipleg.status.proxy_status}, or the sum over
workers of L{sipleg.workerstatus}) as Prometheus metric families, through
C{prometheus_client}'s custom collector: the library writes the
exposition (escaping, C{HELP}/C{TYPE}, OpenMetrics when asked for).

The families (names kept from the hand-written exposition before them):

    sipleg_uptime_seconds                 gauge
    sipleg_requests_total{method}         counter
    sipleg_forwarded_total{method}        counter
    sipleg_responses_total{class}         counter
    sipleg_answered_total{code}           counter
    sipleg_dropped_total{reason}          counter
    sipleg_banned_sources                 gauge
    sipleg_leg_received_total{leg}        counter
    sipleg_leg_sent_total{leg}            counter
    sipleg_leg_connections{leg}           gauge
    sipleg_leg_receive_queue_bytes{leg}   gauge (Linux)
    sipleg_leg_kernel_drops_total{leg}    counter (Linux)
    sipleg_bindings                       gauge (--registrar)
    sipleg_transactions                   gauge (--stateful)
    sipleg_branches                       gauge (--stateful)
    sipleg_flows{transport}               gauge (--registrar)
    sipleg_store_write_seconds            summary (--registrar)
    sipleg_worker_up{worker}              gauge (--workers)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.internet.threads import blockingCallFromThread

from sipleg.status import StatusSource

__all__ = ["StatusCollector", "status_families"]

#: The labelled counters: status key, family name, label, help.
_COUNTERS = (
    ("requests", "sipleg_requests_total", "method", "Requests received."),
    ("forwarded", "sipleg_forwarded_total", "method", "Requests forwarded."),
    ("responses", "sipleg_responses_total", "class", "Responses forwarded."),
    ("answered", "sipleg_answered_total", "code", "Requests answered by the proxy."),
    ("dropped", "sipleg_dropped_total", "reason", "Packets dropped."),
)

#: The per-leg figures: leg counter key, family type, name, help.
_LEG_FIGURES = (
    ("received", CounterMetricFamily, "sipleg_leg_received_total", "Messages received on the leg."),
    ("sent", CounterMetricFamily, "sipleg_leg_sent_total", "Messages sent from the leg."),
    ("connections", GaugeMetricFamily, "sipleg_leg_connections", "Stream connections open on the leg."),
    (
        "receive_queue_bytes",
        GaugeMetricFamily,
        "sipleg_leg_receive_queue_bytes",
        "Bytes waiting in the leg's socket to be read.",
    ),
    (
        "kernel_drops",
        CounterMetricFamily,
        "sipleg_leg_kernel_drops_total",
        "Packets the kernel dropped on the leg's socket (receive buffer full).",
    ),
)


def status_families(status: dict[str, Any]) -> list[Metric]:
    """
    The metric families of a status (the data of C{/status.json}).
    """
    families: list[Metric] = [
        GaugeMetricFamily("sipleg_uptime_seconds", "Seconds since the proxy started.", value=status["uptime"])
    ]
    for key, name, label, help_text in _COUNTERS:
        counter = CounterMetricFamily(name, help_text, labels=[label])
        for value, count in sorted(status[key].items()):
            counter.add_metric([value], count)
        families.append(counter)
    families.append(
        GaugeMetricFamily(
            "sipleg_banned_sources",
            "Sources banned now (flooding or failing to authenticate).",
            value=status.get("banned_sources", 0),
        )
    )
    legs = status.get("leg_counters", {})
    for key, family, name, help_text in _LEG_FIGURES:
        metric = family(name, help_text, labels=["leg"])
        for leg, figures in sorted(legs.items()):
            if key in figures:
                metric.add_metric([leg], figures[key])
        families.append(metric)
    registrar = status.get("registrar")
    if registrar is not None:
        families.append(
            GaugeMetricFamily("sipleg_bindings", "Registrations held.", value=registrar["bindings"])
        )
        flows = GaugeMetricFamily(
            "sipleg_flows",
            "Registrations reached over the hop they registered by (a connection, or a NAT'ed source).",
            labels=["transport"],
        )
        for transport, count in sorted(registrar.get("flows", {}).items()):
            flows.add_metric([transport], count)
        families.append(flows)
        families.append(
            SummaryMetricFamily(
                "sipleg_store_write_seconds",
                "Time the location store took to keep a change.",
                count_value=registrar["store_writes"],
                sum_value=registrar["store_write_seconds"],
            )
        )
    stateful = status.get("stateful")
    if stateful is not None:
        families.append(
            GaugeMetricFamily(
                "sipleg_transactions",
                "Live server transactions (--stateful).",
                value=stateful["transactions"],
            )
        )
        families.append(
            GaugeMetricFamily(
                "sipleg_branches",
                "Client transactions kept: pending, or ended and absorbing retransmissions (--stateful).",
                value=stateful["branches"],
            )
        )
    workers = status.get("workers")
    if workers is not None:
        up = GaugeMetricFamily(
            "sipleg_worker_up", "Whether the worker answered this scrape.", labels=["worker"]
        )
        for worker in workers:
            up.add_metric([str(worker["worker"])], 1 if worker["up"] else 0)
        families.append(up)
    return families


class StatusCollector(Collector):
    """
    A C{prometheus_client} collector reading the status at scrape time.

    C{prometheus_client}'s Twisted resource collects in a thread of the
    reactor's pool; the status is read on the reactor thread (the
    counters are not safe to read from another thread, and a status may
    come as a L{Deferred}, as the workers' sum does).
    """

    def __init__(self, source: StatusSource, reactor: Any = None) -> None:
        """
        @param source: gives the status, or a L{Deferred} of it.
        @param reactor: the reactor running C{source}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self._source = source
        self._reactor = reactor

    def collect(self) -> Iterator[Metric]:
        # A Deferred source has fired by the time this returns.
        status = cast("dict[str, Any]", blockingCallFromThread(self._reactor, self._source))
        yield from status_families(status)
