"""
Crash safety of L{sipleg.registrar.Registrar} persistence: a child process
registers bindings one after another, persisting each change, and is killed
with SIGKILL at random moments.  After every kill the registrations file
must load (the old or the new state, never a torn one) and hold a prefix of
the registrations the child made, never fewer than before.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from twisted.trial import unittest

from sipleg.registrar import BindingTable

NOW = 1_700_000_000.0
KILLS = 20
#: Registrations the child makes at most over all its lives (bounded loop).
LIMIT = 20_000

# The child: load the file (as a restarted proxy would), say how many
# bindings it found, then register u<n>, u<n+1>, ... until killed.
CHILD = """
import sys
from twisted.internet.task import Clock
from sipleg.message import Request
from sipleg.registrar import Registrar

path, limit, now = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
clock = Clock()
clock.advance(now)
registrar = Registrar(["example.com"], clock, path)
start = len(registrar.bindings())
sys.stdout.write(f"{start}\\n")
sys.stdout.flush()
for n in range(start, limit):
    request = Request("REGISTER", "sip:example.com", [
        ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{n}"),
        ("From", f"<sip:u{n}@example.com>;tag=t{n}"),
        ("To", f"<sip:u{n}@example.com>"),
        ("Call-ID", f"call-{n}"),
        ("CSeq", "1 REGISTER"),
        ("Contact", f"<sip:u{n}@192.0.2.1:{10000 + n}>"),
    ])
    response = registrar.register(request)
    if response.code != 200:
        sys.exit(f"REGISTER {n}: {response.code}")
"""


class CrashTests(unittest.TestCase):
    def load(self, path: str) -> int:
        """
        Load the file and check it holds exactly u0 .. u<k-1>.

        @return: k.
        """
        with open(path, "rb") as f:
            table = BindingTable.from_json(f.read(), NOW, ["example.com"])
        bindings = table.bindings(NOW)
        count = len(bindings)
        self.assertEqual(
            [(b.aor, b.contact, b.order) for b in bindings],
            [
                (f"sip:u{n}@example.com", f"sip:u{n}@192.0.2.1:{10000 + n}", n)
                for n in range(count)
            ],
        )
        self.assertEqual(table.known_users, frozenset(b.aor for b in bindings))
        return count

    def test_sigkill_at_random_moments(self) -> None:
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        path = os.path.join(os.path.abspath(self.mktemp()), "registrations.json")
        os.makedirs(os.path.dirname(path))
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        committed = 0
        for kill in range(KILLS):
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, path, str(LIMIT), repr(NOW)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            try:
                assert child.stdout is not None
                line = child.stdout.readline()
                # The child found what the last kill left.
                self.assertEqual(line, f"{committed}\n".encode(), f"seed {seed}, kill {kill}")
                time.sleep(rng.uniform(0, 0.05))
                child.send_signal(signal.SIGKILL)
                code = child.wait(timeout=10)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                assert child.stdout is not None and child.stderr is not None
                child.stdout.close()
                errors = child.stderr.read()
                child.stderr.close()
            self.assertIn(code, (-signal.SIGKILL, 0), f"seed {seed}: {errors!r}")
            count = self.load(path)
            self.assertGreaterEqual(count, committed, f"seed {seed}, kill {kill}")
            committed = count
        # The child did get work done between kills.
        self.assertGreater(committed, KILLS)
