"""
L{Leg}: one listening SIP transport plus the header work a proxy does on
each side of it.

A leg is the Python counterpart of Perl's C{Net::SIP::Leg}.  It owns a
socket pool (L{sipleg.transport}) that moves bytes, and it knows its own
identity on the wire: the Via it adds to requests, the Record-Route it puts
in front of a dialog, the branch prefix by which it recognises responses to
what it sent.  A forwarding proxy calls L{Leg.forward_incoming} on the leg a
request arrived on and L{Leg.forward_outgoing} on the leg it leaves by, then
L{Leg.deliver}.

Header surgery follows RFC 3261 §16 (and Net::SIP where the RFC leaves a
choice); see C{docs/design.md} in the project for the list of places where
we deliberately differ from Net::SIP.
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipleg.address import (
    PROTOCOLS,
    WEBSOCKET,
    Address,
    bracket,
    default_port,
    ip_family,
    split_hostport,
    uri_transport,
)
from sipleg.branch import MAGIC_COOKIE, leg_prefix, loop_hash, tid_hash, transaction_hash
from sipleg.decision import (
    LegSet,
    carries_loop,
    from_tag,
    leg_identity,
    next_max_forwards,
    restore_strict_route,
    route_value_uri,
    strip_own_routes,
)
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.message import Message, Request, Response, parse_message
from sipleg.transport.base import ISocketPool, send_deferred
from sipleg.uri import URI, parse_uri, parse_via, route_uri, uri_equal, via_branch

if TYPE_CHECKING:
    from sipleg.transport.base import StreamLimits
    from sipleg.transport.tls import TLSConfig

__all__ = ["Leg", "ForwardRefused", "BadMessage", "MAGIC_COOKIE"]

log = Logger()

#: How many request transaction ids a stream leg remembers, to send the
#: response back on the connection its request arrived on.
_TID_MEMORY = 4096

#: The longest transaction id remembered (a Call-ID and a CSeq number): the
#: memory stays below a few megabytes whatever peers send.
_TID_LENGTH = 256

#: RFC 3261 §16.6 item 3 / §16.3 item 3: the Max-Forwards we cap at.
DEFAULT_MAX_FORWARDS = 70


@dataclass(frozen=True)
class ForwardRefused:
    """
    Why L{Leg.forward_incoming} or L{Leg.forward_outgoing} will not let a
    packet through.

    @ivar code: the SIP status to answer a request with (483, 482 ...), or
        L{None} when the packet is to be dropped silently (responses, ACK).
    @ivar reason: what happened, for the reason phrase and the log.
    """

    code: int | None
    reason: str


@dataclass(frozen=True)
class BadMessage:
    """
    Bytes that arrived on a leg but are not a SIP message.

    Handed to the leg's receiver in place of a packet so that the layer
    above can answer a broken request (400, 505 ...) when it can.

    @ivar error: what the parser found wrong.
    @ivar data: the raw bytes.
    """

    error: SIPParseError
    data: bytes


#: What a leg hands up: the packet (or a L{BadMessage}), where it came
#: from, and the leg itself.
LegReceiver = Callable[[Message | BadMessage, Address, "Leg"], None]

Spec = Address | str | URI | None


class Leg(Service):
    """
    One listening SIP transport (UDP, TCP, TLS, or WebSocket socket) and
    its identity.

    @ivar proto: C{"udp"}, C{"tcp"}, C{"tls"}, C{"ws"} or C{"wss"}.
    @ivar host: the name used in Via, Contact and Record-Route (defaults to
        the IP address).
    @ivar branch: the branch prefix of this leg (RFC 3261 magic cookie plus a
        hash of address, port and transport, or a random tag for an
        ephemeral port).  Every Via this leg adds starts its branch with it.
    @ivar dst: the fixed peer of the leg, if any.
    @ivar max_forwards: the cap applied to Max-Forwards of forwarded
        requests.
    @ivar receiver: called with C{(packet, source, leg)} for every packet
        that arrives; set by the dispatcher.
    @cvar identities_made: how many leg identities were made (a leg makes a
        new one when it learns its port or its Max-Forwards cap changes):
        a cache of identities is stale when this moved.
    """

    identities_made = 0

    def __init__(
        self,
        addr: str | None = None,
        port: int | None = None,
        proto: str | None = None,
        host: str | None = None,
        family: int | None = None,
        dst: Spec = None,
        contact: str | None = None,
        tls: TLSConfig | Mapping[str, Any] | None = None,
        sock: socket.socket | None = None,
        socketpool: ISocketPool | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        branch: str | None = None,
        max_forwards: int = DEFAULT_MAX_FORWARDS,
        receiver: LegReceiver | None = None,
        trace: bool = False,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        """
        @param addr: the local IP address, optionally with a port
            (C{"127.0.0.1:5070"}, C{"[::1]:5070"}).  Defaults to
            C{127.0.0.1} (or the address of C{sock} / C{socketpool}).
        @param port: the local port; default 5060 (5061 for TLS); C{0}
            binds an ephemeral port.
        @param proto: C{"udp"}, C{"tcp"}, C{"tls"}, C{"ws"} or C{"wss"}
            (RFC 7118; these need a port); default C{"tls"} when C{tls} is
            given, else derived from C{sock}, else C{"udp"}.
        @param host: the host name for Via/Contact/Record-Route and for TLS
            names; defaults to the address.
        @param family: C{AF_INET} or C{AF_INET6}; derived from C{addr}.
        @param dst: a fixed peer (L{Address}, C{"ip:port"} or SIP URI):
            a UDP socket is connected to it, a stream pool only talks to it.
        @param contact: the contact URI of the leg; default C{sip:} (or
            C{sips:}) plus the address, with C{;transport=tcp} on TCP.
        @param tls: a L{TLSConfig} or a mapping of its arguments (C{cert},
            C{key}, C{ca}, C{verify_client}).
        @param sock: an already bound socket to adopt.
        @param socketpool: a socket pool to share with another leg; this
            leg becomes the one its packets are handed to.
        @param reactor: the reactor doing the I/O (default: the global one).
        @param clock: the L{IReactorTime} for timers (default: C{reactor}).
        @param branch: replaces the hash part of the branch prefix.
        @param max_forwards: cap for Max-Forwards of forwarded requests.
        @param receiver: callback for received packets (see L{receiver}).
        @param trace: log every packet in and out.
        @param stream_limits: stream legs: connect timeout, connection
            caps, idle and first-message timeouts
            (L{sipleg.transport.base.StreamLimits}; its defaults follow
            Net::SIP's idle rule).
        @raise ValueError: contradicting or invalid arguments.
        @raise TypeError: C{sock} together with C{socketpool}.
        """
        if sock is not None and socketpool is not None:
            raise TypeError("sock and socketpool cannot be used together")
        if isinstance(tls, Mapping):
            from sipleg.transport.tls import TLSConfig

            tls = TLSConfig(**tls)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self.receiver = receiver
        #: Asked, with the source and the bytes, about every packet before
        #: it is parsed: L{False} drops it (the proxy's flood control).
        self.gate: Callable[[Address, bytes], bool] | None = None
        self._max_forwards = max_forwards
        self.trace = trace
        #: Messages (datagrams or framed stream messages) the socket pool
        #: handed up, and messages handed to it to send.
        self.received = 0
        self.sent = 0
        #: Put before the line the leg logs when it starts listening (the
        #: proxy's worker number under C{--workers}).
        self.log_prefix = ""
        self._tls = tls

        existing: Address | None = None
        if socketpool is not None:
            existing = socketpool.local
        elif sock is not None:
            existing = _sock_address(sock, proto, tls)
            peer = _sock_peer(sock, existing.proto)
            if dst is None and peer is not None:
                dst = peer

        if existing is not None:
            if addr is not None or port is not None:
                raise ValueError("addr/port come from the socket; do not give them")
            proto = existing.proto if proto is None else proto
            if proto != existing.proto:
                raise ValueError(f"proto {proto!r} does not match socket {existing.proto!r}")
            assert existing.addr is not None
            ip, port = existing.addr, existing.port
        else:
            if proto is None:
                proto = "tls" if tls is not None else "udp"
            ip, embedded = split_hostport(addr if addr is not None else "127.0.0.1")
            if embedded is not None and port is not None and embedded != port:
                raise ValueError(f"port {port} contradicts the port in {addr!r}")
            if port is None:
                port = embedded if embedded is not None else default_port(proto)
        if proto not in PROTOCOLS:
            raise ValueError(f"unknown transport {proto!r}")
        if proto in ("tls", "wss") and tls is None and socketpool is None:
            raise ValueError(f"a {proto.upper()} leg needs tls=TLSConfig(...)")
        found_family = ip_family(ip)
        if found_family is None:
            raise ValueError(f"addr must be an IP address, not {ip!r}")
        if family is not None and family != found_family:
            raise ValueError(f"family {family} does not match {ip!r}")
        self.proto: str = proto
        self.family: int = found_family
        self.host: str = (host or ip).lower()
        self._local = Address(ip, port, proto)
        self._contact_arg = contact
        self.dst: Address | None = self._dst_address(dst)

        if branch is None:
            if port == 0 and existing is None:
                # RFC 3261 §8.1.1.7: unique; an ephemeral port is not known
                # yet, so a random tag stands in for it.
                branch = os.urandom(16).hex()
            else:
                branch = leg_prefix(ip, port, proto)[len(MAGIC_COOKIE) :]
        self.branch: str = MAGIC_COOKIE + branch
        self._tid_connections: OrderedDict[str, object] = OrderedDict()

        if socketpool is not None:
            # Sharing a pool (Net::SIP's socketpool argument): this leg
            # sends through the same socket and now receives what it reads.
            self._pool: ISocketPool = socketpool
            socketpool.receiver = self._pool_received
        elif proto == "udp":
            from sipleg.transport.udp import UDPSocketPool

            self._pool = UDPSocketPool(
                self._local, self._pool_received, peer=self.dst, sock=sock, reactor=reactor
            )
        else:
            # The stream pool (and TLS with it) is imported only by a
            # configuration that has a stream leg, autobahn only by one
            # with a WebSocket leg.
            from sipleg.transport.stream import StreamSocketPool

            pool_type: type[StreamSocketPool] = StreamSocketPool
            if proto in WEBSOCKET:
                from sipleg.transport.websocket import WebSocketSocketPool

                pool_type = WebSocketSocketPool
            self._pool = pool_type(
                self._local,
                self._pool_received,
                peer=self.dst,
                tls=tls,
                sock=sock,
                reactor=reactor,
                clock=self._clock,
                limits=stream_limits,
            )
        #: The WebSocket pool's C{name} (L{sipleg.transport.websocket}):
        #: connections are reached by the C{.invalid} host their client
        #: announces.
        self._name_connection: Callable[[object, str], bool] | None = getattr(self._pool, "name", None)
        self._identity()

    # -- identity --------------------------------------------------------

    def _identity(self) -> None:
        """
        (Re)compute contact, Via prefix and Record-Route from the local
        address; called again once an ephemeral port is bound.
        """
        local = self._pool.local if self._pool.local.port else self._local
        self._local = local
        host = self.host if self.host != local.addr else local.host
        port = local.port
        hostport = bracket(host)
        if port != default_port(self.proto):
            hostport += f":{port}"
        scheme = "sips" if self.proto == "tls" else "sip"
        if self._contact_arg is not None:
            self.contact = self._contact_arg
        else:
            self.contact = f"{scheme}:{hostport}"
            if self.proto in ("tcp", *WEBSOCKET):
                self.contact += f";transport={uri_transport(self.proto)}"
        Leg.identities_made += 1
        identity = leg_identity(
            self.proto,
            self.family,
            local.host,
            port,
            self.branch,
            self._max_forwards,
            host=self.host,
            name=host,
        )
        self.identity = identity
        self.record_route_uri = identity.record_route_uri
        self.record_route = identity.record_route
        self._via_prefix = identity.via_prefix
        #: What the request pass splices in: this leg's header lines.
        self.via_line = f"Via: {self._via_prefix}{self.branch}".encode()
        self.record_route_line = f"Record-Route: {self.record_route}\r\n".encode()
        self._self_set = LegSet((self.identity,))

    @property
    def max_forwards(self) -> int:
        """
        The cap applied to Max-Forwards of forwarded requests.
        """
        return self._max_forwards

    @max_forwards.setter
    def max_forwards(self, value: int) -> None:
        self._max_forwards = value
        self._identity()

    def _dst_address(self, dst: Spec) -> Address | None:
        if dst is None or isinstance(dst, Address):
            return dst
        uri = _sip_uri(dst)
        if uri is None:
            found = Address.parse(str(dst), self.proto)
        else:
            port = uri.port if uri.port is not None else default_port(self.proto)
            found = Address(uri.maddr or uri.host, port, self.proto)
        if not found.is_ip:
            raise ValueError(f"dst must be an IP address: {dst!r}")
        return found

    @property
    def local(self) -> Address:
        """
        The local address of the leg (the real port once listening).
        """
        return self._local

    @property
    def socketpool(self) -> ISocketPool:
        """
        The socket pool moving this leg's bytes.
        """
        return self._pool

    def laddr(self, level: int = 0) -> str:
        """
        The local address as text.

        @param level: 0 for the IP only; 1 for C{ip[:port]} (port omitted
            when it is the transport's default; IPv6 in brackets when a port
            is written); 2 like 1 with the host name instead of the IP.
        @raise ValueError: any other level.
        """
        if level == 0:
            return self._local.host
        if level not in (1, 2):
            raise ValueError(f"laddr level must be 0, 1 or 2, not {level!r}")
        host = self._local.host if level == 1 else self.host
        if self._local.port == default_port(self.proto):
            return host
        return f"{bracket(host)}:{self._local.port}"

    def dump(self) -> str:
        """
        A one-line description of the leg, for debugging.
        """
        return f"{type(self).__name__} {self.proto}:{self._local.hostport}"

    def __repr__(self) -> str:
        return f"<{self.dump()}>"

    def match(self, spec: Mapping[str, Any]) -> bool:
        """
        Whether this leg fits C{spec}, as the dispatcher's C{get_legs} asks.

        @param spec: any of C{addr} (the leg's IP or host name), C{host},
            C{port}, C{proto}, C{family}, and C{sub} (a callable taking the
            leg and returning a boolean).  Every key given must hold.
        @raise ValueError: an unknown key.
        """
        for key, want in spec.items():
            if key in ("addr", "host"):
                text = str(want).lower().strip("[]")
                if text not in (self._local.host, self.host):
                    return False
            elif key == "port":
                if int(want) != self._local.port:
                    return False
            elif key == "proto":
                if str(want).lower() != self.proto:
                    return False
            elif key == "family":
                if want != self.family:
                    return False
            elif key == "sub":
                if not want(self):
                    return False
            else:
                raise ValueError(f"unknown match key {key!r}")
        return True

    def can_deliver_to(self, addr: Spec = None, **spec: Any) -> bool:
        """
        Whether this leg can send to a destination.

        Only the transport and the address family are checked: which
        interface routes where is the kernel's business.

        @param addr: an L{Address}, a SIP URI (text or L{URI}) or
            C{host[:port]} text.
        @param spec: or the destination's parts: C{proto}, C{host},
            C{port}, C{family}.
        """
        proto: str | None = spec.get("proto")
        family: int | None = spec.get("family")
        host: str | None = spec.get("host")
        if isinstance(addr, Address):
            proto, host, family = addr.proto, addr.addr or addr.host, addr.family
        elif addr is not None:
            try:
                uri = _sip_uri(addr)
            except SIPParseError:
                return False
            if uri is not None:
                if uri.is_secure:
                    proto = "tls"
                elif uri.transport is not None:
                    proto = uri.transport
                if proto is not None and proto in WEBSOCKET and self.proto in WEBSOCKET:
                    # RFC 7118 §5.2: "ws" names both WebSocket transports.
                    proto = self.proto
                host = uri.maddr or uri.host
            else:
                try:
                    host, _ = split_hostport(str(addr))
                except ValueError:
                    return False
        if proto is not None and proto.lower() != self.proto:
            return False
        if family is None and host is not None:
            family = ip_family(host.strip("[]"))
        if family is not None and family != self.family:
            return False
        return True

    # -- Via and branch ----------------------------------------------------

    def via_branch(self, packet: Request, level: int = 3) -> str:
        """
        The branch this leg gives C{packet}.

        RFC 3261 §16.11 asks a stateless proxy for a branch that is the same
        for a retransmission, for the CANCEL of an INVITE and for the ACK of
        a non-2xx final response, and different for anything else (the ACK
        of a 2xx has a branch of its own).  It is built from, in order:

         1. C{level >= 1}: the leg's branch prefix (L{branch});
         2. C{level >= 2}: a hash of the transaction id (Call-ID and CSeq
            number): responses to this leg match C{level 2} as a prefix;
         3. C{level >= 3}: a hash of what tells transactions apart: the
            top Via's branch (the whole top Via when it has none), the
            constant parts of Proxy-Authorization, Proxy-Require, Route,
            From and the Request-URI; followed by the loop hash (see
            L{loop_hash}).  To is left out: it differs between an INVITE and
            the ACK of its error response.

        The hashes are L{sipleg.branch}'s, the ones the proxy's request
        pass computes.
        """
        if level == 1:
            return self.branch
        tid = packet.tid
        if level == 2:
            return self.branch + tid_hash(tid)
        if level != 3:
            raise ValueError(f"branch level must be 1, 2 or 3, not {level!r}")
        top = packet.get_header("via") or ""
        try:
            top_branch = via_branch(top) or top
        except SIPParseError:
            top_branch = top
        return self.branch + transaction_hash(
            tid,
            top_branch,
            packet.get_headers("proxy-authorization"),
            packet.get_headers("proxy-require"),
            packet.get_headers("route"),
            packet.get_header("from") or "",
            packet.uri,
            self._loop_hash(packet, tid),
        )

    def loop_hash(self, packet: Request) -> str:
        """
        The part of the branch used for RFC 3261 §16.3 item 4 loop
        detection (L{sipleg.branch.loop_hash}): a hash of the fields that
        stay the same when a request comes back to us unchanged
        (Request-URI, From tag, Call-ID, CSeq number, Route,
        Proxy-Require), and no Via.
        """
        return self._loop_hash(packet, packet.tid)

    @staticmethod
    def _loop_hash(packet: Request, tid: str) -> str:
        return loop_hash(
            packet.uri,
            from_tag(packet.get_header("from")),
            tid,
            packet.get_headers("route"),
            packet.get_headers("proxy-require"),
        )

    def add_via(self, packet: Request) -> None:
        """
        Put this leg's Via on top of C{packet}.
        """
        packet.insert_header("via", self._via_prefix + self.via_branch(packet, 3))

    def check_via(self, packet: Message) -> bool:
        """
        Whether the top Via of C{packet} carries the branch this leg gives
        the transaction (RFC 3261 §17.1.3 response matching): used to check
        that a response came in for something this leg sent.
        """
        branch = self._top_branch(packet)
        if branch is None or not isinstance(packet, (Request, Response)):
            return False
        return branch.startswith(self.branch + tid_hash(packet.tid))

    def owns_branch(self, branch: str | None) -> bool:
        """
        Whether a branch was made by this leg (starts with L{branch}).
        """
        return self._self_set.owner(branch) is not None

    @staticmethod
    def _top_branch(packet: Message) -> str | None:
        top = packet.get_header("via")
        if top is None:
            return None
        try:
            return via_branch(top)
        except SIPParseError:
            return None

    # -- forwarding ------------------------------------------------------

    def forward_incoming(self, packet: Message) -> ForwardRefused | None:
        """
        Prepare a packet that arrived on this leg for forwarding.

        Responses: the top Via must be this leg's (design item 3); it is
        removed.  Requests (RFC 3261 §16.3-§16.4, §16.6):

         - Max-Forwards: an absent one counts as L{max_forwards}, a larger
           one is capped to it; C{0} refuses the request with 483 (silently
           for ACK); otherwise it is decremented.
         - strict routing: if the Request-URI is this leg (a strict router
           put our Record-Route there) and a Route exists, the last Route
           becomes the Request-URI (§16.4);
         - else a first Route naming this leg is removed (§16.4);
         - our Record-Route is put on top (not for REGISTER, §10.2).

        These are the rules of L{sipleg.decision}, applied to this leg
        alone; L{sipleg.proxy.StatelessProxy} applies them to all its legs
        at once.

        @return: L{None} when the packet may go on, else L{ForwardRefused}.
        """
        if isinstance(packet, Response):
            if not self.owns_branch(self._top_branch(packet)):
                return ForwardRefused(None, "response's top Via is not ours")
            packet.remove_header("via", 0)
            return None
        assert isinstance(packet, Request)
        ack = packet.method == "ACK"
        text = packet.get_header("max-forwards")
        if text is not None and not text.strip().isdigit():
            return ForwardRefused(None if ack else 400, "Bad Max-Forwards")
        value = next_max_forwards(None if text is None else int(text), self._max_forwards)
        if value is None:
            # RFC 3261 §16.3 item 3.
            return ForwardRefused(None if ack else 483, "Too Many Hops")
        packet.set_header("max-forwards", str(value))
        routes = tuple(packet.get_headers("route"))
        if routes:
            restored = restore_strict_route(_bare_uri(packet.uri), routes, self._self_set)
            if restored is not None:
                # RFC 3261 §16.4: the previous hop was a strict router; and
                # then on as if it had received the restored request.
                packet.uri = str(route_uri(routes[-1]))
                packet.remove_header("route", len(routes) - 1)
                routes = restored
            if routes and strip_own_routes(routes[:1], self._self_set)[1] is not None:
                packet.remove_header("route", 0)
        if packet.method != "REGISTER":
            packet.insert_header("record-route", self.record_route)
        return None

    def forward_outgoing(self, packet: Message, incoming_leg: Leg) -> ForwardRefused | None:
        """
        Prepare a request to leave through this leg (responses pass
        untouched).

         - our Record-Route goes on top unless it already is there, so a
           request crossing transports or families carries two (design
           item 1);
         - a first Route naming this leg is removed;
         - loop check (RFC 3261 §16.3 item 4): a Via of this leg whose
           branch ends in the request's current L{loop_hash} means the
           request has been here before unchanged: 482 (dropped for ACK).

        @param incoming_leg: the leg the packet arrived on.
        """
        if not isinstance(packet, Request):
            return None
        if packet.method != "REGISTER":
            top = packet.get_header("record-route")
            if top != self.record_route and (
                top is None
                or (top_uri := route_value_uri(top)) is None
                or not uri_equal(top_uri, self.record_route_uri)
            ):
                packet.insert_header("record-route", self.record_route)
        routes = tuple(packet.get_headers("route"))
        if routes and strip_own_routes(routes[:1], self._self_set)[1] is not None:
            packet.remove_header("route", 0)
        # The loop hash is taken on the request as it will leave, which is
        # what the Via we add in deliver() hashed on the previous pass; it
        # is only needed when one of the Vias is ours (a spiral or a loop).
        vias = tuple(packet.get_headers("via"))
        if any(self.branch in value for value in vias):
            if carries_loop(vias, self._self_set, self.loop_hash(packet)):
                return ForwardRefused(None if packet.method == "ACK" else 482, "Loop Detected")
        return None

    def is_local_uri(self, uri: URI) -> bool:
        """
        Whether C{uri} names this leg's address: its host is the leg's IP
        or host name and its port (or the default port) the leg's port.
        The user part and the parameters are not looked at
        (L{sipleg.decision.LegSet.hop}).
        """
        return self._self_set.hop(uri) is not None

    # -- I/O ---------------------------------------------------------------

    def listen(self) -> Deferred[Leg]:
        """
        Bind the socket (or start accepting connections).

        @return: a L{Deferred} firing with this leg once it is listening.
        """
        d = self._pool.listen()

        def bound(_: object) -> Leg:
            self._identity()
            return self

        return d.addCallback(bound)

    def stop(self) -> Deferred[None]:
        """
        Close the listening socket and every connection.
        """
        return self._pool.stop()

    def startService(self) -> None:
        Service.startService(self)
        self.listen().addCallbacks(
            self._listening, lambda f: log.failure("leg {leg} failed to listen", f, leg=self.dump())
        )

    def _listening(self, _: Leg) -> None:
        log.info(
            "{prefix}listening on {proto}:{address}",
            prefix=self.log_prefix,
            proto=self.proto,
            address=self._local.hostport,
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.stop()

    def deliver(self, packet: Message, addr: Spec, *, copy: bool = True) -> Deferred[None]:
        """
        Send C{packet} to C{addr} through this leg.

        A request is sent as a copy carrying this leg's Via on top (the
        caller's object is not changed, so a retransmission gets the same
        branch).  A response goes back on the connection its request
        arrived on when that connection is still open.

        @param addr: the destination: an L{Address} (its transport must be
            the leg's), C{"ip:port"} text, or a SIP URI with an IP host.
            Ignored when the leg has a fixed C{dst}.
        @param copy: C{False} puts the Via on C{packet} itself instead of on
            a copy: for a caller that will not send the same object again.
        @return: a L{Deferred} that fires with L{None} once the packet is
            handed to the kernel (UDP) or written to an established
            connection (TCP, TLS), or fails with L{DeliveryError}.
        """
        try:
            dst = self.dst if self.dst is not None else self._dst_address(addr)
        except (ValueError, SIPParseError) as e:
            return fail(DeliveryError(None, f"bad destination {addr!r}: {e}"))
        if dst is None:
            return fail(DeliveryError(None, "no destination"))
        if dst.proto != self.proto:
            return fail(DeliveryError(None, f"target transport {dst.proto} does not match leg {self.proto}"))
        if not dst.is_ip:
            return fail(DeliveryError(None, f"{dst.host} is not resolved"))
        data, conn = self.wire(packet, copy=copy)
        return send_deferred(self.send_now, data, dst, conn)

    def wire(self, packet: Message, *, copy: bool = True) -> tuple[bytes, object | None]:
        """
        The bytes L{deliver} sends for C{packet}, and the connection a
        response goes back on (L{None}: any).

        @param copy: see L{deliver}.
        """
        conn = None
        if isinstance(packet, Request):
            if copy:
                packet = packet.copy()
            self.add_via(packet)
        elif isinstance(packet, Response):
            conn = self.connection_of(packet)
        return bytes(packet), conn

    def connection_of(self, response: Response) -> object | None:
        """
        The stream connection the request of C{response} arrived on, while
        this leg remembers it (L{None} on UDP, or when forgotten).
        """
        if not self._tid_connections:
            return None
        try:
            return self._tid_connections.get(response.tid)
        except SIPParseError:
            return None

    def send_now(
        self,
        data: bytes,
        dst: Address,
        conn: object | None = None,
        failed: Callable[[DeliveryError], object] | None = None,
    ) -> Deferred[None] | None:
        """
        Hand bytes to the socket pool (L{ISocketPool.send_now}): the hot
        path of the proxy, with no L{Deferred} unless a connection must be
        made first (or, without C{failed}, a datagram is held back).

        @param dst: a resolved address of the leg's transport (the leg's
            fixed C{dst} wins).
        @param failed: see L{ISocketPool.send_now}.
        @return: L{None} once sent (or held back, with C{failed}); a
            L{Deferred} while the send waits.
        @raise DeliveryError: the send failed at once.
        """
        self.sent += 1
        if self.trace:
            self._trace("sends", "to", self.dst or dst, data)
        return self._pool.send_now(data, dst, conn, failed)

    def receive(self, packet: Message, from_addr: Address) -> tuple[Message, Address] | None:
        """
        Hook for subclasses, called for every packet that arrives: return
        C{(packet, from_addr)} (possibly changed) to pass it on, or L{None}
        to block it.  The base class passes everything.
        """
        return packet, from_addr

    def _pool_received(self, data: bytes, source: Address, conn: object) -> None:
        """
        The socket pool's receiver: parse, remember the connection of a
        request, run L{receive}, hand up.  Never raises.
        """
        self.received += 1
        if self.trace:
            self._trace("received", "from", source, data)
        gate = self.gate
        if gate is not None and not gate(source, data):
            return
        try:
            try:
                packet = parse_message(data, datagram=conn is None)
            except SIPParseError as e:
                if self.receiver is not None:
                    # The layer above answers it or logs its drop.
                    self.receiver(BadMessage(e, data), source, self)
                else:
                    log.info(
                        "dropping bad packet from {source}: {reason}",
                        source=source,
                        reason=e.reason,
                    )
                return
            if conn is not None and isinstance(packet, Request):
                self._remember_connection(packet.tid, conn)
                self._alias(packet, source, conn)
            passed = self.receive(packet, source)
            if passed is None:
                return
            if self.receiver is not None:
                self.receiver(passed[0], passed[1], self)
        except Exception:
            log.failure("unexpected error handling a packet from {source}", source=source)

    def _trace(self, verb: str, preposition: str, peer: Address, data: bytes) -> None:
        log.info(
            "{leg} {verb} {size} bytes {preposition} {peer}:\n{text}",
            leg=self.dump(),
            verb=verb,
            size=len(data),
            preposition=preposition,
            peer=peer,
            text=data.decode("utf-8", "replace"),
        )

    def _alias(self, request: Request, source: Address, conn: object) -> None:
        """
        What the top Via asks of the connection a request came on: RFC
        5923, with C{;alias}, to carry requests for its sent-by; RFC 7118
        §5, a WebSocket client's made-up C{xxx.invalid} sent-by, to be
        reached by that name (L{sipleg.transport.websocket}).
        """
        top = request.get_header("via") or ""
        lowered = top.lower()
        alias = getattr(self._pool, "alias", None) if "alias" in lowered else None
        name = self._name_connection if ".invalid" in lowered else None
        if alias is None and name is None:
            return
        try:
            via = parse_via(top)
        except SIPParseError:
            return
        if name is not None:
            name(conn, via.host)
        if via.alias and alias is not None:
            port = via.port if via.port is not None else default_port(self.proto)
            try:
                alias(conn, Address(via.host, port, self.proto))
            except ValueError:
                return

    def _remember_connection(self, tid: str, conn: object) -> None:
        if len(tid) > _TID_LENGTH:
            # Not worth remembering (and 4096 of them would be big): the
            # response goes to the source, on the same connection while it
            # stays open, by the stream pool's peer lookup.
            return
        memory = self._tid_connections
        memory[tid] = conn
        memory.move_to_end(tid)
        if len(memory) > _TID_MEMORY:
            memory.popitem(last=False)


def _sip_uri(spec: URI | str) -> URI | None:
    """
    C{spec} as a SIP URI when it is one (a L{URI}, or text starting with
    C{sip:} or C{sips:}); L{None} for C{host[:port]} text.

    @raise SIPParseError: text with a SIP scheme that is malformed.
    """
    if isinstance(spec, URI):
        return spec
    scheme = spec.partition(":")[0].lower()
    return parse_uri(spec) if scheme in ("sip", "sips") and ":" in spec else None


def _bare_uri(text: str) -> URI | None:
    try:
        return parse_uri(text.strip().strip("<>"))
    except SIPParseError:
        return None


def _sock_address(sock: socket.socket, proto: str | None, tls: Any) -> Address:
    ip, port = sock.getsockname()[:2]
    if sock.type == socket.SOCK_DGRAM:
        found = "udp"
    elif proto in WEBSOCKET:
        found = proto
    else:
        found = "tls" if (proto == "tls" or tls is not None) else "tcp"
    return Address(ip, port, found)


def _sock_peer(sock: socket.socket, proto: str) -> Address | None:
    try:
        ip, port = sock.getpeername()[:2]
    except OSError:
        return None
    return Address(ip, port, proto)
