"""
L{StatelessProxy}: RFC 3261 §16 forwarding without transaction state.

The proxy is the receiver of a L{sipleg.dispatcher.Dispatcher}.  For each
request it validates (§16.3), asks the access policy, lets the incoming
leg do its header work, picks the next hop (Route set, static routes,
outbound proxy or Request-URI), resolves it (RFC 3263) and hands the
request to the outgoing leg, failing over to the next target on a
transport error.  Every refusal a request can be answered for is answered
statelessly (400, 403, 416, 420, 482, 483, 503 ...); ACKs are never
answered.  Responses are forwarded only through a Via of our own.
"""

from __future__ import annotations

from errno import ENOPROTOOPT
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.leg import BadMessage, ForwardRefused, Leg
from sipleg.message import REASONS, Message, Request, Response, make_response, salvage_response
from sipleg.registrar import Registrar
from sipleg.routing import (
    IAccessPolicy,
    IRoutePolicy,
    NetworkAccessPolicy,
    StaticRoutes,
    response_fallback,
    response_target,
)
from sipleg.status import ProxyStats
from sipleg.uri import URI, parse_uri, parse_via, route_uri, via_branch

__all__ = ["StatelessProxy"]

log = Logger()


class StatelessProxy:
    """
    A stateless forwarding proxy over the legs of a dispatcher.

    @ivar dispatcher: the L{Dispatcher} whose receiver this proxy is.
    @ivar access: the L{IAccessPolicy} (default: loopback may send anywhere,
        nobody else anywhere: never an open relay).
    @ivar routes: the L{IRoutePolicy} for requests without a Route set.
    @ivar stats: what the proxy has done (L{ProxyStats}).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        access: IAccessPolicy | None = None,
        routes: IRoutePolicy | None = None,
        registrar: Registrar | None = None,
    ) -> None:
        """
        @param dispatcher: the dispatcher whose legs the proxy forwards
            between; the proxy becomes its receiver.
        @param access: who may use the proxy (see L{access}).
        @param routes: static next hops (see L{routes}).
        @param registrar: answers REGISTER for our domains and resolves
            their addresses of record (RFC 3261 §10.3, §16.5); none by
            default.
        """
        self.registrar = registrar
        self.stats = ProxyStats()
        self.dispatcher = dispatcher
        self.access: IAccessPolicy = access if access is not None else NetworkAccessPolicy()
        self.routes: IRoutePolicy = routes if routes is not None else StaticRoutes()
        dispatcher.receiver = self

    def receive(self, packet: Message | BadMessage, leg: Leg, source: Address) -> None:
        """
        Forward one packet that arrived on C{leg} from C{source}.
        """
        if isinstance(packet, BadMessage):
            self._answer_bad(packet, leg, source)
        elif isinstance(packet, Response):
            self.forward_response(packet, leg)
        else:
            assert isinstance(packet, Request)
            self.forward_request(packet, leg, source)

    # -- responses ---------------------------------------------------------

    def _owner(self, via_value: str | None) -> Leg | None:
        if via_value is None:
            return None
        try:
            branch = via_branch(via_value)
        except SIPParseError:
            return None
        for leg in self.dispatcher.legs:
            if leg.owns_branch(branch):
                return leg
        return None

    def forward_response(self, response: Response, leg: Leg) -> Deferred[Any] | None:
        """
        Route a response back along the Via path (RFC 3261 §16.7).

        Only a response whose top Via is ours goes on (design item 3); our
        second Via, added for the incoming leg when the request crossed
        legs, pins the leg it leaves by.
        """
        owner = self._owner(response.get_header("via"))
        if owner is None:
            self.stats.dropped["foreign-via"] += 1
            log.info(
                "dropping response {code} {callid}: top Via is not ours",
                code=response.code,
                callid=response.get_header("call-id"),
            )
            return None
        owner.forward_incoming(response)
        pinned = self._owner(response.get_header("via"))
        if pinned is not None:
            response.remove_header("via", 0)
        self.stats.responses[f"{response.code // 100}xx"] += 1
        if pinned is not None:
            legs = [pinned]
        else:
            # The request left by the leg it came in on (one Via of ours):
            # that leg holds its connection, so it is tried first.
            legs = [owner] + [other for other in self.dispatcher.legs if other is not owner]
        return self._send_response(response, legs)

    def _send_response(
        self, response: Response, legs: list[Leg] | None, source: Address | None = None
    ) -> Deferred[Any] | None:
        """
        Send a response where its top Via says (RFC 3261 §18.2.2).

        @param source: where the request came from: the answer goes there
            when the Via cannot be used (an answer to a malformed request).
        """
        top = response.get_header("via")
        try:
            via = parse_via(top) if top is not None else None
        except SIPParseError:
            via = None
        target = response_target(via) if via is not None else None
        if target is None and source is not None:
            d = self.dispatcher.deliver(response, legs, source)
            d.addErrback(self._log_failure, "response", response.code)
            return d
        if target is None:
            self.stats.dropped["no-usable-via"] += 1
            log.info(
                "dropping response {code}: no usable Via ({via!r})",
                code=response.code,
                via=top,
            )
            return None
        if legs is None:
            legs = self.dispatcher.legs
        assert via is not None
        fallback = response_fallback(via)
        if target.is_ip:
            dst: list[Address] | URI = [target] if fallback is None else [target, fallback]
        else:
            dst = parse_uri(f"sip:{target.hostport};transport={target.proto}")
        d = self.dispatcher.deliver(response, legs, dst)
        d.addErrback(self._log_failure, "response", response.code)
        return d

    # -- requests ----------------------------------------------------------

    def forward_request(self, request: Request, leg: Leg, source: Address) -> Deferred[Any] | None:
        """
        Validate, route and forward a request (RFC 3261 §16.3-§16.6).
        """
        self.stats.requests[self.stats.method(request.method)] += 1
        target = self._validate(request, source)
        if isinstance(target, ForwardRefused):
            return self._refuse(request, leg, target)
        received_uri = request.uri
        refused = leg.forward_incoming(request)
        if refused is not None:
            return self._refuse(request, leg, refused)
        preferred = self._strip_own_routes(request) or leg
        try:
            if request.uri != received_uri:
                # A strict router's Record-Route was restored (§16.4).
                target = parse_uri(request.uri)
            if self.registrar is not None:
                if self.registrar.is_registration(request, self.is_own_uri):
                    answer = self.registrar.register(request)
                    self.stats.answered[answer.code] += 1
                    return self._send_response(answer, [leg])
                found = self._locate(request, target)
                if isinstance(found, ForwardRefused):
                    return self._refuse(request, leg, found)
                target = found
            next_hop = self._next_hop(request, target)
        except SIPParseError as e:
            return self._refuse(request, leg, ForwardRefused(400, e.reason))
        legs = [preferred] + [other for other in self.dispatcher.legs if other is not preferred]
        d = self.dispatcher.destinations(request, next_hop, legs)
        d.addCallback(self._forward_to, request, leg)
        d.addErrback(self._unreachable, request, leg)
        return d

    def _locate(self, request: Request, target: URI) -> URI | ForwardRefused:
        """
        RFC 3261 §16.5: a request for an address of record of ours goes to
        its best binding (a Route set is followed first, §16.4).

        @return: the (possibly new) Request-URI, or the refusal (480, 404).
        """
        assert self.registrar is not None
        if request.get_headers("route"):
            return target
        found = self.registrar.lookup(target, self.is_own_uri)
        if found is None:
            return target
        if found.code is not None:
            return ForwardRefused(found.code, REASONS[found.code])
        request.uri = found.contacts[0]
        return parse_uri(request.uri)

    def _strip_own_routes(self, request: Request) -> Leg | None:
        """
        Remove every Route entry on top that names one of our legs.

        A request that crossed legs carries two Record-Routes of ours
        (design item 1), so its in-dialog requests carry two Routes of
        ours: the incoming leg removed its own, and the next one names the
        leg to leave by (RFC 3261 §16.4 applies to each of our addresses).

        @return: the leg the last removed entry named, or L{None}.
        """
        found = None
        routes = request.get_headers("route")
        while routes:
            try:
                uri = route_uri(routes[0])
            except SIPParseError:
                break
            owner = self.route_leg(uri)
            if owner is None:
                break
            request.remove_header("route", 0)
            found = owner
            routes = request.get_headers("route")
        return found

    def route_leg(self, uri: URI) -> Leg | None:
        """
        The leg a Route / Record-Route URI names: its address and port,
        and the transport of the URI (C{;transport=}, C{sips:} for TLS,
        else UDP, as RFC 3263 §4.1 reads a URI).
        """
        proto = "tls" if uri.is_secure else (uri.transport or "udp")
        for leg in self.dispatcher.legs:
            if leg.proto == proto and leg.is_local_uri(uri):
                return leg
        return None

    def is_own_uri(self, uri: URI) -> bool:
        """
        Whether C{uri} names one of our legs' addresses.
        """
        return any(leg.is_local_uri(uri) for leg in self.dispatcher.legs)

    def _validate(self, request: Request, source: Address) -> URI | ForwardRefused:
        """
        RFC 3261 §16.3 checks and the access policy.

        @return: the parsed Request-URI, or why the request is refused.
        """
        # RFC 3261 §16.3 item 2: a URI scheme we cannot route.
        try:
            target = parse_uri(request.uri)
        except SIPParseError as e:
            return ForwardRefused(400, f"Bad Request-URI: {e.reason}")
        if target.scheme not in ("sip", "sips"):
            return ForwardRefused(416, "Unsupported URI Scheme")
        # §16.3 item 5: we support no extension a proxy must understand.
        if request.get_headers("proxy-require"):
            return ForwardRefused(420, "Bad Extension")
        if not self.access.allows(request, target, source):
            return ForwardRefused(403, "Forbidden")
        return target

    def _next_hop(self, request: Request, target: URI) -> URI:
        """
        Where the request goes next (RFC 3261 §16.6 items 4-7, §16.5).

        @param target: the parsed Request-URI.
        """
        routes = request.get_headers("route")
        if routes:
            first = route_uri(routes[0])
            if "lr" in first.params:
                return first
            # §16.6 item 6: the next hop is a strict router.
            request.add_header("route", f"<{request.uri}>")
            request.remove_header("route", 0)
            request.uri = str(first)
            return first
        static = self.routes.next_hop(target)
        return static if static is not None else target

    def _forward_to(
        self, pairs: list[tuple[Leg, Address]], request: Request, in_leg: Leg, first: int = 0
    ) -> Deferred[Any] | None:
        """
        Send the request to the first of C{pairs} that takes it.  Each
        attempt works on its own copy: the request itself stays as it was
        received, for an error response built from it.

        @return: a L{Deferred} firing with the C{(leg, address)} used, or
            L{None} when the outgoing leg refused the request (answered).
        """
        if first >= len(pairs):
            return fail(DeliveryError(ENOPROTOOPT, "no leg can reach the destination"))
        out_leg, dst = pairs[first]
        last = first + 1 == len(pairs)
        packet = request.copy()
        if out_leg is not in_leg:
            # Our Via for the incoming leg: the response finds its way
            # back out of the leg the request came in on.
            in_leg.add_via(packet)
        refused = out_leg.forward_outgoing(packet, in_leg)
        if refused is not None:
            self._refuse(request, in_leg, refused)
            return None
        d = out_leg.deliver(packet, dst, copy=False)
        if last:
            return d.addCallback(self._forwarded, request, out_leg, dst)

        def failed(reason: Failure) -> Deferred[Any] | None:
            reason.trap(DeliveryError)
            return self._forward_to(pairs, request, in_leg, first + 1)

        return d.addCallbacks(self._forwarded, failed, (request, out_leg, dst))

    def _forwarded(self, _: object, request: Request, leg: Leg, dst: Address) -> tuple[Leg, Address]:
        self.stats.forwarded[self.stats.method(request.method)] += 1
        return leg, dst

    def _unreachable(self, reason: Failure, request: Request, leg: Leg) -> None:
        error = reason.value
        if not isinstance(error, DeliveryError):
            log.failure("forwarding {method} failed", reason, method=request.method)
            error = DeliveryError(None, str(error))
        log.info(
            "cannot forward {method} {uri}: {error}",
            method=request.method,
            uri=request.uri,
            error=str(error),
        )
        self._refuse(request, leg, ForwardRefused(503, "Service Unavailable"))

    # -- answers -------------------------------------------------------------

    def _refuse(self, request: Request, leg: Leg, refused: ForwardRefused) -> Deferred[Any] | None:
        if refused.code is None or request.method == "ACK":
            # An ACK refused with a code, or a leg's own (fixed) reason:
            # the counter keys stay a small set whatever peers send.
            self.stats.dropped[f"ACK {refused.code}" if refused.code else refused.reason] += 1
            log.info(
                "dropping {method} {uri}: {reason}",
                method=request.method,
                uri=request.uri,
                reason=refused.reason,
            )
            return None
        self.stats.answered[refused.code] += 1
        response = make_response(request, refused.code, refused.reason)
        if refused.code == 420:
            for value in request.get_headers("proxy-require"):
                response.add_header("Unsupported", value)
        return self._send_response(response, [leg])

    def _answer_bad(self, bad: BadMessage, leg: Leg, source: Address) -> None:
        response = salvage_response(bad.data, bad.error.status, bad.error.reason)
        if response is None:
            self.stats.dropped["unparsable"] += 1
            return
        self.stats.answered[response.code] += 1
        self._send_response(response, [leg], source)

    @staticmethod
    def _log_failure(reason: Failure, what: str, code: object) -> None:
        log.info("could not send {what} {code}: {why}", what=what, code=code, why=reason.value)
