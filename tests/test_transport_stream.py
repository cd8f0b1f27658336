"""
Tests for L{sipleg.transport.stream}: TCP over real loopback sockets, with
a L{Clock} for timers (TLS lives in C{test_transport_tls}).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.transport.base import ISocketPool
from sipleg.transport.stream import LISTEN_BACKLOG, StreamConnection, StreamLimits, StreamSocketPool
from tests.support import Collector, RawClient, sip


class StreamTestBase(TestCase):
    """
    Helpers to build pools and raw clients.
    """

    timeout = 10

    async def make_pool(self, host: str = "127.0.0.1", **kwargs: Any) -> tuple[StreamSocketPool, Collector]:
        collector = Collector()
        pool = StreamSocketPool(Address(host, 0, "tcp"), collector, **kwargs)
        await pool.listen()
        self.addCleanup(pool.stop)
        return pool, collector

    async def raw_client(self, target: Address) -> RawClient:
        endpoint_type = TCP6ClientEndpoint if ":" in target.host else TCP4ClientEndpoint
        endpoint = endpoint_type(reactor, target.host, target.port)
        client: RawClient = await endpoint.connect(Factory.forProtocol(RawClient))
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
        return client


class ExchangeTests(StreamTestBase):
    """
    Sending and receiving, connection reuse.
    """

    async def exchange(self, host: str) -> None:
        a, a_got = await self.make_pool(host)
        b, b_got = await self.make_pool(host)
        self.assertTrue(verifyObject(ISocketPool, a))
        self.assertNotEqual(b.local.port, 0)
        self.assertIsNone(await a.send(sip(b"hello"), b.local))
        await b_got.wait(1)
        data, source, conn = b_got.received[0]
        self.assertEqual(data, sip(b"hello"))
        self.assertEqual(source.proto, "tcp")
        self.assertEqual(source.addr, Address(host, 0).addr)
        self.assertIsInstance(conn, StreamConnection)
        assert isinstance(conn, StreamConnection)
        self.assertTrue(conn.inbound)
        # The answer goes back over the connection the request came in on.
        await b.send(sip(b"answer"), source, conn=conn)
        await a_got.wait(1)
        self.assertEqual(a_got.received[0][0], sip(b"answer"))
        self.assertEqual(a_got.received[0][1], b.local)
        self.assertEqual(len(a.connections()), 1)
        self.assertEqual(b.connections(), [conn])

    async def test_exchange_ipv4(self) -> None:
        await self.exchange("127.0.0.1")

    async def test_exchange_ipv6(self) -> None:
        await self.exchange("::1")

    async def test_reuse(self) -> None:
        """
        Two sends to the same peer share one connection.
        """
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        first = a.send(sip(b"1"), b.local)
        second = a.send(sip(b"2"), b.local)
        await defer.gatherResults([first, second])
        await b_got.wait(2)
        self.assertEqual([item[0] for item in b_got.received], [sip(b"1"), sip(b"2")])
        self.assertIs(b_got.received[0][2], b_got.received[1][2])
        self.assertEqual(len(a.connections()), 1)
        self.assertEqual(len(b.connections()), 1)

    async def test_response_reuses_inbound_connection(self) -> None:
        """
        Without a handle, a send to the source of an inbound connection
        still uses that connection (reuse by peer address).
        """
        a, a_got = await self.make_pool()
        b, b_got = await self.make_pool()
        await a.send(sip(b"request"), b.local)
        await b_got.wait(1)
        source = b_got.received[0][1]
        await b.send(sip(b"response"), source)
        await a_got.wait(1)
        self.assertEqual(a_got.received[0][0], sip(b"response"))
        self.assertEqual(len(b.connections()), 1)
        self.assertEqual(len(a.connections()), 1)

    async def test_closed_handle_falls_back(self) -> None:
        """
        A handle whose connection is gone is ignored: a new connection to
        the destination is opened.
        """
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        await a.send(sip(b"1"), b.local)
        await b_got.wait(1)
        (old,) = a.connections()
        assert isinstance(old, StreamConnection)
        old.close()
        await old.when_closed()
        await a.send(sip(b"2"), b.local, conn=old)
        await b_got.wait(2)
        self.assertIsNot(b_got.received[1][2], b_got.received[0][2])
        self.assertNotIn(old, a.connections())

    async def test_several_messages_per_write(self) -> None:
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        await a.send(b"\r\n" + sip(b"one") + sip(b"two") + b"\r\n" + sip(), b.local)
        await b_got.wait(3)
        self.assertEqual([item[0] for item in b_got.received], [sip(b"one"), sip(b"two"), sip()])

    async def test_message_split_over_writes(self) -> None:
        b, b_got = await self.make_pool()
        client = await self.raw_client(b.local)
        message = sip(b"split body")
        assert client.transport is not None
        client.transport.write(message[:20])
        client.transport.write(message[20:-3])
        client.transport.write(message[-3:])
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], message)

    async def test_family_mismatch(self) -> None:
        a, _ = await self.make_pool("127.0.0.1")
        error = await self.assertFailure(a.send(sip(), Address("::1", 5060, "tcp")), DeliveryError)
        self.assertEqual(error.errno, errno.EAFNOSUPPORT)

    async def test_receiver_errors_contained(self) -> None:
        def receiver(data: bytes, source: Address, conn: object) -> None:
            got.append(data)
            if len(got) == 1:
                raise RuntimeError("receiver bug")
            done.callback(None)

        got: list[bytes] = []
        done: Deferred[None] = Deferred()
        b = StreamSocketPool(Address("127.0.0.1", 0, "tcp"), receiver)
        await b.listen()
        self.addCleanup(b.stop)
        a, _ = await self.make_pool()
        await a.send(sip(b"1") + sip(b"2"), b.local)
        await done
        self.assertEqual(got, [sip(b"1"), sip(b"2")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(b.connections()), 1)

    async def test_adopt_socket(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        b, b_got = await self.make_pool(sock=sock)
        self.assertEqual(b.local.port, port)
        a, _ = await self.make_pool()
        await a.send(sip(b"adopted"), b.local)
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], sip(b"adopted"))

    async def test_peer_restriction(self) -> None:
        """
        A restricted pool sends to its peer whatever the destination and
        drops connections from other addresses.
        """
        a, a_got = await self.make_pool()
        b, _ = await self.make_pool(peer=a.local)
        await b.send(sip(b"to the peer"), Address("127.0.0.1", 9, "tcp"))
        await a_got.wait(1)
        self.assertEqual(a_got.received[0][0], sip(b"to the peer"))

        c, _ = await self.make_pool(peer=Address("::1", 5060, "tcp"))
        client = await self.raw_client(c.local)
        await client.lost
        self.assertEqual(c.connections(), [])

    def test_bad_arguments(self) -> None:
        collector = Collector()
        self.assertRaises(ValueError, StreamSocketPool, Address("127.0.0.1", 0, "udp"), collector)
        self.assertRaises(ValueError, StreamSocketPool, Address("127.0.0.1", 0, "tls"), collector)
        self.assertRaises(ValueError, StreamSocketPool, Address("localhost", 0, "tcp"), collector)
        self.assertRaises(ValueError, StreamLimits, max_connections=0)


class FailureTests(StreamTestBase):
    """
    Connection failures map to L{DeliveryError}.
    """

    async def test_connection_refused(self) -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        closed = Address("127.0.0.1", probe.getsockname()[1], "tcp")
        probe.close()
        a, _ = await self.make_pool()
        error = await self.assertFailure(a.send(sip(), closed), DeliveryError)
        self.assertEqual(error.errno, errno.ECONNREFUSED)
        self.assertEqual(a.connections(), [])

    def test_connect_timeout(self) -> None:
        """
        A connection that does not come up within connect_timeout seconds
        fails every queued send with ETIMEDOUT.
        """
        memory = MemoryReactorClock()
        pool = StreamSocketPool(
            Address("127.0.0.1", 0, "tcp"),
            Collector(),
            reactor=memory,
            limits=StreamLimits(connect_timeout=5),
        )
        first = pool.send(sip(b"1"), Address("127.0.0.1", 5060, "tcp"))
        second = pool.send(sip(b"2"), Address("127.0.0.1", 5060, "tcp"))
        self.assertEqual(len(memory.tcpClients), 1)
        self.assertEqual(memory.tcpClients[0][4], ("127.0.0.1", 0))
        memory.advance(4.9)
        self.assertNoResult(first)
        memory.advance(0.1)
        for result in (first, second):
            error = self.failureResultOf(result, DeliveryError).value
            self.assertEqual(error.errno, errno.ETIMEDOUT)
        self.assertEqual(memory.getDelayedCalls(), [])
        # The peer entry is gone: the next send tries again.
        pool.send(sip(b"3"), Address("127.0.0.1", 5060, "tcp"))
        self.assertEqual(len(memory.tcpClients), 2)

    def test_stop_fails_pending(self) -> None:
        memory = MemoryReactorClock()
        pool = StreamSocketPool(Address("127.0.0.1", 0, "tcp"), Collector(), reactor=memory)
        pending = pool.send(sip(), Address("127.0.0.1", 5060, "tcp"))
        stopped = pool.stop()
        self.assertEqual(self.failureResultOf(pending, DeliveryError).value.errno, errno.ESHUTDOWN)
        self.assertIsNone(self.successResultOf(stopped))
        late = pool.send(sip(), Address("127.0.0.1", 5060, "tcp"))
        self.assertEqual(self.failureResultOf(late, DeliveryError).value.errno, errno.ESHUTDOWN)


class KeepaliveAndFramingTests(StreamTestBase):
    """
    RFC 5626 pings and broken streams.
    """

    async def test_ping_pong(self) -> None:
        b, b_got = await self.make_pool()
        client = await self.raw_client(b.local)
        assert client.transport is not None
        client.transport.write(b"\r\n\r\n")
        await client.wait_for(b"\r\n")
        self.assertEqual(client.data, b"\r\n")
        # The connection still carries messages afterwards.
        client.transport.write(sip(b"after ping"))
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], sip(b"after ping"))

    async def test_broken_stream_closes(self) -> None:
        """
        A message without Content-Length closes the connection; messages
        before it are still delivered.
        """
        b, b_got = await self.make_pool()
        client = await self.raw_client(b.local)
        assert client.transport is not None
        client.transport.write(sip(b"good") + b"INVITE sip:x SIP/2.0\r\nCall-ID: y\r\n\r\n")
        await client.lost
        self.assertEqual([item[0] for item in b_got.received], [sip(b"good")])
        self.assertEqual(b.connections(), [])

    async def test_too_large_closes(self) -> None:
        b, _ = await self.make_pool()
        client = await self.raw_client(b.local)
        assert client.transport is not None
        client.transport.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 70000\r\n\r\n")
        await client.lost
        self.assertEqual(b.connections(), [])

    async def test_endless_header_block_closes(self) -> None:
        """
        A peer sending a 20 MB header block without the blank line that
        ends it has its connection closed once the block passes the
        framer's limit (16 KiB): the pool reads less than 1 MiB of it and
        the peer cannot write it all.
        """
        read: list[int] = []
        frame = StreamConnection.dataReceived

        def counting(conn: StreamConnection, data: bytes) -> None:
            read.append(len(data))
            frame(conn, data)

        self.patch(StreamConnection, "dataReceived", counting)
        b, b_got = await self.make_pool()
        peer = socket.create_connection((b.local.host, b.local.port))
        self.addCleanup(peer.close)
        peer.setblocking(False)
        total = 20 * 2**20
        # 64 lines of 1 KiB; a partial send never makes a blank line, as
        # every chunk starts with a header name.
        chunk = (b"X-Filler: " + b"a" * 1012 + b"\r\n") * 64
        written = peer.send(b"OPTIONS sip:x SIP/2.0\r\n")
        while written < total:
            try:
                written += peer.send(chunk)
            except BlockingIOError:
                await deferLater(reactor, 0.01, lambda: None)
            except OSError as e:
                self.assertIn(e.errno, (errno.ECONNRESET, errno.EPIPE))
                break
        self.assertLess(written, total)
        self.assertGreaterEqual(sum(read), 16384)
        self.assertLess(sum(read), 2**20)
        self.assertEqual(b_got.received, [])
        self.assertEqual(b.connections(), [])

    async def test_too_large_request_answered_513(self) -> None:
        """
        A request whose header block is complete but whose body is too
        large is answered 513 before the connection closes.
        """
        b, b_got = await self.make_pool()
        client = await self.raw_client(b.local)
        assert client.transport is not None
        client.transport.write(
            b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbig\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: big@x\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 70000\r\n\r\n"
        )
        await client.lost
        self.assertTrue(client.data.startswith(b"SIP/2.0 513 "), client.data)
        self.assertIn(b"Call-ID: big@x\r\n", client.data)
        self.assertEqual(b_got.received, [])
        self.assertEqual(b.connections(), [])

    def test_split_reads_in_memory(self) -> None:
        """
        Reads split anywhere are reassembled (deterministic, no sockets).
        """
        collector = Collector()
        pool = StreamSocketPool(Address("127.0.0.1", 0, "tcp"), collector, reactor=MemoryReactorClock())
        conn = pool._accept("127.0.0.1", 40000)
        assert conn is not None
        transport = StringTransport()
        conn.makeConnection(transport)
        stream = b"\r\n" + sip(b"first") + b"\r\n\r\n" + sip(b"second")
        for i in range(len(stream)):
            conn.dataReceived(stream[i : i + 1])
        self.assertEqual([item[0] for item in collector.received], [sip(b"first"), sip(b"second")])
        self.assertEqual(collector.received[0][1], Address("127.0.0.1", 40000, "tcp"))
        self.assertEqual(transport.value(), b"\r\n")
        self.assertFalse(transport.disconnecting)
        conn.dataReceived(b"garbage\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pool.connections(), [])


class IdleExpiryTests(StreamTestBase):
    """
    Idle connections are closed on the clock: 15 + 105 / n seconds.
    """

    async def connect(self, a: StreamSocketPool, b: StreamSocketPool, got: Collector, count: int) -> None:
        await a.send(sip(), b.local)
        await got.wait(count)

    async def test_single_connection_expires_after_120s(self) -> None:
        clock = Clock()
        a, _ = await self.make_pool(clock=clock)
        self.assertEqual(clock.getDelayedCalls(), [])
        b, b_got = await self.make_pool()
        await self.connect(a, b, b_got, 1)
        (conn,) = a.connections()
        assert isinstance(conn, StreamConnection)
        inbound = b_got.received[0][2]
        assert isinstance(inbound, StreamConnection)
        clock.advance(119)
        self.assertEqual(a.connections(), [conn])
        clock.advance(1)
        self.assertEqual(a.connections(), [])
        await conn.when_closed()
        await inbound.when_closed()
        self.assertEqual(b.connections(), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_activity_postpones_expiry(self) -> None:
        clock = Clock()
        a, _ = await self.make_pool(clock=clock)
        b, b_got = await self.make_pool()
        await self.connect(a, b, b_got, 1)
        clock.advance(100)
        await self.connect(a, b, b_got, 2)
        clock.advance(100)
        self.assertEqual(len(a.connections()), 1)
        clock.advance(20)
        self.assertEqual(a.connections(), [])

    async def test_two_connections_expire_sooner(self) -> None:
        """
        With two connections the idle time is 15 + 105 / 2 = 67.5 s.
        """
        clock = Clock()
        a, _ = await self.make_pool(clock=clock)
        b, b_got = await self.make_pool()
        c, c_got = await self.make_pool()
        await self.connect(a, b, b_got, 1)
        await self.connect(a, c, c_got, 1)
        self.assertEqual(len(a.connections()), 2)
        clock.advance(67)
        self.assertEqual(len(a.connections()), 2)
        clock.advance(1)
        self.assertEqual(a.connections(), [])

    async def test_fixed_idle_timeout(self) -> None:
        clock = Clock()
        a, _ = await self.make_pool(clock=clock, limits=StreamLimits(idle_timeout=3))
        b, b_got = await self.make_pool()
        await self.connect(a, b, b_got, 1)
        clock.advance(2.9)
        self.assertEqual(len(a.connections()), 1)
        clock.advance(0.1)
        self.assertEqual(a.connections(), [])


class ConnectionCapTests(StreamTestBase):
    """
    max_connections: inbound connections past the cap are refused, an
    outbound one replaces the least recently active connection.
    """

    async def test_inbound_refused_past_cap(self) -> None:
        """
        At the cap, with every connection in use, a newcomer is refused.
        """
        b, b_got = await self.make_pool(limits=StreamLimits(max_connections=1))
        first = await self.raw_client(b.local)
        assert first.transport is not None
        first.transport.write(sip(b"first"))
        await b_got.wait(1)
        second = await self.raw_client(b.local)
        await second.lost
        self.assertEqual(len(b.connections()), 1)
        self.assertEqual(first.lost.called, False)

    async def test_newcomer_replaces_silent_connection_at_cap(self) -> None:
        """
        At the cap, the oldest accepted connection that has not sent a
        complete message gives way to a newcomer, so connections hoarded
        by one peer cannot lock others out.
        """
        b, b_got = await self.make_pool(limits=StreamLimits(max_connections=1))
        hoarder = await self.raw_client(b.local)
        assert hoarder.transport is not None
        hoarder.transport.write(b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: ")
        newcomer = await self.raw_client(b.local)
        await hoarder.lost
        assert newcomer.transport is not None
        newcomer.transport.write(sip(b"hello"))
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], sip(b"hello"))

    async def test_per_source_cap(self) -> None:
        """
        One IP address cannot hold more than C{max_per_source} accepted
        connections; a closed one frees its place.
        """
        b, b_got = await self.make_pool(limits=StreamLimits(max_per_source=2))
        first = await self.raw_client(b.local)
        second = await self.raw_client(b.local)
        third = await self.raw_client(b.local)
        await third.lost
        self.assertFalse(first.lost.called or second.lost.called)
        assert first.transport is not None
        first.transport.loseConnection()
        await first.lost
        while len(b.connections()) > 1:
            await deferLater(reactor, 0.01, lambda: None)
        fourth = await self.raw_client(b.local)
        assert fourth.transport is not None
        fourth.transport.write(sip(b"fourth"))
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], sip(b"fourth"))

    async def test_first_message_timeout(self) -> None:
        """
        An accepted connection that has not delivered a complete message
        within the first-message timeout is closed (a slow-loris peer
        trickling bytes); one that has is kept.
        """
        clock = Clock()
        b, b_got = await self.make_pool(clock=clock, limits=StreamLimits(first_message_timeout=16))
        slow = await self.raw_client(b.local)
        quick = await self.raw_client(b.local)
        assert slow.transport is not None and quick.transport is not None
        quick.transport.write(sip(b"register"))
        await b_got.wait(1)
        for _ in range(7):
            slow.transport.write(b"X")
            clock.advance(2)
        self.assertFalse(slow.lost.called)
        clock.advance(2)
        await slow.lost
        self.assertFalse(quick.lost.called)
        self.assertEqual(len(b.connections()), 1)

    async def test_outbound_evicts_oldest(self) -> None:
        a, _ = await self.make_pool(limits=StreamLimits(max_connections=1))
        b, b_got = await self.make_pool()
        c, c_got = await self.make_pool()
        await a.send(sip(b"to b"), b.local)
        await b_got.wait(1)
        (old,) = a.connections()
        assert isinstance(old, StreamConnection)
        await a.send(sip(b"to c"), c.local)
        await c_got.wait(1)
        await old.when_closed()
        self.assertEqual([conn.peer for conn in a.connections()], [c.local])  # type: ignore[attr-defined]

    def test_all_connecting_at_cap(self) -> None:
        memory = MemoryReactorClock()
        pool = StreamSocketPool(
            Address("127.0.0.1", 0, "tcp"),
            Collector(),
            reactor=memory,
            limits=StreamLimits(max_connections=1),
        )
        pool.send(sip(), Address("127.0.0.1", 5060, "tcp"))
        refused = pool.send(sip(), Address("127.0.0.1", 5061, "tcp"))
        self.assertEqual(self.failureResultOf(refused, DeliveryError).value.errno, errno.EMFILE)


class ListenTests(TestCase):
    """
    How a stream pool listens.
    """

    def test_backlog(self) -> None:
        """
        The accept queue is as long as the kernel allows (not Twisted's
        50), so a burst of new connections is not made to wait for SYN
        retransmissions.
        """
        fake = MemoryReactorClock()
        pool = StreamSocketPool(Address("127.0.0.1", 5060, "tcp"), Collector(), reactor=fake, clock=fake)
        pool.listen()
        listening = [(port, backlog) for port, _, backlog, _ in fake.tcpServers]
        self.assertEqual(listening, [(5060, LISTEN_BACKLOG)])
        self.assertGreaterEqual(LISTEN_BACKLOG, 128)
