"""
Flows through the whole proxy, on real sockets on 127.0.0.1 (issue 15
items 1, 3 and 6): a phone registered over TCP or TLS is reached over its
registration connection whatever its Contact says, and when that is gone
over TLS the caller gets 480 while over TCP the Contact is dialled; a
NAT'ed UDP phone is reached at its source address and kept alive; the
status counts flows by transport.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.ssl import CertificateOptions
from twisted.trial import unittest

from sipleg.flowrelay import FlowRelay
from sipleg.flows import Flow
from sipleg.leg import Leg
from sipleg.message import parse_message
from sipleg.service import ProxyConfig, make_service
from sipleg.stateful import TransactionTimers
from sipleg.statusport import StatusServer
from sipleg.tap import parse_listen
from tests.certs import CertificateAuthority
from tests.interop.peers import free_port
from tests.support import RawClient, eventually, fetch, listening_leg, metric_values, options

AOR = "sip:bob@example.test"


def register(
    proto: str, here: int, contact: str, expires: int = 600, params: str = "", via: str = ""
) -> bytes:
    """
    A REGISTER of C{bob} with Contact C{contact} (and header parameters
    C{params}), sent from port C{here}; C{via}: a Via of the phone below
    ours (we forwarded it).
    """
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{proto.upper()} 127.0.0.1:{here};branch=z9hG4bK-reg{here};rport\r\n"
        + (f"Via: {via}\r\n" if via else "")
        + f"From: <{AOR}>;tag=r{here}\r\nTo: <{AOR}>\r\nCall-ID: reg-{here}\r\nCSeq: 1 REGISTER\r\n"
        f"Max-Forwards: 70\r\nContact: <{contact}>;expires={expires}{params}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class Datagrams(DatagramProtocol):
    """
    A UDP socket that records what it receives.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)

    def has(self, prefix: bytes) -> bool:
        return any(datagram.startswith(prefix) for datagram in self.received)


class FlowProxyTests(unittest.TestCase):
    """
    A registrar proxy on UDP, TCP and TLS legs of 127.0.0.1.
    """

    timeout = 30

    def setUp(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        leaf = CertificateAuthority().issue("proxy", ip_addresses=("127.0.0.1",))
        (folder / "cert.pem").write_bytes(leaf.cert)
        (folder / "key.pem").write_bytes(leaf.key)
        config = ProxyConfig(
            listen=[parse_listen(f"{proto}:127.0.0.1:0") for proto in ("udp", "tcp", "tls")],
            tls_cert=str(folder / "cert.pem"),
            tls_key=str(folder / "key.pem"),
            registrar=True,
            domains=["example.test"],
            keepalive=1,
            status="tcp:127.0.0.1:0",
        )
        service = make_service(config)
        service.startService()
        self.addCleanup(service.stopService)
        self.legs = {child.proto: child for child in service if isinstance(child, Leg)}
        status = next(child for child in service if isinstance(child, StatusServer))
        self.metrics = f"http://127.0.0.1:{status.port.getHost().port}/metrics"
        self.caller = Datagrams()
        port = reactor.listenUDP(0, self.caller, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.calls = 0

    def call(self) -> None:
        """
        The caller (UDP) sends an OPTIONS to bob's AOR.
        """
        self.calls += 1
        here = self.caller.transport.getHost().port
        self.caller.transport.write(
            options(AOR, self.calls, here), ("127.0.0.1", self.legs["udp"].local.port)
        )

    async def phone(self, proto: str, params: str = "") -> tuple[RawClient, int]:
        """
        A phone connected to the proxy over C{proto} that registered bob
        with a Contact where nothing listens (with header parameters
        C{params}).

        @return: its connection, and the Contact's port.
        """
        client = RawClient()
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", self.legs[proto].local.port)
        if proto == "tls":
            # A phone without a server certificate, trusting the proxy's.
            endpoint = wrapClientTLS(CertificateOptions(), endpoint)
        await connectProtocol(endpoint, client)
        self.addCleanup(client.transport.loseConnection)
        contact_port = free_port("tcp")
        here = client.transport.getHost().port
        contact = f"sip:bob@127.0.0.1:{contact_port};transport={proto}"
        client.transport.write(register(proto, here, contact, params=params))
        await client.wait_for(b"SIP/2.0 200 OK")
        return client, contact_port

    async def flows(self) -> dict[str, float]:
        """
        C{sipleg_flows} by transport, from C{/metrics}.
        """
        _, body = await fetch(self.metrics)
        return {
            dict(labels)["transport"]: value
            for (name, labels), value in metric_values(body).items()
            if name == "sipleg_flows"
        }

    async def test_tls_flow(self) -> None:
        """
        A call to a phone registered over TLS arrives on its registration
        connection (the Contact's port has no listener, and a phone
        accepts no TLS handshake anyway); once that connection is closed,
        the caller gets 480 and no connection is made.
        """
        client, contact_port = await self.phone("tls")
        self.assertEqual(await self.flows(), {"tls": 1})
        self.call()
        await client.wait_for(f"OPTIONS sip:bob@127.0.0.1:{contact_port};transport=tls SIP/2.0".encode())
        client.transport.loseConnection()
        await client.lost
        pool = self.legs["tls"].socketpool
        await eventually(lambda: not pool.connections())
        self.call()
        await eventually(lambda: self.caller.has(b"SIP/2.0 480 "))
        self.assertEqual(pool.connections(), [])

    async def test_outbound_flows(self) -> None:
        """
        RFC 5626: one instance registers two flows (reg-id 1 and 2): the
        200 says C{Require: outbound}; calls go over reg-id 1's
        connection, over reg-id 2's once that is gone, and are answered
        430 Flow Failed once both are.
        """
        instance = ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000000000009>"'
        first, contact_port = await self.phone("tcp", ";reg-id=1" + instance)
        self.assertIn(b"Require: outbound\r\n", first.data)
        second, _ = await self.phone("tcp", ";reg-id=2" + instance)
        pool = self.legs["tcp"].socketpool
        for client in (first, second):
            self.call()
            await client.wait_for(f"Call-ID: probe-{self.calls}\r\n".encode())
            client.transport.loseConnection()
            await client.lost
        await eventually(lambda: not pool.connections())
        self.call()
        await eventually(lambda: self.caller.has(b"SIP/2.0 430 Flow Failed"))
        # The Contact was never dialled.
        self.assertEqual(pool.connections(), [])

    async def test_forwarded_register(self) -> None:
        """
        A REGISTER an edge proxy forwarded (two Vias) did not come by the
        phone's own flow: the binding has none, and a call goes to its
        Contact.
        """
        edge = Datagrams()
        port = reactor.listenUDP(0, edge, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        here = port.getHost().port
        phone = Datagrams()
        contact_port = reactor.listenUDP(0, phone, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(contact_port.stopListening)
        contact = f"sip:bob@127.0.0.1:{contact_port.getHost().port}"
        phone_via = f"SIP/2.0/UDP 127.0.0.1:{contact_port.getHost().port};branch=z9hG4bK-phone"
        request = register("udp", here, contact, via=phone_via)
        edge.transport.write(request, ("127.0.0.1", self.legs["udp"].local.port))
        await eventually(lambda: edge.has(b"SIP/2.0 200 "))
        self.assertEqual(await self.flows(), {})
        self.call()
        await eventually(lambda: phone.has(f"OPTIONS {contact} SIP/2.0".encode()))
        self.assertFalse(edge.has(b"OPTIONS"))

    async def test_in_dialog_over_the_flow(self) -> None:
        """
        The Record-Route of a request sent over a flow carries its token
        (RFC 5626 §5.3): a request later in the dialog, addressed to the
        phone's Contact through that Route, goes over the TLS connection
        too (not to the Contact, where nothing listens).
        """
        client, contact_port = await self.phone("tls")
        self.call()
        await eventually(lambda: b"OPTIONS " in client.data and client.data.endswith(b"\r\n\r\n"))
        invite = parse_message(client.data[client.data.index(b"OPTIONS ") :])
        routes = invite.get_headers("record-route")
        self.assertEqual(len(routes), 2, routes)
        self.assertTrue(all(route.startswith("<sip:") and "@127.0.0.1:" in route for route in routes), routes)
        contact = f"sip:bob@127.0.0.1:{contact_port};transport=tls"
        here = self.caller.transport.getHost().port
        bye = (
            f"BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{here};branch=z9hG4bK-bye;rport\r\n"
            f"Route: {', '.join(reversed(routes))}\r\nFrom: <sip:probe@127.0.0.1>;tag=o1\r\n"
            f"To: <{AOR}>;tag=bob\r\nCall-ID: probe-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self.caller.transport.write(bye.encode(), ("127.0.0.1", self.legs["udp"].local.port))
        await client.wait_for(f"BYE {contact} SIP/2.0".encode())

    async def test_caller_flow(self) -> None:
        """
        A caller over TLS with C{;ob} in its Contact (RFC 5626 §5.3): our
        Record-Route names its connection, so the callee's request later
        in the dialog, addressed to the caller's Contact (where nothing
        listens), reaches it over that connection.
        """
        callee = Datagrams()
        port = reactor.listenUDP(0, callee, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        there = port.getHost().port
        proxy = ("127.0.0.1", self.legs["udp"].local.port)
        callee.transport.write(register("udp", there, f"sip:bob@127.0.0.1:{there}"), proxy)
        await eventually(lambda: callee.has(b"SIP/2.0 200 "))
        caller = RawClient()
        endpoint = wrapClientTLS(
            CertificateOptions(), TCP4ClientEndpoint(reactor, "127.0.0.1", self.legs["tls"].local.port)
        )
        await connectProtocol(endpoint, caller)
        self.addCleanup(caller.transport.loseConnection)
        here = caller.transport.getHost().port
        contact = f"sip:alice@127.0.0.1:{free_port('tcp')};transport=tls;ob"
        caller.transport.write(
            (
                f"OPTIONS {AOR} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{here};branch=z9hG4bK-ob\r\n"
                f"From: <sip:alice@example.test>;tag=a\r\nTo: <{AOR}>\r\nCall-ID: ob\r\n"
                f"CSeq: 1 OPTIONS\r\nContact: <{contact}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        await eventually(lambda: callee.has(b"OPTIONS "))
        (arrived,) = [parse_message(data) for data in callee.received if data.startswith(b"OPTIONS ")]
        routes = arrived.get_headers("record-route")
        bye = (
            f"BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{there};branch=z9hG4bK-back;rport\r\n"
            f"Route: {', '.join(routes)}\r\nFrom: <{AOR}>;tag=b\r\nTo: <sip:alice@example.test>;tag=a\r\n"
            "Call-ID: ob\r\nCSeq: 1 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        callee.transport.write(bye.encode(), proxy)
        await caller.wait_for(f"BYE {contact} SIP/2.0".encode())

    async def test_caller_with_malformed_contact(self) -> None:
        """
        A caller over TLS whose Contact does not parse asks for no flow:
        its request is forwarded as it is (the proxy reading the Contact
        for C{;ob} raised in the reactor before).
        """
        callee = Datagrams()
        port = reactor.listenUDP(0, callee, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        there = port.getHost().port
        caller = RawClient()
        endpoint = wrapClientTLS(
            CertificateOptions(), TCP4ClientEndpoint(reactor, "127.0.0.1", self.legs["tls"].local.port)
        )
        await connectProtocol(endpoint, caller)
        self.addCleanup(caller.transport.loseConnection)
        here = caller.transport.getHost().port
        caller.transport.write(
            (
                f"OPTIONS sip:bob@127.0.0.1:{there} SIP/2.0\r\n"
                f"Via: SIP/2.0/TLS 127.0.0.1:{here};branch=z9hG4bK-badcontact\r\n"
                f"From: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@127.0.0.1:{there}>\r\n"
                "Call-ID: badc\r\n"
                "CSeq: 1 OPTIONS\r\nContact: Bell, Alexander <sip:a@127.0.0.1;ob\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        await eventually(lambda: callee.has(b"OPTIONS "))

    async def test_path(self) -> None:
        """
        A REGISTER for another registrar that says C{Supported: path}
        leaves with our Path naming the phone's flow (RFC 3327, RFC 5626
        §5.1); a request that registrar sends back through it reaches the
        phone over its connection.
        """
        registrar = Datagrams()
        port = reactor.listenUDP(0, registrar, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        far = port.getHost().port
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.legs["tcp"].local.port), client)
        self.addCleanup(client.transport.loseConnection)
        here = client.transport.getHost().port
        contact = f"sip:bob@127.0.0.1:{free_port('tcp')};transport=tcp"
        request = register("tcp", here, contact).replace(
            b"REGISTER sip:example.test", f"REGISTER sip:127.0.0.1:{far}".encode()
        )
        client.transport.write(request.replace(b"Max-Forwards:", b"Supported: path\r\nMax-Forwards:"))
        await eventually(lambda: registrar.has(b"REGISTER "))
        forwarded = parse_message(registrar.received[0])
        (path,) = forwarded.get_headers("path")
        self.assertRegex(path, rf"^<sip:[A-Za-z0-9_.-]+@127\.0\.0\.1:{self.legs['udp'].local.port};lr>$")
        options = (
            f"OPTIONS {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{far};branch=z9hG4bK-back;rport\r\n"
            f"Route: {path}\r\nFrom: <sip:registrar@127.0.0.1>;tag=r\r\nTo: <{AOR}>\r\n"
            "Call-ID: back\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        registrar.transport.write(options.encode(), ("127.0.0.1", self.legs["udp"].local.port))
        await client.wait_for(f"OPTIONS {contact} SIP/2.0".encode())

    async def test_registered_path(self) -> None:
        """
        RFC 3327 at our registrar: a REGISTER that came through an edge
        proxy with a Path is answered with it, and calls to the user take
        it as their Route set: they go to the edge, the Request-URI the
        Contact.
        """
        edge = Datagrams()
        port = reactor.listenUDP(0, edge, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        here = port.getHost().port
        contact = f"sip:bob@127.0.0.1:{free_port('udp')}"
        path = f"<sip:127.0.0.1:{here};lr>"
        request = register("udp", here, contact, via="SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-phone")
        request = request.replace(
            b"Max-Forwards:", f"Path: {path}\r\nSupported: path\r\nMax-Forwards:".encode()
        )
        edge.transport.write(request, ("127.0.0.1", self.legs["udp"].local.port))
        await eventually(lambda: edge.has(b"SIP/2.0 200 "))
        self.assertIn(f"Path: {path}\r\n".encode(), edge.received[0])
        self.call()
        await eventually(lambda: edge.has(f"OPTIONS {contact} SIP/2.0".encode()))
        options = parse_message(edge.received[-1])
        self.assertEqual(options.get_headers("route"), [path])

    async def test_tcp_flow(self) -> None:
        """
        Over TCP the same; once the connection is gone, the proxy dials
        the Contact.
        """
        client, contact_port = await self.phone("tcp")
        self.call()
        await client.wait_for(f"OPTIONS sip:bob@127.0.0.1:{contact_port};transport=tcp SIP/2.0".encode())
        client.transport.loseConnection()
        await client.lost
        await eventually(lambda: not self.legs["tcp"].socketpool.connections())
        dialled: Deferred[RawClient] = Deferred()

        def accepted() -> RawClient:
            server = RawClient()
            dialled.callback(server)
            return server

        listening = await TCP4ServerEndpoint(reactor, contact_port, interface="127.0.0.1").listen(
            Factory.forProtocol(accepted)
        )
        self.addCleanup(listening.stopListening)
        self.call()
        server = await dialled
        await server.wait_for(f"OPTIONS sip:bob@127.0.0.1:{contact_port};transport=tcp SIP/2.0".encode())
        server.transport.loseConnection()

    async def test_nat_udp(self) -> None:
        """
        A phone behind NAT registers a Contact it cannot be reached at
        from another address: calls reach the source address, and
        keep-alives arrive there at the interval (1 s here).  (Behind a
        real NAT the Contact holds a private address; here it is a
        loopback port where nothing listens, so that even a proxy that
        ignored the source would send nothing off this machine.)
        """
        phone = Datagrams()
        port = reactor.listenUDP(0, phone, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        here = port.getHost().port
        private = f"sip:bob@127.0.0.1:{free_port('udp')}"
        phone.transport.write(register("udp", here, private), ("127.0.0.1", self.legs["udp"].local.port))
        await eventually(lambda: phone.has(b"SIP/2.0 200 "))
        self.assertEqual(await self.flows(), {"udp": 1})
        self.call()
        await eventually(lambda: phone.has(f"OPTIONS {private} SIP/2.0".encode()))
        await eventually(lambda: b"\r\n\r\n" in phone.received)


class FlowRelayTests(unittest.TestCase):
    """
    L{FlowRelay}: what another worker hands over goes out on the flow's
    connection, only with the workers' secret.
    """

    async def test_secret(self) -> None:
        leg = await listening_leg(self, "tcp")
        phone = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", leg.local.port), phone)
        self.addCleanup(phone.transport.loseConnection)
        await eventually(lambda: leg.socketpool.connections())
        here = phone.transport.getHost().port
        relay = FlowRelay(lambda: [leg], "s3cret", reactor)
        other = FlowRelay(lambda: [leg], "s3cret", reactor)
        intruder = FlowRelay(lambda: [leg], "guess", reactor)
        for each in (relay, other, intruder):
            each.listen()
            self.addCleanup(each.stop)
        flow = Flow("tcp", "127.0.0.1", here, relay.address)
        self.assertTrue(other.foreign(flow))
        self.assertFalse(relay.foreign(flow))
        intruder.send(flow, b"OPTIONS sip:forged SIP/2.0\r\n\r\n")
        other.send(flow, b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n\r\n")
        await phone.wait_for(b"OPTIONS sip:bob@127.0.0.1 SIP/2.0")
        await eventually(lambda: (relay.delivered, relay.dropped) == (1, 1))
        self.assertNotIn(b"forged", phone.data)


class StatefulPathTests(unittest.TestCase):
    """
    With C{--stateful}, each forked branch takes its own contact's Path
    as its Route set (RFC 3327 §5.4), or none.
    """

    async def test_fork(self) -> None:
        config = ProxyConfig(
            listen=[parse_listen("udp:127.0.0.1:0")],
            registrar=True,
            domains=["example.test"],
            transactions=TransactionTimers(),
        )
        service = make_service(config)
        service.startService()
        self.addCleanup(service.stopService)
        (leg,) = [child for child in service if isinstance(child, Leg)]
        proxy = ("127.0.0.1", leg.local.port)
        edge, phone, caller = Datagrams(), Datagrams(), Datagrams()
        ports = []
        for each in (edge, phone, caller):
            port = reactor.listenUDP(0, each, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        path = f"<sip:127.0.0.1:{ports[0]};lr>"
        behind = f"sip:bob@127.0.0.1:{free_port('udp')}"
        through_edge = register("udp", ports[0], behind, via="SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK-phone")
        edge.transport.write(
            through_edge.replace(b"Max-Forwards:", f"Path: {path}\r\nMax-Forwards:".encode()), proxy
        )
        direct = f"sip:bob@127.0.0.1:{ports[1]}"
        phone.transport.write(register("udp", ports[1], direct), proxy)
        await eventually(lambda: edge.has(b"SIP/2.0 200 ") and phone.has(b"SIP/2.0 200 "))
        caller.transport.write(options(AOR, 1, ports[2]), proxy)
        await eventually(lambda: edge.has(b"OPTIONS ") and phone.has(b"OPTIONS "))
        (via_edge,) = [parse_message(data) for data in edge.received if data.startswith(b"OPTIONS ")]
        (to_phone,) = [parse_message(data) for data in phone.received if data.startswith(b"OPTIONS ")]
        self.assertEqual((via_edge.uri, via_edge.get_headers("route")), (behind, [path]))
        self.assertEqual((to_phone.uri, to_phone.get_headers("route")), (direct, []))
