"""
Nothing answered is lost: C{twistd sipproxy --registrar --registrations
DB} takes a burst of REGISTERs over UDP (distinct users) and is killed with
SIGKILL in the middle of it, several times at random moments.  After every
kill, the store (SQLite, or Redis: C{RedisCrashTests}) holds every binding
the proxy answered 200 for, a restarted proxy finds them (it routes a
request for each user to its contact), and bindings expire on time after a
restart.
"""

from __future__ import annotations

import random
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

from twisted.trial import unittest

from tests.support import RedisServer, child_env, options, register, stored_bindings, twistd_argv

#: Kills per test.
KILLS = 3
#: REGISTERs in one burst (one user each), at most.
BURST = 1000
#: Seconds the child may take to answer its first OPTIONS.
READY = 15.0


class CrashTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.folder = Path(self.mktemp()).resolve()
        self.folder.mkdir(parents=True)
        self.db = self.folder / "bindings.db"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.addCleanup(self.sock.close)
        self.me = self.sock.getsockname()[1]

    def start(self) -> tuple[subprocess.Popen[bytes], int]:
        """
        Start the proxy on a free port; wait until it answers.
        """
        for _ in range(3):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            child = subprocess.Popen(
                twistd_argv(
                    "--logfile", str(self.folder / "twistd.log"), "sipproxy", "--registrar",
                    "--domain", "example.test", "--registrations", self.registrations(),
                    "--listen", f"udp:127.0.0.1:{port}",
                ),
                cwd=self.folder, env=child_env(), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.addCleanup(self.reap, child)
            deadline = time.monotonic() + READY
            self.sock.settimeout(0.2)
            while time.monotonic() < deadline and child.poll() is None:
                # Ready when its registrar is (a shared store is read after
                # the start): a REGISTER removing nothing gets 200.
                self.sock.sendto(register(-1, self.me, expires=0), ("127.0.0.1", port))
                try:
                    if self.sock.recv(65535).startswith(b"SIP/2.0 200 "):
                        self.drain()
                        return child, port
                except OSError:
                    pass
            self.reap(child)
        self.fail("the proxy did not start")

    def registrations(self) -> str:
        """
        The C{--registrations} value.
        """
        return str(self.db)

    def stored_users(self) -> set[int]:
        """
        The users with a binding in the store.
        """
        return {int(aor.split("@")[0][len("sip:u") :]) for aor, _ in stored_bindings(str(self.db))}

    def expire_stored(self, seconds: float) -> None:
        """
        Make the stored bindings expire C{seconds} earlier (as if that much
        time had passed).
        """
        with sqlite3.connect(self.db) as db:
            db.execute("UPDATE bindings SET expires_at = expires_at - ?", (seconds,))

    def reap(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)

    def drain(self) -> list[bytes]:
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(65535))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return got

    def answered(self, packets: list[bytes]) -> set[int]:
        """
        The users whose REGISTER got 200 among C{packets}.
        """
        users = {
            int(packet.split(b"Call-ID: reg-", 1)[1].split(b"\r\n", 1)[0])
            for packet in packets
            if packet.startswith(b"SIP/2.0 200 ") and b"Call-ID: reg-" in packet
        }
        users.discard(-1)
        return users

    def test_sigkill_in_a_burst(self) -> None:
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        first = 0
        answered: set[int] = set()
        for kill in range(KILLS):
            child, port = self.start()
            # A burst of new users (20 every 2 ms, up to 10,000/s), the
            # kill somewhere inside it once answers are coming back.
            before = len(answered)
            give_up = time.monotonic() + 10
            stop_at = None
            n = first
            while time.monotonic() < give_up:
                for _ in range(20 if n < first + BURST else 0):
                    self.sock.sendto(register(n, self.me), ("127.0.0.1", port))
                    n += 1
                answered |= self.answered(self.drain())
                if stop_at is None and len(answered) > before + 10:
                    stop_at = time.monotonic() + rng.uniform(0, 0.2)
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
                time.sleep(0.002)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            answered |= self.answered(self.drain())
            stored = self.stored_users()
            self.assertEqual(answered - stored, set(), f"seed {seed}, kill {kill}: answered 200, not stored")
            first = n
        self.assertGreater(len(answered), KILLS * 10, f"seed {seed}: too little work between kills")

        # A restarted proxy finds every binding answered: a request for
        # each user comes to its contact (here).
        child, port = self.start()
        sample = sorted(rng.sample(sorted(answered), min(200, len(answered))))
        for n in sample:
            self.sock.sendto(options(f"sip:u{n}@example.test", n, self.me), ("127.0.0.1", port))
        self.sock.settimeout(5)
        reached = set()
        while len(reached) < len(sample):
            packet = self.sock.recv(65535)
            if packet.startswith(b"OPTIONS sip:u"):
                reached.add(int(packet.split(b"OPTIONS sip:u", 1)[1].split(b"@", 1)[0]))
        self.assertEqual(reached, set(sample))
        self.reap(child)

    def test_expiry_after_a_restart(self) -> None:
        child, port = self.start()
        self.sock.sendto(register(1, self.me, expires=60), ("127.0.0.1", port))
        self.sock.sendto(register(2, self.me, expires=3600), ("127.0.0.1", port))
        self.sock.settimeout(5)
        got: list[bytes] = []
        while self.answered(got) != {1, 2}:
            got.append(self.sock.recv(65535))
        self.reap(child)
        # As if 61 s passed: the stored expiry moves back.
        self.expire_stored(61)
        child, port = self.start()
        self.sock.sendto(options("sip:u1@example.test", 1, self.me), ("127.0.0.1", port))
        self.sock.sendto(options("sip:u2@example.test", 2, self.me), ("127.0.0.1", port))
        seen = [self.sock.recv(65535) for _ in range(2)]
        self.assertTrue(any(packet.startswith(b"SIP/2.0 480 ") for packet in seen), seen)
        self.assertTrue(any(packet.startswith(b"OPTIONS sip:u2@") for packet in seen), seen)
        self.reap(child)


class RedisCrashTests(CrashTests):
    """
    The same with the bindings in Redis (C{redis-server} with an
    append-only file synced on every write).
    """

    def setUp(self) -> None:
        super().setUp()
        self.redis = RedisServer(self)

    def registrations(self) -> str:
        return self.redis.url

    def stored_users(self) -> set[int]:
        keys = subprocess.run(
            ["redis-cli", "-p", str(self.redis.port), "--scan", "--pattern", "sipleg:aor:*"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split()  # fmt: skip
        return {int(key.split("sip:u", 1)[1].split("@", 1)[0]) for key in keys}

    def expire_stored(self, seconds: float) -> None:
        # Redis expires the keys by itself; what expired must not come
        # back on a restart: rewrite each binding's time, and its key's.
        script = (
            "for _, key in ipairs(redis.call('KEYS', 'sipleg:aor:*')) do "
            "local rows = cjson.decode(redis.call('HGET', key, 'b')) "
            "local last = 0 "
            "for _, row in ipairs(rows) do row[3] = row[3] - tonumber(ARGV[1]) "
            "if row[3] > last then last = row[3] end end "
            "if last * 1000 <= tonumber(redis.call('TIME')[1]) * 1000 then redis.call('DEL', key) "
            "else redis.call('HSET', key, 'b', cjson.encode(rows)) "
            "redis.call('PEXPIREAT', key, math.floor(last * 1000)) end end return 1"
        )
        self.redis.command("EVAL", script, "0", str(seconds))
