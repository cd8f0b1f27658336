"""
Several proxy processes on the same ports: C{twistd sipproxy --workers N}.

The proxy keeps no state between packets, so N full proxies can share the
listening ports with C{SO_REUSEPORT} and the kernel spreads datagrams and
connections over them.  The parent process does no SIP: a
L{WorkerSupervisor} starts the N children (each runs C{twist
sipproxy ... --reuse-port} through L{main}), restarts one that dies, and
stops them all with itself.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.service import RELAY_SECRET_VARIABLE, WORKER_VARIABLE

__all__ = ["WorkerSupervisor", "worker_arguments"]

log = Logger()


#: The supervisor's own options, which its workers do not get.
_SUPERVISOR_OPTIONS = ("--workers", "--status")


def worker_arguments(argv: Sequence[str]) -> list[str]:
    """
    The command line of one worker: the parent's options without
    C{--workers} and C{--status} (the supervisor's), plus C{--workers=1}
    (overriding a C{--config} file's) and C{--reuse-port}.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _SUPERVISOR_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in _SUPERVISOR_OPTIONS)):
            out.append(arg)
    return [*out, "--workers=1", "--reuse-port"]


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class WorkerSupervisor(Service):
    """
    Runs C{count} worker processes and keeps them running.

    @ivar restart_delay: seconds before a dead worker is started again.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        count: int,
        reactor: Any = None,
        restart_delay: float = 1.0,
        executable: str = sys.executable,
        stop_timeout: float = 10.0,
        status_dir: str | None = None,
    ) -> None:
        """
        @param arguments: the worker's C{sipproxy} options (see
            L{worker_arguments}).
        @param count: how many workers.
        @param reactor: spawns the processes and times the restarts.
        @param restart_delay: seconds between a worker's death and its
            replacement (a worker that cannot start is not retried in a
            busy loop).
        @param executable: the Python interpreter running the workers.
        @param stop_timeout: seconds the workers get to stop on SIGTERM
            before they are killed.
        @param status_dir: a directory where worker C{N} serves its status
            on the UNIX socket L{status_socket}C{(N)} (L{None}: no status).
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.arguments = list(arguments)
        self.count = count
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        self.executable = executable
        self.status_dir = status_dir
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        #: What the workers' flow relays prove themselves with.
        self._secret = secrets.token_hex(16)
        self._pending: dict[int, IDelayedCall] = {}
        self._restore_sighup: Callable[[], None] = lambda: None

    def startService(self) -> None:
        Service.startService(self)
        from sipleg.reload import on_sighup

        self._restore_sighup = on_sighup(self.reload, self._reactor)
        for slot in range(self.count):
            self._spawn(slot)

    def reload(self) -> None:
        """
        Pass a SIGHUP on to every worker: each reloads its configuration
        (L{sipleg.reload}).
        """
        log.info("reloading {count} workers", count=len(self.workers))
        for _, process in list(self.workers.values()):
            self._signal(process, signal.SIGHUP)

    def _spawn(self, slot: int) -> None:
        self._pending.pop(slot, None)
        worker = _Worker(self, slot)
        argv = [self.executable, "-m", "sipleg.workers", "--log-format=text", "sipproxy", *self.arguments]
        if self.status_dir is not None:
            argv += ["--status", f"unix:{self.status_socket(slot)}"]
        env = dict(os.environ, **{WORKER_VARIABLE: self._label(slot), RELAY_SECRET_VARIABLE: self._secret})
        process = self._reactor.spawnProcess(
            worker, self.executable, argv, env=env, childFDs={0: "w", 1: 1, 2: 2}
        )
        self.workers[slot] = (worker, process)
        log.info("started worker {worker} (pid {pid})", worker=self._label(slot), pid=process.pid)

    def _label(self, slot: int) -> str:
        """
        How the worker in C{slot} is named in the log: C{"2/4"}.
        """
        return f"{slot + 1}/{self.count}"

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.slot, (None,))[0] is worker:
            del self.workers[worker.slot]
        if not self.running:
            return
        log.warn(
            "worker {worker} ended ({why}); restarting in {delay} s",
            worker=self._label(worker.slot),
            why=reason.value,
            delay=self.restart_delay,
        )
        self._pending[worker.slot] = self._reactor.callLater(self.restart_delay, self._spawn, worker.slot)

    def status_socket(self, slot: int) -> str:
        """
        The UNIX socket where worker C{slot} serves its status.
        """
        assert self.status_dir is not None
        return os.path.join(self.status_dir, f"{slot}.sock")

    def pids(self) -> list[int]:
        """
        The process ids of the running workers.
        """
        return [process.pid for _, process in self.workers.values() if process.pid is not None]

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        self._restore_sighup()
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        ended = []
        for worker, process in list(self.workers.values()):
            ended.append(worker.ended)
            self._signal(process, signal.SIGTERM)
        # A worker that ignores SIGTERM is killed after stop_timeout.
        kill = self._reactor.callLater(self.stop_timeout, self._kill_all)
        done = DeferredList(ended)
        done.addBoth(lambda result: kill.cancel() if kill.active() else None)
        return done

    def _kill_all(self) -> None:
        for _, process in list(self.workers.values()):
            self._signal(process, signal.SIGKILL)

    @staticmethod
    def _signal(process: Any, signum: int) -> None:
        try:
            process.signalProcess(signum)
        except ProcessExitedAlready:
            pass


def main(argv: Sequence[str] = sys.argv) -> None:
    """
    Run one worker: C{twist} with the given arguments, in a process group
    of its own, so that only its supervisor stops it (a signal sent to the
    parent's whole group would otherwise reach it twice).  On Linux the
    worker gets SIGTERM when its supervisor dies, however it dies
    (C{kill -9} included): workers never outlive it, and a new supervisor
    never shares its ports with a stale set.
    """
    from twisted.application.twist._twist import Twist

    parent = os.getppid()
    os.setpgrp()
    _die_with_parent(parent)
    Twist.main(argv)


def _die_with_parent(parent: int) -> None:
    """
    Ask Linux for SIGTERM when the parent dies (C{PR_SET_PDEATHSIG}); if
    it died already, stop now.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit("sipleg worker: the supervisor is gone")


if __name__ == "__main__":
    main()
