"""
The user file of digest authentication: who our users are and the H(A1)
of their passwords, in the format of Apache's C{htdigest}, extended for
RFC 8760's algorithms.

One user per line and algorithm; empty lines and lines starting with
C{#} are ignored::

    alice:example.com:HA1               # htdigest's own line: MD5
    alice:example.com:SHA-256:HA1       # RFC 8760: the algorithm named
    alice:example.com:SHA-512-256:HA1

with C{HA1} the lower-case hex digest of C{user:realm:password}, so files
made by C{htdigest} work unchanged, and C{sipleg-passwd} (L{sipleg.passwd})
writes a user's line for every algorithm.  User names and realms contain
no colon.

L{parse_users} is the pure part; L{UserFile} is the shell that reads the
file off the reactor thread and re-reads it when it changes, keeping the
previous users when a new version is malformed.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sipleg.digest import ALGORITHMS
from sipleg.errors import ConfigError

__all__ = ["UserFile", "UserFileError", "Users", "format_user", "load_users", "parse_users"]

log = Logger()

#: (user, realm) -> {algorithm: HA1}
Users = Mapping[tuple[str, str], Mapping[str, str]]

_HEX = frozenset(string.hexdigits.lower())


class UserFileError(ConfigError):
    """
    A user file that cannot be used; the message names the file and line.
    """


def parse_users(text: str, path: str) -> dict[tuple[str, str], dict[str, str]]:
    """
    Parse the text of a user file.

    @param path: the file's name, for the error message.
    @raise UserFileError: a malformed line (the first one).
    """
    users: dict[tuple[str, str], dict[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 3:
            user, realm, ha1 = fields
            algorithm = "MD5"
        elif len(fields) == 4:
            user, realm, algorithm, ha1 = fields
        else:
            raise UserFileError(f"{path}:{number}: expected user:realm:HA1 or user:realm:ALGORITHM:HA1")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            known = ", ".join(ALGORITHMS)
            raise UserFileError(f"{path}:{number}: unknown algorithm {algorithm[:40]!r} (known: {known})")
        ha1 = ha1.lower()
        if not user or not realm:
            raise UserFileError(f"{path}:{number}: empty user or realm")
        if len(ha1) != length or not _HEX.issuperset(ha1):
            raise UserFileError(f"{path}:{number}: the {algorithm} HA1 must be {length} hex digits")
        users.setdefault((user, realm), {})[algorithm] = ha1
    return users


def format_user(user: str, realm: str, hashes: Mapping[str, str]) -> list[str]:
    """
    The lines of one user (MD5 in C{htdigest}'s own form).
    """
    return [
        f"{user}:{realm}:{ha1}" if algorithm == "MD5" else f"{user}:{realm}:{algorithm}:{ha1}"
        for algorithm, ha1 in hashes.items()
    ]


def _read(path: str) -> tuple[tuple[int, int], str]:
    """
    The file's identity (modification time, size) and text (in a thread).
    """
    with open(path, encoding="utf-8") as f:
        stat = os.fstat(f.fileno())
        return (stat.st_mtime_ns, stat.st_size), f.read()


#: A user file as read: its identity (modification time, size) and users.
Loaded = tuple[tuple[int, int], Users]


def load_users(path: str) -> Loaded:
    """
    Read and parse a user file (blocking: at start-up, or in a thread).

    @raise UserFileError: the file is missing, unreadable or malformed.
    """
    try:
        identity, text = _read(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UserFileError(f"{path}: cannot read the user file: {e}") from None
    return identity, parse_users(text, path)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class UserFile:
    """
    The users of a user file, re-read when it changes.

    @ivar users: the users of the last good version of the file.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        interval: float = 2.0,
        to_thread: Callable[..., Any] | None = None,
    ) -> None:
        """
        Read the file once, now (start-up: before the reactor runs).

        @param interval: how often to look for a change, in seconds.
        @param to_thread: runs a blocking call off the reactor thread and
            returns a L{Deferred} (default: L{twisted.internet.threads.deferToThread}).
        @raise UserFileError: the file is missing or malformed.
        """
        self.path = path
        self._identity, self.users = load_users(path)
        if to_thread is None:
            from twisted.internet.threads import deferToThread

            to_thread = deferToThread
        self._to_thread: Callable[..., Any] = to_thread
        self._checking = False
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._interval = interval

    def start(self) -> None:
        """
        Start looking for changes.
        """
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def replace(self, path: str, loaded: Loaded) -> None:
        """
        Take the users of a file read by L{load_users} (a reload, which may
        name another file), and watch that file from now on.
        """
        self.path = path
        self._identity, self.users = loaded

    def check(self) -> Any:
        """
        Re-read the file, off the reactor thread, if it changed.
        """
        if self._checking:
            return None
        self._checking = True
        d = self._to_thread(self._changed_text, self.path)
        d.addCallback(self._reloaded, self.path)
        d.addErrback(lambda failure: log.failure("reading {path} failed", failure, path=self.path))
        d.addBoth(self._done)
        return d

    def _changed_text(self, path: str) -> tuple[tuple[int, int], str] | None:
        identity = _identity(path)
        if identity is None or identity == self._identity:
            return None
        return _read(path)

    def _reloaded(self, changed: tuple[tuple[int, int], str] | None, path: str) -> None:
        if changed is None or path != self.path:
            # Unchanged, or a reload named another file meanwhile.
            return
        identity, text = changed
        self._identity = identity
        try:
            users = parse_users(text, self.path)
        except UserFileError as e:
            log.error("keeping the previous users: {error}", error=str(e))
            return
        self.users = users
        log.info("{path}: {count} users", path=self.path, count=len(users))

    def _done(self, _: object) -> None:
        self._checking = False
