"""
Tests for L{sipleg.workers}: C{twistd sipproxy --workers N}.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from sipleg.workers import worker_arguments
from tests.interop.peers import free_port, listening
from tests.test_plugin import READY_POLL, READY_TIMEOUT, ProxyProcessTestCase, TwistdTestCase


class WorkerArgumentsTests(unittest.TestCase):
    def test_workers_dropped_reuse_port_added(self) -> None:
        self.assertEqual(
            worker_arguments(["--workers", "3", "--listen", "udp:127.0.0.1:5"]),
            ["--listen", "udp:127.0.0.1:5", "--workers=1", "--reuse-port"],
        )
        self.assertEqual(
            worker_arguments(["--workers=2", "--trace"]), ["--trace", "--workers=1", "--reuse-port"]
        )
        # The supervisor serves --status; each worker gets its own.
        self.assertEqual(
            worker_arguments(["--status", "tcp:8060", "--trace", "--status=tcp:1", "--workers", "2"]),
            ["--trace", "--workers=1", "--reuse-port"],
        )


def children(pid: int) -> list[int]:
    """
    The child processes of C{pid} (Linux).
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(text) for text in f.read().split()]
    except FileNotFoundError:
        return []


class WorkerBadOptionTests(TwistdTestCase):
    def test_registrar_refused(self) -> None:
        done = self.run_twistd("sipproxy", "--workers", "2", "--registrar", "--domain", "example.test")
        self.assertEqual(done.returncode, 1)
        self.assertIn("--workers", done.stderr.strip())
        self.assertEqual(len(done.stderr.strip().splitlines()), 1)

    def test_count_bounded(self) -> None:
        done = self.run_twistd("sipproxy", "--workers", "0")
        self.assertEqual(done.returncode, 1)
        self.assertIn("--workers must be between 1 and 64", done.stderr)


class WorkerRunTests(ProxyProcessTestCase):
    """
    Two workers share the ports; a dead one is replaced; SIGTERM stops all.
    """

    @defer.inlineCallbacks
    def workers_listening(
        self, proc: Any, port: int, count: int, exclude: frozenset[int] = frozenset(), tcp: bool = True
    ) -> Any:
        for _ in range(int(READY_TIMEOUT / READY_POLL)):
            pids = [pid for pid in children(proc.pid) if pid not in exclude]
            ready = [
                pid
                for pid in pids
                if listening(pid, "udp", port) and (not tcp or listening(pid, "tcp", port))
            ]
            if len(ready) == count:
                return ready
            yield deferLater(reactor, READY_POLL, lambda: None)
        self.fail(f"{count} workers not listening on port {port}: {children(proc.pid)}")

    @defer.inlineCallbacks
    def test_two_workers(self) -> Any:
        port = free_port("udp+tcp")
        proc = self.start_twistd(
            "sipproxy",
            "--workers",
            "2",
            "--listen",
            f"udp:127.0.0.1:{port}",
            "--listen",
            f"tcp:127.0.0.1:{port}",
        )
        first = yield self.workers_listening(proc, port, 2)
        self.assertNotIn(proc.pid, first)
        yield self.call_through(port)
        # A worker killed outright is replaced (after the 1 s restart delay).
        os.kill(first[0], signal.SIGKILL)
        replaced = yield self.workers_listening(proc, port, 1, exclude=frozenset(first))
        self.assertNotIn(replaced[0], first)
        yield self.call_through(port)
        code, out, err = self.terminate(proc)
        self.assertIn(code, (0, -signal.SIGTERM), out[-2000:])
        self.assertEqual(children(proc.pid), [])
        # Each worker's listeners say which worker they are.
        for worker in ("1/2", "2/2"):
            self.assertIn(f"worker {worker}: listening on udp:127.0.0.1:{port}\n", out)
            self.assertIn(f"worker {worker}: listening on tcp:127.0.0.1:{port}\n", out)
        for pid in (first[1], replaced[0]):
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the supervisor")

    @defer.inlineCallbacks
    def test_workers_die_with_a_killed_supervisor(self) -> Any:
        """
        C{kill -9} of the supervisor: its workers go too (SIGTERM from the
        kernel, PR_SET_PDEATHSIG), so a new supervisor does not share the
        ports with a stale set.
        """
        port = free_port("udp")
        proc = self.start_twistd("sipproxy", "--workers", "2", "--listen", f"udp:127.0.0.1:{port}")
        workers = yield self.workers_listening(proc, port, 2, tcp=False)
        proc.kill()
        proc.wait(10)
        for _ in range(int(READY_TIMEOUT / READY_POLL)):
            alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and _running(pid)]
            if not alive:
                break
            yield deferLater(reactor, READY_POLL, lambda: None)
        self.assertEqual(alive, [], "workers outlived their supervisor")


def _running(pid: int) -> bool:
    """
    Whether C{pid} runs (a zombie waiting for init to reap it does not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
