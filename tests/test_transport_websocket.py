"""
Tests for L{sipleg.transport.websocket}: SIP over WebSocket (RFC 7118)
with autobahn clients over real loopback sockets, and a L{Clock} for the
pool's timers.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.framing import StreamFramer
from sipleg.transport.base import ISocketPool, StreamLimits
from sipleg.transport.websocket import (
    MAX_MESSAGE_SIZE,
    MAX_NAMES,
    WebSocketConnection,
    WebSocketSocketPool,
    WebSocketState,
)
from tests.certs import CertificateAuthority
from tests.support import Collector, RawClient, WebSocketClient, sip, websocket_client


class WebSocketPoolTests(TestCase):
    """
    Handshake, messages, limits and timers of a L{WebSocketSocketPool}.
    """

    timeout = 10

    async def make_pool(self, proto: str = "ws", **kwargs: Any) -> tuple[WebSocketSocketPool, Collector]:
        collector = Collector()
        pool = WebSocketSocketPool(Address("127.0.0.1", 0, proto), collector, **kwargs)
        await pool.listen()
        self.addCleanup(pool.stop)
        return pool, collector

    async def open_client(self, pool: WebSocketSocketPool, **kwargs: Any) -> WebSocketClient:
        client = await websocket_client(self, pool.local, **kwargs)
        self.assertEqual(await client.opened, "sip")
        return client

    async def test_message_each_way(self) -> None:
        """
        One WebSocket message is one SIP message: it reaches the receiver
        with the connection, and a send back on that connection (or to
        the peer's address) arrives as one message.
        """
        pool, got = await self.make_pool()
        self.assertTrue(verifyObject(ISocketPool, pool))
        client = await self.open_client(pool)
        # RFC 7118 §5: no Content-Length needed.
        request = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS abc.invalid;branch=z9hG4bK1\r\n\r\n"
        client.send(request)
        await got.wait(1)
        data, source, conn = got.received[0]
        self.assertEqual(data, request)
        self.assertEqual(source.proto, "ws")
        self.assertEqual(source.addr, "127.0.0.1")
        assert isinstance(conn, WebSocketConnection)
        self.assertIs(conn.state, WebSocketState.OPEN)
        self.assertEqual(pool.connections(), [conn])
        await pool.send(sip(b"answer"), source, conn=conn)
        await pool.send(sip(b"again"), source)
        await client.wait(2)
        self.assertEqual(client.messages, [sip(b"answer"), sip(b"again")])

    async def test_wss(self) -> None:
        """
        A C{wss} pool speaks the same over TLS.
        """
        from sipleg.transport.tls import TLSConfig

        ca = CertificateAuthority()
        leaf = ca.issue("sip.test", ip_addresses=("127.0.0.1",))
        pool, got = await self.make_pool("wss", tls=TLSConfig(leaf.cert, leaf.key))
        client = await self.open_client(pool, ca=ca.cert)
        client.send(sip(b"secure"))
        await got.wait(1)
        self.assertEqual(got.received[0][0], sip(b"secure"))
        self.assertEqual(got.received[0][1].proto, "wss")

    async def test_no_sip_subprotocol(self) -> None:
        """
        A handshake that does not offer the C{sip} subprotocol is refused.
        """
        pool, got = await self.make_pool()
        client = await websocket_client(self, pool.local, protocols=("chat",))
        with self.assertRaises(ConnectError):
            await client.opened
        await client.closed
        self.assertEqual(got.received, [])

    async def test_send_without_connection(self) -> None:
        """
        A WebSocket server cannot connect to a client: a send to a peer
        without an open connection fails at once.
        """
        pool, _ = await self.make_pool()
        with self.assertRaises(DeliveryError) as raised:
            await pool.send(sip(), Address("127.0.0.1", 5999, "ws"))
        self.assertEqual(raised.exception.errno, errno.ENOTCONN)
        self.assertEqual(pool.connections(), [])

    async def test_bad_content_length(self) -> None:
        """
        A Content-Length, when present, must match the body: the message
        reaches the leg, whose parser refuses it (stream rules).
        """
        from sipleg.leg import BadMessage, Leg

        seen: list[Any] = []
        leg = Leg(port=0, proto="ws", receiver=lambda packet, source, leg: seen.append(packet))
        await leg.listen()
        self.addCleanup(leg.stop)
        assert isinstance(leg.socketpool, WebSocketSocketPool)
        client = await self.open_client(leg.socketpool)
        message = (
            b"MESSAGE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS abc.invalid;branch=z9hG4bK1\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\n"
            b"Content-Length: 2\r\n\r\n"
        )
        client.send(message + b"body")
        client.send(message + b"ok")
        while len(seen) < 2:
            await _tick()
        self.assertIsInstance(seen[0], BadMessage)
        self.assertEqual(seen[1].body, b"ok")

    async def test_message_too_large(self) -> None:
        """
        A message larger than a TCP stream accepts closes the connection.
        """
        framer = StreamFramer()
        self.assertEqual(MAX_MESSAGE_SIZE, framer.max_header + framer.max_body)
        pool, got = await self.make_pool()
        client = await self.open_client(pool)
        client.send(sip(b"x" * MAX_MESSAGE_SIZE))
        await client.closed
        self.assertEqual(got.received, [])
        while pool.connections():
            await _tick()

    async def test_connection_caps(self) -> None:
        """
        Past the per-source cap a new connection is closed at once; past
        the listener's cap too, when every connection has sent a message.
        """
        pool, got = await self.make_pool(limits=StreamLimits(max_per_source=1))
        first = await self.open_client(pool)
        second = await websocket_client(self, pool.local)
        with self.assertRaises(ConnectError):
            await second.opened
        first.send(sip())
        await got.wait(1)

        capped, capped_got = await self.make_pool(limits=StreamLimits(max_connections=1))
        proven = await self.open_client(capped)
        proven.send(sip())
        await capped_got.wait(1)
        refused = await websocket_client(self, capped.local)
        with self.assertRaises(ConnectError):
            await refused.opened
        self.assertEqual(len(capped.connections()), 1)

    async def test_first_message_timeout(self) -> None:
        """
        A connection that has not completed its handshake and sent a SIP
        message in C{first_message_timeout} seconds is closed, handshake
        or not.
        """
        clock = Clock()
        pool, _ = await self.make_pool(clock=clock, limits=StreamLimits(first_message_timeout=3))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", pool.local.port)
        raw: RawClient = await endpoint.connect(Factory.forProtocol(RawClient))
        self.addCleanup(lambda: raw.transport.abortConnection() if raw.transport else None)
        opened = await self.open_client(pool)
        while len(pool.connections()) < 2:
            await _tick()
        clock.advance(2.9)
        self.assertEqual(len(pool.connections()), 2)
        clock.advance(0.2)
        await raw.lost
        await opened.closed
        self.assertEqual(pool.connections(), [])

    async def test_idle_ping_then_close(self) -> None:
        """
        An idle connection is pinged; it stays while it answers with a
        pong, and is closed when it stays silent for another idle time.
        """
        clock = Clock()
        pool, got = await self.make_pool(clock=clock, limits=StreamLimits(idle_timeout=30))
        alive = await self.open_client(pool)
        silent = await self.open_client(pool, pong=False)
        alive.send(sip())
        silent.send(sip())
        await got.wait(2)
        clock.advance(30)
        while alive.pings < 1 or silent.pings < 1:
            await _tick()
        # The pong of the live client arrives.
        while sum(conn.pinged for conn in pool.connections() if isinstance(conn, WebSocketConnection)) != 1:
            await _tick()
        clock.advance(30)
        await silent.closed
        self.assertFalse(alive.closed.called)
        self.assertEqual(len(pool.connections()), 1)
        self.assertEqual(alive.pings, 2)

    async def test_names(self) -> None:
        """
        A connection is reached by the C{.invalid} names it announced: the
        first to announce a name keeps it while open, at most L{MAX_NAMES}
        each.
        """
        pool, got = await self.make_pool()
        first, second = await self.open_client(pool), await self.open_client(pool)
        first.send(sip())
        second.send(sip())
        await got.wait(2)
        conn, other = (received[2] for received in got.received)
        self.assertTrue(pool.name(conn, "Abc.invalid"))
        self.assertTrue(pool.name(conn, "abc.invalid"))
        self.assertFalse(pool.name(other, "abc.invalid"))
        self.assertFalse(pool.name(other, "example.com"))
        self.assertEqual(pool.named_peer("ABC.invalid"), conn.peer)
        self.assertIsNone(pool.named_peer("other.invalid"))
        assert isinstance(conn, WebSocketConnection)
        client = first if first.protocol.transport.getHost().port == conn.peer.port else second
        client.protocol.sendClose(1000)
        await client.closed
        while pool.named_peer("abc.invalid") is not None:
            await _tick()
        # Free again: the other connection takes it, and at most MAX_NAMES.
        self.assertTrue(pool.name(other, "abc.invalid"))
        for n in range(1, MAX_NAMES):
            self.assertTrue(pool.name(other, f"n{n}.invalid"))
        self.assertFalse(pool.name(other, "one-more.invalid"))

    async def test_stop_closes_cleanly(self) -> None:
        """
        Stopping the pool sends a close frame (1001, going away).
        """
        pool, got = await self.make_pool()
        client = await self.open_client(pool)
        client.send(sip())
        await got.wait(1)
        await pool.stop()
        clean, code = await client.closed
        self.assertEqual(code, 1001)


def _tick() -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.01, lambda: None)
