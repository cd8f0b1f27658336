"""
C{--status} with C{--workers N}: each worker serves its own status on a
UNIX socket in a directory of the supervisor's making, and the supervisor
serves the sum (L{sum_status}) on the C{--status} endpoint, read from its
workers at each request (L{WorkerStatus}).

Counters and the per-leg figures are summed, as are the banned sources
(each worker bans on its own, so a source banned by two workers counts
twice).  Registrations are not: with the shared Redis store every worker
holds all of them, so C{bindings} is the largest any worker reports.  A
worker that is restarting or does not answer in time is listed as down
(C{sipleg_worker_up} 0) and left out of the sum; the page never fails for
it.  Its counters leave the sum with it (a dip Prometheus reads as a
counter reset).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import treq
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from sipleg.workers import WorkerSupervisor, worker_arguments

__all__ = ["WorkerStatus", "sum_status", "supervise_with_status"]

#: Seconds a worker has to give its status.
WORKER_STATUS_TIMEOUT = 2.0

#: The status keys that are counters by label, summed over workers.
_COUNTED = ("requests", "forwarded", "responses", "answered", "dropped")


def _add(total: dict[str, Any], counts: dict[str, Any]) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value


def sum_status(statuses: Sequence[dict[str, Any]], uptime: float) -> dict[str, Any]:
    """
    The status of several workers as one (see the module's rules).

    @param statuses: each answering worker's status
        (L{sipleg.status.proxy_status}).
    @param uptime: the supervisor's uptime.
    """
    total: dict[str, Any] = {
        "uptime": uptime,
        "legs": [],
        **{key: {} for key in _COUNTED},
        "banned_sources": 0,
        "leg_counters": {},
    }
    for status in statuses:
        for key in _COUNTED:
            _add(total[key], status.get(key, {}))
        total["banned_sources"] += status.get("banned_sources", 0)
        for leg, figures in status.get("leg_counters", {}).items():
            _add(total["leg_counters"].setdefault(leg, {}), figures)
        total["legs"] += [leg for leg in status.get("legs", []) if leg not in total["legs"]]
        registrar = status.get("registrar")
        if registrar is not None:
            kept = total.setdefault(
                "registrar", {"bindings": 0, "store_writes": 0, "store_write_seconds": 0.0}
            )
            kept["bindings"] = max(kept["bindings"], registrar["bindings"])
            # (Every worker holds every binding of a shared store.)
            flows = kept.setdefault("flows", {})
            for transport, count in registrar.get("flows", {}).items():
                flows[transport] = max(flows.get(transport, 0), count)
            kept["store_writes"] += registrar["store_writes"]
            kept["store_write_seconds"] = round(
                kept["store_write_seconds"] + registrar["store_write_seconds"], 6
            )
        if "stateful" in status:
            # (Each worker keeps its own transactions.)
            _add(total.setdefault("stateful", {}), status["stateful"])
    return total


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """
    Connects C{http://N/...} to worker C{N}'s status socket.
    """

    def __init__(self, supervisor: WorkerSupervisor, reactor: Any, timeout: float) -> None:
        self._supervisor = supervisor
        self._reactor = reactor
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        path = self._supervisor.status_socket(int(uri.host))
        return UNIXClientEndpoint(self._reactor, path, timeout=self._timeout)


class WorkerStatus:
    """
    The supervisor's status: its workers' status, fetched and summed.
    """

    def __init__(
        self, supervisor: WorkerSupervisor, reactor: Any, timeout: float = WORKER_STATUS_TIMEOUT
    ) -> None:
        """
        @param supervisor: runs the workers (with a C{status_dir}).
        @param reactor: connects to the workers and times them out.
        @param timeout: seconds a worker has to answer.
        """
        self._supervisor = supervisor
        self._reactor = reactor
        self._timeout = timeout
        self._started = reactor.seconds()
        self._agent = Agent.usingEndpointFactory(
            reactor,
            _WorkerSockets(supervisor, reactor, timeout),
            HTTPConnectionPool(reactor, persistent=False),
        )

    def status(self) -> Deferred[dict[str, Any]]:
        """
        @return: fires with the sum of the workers' status and the list
            of C{workers}: each one's number (1-based, as the log names
            it: C{worker 2/4}), pid, whether it is C{up}, and its
            C{status} (when up) or C{error} (when not).
        """
        supervisor = self._supervisor
        fetches = [self._worker(slot) for slot in range(supervisor.count)]
        return gatherResults(fetches).addCallback(self._summed)

    def _summed(self, workers: list[dict[str, Any]]) -> dict[str, Any]:
        uptime = round(self._reactor.seconds() - self._started, 3)
        total = sum_status([worker["status"] for worker in workers if worker["up"]], uptime)
        total["workers"] = workers
        return total

    def _worker(self, slot: int) -> Deferred[dict[str, Any]]:
        running = self._supervisor.workers.get(slot)
        pid = None if running is None else running[1].pid
        if running is None:
            return succeed(
                {"worker": slot + 1, "pid": None, "up": False, "error": "not running (restarting)"}
            )
        fetched = self._agent.request(b"GET", b"http://%d/status.json" % slot)
        fetched.addCallback(self._body)
        fetched.addTimeout(self._timeout, self._reactor)

        def up(status: dict[str, Any]) -> dict[str, Any]:
            return {"worker": slot + 1, "pid": pid, "up": True, "status": status}

        def down(reason: Failure) -> dict[str, Any]:
            return {
                "worker": slot + 1,
                "pid": pid,
                "up": False,
                "error": reason.getErrorMessage() or repr(reason.value),
            }

        return fetched.addCallbacks(up, down)

    @staticmethod
    def _body(response: Any) -> Deferred[dict[str, Any]]:
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        # treq's collector: twisted.web's readBody warns about a UNIX
        # socket transport.
        return treq.content(response).addCallback(json.loads)


class _Supervising(MultiService):
    """
    The supervisor and its status site; the workers' socket directory is
    removed once they have stopped.
    """

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._directory = directory

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[Any] = super().stopService()
        return stopped.addBoth(lambda _: shutil.rmtree(self._directory, ignore_errors=True))


def supervise_with_status(status: str, argv: Sequence[str], count: int, reactor: Any = None) -> MultiService:
    """
    A L{WorkerSupervisor} of C{count} workers, each serving its status in
    a new temporary directory, and the sum served on C{status}, bound now.

    @param status: the C{--status} option.
    @param argv: the supervisor's command line (see L{worker_arguments}).
    @raise sipleg.errors.ConfigError: C{status} cannot be bound.
    """
    from sipleg.status import status_site
    from sipleg.statusport import StatusServer, bind_status, parse_status

    if reactor is None:
        from twisted.internet import reactor
    sock = bind_status(parse_status(status))
    directory = tempfile.mkdtemp(prefix="sipleg-status-")
    top = _Supervising(directory)
    supervisor = WorkerSupervisor(worker_arguments(argv), count, reactor, status_dir=directory)
    supervisor.setServiceParent(top)
    site = status_site(WorkerStatus(supervisor, reactor).status, reactor)
    StatusServer(sock, site, reactor).setServiceParent(top)
    return top
