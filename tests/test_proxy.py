"""
Tests for L{sipleg.proxy.StatelessProxy} and L{sipleg.dispatcher.Dispatcher}
over real loopback sockets: user agents are plain legs.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.leg import Leg
from sipleg.message import Message, Request, Response, make_response
from sipleg.proxy import StatelessProxy
from sipleg.routing import NetworkAccessPolicy, StaticRoutes, response_target
from sipleg.uri import parse_uri, parse_via
from tests.collector import PacketCollector, options
from tests.interop.peers import free_port
from tests.support import listening_leg, proxy_log_lines


@inlineCallbacks
def answer_to_via(uas: Leg, request: Request, code: int) -> Any:
    """
    C{uas} answers C{request} with C{code}, to its top Via (RFC 3261
    §18.2.2); fires with the response.
    """
    response = make_response(request, code)
    target = response_target(parse_via(request.get_header("via") or ""))
    assert target is not None
    yield uas.deliver(response, target)
    return response


class ProxyTestCase(unittest.TestCase):
    """
    A proxy with a UDP and a TCP leg on 127.0.0.1, a UAC on UDP, and UASs
    on UDP and TCP.
    """

    access: Any = None
    routes: Any = None

    @inlineCallbacks
    def setUp(self) -> Any:
        self.udp = yield self.leg("udp")
        self.tcp = yield self.leg("tcp")
        self.dispatcher = Dispatcher([self.udp, self.tcp])
        self.proxy = StatelessProxy(self.dispatcher, access=self.access, routes=self.routes)
        self.uac_got = PacketCollector()
        self.uac = yield self.leg("udp", self.uac_got)
        self.uas_got = PacketCollector()
        self.uas = yield self.leg("udp", self.uas_got)
        self.uas_tcp_got = PacketCollector()
        self.uas_tcp = yield self.leg("tcp", self.uas_tcp_got)

    def leg(self, proto: str, receiver: Any = None) -> Any:
        return listening_leg(self, proto, receiver)

    def send(self, request: Request, via: Leg | None = None) -> Any:
        """
        The UAC sends C{request} to the proxy's UDP leg.
        """
        return (via or self.uac).deliver(request, (self.udp if via is None else self.tcp).local)

    @inlineCallbacks
    def answer(self, uas: Leg, got: PacketCollector, code: int, index: int = 0) -> Any:
        """
        The UAS answers the C{index}th request it got, to its top Via.
        """
        request = got.messages()[index]
        assert isinstance(request, Request)
        return (yield answer_to_via(uas, request, code))

    @inlineCallbacks
    def refused_raw(self, via: str, call_id: str, cseq: str) -> Any:
        """
        Raw bytes from the UAC's socket, with the given top Via and CSeq,
        must be answered 400 (to the UAC) and go no further.
        """
        raw = (
            f"OPTIONS sip:bob@{self.uas.local.hostport} SIP/2.0\r\n"
            f"Via: {via}\r\n"
            f"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        yield self.uac.socketpool.send(raw, self.udp.local)
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(response.code, 400)
        self.assertEqual(response.get_header("call-id"), call_id)
        self.assertEqual(self.uas_got.packets, [])
        return response

    def only(self, got: PacketCollector) -> Message:
        messages = got.messages()
        self.assertEqual(len(messages), 1, messages)
        return messages[0]


class ForwardingTests(ProxyTestCase):
    @inlineCallbacks
    def test_udp_request_and_response(self) -> Any:
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()
        request = self.only(self.uas_got)
        assert isinstance(request, Request)
        vias = [parse_via(v) for v in request.get_headers("via")]
        self.assertEqual(len(vias), 2)
        self.assertTrue(self.udp.owns_branch(vias[0].branch))
        self.assertTrue(self.uac.owns_branch(vias[1].branch))
        # received/rport are only added when the source differs: here the
        # UAC sends from the address its Via names.
        self.assertIsNone(vias[1].received)
        self.assertEqual(request.get_header("max-forwards"), "69")
        self.assertEqual(request.get_headers("record-route"), [self.udp.record_route])
        # Design item 8: no UA headers added to proxied packets.
        self.assertEqual(request.get_headers("allow"), [])
        yield self.answer(self.uas, self.uas_got, 200)
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(response.code, 200)
        self.assertEqual(len(response.get_headers("via")), 1)
        self.assertTrue(self.uac.check_via(response))
        stats = self.proxy.stats
        self.assertEqual((stats.requests["OPTIONS"], stats.forwarded["OPTIONS"]), (1, 1))
        self.assertEqual(stats.responses["2xx"], 1)

    @inlineCallbacks
    def test_udp_in_tcp_out(self) -> Any:
        target = f"sip:bob@{self.uas_tcp.local.hostport};transport=tcp"
        yield self.send(options(target))
        yield self.uas_tcp_got.wait()
        request, source, _ = self.uas_tcp_got.packets[0]
        assert isinstance(request, Request)
        self.assertEqual(source.proto, "tcp")
        vias = [parse_via(v) for v in request.get_headers("via")]
        self.assertEqual([v.transport for v in vias], ["TCP", "UDP", "UDP"])
        self.assertTrue(self.tcp.owns_branch(vias[0].branch))
        self.assertTrue(self.udp.owns_branch(vias[1].branch))
        # Design item 1: double Record-Route naming each transport.
        self.assertEqual(request.get_headers("record-route"), [self.tcp.record_route, self.udp.record_route])
        yield self.answer(self.uas_tcp, self.uas_tcp_got, 180)
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(response.code, 180)
        self.assertEqual(len(response.get_headers("via")), 1)

    @inlineCallbacks
    def test_loose_route_to_next_hop(self) -> Any:
        # The Route set (with our own entry first) decides the next hop;
        # the Request-URI is left alone.
        routes = f"{self.udp.record_route}, <sip:{self.uas.local.hostport};lr>"
        yield self.send(options("sip:bob@192.0.2.99", route=routes))
        yield self.uas_got.wait()
        request = self.only(self.uas_got)
        assert isinstance(request, Request)
        self.assertEqual(request.uri, "sip:bob@192.0.2.99")
        self.assertEqual(request.get_headers("route"), [f"<sip:{self.uas.local.hostport};lr>"])

    @inlineCallbacks
    def test_in_dialog_request_with_both_our_routes(self) -> Any:
        # After a call crossed from UDP to TCP, the UAC's route set holds
        # both our Record-Routes: the request must leave by the TCP leg, not
        # come back to the proxy.
        target = f"sip:bob@{self.uas_tcp.local.hostport};transport=tcp"
        routes = f"{self.udp.record_route}, {self.tcp.record_route}"
        yield self.send(options(target, route=routes))
        yield self.uas_tcp_got.wait()
        request = self.only(self.uas_tcp_got)
        assert isinstance(request, Request)
        self.assertEqual(request.get_headers("route"), [])
        self.assertEqual(self.uac_got.packets, [])

    @inlineCallbacks
    def test_strict_router_next_hop(self) -> Any:
        # RFC 3261 §16.6 item 6: a next hop without lr gets the Request-URI
        # moved to the end of the Route set.
        yield self.send(options("sip:bob@192.0.2.99", route=f"<sip:{self.uas.local.hostport}>"))
        yield self.uas_got.wait()
        request = self.only(self.uas_got)
        assert isinstance(request, Request)
        self.assertEqual(request.uri, f"sip:{self.uas.local.hostport}")
        self.assertEqual(request.get_headers("route"), ["<sip:bob@192.0.2.99>"])

    @inlineCallbacks
    def test_foreign_response_dropped(self) -> Any:
        response = Response(
            200,
            "OK",
            [
                ("Via", f"SIP/2.0/UDP {self.uac.local.hostport};branch=z9hG4bKnotours"),
                ("From", "<sip:a@b>;tag=1"),
                ("To", "<sip:a@b>;tag=2"),
                ("Call-ID", "foreign@x"),
                ("CSeq", "1 OPTIONS"),
            ],
        )
        yield self.uas.deliver(response, self.udp.local)
        # The next packet through the proxy overtakes nothing: if the foreign
        # response had been forwarded the UAC would have it first.
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()
        yield self.answer(self.uas, self.uas_got, 200)
        yield self.uac_got.wait()
        self.assertEqual([m.get_header("call-id") for m in self.uac_got.messages()], ["opt-1@127.0.0.1"])


class StaticRouteTests(ProxyTestCase):
    def setUp(self) -> Any:
        self.routes = StaticRoutes({"example.test": parse_uri("sip:127.0.0.1:1")})
        return super().setUp()

    @inlineCallbacks
    def test_domain_route(self) -> Any:
        # Pointed at the UAS once its port is known.
        assert isinstance(self.proxy.routes, StaticRoutes)
        self.proxy.routes.routes["example.test"] = parse_uri(f"sip:{self.uas.local.hostport}")
        yield self.send(options("sip:bob@example.test"))
        yield self.uas_got.wait()
        request = self.only(self.uas_got)
        assert isinstance(request, Request)
        self.assertEqual(request.uri, "sip:bob@example.test")


class RefusalTests(ProxyTestCase):
    """
    RFC 3261 §16.3 validation, answered statelessly; never for ACK.
    """

    @inlineCallbacks
    def refused(self, request: Request, code: int) -> Any:
        yield self.send(request)
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(response.code, code)
        self.assertTrue(self.uac.check_via(response))
        self.assertEqual(self.uas_got.packets, [])
        self.assertEqual(self.proxy.stats.answered[code], 1)
        return response

    def test_max_forwards_zero(self) -> Any:
        return self.refused(options(f"sip:bob@{self.uas.local.hostport}", max_forwards="0"), 483)

    @inlineCallbacks
    def test_proxy_require(self) -> Any:
        request = options(f"sip:bob@{self.uas.local.hostport}", proxy_require="foo")
        response = yield self.refused(request, 420)
        self.assertEqual(response.get_headers("unsupported"), ["foo"])

    def test_unsupported_scheme(self) -> Any:
        return self.refused(options("tel:+15551234"), 416)

    def test_unreachable_next_hop(self) -> Any:
        target = f"sip:bob@127.0.0.1:{free_port('tcp')};transport=tcp"
        return self.refused(options(target), 503)

    @inlineCallbacks
    def test_udp_next_hop_port_closed(self) -> Any:
        """
        A request forwarded over UDP to a port where nothing listens: the
        kernel's ICMP error is logged, naming the destination (Linux); the
        caller is not answered (its retransmissions time out) and the
        proxy's leg goes on working.
        """
        if sys.platform != "linux":
            raise unittest.SkipTest("IP_RECVERR is Linux's")
        lines = proxy_log_lines(self, "sipleg.transport.udp")
        port = free_port("udp")
        yield self.send(options(f"sip:bob@127.0.0.1:{port}"))
        for _ in range(100):
            if lines:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"UDP datagram to 127.0.0.1:{port} not delivered: Connection refused", lines[0])
        self.assertEqual(self.uac_got.messages(), [])
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()

    def test_udp_next_hop_refused_when_sent(self) -> Any:
        # The kernel refuses the held-back datagram when the pool sends it
        # at the end of the reactor turn (EACCES: broadcast): still 503.
        return self.refused(options("sip:bob@255.255.255.255:5060"), 503)

    def test_loop(self) -> Any:
        # The Request-URI names a user at the proxy's own address (no
        # registrar): the second pass sees its own Via with the same loop
        # hash.
        return self.refused(options(f"sip:bob@{self.udp.local.hostport}"), 482)

    @inlineCallbacks
    def test_options_to_the_proxy_itself(self) -> Any:
        """
        A keep-alive OPTIONS addressed to the proxy (no user part, no
        Route) is answered 200 with Allow and Accept; another method 405.
        """
        yield self.send(options(f"sip:{self.udp.local.hostport}"))
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(
            (response.code, response.get_header("allow"), response.get_header("accept")),
            (200, "OPTIONS", "application/sdp"),
        )
        self.uac_got.packets.clear()
        info = options(f"sip:{self.udp.local.hostport}", cseq="2 INFO")
        info.method = "INFO"
        yield self.refused(info, 405)

    @inlineCallbacks
    def test_ack_is_never_answered(self) -> Any:
        ack = options(f"sip:bob@{self.uas.local.hostport}", max_forwards="0", cseq="1 ACK")
        ack.method = "ACK"
        yield self.send(ack)
        # An OPTIONS behind it gets through; the ACK got no answer.
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}", call_id="second"))
        yield self.uas_got.wait()
        self.assertEqual(self.uac_got.packets, [])
        self.assertEqual([m.get_header("call-id") for m in self.uas_got.messages()], ["second"])

    @inlineCallbacks
    def test_bad_request_gets_400(self) -> Any:
        # The CSeq method is not the request's: unparsable, answered from
        # the raw lines to the Via.
        via = f"SIP/2.0/UDP {self.uac.local.hostport};branch=z9hG4bKraw"
        response = yield self.refused_raw(via, "raw@x", "1 INVITE")
        self.assertIn("tag=", response.get_header("to") or "")


class AccessTests(ProxyTestCase):
    """
    Never an open relay: outside the allowed networks, only our domains.
    """

    def setUp(self) -> Any:
        self.access = NetworkAccessPolicy(["127.0.0.2/32"], domains=["example.test"])
        self.routes = StaticRoutes({"example.test": parse_uri("sip:127.0.0.1:1")})
        return super().setUp()

    @inlineCallbacks
    def test_foreign_target_forbidden(self) -> Any:
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uac_got.wait()
        response = self.only(self.uac_got)
        assert isinstance(response, Response)
        self.assertEqual(response.code, 403)

    @inlineCallbacks
    def test_refusal_logged(self) -> Any:
        """
        A request refused 403 is logged with its source, once however
        often that source is refused.
        """
        lines = proxy_log_lines(self, "sipleg.refusals")
        for n in range(3):
            yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
            yield self.uac_got.wait(n + 1)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"refused OPTIONS sip:bob@{self.uas.local.hostport} from 127.0.0.1:", lines[0])
        self.assertIn("403 Forbidden", lines[0])

    @inlineCallbacks
    def test_our_domain_allowed(self) -> Any:
        assert isinstance(self.proxy.routes, StaticRoutes)
        self.proxy.routes.routes["example.test"] = parse_uri(f"sip:{self.uas.local.hostport}")
        yield self.send(options("sip:bob@example.test"))
        yield self.uas_got.wait()
        self.assertEqual(len(self.uas_got.messages()), 1)


class DispatcherTests(unittest.TestCase):
    @inlineCallbacks
    def test_received_and_rport_stamped(self) -> Any:
        got = PacketCollector()
        leg = Leg(port=0)
        yield leg.listen()
        self.addCleanup(leg.stop)

        class Receiver:
            def receive(self, packet: Any, leg: Leg, source: Address) -> None:
                got(packet, source, leg)

        Dispatcher([leg], receiver=Receiver())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        request = options("sip:x@127.0.0.1")
        request.insert_header("via", "SIP/2.0/UDP 10.9.9.9:5060;rport;branch=z9hG4bKA")
        sock.sendto(bytes(request), leg.local.sockaddr)
        yield got.wait()
        via = parse_via(got.messages()[0].get_header("via") or "")
        self.assertEqual(via.received, "127.0.0.1")
        self.assertEqual(via.rport, str(sock.getsockname()[1]))

    def test_get_legs(self) -> None:
        a, b = Leg(port=5070), Leg(port=5070, proto="tcp")
        dispatcher = Dispatcher([a, b])
        self.assertEqual(dispatcher.get_legs(), [a, b])
        self.assertEqual(dispatcher.get_legs(proto="tcp"), [b])
        dispatcher.remove_leg(a)
        self.assertEqual(dispatcher.get_legs(), [b])
        self.assertIsNone(a.receiver)

    @inlineCallbacks
    def test_failover_to_next_target(self) -> Any:
        got = PacketCollector()
        uas = Leg(port=0, proto="tcp", receiver=got)
        yield uas.listen()
        self.addCleanup(uas.stop)
        out = Leg(port=0, proto="tcp")
        yield out.listen()
        self.addCleanup(out.stop)
        dispatcher = Dispatcher([out])
        dead = Address("127.0.0.1", free_port("tcp"), "tcp")
        used = yield dispatcher.deliver(options("sip:x@127.0.0.1"), dst=[dead, uas.local])
        self.assertEqual(used, (out, uas.local))
        yield got.wait()

    @inlineCallbacks
    def udp_pair(self) -> Any:
        """
        A UAS leg (and what it gets), a dispatcher with one UDP leg, and an
        address the kernel refuses to send to (EACCES: broadcast).
        """
        got = PacketCollector()
        uas = Leg(port=0, receiver=got)
        yield uas.listen()
        self.addCleanup(uas.stop)
        out = Leg(port=0)
        yield out.listen()
        self.addCleanup(out.stop)
        return got, uas, out, Dispatcher([out]), Address("255.255.255.255", uas.local.port)

    @inlineCallbacks
    def test_udp_failover_after_coalesced_send(self) -> Any:
        """
        A UDP send that fails when the held-back datagrams are flushed
        (EACCES: broadcast) still moves on to the next target.
        """
        got, uas, out, dispatcher, refused = yield self.udp_pair()
        used = yield dispatcher.deliver(options("sip:x@127.0.0.1"), dst=[refused, uas.local])
        self.assertEqual(used, (out, uas.local))
        yield got.wait()

    @inlineCallbacks
    def test_send_in_order_with_failure_callback(self) -> Any:
        """
        With a failure callback a held-back datagram counts as taken at
        once; if the kernel refuses it, the loop goes on with the next pair
        by itself, and the callback hears only when no pair is left.
        """
        got, uas, out, dispatcher, refused = yield self.udp_pair()
        errors: list[Any] = []
        data = bytes(options("sip:x@127.0.0.1"))

        def build(leg: Leg) -> tuple[bytes, None]:
            return data, None

        taken = dispatcher.send_in_order([(out, refused), (out, uas.local)], build, failed=errors.append)
        self.assertEqual(taken, (out, refused))
        yield got.wait()
        self.assertEqual(errors, [])
        taken = dispatcher.send_in_order([(out, refused)], build, failed=errors.append)
        self.assertEqual(taken, (out, refused))
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual([error.errno for error in errors], [errno.EACCES])

    @inlineCallbacks
    def test_no_leg_for_transport(self) -> Any:
        from sipleg.errors import DeliveryError

        dispatcher = Dispatcher([Leg(port=5070)])
        error = yield self.assertFailure(
            dispatcher.deliver(options("sip:x@127.0.0.1"), dst=Address("127.0.0.1", 5, "tcp")),
            DeliveryError,
        )
        self.assertIn("no leg", error.reason)


class RegistrarTests(ProxyTestCase):
    """
    The proxy with a registrar for example.test (RFC 3261 §10.3, §16.5).
    """

    def setUp(self) -> Any:
        from twisted.internet import reactor

        from sipleg.registrar import Registrar

        self.registrar = Registrar(["example.test"], reactor)
        self.addCleanup(self.registrar.stop)
        d = super().setUp()
        d.addCallback(lambda _: setattr(self.proxy, "registrar", self.registrar))
        return d

    def register(self, user: str, contact: str, expires: str = "600") -> Request:
        request = options("sip:example.test", call_id=f"reg-{user}", cseq="1 REGISTER")
        request.method = "REGISTER"
        request.set_header("to", f"<sip:{user}@example.test>")
        request.set_header("from", f"<sip:{user}@example.test>;tag=r")
        request.add_header("Contact", f"<{contact}>;expires={expires}")
        return request

    @inlineCallbacks
    def test_register_then_call_the_aor(self) -> Any:
        contact = f"sip:uas@{self.uas.local.hostport}"
        yield self.uas.deliver(self.register("uas", contact), self.udp.local)
        yield self.uas_got.wait()
        ok = self.only(self.uas_got)
        assert isinstance(ok, Response)
        self.assertEqual(ok.code, 200)
        self.assertEqual(len(ok.get_headers("contact")), 1)
        self.assertIn(contact, ok.get_header("contact") or "")
        yield self.send(options("sip:uas@example.test"))
        yield self.uas_got.wait(2)
        request = self.uas_got.messages()[1]
        assert isinstance(request, Request)
        self.assertEqual(request.uri, contact)
        # The contact URI itself is routed as a contact, not as an AOR.
        yield self.send(options(contact, call_id="direct"))
        yield self.uas_got.wait(3)
        self.assertEqual(self.uas_got.messages()[2].get_header("call-id"), "direct")

    @inlineCallbacks
    def test_unknown_user_404_unbound_user_480(self) -> Any:
        contact = f"sip:gone@{self.uas.local.hostport}"
        yield self.uas.deliver(self.register("gone", contact), self.udp.local)
        yield self.uas_got.wait()
        unregister = self.register("gone", contact, expires="0")
        unregister.set_header("cseq", "2 REGISTER")
        yield self.uas.deliver(unregister, self.udp.local)
        yield self.uas_got.wait(2)
        self.assertEqual([m.code for m in self.uas_got.messages() if isinstance(m, Response)], [200, 200])
        yield self.send(options("sip:nobody@example.test", call_id="c1"))
        yield self.uac_got.wait()
        yield self.send(options("sip:gone@example.test", call_id="c2"))
        yield self.uac_got.wait(2)
        codes = {m.get_header("call-id"): m.code for m in self.uac_got.messages() if isinstance(m, Response)}
        self.assertEqual(codes, {"c1": 404, "c2": 480})
        # Strangers cannot tell the two apart (no user enumeration).
        self.proxy.access = NetworkAccessPolicy(["127.0.0.254/32"], ["example.test"])
        yield self.send(options("sip:nobody@example.test", call_id="c3"))
        yield self.uac_got.wait(3)
        yield self.send(options("sip:gone@example.test", call_id="c4"))
        yield self.uac_got.wait(4)
        codes = {m.get_header("call-id"): m.code for m in self.uac_got.messages() if isinstance(m, Response)}
        self.assertEqual((codes["c3"], codes["c4"]), (404, 404))

    @inlineCallbacks
    def test_register_for_foreign_domain_is_forwarded(self) -> Any:
        request = self.register("x", "sip:x@127.0.0.1:9")
        request.uri = f"sip:{self.uas.local.hostport}"
        request.set_header("to", "<sip:x@elsewhere.test>")
        yield self.send(request)
        yield self.uas_got.wait()
        forwarded = self.only(self.uas_got)
        assert isinstance(forwarded, Request)
        self.assertEqual(forwarded.method, "REGISTER")
        self.assertEqual(forwarded.get_headers("record-route"), [])


class BridgingTests(unittest.TestCase):
    """
    Transport and family bridging: IPv4 in, IPv6 out; TLS in, UDP out.
    """

    @inlineCallbacks
    def start(self, **kw: Any) -> Any:
        leg = Leg(port=0, **kw)
        yield leg.listen()
        self.addCleanup(leg.stop)
        return leg

    @inlineCallbacks
    def exchange(
        self, proxy_legs: list[Leg], uac: Leg, uac_got: PacketCollector, uas: Leg, uas_got: PacketCollector
    ) -> Any:
        StatelessProxy(Dispatcher(proxy_legs))
        entry = next(leg for leg in proxy_legs if leg.proto == uac.proto and leg.family == uac.family)
        transport = "" if uas.proto == "udp" else f";transport={uas.proto}"
        yield uac.deliver(options(f"sip:bob@{uas.local.hostport}{transport}"), entry.local)
        yield uas_got.wait()
        request = uas_got.messages()[0]
        assert isinstance(request, Request)
        yield answer_to_via(uas, request, 200)
        yield uac_got.wait()
        answer = uac_got.messages()[0]
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 200)
        self.assertEqual(len(answer.get_headers("via")), 1)
        return request

    @inlineCallbacks
    def test_ipv4_in_ipv6_out(self) -> Any:
        v4 = yield self.start()
        v6 = yield self.start(addr="::1")
        uac_got, uas_got = PacketCollector(), PacketCollector()
        uac = yield self.start(receiver=uac_got)
        uas = yield self.start(addr="::1", receiver=uas_got)
        request = yield self.exchange([v4, v6], uac, uac_got, uas, uas_got)
        self.assertEqual(request.get_headers("record-route"), [v6.record_route, v4.record_route])
        self.assertTrue(v6.record_route.startswith("<sip:[::1]:"))

    @inlineCallbacks
    def test_tls_in_udp_out(self) -> Any:
        from sipleg.transport.tls import TLSConfig
        from tests.certs import CertificateAuthority

        ca = CertificateAuthority()
        leaf = ca.issue("localhost", ("localhost",), ("127.0.0.1",))
        tls = TLSConfig(leaf.cert, leaf.key, ca.cert)
        proxy_tls = yield self.start(proto="tls", tls=tls)
        proxy_udp = yield self.start()
        uac_got, uas_got = PacketCollector(), PacketCollector()
        uac = yield self.start(proto="tls", tls=tls, receiver=uac_got)
        uas = yield self.start(receiver=uas_got)
        request = yield self.exchange([proxy_tls, proxy_udp], uac, uac_got, uas, uas_got)
        self.assertEqual(
            request.get_headers("record-route"), [proxy_udp.record_route, proxy_tls.record_route]
        )
        self.assertIn(";transport=tls", proxy_tls.record_route)


class MalformedViaTests(ProxyTestCase):
    def test_request_with_a_malformed_top_via_gets_400(self) -> Any:
        # A branch parameter without a value (RFC 3261 §20.42: via-branch =
        # "branch" EQUAL token), from the address the Via names: the answer
        # goes to the source.
        return self.refused_raw(f"SIP/2.0/UDP {self.uac.local.hostport};branch", "badvia@x", "1 OPTIONS")


class SameTransportLegsTests(unittest.TestCase):
    @inlineCallbacks
    def test_response_leaves_by_the_leg_of_the_request(self) -> Any:
        # Two TCP legs of one family: a request that comes in and goes out
        # by the second one has its response sent back by that leg too, on
        # the connection the request came in on.
        legs = []
        for _ in range(2):
            leg = Leg(port=0, proto="tcp")
            yield leg.listen()
            self.addCleanup(leg.stop)
            legs.append(leg)
        first, second = legs
        StatelessProxy(Dispatcher(legs))
        uac_got, uas_got = PacketCollector(), PacketCollector()
        uac = Leg(port=0, proto="tcp", receiver=uac_got)
        uas = Leg(port=0, proto="tcp", receiver=uas_got)
        for leg in (uac, uas):
            yield leg.listen()
            self.addCleanup(leg.stop)
        request = options(f"sip:bob@{uas.local.hostport};transport=tcp")
        # The UAC's Via names its listening port, so any new connection
        # would reach it too: the connection counts tell the difference.
        yield uac.deliver(request, second.local)
        yield uas_got.wait()
        forwarded = uas_got.messages()[0]
        assert isinstance(forwarded, Request)
        yield answer_to_via(uas, forwarded, 200)
        yield uac_got.wait()
        self.assertEqual(uac_got.messages()[0].get_header("call-id"), "opt-1@127.0.0.1")
        self.assertEqual(first.socketpool.connections(), [])
        self.assertEqual(len(uac.socketpool.connections()), 1)
