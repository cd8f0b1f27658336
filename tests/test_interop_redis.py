"""
Proxies sharing their bindings through Redis (a real C{redis-server}
started by the test), with real Net::SIP user agents: a UAS registers
through proxy A and a caller reaches it through proxy B; and the same with
the workers of C{twistd sipproxy --workers 2}, which take packets as the
kernel spreads them (C{SO_REUSEPORT}), so a call may meet another worker
than the registration did.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from sipleg.address import Address
from sipleg.transport.udp import UDPSocketPool
from tests.interop.peers import (
    PEER_TIMEOUT,
    NetSipOutcome,
    NetSipServer,
    free_port,
    run_netsip_uac,
    start_netsip_uas,
)
from tests.support import Collector, RawClient, RedisServer, eventually, options
from tests.test_interop_proxy import ProxyInteropTestCase
from tests.test_plugin import ProxyProcessTestCase

DOMAIN = "example.test"


async def registrar_ready(proxy: Address, seconds: float = 10.0) -> None:
    """
    Wait until the proxy at C{proxy} (UDP) answers a REGISTER 200: its
    registrar has read Redis.
    """
    got = Collector()
    pool = UDPSocketPool(Address("127.0.0.1", 0, "udp"), got)
    await pool.listen()
    try:
        for attempt in range(int(seconds / 0.1)):
            request = (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{pool.local.port};branch=z9hG4bK-ready{attempt}\r\n"
                f"From: <sip:probe@{DOMAIN}>;tag=p\r\nTo: <sip:probe@{DOMAIN}>\r\n"
                f"Call-ID: ready-{attempt}\r\nCSeq: {attempt + 1} REGISTER\r\n"
                f"Contact: <sip:probe@127.0.0.1:9>;expires=0\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            await pool.send(request, proxy)
            await deferLater(reactor, 0.1, lambda: None)
            if any(data.startswith(b"SIP/2.0 200 ") for data, _, _ in got.received):
                return
        raise AssertionError(f"the registrar at {proxy} did not get ready")
    finally:
        await pool.stop()


async def register_and_call(test: Any, register_via: Address, call_via: Address, user: str) -> None:
    """
    A Net::SIP UAS registers C{sip:USER@example.test} through
    C{register_via}; a Net::SIP UAC calls that address through
    C{call_via}; the call completes at the UAS.
    """
    aor = f"sip:{user}@{DOMAIN}"
    uas: NetSipServer = await start_netsip_uas(
        "udp", register=aor, proxy=register_via, registrar=f"sip:{DOMAIN}", timeout=PEER_TIMEOUT
    )
    test.addCleanup(uas.stop)
    uac: NetSipOutcome = await run_netsip_uac(aor, call_via, timeout=PEER_TIMEOUT)
    server: NetSipOutcome = await uas.result()
    test.assertTrue(uac.ok, uac.describe())
    test.assertTrue(server.ok, server.describe())
    test.assertEqual(server.result["register"], "ok")


class TwoProxiesTests(ProxyInteropTestCase):
    """
    Proxies A and B, one Redis.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        super().setUp()

    def start_proxy(self, *args: Any, **options: Any) -> None:
        options.setdefault("registrar", True)
        options.setdefault("domains", [DOMAIN])
        options.setdefault("registrations", self.redis.url)
        super().start_proxy(*args, **options)

    async def test_register_at_a_call_through_b(self) -> None:
        a = self.proxy("udp")
        self.start_proxy()
        b = self.proxy("udp")
        await registrar_ready(a)
        await registrar_ready(b)
        await register_and_call(self, a, b, "uas")


class WorkersTests(ProxyProcessTestCase):
    """
    C{--workers 2 --registrar --registrations redis://...}.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_workers_share_bindings(self) -> Any:
        redis = RedisServer(self)
        port = free_port("udp")
        self.start_twistd(
            "sipproxy", "--workers", "2", "--registrar", "--domain", DOMAIN, "--registrations", redis.url,
            "--listen", f"udp:127.0.0.1:{port}",
        )  # fmt: skip
        proxy = Address("127.0.0.1", port, "udp")
        # (The supervisor binds first: a port in use is a one-line exit.)
        yield defer.ensureDeferred(registrar_ready(proxy, 20.0))
        # Four users, each registering and called from ports of their own:
        # the kernel spreads them over the workers.
        yield defer.gatherResults(
            [defer.ensureDeferred(register_and_call(self, proxy, proxy, f"u{n}")) for n in range(4)]
        )

    async def test_flow_of_another_worker(self) -> None:
        """
        A phone registers over TCP, a connection one worker holds; calls
        to it from twelve sources, which the kernel spreads over both
        workers, all arrive on that connection: the other worker hands
        them to the owner's flow relay (L{sipleg.flowrelay}).  Without
        it, those would dial the Contact, where nothing listens (503).
        """
        redis = RedisServer(self)
        port = free_port("udp")
        self.start_twistd(
            "sipproxy", "--workers", "2", "--registrar", "--domain", DOMAIN, "--registrations", redis.url,
            "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
        )  # fmt: skip
        proxy = Address("127.0.0.1", port, "udp")
        await registrar_ready(proxy, 20.0)
        phone = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), phone)
        self.addCleanup(phone.transport.loseConnection)
        here = phone.transport.getHost().port
        aor = f"sip:bob@{DOMAIN}"
        phone.transport.write(
            (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{here};branch=z9hG4bK-flow\r\n"
                f"From: <{aor}>;tag=f\r\nTo: <{aor}>\r\nCall-ID: flow\r\nCSeq: 1 REGISTER\r\n"
                "Max-Forwards: 70\r\n"
                f"Contact: <sip:bob@127.0.0.1:{free_port('tcp')};transport=tcp>\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        await phone.wait_for(b"SIP/2.0 200 OK")
        for n in range(12):
            # A source of its own: the kernel keeps it on one worker.
            got = Collector()
            pool = UDPSocketPool(Address("127.0.0.1", 0, "udp"), got)
            await pool.listen()
            try:
                for attempt in range(50):
                    call = 100 * n + attempt
                    await pool.send(options(aor, call, pool.local.port), proxy)
                    arrived = f"Call-ID: probe-{call}\r\n".encode()
                    await eventually(
                        lambda got=got, arrived=arrived: arrived in phone.data or got.received, PEER_TIMEOUT
                    )
                    if arrived in phone.data:
                        break
                    # Answered (404): that worker had not heard of the
                    # binding through Redis yet.
                    got.received.clear()
                    await deferLater(reactor, 0.1, lambda: None)
                self.assertIn(arrived, phone.data)
            finally:
                await pool.stop()
