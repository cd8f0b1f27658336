"""
C{twistd} with probes, for C{bench/register_load.py --probe}: where does
the reactor stall while REGISTERs are stored?

Runs C{twistd ARGS...} in this process after installing, from the
outside (nothing in C{sipleg} changes):

 - a C{gc.callbacks} hook: every collection, its generation, thread and
   duration;
 - a wrapper of C{SQLiteStore._commit}: every commit of the writer thread,
   its batch size and duration (the fsync included);
 - a wrapper of the reactor's C{runUntilCurrent}: every reactor turn that
   ran calls queued by other threads (C{callFromThread}: the store's
   answers), how many, how long it took and the reactor thread's CPU
   time meanwhile;
 - a wrapper of Twisted's UDP C{Port.doRead}: every read of the proxy's
   socket, the datagrams it handled, its duration and the reactor
   thread's CPU time meanwhile (duration minus CPU: time the thread was
   ready but not running, waiting for the GIL or for the CPU).

Everything goes to the JSON file named by C{$PROBE_OUT} when the reactor
stops (times are C{time.time()}, the clock of the packet capture)::

    PROBE_OUT=/tmp/probe.json python3 bench/register_probe.py --pidfile= -n sipproxy ...

With C{PROBE_NO_DEBUG=1}, debug-level events are not even built (Twisted's
C{Logger.debug} does nothing): what a log level filter would save, as
C{twistd}'s log file takes every level.  With C{PROBE_SWITCH_INTERVAL=S},
C{sys.setswitchinterval(S)}: how long a thread waiting for the GIL lets
the holder run before asking it to let go (CPython's default: 5 ms).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any

OUT = os.environ["PROBE_OUT"]
events: dict[str, list[tuple[Any, ...]]] = {"gc": [], "commit": [], "burst": [], "read": []}
_datagrams = [0]
_gc_started: dict[int, float] = {}


def _on_gc(phase: str, info: dict[str, int]) -> None:
    ident = threading.get_ident()
    if phase == "start":
        _gc_started[ident] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started.pop(ident, time.perf_counter())
    events["gc"].append((time.time(), info["generation"], took, threading.current_thread().name))


def install() -> None:
    gc.callbacks.append(_on_gc)
    if os.environ.get("PROBE_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["PROBE_SWITCH_INTERVAL"]))
    if os.environ.get("PROBE_NO_DEBUG"):
        from twisted.logger import Logger

        Logger.debug = lambda self, format=None, **kwargs: None  # type: ignore[method-assign]

    from sipleg import store

    commit = store.SQLiteStore._commit

    def timed_commit(self: Any, jobs: list[Any]) -> None:
        at = time.time()
        started = time.perf_counter()
        try:
            commit(self, jobs)
        finally:
            events["commit"].append((at, len(jobs), time.perf_counter() - started))

    store.SQLiteStore._commit = timed_commit  # type: ignore[method-assign]

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    kind: Any = type(reactor)
    run_until_current = kind.runUntilCurrent

    def timed_run(self: Any) -> None:
        queued = len(self.threadCallQueue)
        at = time.time()
        started = time.perf_counter()
        cpu = time.thread_time()
        run_until_current(self)
        if queued:
            took = time.perf_counter() - started
            events["burst"].append((at, queued, took, time.thread_time() - cpu))

    kind.runUntilCurrent = timed_run

    from twisted.internet import udp

    from sipleg.transport import udp as sipleg_udp

    received = sipleg_udp._DatagramReader.datagramReceived

    def counted(self: Any, datagram: bytes, addr: Any) -> None:
        _datagrams[0] += 1
        received(self, datagram, addr)

    sipleg_udp._DatagramReader.datagramReceived = counted  # type: ignore[method-assign]
    read = udp.Port.doRead

    def timed_read(self: Any) -> None:
        before = _datagrams[0]
        at = time.time()
        started = time.perf_counter()
        cpu = time.thread_time()
        read(self)
        took = time.perf_counter() - started
        events["read"].append((at, _datagrams[0] - before, took, time.thread_time() - cpu))

    udp.Port.doRead = timed_read  # type: ignore[method-assign]

    def dump() -> None:
        with open(OUT, "w") as f:
            json.dump(events, f)

    reactor.addSystemEventTrigger("after", "shutdown", dump)


if __name__ == "__main__":
    install()
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()
