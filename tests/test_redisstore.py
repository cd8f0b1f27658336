"""
L{sipleg.redisstore.RedisStore} against a real C{redis-server} (started by
the test on a free loopback port): registrars sharing one Redis see each
other's bindings, concurrent changes of one AOR both survive, keys expire
with their bindings, and an unreachable Redis means 503 for REGISTERs,
calls routed from memory, and full recovery when it is back.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from sipleg.errors import ConfigError
from sipleg.message import Request, Response
from sipleg.redisstore import RedisStore, parse_redis_url
from sipleg.registrar import Registrar
from sipleg.uri import parse_uri
from tests.support import RedisServer, eventually


def register(user: str, contact: str, call_id: str, cseq: int = 1, expires: int = 600) -> Request:
    return Request(
        "REGISTER",
        "sip:example.test",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-{call_id}-{cseq}"),
            ("From", f"<sip:{user}@example.test>;tag=t"),
            ("To", f"<sip:{user}@example.test>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", f"<{contact}>;expires={expires}"),
        ],
    )


class RedisStoreTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.redis = RedisServer(self)

    async def registrar(self) -> Registrar:
        """
        A registrar on the shared Redis, once it has read it.
        """
        registrar = Registrar(["example.test"], reactor, RedisStore(self.redis.url, reactor))
        self.addCleanup(registrar.stop)
        await eventually(lambda: registrar.ready)
        return registrar

    async def answer(self, registrar: Registrar, request: Request) -> Response:
        answer = registrar.register(request)
        if isinstance(answer, Deferred):
            answer = await answer
        assert isinstance(answer, Response)
        return answer

    def contacts(self, registrar: Registrar, user: str) -> list[str]:
        found = registrar.lookup(parse_uri(f"sip:{user}@example.test"))
        return [] if found is None else found.contacts

    def test_url(self) -> None:
        self.assertEqual(parse_redis_url("redis://10.0.0.1:7000/3"), ("10.0.0.1", 7000, 3))
        self.assertEqual(parse_redis_url("redis://redis.example"), ("redis.example", 6379, 0))
        for bad in ("redis://", "http://x", "redis://x/-1", "redis://x:notaport/0"):
            self.assertRaises(ConfigError, parse_redis_url, bad)

    async def test_shared(self) -> None:
        """
        What one registrar is told, the other routes by; a later one
        reads it all at start.
        """
        a = await self.registrar()
        b = await self.registrar()
        answer = await self.answer(a, register("alice", "sip:alice@192.0.2.1:5071", "c1"))
        self.assertEqual(answer.code, 200)
        await eventually(lambda: self.contacts(b, "alice") == ["sip:alice@192.0.2.1:5071"])
        # Removal travels too.
        removed = await self.answer(b, register("alice", "sip:alice@192.0.2.1:5071", "c1", cseq=2, expires=0))
        self.assertEqual(removed.code, 200)
        await eventually(lambda: self.contacts(a, "alice") == [])
        self.assertEqual(a.lookup(parse_uri("sip:alice@example.test")).code, 480)  # type: ignore[union-attr]
        await self.answer(a, register("bob", "sip:bob@192.0.2.2:5072", "c2"))
        c = await self.registrar()
        self.assertEqual(self.contacts(c, "bob"), ["sip:bob@192.0.2.2:5072"])
        # Known users come along (480, not 404).
        self.assertEqual(c.lookup(parse_uri("sip:alice@example.test")).code, 480)  # type: ignore[union-attr]

    async def test_concurrent_changes_both_kept(self) -> None:
        """
        Two registrars change one AOR from the same stale state: the
        second write finds the AOR changed, reads it and applies its
        REGISTER on top, so both contacts are bound.
        """
        a = await self.registrar()
        b = await self.registrar()
        store = b.store
        assert isinstance(store, RedisStore)
        # b does not hear about a's change (as if the message were still
        # on its way).
        store._heard = lambda message: None  # type: ignore[method-assign]
        await self.answer(a, register("carol", "sip:carol@192.0.2.1:1", "ca"))
        answer = await self.answer(b, register("carol", "sip:carol@192.0.2.2:2", "cb"))
        self.assertEqual(answer.code, 200)
        self.assertEqual(len(answer.get_headers("contact")), 2)
        both = ["sip:carol@192.0.2.1:1", "sip:carol@192.0.2.2:2"]
        self.assertEqual(sorted(self.contacts(b, "carol")), both)

    async def test_key_expires_with_its_bindings(self) -> None:
        a = await self.registrar()
        await self.answer(a, register("dave", "sip:dave@192.0.2.1:1", "d", expires=60))
        ttl = int(self.redis.command("PTTL", "sipleg:aor:sip:dave@example.test").split(b"\r\n")[0][1:])
        self.assertTrue(55_000 < ttl <= 60_000, ttl)

    async def test_outage(self) -> None:
        """
        Redis stops: REGISTERs get 503 with Retry-After, calls are routed
        from memory, one log line; Redis is back: everything works again,
        without a restart.
        """
        a = await self.registrar()
        await self.answer(a, register("erin", "sip:erin@192.0.2.1:1", "e"))
        self.redis.stop()
        store = a.store
        assert isinstance(store, RedisStore)
        await eventually(lambda: not store._connected)
        refused = await self.answer(a, register("frank", "sip:frank@192.0.2.1:2", "f"))
        self.assertEqual((refused.code, refused.get_header("retry-after")), (503, "5"))
        self.assertEqual(self.contacts(a, "erin"), ["sip:erin@192.0.2.1:1"])
        self.redis.start()
        await eventually(lambda: store._connected, 20)
        self.assertEqual((await self.answer(a, register("frank", "sip:frank@192.0.2.1:2", "f"))).code, 200)
        self.assertEqual(self.contacts(a, "erin"), ["sip:erin@192.0.2.1:1"])
