"""
Where the registrar's bindings live: the L{ILocationStore} interface and
its embedded backend, SQLite (standard library C{sqlite3}, WAL).

The registrar's rules (L{sipleg.registrar.BindingTable}) stay the single
source of truth in the process; a store keeps what they decided.  A
REGISTER is answered only once the store says its change is durable, so
a binding answered 200 survives a crash (C{kill -9}) of the proxy.

L{SQLiteStore} writes on a thread of its own, never on the reactor
thread: the REGISTERs that arrive while a commit is under way share the
next commit (one fsync for many), and each is answered when that commit
returns.  One row per binding, indexed by AOR and by expiry, so the cost
of a REGISTER does not grow with the table.  Bindings that expired are
deleted in the background.  Opening happens at start-up (before the
reactor runs): a file that is not a database, or that cannot be written,
is a one-line start-up error.  A registrations file in the JSON format of
the previous version is migrated once, with a log line.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from sipleg.flows import Flow, parse_flow
from sipleg.registrar import Binding, BindingTable, Change, Registrar, RegistrationFileError

__all__ = ["ILocationStore", "SQLiteStore", "Stored"]

log = Logger()


class Stored(NamedTuple):
    """
    What a store holds at start-up.

    @ivar bindings: every binding not yet deleted (some may have expired).
    @ivar known: every AOR that ever had a binding.
    """

    bindings: list[Binding]
    known: set[str]


class ILocationStore(Interface):
    """
    Keeps the registrar's bindings.
    """

    def attach(registrar: Registrar) -> None:
        """
        Serve C{registrar}: hand it what is stored (L{Registrar.loaded}:
        at once, or once a shared store is reached, with
        C{registrar.ready} false meanwhile), and the changes other
        processes make (L{Registrar.changed}).
        """

    def write(change: Change) -> Deferred[None]:
        """
        Make C{change.after} the AOR's bindings.

        @return: fires once the change is durable; fails with
            L{StoreConflict} (another process changed the AOR first),
            L{StoreUnavailable} (out of reach for now) or
            L{RegistrationFileError} (cannot be kept).
        """

    def purge(now: float) -> None:
        """
        Delete the bindings expired at C{now}, in the background.
        """

    def close() -> Deferred[None]:
        """
        Finish pending writes and close.
        """


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (
    ord INTEGER PRIMARY KEY,
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    q REAL NOT NULL,
    expires_at REAL NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    flow TEXT,
    path TEXT
);
CREATE INDEX IF NOT EXISTS bindings_aor ON bindings (aor);
CREATE INDEX IF NOT EXISTS bindings_expiry ON bindings (expires_at);
CREATE TABLE IF NOT EXISTS users (aor TEXT PRIMARY KEY) WITHOUT ROWID;
"""

#: The most changes one commit takes.
_BATCH = 512

#: What the writer thread is asked to do: write an AOR, purge, or stop.
_Job = tuple[str, Any, "Deferred[None] | None"]


@implementer(ILocationStore)
class SQLiteStore:
    """
    Bindings in an SQLite database file (WAL), written by one thread.
    """

    def __init__(self, path: str, reactor: Any) -> None:
        """
        Open (or create) the database, migrating a JSON registrations file
        found at C{path}.

        @param reactor: where the answers of the writer thread go
            (C{callFromThread}).
        @raise RegistrationFileError: not a database, or not writable (one
            line naming the file).
        """
        self.path = path
        self._reactor = reactor
        migrated = _json_at(path)
        if migrated is not None:
            os.replace(path, path + ".json-migrated")
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _add_columns(self._db)
            # Writable?  (A read-only file fails here, not at the first
            # REGISTER.)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise RegistrationFileError(f"{path}: cannot use the registrations database: {e}") from None
        if migrated is not None:
            self._insert(migrated.bindings(0.0), migrated.known_users)
            log.info(
                "{path}: migrated {count} bindings from the JSON registrations file (kept as {old})",
                path=path,
                count=migrated.count(),
                old=path + ".json-migrated",
            )
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed: Deferred[None] | None = None
        self._thread = threading.Thread(target=self._run, name="sipleg-sqlite", daemon=True)
        self._thread.start()

    def attach(self, registrar: Registrar) -> None:
        registrar.loaded(self.load())

    def load(self) -> Stored:
        """
        Everything stored (start-up: before the reactor runs).
        """
        rows = self._db.execute(
            "SELECT aor, contact, q, expires_at, call_id, cseq, ord, flow, path FROM bindings"
        ).fetchall()
        known = {aor for (aor,) in self._db.execute("SELECT aor FROM users")}
        return Stored(
            [Binding(a, c, q, t, i, s, o, _flow(f), _path(p)) for a, c, q, t, i, s, o, f, p in rows], known
        )

    def write(self, change: Change) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self._jobs.put(("write", (change.aor, change.after), done))
        return done

    def purge(self, now: float) -> None:
        self._jobs.put(("purge", now, None))

    def close(self) -> Deferred[None]:
        if self._closed is None:
            self._closed = Deferred()
            self._jobs.put(("stop", None, self._closed))
        # Each caller waits on a Deferred of its own.
        waiter: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            waiter.callback(None)
            return result

        self._closed.addBoth(relay)
        return waiter

    # -- the writer thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = [self._jobs.get()]
            while len(jobs) < _BATCH:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = [job for job in jobs if job[0] == "stop"]
            work = [job for job in jobs if job[0] != "stop"]
            error: RegistrationFileError | None = None
            try:
                self._commit(work)
            except sqlite3.Error as e:
                error = RegistrationFileError(f"{self.path}: cannot write: {e}")
            for _, _, done in work:
                if done is not None:
                    self._answer(done, error)
            if stop:
                self._db.close()
                for _, _, done in stop:
                    if done is not None:
                        self._answer(done, None)
                return

    def _commit(self, jobs: list[_Job]) -> None:
        """
        Apply C{jobs} in one transaction.
        """
        if not jobs:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            for kind, argument, _ in jobs:
                if kind == "write":
                    aor, bindings = argument
                    db.execute("DELETE FROM bindings WHERE aor = ?", (aor,))
                    self._insert(bindings, (aor,) if bindings else (), commit=False)
                else:
                    db.execute("DELETE FROM bindings WHERE expires_at <= ?", (argument,))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    def _insert(self, bindings: Iterable[Binding], known: Iterable[str], commit: bool = True) -> None:
        db = self._db
        if commit:
            db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO bindings (aor, contact, q, expires_at, call_id, cseq, ord, flow, path)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    b.aor,
                    b.contact,
                    b.q,
                    b.expires_at,
                    b.call_id,
                    b.cseq,
                    b.order,
                    None if b.flow is None else str(b.flow),
                    json.dumps(list(b.path)) if b.path else None,
                )
                for b in bindings
            ],
        )
        db.executemany("INSERT OR IGNORE INTO users (aor) VALUES (?)", [(aor,) for aor in known])
        if commit:
            db.execute("COMMIT")

    def _answer(self, done: Deferred[None], error: Exception | None) -> None:
        if error is None:
            self._reactor.callFromThread(done.callback, None)
        else:
            self._reactor.callFromThread(done.errback, error)


def _add_columns(db: sqlite3.Connection) -> None:
    """
    Migrate a database of a version without flows and Paths: add the
    C{flow} and C{path} columns (NULL for the bindings it holds).
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(bindings)")}
    for column in ("flow", "path"):
        if column not in columns:
            db.execute(f"ALTER TABLE bindings ADD COLUMN {column} TEXT")


def _path(text: str | None) -> tuple[str, ...]:
    """
    The Path values of a stored binding (a JSON list; none when
    malformed, logged).
    """
    if text is None:
        return ()
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        log.warn("ignoring malformed path {path!r} in the registrations database", path=text)
        return ()
    return tuple(values)


def _flow(text: str | None) -> Flow | None:
    """
    The flow of a stored binding (L{None} for one whose text is not a
    flow: the binding is then reached at its Contact).
    """
    if text is None:
        return None
    try:
        return parse_flow(text)
    except ValueError:
        log.warn("ignoring malformed flow {flow!r} in the registrations database", flow=text)
        return None


def _json_at(path: str) -> BindingTable | None:
    """
    The table of a JSON registrations file at C{path}, if that is what is
    there.

    @raise RegistrationFileError: a JSON file that cannot be read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if not head.lstrip().startswith(b"{"):
                return None
            data = head + f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistrationFileError(f"{path}: cannot read: {e.strerror}") from None
    try:
        # Every binding and known user, expired or not (the table drops
        # what expired when it loads them).
        return BindingTable.from_json(data, 0.0)
    except RegistrationFileError as e:
        raise RegistrationFileError(f"{path}: corrupt registrations file: {e}") from None
