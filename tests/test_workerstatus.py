"""
Tests for L{sipleg.workerstatus}: the supervisor of C{--workers N}
serves the sum of its workers' status on C{--status}.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from sipleg.workerstatus import sum_status
from tests.interop.peers import free_port
from tests.support import fetch, metric_values, options, poll_status, spawn_twistd

#: OPTIONS sent to the workers, each from a new source port.
REQUESTS = 200
#: Seconds the twistd child may run at most.
CHILD_TIMEOUT = 60


def worker(n: int, requests: int, bindings: int, drops: int) -> dict[str, Any]:
    return {
        "uptime": 5.0,
        "legs": ["Leg udp:127.0.0.1:5060"],
        "requests": {"OPTIONS": requests},
        "forwarded": {},
        "responses": {"2xx": n},
        "answered": {"200": requests},
        "dropped": {"banned": n},
        "banned_sources": 1,
        "leg_counters": {"udp:127.0.0.1:5060": {"connections": 0, "kernel_drops": drops}},
        "registrar": {
            "bindings": bindings,
            "flows": {"tcp": bindings // 2, "udp": n},
            "store_writes": 2,
            "store_write_seconds": 0.5,
        },
        "stateful": {"transactions": n, "branches": 2 * n},
    }


class SumStatusTests(unittest.TestCase):
    def test_sum(self) -> None:
        """
        Counters, bans, leg figures and transactions add up; bindings and their flows
        (shared through Redis, seen whole by every worker) are the largest
        reported.
        """
        total = sum_status([worker(1, 3, 10, 1), worker(2, 4, 11, 0)], uptime=9.0)
        self.assertEqual(
            total,
            {
                "uptime": 9.0,
                "legs": ["Leg udp:127.0.0.1:5060"],
                "requests": {"OPTIONS": 7},
                "forwarded": {},
                "responses": {"2xx": 3},
                "answered": {"200": 7},
                "dropped": {"banned": 3},
                "banned_sources": 2,
                "leg_counters": {"udp:127.0.0.1:5060": {"connections": 0, "kernel_drops": 1}},
                "registrar": {
                    "bindings": 11,
                    "flows": {"tcp": 5, "udp": 2},
                    "store_writes": 4,
                    "store_write_seconds": 1.0,
                },
                "stateful": {"transactions": 3, "branches": 6},
            },
        )

    def test_none_up(self) -> None:
        total = sum_status([], uptime=1.0)
        self.assertEqual(total["requests"], {})
        self.assertNotIn("registrar", total)


class SupervisorStatusTests(unittest.TestCase):
    """
    C{twistd sipproxy --workers 2 --status tcp:127.0.0.1:PORT}: traffic
    spread over both workers by C{SO_REUSEPORT} is counted once, in sum;
    a killed worker shows as down without failing the page, and its
    replacement serves its status on the socket it left behind.
    """

    timeout = 90

    @inlineCallbacks
    def test_sum_over_workers(self) -> Any:
        sip_port, status_port = free_port("udp"), free_port("tcp")
        rundir = Path(self.mktemp())
        rundir.mkdir(parents=True)
        proc = spawn_twistd(
            self,
            rundir,
            rundir / "out",
            "sipproxy",
            "--workers",
            "2",
            "--listen",
            f"udp:127.0.0.1:{sip_port}",
            "--status",
            f"tcp:127.0.0.1:{status_port}",
            stop_timeout=CHILD_TIMEOUT / 4,
        )
        base = f"http://127.0.0.1:{status_port}"

        def all_up(status: dict[str, Any]) -> bool:
            return all(w["up"] for w in status["workers"]) and all(
                status["leg_counters"] for status in [w["status"] for w in status["workers"]]
            )

        yield poll_status(base, all_up, wait=20)
        uri = f"sip:127.0.0.1:{sip_port}"
        for n in range(REQUESTS):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind(("127.0.0.1", 0))
                client.sendto(options(uri, n, client.getsockname()[1]), ("127.0.0.1", sip_port))
        status = yield poll_status(base, lambda status: status["requests"].get("OPTIONS") == REQUESTS)
        each = [w["status"]["requests"].get("OPTIONS", 0) for w in status["workers"]]
        self.assertEqual(sum(each), REQUESTS)
        self.assertTrue(all(count > 0 for count in each), each)
        self.assertEqual(status["answered"], {"200": REQUESTS})
        self.assertEqual(status["legs"], [f"Leg udp:127.0.0.1:{sip_port}"])

        response, body = yield fetch(base + "/metrics")
        self.assertEqual(response.code, 200)
        values = metric_values(body)
        self.assertEqual(values[("sipleg_requests_total", (("method", "OPTIONS"),))], REQUESTS)
        self.assertEqual(values[("sipleg_answered_total", (("code", "200"),))], REQUESTS)
        self.assertEqual(values[("sipleg_worker_up", (("worker", "1"),))], 1)
        self.assertEqual(values[("sipleg_worker_up", (("worker", "2"),))], 1)
        leg = f"udp:127.0.0.1:{sip_port}"
        self.assertEqual(values[("sipleg_leg_connections", (("leg", leg),))], 0)

        # A killed worker is down (restarting) for the page, which still
        # answers with the other's counts...
        killed = status["workers"][0]["pid"]
        os.kill(killed, signal.SIGKILL)
        status = yield poll_status(base, lambda status: not status["workers"][0]["up"])
        self.assertEqual(status["requests"]["OPTIONS"], each[1])
        response, body = yield fetch(base + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(metric_values(body)[("sipleg_worker_up", (("worker", "1"),))], 0)
        # ... until its replacement serves on the socket it left behind.
        status = yield poll_status(base, all_up, wait=20)
        self.assertNotEqual(status["workers"][0]["pid"], killed)
        self.assertEqual(status["workers"][0]["status"]["requests"], {})
        proc.send_signal(signal.SIGTERM)
        proc.wait(CHILD_TIMEOUT / 4)
        self.assertIn(proc.returncode, (0, -signal.SIGTERM))
        output = (rundir / "out").read_text()
        self.assertNotIn("Traceback", output)
