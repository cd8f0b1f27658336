"""
Tests for L{sipleg.resolver}.

Every DNS test runs a real authoritative server (C{twisted.names.server})
on 127.0.0.1, port 0, answering from records held in memory, and points a
real C{twisted.names.client.Resolver} at it: each query crosses a socket.
The server records the queries it sees, so the tests can also check which
lookups RFC 3263 skips.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from errno import EHOSTUNREACH, ENOPROTOOPT
from typing import Any

from twisted.internet import defer, reactor
from twisted.names import authority, client, dns, error, server
from twisted.trial.unittest import TestCase

from sipleg import resolver as resolver_module
from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.resolver import Resolver, _srv_order
from sipleg.uri import parse_uri

ZONE = b"example.test"


def naptr(
    order: int,
    preference: int,
    service: bytes,
    replacement: bytes,
    flags: bytes = b"s",
    regexp: bytes = b"",
) -> dns.Record_NAPTR:
    return dns.Record_NAPTR(order, preference, flags, service, regexp, replacement)


def srv(priority: int, weight: int, port: int, target: bytes) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target)


A = dns.Record_A
AAAA = dns.Record_AAAA

RECORDS: dict[bytes, list[Any]] = {
    ZONE: [],
    # Servers.
    b"s1.example.test": [A("192.0.2.1")],
    b"a.example.test": [A("192.0.2.21")],
    b"alias-a.example.test": [A("192.0.2.21")],
    b"b.example.test": [A("192.0.2.22"), AAAA("2001:db8::22")],
    b"c.example.test": [A("192.0.2.23")],
    # A name with NAPTR and SRV records and addresses of its own.
    b"host.example.test": [
        A("192.0.2.10"),
        AAAA("2001:db8::10"),
        naptr(10, 10, b"SIP+D2U", b"_sip._udp.host.example.test"),
    ],
    b"_sip._udp.host.example.test": [srv(0, 0, 5099, b"c.example.test")],
    b"_sip._tcp.host.example.test": [srv(0, 0, 5098, b"c.example.test")],
    # NAPTR: order then preference; replacements that are not the usual
    # SRV names; records SIP does not use.
    b"naptr.example.test": [
        naptr(20, 10, b"SIP+D2U", b"udp-servers.naptr.example.test"),
        naptr(10, 20, b"SIP+D2T", b"tcp-servers.naptr.example.test"),
        naptr(10, 10, b"SIPS+D2T", b"tls-servers.naptr.example.test"),
        naptr(1, 1, b"SIP+D2S", b"sctp-servers.naptr.example.test"),
        naptr(2, 1, b"E2U+sip", b"", flags=b"u", regexp=b"!^.*$!sip:x@y!"),
        naptr(3, 1, b"SIP+D2U", b"", flags=b"u", regexp=b"!^.*$!sip:x@y!"),
    ],
    b"udp-servers.naptr.example.test": [srv(0, 0, 5060, b"s1.example.test")],
    b"tcp-servers.naptr.example.test": [srv(0, 0, 5062, b"s1.example.test")],
    b"tls-servers.naptr.example.test": [srv(0, 0, 5061, b"s1.example.test")],
    b"sipsonly.example.test": [
        naptr(10, 10, b"SIPS+D2T", b"_sips._tcp.sipsonly.example.test"),
    ],
    b"_sips._tcp.sipsonly.example.test": [srv(0, 0, 5061, b"s1.example.test")],
    # NAPTR records whose SRV names do not exist: A/AAAA of the name, on the
    # most preferred NAPTR transport.
    b"naptr-nosrv.example.test": [
        A("192.0.2.70"),
        naptr(10, 10, b"SIP+D2T", b"_sip._tcp.naptr-nosrv.example.test"),
    ],
    # SRV without NAPTR: priorities and weights.
    b"srv.example.test": [A("192.0.2.99")],
    b"_sip._udp.srv.example.test": [
        srv(10, 10, 5070, b"a.example.test"),
        srv(10, 90, 5071, b"b.example.test"),
        srv(5, 0, 5072, b"c.example.test"),
    ],
    b"_sip._tcp.srv.example.test": [srv(0, 0, 5080, b"c.example.test")],
    b"_sips._tcp.srv.example.test": [srv(0, 0, 5081, b"c.example.test")],
    # No NAPTR, no SRV.
    b"plain.example.test": [A("192.0.2.30"), AAAA("2001:db8::30")],
    # "." targets.
    b"dot.example.test": [A("192.0.2.40")],
    b"_sip._udp.dot.example.test": [srv(0, 0, 0, b".")],
    b"_sip._tcp.dot.example.test": [srv(0, 0, 5090, b"a.example.test")],
    b"down.example.test": [A("192.0.2.50")],
    b"_sip._udp.down.example.test": [srv(0, 0, 0, b".")],
    b"_sip._tcp.down.example.test": [srv(0, 0, 0, b".")],
    b"_sips._tcp.down.example.test": [srv(0, 0, 0, b".")],
    # Two targets with the same address, one record twice.
    b"_sip._udp.dup.example.test": [
        srv(1, 0, 5060, b"a.example.test"),
        srv(2, 0, 5060, b"alias-a.example.test"),
        srv(3, 0, 5060, b"a.example.test"),
        srv(4, 0, 5064, b"a.example.test"),
    ],
    # A target that does not resolve is skipped.
    b"_sip._udp.partial.example.test": [
        srv(1, 0, 5060, b"ghost.example.test"),
        srv(2, 0, 5060, b"c.example.test"),
    ],
    # Addresses of the target sent as additional records.
    b"_sip._udp.glue.example.test": [srv(0, 0, 5060, b"g.example.test")],
    b"g.example.test": [A("192.0.2.60"), AAAA("2001:db8::60")],
}


class MemoryAuthority(authority.FileAuthority):
    """
    An authority for L{ZONE} answering from L{RECORDS}, remembering each
    query, and adding the A/AAAA records of SRV targets to the additional
    section for the SRV names in C{glued} (RFC 2782 "Additional Data").
    """

    def __init__(self, records: dict[bytes, list[Any]], glued: Sequence[bytes]) -> None:
        self.queries: list[tuple[bytes, int]] = []
        self.glued = set(glued)
        super().__init__(records)

    def loadFile(self, records: dict[bytes, list[Any]]) -> None:
        soa = dns.Record_SOA(
            mname=b"ns." + ZONE,
            rname=b"root." + ZONE,
            serial=1,
            refresh=60,
            retry=60,
            expire=60,
            minimum=60,
        )
        self.soa = (ZONE, soa)
        self.records = {name: list(recs) for name, recs in records.items()}

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        self.queries.append((name.lower(), type))
        return super()._lookup(name, cls, type, timeout)

    def _additionalRecords(self, answer: Any, authority: Any, ttl: int) -> Iterator[Any]:
        yield from super()._additionalRecords(answer, authority, ttl)
        for rr in answer:
            if rr.type == dns.SRV and rr.name.name.lower() in self.glued:
                target = rr.payload.target.name
                for record in self.records.get(target.lower(), ()):
                    if record.TYPE in (dns.A, dns.AAAA):
                        yield dns.RRHeader(target, record.TYPE, dns.IN, ttl, record)


class TimingOut:
    """
    A resolver whose NAPTR queries time out; the rest go to C{real}.
    """

    def __init__(self, real: client.Resolver) -> None:
        self.real = real

    def lookupNamingAuthorityPointer(self, name: bytes, timeout: Any = None) -> Any:
        return defer.fail(error.DNSQueryTimeoutError(name))

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.real, attribute)


def udp(host: str, port: int, addr: str) -> Address:
    return Address(host, port, "udp", addr=addr)


def tcp(host: str, port: int, addr: str) -> Address:
    return Address(host, port, "tcp", addr=addr)


def tls(host: str, port: int, addr: str) -> Address:
    return Address(host, port, "tls", addr=addr)


class ResolverTests(TestCase):
    """
    RFC 3263 resolution against a real DNS server on the loopback.
    """

    def setUp(self) -> None:
        self.serve(glued=())

    def serve(self, glued: Sequence[bytes]) -> None:
        self.authority = MemoryAuthority(RECORDS, glued)
        factory = server.DNSServerFactory(authorities=[self.authority])
        port = reactor.listenUDP(  # type: ignore[attr-defined]
            0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.dns = client.Resolver(servers=[("127.0.0.1", port.getHost().port)])

    def resolver(
        self,
        transports: Sequence[str] = ("udp", "tcp", "tls"),
        random: Callable[[], float] = lambda: 0.0,
    ) -> Resolver:
        return Resolver(self.dns, transports=transports, random=random)

    def asked(self) -> set[tuple[bytes, int]]:
        return set(self.authority.queries)

    async def assertFails(self, d: defer.Deferred[Any], errno: int) -> DeliveryError:
        failure = await self.assertFailure(d, DeliveryError)
        self.assertEqual(failure.errno, errno)
        return failure

    # IP literals: no DNS at all.

    async def test_ipv4_literal(self) -> None:
        found = await self.resolver().resolve("192.0.2.1")
        self.assertEqual(found, [Address("192.0.2.1", 5060, "udp")])
        self.assertEqual(found[0].addr, "192.0.2.1")
        self.assertEqual(self.authority.queries, [])

    async def test_ipv6_literal(self) -> None:
        found = await self.resolver().resolve("[2001:DB8::1]", 5070)
        self.assertEqual(found, [Address("2001:db8::1", 5070, "udp")])
        found = await self.resolver().resolve("2001:db8::1", transport="TCP")
        self.assertEqual(found, [Address("2001:db8::1", 5060, "tcp")])
        self.assertEqual(self.authority.queries, [])

    async def test_literal_secure(self) -> None:
        """
        A SIPS URI goes over TLS to 5061; C{transport=tcp} in a SIPS URI
        still means TLS; a SIP URI may ask for TLS explicitly.
        """
        r = self.resolver()
        expected = [Address("192.0.2.1", 5061, "tls")]
        self.assertEqual(await r.resolve("192.0.2.1", secure=True), expected)
        self.assertEqual(await r.resolve("192.0.2.1", transport="tcp", secure=True), expected)
        self.assertEqual(await r.resolve("192.0.2.1", transport="tls"), expected)

    async def test_literal_without_udp(self) -> None:
        """
        With UDP not allowed, a SIP URI without transport falls back to TCP.
        """
        found = await self.resolver(transports=("tcp",)).resolve("192.0.2.1")
        self.assertEqual(found, [Address("192.0.2.1", 5060, "tcp")])

    # Explicit port: only A and AAAA.

    async def test_explicit_port(self) -> None:
        found = await self.resolver().resolve("Host.Example.Test", 5080)
        host = "host.example.test"
        self.assertEqual(found, [udp(host, 5080, "2001:db8::10"), udp(host, 5080, "192.0.2.10")])
        self.assertEqual(
            self.asked(),
            {(b"host.example.test", dns.AAAA), (b"host.example.test", dns.A)},
        )

    async def test_explicit_port_and_transport(self) -> None:
        found = await self.resolver().resolve("host.example.test", 5081, "tcp")
        self.assertEqual([a.proto for a in found], ["tcp", "tcp"])
        self.assertEqual({a.port for a in found}, {5081})

    # Explicit transport, no port: SRV of that transport only.

    async def test_explicit_transport(self) -> None:
        found = await self.resolver().resolve("host.example.test", transport="tcp")
        self.assertEqual(found, [tcp("host.example.test", 5098, "192.0.2.23")])
        self.assertNotIn((b"host.example.test", dns.NAPTR), self.asked())
        self.assertNotIn((b"_sip._udp.host.example.test", dns.SRV), self.asked())

    async def test_explicit_transport_without_srv(self) -> None:
        """
        No SRV record for the transport asked: A/AAAA of the name on the
        default port of that transport.
        """
        found = await self.resolver().resolve("plain.example.test", transport="tls")
        host = "plain.example.test"
        self.assertEqual(found, [tls(host, 5061, "2001:db8::30"), tls(host, 5061, "192.0.2.30")])
        self.assertIn((b"_sips._tcp.plain.example.test", dns.SRV), self.asked())

    # NAPTR.

    async def test_naptr_order(self) -> None:
        """
        NAPTR records sort by order then preference; services SIP does not
        speak here (SCTP) and non-"s" records are skipped; the SRV lookups
        use the replacement names.
        """
        found = await self.resolver().resolve("naptr.example.test")
        host = "naptr.example.test"
        self.assertEqual(
            found,
            [
                tls(host, 5061, "192.0.2.1"),
                tcp(host, 5062, "192.0.2.1"),
                udp(host, 5060, "192.0.2.1"),
            ],
        )
        self.assertNotIn((b"sctp-servers.naptr.example.test", dns.SRV), self.asked())
        self.assertNotIn((b"_sip._udp.naptr.example.test", dns.SRV), self.asked())

    async def test_naptr_transport_filter(self) -> None:
        found = await self.resolver(transports=("udp", "tcp")).resolve("naptr.example.test")
        self.assertEqual([(a.proto, a.port) for a in found], [("tcp", 5062), ("udp", 5060)])
        self.assertNotIn((b"tls-servers.naptr.example.test", dns.SRV), self.asked())

    async def test_naptr_per_call_transports(self) -> None:
        """
        C{transports} given to L{Resolver.resolve} replaces the
        constructor's for that call.
        """
        r = self.resolver(transports=("tls",))
        found = await r.resolve("naptr.example.test", transports=("udp",))
        self.assertEqual([(a.proto, a.port) for a in found], [("udp", 5060)])

    async def test_naptr_secure(self) -> None:
        found = await self.resolver().resolve("naptr.example.test", secure=True)
        self.assertEqual(found, [tls("naptr.example.test", 5061, "192.0.2.1")])

    async def test_naptr_no_usable_transport(self) -> None:
        r = self.resolver(transports=("udp", "tcp"))
        await self.assertFails(r.resolve("sipsonly.example.test"), ENOPROTOOPT)

    async def test_naptr_without_srv(self) -> None:
        found = await self.resolver().resolve("naptr-nosrv.example.test")
        self.assertEqual(found, [tcp("naptr-nosrv.example.test", 5060, "192.0.2.70")])

    async def test_naptr_timeout(self) -> None:
        """
        A NAPTR query that times out counts as no NAPTR record: SRV next.
        """
        r = Resolver(TimingOut(self.dns), random=lambda: 0.0)  # type: ignore[arg-type]
        found = await r.resolve("srv.example.test", secure=True)
        self.assertEqual(found, [tls("srv.example.test", 5081, "192.0.2.23")])

    # SRV.

    async def test_srv_priority_weight(self) -> None:
        """
        Without NAPTR: SRV of udp, tcp and tls in that order; within each,
        priority first, then the weighted choice.  With the random number
        at 0 the first record of priority 10 (weight 10) wins.
        """
        found = await self.resolver().resolve("srv.example.test")
        host = "srv.example.test"
        self.assertEqual(
            found,
            [
                udp(host, 5072, "192.0.2.23"),
                udp(host, 5070, "192.0.2.21"),
                udp(host, 5071, "2001:db8::22"),
                udp(host, 5071, "192.0.2.22"),
                tcp(host, 5080, "192.0.2.23"),
                tls(host, 5081, "192.0.2.23"),
            ],
        )
        self.assertNotIn((b"srv.example.test", dns.A), self.asked())

    async def test_srv_weight_high_draw(self) -> None:
        """
        A random number near 1 picks the record of weight 90 first.
        """
        found = await self.resolver(random=lambda: 0.99).resolve("srv.example.test", transport="udp")
        self.assertEqual([a.port for a in found], [5072, 5071, 5071, 5070])

    async def test_srv_choice_follows_the_seed(self) -> None:
        """
        With a seed the weighted choice is a function of it, whatever the
        resolver's own random source says (RFC 3261 §16.11): the same
        transaction always reaches the same server, and different
        transactions still spread over the weights.
        """
        firsts = set()
        for call in range(40):
            orders = []
            for draw in (0.0, 0.99):
                found = await self.resolver(random=lambda draw=draw: draw).resolve(
                    "srv.example.test", transport="udp", seed=f"call-{call} 1"
                )
                orders.append([a.port for a in found])
            self.assertEqual(orders[0], orders[1])
            # 5072 has the best priority; then weight 10 (5070) or 90 (5071).
            firsts.add(orders[0][1])
        self.assertEqual(firsts, {5070, 5071})

    async def test_srv_seeded_random(self) -> None:
        """
        The same seed gives the same order.
        """
        orders = []
        for _ in range(2):
            r = self.resolver(random=random.Random(7).random)
            found = await r.resolve("srv.example.test", transport="udp")
            orders.append([a.port for a in found])
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0][0], 5072)
        self.assertEqual(sorted(orders[0]), [5070, 5071, 5071, 5072])

    async def test_no_srv(self) -> None:
        """
        No NAPTR and no SRV: AAAA then A of the name, UDP on 5060 for a SIP
        URI, TLS on 5061 for a SIPS URI.
        """
        host = "plain.example.test"
        found = await self.resolver().resolve(host)
        self.assertEqual(found, [udp(host, 5060, "2001:db8::30"), udp(host, 5060, "192.0.2.30")])
        found = await self.resolver().resolve(host, secure=True)
        self.assertEqual(found, [tls(host, 5061, "2001:db8::30"), tls(host, 5061, "192.0.2.30")])

    async def test_dot_target(self) -> None:
        """
        A "." target means "not available": it is not looked up, the other
        transport is used and the name's own A record is not.
        """
        found = await self.resolver().resolve("dot.example.test")
        self.assertEqual(found, [tcp("dot.example.test", 5090, "192.0.2.21")])
        self.assertEqual(
            {name for name, kind in self.asked() if kind in (dns.A, dns.AAAA)},
            {b"a.example.test"},
        )

    async def test_all_dot_targets(self) -> None:
        await self.assertFails(self.resolver().resolve("down.example.test"), EHOSTUNREACH)
        self.assertEqual({kind for _, kind in self.asked()}, {dns.NAPTR, dns.SRV})

    async def test_duplicates_removed(self) -> None:
        found = await self.resolver().resolve("dup.example.test", transport="udp")
        host = "dup.example.test"
        self.assertEqual(found, [udp(host, 5060, "192.0.2.21"), udp(host, 5064, "192.0.2.21")])

    async def test_unresolvable_target_skipped(self) -> None:
        found = await self.resolver().resolve("partial.example.test", transport="udp")
        self.assertEqual(found, [udp("partial.example.test", 5060, "192.0.2.23")])

    async def test_additional_records(self) -> None:
        """
        Addresses sent in the additional section of the SRV answer are used
        without asking for them.
        """
        self.serve(glued=(b"_sip._udp.glue.example.test",))
        found = await self.resolver().resolve("glue.example.test", transport="udp")
        host = "glue.example.test"
        self.assertEqual(found, [udp(host, 5060, "2001:db8::60"), udp(host, 5060, "192.0.2.60")])
        self.assertEqual(self.asked(), {(b"_sip._udp.glue.example.test", dns.SRV)})

    # Failures.

    async def test_nxdomain(self) -> None:
        await self.assertFails(self.resolver().resolve("missing.example.test"), EHOSTUNREACH)
        await self.assertFails(self.resolver().resolve("missing.example.test", 5060), EHOSTUNREACH)

    async def test_outside_zone(self) -> None:
        """
        A refused query (the server is not authoritative) is no answer.
        """
        await self.assertFails(self.resolver().resolve("elsewhere.invalid"), EHOSTUNREACH)

    async def test_transport_not_allowed(self) -> None:
        r = self.resolver(transports=("tcp",))
        await self.assertFails(r.resolve("192.0.2.1", transport="udp"), ENOPROTOOPT)
        await self.assertFails(r.resolve("plain.example.test", secure=True), ENOPROTOOPT)
        await self.assertFails(r.resolve("192.0.2.1", 5061, secure=True), ENOPROTOOPT)
        self.assertEqual(self.authority.queries, [])

    async def test_transport_impossible(self) -> None:
        r = self.resolver()
        await self.assertFails(r.resolve("192.0.2.1", transport="sctp"), ENOPROTOOPT)
        await self.assertFails(r.resolve("192.0.2.1", transport="udp", secure=True), ENOPROTOOPT)

    async def test_bad_name(self) -> None:
        await self.assertFails(self.resolver().resolve("a..b.example.test"), EHOSTUNREACH)

    # maddr.

    async def test_maddr_ip(self) -> None:
        found = await self.resolver().resolve("nowhere.invalid", 5070, "tcp", maddr="192.0.2.7")
        self.assertEqual(found, [Address("192.0.2.7", 5070, "tcp")])
        self.assertEqual(self.authority.queries, [])

    async def test_maddr_name(self) -> None:
        found = await self.resolver().resolve("nowhere.invalid", maddr="plain.example.test")
        host = "plain.example.test"
        self.assertEqual(found, [udp(host, 5060, "2001:db8::30"), udp(host, 5060, "192.0.2.30")])
        self.assertNotIn(b"nowhere.invalid", {name for name, _ in self.asked()})

    # URIs.

    async def test_resolve_uri(self) -> None:
        r = self.resolver()
        found = await r.resolve_uri(parse_uri("sips:alice@naptr.example.test"))
        self.assertEqual(found, [tls("naptr.example.test", 5061, "192.0.2.1")])
        found = await r.resolve_uri(
            parse_uri("sip:bob@plain.example.test:5090;transport=TCP;maddr=192.0.2.8")
        )
        self.assertEqual(found, [Address("192.0.2.8", 5090, "tcp")])
        found = await r.resolve_uri(parse_uri("sip:[2001:db8::9]"), transports=("tcp",))
        self.assertEqual(found, [Address("2001:db8::9", 5060, "tcp")])
        await self.assertFails(r.resolve_uri(parse_uri("tel:+123")), ENOPROTOOPT)


class ResolverSetupTests(TestCase):
    """
    Construction and the default resolver.
    """

    def test_unknown_transport(self) -> None:
        self.assertRaises(ValueError, Resolver, transports=("udp", "sctp"))
        self.assertRaises(ValueError, Resolver().resolve, "192.0.2.1", transports=("sctp",))

    async def test_default_resolver_lazy(self) -> None:
        """
        The system resolver is made on the first lookup and then kept; IP
        literals never need it.
        """
        made = []

        def fake() -> client.Resolver:
            made.append(True)
            return TimingOut(NoRecords())  # type: ignore[return-value]

        self.patch(resolver_module.client, "createResolver", fake)
        r = Resolver()
        self.assertEqual(await r.resolve("192.0.2.1"), [Address("192.0.2.1", 5060)])
        self.assertEqual(made, [])
        for _ in range(2):
            failure = await self.assertFailure(r.resolve("example.test"), DeliveryError)
            self.assertEqual(failure.errno, EHOSTUNREACH)
        self.assertEqual(made, [True])


class NoRecords:
    """
    A resolver for which every name is NXDOMAIN.
    """

    def __getattr__(self, attribute: str) -> Any:
        return lambda name, timeout=None: defer.fail(error.DNSNameError(name))


class SRVOrderTests(TestCase):
    """
    L{_srv_order}: RFC 2782 ordering by priority and weight.
    """

    def test_priority(self) -> None:
        records = [srv(20, 0, 1, b"x"), srv(10, 0, 2, b"y"), srv(30, 0, 3, b"z")]
        self.assertEqual([r.port for r in _srv_order(records, lambda: 0.5)], [2, 1, 3])

    def test_weight_zero_first_draw(self) -> None:
        """
        Weight-0 records go to the front before the draw, so a draw of 0
        picks one of them.
        """
        records = [srv(0, 5, 1, b"x"), srv(0, 0, 2, b"y")]
        self.assertEqual([r.port for r in _srv_order(records, lambda: 0.0)], [2, 1])
        self.assertEqual([r.port for r in _srv_order(records, lambda: 0.9)], [1, 2])

    def test_random_at_one(self) -> None:
        """
        A random function returning 1.0 does not run past the list.
        """
        records = [srv(0, 1, 1, b"x"), srv(0, 1, 2, b"y")]
        self.assertEqual([r.port for r in _srv_order(records, lambda: 1.0)], [2, 1])

    def test_weight_distribution(self) -> None:
        """
        Over many draws, each record comes first about in proportion to its
        weight; weight 0 almost never.
        """
        rng = random.Random(3263)
        records = [
            srv(0, 10, 1, b"x"),
            srv(0, 30, 2, b"y"),
            srv(0, 60, 3, b"z"),
            srv(0, 0, 4, b"w"),
        ]
        firsts = Counter(_srv_order(records, rng.random)[0].port for _ in range(4000))
        for port, share in [(1, 0.10), (2, 0.30), (3, 0.60)]:
            self.assertLess(abs(firsts[port] / 4000 - share), 0.03, (port, firsts))
        self.assertLess(firsts[4], 100)

    def test_all_kept(self) -> None:
        rng = random.Random(1)
        records = [srv(p, w, n, b"t") for n, (p, w) in enumerate([(1, 0), (1, 5), (2, 7), (1, 5), (2, 0)])]
        for _ in range(50):
            ordered = _srv_order(records, rng.random)
            self.assertEqual(sorted(r.port for r in ordered), [0, 1, 2, 3, 4])
            self.assertEqual([r.priority for r in ordered], [1, 1, 1, 2, 2])
