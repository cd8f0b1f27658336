"""
Compare L{sipleg.leg.Leg} with Perl C{Net::SIP::Leg} (0.835) on the same
packets.

C{tests/netsip/compare_leg.pl} runs each packet through Net::SIP's
C{forward_incoming} (and C{forward_outgoing} on a second leg) and reports
the routing result; the same packets go through our legs here.  Two kinds
of tests:

 - L{SameRoutingTests}: where sipleg follows Net::SIP, the routing result
   must be the same: forwarded or refused, the Request-URI after a strict
   router's restore, which Route entries are removed, Max-Forwards, the
   number of Vias and of Record-Routes (each naming the same hop);
 - L{DeliberateDifferenceTests}: each place where C{docs/design.md} says
   we do better than Net::SIP shows the difference on a real packet, so
   the list of differences is itself tested.

Branches are never compared for equality (the tid hash differs by
design); both sides must have the RFC 3261 §16.11 properties instead.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from sipleg.errors import SIPParseError
from sipleg.leg import Leg
from sipleg.message import Request, parse_message
from sipleg.uri import parse_name_addr, same_hop
from tests.interop.peers import free_port, require_peers

SCRIPT = Path(__file__).resolve().parent / "netsip" / "compare_leg.pl"

#: Seconds the Perl probe may run; it gives up by itself after 10.
_PROBE_TIMEOUT = 15
#: Fresh ports to try when the probe finds a port taken.
_PORT_ATTEMPTS = 3
#: Loopback addresses tried for a leg on the default port 5060.
_DEFAULT_PORT_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@dataclass(frozen=True)
class LegSpec:
    """
    One leg, built the same way on both sides.
    """

    addr: str
    port: int
    proto: str = "udp"
    host: str | None = None

    @property
    def hostport(self) -> str:
        """
        The C{host:port} of the leg's URIs.
        """
        return f"{self.host or self.addr}:{self.port}"

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"addr": self.addr, "port": self.port, "proto": self.proto}
        if self.host is not None:
            found["host"] = self.host
        return found

    def leg(self) -> Leg:
        """
        Our leg (not listening: header work needs no socket).
        """
        return Leg(addr=self.addr, port=self.port, proto=self.proto, host=self.host)


@dataclass(frozen=True)
class Legs:
    """
    The leg packets arrive on and, optionally, the leg they leave by.
    """

    inbound: LegSpec
    outbound: LegSpec | None = None


@dataclass(frozen=True)
class Routing:
    """
    What one side did to one packet.

    @ivar refused: C{forward_incoming}/C{forward_outgoing} refused it.
    @ivar code: the status to answer with when refused (L{None}: drop).
    @ivar uri: the Request-URI afterwards (requests only).
    @ivar branch: C{via_branch(packet, 3)} of the sending leg (requests).
    """

    kind: str
    refused: bool
    code: int | None
    uri: str | None
    route: tuple[str, ...]
    record_route: tuple[str, ...]
    max_forwards: str | None
    vias: int
    branch: str | None


def _netsip_routing(found: dict[str, Any]) -> Routing:
    if "error" in found:
        raise AssertionError(f"Net::SIP could not parse the packet: {found['error']}")
    return Routing(
        kind=found["kind"],
        refused=found["refused"],
        code=found["code"],
        uri=found.get("uri"),
        route=tuple(found["route"]),
        record_route=tuple(found["record_route"]),
        max_forwards=found["max_forwards"],
        vias=found["vias"],
        branch=found.get("branch"),
    )


class _PortTaken(Exception):
    """
    Net::SIP could not bind a leg's port.
    """


def run_netsip(legs: Legs, packets: Sequence[str]) -> list[Routing]:
    """
    Run C{packets} through Net::SIP legs (the probe binds their ports).

    @raise _PortTaken: a port was taken in the meantime.
    """
    request: dict[str, Any] = {"leg": legs.inbound.as_json(), "packets": list(packets)}
    if legs.outbound is not None:
        request["out_leg"] = legs.outbound.as_json()
    done = subprocess.run(
        ["perl", str(SCRIPT)],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=_PROBE_TIMEOUT,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode != 0:
        if "failed to bind" in stderr:
            raise _PortTaken(stderr)
        raise AssertionError(f"compare_leg.pl exited {done.returncode}:\n{stderr}")
    return [_netsip_routing(found) for found in json.loads(done.stdout)["results"]]


def run_sipleg(legs: Legs, packets: Sequence[str]) -> list[Routing]:
    """
    Run C{packets} through our legs, as the Perl probe does.
    """
    inbound = legs.inbound.leg()
    outbound = legs.outbound.leg() if legs.outbound is not None else None
    sender = outbound or inbound
    results = []
    for text in packets:
        try:
            packet = parse_message(text.encode())
        except SIPParseError as e:
            raise AssertionError(f"sipleg could not parse the packet: {e.reason}") from e
        refused = inbound.forward_incoming(packet)
        if refused is None and outbound is not None:
            refused = outbound.forward_outgoing(packet, inbound)
        results.append(
            Routing(
                kind="request" if isinstance(packet, Request) else "response",
                refused=refused is not None,
                code=refused.code if refused is not None else None,
                uri=packet.uri if isinstance(packet, Request) else None,
                route=tuple(packet.get_headers("route")),
                record_route=tuple(packet.get_headers("record-route")),
                max_forwards=packet.get_header("max-forwards"),
                vias=len(packet.get_headers("via")),
                branch=sender.via_branch(packet, 3) if isinstance(packet, Request) else None,
            )
        )
    return results


def udp_leg() -> Legs:
    return Legs(LegSpec("127.0.0.1", free_port("udp")))


def tcp_leg() -> Legs:
    return Legs(LegSpec("127.0.0.1", free_port("tcp"), "tcp"))


def udp_in_tcp_out() -> Legs:
    return Legs(LegSpec("127.0.0.1", free_port("udp")), LegSpec("127.0.0.1", free_port("tcp"), "tcp"))


def udp_and_tcp_same_port() -> Legs:
    """
    A UDP and a TCP leg on one port: their Net::SIP contacts are equal.
    """
    for _ in range(20):
        port = free_port("udp")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return Legs(LegSpec("127.0.0.1", port), LegSpec("127.0.0.1", port, "tcp"))
    raise unittest.SkipTest("no port free for both UDP and TCP")


def named_leg() -> Legs:
    return Legs(LegSpec("127.0.0.1", free_port("udp"), host="proxy.example"))


def ipv6_leg() -> Legs:
    """
    A UDP leg on C{::1}; skips the test when the host has no IPv6 loopback.
    """
    try:
        return Legs(LegSpec("::1", free_port("udp", "::1")))
    except OSError as e:
        raise unittest.SkipTest(f"no IPv6 loopback: {e}") from e


def default_port_leg() -> Legs | None:
    """
    A UDP leg on port 5060 of some loopback address, or L{None} when 5060
    is taken on all of them.
    """
    for host in _DEFAULT_PORT_HOSTS:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, 5060))
            except OSError:
                continue
        return Legs(LegSpec(host, 5060))
    return None


def request_text(
    method: str = "INVITE",
    uri: str = "sip:bob@10.0.0.2:5090",
    *,
    via_branch: str = "z9hG4bKuac1",
    cseq: int = 1,
    to_tag: str | None = None,
    routes: Sequence[str] = (),
    max_forwards: str | None = "70",
) -> str:
    """
    A request from a UAC at 10.0.0.1:5080, in wire form.
    """
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.1:5080;branch={via_branch}",
    ]
    lines += [f"Route: {route}" for route in routes]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    lines += [
        "From: <sip:alice@example.com>;tag=a1",
        f"To: {to}",
        "Call-ID: compare-1@10.0.0.1",
        f"CSeq: {cseq} {method}",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def returned_text(legs: Legs, forwarded: Routing) -> str:
    """
    L{request_text}'s INVITE as it left C{legs} (after C{forwarded}, with
    the sending leg's Via), come back unchanged from a next hop at
    10.0.0.5: a loop.
    """
    sender = legs.outbound or legs.inbound
    packet = parse_message(request_text().encode())
    packet.remove_header("record-route")
    for value in forwarded.record_route:
        packet.add_header("Record-Route", value)
    if forwarded.max_forwards is not None:
        packet.set_header("max-forwards", forwarded.max_forwards)
    packet.insert_header("via", f"SIP/2.0/{sender.proto.upper()} {sender.hostport};branch={forwarded.branch}")
    packet.insert_header("via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKnext")
    return bytes(packet).decode()


def response_text(vias: Sequence[str], code: int = 200) -> str:
    """
    A response to L{request_text}'s INVITE with the given Via list.
    """
    lines = [f"SIP/2.0 {code} Whatever"]
    lines += [f"Via: {via}" for via in vias]
    lines += [
        "From: <sip:alice@example.com>;tag=a1",
        "To: <sip:bob@example.com>;tag=b1",
        "Call-ID: compare-1@10.0.0.1",
        "CSeq: 1 INVITE",
        "Content-Length: 0",
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


class _ComparisonCase(unittest.TestCase):
    """
    Runs packets through both implementations.
    """

    def setUp(self) -> None:
        require_peers()

    def run_both(
        self, make_legs: Callable[[], Legs], build: Callable[[Legs], Sequence[str]]
    ) -> tuple[Legs, list[Routing], list[Routing]]:
        """
        @param make_legs: picks the legs (free ports); called again when
            Net::SIP finds a port taken.
        @param build: the packets for those legs.
        @return: the legs, Net::SIP's results, ours.
        """
        for _ in range(_PORT_ATTEMPTS - 1):
            legs = make_legs()
            packets = build(legs)
            try:
                return legs, run_netsip(legs, packets), run_sipleg(legs, packets)
            except _PortTaken:
                continue
        legs = make_legs()
        packets = build(legs)
        return legs, run_netsip(legs, packets), run_sipleg(legs, packets)

    def assert_same_routing(self, netsip: Routing, ours: Routing) -> None:
        """
        The routing result is the same: forwarded or refused alike, same
        Request-URI, Route set, Max-Forwards and Via count, and as many
        Record-Routes naming the same hops (their URI form is design
        item 1, tested apart).
        """
        detail = f"\nNet::SIP: {netsip}\nsipleg:   {ours}"
        self.assertEqual(netsip.refused, ours.refused, "forwarded or refused" + detail)
        self.assertEqual(netsip.uri, ours.uri, "Request-URI" + detail)
        self.assertEqual(netsip.route, ours.route, "Route set" + detail)
        self.assertEqual(netsip.max_forwards, ours.max_forwards, "Max-Forwards" + detail)
        self.assertEqual(netsip.vias, ours.vias, "Via count" + detail)
        self.assertEqual(len(netsip.record_route), len(ours.record_route), "Record-Route" + detail)
        for theirs, mine in zip(netsip.record_route, ours.record_route, strict=True):
            self.assertTrue(
                same_hop(parse_name_addr(theirs).uri, parse_name_addr(mine).uri),
                f"Record-Route {theirs} vs {mine}" + detail,
            )

    def compare(
        self, make_legs: Callable[[], Legs], build: Callable[[Legs], Sequence[str]]
    ) -> tuple[Legs, list[Routing], list[Routing]]:
        """
        L{run_both}, then L{assert_same_routing} for every packet.
        """
        legs, netsip, ours = self.run_both(make_legs, build)
        self.assertEqual(len(netsip), len(ours))
        for theirs, mine in zip(netsip, ours, strict=True):
            self.assert_same_routing(theirs, mine)
        return legs, netsip, ours


class SameRoutingTests(_ComparisonCase):
    """
    Where sipleg follows Net::SIP (docs/design.md, "Where we follow Net::SIP"), both
    route the same packet the same way.
    """

    def test_plain_invite(self) -> None:
        _, netsip, ours = self.compare(udp_leg, lambda legs: [request_text()])
        self.assertFalse(ours[0].refused)
        self.assertEqual(ours[0].uri, "sip:bob@10.0.0.2:5090")
        self.assertEqual(ours[0].route, ())
        self.assertEqual(len(ours[0].record_route), 1)

    def test_loose_route_ours_first(self) -> None:
        # RFC 3261 §16.4: our own Route on top is removed, the rest stays.
        def build(legs: Legs) -> list[str]:
            mine = legs.inbound.hostport
            return [
                request_text(routes=[f"<sip:{mine};lr>", "<sip:10.0.0.9:5070;lr>"]),
                request_text(routes=[f"<sip:{mine};lr>,<sip:10.0.0.9:5070;lr>"]),
            ]

        _, _, ours = self.compare(udp_leg, build)
        for found in ours:
            self.assertEqual(found.route, ("<sip:10.0.0.9:5070;lr>",))
            self.assertEqual(found.uri, "sip:bob@10.0.0.2:5090")

    def test_loose_route_default_port(self) -> None:
        # A Route without a port names a leg on 5060, and one with an
        # explicit :5060 does too.  Only a leg on 5060 shows it; when 5060
        # is taken everywhere the explicit-port form is all we can test.
        found = default_port_leg()
        make_legs = (lambda: found) if found is not None else udp_leg

        def build(legs: Legs) -> list[str]:
            addr, port = legs.inbound.addr, legs.inbound.port
            bare = f"<sip:{addr};lr>" if port == 5060 else f"<sip:{addr}:{port};lr>"
            return [
                request_text(routes=[bare, "<sip:10.0.0.9;lr>"]),
                request_text(routes=[f"<sip:{addr}:{port};lr>", "<sip:10.0.0.9;lr>"]),
            ]

        legs, _, ours = self.compare(make_legs, build)
        for routing in ours:
            self.assertEqual(routing.route, ("<sip:10.0.0.9;lr>",))

    def test_strict_router(self) -> None:
        # RFC 3261 §16.4: a strict router put our URI in the Request-URI;
        # the last Route is the real target and becomes the Request-URI.
        def build(legs: Legs) -> list[str]:
            mine = legs.inbound.hostport
            routes = ["<sip:10.0.0.9;lr>", "<sip:bob@10.0.0.2:5090>"]
            return [
                request_text(uri=f"sip:{mine}", routes=routes),
                request_text(uri=f"sip:{mine};lr", routes=routes),
                request_text(uri=f"sip:{mine}", routes=["<sip:bob@10.0.0.2:5090;transport=tcp>"]),
            ]

        _, _, ours = self.compare(udp_leg, build)
        self.assertEqual(ours[0].uri, "sip:bob@10.0.0.2:5090")
        self.assertEqual(ours[0].route, ("<sip:10.0.0.9;lr>",))
        self.assertEqual(ours[1].uri, "sip:bob@10.0.0.2:5090")
        self.assertEqual(ours[2].uri, "sip:bob@10.0.0.2:5090;transport=tcp")
        self.assertEqual(ours[2].route, ())

    def test_our_uri_without_route_is_not_strict_routing(self) -> None:
        # Net::SIP 0.830: a Request-URI naming us is only a strict router's
        # doing when there is a Route to restore it from.
        def build(legs: Legs) -> list[str]:
            return [request_text("OPTIONS", uri=f"sip:{legs.inbound.hostport}")]

        legs, _, ours = self.compare(udp_leg, build)
        self.assertEqual(ours[0].uri, f"sip:{legs.inbound.hostport}")

    def test_foreign_route_only(self) -> None:
        _, _, ours = self.compare(
            udp_leg,
            lambda legs: [request_text(routes=["<sip:10.0.0.9;lr>", "<sip:10.0.0.8;lr>"])],
        )
        self.assertEqual(ours[0].route, ("<sip:10.0.0.9;lr>", "<sip:10.0.0.8;lr>"))
        self.assertEqual(ours[0].uri, "sip:bob@10.0.0.2:5090")

    def test_register_gets_no_record_route(self) -> None:
        # RFC 3261 §10.2: a proxy does not Record-Route a REGISTER.
        def build(legs: Legs) -> list[str]:
            return [request_text("REGISTER", uri="sip:example.com")]

        _, _, ours = self.compare(udp_leg, build)
        self.assertEqual(ours[0].record_route, ())
        self.assertEqual(ours[0].max_forwards, "69")

    def test_max_forwards(self) -> None:
        # Decremented; an absent or too large value counts as 70 (the cap
        # against loop amplification both implementations apply).
        values = ["70", "5", None, "100", "2"]

        def build(legs: Legs) -> list[str]:
            return [request_text(max_forwards=value) for value in values]

        _, _, ours = self.compare(udp_leg, build)
        self.assertEqual([found.max_forwards for found in ours], ["69", "4", "69", "69", "1"])

    def test_response_with_our_via(self) -> None:
        # Our Via on top (a branch with this leg's prefix) is removed and
        # the response goes on to the next Via.  The prefix is the same on
        # both sides (md5 of address, port, proto: docs/design.md, "Where we follow Net::SIP").
        def build(legs: Legs) -> list[str]:
            spec = legs.inbound
            branch = spec.leg().branch + "0123456789abcde0123456789abcde"
            ours = f"SIP/2.0/UDP {spec.hostport};branch={branch}"
            return [
                response_text([ours, "SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKuac1"]),
                response_text([ours, "SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKuac1"], 180),
            ]

        _, _, ours = self.compare(udp_leg, build)
        for found in ours:
            self.assertEqual((found.kind, found.refused, found.vias), ("response", False, 1))

    def test_two_legs_udp_in_tcp_out(self) -> None:
        # Each leg removes its own Route (incoming: the UDP one, outgoing:
        # the TCP one) and each puts its Record-Route on top.
        def build(legs: Legs) -> list[str]:
            assert legs.outbound is not None
            udp, tcp = legs.inbound.hostport, legs.outbound.hostport
            return [
                request_text(),
                request_text(
                    routes=[f"<sip:{udp};lr>", f"<sip:{tcp};transport=tcp;lr>", "<sip:10.0.0.9;lr>"]
                ),
            ]

        legs, _, ours = self.compare(udp_in_tcp_out, build)
        assert legs.outbound is not None
        self.assertEqual(ours[1].route, ("<sip:10.0.0.9;lr>",))
        for found in ours:
            self.assertEqual(len(found.record_route), 2)
            top = parse_name_addr(found.record_route[0]).uri
            self.assertEqual((top.port, top.transport), (legs.outbound.port, "tcp"))

    def test_ipv6_leg(self) -> None:
        # IPv6 in brackets in Route and Request-URI (RFC 3261 §25.1
        # IPv6reference = "[" IPv6address "]").
        def build(legs: Legs) -> list[str]:
            mine = f"[::1]:{legs.inbound.port}"
            return [
                request_text(routes=[f"<sip:{mine};lr>", "<sip:[2001:DB8::9];lr>"]),
                request_text(uri=f"sip:{mine}", routes=["<sip:bob@[2001:db8::2]:5090>"]),
            ]

        _, _, ours = self.compare(ipv6_leg, build)
        self.assertEqual(ours[0].route, ("<sip:[2001:DB8::9];lr>",))
        self.assertEqual((ours[1].uri, ours[1].route), ("sip:bob@[2001:db8::2]:5090", ()))

    def test_branch_properties(self) -> None:
        # RFC 3261 §16.11: a stateless proxy gives a retransmission, the
        # CANCEL and the ACK of a non-2xx response the INVITE's branch, and
        # the ACK of a 2xx (a transaction of its own) another one.
        def build(legs: Legs) -> list[str]:
            mine = f"<sip:{legs.inbound.hostport};lr>"
            return [
                request_text(),
                request_text(),
                request_text("CANCEL"),
                request_text("ACK", to_tag="b1"),
                request_text("ACK", to_tag="b1", via_branch="z9hG4bKuac2", routes=[mine]),
                request_text(cseq=2, via_branch="z9hG4bKuac3"),
            ]

        legs, netsip, ours = self.compare(udp_leg, build)
        prefix = legs.inbound.leg().branch
        for side in (netsip, ours):
            branches = [found.branch for found in side]
            invite, again, cancel, ack_error, ack_2xx, reinvite = branches
            self.assertEqual({invite, again, cancel, ack_error}, {invite}, side)
            self.assertNotEqual(ack_2xx, invite, side)
            self.assertNotEqual(reinvite, invite, side)
            for branch in branches:
                assert branch is not None
                self.assertTrue(branch.startswith(prefix), (branch, prefix))
        # Not equal across implementations: the tid hash differs by design.
        self.assertNotEqual(netsip[0].branch, ours[0].branch)


class DeliberateDifferenceTests(_ComparisonCase):
    """
    The places where docs/design.md ("Decisions") says sipleg does better than Net::SIP,
    shown on the same packets.  A failure here means one side changed.
    """

    def test_record_route_names_transport(self) -> None:
        # Design item 1: a stream leg's Record-Route carries
        # ;transport=tcp, so the peer comes back over TCP to this leg.
        # Net::SIP writes its bare contact, which means UDP.
        legs, netsip, ours = self.run_both(tcp_leg, lambda legs: [request_text()])
        hostport = legs.inbound.hostport
        self.assertEqual(netsip[0].record_route, (f"<sip:{hostport};lr>",))
        self.assertEqual(ours[0].record_route, (f"<sip:{hostport};transport=tcp;lr>",))

    def test_record_route_uri_form_default_port(self) -> None:
        # Design item 1 (Record-Route URI form): our Record-Route always
        # writes the port, Net::SIP's contact omits 5060.  The same hop.
        found = default_port_leg()
        if found is None:
            raise unittest.SkipTest("port 5060 is taken on every loopback address tried")
        legs, netsip, ours = self.run_both(lambda: found, lambda legs: [request_text()])
        addr = legs.inbound.addr
        self.assertEqual(netsip[0].record_route, (f"<sip:{addr};lr>",))
        self.assertEqual(ours[0].record_route, (f"<sip:{addr}:5060;lr>",))

    def test_double_record_route_on_transport_change(self) -> None:
        # Design item 1: crossing from UDP to TCP on the same address and
        # port gives two Record-Routes; Net::SIP's contacts are equal
        # there (no transport), so it adds one and the peer's requests
        # would come back over the wrong transport.
        legs, netsip, ours = self.run_both(udp_and_tcp_same_port, lambda legs: [request_text()])
        hostport = legs.inbound.hostport
        self.assertEqual(netsip[0].record_route, (f"<sip:{hostport};lr>",))
        self.assertEqual(
            ours[0].record_route,
            (f"<sip:{hostport};transport=tcp;lr>", f"<sip:{hostport};lr>"),
        )

    def test_max_forwards_zero_is_483(self) -> None:
        # Design item 9: Max-Forwards 0 is answered 483 (RFC 3261 §16.3
        # item 3), silently dropped for an ACK; Net::SIP reads 0 as
        # "absent" and forwards with 69.
        def build(legs: Legs) -> list[str]:
            return [request_text(max_forwards="0"), request_text("ACK", max_forwards="0")]

        _, netsip, ours = self.run_both(udp_leg, build)
        for found in netsip:
            self.assertEqual((found.refused, found.max_forwards), (False, "69"))
        self.assertEqual((ours[0].refused, ours[0].code), (True, 483))
        self.assertEqual((ours[1].refused, ours[1].code), (True, None))

    def test_max_forwards_one_is_forwarded(self) -> None:
        # Design item 9 (same rule, RFC 3261 §16.6 item 3): 1 is forwarded
        # with 0; Net::SIP decrements to 0 and drops it without an answer.
        _, netsip, ours = self.run_both(udp_leg, lambda legs: [request_text(max_forwards="1")])
        self.assertEqual((netsip[0].refused, netsip[0].code), (True, None))
        self.assertEqual((ours[0].refused, ours[0].max_forwards), (False, "0"))

    def test_response_with_foreign_top_via(self) -> None:
        # Design item 3: a response goes on only when its top Via is ours;
        # Net::SIP strips any top Via and forwards to the second one.
        def build(legs: Legs) -> list[str]:
            vias = [
                "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKforeign",
                "SIP/2.0/UDP 10.0.0.1:5080;branch=z9hG4bKuac1",
            ]
            return [response_text(vias)]

        _, netsip, ours = self.run_both(udp_leg, build)
        self.assertEqual((netsip[0].refused, netsip[0].vias), (False, 1))
        self.assertEqual((ours[0].refused, ours[0].code, ours[0].vias), (True, None, 2))

    def test_upper_case_host_strict_router(self) -> None:
        # Design item 4: host names are case-insensitive.  Net::SIP
        # compares the Request-URI with its contact as a string, so a
        # strict router that upper-cased our host name is not recognised
        # (the Request-URI stays, the target Route is left over).  A loose
        # Route with an upper-case host is ours on both sides.
        def build(legs: Legs) -> list[str]:
            upper = legs.inbound.hostport.upper()
            return [
                request_text(uri=f"sip:{upper}", routes=["<sip:bob@10.0.0.2:5090>"]),
                request_text(routes=[f"<sip:{upper};lr>", "<sip:10.0.0.9;lr>"]),
            ]

        legs, netsip, ours = self.run_both(named_leg, build)
        upper = legs.inbound.hostport.upper()
        self.assertEqual(netsip[0].uri, f"sip:{upper}")
        self.assertEqual(netsip[0].route, ("<sip:bob@10.0.0.2:5090>",))
        self.assertEqual(ours[0].uri, "sip:bob@10.0.0.2:5090")
        self.assertEqual(ours[0].route, ())
        self.assert_same_routing(netsip[1], ours[1])
        self.assertEqual(ours[1].route, ("<sip:10.0.0.9;lr>",))

    def test_strict_router_explicit_default_port(self) -> None:
        # Design item 10 (URIs compared as URIs, not as strings; Net::SIP
        # compares the strict-router Request-URI as a string): a Request-URI sip:HOST:5060
        # names a leg on 5060 whose contact is sip:HOST.  Our Record-Route
        # writes :5060 (see test_record_route_uri_form_default_port), so a
        # strict router hands exactly this form back.
        found = default_port_leg()
        if found is None:
            raise unittest.SkipTest("port 5060 is taken on every loopback address tried")

        def build(legs: Legs) -> list[str]:
            addr = legs.inbound.addr
            return [
                request_text(uri=f"sip:{addr}:5060;lr", routes=["<sip:bob@10.0.0.2:5090>"]),
                request_text(uri=f"sip:{addr}", routes=["<sip:bob@10.0.0.2:5090>"]),
            ]

        legs, netsip, ours = self.run_both(lambda: found, build)
        self.assertEqual(netsip[0].uri, f"sip:{legs.inbound.addr}:5060;lr")
        self.assertEqual(netsip[0].route, ("<sip:bob@10.0.0.2:5090>",))
        self.assertEqual((ours[0].uri, ours[0].route), ("sip:bob@10.0.0.2:5090", ()))
        # Without the port both recognise it.
        self.assert_same_routing(netsip[1], ours[1])
        self.assertEqual(ours[1].uri, "sip:bob@10.0.0.2:5090")

    def test_ipv6_compared_as_addresses(self) -> None:
        # Design item 11 (URI comparison; RFC 5954 corrects RFC 3261 so that
        # IPv6 references are equal when the addresses are): [0:0:0::1] is
        # ::1.  Net::SIP compares the text, keeps our Route and misses the
        # strict router.
        def build(legs: Legs) -> list[str]:
            port = legs.inbound.port
            return [
                request_text(routes=[f"<sip:[0:0:0::1]:{port};lr>", "<sip:10.0.0.9;lr>"]),
                request_text(uri=f"sip:[0::1]:{port}", routes=["<sip:bob@10.0.0.2:5090>"]),
            ]

        legs, netsip, ours = self.run_both(ipv6_leg, build)
        port = legs.inbound.port
        self.assertEqual(netsip[0].route, (f"<sip:[0:0:0::1]:{port};lr>", "<sip:10.0.0.9;lr>"))
        self.assertEqual(ours[0].route, ("<sip:10.0.0.9;lr>",))
        self.assertEqual(netsip[1].uri, f"sip:[0::1]:{port}")
        self.assertEqual(ours[1].uri, "sip:bob@10.0.0.2:5090")

    def test_loop_is_482(self) -> None:
        # Design item 12 (RFC 3261 §16.3 item 4): a request that comes back
        # unchanged through a leg whose Via it carries is refused with 482.
        # Net::SIP's loop check hashes the current top Via into the branch
        # it looks for, so it never matches (design item 12) and
        # only Max-Forwards ends the loop.
        legs, netsip, ours = self.run_both(udp_in_tcp_out, lambda legs: [request_text()])
        self.assertFalse(netsip[0].refused or ours[0].refused)
        netsip_back = run_netsip(legs, [returned_text(legs, netsip[0])])
        ours_back = run_sipleg(legs, [returned_text(legs, ours[0])])
        self.assertEqual((netsip_back[0].refused, netsip_back[0].max_forwards), (False, "68"))
        self.assertEqual((ours_back[0].refused, ours_back[0].code), (True, 482))
