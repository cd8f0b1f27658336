"""
L{Dispatcher}: owns the legs, stamps where requests came from, and
delivers packets through the right leg to the right place.

On the way in, every packet a leg receives passes the dispatcher's receive
glue: requests get C{received} / C{rport} on their top Via (RFC 3261
§18.2.1, RFC 3581), then the packet goes to the receiver (a
L{sipleg.proxy.StatelessProxy}, or any object with a C{receive(packet,
leg, source)} method).

On the way out, L{Dispatcher.deliver} turns a destination (an address, a
list of them, or a SIP URI to resolve with RFC 3263) into an ordered list
of C{(leg, address)} pairs, where the leg always speaks the address's
transport and family, and tries them in order until one takes the packet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from errno import EHOSTUNREACH, ENOPROTOOPT
from typing import Any, Protocol, TypeAlias, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.address import Address
from sipleg.decision import stamp_via
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.leg import BadMessage, Leg
from sipleg.message import Message, Request
from sipleg.resolver import Resolver
from sipleg.uri import URI, parse_name_addr, parse_uri, parse_via

#: What L{Dispatcher.send_in_order} builds for each leg it tries: the bytes
#: and the connection to prefer (L{None}: any).
Build = Callable[[Leg], tuple[bytes, object | None]]

#: Told why a send failed after it was taken (see L{Dispatcher.send_in_order}).
Failed = Callable[[DeliveryError], object]

_T = TypeVar("_T")
#: A resolution or a send done at once, or the L{Deferred} of one that waits.
Maybe: TypeAlias = _T | Deferred[_T]

__all__ = ["Dispatcher", "IReceiver", "Destination", "stamp_received"]

log = Logger()

#: What L{Dispatcher.deliver} accepts as a destination.
Destination = Address | Sequence[Address] | URI | str | None


class IReceiver(Protocol):
    """
    What the dispatcher hands received packets to.
    """

    def receive(self, packet: Message | BadMessage, leg: Leg, source: Address) -> None:
        """
        Handle a packet (or a L{BadMessage}) that arrived on C{leg}.
        """


def stamp_received(request: Request, source: Address) -> None:
    """
    Record on the top Via where a request really came from.

    RFC 3261 §18.2.1: when the sent-by host differs from the source IP, add
    C{received=<source ip>}.  RFC 3581 §4: when the Via has an C{rport}
    parameter without a value, fill in the source port and add
    C{received} in any case.

    @raise SIPParseError: the top Via is missing or malformed.
    """
    top = request.get_header("via")
    if top is None:
        raise SIPParseError("missing Via")
    via = parse_via(top)
    if stamp_via(via, source):
        request.set_header("via", str(via), 0)


class Dispatcher:
    """
    The legs of one SIP element and the glue between them and its logic.

    @ivar legs: the legs, in the order they were added.
    @ivar receiver: the object received packets go to.
    @ivar resolver: the RFC 3263 resolver used for URI destinations.
    """

    def __init__(
        self,
        legs: Iterable[Leg] = (),
        receiver: IReceiver | None = None,
        resolver: Resolver | None = None,
        reactor: Any = None,
    ) -> None:
        """
        @param legs: the initial legs.
        @param receiver: where received packets go.
        @param resolver: the L{Resolver}; one on the system's DNS
            configuration is made when needed.
        @param reactor: unused by the dispatcher itself; kept so every
            sipleg component can be built the same way.
        """
        self.legs: list[Leg] = []
        #: Counts the changes of L{legs} made through L{add_leg} and
        #: L{remove_leg}, for those who cache what they know of the legs.
        self.generation = 0
        self.receiver = receiver
        #: Whether requests get C{received} / C{rport} stamped before they
        #: reach the receiver; a receiver that parses the top Via itself
        #: (the proxy's request pass) turns it off and stamps it there.
        self.stamps = True
        self._resolver = resolver
        for leg in legs:
            self.add_leg(leg)

    @property
    def resolver(self) -> Resolver:
        """
        The RFC 3263 resolver (made on first use when none was given).
        """
        if self._resolver is None:
            self._resolver = Resolver(transports=self._transports())
        return self._resolver

    def _transports(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(leg.proto for leg in self.legs))

    def add_leg(self, leg: Leg) -> None:
        """
        Take C{leg} into service: its packets come to this dispatcher.
        """
        leg.receiver = self._leg_received
        self.legs.append(leg)
        self.generation += 1

    def remove_leg(self, leg: Leg) -> None:
        """
        Stop dispatching for C{leg} (it keeps its sockets; stop it yourself).
        """
        self.legs.remove(leg)
        self.generation += 1
        leg.receiver = None

    def get_legs(self, **spec: Any) -> list[Leg]:
        """
        The legs matching C{spec} (see L{Leg.match}); all legs without one.
        """
        return [leg for leg in self.legs if leg.match(spec)]

    def _leg_received(self, packet: Message | BadMessage, source: Address, leg: Leg) -> None:
        if self.stamps and isinstance(packet, Request):
            try:
                stamp_received(packet, source)
            except SIPParseError as e:
                packet = BadMessage(e, bytes(packet))
        if self.receiver is None:
            return
        try:
            self.receiver.receive(packet, leg, source)
        except Exception:
            log.failure("receiver failed on a packet from {source}", source=source)

    # -- delivery ----------------------------------------------------------

    def deliver(
        self,
        packet: Message,
        leg: Leg | Sequence[Leg] | None = None,
        dst: Destination = None,
    ) -> Deferred[tuple[Leg, Address]]:
        """
        Send C{packet}, choosing leg and destination together.

        @param leg: the leg to use, or the legs allowed; default all legs.
        @param dst: an L{Address}, a list of them (tried in order), a SIP
            URI (text or L{URI}) resolved by RFC 3263, or L{None}: the first
            Route of a request, else its Request-URI.
        @return: a L{Deferred} firing with the C{(leg, address)} that took
            the packet, or failing with the L{DeliveryError} of the last
            attempt (C{ENOPROTOOPT} when no leg speaks any destination's
            transport, C{EHOSTUNREACH} when nothing resolved).
        """
        if leg is None:
            legs = list(self.legs)
        elif isinstance(leg, Leg):
            legs = [leg]
        else:
            legs = list(leg)
        if not legs:
            return fail(DeliveryError(ENOPROTOOPT, "no legs"))

        def build(leg: Leg) -> tuple[bytes, object | None]:
            return leg.wire(packet)

        def send(pairs: list[tuple[Leg, Address]]) -> Maybe[tuple[Leg, Address]]:
            return self.send_in_order(pairs, build)

        return self.destinations(packet, dst, legs).addCallback(send)

    def destinations(
        self, packet: Message, dst: Destination, legs: Sequence[Leg]
    ) -> Deferred[list[tuple[Leg, Address]]]:
        """
        Resolve C{dst} (see L{deliver}) and pair every address with the
        first of C{legs} that can send to it.
        """
        if dst is None:
            if not isinstance(packet, Request):
                return fail(DeliveryError(EHOSTUNREACH, "a response needs a destination"))
            routes = packet.get_headers("route")
            dst = routes[0] if routes else packet.uri
        if isinstance(dst, Address):
            return succeed(pair_legs([dst], legs))
        if not isinstance(dst, (URI, str)):
            return succeed(pair_legs(dst, legs))
        try:
            uri = dst if isinstance(dst, URI) else _target_uri(dst)
            found = self.resolve(uri, legs, packet)
        except SIPParseError as e:
            return fail(DeliveryError(EHOSTUNREACH, f"bad target {dst!r}: {e.reason}"))
        except DeliveryError:
            return fail()
        if isinstance(found, Deferred):
            return found
        return succeed(found)

    def resolve(
        self,
        uri: URI,
        legs: Sequence[Leg],
        packet: Message,
        transports: tuple[str, ...] | None = None,
    ) -> Maybe[list[tuple[Leg, Address]]]:
        """
        Resolve C{uri} (RFC 3263) and pair every address with the first of
        C{legs} that can send to it: at once for an IP literal, through DNS
        otherwise.

        @param packet: the message to send: a stateless proxy seeds the SRV
            choice with its transaction (RFC 3261 §16.11).
        @param transports: the transports of C{legs}, when the caller knows
            them already.
        @return: the pairs, or a L{Deferred} firing with them.
        @raise DeliveryError: no leg fits the URI.
        """
        if uri.host.endswith(".invalid"):
            # RFC 7118 §5: a WebSocket client's made-up host, reached over
            # the connection that announced it (never through DNS).
            return _named_peers(uri.host, legs)
        if transports is None:
            transports = tuple(dict.fromkeys(leg.proto for leg in legs))
        resolver = self.resolver
        numeric = resolver.resolve_now(uri, transports)
        if numeric is not None:
            return pair_legs(numeric, legs)
        # RFC 3261 §16.11: the same transaction always reaches the same
        # server, whatever the SRV weights draw.
        cseq = (packet.get_header("cseq") or "").split(None, 1)[:1]
        seed = f"{packet.get_header('call-id')} {''.join(cseq)}"
        return resolver.resolve_uri(uri, transports=transports, seed=seed).addCallback(pair_legs, legs)

    def send_to(
        self,
        uri: URI,
        legs: Sequence[Leg],
        packet: Message,
        build: Build,
        failed: Failed | None = None,
        transports: tuple[str, ...] | None = None,
    ) -> Maybe[tuple[Leg, Address]]:
        """
        L{resolve} C{uri}, then L{send_in_order}: at once for an IP
        literal, after DNS otherwise.

        @return: as L{send_in_order}; a L{Deferred} when DNS or a send
            waits.
        @raise DeliveryError: as L{resolve} and L{send_in_order}, when it
            fails at once.
        """
        found = self.resolve(uri, legs, packet, transports)
        if isinstance(found, Deferred):
            return found.addCallback(self.send_in_order, build, 0, failed)
        return self.send_in_order(found, build, failed=failed)

    def send_in_order(
        self,
        pairs: Sequence[tuple[Leg, Address]],
        build: Build,
        first: int = 0,
        failed: Failed | None = None,
    ) -> Maybe[tuple[Leg, Address]]:
        """
        Try C{pairs} in order until one leg takes its packet (RFC 3263 §4:
        a transport error moves on to the next target).  This is the one
        failover loop: L{deliver} and the proxy both use it.

        @param build: makes the bytes (and the preferred connection) for the
            leg about to be tried.
        @param first: the index of the pair to try first.
        @param failed: for a sender that needs no completion, only failure
            (the proxy): a datagram a pool holds back (design item 18)
            then counts as taken at once; if it fails when it is sent, the
            loop goes on with the next pair by itself, and C{failed} is
            called with the last error when no pair takes the packet.
            Without it such a send returns a L{Deferred}.
        @return: the C{(leg, address)} that took the packet, at once when
            the send did not wait, else a L{Deferred} firing with it.
        @raise DeliveryError: every pair failed at once (the last error;
            C{ENOPROTOOPT} when there was no pair).
        """
        error: DeliveryError | None = None
        for index in range(first, len(pairs)):
            pair = pairs[index]
            leg, address = pair
            data, conn = build(leg)
            retry: Failed | None = None
            if failed is not None:

                def retry(e: DeliveryError, after: int = index + 1) -> None:
                    self._resume(pairs, build, after, failed, e)

            try:
                waiting = leg.send_now(data, address, conn, retry)
            except DeliveryError as e:
                log.debug("delivery to {dst} failed ({why})", dst=address, why=e)
                error = e
                continue
            if waiting is None:
                return pair

            def failed_now(reason: Failure, after: int = index + 1) -> Maybe[tuple[Leg, Address]]:
                reason.trap(DeliveryError)
                log.debug("delivery failed ({why}); trying the next target", why=reason.value)
                return self.send_in_order(pairs, build, after, failed)

            return waiting.addCallbacks(lambda _, pair=pair: pair, failed_now)
        raise error or DeliveryError(ENOPROTOOPT, "no leg can reach the destination")

    def _resume(
        self,
        pairs: Sequence[tuple[Leg, Address]],
        build: Build,
        first: int,
        failed: Failed,
        error: DeliveryError,
    ) -> None:
        """
        A held-back send of L{send_in_order} failed after it returned: go on
        with the next pair, and tell C{failed} when none takes the packet.
        """
        log.debug("delivery failed ({why}); trying the next target", why=error)
        if first >= len(pairs):
            failed(error)
            return
        try:
            result = self.send_in_order(pairs, build, first, failed)
        except DeliveryError as e:
            failed(e)
            return
        if isinstance(result, Deferred):
            result.addErrback(lambda reason: failed(reason.value) if reason.check(DeliveryError) else reason)


def pair_legs(addresses: Iterable[Address], legs: Sequence[Leg]) -> list[tuple[Leg, Address]]:
    """
    Pair each address with the first leg that speaks its transport and
    family (design item 5: never a leg of one transport with a destination
    of another).  Addresses no leg can serve are left out.
    """
    pairs = []
    for address in addresses:
        family = address.family
        for leg in legs:
            if family is None:
                if leg.can_deliver_to(address):
                    pairs.append((leg, address))
                    break
            elif leg.proto == address.proto and leg.family == family:
                pairs.append((leg, address))
                break
    return pairs


def _named_peers(host: str, legs: Sequence[Leg]) -> list[tuple[Leg, Address]]:
    """
    The legs whose pool has a connection named C{host} (a WebSocket
    client's C{.invalid} host, L{sipleg.transport.websocket}), each with
    that connection's peer.

    @raise DeliveryError: C{EHOSTUNREACH} when none has.
    """
    pairs = []
    for leg in legs:
        named_peer = getattr(leg.socketpool, "named_peer", None)
        peer = None if named_peer is None else named_peer(host)
        if peer is not None:
            pairs.append((leg, peer))
    if not pairs:
        raise DeliveryError(EHOSTUNREACH, f"no open connection is named {host}")
    return pairs


def _target_uri(text: str) -> URI:
    """
    The URI in a Route value or Request-URI text.
    """
    text = text.strip()
    if text.startswith("<") or '"' in text:
        return parse_name_addr(text).uri
    return parse_uri(text)
