"""
Tests for L{sipleg.transport.tls} and TLS stream pools, with a throwaway
CA made at test time (see L{tests.certs}).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.transport.stream import StreamConnection, StreamLimits, StreamSocketPool
from sipleg.transport.tls import TLSConfig, describe_tls_failure
from tests.certs import CertificateAuthority, Leaf
from tests.support import Collector, RawClient, sip


class PKI:
    """
    The certificates of these tests.
    """

    def __init__(self) -> None:
        self.ca = CertificateAuthority()
        self.server = self.ca.issue("sip.test", dns_names=("localhost",), ip_addresses=("127.0.0.1", "::1"))
        self.client = self.ca.issue("client.test", dns_names=("client.test",))
        self.rogue_ca = CertificateAuthority("rogue CA")
        self.rogue = self.rogue_ca.issue("rogue", ip_addresses=("127.0.0.1",))


@functools.lru_cache(maxsize=1)
def pki() -> PKI:
    """
    Made once per test run: key generation is the slow part.
    """
    return PKI()


def config(leaf: Leaf | None, ca: bytes | None = None, verify_client: str = "none") -> TLSConfig:
    if leaf is None:
        return TLSConfig(None, None, ca=ca or pki().ca.cert, verify_client=verify_client)
    return TLSConfig(leaf.cert, leaf.key, ca=ca or pki().ca.cert, verify_client=verify_client)


class SilentServer(Protocol):
    """
    Accepts TCP and never says anything (a TLS handshake that hangs).
    """

    def connectionMade(self) -> None:
        factory: Any = self.factory
        self.received = b""
        factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class TLSPoolTests(TestCase):
    """
    TLS stream pools over loopback.
    """

    timeout = 10

    async def make_pool(
        self, tls: TLSConfig, host: str = "127.0.0.1", **kwargs: Any
    ) -> tuple[StreamSocketPool, Collector]:
        collector = Collector()
        pool = StreamSocketPool(Address(host, 0, "tls"), collector, tls=tls, **kwargs)
        await pool.listen()
        self.addCleanup(pool.stop)
        return pool, collector

    async def exchange(self, host: str, target_host: str | None = None) -> None:
        server, server_got = await self.make_pool(config(pki().server), host)
        client, client_got = await self.make_pool(config(pki().client), host)
        target = server.local
        if target_host is not None:
            target = Address(target_host, server.local.port, "tls", addr=server.local.addr)
        self.assertIsNone(await client.send(sip(b"secret"), target))
        await server_got.wait(1)
        data, source, conn = server_got.received[0]
        self.assertEqual(data, sip(b"secret"))
        self.assertEqual(source.proto, "tls")
        await server.send(sip(b"reply"), source, conn=conn)
        await client_got.wait(1)
        self.assertEqual(client_got.received[0][0], sip(b"reply"))
        self.assertEqual(client_got.received[0][1], server.local)
        self.assertEqual(len(client.connections()), 1)

    async def test_exchange_ip_identity(self) -> None:
        """
        An IP literal target is checked against the certificate's IP
        entries.
        """
        await self.exchange("127.0.0.1")

    async def test_exchange_ipv6(self) -> None:
        await self.exchange("::1")

    async def test_exchange_dns_identity(self) -> None:
        await self.exchange("127.0.0.1", "localhost")

    async def test_name_mismatch(self) -> None:
        server, server_got = await self.make_pool(config(pki().server))
        client, _ = await self.make_pool(config(pki().client))
        target = Address("wrong.example", server.local.port, "tls", addr="127.0.0.1")
        error = await self.assertFailure(client.send(sip(b"secret"), target), DeliveryError)
        self.assertIsNone(error.errno)
        self.assertTrue(error.reason.startswith("TLS verification failed"), error.reason)
        self.assertIn("wrong.example", error.reason)
        self.assertEqual(server_got.received, [])
        self.assertEqual(client.connections(), [])

    async def test_no_reuse_for_another_name(self) -> None:
        """
        A connection verified for one name does not carry a send for
        another name at the same address: that one gets its own handshake
        (and fails, the certificate not naming it).
        """
        server, server_got = await self.make_pool(config(pki().server))
        client, _ = await self.make_pool(config(pki().client))
        good = Address("localhost", server.local.port, "tls", addr="127.0.0.1")
        self.assertIsNone(await client.send(sip(b"one"), good))
        self.assertIsNone(await client.send(sip(b"two"), good))
        self.assertEqual(len(client.connections()), 1)
        other = Address("wrong.example", server.local.port, "tls", addr="127.0.0.1")
        error = await self.assertFailure(client.send(sip(b"three"), other), DeliveryError)
        self.assertIn("wrong.example", error.reason)
        await server_got.wait(2)
        self.assertEqual([item[0] for item in server_got.received], [sip(b"one"), sip(b"two")])

    async def test_untrusted_server(self) -> None:
        rogue, rogue_got = await self.make_pool(config(pki().rogue, ca=pki().rogue_ca.cert))
        client, _ = await self.make_pool(config(pki().client))
        error = await self.assertFailure(client.send(sip(), rogue.local), DeliveryError)
        self.assertIsNone(error.errno)
        self.assertTrue(error.reason.startswith("TLS handshake failed"), error.reason)
        self.assertEqual(rogue_got.received, [])

    async def test_client_certificate_required(self) -> None:
        """
        In "required" mode a client without a certificate gets nothing
        through; one with a certificate from the CA does.
        """
        server, server_got = await self.make_pool(config(pki().server, verify_client="required"))
        anonymous = StreamSocketPool(Address("127.0.0.1", 0, "tls"), Collector(), tls=config(None))
        self.addCleanup(anonymous.stop)
        try:
            await anonymous.send(sip(b"anonymous"), server.local)
        except DeliveryError as error:
            self.assertIsNone(error.errno)
        else:
            # TLS 1.3: the client completes its handshake before the server
            # checks it; the server then drops the connection.
            for conn in anonymous.connections():
                assert isinstance(conn, StreamConnection)
                await conn.when_closed()
        self.assertEqual(server_got.received, [])
        client, _ = await self.make_pool(config(pki().client))
        await client.send(sip(b"authenticated"), server.local)
        await server_got.wait(1)
        self.assertEqual([item[0] for item in server_got.received], [sip(b"authenticated")])

    async def test_client_certificate_optional(self) -> None:
        server, server_got = await self.make_pool(config(pki().server, verify_client="optional"))
        anonymous = StreamSocketPool(Address("127.0.0.1", 0, "tls"), Collector(), tls=config(None))
        self.addCleanup(anonymous.stop)
        await anonymous.send(sip(b"anonymous"), server.local)
        await server_got.wait(1)
        self.assertEqual(server_got.received[0][0], sip(b"anonymous"))

    async def test_handshake_timeout(self) -> None:
        """
        A peer that accepts TCP but never completes the handshake: the
        send fails with ETIMEDOUT after connect_timeout on the clock, and no
        plaintext was ever written.
        """
        factory = Factory.forProtocol(SilentServer)
        factory.connected = Deferred()  # type: ignore[attr-defined]
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        clock = Clock()
        client, _ = await self.make_pool(config(pki().client), clock=clock)
        sending = client.send(sip(b"plaintext?"), Address("127.0.0.1", port.getHost().port, "tls"))
        silent = await factory.connected  # type: ignore[attr-defined]
        self.assertNoResult(sending)
        clock.advance(9.9)
        self.assertNoResult(sending)
        clock.advance(0.1)
        error = await self.assertFailure(sending, DeliveryError)
        self.assertEqual(error.errno, errno.ETIMEDOUT)
        self.assertNotIn(b"plaintext?", silent.received)
        self.assertNotIn(b"OPTIONS", silent.received)

    async def test_restricted_listener_refuses_others(self) -> None:
        """
        A restricted TLS pool closes connections from other addresses before
        any handshake.
        """
        server, _ = await self.make_pool(config(pki().server), peer=Address("::1", 5061, "tls"))
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", server.local.port).connect(
            Factory.forProtocol(RawClient)
        )
        await client.lost
        self.assertEqual(client.data, b"")
        self.assertEqual(server.connections(), [])

    async def test_stalled_handshake_closed(self) -> None:
        """
        A client that connects to a TLS listener and never completes the
        handshake is closed after the first-message timeout.
        """
        clock = Clock()
        server, _ = await self.make_pool(
            config(pki().server), clock=clock, limits=StreamLimits(first_message_timeout=16)
        )
        client = await TCP4ClientEndpoint(reactor, "127.0.0.1", server.local.port).connect(
            Factory.forProtocol(RawClient)
        )
        assert client.transport is not None
        client.transport.write(b"\x16\x03\x01")  # the start of a ClientHello, and no more
        clock.advance(15.9)
        self.assertFalse(client.lost.called)
        clock.advance(0.1)
        await client.lost
        self.assertEqual(server.connections(), [])

    def test_server_needs_certificate(self) -> None:
        pool = StreamSocketPool(Address("127.0.0.1", 0, "tls"), Collector(), tls=config(None))
        self.assertRaises(ValueError, pool.listen)


class TLSConfigTests(TestCase):
    """
    L{TLSConfig} construction.
    """

    def test_verify_client_values(self) -> None:
        self.assertRaises(ValueError, config, pki().server, verify_client="sometimes")
        for mode in ("none", "optional", "required"):
            self.assertEqual(config(pki().server, verify_client=mode).verify_client, mode)

    def test_cert_and_key_together(self) -> None:
        self.assertRaises(ValueError, TLSConfig, pki().server.cert, None)
        self.assertRaises(ValueError, TLSConfig, None, pki().server.key)

    def test_not_pem(self) -> None:
        self.assertRaises(ValueError, TLSConfig, b"junk", pki().server.key)

    def test_files(self) -> None:
        """
        C{str} arguments are file paths.
        """
        paths = {}
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        for name, data in (
            ("cert", pki().server.cert + pki().ca.cert),
            ("key", pki().server.key),
            ("ca", pki().ca.cert),
        ):
            path = os.path.join(folder, name + ".pem")
            with open(path, "wb") as pem_file:
                pem_file.write(data)
            paths[name] = path
        tls = TLSConfig(paths["cert"], paths["key"], ca=paths["ca"], verify_client="required")
        self.assertIsNotNone(tls.server_options().getContext())
        self.assertIs(tls.server_options(), tls.server_options())
        self.assertIs(tls.client_options("localhost"), tls.client_options("localhost"))

    def test_describe_failure(self) -> None:
        self.assertEqual(
            describe_tls_failure(VerificationError(errors=[]), "example.com"),
            "TLS verification failed: certificate does not match example.com",
        )
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(describe_tls_failure(error), "TLS handshake failed: certificate verify failed")
        self.assertEqual(describe_tls_failure(ValueError("odd")), "TLS handshake failed: odd")
