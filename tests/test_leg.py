"""
Tests for L{sipleg.leg.Leg}: construction, identity, branch, header
surgery (RFC 3261 §16), and deliver/receive over real loopback sockets.
"""

from __future__ import annotations

import socket
from errno import ECONNREFUSED, EMSGSIZE
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.leg import MAGIC_COOKIE, BadMessage, ForwardRefused, Leg
from sipleg.message import Message, Request, Response, parse_message
from sipleg.transport.tls import TLSConfig
from sipleg.uri import parse_via
from tests.certs import CertificateAuthority
from tests.collector import PacketCollector, options

INVITE = (
    b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKuac1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: call-1@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5080>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def invite(**replace: str | None) -> Request:
    """
    The test INVITE, with some headers replaced (None removes them).
    """
    packet = parse_message(INVITE)
    assert isinstance(packet, Request)
    for name, value in replace.items():
        name = name.replace("_", "-")
        if value is None:
            packet.remove_header(name)
        else:
            packet.set_header(name, value)
    return packet


def request(method: str, data: bytes = INVITE, **replace: str) -> Request:
    text = data.replace(b"INVITE", method.encode())
    packet = parse_message(text)
    assert isinstance(packet, Request)
    for name, value in replace.items():
        packet.set_header(name.replace("_", "-"), value)
    return packet


def tls_config() -> TLSConfig:
    """
    A TLS configuration whose certificate is valid for 127.0.0.1 and ::1,
    signed by a throwaway CA it also trusts.
    """
    ca = CertificateAuthority()
    leaf = ca.issue("localhost", ("localhost",), ("127.0.0.1", "::1"))
    return TLSConfig(leaf.cert, leaf.key, ca.cert)


def leg(**kw: Any) -> Leg:
    kw.setdefault("addr", "127.0.0.1")
    kw.setdefault("port", 25060)
    return Leg(**kw)


class ConstructionTests(unittest.TestCase):
    def test_defaults(self) -> None:
        a = Leg()
        self.assertEqual((a.proto, a.local), ("udp", Address("127.0.0.1", 5060)))
        self.assertEqual(a.contact, "sip:127.0.0.1")
        self.assertEqual(a.family, socket.AF_INET)

    def test_embedded_port(self) -> None:
        self.assertEqual(Leg(addr="127.0.0.1:5070").local.port, 5070)
        self.assertEqual(Leg(addr="[::1]:5070").local, Address("::1", 5070))
        self.assertEqual(Leg(addr="127.0.0.1:5070", port=5070).local.port, 5070)
        self.assertRaises(ValueError, Leg, addr="127.0.0.1:5070", port=5071)

    def test_tls_port_and_proto(self) -> None:
        a = Leg(tls=tls_config())
        self.assertEqual((a.proto, a.local.port), ("tls", 5061))
        self.assertEqual(a.contact, "sips:127.0.0.1")
        self.assertRaises(ValueError, Leg, proto="tls")

    def test_contacts(self) -> None:
        self.assertEqual(leg().contact, "sip:127.0.0.1:25060")
        self.assertEqual(leg(proto="tcp").contact, "sip:127.0.0.1:25060;transport=tcp")
        self.assertEqual(Leg(addr="::1", port=5060).contact, "sip:[::1]")
        self.assertEqual(leg(host="Proxy.Example").contact, "sip:proxy.example:25060")
        self.assertEqual(leg(contact="sip:me@h").contact, "sip:me@h")

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Leg, addr="example.com")
        self.assertRaises(ValueError, Leg, proto="sctp")
        self.assertRaises(ValueError, Leg, addr="127.0.0.1", family=socket.AF_INET6)
        self.assertRaises(TypeError, Leg, nonsense=1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        pool = leg().socketpool
        self.assertRaises(TypeError, Leg, sock=sock, socketpool=pool)

    def test_branch_matches_net_sip(self) -> None:
        # Net::SIP's branch prefix (docs/design.md, "Where we follow
        # Net::SIP"), verified against Net::SIP 0.835.
        self.assertEqual(leg().branch, "z9hG4bK3dab2f11e1661a60f94ae82bef2bd5ea")
        self.assertEqual(leg(branch="abc").branch, MAGIC_COOKIE + "abc")

    def test_ephemeral_branch_is_unique(self) -> None:
        self.assertNotEqual(Leg(port=0).branch, Leg(port=0).branch)

    def test_dst(self) -> None:
        self.assertEqual(leg(dst="127.0.0.1:5999").dst, Address("127.0.0.1", 5999))
        self.assertEqual(leg(dst="sip:127.0.0.1:5999").dst, Address("127.0.0.1", 5999))
        self.assertEqual(leg(proto="tcp", dst="[::1]").dst, Address("::1", 5060, "tcp"))
        self.assertRaises(ValueError, leg, dst="example.com:5060")


class AccessorTests(unittest.TestCase):
    def test_laddr(self) -> None:
        a = Leg(addr="::1", port=5060, host="h.example")
        self.assertEqual(a.laddr(0), "::1")
        self.assertEqual(a.laddr(1), "::1")
        self.assertEqual(a.laddr(2), "h.example")
        b = leg(host="h.example")
        self.assertEqual(b.laddr(1), "127.0.0.1:25060")
        self.assertEqual(b.laddr(2), "h.example:25060")
        self.assertEqual(Leg(addr="[::1]:5070").laddr(1), "[::1]:5070")
        self.assertRaises(ValueError, b.laddr, 3)

    def test_dump(self) -> None:
        self.assertEqual(Leg(port=5060).dump(), "Leg udp:127.0.0.1:5060")

    def test_match(self) -> None:
        a = leg(proto="tcp", host="h.example")
        self.assertTrue(a.match({}))
        self.assertTrue(a.match({"addr": "127.0.0.1", "port": 25060, "proto": "tcp"}))
        self.assertTrue(a.match({"addr": "h.example"}))
        self.assertFalse(a.match({"proto": "udp"}))
        self.assertFalse(a.match({"port": 5060}))
        self.assertFalse(a.match({"addr": "127.0.0.2"}))
        self.assertTrue(a.match({"sub": lambda x: x is a}))
        self.assertFalse(a.match({"sub": lambda x: False}))
        self.assertRaises(ValueError, a.match, {"colour": "red"})

    def test_can_deliver_to(self) -> None:
        # Cases verified against Net::SIP 0.835 for a UDP IPv4 leg.
        a = leg()
        self.assertFalse(a.can_deliver_to("sip:1.2.3.4;transport=tcp"))
        self.assertTrue(a.can_deliver_to("sip:1.2.3.4"))
        self.assertFalse(a.can_deliver_to("sips:[::1]:5061"))
        self.assertFalse(a.can_deliver_to("[::1]:5000"))
        self.assertTrue(a.can_deliver_to(Address("10.0.0.1", 5060)))
        self.assertFalse(a.can_deliver_to(Address("10.0.0.1", 5060, "tcp")))
        self.assertTrue(a.can_deliver_to(proto="udp", host="example.com"))
        self.assertFalse(a.can_deliver_to(proto="tls"))
        self.assertFalse(a.can_deliver_to("sip:bad uri"))


class BranchTests(unittest.TestCase):
    """
    RFC 3261 §16.11: the stateless branch.
    """

    def test_deterministic_and_prefixed(self) -> None:
        a = leg()
        first = a.via_branch(invite())
        self.assertEqual(first, a.via_branch(invite()))
        self.assertTrue(first.startswith(a.via_branch(invite(), 2)))
        self.assertTrue(first.startswith(a.branch))
        self.assertEqual(a.via_branch(invite(), 1), a.branch)
        self.assertRaises(ValueError, a.via_branch, invite(), 4)

    def test_cancel_and_error_ack_share_the_invite_branch(self) -> None:
        a = leg()
        branch = a.via_branch(invite())
        self.assertEqual(a.via_branch(request("CANCEL")), branch)
        # The ACK of a non-2xx carries the To tag of the response.
        ack = request("ACK", to="<sip:bob@127.0.0.1>;tag=b1")
        self.assertEqual(a.via_branch(ack), branch)

    def test_2xx_ack_and_other_requests_differ(self) -> None:
        a = leg()
        branch = a.via_branch(invite())
        ack = request("ACK", via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKuac2")
        self.assertNotEqual(a.via_branch(ack), branch)
        self.assertNotEqual(a.via_branch(invite(cseq="2 INVITE")), branch)
        self.assertNotEqual(a.via_branch(invite(**{"from": "<sip:eve@x>;tag=e"})), branch)

    def test_other_legs_differ(self) -> None:
        self.assertNotEqual(leg().via_branch(invite()), leg(port=25061).via_branch(invite()))

    def test_add_and_check_via(self) -> None:
        a = leg()
        packet = invite()
        a.add_via(packet)
        top = parse_via(packet.get_header("via") or "")
        self.assertEqual((top.transport, top.host, top.port), ("UDP", "127.0.0.1", 25060))
        self.assertEqual(top.branch, a.via_branch(invite()))
        self.assertEqual(len(packet.get_headers("via")), 2)
        self.assertTrue(a.check_via(packet))
        self.assertFalse(leg(port=25061).check_via(packet))
        self.assertFalse(a.check_via(invite()))


class ForwardIncomingTests(unittest.TestCase):
    """
    RFC 3261 §16.3-§16.4 on the leg a request arrives on.
    """

    def test_max_forwards(self) -> None:
        a = leg()
        for incoming, outgoing in (("70", "69"), ("200", "69"), ("1", "0"), (None, "69")):
            packet = invite(max_forwards=incoming)
            self.assertIsNone(a.forward_incoming(packet))
            self.assertEqual(packet.get_header("max-forwards"), outgoing)

    def test_max_forwards_zero_is_483(self) -> None:
        # Better than Net::SIP, which treats 0 as 70 (design item 9).
        self.assertEqual(
            leg().forward_incoming(invite(max_forwards="0")), ForwardRefused(483, "Too Many Hops")
        )
        ack = request("ACK", max_forwards="0")
        self.assertEqual(leg().forward_incoming(ack), ForwardRefused(None, "Too Many Hops"))

    def test_record_route(self) -> None:
        packet = invite()
        leg().forward_incoming(packet)
        self.assertEqual(packet.get_headers("record-route"), ["<sip:127.0.0.1:25060;lr>"])
        packet = invite()
        leg(proto="tcp").forward_incoming(packet)
        self.assertEqual(packet.get_headers("record-route"), ["<sip:127.0.0.1:25060;transport=tcp;lr>"])

    def test_no_record_route_on_register(self) -> None:
        packet = request("REGISTER")
        leg().forward_incoming(packet)
        self.assertEqual(packet.get_headers("record-route"), [])

    def test_own_route_removed(self) -> None:
        packet = invite(route="<sip:127.0.0.1:25060;lr>, <sip:10.0.0.9;lr>")
        leg().forward_incoming(packet)
        self.assertEqual(packet.get_headers("route"), ["<sip:10.0.0.9;lr>"])
        self.assertEqual(packet.uri, "sip:bob@127.0.0.1:5070")

    def test_own_route_case_and_default_port(self) -> None:
        packet = invite(route="<sip:PROXY.example;lr>")
        Leg(addr="127.0.0.1", port=5060, host="proxy.example").forward_incoming(packet)
        self.assertEqual(packet.get_headers("route"), [])

    def test_foreign_route_kept(self) -> None:
        packet = invite(route="<sip:10.0.0.9;lr>")
        leg().forward_incoming(packet)
        self.assertEqual(packet.get_headers("route"), ["<sip:10.0.0.9;lr>"])

    def test_strict_router_restored(self) -> None:
        # RFC 3261 §16.4: a strict router put our Record-Route URI in the
        # Request-URI and the real target at the end of the Route set.
        packet = invite(route="<sip:10.0.0.9;lr>, <sip:bob@10.0.0.7:5070;transport=tcp>")
        packet.uri = "sip:127.0.0.1:25060;lr"
        leg().forward_incoming(packet)
        self.assertEqual(packet.uri, "sip:bob@10.0.0.7:5070;transport=tcp")
        self.assertEqual(packet.get_headers("route"), ["<sip:10.0.0.9;lr>"])

    def test_request_uri_is_us_without_route(self) -> None:
        packet = invite()
        packet.uri = "sip:127.0.0.1:25060"
        leg().forward_incoming(packet)
        self.assertEqual(packet.uri, "sip:127.0.0.1:25060")

    def test_response_own_via_stripped(self) -> None:
        a = leg()
        packet = invite()
        a.add_via(packet)
        response = Response(
            200,
            "OK",
            [("Via", v) for v in packet.get_headers("via")]
            + [
                ("From", "<sip:alice@127.0.0.1>;tag=a1"),
                ("To", "<sip:bob@127.0.0.1>;tag=b1"),
                ("Call-ID", "call-1@127.0.0.1"),
                ("CSeq", "1 INVITE"),
            ],
        )
        self.assertIsNone(a.forward_incoming(response))
        self.assertEqual(response.get_headers("via"), ["SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKuac1"])

    def test_response_foreign_via_refused(self) -> None:
        # Better than Net::SIP, which strips any top Via (design item 3).
        response = Response(
            200,
            "OK",
            [
                ("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKother"),
                ("Via", "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKuac"),
                ("From", "<sip:a@b>;tag=1"),
                ("To", "<sip:a@b>"),
                ("Call-ID", "x"),
                ("CSeq", "1 INVITE"),
            ],
        )
        refused = leg().forward_incoming(response)
        self.assertIsInstance(refused, ForwardRefused)
        assert refused is not None
        self.assertIsNone(refused.code)
        self.assertEqual(len(response.get_headers("via")), 2)


class ForwardOutgoingTests(unittest.TestCase):
    def test_same_leg_single_record_route(self) -> None:
        a = leg()
        packet = invite()
        a.forward_incoming(packet)
        self.assertIsNone(a.forward_outgoing(packet, a))
        self.assertEqual(packet.get_headers("record-route"), ["<sip:127.0.0.1:25060;lr>"])

    def test_transport_change_double_record_route(self) -> None:
        # Design item 1: UDP and TCP on the same address and port still get
        # two Record-Routes, each naming its transport.
        udp, tcp = leg(), leg(proto="tcp")
        packet = invite()
        udp.forward_incoming(packet)
        tcp.forward_outgoing(packet, udp)
        self.assertEqual(
            packet.get_headers("record-route"),
            ["<sip:127.0.0.1:25060;transport=tcp;lr>", "<sip:127.0.0.1:25060;lr>"],
        )

    def test_family_change_double_record_route(self) -> None:
        v4, v6 = leg(), Leg(addr="::1", port=25060)
        packet = invite()
        v4.forward_incoming(packet)
        v6.forward_outgoing(packet, v4)
        self.assertEqual(
            packet.get_headers("record-route"), ["<sip:[::1]:25060;lr>", "<sip:127.0.0.1:25060;lr>"]
        )

    def test_register_no_record_route(self) -> None:
        udp, tcp = leg(), leg(proto="tcp")
        packet = request("REGISTER")
        udp.forward_incoming(packet)
        tcp.forward_outgoing(packet, udp)
        self.assertEqual(packet.get_headers("record-route"), [])

    def test_outgoing_leg_route_removed(self) -> None:
        # A double Record-Route comes back as two Routes naming us.
        udp, tcp = leg(), leg(proto="tcp")
        packet = invite(route="<sip:127.0.0.1:25060;transport=tcp;lr>, <sip:127.0.0.1:25060;lr>")
        tcp.forward_incoming(packet)
        udp.forward_outgoing(packet, tcp)
        self.assertEqual(packet.get_headers("route"), [])

    def test_responses_untouched(self) -> None:
        response = Response(180, "Ringing", [("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")])
        before = bytes(response)
        self.assertIsNone(leg().forward_outgoing(response, leg()))
        self.assertEqual(bytes(response), before)

    def test_loop_detected(self) -> None:
        # RFC 3261 §16.3 item 4: the request comes back unchanged.
        a = leg()
        packet = invite()
        a.forward_incoming(packet)
        self.assertIsNone(a.forward_outgoing(packet, a))
        a.add_via(packet)
        again = parse_message(bytes(packet))
        assert isinstance(again, Request)
        a.forward_incoming(again)
        self.assertEqual(a.forward_outgoing(again, a), ForwardRefused(482, "Loop Detected"))

    def test_spiral_is_not_a_loop(self) -> None:
        a = leg()
        packet = invite()
        a.forward_incoming(packet)
        a.add_via(packet)
        again = parse_message(bytes(packet))
        assert isinstance(again, Request)
        again.uri = "sip:bob@10.0.0.7"  # retargeted downstream: a spiral
        a.forward_incoming(again)
        self.assertIsNone(a.forward_outgoing(again, a))


class SocketTests(unittest.TestCase):
    """
    deliver / receive over real loopback sockets.
    """

    @inlineCallbacks
    def started(self, **kw: Any) -> Any:
        collector = PacketCollector()
        kw.setdefault("port", 0)
        a = Leg(receiver=collector, **kw)
        yield a.listen()
        self.addCleanup(a.stop)
        return a, collector

    @inlineCallbacks
    def exchange(self, proto: str, addr: str) -> Any:
        a, _ = yield self.started(addr=addr, proto=proto)
        b, got = yield self.started(addr=addr, proto=proto)
        self.assertNotEqual(b.local.port, 0)
        request_ = options(f"sip:{b.local.hostport}")
        yield a.deliver(request_, b.local)
        yield got.wait()
        packet, source, where = got.packets[0]
        self.assertIs(where, b)
        assert isinstance(packet, Request)
        self.assertEqual(packet.method, "OPTIONS")
        vias = [parse_via(v) for v in packet.get_headers("via")]
        self.assertEqual(
            (vias[0].host, vias[0].port, vias[0].transport), (a.local.host, a.local.port, proto.upper())
        )
        self.assertTrue(a.owns_branch(vias[0].branch))
        self.assertEqual(source.proto, proto)
        # The caller's object is untouched (a retransmission gets the same Via).
        self.assertEqual(request_.get_headers("via"), [])
        return a, b, packet, source

    @inlineCallbacks
    def test_udp_ipv4(self) -> None:
        a, b, packet, source = yield self.exchange("udp", "127.0.0.1")
        self.assertEqual(source.port, a.local.port)  # sent from the listening port

    @inlineCallbacks
    def test_udp_ipv6(self) -> None:
        yield self.exchange("udp", "::1")

    @inlineCallbacks
    def test_tcp_ipv4(self) -> None:
        yield self.exchange("tcp", "127.0.0.1")

    @inlineCallbacks
    def test_tcp_ipv6(self) -> None:
        yield self.exchange("tcp", "::1")

    @inlineCallbacks
    def test_tls_ipv4(self) -> None:
        tls = tls_config()
        a, _ = yield self.started(proto="tls", tls=tls)
        b, got = yield self.started(proto="tls", tls=tls)
        yield a.deliver(options(f"sips:{b.local.hostport}"), b.local)
        yield got.wait()
        self.assertEqual(got.packets[0][1].proto, "tls")

    @inlineCallbacks
    def test_tls_name_mismatch(self) -> None:
        ca = CertificateAuthority()
        wrong = ca.issue("elsewhere", ("elsewhere.test",))
        server = TLSConfig(wrong.cert, wrong.key, ca.cert)
        client = TLSConfig(wrong.cert, wrong.key, ca.cert)
        a, _ = yield self.started(proto="tls", tls=client)
        b, got = yield self.started(proto="tls", tls=server)
        error = yield self.assertFailure(a.deliver(options("sips:x@127.0.0.1"), b.local), DeliveryError)
        self.assertIsNone(error.errno)
        self.assertTrue(error.reason.startswith("TLS"), error.reason)
        self.assertEqual(got.packets, [])

    @inlineCallbacks
    def test_tcp_response_on_same_connection(self) -> None:
        a, b, packet, source = yield self.exchange("tcp", "127.0.0.1")
        collector = PacketCollector()
        a.receiver = collector
        response = Response(
            200,
            "OK",
            [("Via", v) for v in packet.get_headers("via")]
            + [
                ("From", packet.get_header("from") or ""),
                ("To", (packet.get_header("to") or "") + ";tag=x"),
                ("Call-ID", packet.get_header("call-id") or ""),
                ("CSeq", packet.get_header("cseq") or ""),
            ],
        )
        # Sent to the source address: the ephemeral port of a's connection.
        yield b.deliver(response, source)
        yield collector.wait()
        got, _, where = collector.packets[0]
        self.assertIs(where, a)
        assert isinstance(got, Response)
        self.assertTrue(a.check_via(got))
        self.assertEqual(len(b.socketpool.connections()), 1)

    @inlineCallbacks
    def test_udp_leg_and_tcp_leg_need_matching_destinations(self) -> None:
        a, _ = yield self.started(proto="udp")
        error = yield self.assertFailure(
            a.deliver(options("sip:x@127.0.0.1"), Address("127.0.0.1", 9, "tcp")), DeliveryError
        )
        self.assertIn("does not match", error.reason)

    @inlineCallbacks
    def test_tcp_connection_refused(self) -> None:
        a, _ = yield self.started(proto="tcp")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        error = yield self.assertFailure(
            a.deliver(options("sip:x@127.0.0.1"), Address("127.0.0.1", port, "tcp")), DeliveryError
        )
        self.assertEqual(error.errno, ECONNREFUSED)

    @inlineCallbacks
    def test_udp_oversized(self) -> None:
        a, _ = yield self.started(proto="udp")
        big = options("sip:x@127.0.0.1")
        big.body = b"x" * 70000
        error = yield self.assertFailure(a.deliver(big, Address("127.0.0.1", 9)), DeliveryError)
        self.assertEqual(error.errno, EMSGSIZE)

    @inlineCallbacks
    def test_bad_datagram_surfaces_as_bad_message(self) -> None:
        b, got = yield self.started(proto="udp")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.sendto(b"INVITE sip:x@y SIP/7.0\r\nVia: nonsense\r\n\r\n", b.local.sockaddr)
        yield got.wait()
        bad = got.packets[0][0]
        self.assertIsInstance(bad, BadMessage)
        assert isinstance(bad, BadMessage)
        self.assertEqual(bad.error.status, 505)

    @inlineCallbacks
    def test_receive_hook_blocks(self) -> None:
        class Blocking(Leg):
            def receive(self, packet: Message, from_addr: Address) -> None:
                return None

        collector = PacketCollector()
        b = Blocking(port=0, receiver=collector)
        yield b.listen()
        self.addCleanup(b.stop)
        a, _ = yield self.started()
        yield a.deliver(options("sip:x@127.0.0.1"), b.local)
        # A second, unblocked leg proves the datagram had time to arrive.
        c, got_c = yield self.started()
        yield a.deliver(options("sip:x@127.0.0.1"), c.local)
        yield got_c.wait()
        self.assertEqual(collector.packets, [])

    @inlineCallbacks
    def test_service(self) -> None:
        collector = PacketCollector()
        b = Leg(port=0, receiver=collector)
        b.startService()
        self.assertTrue(b.running)
        a, _ = yield self.started()
        # startService listens; the real port is known once bound.
        yield a.deliver(options("sip:x@127.0.0.1"), b.socketpool.local)
        yield collector.wait()
        yield b.stopService()
        self.assertFalse(b.running)


class StrictRouteThenOwnRouteTests(unittest.TestCase):
    def test_own_route_after_strict_restore_removed(self) -> None:
        # RFC 3261 §16.4: after restoring the Request-URI the proxy goes on
        # "as if it received this modified request", so our own Route on
        # top goes too (Net::SIP keeps it).
        packet = invite(route="<sip:127.0.0.1:25060;lr>, <sip:10.0.0.9;lr>, <sip:bob@10.0.0.7>")
        packet.uri = "sip:127.0.0.1:25060"
        leg().forward_incoming(packet)
        self.assertEqual(packet.uri, "sip:bob@10.0.0.7")
        self.assertEqual(packet.get_headers("route"), ["<sip:10.0.0.9;lr>"])


class SharedPoolTests(unittest.TestCase):
    @inlineCallbacks
    def test_leg_on_a_shared_pool(self) -> Any:
        first = Leg(port=0)
        yield first.listen()
        self.addCleanup(first.stop)
        got = PacketCollector()
        second = Leg(socketpool=first.socketpool, receiver=got, host="shared.example")
        self.assertEqual(second.local, first.local)
        self.assertEqual(second.contact, f"sip:shared.example:{first.local.port}")
        sender = Leg(port=0)
        yield sender.listen()
        self.addCleanup(sender.stop)
        yield sender.deliver(options("sip:x@127.0.0.1"), first.local)
        yield got.wait()
        self.assertIs(got.packets[0][2], second)


class AliasTests(unittest.TestCase):
    """
    RFC 5923: a Via with ;alias lets us send requests for its sent-by over
    the connection the request came on.
    """

    @inlineCallbacks
    def aliased_send(self, sent_by_host: str) -> Any:
        from sipleg.transport.stream import StreamSocketPool

        got = PacketCollector()
        leg = Leg(port=0, proto="tcp", receiver=got)
        yield leg.listen()
        self.addCleanup(leg.stop)
        client_got: list[bytes] = []
        client = StreamSocketPool(Address("127.0.0.1", 0, "tcp"), lambda data, *rest: client_got.append(data))
        yield client.listen()
        self.addCleanup(client.stop)
        # A port nothing listens on: only the alias can reach the client.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        request = options(f"sip:x@{leg.local.hostport};transport=tcp")
        request.insert_header("via", f"SIP/2.0/TCP {sent_by_host}:{port};branch=z9hG4bKalias;alias")
        yield client.send(bytes(request), leg.local)
        yield got.wait()
        return leg, Address(sent_by_host, port, "tcp"), client_got

    @inlineCallbacks
    def test_alias_carries_requests_to_the_sent_by(self) -> Any:
        leg, target, client_got = yield self.aliased_send("127.0.0.1")
        yield leg.deliver(options(f"sip:client@{target.hostport};transport=tcp"), target)
        for _ in range(50):
            if client_got:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(len(client_got), 1)
        self.assertTrue(client_got[0].startswith(b"OPTIONS sip:client@"))

    @inlineCallbacks
    def test_no_alias_for_another_address(self) -> Any:
        leg, target, _ = yield self.aliased_send("127.0.0.2")
        error = yield self.assertFailure(
            leg.deliver(options(f"sip:client@{target.hostport};transport=tcp"), target), DeliveryError
        )
        self.assertEqual(error.errno, ECONNREFUSED)
