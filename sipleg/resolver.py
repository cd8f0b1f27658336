"""
Locating SIP servers (RFC 3263) on top of C{twisted.names}.

Given the parts of a SIP or SIPS URI that matter for routing (host, port,
C{transport} and C{maddr} parameters, and whether it is a SIPS URI),
L{Resolver.resolve} produces the ordered list of transport addresses to try,
one after the other, until one accepts the request (RFC 3263 §4.3):

 1. an IP literal needs no DNS at all;
 2. a name with an explicit port is looked up with AAAA and A queries only;
 3. otherwise NAPTR records pick the transports (§4.1), SRV records of each
    transport pick servers and ports (§4.2, RFC 2782 priority and weight),
    and every SRV target is looked up with AAAA and A queries;
 4. a name with neither NAPTR nor SRV records is looked up with AAAA and A
    queries and contacted on the default port of the default transport.

Compared with Net::SIP (which asks no NAPTR, ignores SRV weights, lets an
explicit port override SRV ports and returns only the best target), every
step here follows the RFC and the whole failover list is returned.

The resolver knows nothing about SIP messages; the dispatcher hands it the
parts of the URI it routes on.
"""

from __future__ import annotations

import functools
import itertools
import random as _random
import socket
from collections.abc import Callable, Iterable, Sequence
from errno import EHOSTUNREACH, ENOPROTOOPT
from itertools import groupby
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger, LogLevel
from twisted.names import client, dns, error
from twisted.python.failure import Failure

from sipleg.address import PROTOCOLS, WEBSOCKET, Address, address, default_port, ip_family
from sipleg.errors import DeliveryError

if TYPE_CHECKING:
    from sipleg.uri import URI

__all__ = ["QUERY_TIMEOUT", "Resolver"]

#: Retransmission timeouts (seconds) of one DNS query: it is sent up to three
#: times and abandoned after 8 s, so that the NAPTR, SRV and address steps
#: together stay within the 32 s of RFC 3261 Timer B.
QUERY_TIMEOUT = (1, 3, 4)

# RFC 3263 §4.1 and the IANA registry of SIP NAPTR services: the service
# field names the transport ("D2U" UDP, "D2T" TCP, "SIPS+" TLS over TCP).
# SCTP and WebSocket services are not spoken here and are skipped.
_NAPTR_SERVICES = {b"sip+d2u": "udp", b"sip+d2t": "tcp", b"sips+d2t": "tls"}
_SIP_NAPTR_PREFIXES = (b"sip+", b"sips+")

# RFC 3263 §4.2: SRV queries use the service "_sips" for TLS and "_sip"
# otherwise, with the protocol label of the underlying transport.
_SRV_PREFIX = {"udp": b"_sip._udp.", "tcp": b"_sip._tcp.", "tls": b"_sips._tcp."}

# Every way a twisted.names lookup says "no answer": NXDOMAIN, SERVFAIL,
# REFUSED and friends (DomainError subclasses), a name outside an
# authority's zone, a timeout, a recursion failure.
_NO_ANSWER = (
    error.DomainError,
    error.AuthoritativeDomainError,
    defer.TimeoutError,
    error.ResolverError,
)

# The answer of one query: its answer and additional sections.
_Answer = tuple[list[dns.RRHeader], list[dns.RRHeader]]

# A name (lower-cased, without the final dot) -> IP addresses found for it in
# additional sections.
_Glue = dict[bytes, list[str]]


class Resolver:
    """
    RFC 3263 server location with a failover list.

    @ivar transports: the transports a result may use unless a call says
        otherwise, taken from C{("udp", "tcp", "tls")}.
    """

    log = Logger()

    def __init__(
        self,
        resolver: IResolver | None = None,
        transports: Sequence[str] = PROTOCOLS,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        @param resolver: the C{twisted.names} resolver to query; by default
            C{twisted.names.client.createResolver()}, created on first use.
        @param transports: the transports the caller can send on (usually
            the protocols of its legs); other transports are never returned.
        @param random: a function returning a uniform float in M{[0, 1)},
            used for the weighted choice among SRV records of equal priority
            (RFC 2782); pass a seeded C{random.Random().random} for
            repeatable results.
        @raise ValueError: C{transports} names an unknown transport.
        """
        self._resolver = resolver
        self.transports = _checked(transports)
        self._random = random

    def resolve(
        self,
        host: str,
        port: int | None = None,
        transport: str | None = None,
        secure: bool = False,
        maddr: str | None = None,
        *,
        transports: Sequence[str] | None = None,
        seed: str | None = None,
    ) -> Deferred[list[Address]]:
        """
        Find the servers to send a request to.

        @param host: the host of the URI: a DNS name or an IP literal (IPv6
            with or without brackets).
        @param port: the explicit port of the URI, or L{None}.
        @param transport: the C{transport} parameter of the URI, or L{None}.
        @param secure: whether the URI is a SIPS URI (TLS on every hop).
        @param maddr: the C{maddr} parameter of the URI, or L{None}; when
            given it replaces C{host} (RFC 3261 §19.1.1, RFC 3263 §4).
        @param transports: the transports allowed for this call instead of
            L{transports} (a dispatcher passes those of the legs it may use).
        @param seed: makes the weighted SRV choice a function of this text
            instead of random: a stateless proxy passes the transaction's
            identity so a retransmission, its CANCEL and its ACK reach the
            same server (RFC 3261 §16.11, RFC 3263 §4.4).
        @return: a L{Deferred} firing with the addresses to try, best first,
            without duplicates.  Each one is resolved (C{addr} set); its
            C{host} is the name that was resolved (C{maddr} or C{host}), the
            name a TLS certificate must match (RFC 5922 §4), never an SRV
            target.  It errbacks with L{DeliveryError}: C{ENOPROTOOPT} when
            no allowed transport fits the URI or the server's NAPTR records,
            C{EHOSTUNREACH} when nothing resolves.
        @raise ValueError: C{transports} names an unknown transport.
        """
        allowed = self.transports if transports is None else _checked(transports)
        try:
            numeric = _numeric(host, port, transport, secure, maddr, allowed)
        except DeliveryError as e:
            return defer.fail(e)
        if numeric is not None:
            # The common case on a proxy: no DNS, no coroutine.
            return defer.succeed(numeric)
        located = self._locate(host, port, transport, secure, maddr, allowed, seed)
        return Deferred.fromCoroutine(located)

    def resolve_uri(
        self, uri: URI, *, transports: Sequence[str] | None = None, seed: str | None = None
    ) -> Deferred[list[Address]]:
        """
        L{resolve} the parts of a parsed SIP or SIPS URI.

        @param uri: a L{sipleg.uri.URI}.
        @param transports: see L{resolve}.
        @param seed: see L{resolve}.
        @return: see L{resolve}; a URI of another scheme fails with
            C{DeliveryError(ENOPROTOOPT)}.
        """
        if not uri.is_sip:
            reason = f"cannot route to a {uri.scheme}: URI"
            return defer.fail(DeliveryError(ENOPROTOOPT, reason))
        return self.resolve(
            uri.host,
            uri.port,
            uri.transport,
            uri.is_secure,
            uri.maddr,
            transports=transports,
            seed=seed,
        )

    def resolve_now(self, uri: URI, transports: Sequence[str] | None = None) -> list[Address] | None:
        """
        L{resolve_uri} for a URI that needs no DNS (an IP literal host or
        C{maddr}): the common case on a proxy, answered with no
        L{Deferred}.

        @return: the one address to use, or L{None} when DNS is needed.
        @raise DeliveryError: C{ENOPROTOOPT} when no allowed transport fits
            (or the URI is not a SIP URI).
        """
        if not uri.is_sip:
            raise DeliveryError(ENOPROTOOPT, f"cannot route to a {uri.scheme}: URI")
        allowed = self.transports if transports is None else _checked(transports)
        return _numeric(uri.host, uri.port, uri.transport, uri.is_secure, uri.maddr, allowed)

    @property
    def _names(self) -> IResolver:
        if self._resolver is None:
            self._resolver = client.createResolver()
        return self._resolver

    async def _locate(
        self,
        host: str,
        port: int | None,
        transport: str | None,
        secure: bool,
        maddr: str | None,
        allowed: tuple[str, ...],
        seed: str | None,
    ) -> list[Address]:
        # RFC 3263 §4: TARGET is the maddr parameter when the URI has one,
        # else its host (maddr overrides the host, RFC 3261 §19.1.1).  A
        # numeric one was answered by _numeric() already.
        target = (maddr or host).strip("[]").lower().rstrip(".")
        if not target:
            raise DeliveryError(EHOSTUNREACH, "no host to send to")
        if target.endswith(".invalid") or (transport or "").lower() in WEBSOCKET:
            # RFC 6761 §6.4: never asked; RFC 7118 §5: a WebSocket client
            # (its Contact is often "xxx.invalid") is reached over the
            # connection it opened, never through DNS.
            raise DeliveryError(EHOSTUNREACH, f"{target} is reached over its own connection only")
        if not allowed or (secure and "tls" not in allowed):
            raise DeliveryError(ENOPROTOOPT, "no allowed transport for this URI")
        forced = None
        if transport is not None:
            forced = _forced_transport(transport, secure, allowed)

        if port is not None:
            # RFC 3263 §4.1: an explicit port means no NAPTR and no SRV; the
            # transport is the URI's or the default.  §4.2: "the client
            # performs an A or AAAA record lookup of the domain name" and
            # uses the port from the URI.
            proto = forced or _default_transport(secure, allowed)
            ips = await self._addresses(_query_name(target), {})
            return _finish(target, [Address(target, port, proto, addr=ip) for ip in ips])

        name = _query_name(target)
        glue: _Glue = {}
        services = None
        if forced is None:
            services = await self._naptr(name, secure, allowed, glue)
        if services is None:
            # RFC 3263 §4.1: without NAPTR records, "the client constructs
            # SRV queries for those transport protocols it supports"; for a
            # SIPS URI only TLS qualifies.  With a transport parameter only
            # that transport is asked (§4.2).
            protos = [forced] if forced else _srv_transports(secure, allowed)
            services = [(proto, _SRV_PREFIX[proto] + name) for proto in protos]
            fallback = forced or _default_transport(secure, allowed)
        else:
            # The transport NAPTR processing found most preferred.
            fallback = services[0][0]

        hops = await self._srv(services, glue, seed)
        if hops is None:
            # RFC 3263 §4.2: "If no SRV records were found, the client
            # performs an A or AAAA record lookup of the domain name", on the
            # default port of the chosen transport.
            hops = [(fallback, name, default_port(fallback))]

        targets = list(dict.fromkeys(hop_name for _, hop_name, _ in hops))
        found = await defer.gatherResults(
            [Deferred.fromCoroutine(self._addresses(hop, glue)) for hop in targets],
            consumeErrors=True,
        )
        ips_of = dict(zip(targets, found, strict=False))
        return _finish(
            target,
            [
                Address(target, hop_port, proto, addr=ip)
                for proto, hop_name, hop_port in hops
                for ip in ips_of[hop_name]
            ],
        )

    def _query(self, lookup: Callable[..., Deferred], name: bytes) -> Deferred[_Answer]:
        """
        Run one DNS query, turning "no answer" into empty sections.

        @param lookup: a C{lookup*} method of an C{IResolver}.
        @param name: the name to look up.
        @return: a L{Deferred} firing with the answer and additional
            sections; NXDOMAIN, server failures and timeouts give two empty
            lists, since RFC 3263 then moves on to the next step.
        """

        def no_answer(reason: Failure) -> _Answer:
            # Any other failure of a lookup (a malformed answer, a bug in
            # the resolver chain) is no answer either, but worth a warning:
            # resolution goes on with the next step, never stops on it.
            self.log.emit(
                LogLevel.debug if reason.check(*_NO_ANSWER) else LogLevel.warn,
                "DNS {lookup} {name} gave no answer: {reason}",
                lookup=lookup.__name__,
                name=name,
                reason=reason.getErrorMessage(),
            )
            return [], []

        d = lookup(name, timeout=QUERY_TIMEOUT)
        d.addCallback(lambda sections: (list(sections[0]), list(sections[2])))
        return d.addErrback(no_answer)

    async def _naptr(
        self, name: bytes, secure: bool, allowed: tuple[str, ...], glue: _Glue
    ) -> list[tuple[str, bytes]] | None:
        """
        RFC 3263 §4.1: the transports and SRV names NAPTR records offer.

        @return: C{(transport, SRV name)} pairs, best first; L{None} when
            the domain has no SIP NAPTR records.
        @raise DeliveryError: C{ENOPROTOOPT} when it has some, but none
            with a transport we may use.
        """
        lookup = self._names.lookupNamingAuthorityPointer
        answers, additional = await self._query(lookup, name)
        _remember(glue, additional)
        naptrs: list[dns.Record_NAPTR] = []
        for rr in answers:
            payload = rr.payload
            if isinstance(payload, dns.Record_NAPTR):
                naptrs.append(payload)
        records = [
            record for record in naptrs if record.service.string.lower().startswith(_SIP_NAPTR_PREFIXES)
        ]
        if not records:
            return None
        # RFC 3403 §4.1: lowest "order" first, then lowest "preference".
        records.sort(key=lambda record: (record.order, record.preference))
        services = []
        for record in records:
            proto = _NAPTR_SERVICES.get(record.service.string.lower())
            replacement = record.replacement.name.rstrip(b".").lower()
            # RFC 3263 §4.1: SIP uses the "s" flag (an SRV lookup of the
            # replacement follows) and no regular expression; resolving a
            # SIPS URI, only services with the SIPS protocol are kept.
            if (
                proto is None
                or proto not in allowed
                or (secure and proto != "tls")
                or record.flags.string.lower() != b"s"
                or record.regexp.string
                or not replacement
            ):
                continue
            services.append((proto, replacement))
        if not services:
            reason = f"no NAPTR record of {name.decode()} has a usable transport"
            raise DeliveryError(ENOPROTOOPT, reason)
        return services

    async def _srv(
        self, services: list[tuple[str, bytes]], glue: _Glue, seed: str | None
    ) -> list[tuple[str, bytes, int]] | None:
        """
        RFC 3263 §4.2, RFC 2782: the servers of each transport.

        @param services: C{(transport, SRV name)} pairs, best first.
        @param seed: see L{resolve}.
        @return: C{(transport, target name, port)} triples in failover
            order; L{None} when no SRV record exists at all (an empty list
            when every record says "not available").
        """
        answers = await defer.gatherResults(
            [self._query(self._names.lookupService, srv) for _, srv in services],
            consumeErrors=True,
        )
        pick = (
            self._random if seed is None else _random.Random(seed.encode("utf-8", "surrogateescape")).random
        )
        hops: list[tuple[str, bytes, int]] = []
        found = False
        for (proto, _), (records, additional) in zip(services, answers, strict=False):
            _remember(glue, additional)
            srv: list[dns.Record_SRV] = []
            for rr in records:
                if isinstance(rr.payload, dns.Record_SRV):
                    srv.append(rr.payload)
            found = found or bool(srv)
            for record in _srv_order(srv, pick):
                target = record.target.name.rstrip(b".").lower()
                # RFC 2782: 'A Target of "." means that the service is
                # decidedly not available at this domain.'
                if target:
                    hops.append((proto, target, record.port))
        return hops if found else None

    async def _addresses(self, name: bytes, glue: _Glue) -> list[str]:
        """
        The IP addresses of C{name}: IPv6 first, then IPv4.

        Addresses already given in an additional section are used as they
        are, without a query.
        """
        known = glue.get(name)
        if known:
            return known
        names = self._names
        v6, v4 = await defer.gatherResults(
            [
                self._query(names.lookupIPV6Address, name),
                self._query(names.lookupAddress, name),
            ],
            consumeErrors=True,
        )
        ips: list[str] = []
        _collect(ips, v6[0])
        _collect(ips, v4[0])
        return ips


#: Transport tuples already known to be valid (every ordered subset).
_KNOWN_SETS = frozenset(
    tuple(p for p in order if p in chosen)
    for order in itertools.permutations(PROTOCOLS)
    for size in range(1, len(PROTOCOLS) + 1)
    for chosen in itertools.combinations(order, size)
)


def _checked(transports: Sequence[str]) -> tuple[str, ...]:
    """
    C{transports} as a tuple.

    @raise ValueError: one of them is not a transport sipleg speaks.
    """
    if type(transports) is tuple and transports in _KNOWN_SETS:
        return transports
    unknown = set(transports) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown transports {sorted(unknown)}, not in {PROTOCOLS}")
    return tuple(transports)


def _numeric(
    host: str,
    port: int | None,
    transport: str | None,
    secure: bool,
    maddr: str | None,
    allowed: tuple[str, ...],
) -> list[Address] | None:
    """
    RFC 3263 §4.1-§4.2 for a numeric target: the one address to use, or
    L{None} when the target is a name (DNS is needed).  The answers for
    short hosts are cached (a proxy sends to the same few next hops over
    and over).

    @raise DeliveryError: C{ENOPROTOOPT} when no allowed transport fits.
    """
    if len(host) <= 64 and (maddr is None or len(maddr) <= 64):
        found = _numeric_cached(host, port, transport, secure, maddr, allowed)
    else:
        found = _numeric_target(host, port, transport, secure, maddr, allowed)
    return None if found is None else [found]


def _numeric_target(
    host: str,
    port: int | None,
    transport: str | None,
    secure: bool,
    maddr: str | None,
    allowed: tuple[str, ...],
) -> Address | None:
    target = (maddr or host).strip("[]")
    if ip_family(target) is None:
        return None
    if not allowed or (secure and "tls" not in allowed):
        raise DeliveryError(ENOPROTOOPT, "no allowed transport for this URI")
    proto = _forced_transport(transport, secure, allowed) if transport else None
    proto = proto or _default_transport(secure, allowed)
    return address(target, default_port(proto) if port is None else port, proto)


_numeric_cached = functools.lru_cache(maxsize=4096)(_numeric_target)


def _forced_transport(transport: str, secure: bool, allowed: tuple[str, ...]) -> str:
    """
    The transport a C{transport} URI parameter asks for.

    @raise DeliveryError: C{ENOPROTOOPT} when it is unknown, impossible or
        not C{allowed}.
    """
    proto: str | None = transport.lower()
    if secure:
        # RFC 3261 §26.2.2: a SIPS URI means TLS; "transport=tcp" (its usual
        # form) and "tls" both select TLS over TCP, UDP is out.
        proto = "tls" if proto in ("tcp", "tls") else ("wss" if proto in WEBSOCKET else None)
    elif proto in WEBSOCKET:
        # RFC 7118 §5.2: "ws" names either WebSocket transport.
        proto = "ws" if "ws" in allowed else "wss"
    elif proto not in PROTOCOLS:
        proto = None
    if proto is None or proto not in allowed:
        reason = f"no usable transport for transport={transport}"
        raise DeliveryError(ENOPROTOOPT, reason)
    return proto


def _default_transport(secure: bool, allowed: tuple[str, ...]) -> str:
    """
    The transport of a URI that names none when DNS does not choose one.

    RFC 3263 §4.1: UDP for a SIP URI, TLS over TCP for a SIPS URI.  When UDP
    is not allowed, TCP, the other transport every SIP element implements
    (RFC 3261 §18), is used instead.

    @raise DeliveryError: C{ENOPROTOOPT} when neither is allowed.
    """
    for proto in ("tls",) if secure else ("udp", "tcp"):
        if proto in allowed:
            return proto
    raise DeliveryError(ENOPROTOOPT, "no allowed transport for this URI")


def _srv_transports(secure: bool, allowed: tuple[str, ...]) -> list[str]:
    """
    The transports to ask SRV records of when there are no NAPTR records,
    in the order C{_sip._udp}, C{_sip._tcp}, C{_sips._tcp}.

    @raise DeliveryError: C{ENOPROTOOPT} when none is allowed.
    """
    candidates = ("tls",) if secure else tuple(_SRV_PREFIX)
    protos = [proto for proto in candidates if proto in allowed]
    if not protos:
        raise DeliveryError(ENOPROTOOPT, "no allowed transport for this URI")
    return protos


def _query_name(target: str) -> bytes:
    """
    C{target} as a DNS name.

    @raise DeliveryError: C{EHOSTUNREACH} when it cannot be one.
    """
    try:
        return dns.domainString(target)
    except UnicodeError as e:
        raise DeliveryError(EHOSTUNREACH, f"bad host name {target!r}") from e


def _finish(target: str, addresses: list[Address]) -> list[Address]:
    """
    Drop repeated addresses, keeping the first of each.

    @raise DeliveryError: C{EHOSTUNREACH} when nothing is left.
    """
    unique = list(dict.fromkeys(addresses))
    if not unique:
        raise DeliveryError(EHOSTUNREACH, f"cannot resolve {target}")
    return unique


def _collect(ips: list[str], records: Iterable[dns.RRHeader]) -> None:
    """
    Append the address of every A and AAAA record to C{ips}.  Other records
    (such as the CNAME records leading to them) are skipped.
    """
    for rr in records:
        if isinstance(rr.payload, dns.Record_AAAA):
            ips.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
        elif isinstance(rr.payload, dns.Record_A):
            ips.append(rr.payload.dottedQuad())


def _remember(glue: _Glue, additional: list[dns.RRHeader]) -> None:
    """
    File the A and AAAA records of an additional section under their owner
    names, IPv6 before IPv4 (RFC 2782: "Additional Data").
    """
    owners: dict[bytes, list[dns.RRHeader]] = {}
    for rr in additional:
        if rr.type in (dns.A, dns.AAAA):
            owners.setdefault(rr.name.name.rstrip(b".").lower(), []).append(rr)
    for owner, records in owners.items():
        ips: list[str] = []
        _collect(ips, sorted(records, key=lambda rr: rr.type != dns.AAAA))
        glue[owner] = ips


def _srv_order(records: list[dns.Record_SRV], random: Callable[[], float]) -> list[dns.Record_SRV]:
    """
    Order SRV records as RFC 2782 asks: by ascending priority, and within
    one priority by repeated weighted random choice.

    @param records: the SRV records of one name.
    @param random: returns a uniform float in M{[0, 1)}.
    @return: the records, the one to try first at the front.
    """
    ordered: list[dns.Record_SRV] = []
    by_priority = sorted(records, key=lambda record: record.priority)
    for _, group in groupby(by_priority, key=lambda record: record.priority):
        # "arrange all SRV RRs (that have not been ordered yet) in any
        # order, except that all those with weight 0 are placed at the
        # beginning of the list."
        pending = sorted(group, key=lambda record: record.weight != 0)
        while pending:
            total = sum(record.weight for record in pending)
            # "choose a uniform random number between 0 and the sum
            # computed (inclusive), and select the RR whose running sum
            # value is the first in the selected order which is greater
            # than or equal to the random number selected."
            pick = min(int(random() * (total + 1)), total)
            running = 0
            chosen = len(pending) - 1
            for index, record in enumerate(pending):
                running += record.weight
                if running >= pick:
                    chosen = index
                    break
            ordered.append(pending.pop(chosen))
    return ordered
