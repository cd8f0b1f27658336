"""
Tests for L{sipleg.transport.udp}, over real loopback sockets.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.transport.base import ISocketPool
from sipleg.transport.udp import UDPSocketPool
from tests.support import Collector, proxy_log_lines


class UDPSocketPoolTests(TestCase):
    """
    L{UDPSocketPool} over 127.0.0.1 and ::1.
    """

    timeout = 10

    async def make_pool(
        self, host: str = "127.0.0.1", peer: Address | None = None, sock: socket.socket | None = None
    ) -> tuple[UDPSocketPool, Collector]:
        collector = Collector()
        pool = UDPSocketPool(Address(host, 0, "udp"), collector, peer=peer, sock=sock)
        await pool.listen()
        self.addCleanup(pool.stop)
        return pool, collector

    async def test_interface(self) -> None:
        pool, _ = await self.make_pool()
        self.assertTrue(verifyObject(ISocketPool, pool))
        self.assertNotEqual(pool.local.port, 0)
        self.assertEqual(pool.local.proto, "udp")
        self.assertEqual(pool.connections(), [])

    async def exchange(self, host: str) -> None:
        a, a_got = await self.make_pool(host)
        b, b_got = await self.make_pool(host)
        self.assertIsNone(await a.send(b"ping from a", b.local))
        await b_got.wait(1)
        data, source, conn = b_got.received[0]
        self.assertEqual(data, b"ping from a")
        self.assertEqual(source, Address(host, a.local.port, "udp"))
        self.assertIsNone(conn)
        # Answer to the source address.
        await b.send(b"pong from b", source)
        await a_got.wait(1)
        self.assertEqual(a_got.received[0][:2], (b"pong from b", b.local))

    async def test_exchange_ipv4(self) -> None:
        await self.exchange("127.0.0.1")

    async def test_exchange_ipv6(self) -> None:
        await self.exchange("::1")

    async def test_large_datagram_whole(self) -> None:
        """
        A 65000-byte datagram arrives in one piece (Twisted's default read
        size is 8192).
        """
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        payload = bytes(range(256)) * 253 + b"x" * 232
        self.assertEqual(len(payload), 65000)
        await a.send(payload, b.local)
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], payload)

    async def test_oversized(self) -> None:
        a, _ = await self.make_pool()
        b, _ = await self.make_pool()
        error = await self.assertFailure(a.send(b"x" * 70000, b.local), DeliveryError)
        self.assertEqual(error.errno, errno.EMSGSIZE)

    async def test_sends_coalesced_per_reactor_turn(self) -> None:
        """
        Datagrams sent in one reactor turn are handed to the kernel
        together at its end, in order; each send's Deferred fires then.
        """
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        sent = [a.send_now(b"%d" % n, b.local) for n in range(5)]
        self.assertFalse(any(d is None or d.called for d in sent))
        await defer.gatherResults(sent)
        await b_got.wait(5)
        self.assertEqual([data for data, _, _ in b_got.received], [b"0", b"1", b"2", b"3", b"4"])

    async def test_coalesced_failure_is_the_senders_own(self) -> None:
        """
        A datagram the kernel refuses at the flush fails its own Deferred
        only (here EACCES: broadcast without SO_BROADCAST); the others go.
        """
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        first = a.send(b"first", b.local)
        refused = a.send(b"broadcast", Address("255.255.255.255", b.local.port))
        last = a.send(b"last", b.local)
        error = await self.assertFailure(refused, DeliveryError)
        self.assertEqual(error.errno, errno.EACCES)
        await first
        await last
        await b_got.wait(2)
        self.assertEqual([data for data, _, _ in b_got.received], [b"first", b"last"])

    async def test_stop_sends_what_is_held_back(self) -> None:
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        sent = a.send(b"bye", b.local)
        await a.stop()
        self.assertTrue(sent.called)
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], b"bye")

    async def test_wrong_family(self) -> None:
        a, _ = await self.make_pool("127.0.0.1")
        error = await self.assertFailure(a.send(b"x", Address("::1", 5060)), DeliveryError)
        self.assertEqual(error.errno, errno.EAFNOSUPPORT)

    async def test_unresolved_destination(self) -> None:
        a, _ = await self.make_pool()
        self.assertRaises(ValueError, a.send, b"x", Address("example.com", 5060))

    async def test_keepalives_ignored(self) -> None:
        a, _ = await self.make_pool()
        b, b_got = await self.make_pool()
        for keepalive in (b"\r\n\r\n", b"\r\n", b" ", b""):
            await a.send(keepalive, b.local)
        await a.send(b"OPTIONS", b.local)
        await b_got.wait(1)
        self.assertEqual([item[0] for item in b_got.received], [b"OPTIONS"])

    async def test_peer_restriction(self) -> None:
        """
        A pool with a peer only receives from it and sends only to it.
        """
        b, b_got = await self.make_pool()
        a, a_got = await self.make_pool(peer=b.local)
        c, c_got = await self.make_pool()
        self.assertEqual(a.peer, b.local)
        await c.send(b"from c", a.local)
        # Asked to send to c, a sends to its peer b.
        await a.send(b"from a", c.local)
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], b"from a")
        await b.send(b"from b", a.local)
        await a_got.wait(1)
        self.assertEqual([item[0] for item in a_got.received], [b"from b"])
        self.assertEqual(c_got.received, [])

    async def test_connected_refused(self) -> None:
        """
        A connected socket reports the ICMP port unreachable of a closed
        peer port as ECONNREFUSED on a later send.
        """
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        closed = Address("127.0.0.1", probe.getsockname()[1])
        probe.close()
        a, _ = await self.make_pool(peer=closed)
        await a.send(b"first", closed)
        error = await self.assertFailure(a.send(b"second", closed), DeliveryError)
        self.assertEqual(error.errno, errno.ECONNREFUSED)

    async def test_adopt_socket(self) -> None:
        """
        A bound socket is adopted; stop() releases the port.
        """
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
        b, b_got = await self.make_pool("::1", sock=sock)
        self.assertEqual(b.local, Address("::1", port, "udp"))
        self.assertEqual(sock.fileno(), -1)
        a, _ = await self.make_pool("::1")
        await a.send(b"to adopted", b.local)
        await b_got.wait(1)
        self.assertEqual(b_got.received[0][0], b"to adopted")
        await b.stop()
        rebind = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(rebind.close)
        rebind.bind(("::1", port))

    async def test_receiver_errors_contained(self) -> None:
        """
        An exception in the receiver is logged; the pool keeps working.
        """
        got: list[bytes] = []
        waiter: Deferred[None] = Deferred()

        def receiver(data: bytes, source: Address, conn: object) -> None:
            got.append(data)
            if data == b"boom":
                raise RuntimeError("receiver bug")
            waiter.callback(None)

        b = UDPSocketPool(Address("127.0.0.1", 0), receiver)
        await b.listen()
        self.addCleanup(b.stop)
        a, _ = await self.make_pool()
        await a.send(b"boom", b.local)
        await a.send(b"fine", b.local)
        await waiter
        self.assertEqual(got, [b"boom", b"fine"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_send_after_stop(self) -> None:
        a, _ = await self.make_pool()
        await a.stop()
        await self.assertFailure(a.send(b"x", Address("127.0.0.1", 9)), DeliveryError)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, UDPSocketPool, Address("127.0.0.1", 0, "tcp"), Collector())
        self.assertRaises(ValueError, UDPSocketPool, Address("localhost", 0), Collector())
        self.assertRaises(
            ValueError,
            UDPSocketPool,
            Address("127.0.0.1", 0),
            Collector(),
            peer=Address("example.com", 5060),
        )


class UnreachableTests(TestCase):
    """
    An ICMP error for a datagram the pool sent (nobody listens on the
    destination port) is read from the socket's error queue on Linux:
    logged once per destination, handed to C{on_unreachable}, and the
    pool reads on.
    """

    timeout = 10

    def setUp(self) -> None:
        if sys.platform != "linux":
            raise SkipTest("IP_RECVERR is Linux's")
        self.lines = proxy_log_lines(self, "sipleg.transport.udp")

    async def refused(self, host: str, adopt: bool) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = None
        if adopt:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
        errors: list[tuple[Address, int, bytes]] = []
        told: list[Deferred[None]] = [Deferred() for _ in range(3)]

        def unreachable(dst: Address, code: int, payload: bytes) -> None:
            errors.append((dst, code, payload))
            told[len(errors) - 1].callback(None)

        got = Collector()
        pool = UDPSocketPool(Address(host, 0, "udp"), got, sock=sock)
        pool.on_unreachable = unreachable
        await pool.listen()
        self.addCleanup(pool.stop)
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            closed = Address(host, probe.getsockname()[1], "udp")
        for n in range(3):
            await pool.send(b"OPTIONS sip:nobody SIP/2.0 %d" % n, closed)
            await told[n]
        self.assertEqual(
            errors, [(closed, errno.ECONNREFUSED, b"OPTIONS sip:nobody SIP/2.0 %d" % n) for n in range(3)]
        )
        self.assertEqual(len(self.lines), 1, self.lines)
        self.assertIn(f"UDP datagram to {closed} not delivered: Connection refused", self.lines[0])
        # The socket was not taken for hung up: datagrams still arrive.
        other = UDPSocketPool(Address(host, 0, "udp"), Collector())
        await other.listen()
        self.addCleanup(other.stop)
        await other.send(b"still there", pool.local)
        await got.wait(1)

    async def test_ipv4(self) -> None:
        await self.refused("127.0.0.1", adopt=False)

    async def test_ipv6_adopted(self) -> None:
        await self.refused("::1", adopt=True)


class BufferTests(TestCase):
    @defer.inlineCallbacks
    def test_receive_buffer_enlarged(self) -> Any:
        from sipleg.transport.udp import SOCKET_BUFFER

        pool = UDPSocketPool(Address("127.0.0.1", 0), lambda *a: None)
        yield pool.listen()
        self.addCleanup(pool.stop)
        size = pool._port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            cap = int(f.read())
        # Linux doubles the value asked for (bookkeeping overhead).
        self.assertGreaterEqual(size, min(SOCKET_BUFFER, cap))
