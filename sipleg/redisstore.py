"""
Bindings in Redis, shared by every process and every machine pointed at
the same server (C{--registrations redis://HOST:PORT/DB}), through
C{txredisapi}.

Each process keeps the whole table in memory (a replica: lookups never
wait for Redis) and Redis holds the truth:

 - one hash per AOR, C{sipleg:aor:<aor>}, with the bindings (C{b}, JSON)
   and a version (C{v}) drawn from one counter, C{sipleg:version}, so a
   version is never reused; the key expires with its last binding
   (C{PEXPIREAT}), so expiry does not depend on any proxy being up;
 - C{sipleg:users}, every AOR that ever had a binding (404 versus 480);
 - every change is published on C{sipleg:changes} as C{"<version> <aor>"};
   each process reads the AOR again when the version is newer than its own.

A REGISTER is decided on the replica by the registrar's rules and written
with a compare-and-set script: it succeeds only if the AOR's version is
still the one the replica had; otherwise the script returns the current
bindings, the replica takes them and the REGISTER is processed again
(L{sipleg.registrar.StoreConflict}).  When Redis is out of reach, writes
fail at once (L{sipleg.registrar.StoreUnavailable}: the REGISTER gets 503
with Retry-After) while calls are still routed from the replica; when it
is back, everything is read again.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import txredisapi
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipleg.errors import ConfigError
from sipleg.flows import parse_flow
from sipleg.registrar import Binding, Change, Registrar, StoreConflict, StoreUnavailable
from sipleg.store import ILocationStore, Stored

__all__ = ["RedisStore", "parse_redis_url"]

log = Logger()

#: KEYS: the AOR's hash, the users set, the version counter.  ARGV: the
#: expected version, the bindings (JSON), when the key expires (ms; 0:
#: delete it), the AOR, the channel.  Returns {1, version} or
#: {0, current version, current bindings}.
_WRITE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
    return {0, current, redis.call('HGET', KEYS[1], 'b') or '[]'}
end
local version = redis.call('INCR', KEYS[3])
if ARGV[3] == '0' then
    redis.call('DEL', KEYS[1])
else
    redis.call('HSET', KEYS[1], 'v', version, 'b', ARGV[2])
    redis.call('PEXPIREAT', KEYS[1], ARGV[3])
    redis.call('SADD', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], version .. ' ' .. ARGV[4])
return {1, version}
"""

#: Seconds to wait for a connection or a reply.
_TIMEOUT = 2.0


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """
    C{redis://HOST[:PORT][/DB]} as C{(host, port, db)}.

    @raise ConfigError: not such a URL.
    """
    parts = urlsplit(url)
    try:
        db = int(parts.path.strip("/") or "0")
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"--registrations {url!r}: expected redis://HOST[:PORT][/DB]") from None
    if parts.scheme != "redis" or not parts.hostname or db < 0:
        raise ConfigError(f"--registrations {url!r}: expected redis://HOST[:PORT][/DB]")
    return parts.hostname, port, db


def _encode(bindings: tuple[Binding, ...]) -> str:
    """
    The C{b} field of an AOR's hash: one row per binding, C{[contact, q,
    expires_at, call_id, cseq, order]}, then, when it has a flow
    (L{sipleg.flows}) or a Path, the text of its flow (or C{null}) and
    then its Path values when it has some.
    """
    return json.dumps([_row(b) for b in bindings], separators=(",", ":"))


def _row(b: Binding) -> list[Any]:
    row: list[Any] = [b.contact, b.q, b.expires_at, b.call_id, b.cseq, b.order]
    if b.flow is not None or b.path:
        row.append(None if b.flow is None else str(b.flow))
    if b.path:
        row.append(list(b.path))
    return row


def _decode(aor: str, text: str | bytes | None) -> list[Binding]:
    """
    The bindings of a hash's C{b} field (nothing when it is not what we
    write).
    """
    try:
        rows = json.loads(text or "[]")
        return [
            Binding(
                aor,
                str(c),
                float(q),
                float(t),
                str(i),
                int(s),
                int(o),
                parse_flow(rest[0]) if rest and rest[0] is not None else None,
                _path(rest[1]) if len(rest) > 1 else (),
            )
            for c, q, t, i, s, o, *rest in rows
        ]
    except (ValueError, TypeError, AttributeError):
        log.warn("ignoring malformed bindings of {aor} in Redis", aor=aor)
        return []


def _path(values: Any) -> tuple[str, ...]:
    """
    The Path values of a stored row.

    @raise ValueError: not a list of strings.
    """
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError("bad path")
    return tuple(values)


class _Subscriber(txredisapi.SubscriberProtocol):
    """
    The connection that hears about changes; its life is the store's
    notion of "Redis is up".
    """

    store: RedisStore

    def connectionMade(self) -> Any:
        result = super().connectionMade()
        self.store._up(self)
        return result

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.store._down()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.store._heard(message)


@implementer(ILocationStore)
class RedisStore:
    """
    Bindings in Redis (see the module docstring).
    """

    def __init__(self, url: str, reactor: Any, namespace: str = "sipleg") -> None:
        """
        @param url: C{redis://HOST[:PORT][/DB]}.
        @raise ConfigError: a malformed URL.
        """
        self.url = url
        self._host, self._port, self._db = parse_redis_url(url)
        self._reactor = reactor
        self._prefix = f"{namespace}:aor:"
        self._users = f"{namespace}:users"
        self._counter = f"{namespace}:version"
        self._channel = f"{namespace}:changes"
        self._registrar: Registrar | None = None
        self._versions: dict[str, int] = {}
        self._connected = False
        self._commands: Any = None
        self._listener: Any = None

    def _endpoint(self) -> HostnameEndpoint:
        return HostnameEndpoint(self._reactor, self._host, self._port, timeout=_TIMEOUT)

    def attach(self, registrar: Registrar) -> None:
        """
        Connect (commands, and a subscription for changes); the registrar
        is not ready until everything is read.
        """
        self._registrar = registrar
        registrar.ready = False
        commands = txredisapi.RedisFactory(
            f"{self._host}:{self._port}", self._db, 1, isLazy=True, replyTimeout=_TIMEOUT
        )
        commands.maxDelay = 2
        commands.startConnecting(self._endpoint())
        self._commands = commands
        listener = txredisapi.SubscriberFactory(isLazy=True)
        listener.protocol = type("Subscriber", (_Subscriber,), {"store": self})
        listener.maxDelay = 2
        listener.startConnecting(self._endpoint())
        self._listener = listener

    def write(self, change: Change) -> Deferred[None]:
        if not self._connected:
            return _failed(StoreUnavailable(f"{self.url} is out of reach"))
        aor = change.aor
        expires_at = max((b.expires_at for b in change.after), default=0.0)
        d: Deferred[Any] = self._commands.handler.eval(
            _WRITE,
            keys=[self._prefix + aor, self._users, self._counter],
            args=[
                self._versions.get(aor, 0),
                _encode(change.after),
                int(expires_at * 1000) if change.after else 0,
                aor,
                self._channel,
            ],
        )

        def written(reply: list[Any]) -> None:
            done, version = int(reply[0]), int(reply[1])
            self._versions[aor] = version
            if not done:
                raise StoreConflict(aor, _decode(aor, reply[2]))

        def unreachable(reason: Failure) -> Failure:
            if reason.check(StoreConflict):
                return reason
            log.info("Redis write of {aor} failed: {why}", aor=aor, why=reason.getErrorMessage())
            return Failure(StoreUnavailable(f"{self.url}: {reason.getErrorMessage()}"))

        return d.addCallback(written).addErrback(unreachable)

    def purge(self, now: float) -> None:
        """
        Nothing to do: Redis expires a key with its last binding.
        """

    def close(self) -> Deferred[None]:
        self._connected = False
        factories = [f for f in (self._commands, self._listener) if f is not None]
        closed = gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        return closed.addCallback(lambda _: None)

    # -- connection events ---------------------------------------------------

    def _up(self, subscriber: _Subscriber) -> None:
        """
        The subscription is (again) connected: subscribe, then read
        everything (changes may have been missed meanwhile).
        """
        subscriber.subscribe(self._channel).addCallback(lambda _: self._sync()).addErrback(
            lambda reason: log.failure("Redis subscription failed", reason)
        )

    def _down(self) -> None:
        if self._connected:
            log.warn(
                "Redis {url} out of reach: REGISTERs answered 503, calls routed from memory", url=self.url
            )
        self._connected = False

    def _sync(self) -> Deferred[None]:
        """
        Read every AOR and the known users, then hand them over.
        """
        redis = self._commands.handler

        async def read() -> Stored:
            keys: list[str] = []
            cursor = 0
            while True:
                cursor, found = await redis.scan(cursor, f"{self._prefix}*", 1000)
                keys.extend(found)
                if int(cursor) == 0:
                    break
            bindings: list[Binding] = []
            versions: dict[str, int] = {}
            for key in keys:
                values = await redis.hmget(key, ["v", "b"])
                if values[0] is None:
                    continue
                aor = key[len(self._prefix) :]
                versions[aor] = int(values[0])
                bindings.extend(_decode(aor, values[1]))
            known = set(await redis.smembers(self._users))
            self._versions = versions
            return Stored(bindings, known)

        def loaded(stored: Stored) -> None:
            assert self._registrar is not None
            self._registrar.loaded(stored)
            self._connected = True
            log.info("Redis {url}: {count} bindings read", url=self.url, count=len(stored.bindings))

        d = Deferred.fromCoroutine(read())
        return d.addCallback(loaded).addErrback(
            lambda reason: log.info("reading Redis failed: {why}", why=reason.getErrorMessage())
        )

    def _heard(self, message: Any) -> None:
        """
        A change published by some process: read the AOR again if the
        version is newer than ours.
        """
        try:
            version_text, aor = str(message).split(" ", 1)
            version = int(version_text)
        except ValueError:
            return
        if version <= self._versions.get(aor, 0):
            return

        def read(values: list[Any]) -> None:
            if values[0] is not None and int(values[0]) < version:
                return
            self._versions[aor] = int(values[0]) if values[0] is not None else version
            assert self._registrar is not None
            self._registrar.changed(aor, _decode(aor, values[1]) if values[0] is not None else [])

        def failed(reason: Failure) -> None:
            log.info("reading {aor} failed: {why}", aor=aor, why=reason.getErrorMessage())

        self._commands.handler.hmget(self._prefix + aor, ["v", "b"]).addCallbacks(read, failed)


def _failed(error: Exception) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(error)
    return d
