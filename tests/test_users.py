"""
The user file (L{sipleg.users}) and C{sipleg-passwd} (L{sipleg.passwd}).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

import sipleg
from sipleg.digest import hash_a1
from sipleg.passwd import main, set_password
from sipleg.users import UserFile, UserFileError, parse_users


def run_now(function: Any, *args: Any) -> defer.Deferred[Any]:
    """
    A C{to_thread} that runs the call at once (the clock drives the test).
    """
    return defer.maybeDeferred(function, *args)


class ParseTests(TestCase):
    def test_htdigest_and_rfc8760_lines(self) -> None:
        md5 = hash_a1("MD5", "alice", "example.test", "pw")
        sha = hash_a1("SHA-256", "alice", "example.test", "pw")
        users = parse_users(
            f"# users\n\nalice:example.test:{md5}\nalice:example.test:SHA-256:{sha.upper()}\n", "f"
        )
        self.assertEqual(users, {("alice", "example.test"): {"MD5": md5, "SHA-256": sha}})

    def test_errors_name_file_and_line(self) -> None:
        good = "bob:r:" + "0" * 32
        for line, why in (
            ("bob:r", "expected user:realm:HA1"),
            ("bob:r:SHA-1:" + "0" * 40, "unknown algorithm 'SHA-1'"),
            ("bob:r:" + "0" * 31, "MD5 HA1 must be 32 hex digits"),
            ("bob:r:SHA-256:" + "g" * 64, "SHA-256 HA1 must be 64 hex digits"),
            (":r:" + "0" * 32, "empty user or realm"),
        ):
            error = self.assertRaises(UserFileError, parse_users, f"{good}\n{line}\n", "/etc/users")
            self.assertTrue(str(error).startswith("/etc/users:2: "), str(error))
            self.assertIn(why, str(error))


class UserFileTests(TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write("alice", "pw1")
        self.clock = Clock()
        self.users = UserFile(self.path, self.clock, interval=2, to_thread=run_now)
        self.users.start()
        self.addCleanup(self.users.stop)

    def write(self, user: str, password: str, extra: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(set_password("", self.path, "example.test", user, password) + extra)
        # A new modification time, whatever the file system's resolution.
        stamp = os.stat(self.path).st_mtime + 10 * (1 + len(extra) + len(user))
        os.utime(self.path, (stamp, stamp))

    def test_reread_when_changed(self) -> None:
        self.assertEqual(list(self.users.users), [("alice", "example.test")])
        self.write("bob", "pw2")
        self.clock.advance(2)
        self.assertEqual(list(self.users.users), [("bob", "example.test")])

    def test_malformed_version_keeps_the_users(self) -> None:
        logged: list[str] = []
        from twisted.logger import formatEvent, globalLogPublisher

        def observe(event: dict[str, Any]) -> None:
            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.write("bob", "pw2", extra="broken line\n")
        self.clock.advance(2)
        self.assertEqual(list(self.users.users), [("alice", "example.test")])
        prefix = f"keeping the previous users: {self.path}:4: "
        self.assertTrue(any(line.startswith(prefix) for line in logged))

    def test_start_up_errors(self) -> None:
        self.assertRaises(UserFileError, UserFile, self.mktemp(), self.clock)
        with open(self.path, "a") as f:
            f.write("nonsense\n")
        error = self.assertRaises(UserFileError, UserFile, self.path, self.clock)
        self.assertIn(":4: ", str(error))


class PasswdTests(TestCase):
    def test_one_line_per_algorithm_replacing_the_old(self) -> None:
        text = "# ours\ncarol:example.test:" + "0" * 32 + "\n"
        text = set_password(text, "f", "example.test", "alice", "old")
        text = set_password(text, "f", "example.test", "alice", "new")
        users = parse_users(text, "f")
        self.assertEqual(
            users[("alice", "example.test")],
            {
                algorithm: hash_a1(algorithm, "alice", "example.test", "new")
                for algorithm in ("MD5", "SHA-256", "SHA-512-256")
            },
        )
        self.assertIn(("carol", "example.test"), users)
        self.assertTrue(text.startswith("# ours\n"))
        # htdigest's own line for MD5.
        self.assertIn("alice:example.test:" + hash_a1("MD5", "alice", "example.test", "new") + "\n", text)

    def test_refused_names(self) -> None:
        for user, realm in (("a:b", "r"), ("a", ""), ("a\nb", "r")):
            self.assertRaises(UserFileError, set_password, "", "f", realm, user, "pw")

    def test_command(self) -> None:
        """
        The installed command reads the password from standard input when
        it is not a terminal, and creates the file for its owner only.
        """
        path = self.mktemp()
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(sipleg.__file__))))
        for password in ("first", "second"):
            done = subprocess.run(
                [sys.executable, "-m", "sipleg.passwd", path, "example.test", "alice"],
                input=password + "\n",
                capture_output=True,
                text=True,
                check=False,
                env=env,
            )
            self.assertEqual((done.returncode, done.stderr), (0, ""))
        with open(path) as f:
            users = parse_users(f.read(), path)
        self.assertEqual(
            users[("alice", "example.test")]["MD5"], hash_a1("MD5", "alice", "example.test", "second")
        )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_command_errors(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("broken\n")
        stdin, sys.stdin = sys.stdin, io.StringIO("pw\n")
        self.addCleanup(setattr, sys, "stdin", stdin)
        error = self.assertRaises(SystemExit, main, [path, "example.test", "alice"])
        self.assertEqual(
            str(error.code), f"sipleg-passwd: {path}:1: expected user:realm:HA1 or user:realm:ALGORITHM:HA1"
        )
