"""
Table tests of the request pass's decisions (L{sipleg.decision}): plain
values in, outcomes out; no reactor, no sockets, no legs.
"""

from __future__ import annotations

import socket
from functools import partial

from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.branch import leg_prefix, loop_hash
from sipleg.decision import (
    Answer,
    Decision,
    Drop,
    Forward,
    LegIdentity,
    LegSet,
    Located,
    Register,
    Return,
    Rules,
    decide_request,
    decide_response,
    leg_identity,
    request_view,
    response_view,
)
from sipleg.flows import Flow, flow_token, token_flow
from sipleg.message import Request, Response, parse_message
from sipleg.routing import NetworkAccessPolicy, StaticRoutes
from sipleg.uri import URI, parse_uri


def identity(proto: str = "udp", addr: str = "127.0.0.1", port: int = 5060) -> LegIdentity:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return leg_identity(proto, family, addr, port, leg_prefix(addr, port, proto), 70)


UDP = identity("udp")
TCP = identity("tcp")
V6 = identity("udp", "::1", 5070)
LEGS = LegSet((UDP, TCP, V6))
TRUSTED = Address("127.0.0.1", 5061)
STRANGER = Address("192.0.2.9", 5061)


def message(start: str, *lines: str) -> Request | Response:
    """
    A parsed message with From, To, Call-ID and Content-Length besides
    C{lines}.
    """
    head = [
        start,
        *lines,
        "From: <sip:alice@example.org>;tag=a1",
        "Call-ID: c1@example.org",
        "Content-Length: 0",
    ]
    return parse_message(("\r\n".join(head) + "\r\n\r\n").encode())


def request(
    method: str = "INVITE",
    uri: str = "sip:bob@192.0.2.20:5062",
    *extra: str,
    via: str = "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1",
    cseq: int = 1,
) -> Request:
    packet = message(
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "To: <sip:bob@example.com>",
        f"CSeq: {cseq} {method}",
        *extra,
    )
    assert isinstance(packet, Request)
    return packet


def response(*vias: str, code: int = 180) -> Response:
    packet = message(
        f"SIP/2.0 {code} Whatever",
        *(f"Via: {via}" for via in vias),
        "To: <sip:bob@example.com>;tag=b1",
        "CSeq: 1 INVITE",
    )
    assert isinstance(packet, Response)
    return packet


def decide(
    packet: Request,
    source: Address = TRUSTED,
    leg: LegIdentity = UDP,
    rules: Rules | None = None,
) -> Decision:
    if rules is None:
        rules = Rules(LEGS, NetworkAccessPolicy(), StaticRoutes())
    return decide_request(request_view(packet, leg, source), rules)


def forward(packet: Request, **kwargs: object) -> Forward:
    found = decide(packet, **kwargs)  # type: ignore[arg-type]
    assert isinstance(found, Forward), found
    return found


class RefusalTests(TestCase):
    """
    What a request is answered with (RFC 3261 §16.3), and that an ACK is
    never answered.
    """

    def test_table(self) -> None:
        cases: list[tuple[Request, Address, Decision]] = [
            (request("INVITE", "tel:+15551234"), TRUSTED, Answer(416, "Unsupported URI Scheme")),
            (request("ACK", "tel:+15551234"), TRUSTED, Drop("Unsupported URI Scheme")),
            (
                request("INVITE", "sip:bob@192.0.2.20", "Proxy-Require: foo, bar"),
                TRUSTED,
                Answer(420, "Bad Extension", (("Unsupported", "foo"), ("Unsupported", "bar"))),
            ),
            (request("INVITE", "sip:bob@192.0.2.20"), STRANGER, Answer(403, "Forbidden")),
            (
                request("INVITE", "sip:bob@192.0.2.20", "Max-Forwards: 0"),
                TRUSTED,
                Answer(483, "Too Many Hops"),
            ),
            (request("ACK", "sip:bob@192.0.2.20", "Max-Forwards: 0"), TRUSTED, Drop("Too Many Hops")),
        ]
        for packet, source, expected in cases:
            self.assertEqual(decide(packet, source), expected, packet.uri)

    def test_bad_request_uri(self) -> None:
        packet = request()
        packet.uri = "sip:bob@[1:2"
        found = decide(packet)
        assert isinstance(found, Answer)
        self.assertEqual(found.code, 400)
        self.assertTrue(found.reason.startswith("Bad Request-URI"), found.reason)

    def test_stranger_in_dialog_through_our_route(self) -> None:
        """
        The ACK and BYE of a call a stranger placed through us go to the
        callee's contact, not our domain: an in-dialog request (To tag)
        that came through a Route of ours passes; without the tag, or
        without our Route, it would make us an open relay: 403.
        """
        rules = Rules(LEGS, NetworkAccessPolicy(domains=["example.com"]), StaticRoutes())
        route = f"Route: {UDP.record_route}"
        tagged = request("BYE", "sip:bob@192.0.2.20:5062", route, cseq=2)
        tagged.set_header("to", "<sip:bob@example.com>;tag=b1")
        self.assertIsInstance(decide(tagged, STRANGER, rules=rules), Forward)
        untagged = request("INVITE", "sip:bob@192.0.2.20:5062", route)
        self.assertEqual(decide(untagged, STRANGER, rules=rules), Answer(403, "Forbidden"))
        no_route = request("BYE", "sip:bob@192.0.2.20:5062", cseq=2)
        no_route.set_header("to", "<sip:bob@example.com>;tag=b1")
        self.assertEqual(decide(no_route, STRANGER, rules=rules), Answer(403, "Forbidden"))

    def test_stranger_reaches_our_domain(self) -> None:
        """
        Not an open relay, but our own domains are reachable from anywhere.
        """
        rules = Rules(LEGS, NetworkAccessPolicy(domains=["example.com"]), StaticRoutes())
        self.assertIsInstance(decide(request(uri="sip:bob@example.com"), STRANGER, rules=rules), Forward)
        self.assertEqual(
            decide(request(uri="sip:bob@example.net"), STRANGER, rules=rules), Answer(403, "Forbidden")
        )


class AddressedToUsTests(TestCase):
    """
    A request whose Request-URI names one of our legs with no user part
    and no Route left is for the proxy itself.
    """

    def test_table(self) -> None:
        ours = "sip:127.0.0.1:5060"
        allow = (("Allow", "OPTIONS"),)
        cases: list[tuple[Request, Address, Decision]] = [
            (request("OPTIONS", ours), TRUSTED, Answer(200, "OK", (*allow, ("Accept", "application/sdp")))),
            (request("OPTIONS", ours), STRANGER, Answer(200, "OK", (*allow, ("Accept", "application/sdp")))),
            (
                request("OPTIONS", "sip:127.0.0.1;transport=tcp", "Max-Forwards: 0"),
                STRANGER,
                Answer(200, "OK", (*allow, ("Accept", "application/sdp"))),
            ),
            (request("INFO", ours), TRUSTED, Answer(405, "Method Not Allowed", allow)),
            (request("REGISTER", ours), TRUSTED, Answer(405, "Method Not Allowed", allow)),
            (request("CANCEL", ours), TRUSTED, Answer(481, "Call/Transaction Does Not Exist")),
            (request("ACK", ours), TRUSTED, Drop("ACK for us")),
        ]
        for packet, source, expected in cases:
            self.assertEqual(decide(packet, source), expected, packet.method)

    def test_not_for_us(self) -> None:
        """
        A user part, a Route left, or another port: not for us.
        """
        self.assertIsInstance(decide(request("OPTIONS", "sip:bob@127.0.0.1:5060")), Forward)
        routed = request("OPTIONS", "sip:127.0.0.1:5060", "Route: <sip:192.0.2.7;lr>")
        self.assertIsInstance(decide(routed), Forward)
        self.assertEqual(decide(request("OPTIONS", "sip:127.0.0.1:5999"), STRANGER), Answer(403, "Forbidden"))


class ForwardTests(TestCase):
    """
    Where a request goes and what changes on the way (RFC 3261 §16.4-§16.6).
    """

    def test_max_forwards(self) -> None:
        for given, expected in [(None, 69), ("10", 9), ("1", 0), ("200", 69)]:
            extra = () if given is None else (f"Max-Forwards: {given}",)
            found = forward(request("INVITE", "sip:b@192.0.2.20", *extra))
            self.assertEqual(found.edits.max_forwards, expected)

    def test_request_uri(self) -> None:
        found = forward(request())
        self.assertEqual(found.targets, (parse_uri("sip:bob@192.0.2.20:5062"),))
        self.assertEqual((found.edits.uri, found.edits.routes, found.edits.record_route), (None, None, True))
        self.assertIs(found.prefer, UDP)

    def test_our_routes_stripped(self) -> None:
        """
        Every leading Route of ours comes off; the leg the last one named
        is the one to leave by.
        """
        packet = request(
            "BYE", "sip:bob@192.0.2.20:5062", f"Route: {UDP.record_route}, {TCP.record_route}", cseq=2
        )
        found = forward(packet)
        self.assertEqual(found.edits.routes, ())
        self.assertIs(found.prefer, TCP)
        self.assertEqual(found.targets, (parse_uri("sip:bob@192.0.2.20:5062"),))

    def test_loose_route(self) -> None:
        packet = request("INVITE", "sip:bob@192.0.2.20", f"Route: {UDP.record_route}, <sip:192.0.2.7;lr>")
        found = forward(packet)
        self.assertEqual(found.edits.routes, ("<sip:192.0.2.7;lr>",))
        self.assertEqual(found.targets, (parse_uri("sip:192.0.2.7;lr"),))
        self.assertIsNone(found.edits.uri)

    def test_strict_next_hop(self) -> None:
        """
        §16.6 item 6: a next hop without C{lr} is a strict router: it gets
        the Request-URI, which moves to the end of the Route set.
        """
        found = forward(request("INVITE", "sip:bob@192.0.2.20", "Route: <sip:192.0.2.7>, <sip:192.0.2.8;lr>"))
        self.assertEqual(found.edits.uri, "sip:192.0.2.7")
        self.assertEqual(found.edits.routes, ("<sip:192.0.2.8;lr>", "<sip:bob@192.0.2.20>"))
        self.assertEqual(found.targets, (parse_uri("sip:192.0.2.7"),))

    def test_strict_previous_hop(self) -> None:
        """
        §16.4: a Request-URI of ours came from a strict router; the last
        Route is the real Request-URI.
        """
        found = forward(request("INVITE", "sip:127.0.0.1:5060;lr", "Route: <sip:bob@192.0.2.20>"))
        self.assertEqual(found.edits.uri, "sip:bob@192.0.2.20")
        self.assertEqual(found.edits.routes, ())
        self.assertEqual(found.targets, (parse_uri("sip:bob@192.0.2.20"),))

    def test_static_route_and_outbound_proxy(self) -> None:
        proxy = parse_uri("sip:192.0.2.99;lr")
        special = parse_uri("sip:192.0.2.50")
        routes = StaticRoutes({"example.net": special}, outbound_proxy=proxy, domains=["example.com"])
        rules = Rules(LEGS, NetworkAccessPolicy(), routes)
        for uri, target in [
            ("sip:bob@example.net", special),
            ("sip:bob@example.org", proxy),
            ("sip:bob@example.com", parse_uri("sip:bob@example.com")),
        ]:
            self.assertEqual(forward(request("INVITE", uri), rules=rules).targets, (target,), uri)

    def test_register_not_record_routed(self) -> None:
        found = forward(request("REGISTER", "sip:example.net"))
        self.assertFalse(found.edits.record_route)

    def test_branch(self) -> None:
        """
        RFC 3261 §16.11: an INVITE, its CANCEL and the ACK of its error
        response share the branch; another transaction does not.
        """
        invite = forward(request("INVITE")).edits.branch
        self.assertEqual(forward(request("CANCEL")).edits.branch, invite)
        self.assertEqual(forward(request("ACK")).edits.branch, invite)
        self.assertNotEqual(forward(request("INVITE", cseq=2)).edits.branch, invite)
        other = forward(request("INVITE", via="SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2")).edits.branch
        self.assertNotEqual(other, invite)

    def test_loop(self) -> None:
        """
        §16.3 item 4: a request coming back with our Via and the same loop
        hash loops (482); with another hash it spirals on.
        """
        uri = "sip:bob@192.0.2.20:5062"
        loop = loop_hash(uri, "a1", "c1@example.org 1", (), ())
        ours = f"SIP/2.0/UDP 127.0.0.1:5060;branch={UDP.branch}{'0' * 30}{loop}"
        looping = request("INVITE", uri, f"Via: {ours}")
        self.assertEqual(decide(looping), Answer(482, "Loop Detected"))
        spiral = request("INVITE", "sip:carol@192.0.2.20:5062", f"Via: {ours}")
        self.assertIsInstance(decide(spiral), Forward)

    def test_received_stamped(self) -> None:
        """
        RFC 3261 §18.2.1 / RFC 3581: the view stamps the top Via with where
        the request came from.
        """
        packet = request(via="SIP/2.0/UDP 192.0.2.1:5061;rport;branch=z9hG4bK-1")
        view = request_view(packet, UDP, STRANGER)
        self.assertEqual((view.via.received, view.via.rport), ("192.0.2.9", "5061"))
        self.assertIn("received=192.0.2.9", packet.get_header("via") or "")


class RegistrarRulesTests(TestCase):
    """
    With a registrar, REGISTER for us is answered and addresses of record
    are looked up (§16.5).
    """

    def rules(self, found: int | list[list[str]] | Located | None) -> Rules:
        def registers(uri: URI) -> bool:
            return uri.host == "example.com"

        def locate(uri: URI) -> int | Located | None:
            if uri.host != "example.com":
                return None
            return Located(found) if isinstance(found, list) else found

        return Rules(LEGS, NetworkAccessPolicy(), StaticRoutes(), registers, locate)

    def test_register(self) -> None:
        self.assertEqual(decide(request("REGISTER", "sip:example.com"), rules=self.rules(None)), Register())
        own = Rules(LEGS, NetworkAccessPolicy(), StaticRoutes(), lambda uri: True, lambda uri: None)
        self.assertEqual(decide(request("REGISTER", "sip:127.0.0.1"), rules=own), Register())
        self.assertEqual(
            decide(request("OPTIONS", "sip:127.0.0.1"), rules=own),
            Answer(200, "OK", (("Allow", "OPTIONS, REGISTER"), ("Accept", "application/sdp"))),
        )
        self.assertIsInstance(decide(request("REGISTER", "sip:example.net"), rules=self.rules(None)), Forward)

    def test_locate(self) -> None:
        uri = "sip:bob@example.com"
        self.assertEqual(decide(request("INVITE", uri), rules=self.rules(404)), Answer(404, "Not Found"))
        self.assertEqual(
            decide(request("INVITE", uri), rules=self.rules(480)), Answer(480, "Temporarily Unavailable")
        )
        groups = [["sip:bob@192.0.2.30:5090", "sip:b@x"], ["sip:b@y"]]
        found = forward(request("INVITE", uri), rules=self.rules(groups))
        self.assertEqual(found.edits.uri, "sip:bob@192.0.2.30:5090")
        self.assertEqual(found.targets, (parse_uri("sip:bob@192.0.2.30:5090"),))
        # All of them, for a forking proxy.
        self.assertEqual(found.forks, (("sip:bob@192.0.2.30:5090", "sip:b@x"), ("sip:b@y",)))

    def test_locate_flows(self) -> None:
        """
        The flows of located contacts go with the forks: the Request-URI
        stays the Contact, the flow says the hop.
        """
        flow = Flow("tls", "192.0.2.9", 40112)
        located = Located(
            [["sip:bob@10.0.0.9:5061;transport=tls"]], (("sip:bob@10.0.0.9:5061;transport=tls", flow),)
        )
        found = forward(request("INVITE", "sip:bob@example.com"), rules=self.rules(located))
        self.assertEqual(found.edits.uri, "sip:bob@10.0.0.9:5061;transport=tls")
        self.assertEqual(found.flows_of("sip:bob@10.0.0.9:5061;transport=tls"), (flow,))
        self.assertEqual(found.flows_of("sip:bob@10.0.0.9"), ())

    def test_locate_path(self) -> None:
        """
        RFC 3327 §5.4: a contact registered through a Path gets it as its
        Route set; the next hop is its first value.
        """
        contact = "sip:bob@10.0.0.9:5060"
        path = ("<sip:192.0.2.5;lr>", "<sip:192.0.2.6;lr>")
        located = Located([[contact, "sip:bob@192.0.2.7"]], (), ((contact, path),))
        found = forward(request("INVITE", "sip:bob@example.com"), rules=self.rules(located))
        self.assertEqual((found.edits.uri, found.edits.routes), (contact, path))
        self.assertEqual(found.targets, (parse_uri("sip:192.0.2.5;lr"),))
        self.assertEqual((found.path_of(contact), found.path_of("sip:bob@192.0.2.7")), (path, ()))

    def test_route_set_first(self) -> None:
        """
        A request with a Route set follows it, not the location service.
        """
        packet = request("INVITE", "sip:bob@example.com", "Route: <sip:192.0.2.7;lr>")
        self.assertEqual(forward(packet, rules=self.rules(404)).targets, (parse_uri("sip:192.0.2.7;lr"),))


class ResponseTests(TestCase):
    """
    Responses go back along the Via path, only through a Via of ours
    (design item 3).
    """

    def ours(self, leg: LegIdentity) -> str:
        return f"{leg.via_prefix}{leg.branch}abc"

    def test_table(self) -> None:
        uac = "SIP/2.0/UDP 192.0.2.1:5061;branch=z9hG4bK-1;received=192.0.2.9;rport=6000"
        named = "SIP/2.0/UDP uac.example.org:5061;branch=z9hG4bK-1"
        tcp = "SIP/2.0/TCP 192.0.2.1:5061;branch=z9hG4bK-1;received=192.0.2.9;rport=6000"
        cases: list[tuple[tuple[str, ...], Return | Drop]] = [
            ((uac,), Drop("foreign-via")),
            ((self.ours(UDP),), Drop("no-usable-via")),
            ((self.ours(UDP), uac), Return(1, UDP, False, (Address("192.0.2.9", 6000),))),
            ((self.ours(TCP), self.ours(UDP), uac), Return(2, UDP, True, (Address("192.0.2.9", 6000),))),
            (
                (self.ours(UDP), named),
                Return(1, UDP, False, parse_uri("sip:uac.example.org:5061;transport=udp")),
            ),
            (
                (self.ours(UDP), tcp),
                Return(1, UDP, False, (Address("192.0.2.9", 6000, "tcp"), Address("192.0.2.9", 5061, "tcp"))),
            ),
            ((self.ours(UDP), "SIP/2.0/UDP bad host"), Drop("no-usable-via")),
        ]
        for vias, expected in cases:
            self.assertEqual(decide_response(response_view(response(*vias)), LEGS), expected, vias)


class HopTests(TestCase):
    """
    L{LegSet.hop}: the one definition of "this URI names one of our legs".
    """

    def test_table(self) -> None:
        cases: list[tuple[str, LegIdentity | None]] = [
            ("sip:127.0.0.1:5060;lr", UDP),
            ("sip:127.0.0.1;lr", UDP),
            ("sip:127.0.0.1:5060;transport=tcp;lr", TCP),
            ("sip:alice@127.0.0.1:5060", UDP),
            ("sip:127.0.0.1:5061", None),
            ("sips:127.0.0.1", None),
            ("sip:[0:0::1]:5070", V6),
            ("sip:192.0.2.1;maddr=127.0.0.1", UDP),
            ("sip:192.0.2.1:5060", None),
            ("tel:+1555", None),
        ]
        for text, leg in cases:
            self.assertIs(LEGS.hop(parse_uri(text)), leg, text)


class FlowTokenTests(TestCase):
    """
    RFC 5626 §5.3 and RFC 3327: a request through a Route of ours with a
    flow token goes over that flow (unless it came by it); a REGISTER we
    forward names the phone's flow for our Path.
    """

    secret = b"secret"

    def rules(self) -> Rules:
        return Rules(
            LEGS, NetworkAccessPolicy(), StaticRoutes(), flow_token=partial(token_flow, secret=self.secret)
        )

    def test_token_route(self) -> None:
        flow = Flow("tcp", "127.0.0.9", 40112)
        route = f"Route: <sip:{flow_token(flow, self.secret)}@127.0.0.1:5060;lr>"
        uri = "sip:bob@10.0.0.9:5060"
        found = forward(request("BYE", uri, route), rules=self.rules())
        self.assertEqual(found.flows_of(uri), (flow,))
        # From the flow itself (the phone's own request in the dialog).
        found = forward(
            request("BYE", uri, route), source=Address("127.0.0.9", 40112, "tcp"), leg=TCP, rules=self.rules()
        )
        self.assertEqual(found.flows, ())
        # A token that is not ours names nothing.
        forged = f"Route: <sip:{flow_token(flow, b'guess')}@127.0.0.1:5060;lr>"
        self.assertEqual(forward(request("BYE", uri, forged), rules=self.rules()).flows, ())

    def test_path(self) -> None:
        contact = 'Contact: <sip:bob@10.0.0.9;ob>;reg-id=1;+sip.instance="<urn:uuid:1>"'
        packet = request("REGISTER", "sip:192.0.2.50", contact, "Supported: outbound, path")
        source = Address("127.0.0.9", 40112, "tcp")
        found = forward(packet, source=source, leg=TCP, rules=self.rules())
        self.assertEqual(found.edits.path, Flow("tcp", "127.0.0.9", 40112, "", "<urn:uuid:1>", 1))
        # Without Supported: path, or with another Via below: none.
        plain = request("REGISTER", "sip:192.0.2.50", contact)
        self.assertIsNone(forward(plain, source=source, leg=TCP, rules=self.rules()).edits.path)
        two = request(
            "REGISTER", "sip:192.0.2.50", "Via: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-p", "Supported: path"
        )
        self.assertIsNone(forward(two, source=source, leg=TCP, rules=self.rules()).edits.path)
