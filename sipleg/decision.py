"""
The request pass, sans I/O: what the proxy does with a packet, decided
once over values parsed once.

Views and outcomes are immutable named tuples (cheap to make, once per
packet); the element's own values (L{LegIdentity}, L{LegSet}, L{Rules})
are frozen dataclasses, made when the configuration changes.

On receipt the proxy builds one frozen view of the packet
(L{request_view}, L{response_view}) and hands it to a pure decision
function with the frozen L{Rules} of the element:

 - L{decide_request} returns L{Forward} (where to, and the edits to make),
   L{Answer} (a stateless response), L{Drop} (nothing to send) or
   L{Register} (the registrar answers);
 - L{decide_response} returns L{Return} (back along the Via path) or
   L{Drop}.

Every RFC 3261 §16.3-§16.6 check, the access and routing policies and the
location service (§16.5) are applied here, in one place, with no reactor:
the tests drive these functions with plain values.  The proxy
(L{sipleg.proxy.StatelessProxy}) only executes the outcome, and the
header work of L{sipleg.leg.Leg}'s public methods is built on the same
helpers (L{LegSet.hop}, L{next_max_forwards}, L{restore_strict_route},
L{strip_own_routes}).

See C{docs/design.md}, "The request pass".
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from sipleg.address import Address, bracket, uri_transport
from sipleg.branch import loop_hash, transaction_hash
from sipleg.errors import SIPParseError
from sipleg.flows import Flow
from sipleg.message import Request, Response, answer_tag
from sipleg.routing import IAccessPolicy, IRoutePolicy, response_fallback, response_target
from sipleg.uri import URI, Via, header_tag, parse_name_addr, parse_uri, parse_via, route_uri, via_branch

__all__ = [
    "Answer",
    "Authenticated",
    "Decision",
    "Drop",
    "Edits",
    "Forward",
    "LegIdentity",
    "LegSet",
    "Located",
    "Register",
    "RequestView",
    "ResponseView",
    "Return",
    "Rules",
    "addressed_to_us",
    "carries_loop",
    "decide_request",
    "decide_response",
    "forward_edits",
    "from_tag",
    "in_dialog",
    "leg_identity",
    "next_hop",
    "next_max_forwards",
    "request_view",
    "response_targets",
    "response_view",
    "restore_strict_route",
    "route_value_uri",
    "stamp_via",
    "strip_own_routes",
]


# ---------------------------------------------------------------------------
# Who we are


@dataclass(frozen=True, slots=True, eq=False)
class LegIdentity:
    """
    What decisions need to know of one leg: its address and the header
    values it writes.  A L{sipleg.leg.Leg} publishes its identity as
    C{leg.identity}; identities compare (and hash) by identity, so the
    proxy finds a leg by its identity in a dict.

    @ivar proto: C{"udp"}, C{"tcp"}, C{"tls"}, C{"ws"} or C{"wss"}.
    @ivar family: the address family of its socket.
    @ivar addr: its IP address.
    @ivar host: its host name (the IP when it has none), lower-cased.
    @ivar port: its port.
    @ivar branch: the branch prefix every Via it writes starts with.
    @ivar via_prefix: its Via value up to C{;branch=}.
    @ivar record_route: its Record-Route value.
    @ivar record_route_uri: the URI of L{record_route}.
    @ivar max_forwards: the cap it applies to Max-Forwards.
    """

    proto: str
    family: int
    addr: str
    host: str
    port: int
    branch: str
    via_prefix: str
    record_route: str
    record_route_uri: URI
    max_forwards: int


def leg_identity(
    proto: str,
    family: int,
    addr: str,
    port: int,
    branch: str,
    max_forwards: int,
    *,
    host: str | None = None,
    name: str | None = None,
) -> LegIdentity:
    """
    The identity of a leg listening on C{addr:port}: the Via it writes and
    the Record-Route that names it, with the transport (design item 1), so
    a peer coming back reaches this very leg.

    @param host: the leg's host name, when it has one (else C{addr}).
    @param name: what the leg writes in Via and Record-Route (default
        C{host}).
    """
    host = (host or addr).lower()
    written = bracket(name or host)
    transport = "" if proto == "udp" else f";transport={uri_transport(proto)}"
    record_route_uri = parse_uri(f"sip:{written}:{port}{transport};lr")
    return LegIdentity(
        proto,
        family,
        addr,
        host,
        port,
        branch,
        f"SIP/2.0/{proto.upper()} {written}:{port};branch=",
        f"<{record_route_uri}>",
        record_route_uri,
        max_forwards,
    )


@dataclass(frozen=True, slots=True)
class LegSet:
    """
    The legs of one element, in order.
    """

    legs: tuple[LegIdentity, ...]

    def hop(self, uri: URI | None) -> LegIdentity | None:
        """
        The one definition of "this URI names one of our legs": its host
        (or C{maddr}) is a leg's IP address or host name and its port (or
        the default port of its scheme and transport) the leg's port.  The
        user part and the other parameters are not looked at.  When legs of
        several transports share the address, the one of the URI's
        transport (C{sips:} is TLS, C{;transport=}, else UDP, as RFC 3263
        §4.1 reads a URI) is chosen, else the first.

        @return: the leg, or L{None} when the URI is not ours.
        """
        if uri is None or not uri.host:
            return None
        host = uri.maddr or uri.host
        if ":" in host:
            # IPv6 addresses compare as addresses ("::1" is "0:0::1").
            host = _canonical_v6(host)
        port = uri.effective_port
        found = None
        for leg in self.legs:
            if port == leg.port and (host == leg.addr or host == leg.host):
                proto = "tls" if uri.scheme == "sips" else (uri.transport or "udp")
                if uri_transport(leg.proto) == proto:
                    return leg
                if found is None:
                    found = leg
        return found

    def owner(self, branch: str | None) -> LegIdentity | None:
        """
        The leg whose Via carries C{branch} (the leg's prefix starts it).
        """
        if branch:
            for leg in self.legs:
                if branch.startswith(leg.branch):
                    return leg
        return None

    def via_owner(self, value: str) -> LegIdentity | None:
        """
        The leg whose Via C{value} is: L{owner} of its branch, read only
        when one of our prefixes occurs in the value at all (the usual
        answer for a Via of somebody else is found without parsing it).
        """
        for leg in self.legs:
            if leg.branch in value:
                try:
                    return self.owner(via_branch(value))
                except SIPParseError:
                    return None
        return None


def _canonical_v6(host: str) -> str:
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    except (OSError, ValueError):
        return host


# ---------------------------------------------------------------------------
# Views


class RequestView(NamedTuple):
    """
    One received request, parsed once: everything the decision reads.

    @ivar request: the parsed message (never changed by a decision).
    @ivar method: its method.
    @ivar uri: the parsed Request-URI, or L{None} when malformed.
    @ivar uri_error: why the Request-URI is malformed.
    @ivar routes: the Route values.
    @ivar max_forwards: Max-Forwards, or L{None} when absent.
    @ivar proxy_require: the Proxy-Require values.
    @ivar via: the top Via, stamped with C{received} / C{rport}.
    @ivar vias: every Via value as received (the top one unstamped).
    @ivar tid: the transaction id.
    @ivar from_value: the From value.
    @ivar leg: the leg it arrived on.
    @ivar source: where it came from.
    """

    request: Request
    method: str
    uri: URI | None
    uri_error: str | None
    routes: tuple[str, ...]
    max_forwards: int | None
    proxy_require: tuple[str, ...]
    via: Via
    vias: tuple[str, ...]
    tid: str
    from_value: str
    leg: LegIdentity
    source: Address


def stamp_via(via: Via, source: Address) -> bool:
    """
    Record on a request's top Via where it really came from: RFC 3261
    §18.2.1 adds C{received=<source ip>} when the sent-by host differs
    from the source IP; RFC 3581 §4 fills in an empty C{rport} with the
    source port and adds C{received} in any case.

    @return: whether C{via} changed.
    """
    changed = False
    if via.rport == "":
        via.params["rport"] = str(source.port)
        changed = True
    if source.addr is not None and (changed or via.host != source.addr):
        via.params["received"] = source.addr
        changed = True
    return changed


def request_view(request: Request, leg: LegIdentity, source: Address) -> RequestView:
    """
    Read what the decision needs from C{request}, once.  The top Via is
    stamped (L{stamp_via}) on the message too: every answer and every
    forwarded copy carries the stamp.

    @raise SIPParseError: the top Via is missing or malformed (the request
        is answered 400 at the source address).
    """
    vias = request.get_headers("via")
    if not vias:
        raise SIPParseError("missing Via")
    via = parse_via(vias[0])
    if stamp_via(via, source):
        request.set_header("via", str(via), 0)
    text = request.uri
    try:
        uri: URI | None = parse_uri(text)
        uri_error = None
    except SIPParseError as e:
        uri, uri_error = None, e.reason
    max_forwards = request.get_header("max-forwards")
    return RequestView(
        request,
        request.method,
        uri,
        uri_error,
        tuple(request.get_headers("route")),
        None if max_forwards is None else int(max_forwards),
        tuple(request.get_headers("proxy-require")),
        via,
        tuple(vias),
        request.tid,
        request.get_header("from") or "",
        leg,
        source,
    )


class ResponseView(NamedTuple):
    """
    One received response: its Via values and where it came from.

    @ivar response: the parsed message.
    @ivar vias: the first three Via values (ours, maybe our second, the
        next hop's).
    """

    response: Response
    vias: tuple[str, ...]


def response_view(response: Response) -> ResponseView:
    """
    Read what L{decide_response} needs from C{response}.
    """
    return ResponseView(response, tuple(response.get_headers("via")[:3]))


# ---------------------------------------------------------------------------
# Outcomes


class Edits(NamedTuple):
    """
    The leg-independent changes a forwarded request gets.  The executor
    adds what depends on the leg it leaves by: the Via (C{leg.branch +
    branch}) and the Record-Route.

    @ivar max_forwards: the Max-Forwards to write.
    @ivar uri: the new Request-URI, or L{None} to keep it.
    @ivar routes: the Route values to leave with, or L{None} to keep them.
    @ivar record_route: whether to Record-Route (not for REGISTER).
    @ivar branch: the branch after the leg's prefix (RFC 3261 §16.11).
    @ivar strip: the indexes of the Proxy-Authorization values to remove:
        our own credentials, used up here (§22.3).
    @ivar path: for a REGISTER we forward to another registrar that came
        straight from the phone and supports Path: the phone's flow, to
        name in a Path of ours (RFC 3327, RFC 5626 §5.1).
    """

    max_forwards: int
    uri: str | None
    routes: tuple[str, ...] | None
    record_route: bool
    branch: str
    strip: tuple[int, ...] = ()
    path: Flow | None = None


class Forward(NamedTuple):
    """
    Send the request on.

    @ivar targets: the next hops to resolve (RFC 3263) and try in order.
    @ivar edits: the changes to make.
    @ivar prefer: the leg to try first: the one the last of our Routes
        named, else the one it arrived on.
    @ivar forks: for a request to an address of record of ours, its
        contacts, one group per q value, best first (a stateful proxy
        forks to them, L{sipleg.stateful}; the stateless one uses the
        first, which C{edits.uri} names).  Several L{targets} (a routing
        hook's list, L{sipleg.routehook}) go with the URIs of C{forks}, in
        order: the stateless proxy fails over from one to the next.
    @ivar user: the user the request's sender proved to be
        (L{Authenticated}), if any.
    @ivar flows: C{(contact, flow)} for the contacts of C{forks} that are
        reached over the hop they registered by (L{sipleg.flows}): a
        request to such a contact goes over its flow, not to the next hop
        of its URI.
    @ivar paths: C{(contact, Path values)} for the contacts of C{forks}
        registered through a Path (RFC 3327): their Route set.
    """

    targets: tuple[URI, ...]
    edits: Edits
    prefer: LegIdentity
    forks: tuple[tuple[str, ...], ...] = ()
    user: str | None = None
    flows: tuple[tuple[str, Flow], ...] = ()
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def path_of(self, contact: str) -> tuple[str, ...]:
        """
        The Route set of a request to C{contact} (one of L{forks}): its
        Path, or none.
        """
        for registered, path in self.paths:
            if registered == contact:
                return path
        return ()

    def flows_of(self, contact: str) -> tuple[Flow, ...]:
        """
        The flows a request to C{contact} (one of L{forks}) goes over, the
        first open one (several for an RFC 5626 instance); empty when none.
        """
        return tuple(flow for registered, flow in self.flows if registered == contact)


class Located(NamedTuple):
    """
    The location service's answer for an address of record with current
    bindings.

    @ivar groups: the contact URIs, one group per q value, best first.
    @ivar flows: C{(contact, flow)} for the contacts reached over a flow.
    @ivar paths: C{(contact, Path values)} for the contacts registered
        through a Path.
    """

    groups: list[list[str]]
    flows: tuple[tuple[str, Flow], ...] = ()
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()


class Answer(NamedTuple):
    """
    Answer the request statelessly.

    @ivar code: the status code.
    @ivar reason: the reason phrase (names the fault).
    @ivar headers: extra C{(name, value)} header fields.
    """

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


class Drop(NamedTuple):
    """
    Send nothing (an ACK that cannot go on, a response not ours ...).

    @ivar reason: a fixed description, for the log and the counters.
    """

    reason: str


class Authenticated(NamedTuple):
    """
    The authentication step's answer for a request whose sender proved
    who they are (L{sipleg.auth}).

    @ivar user: the user proved.
    """

    user: str


class Register(NamedTuple):
    """
    A REGISTER for one of our domains: the registrar answers it.
    """


class Return(NamedTuple):
    """
    Send a response back along the Via path (RFC 3261 §16.7, §18.2.2).

    @ivar vias: how many Via values of ours to remove from the top.
    @ivar leg: the leg to send by.
    @ivar pinned: whether only C{leg} may send it (our second Via named
        it), else C{leg} first, then the others.
    @ivar targets: the addresses to try (received/rport, then the sent-by
        port for streams), or a URI to resolve for a sent-by name.
    """

    vias: int
    leg: LegIdentity
    pinned: bool
    targets: tuple[Address, ...] | URI


Decision = Forward | Answer | Drop | Register


# ---------------------------------------------------------------------------
# Rules


@dataclass(frozen=True, slots=True)
class Rules:
    """
    Everything a decision depends on besides the packet.

    @ivar legs: our legs.
    @ivar access: who may use the proxy.
    @ivar routes: static next hops for requests without a Route set.
    @ivar registers: whether a REGISTER with this Request-URI is ours to
        answer; L{None} without a registrar.
    @ivar locate: the location service (RFC 3261 §16.5): for a
        Request-URI, L{None} (not an address of record of ours), a status
        code (404, 480) or the L{Located} contacts, best first.
    @ivar scanners: lower-case User-Agent fragments of SIP scanners: their
        requests from untrusted sources are dropped without an answer.
    @ivar auth: the authentication step (L{sipleg.auth.Authenticator}):
        given the request and whether it is a REGISTER for our registrar,
        L{None} (nothing to prove), L{Authenticated} or the L{Answer}
        (a challenge, 403).
    @ivar credentials: with C{auth}, the indexes of a request's
        Proxy-Authorization values for our realm: removed from every
        request forwarded, checked or not (RFC 3261 §22.3; the ACK of a
        2xx repeats the INVITE's, §13.2.2.4).
    @ivar flow_token: the flow a token in the user part of one of our
        Routes names (L{sipleg.flows.token_flow}: our Path or
        Record-Route), or L{None}.
    """

    legs: LegSet
    access: IAccessPolicy
    routes: IRoutePolicy
    registers: Callable[[URI], bool] | None = None
    locate: Callable[[URI], int | Located | None] | None = None
    scanners: tuple[str, ...] = ()
    auth: Callable[[RequestView, bool], Answer | Authenticated | None] | None = None
    credentials: Callable[[Request], tuple[int, ...]] | None = None
    flow_token: Callable[[str], Flow | None] | None = None


# ---------------------------------------------------------------------------
# Building blocks (shared with Leg's public methods)


def next_max_forwards(value: int | None, cap: int) -> int | None:
    """
    RFC 3261 §16.6 item 3 / §16.3 item 3: the Max-Forwards a request
    leaves with (an absent one counts as C{cap}, a larger one is capped),
    or L{None} when it arrived with 0 (answer 483).
    """
    value = cap if value is None else min(value, cap)
    return value - 1 if value > 0 else None


def route_value_uri(value: str) -> URI | None:
    """
    The URI of a Route / Record-Route value, or L{None} when unparsable.
    """
    try:
        return route_uri(value)
    except SIPParseError:
        return None


def from_tag(value: str | None) -> str:
    """
    The tag of a From value, as the loop hash takes it: C{""} when there
    is none, the whole value when it cannot be parsed.
    """
    if not value:
        return ""
    try:
        return header_tag(value) or ""
    except SIPParseError:
        return value


def next_hop(uri: URI, rules: Rules) -> URI:
    """
    Where a request for C{uri} without a Route set goes: the static route
    or outbound proxy that covers it, else C{uri} itself.  The one answer
    for the Request-URI and for every forked contact alike.
    """
    static = rules.routes.next_hop(uri)
    return static if static is not None else uri


def restore_strict_route(uri: URI | None, routes: tuple[str, ...], legs: LegSet) -> tuple[str, ...] | None:
    """
    RFC 3261 §16.4: when the Request-URI is a value we put in a
    Record-Route (one of our legs, with no user part) the previous hop was
    a strict router: the last Route is the real Request-URI.

    @return: the Route values with the last one taken out (its URI is the
        new Request-URI), or L{None} when there is nothing to restore.
    """
    if routes and uri is not None and uri.user is None and legs.hop(uri) is not None:
        if route_value_uri(routes[-1]) is not None:
            return routes[:-1]
    return None


def strip_own_routes(routes: tuple[str, ...], legs: LegSet) -> tuple[tuple[str, ...], LegIdentity | None]:
    """
    Take every leading Route value that names one of our legs off
    (RFC 3261 §16.4 for each of our addresses: a request that crossed legs
    was Record-Routed twice, design item 1).

    @return: the remaining values and the leg the last removed one named.
    """
    found = None
    start = 0
    while start < len(routes):
        leg = legs.hop(route_value_uri(routes[start]))
        if leg is None:
            break
        found = leg
        start += 1
    return routes[start:], found


# ---------------------------------------------------------------------------
# Decisions


def decide_request(view: RequestView, rules: Rules) -> Decision:
    """
    What to do with a request (RFC 3261 §16.3-§16.6, §16.5 with a
    registrar, §10.3 step 1).

    The order: a SIP scanner from an untrusted source (dropped silently),
    the Request-URI scheme (416, or 400 when malformed), a
    Proxy-Require (420: we support no extension a proxy must understand),
    strict-route restoration and our own Routes (§16.4), a request
    addressed to the proxy itself (L{addressed_to_us}), the access policy
    (403; not for an in-dialog request that came through a Route of
    ours), Max-Forwards (483), authentication (401/407 challenges, 403;
    not for an in-dialog request through a Route of ours; an
    authenticated user of ours passes the access policy), REGISTER for
    us, the location service
    (404/480 or retarget), the next hop (§16.6 items 6-7: Route set, static
    routes and outbound proxy, else the Request-URI), and last the loop
    check (§16.3 item 4: 482) on the request as it would leave.  An ACK is
    never answered: where another request gets an answer, an ACK is
    dropped.
    """
    method = view.method
    if rules.scanners and _scanner(view, rules):
        return Drop("scanner")
    if method == "ACK" and _acks_our_answer(view):
        return Drop("for our answer")
    uri = view.uri
    if uri is None:
        return _refuse(method, 400, f"Bad Request-URI: {view.uri_error}")
    if not uri.is_sip:
        return _refuse(method, 416, "Unsupported URI Scheme")
    if view.proxy_require:
        if method == "ACK":
            return Drop("Bad Extension")
        return Answer(420, "Bad Extension", tuple(("Unsupported", value) for value in view.proxy_require))

    legs = rules.legs
    routes = view.routes
    text = view.request.uri
    new_uri: str | None = None
    restored = restore_strict_route(uri, routes, legs)
    if restored is not None:
        new_uri = str(route_uri(routes[-1]))
        uri = parse_uri(new_uri)
        routes = restored
    token_flow = None
    if routes:
        ours = routes
        routes, named = strip_own_routes(routes, legs)
        if rules.flow_token is not None:
            token_flow = _token_flow(view, ours[: len(ours) - len(routes)], rules.flow_token)
    else:
        named = None

    registers = method == "REGISTER" and rules.registers is not None and rules.registers(uri)
    if not routes and not registers and uri.user is None and legs.hop(uri) is not None:
        return addressed_to_us(method, rules.registers is not None)
    through_us = (named is not None or restored is not None) and in_dialog(view)
    max_forwards = next_max_forwards(view.max_forwards, view.leg.max_forwards)
    proved: Authenticated | None = None
    if rules.auth is not None and not through_us and max_forwards is not None:
        step = rules.auth(view, registers)
        if isinstance(step, Answer):
            return step
        proved = step
    if not through_us and proved is None and not rules.access.allows(view.request, uri, view.source):
        return _refuse(method, 403, "Forbidden")
    if max_forwards is None:
        return _refuse(method, 483, "Too Many Hops")
    if registers:
        return Register()
    forks: tuple[tuple[str, ...], ...] = ()
    flows: tuple[tuple[str, Flow], ...] = ()
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    if rules.locate is not None and not routes:
        found = rules.locate(uri)
        if isinstance(found, int):
            if found == 480 and not rules.access.trusts(view.source):
                # Strangers do not learn which users ever registered.
                found = 404
            return _refuse(method, found, _LOCATE_REASONS[found])
        if found is not None and found.groups:
            forks = tuple(tuple(group) for group in found.groups)
            flows, paths = found.flows, found.paths
            new_uri = found.groups[0][0]
            for contact, path in paths:
                if contact == new_uri and path:
                    # RFC 3327 §5.4: the Path is the Route set.
                    routes = path
            try:
                uri = parse_uri(new_uri)
            except SIPParseError as e:
                return _refuse(method, 400, e.reason)

    if token_flow is not None and not routes:
        # RFC 5626 §5.3: a request through our Path or Record-Route with
        # a flow token goes over that flow.
        flows = ((new_uri if new_uri is not None else text, token_flow),)
    if routes:
        first = route_value_uri(routes[0])
        if first is None:
            return _refuse(method, 400, "Bad Route")
        if "lr" in first.params:
            target = first
        else:
            # §16.6 item 6: the next hop is a strict router: it gets the
            # Request-URI, which moves to the end of the Route set.
            routes = (*routes[1:], f"<{new_uri if new_uri is not None else text}>")
            new_uri = str(first)
            target = first
    else:
        target = next_hop(uri, rules)

    edits = forward_edits(view, rules, new_uri, routes, max_forwards)
    if not isinstance(edits, Edits):
        return edits
    if method == "REGISTER" and rules.flow_token is not None and len(view.vias) == 1:
        phone = _path_flow(view)
        if phone is not None:
            edits = edits._replace(path=phone)
    return Forward(
        (target,), edits, named or view.leg, forks, proved.user if proved is not None else None, flows, paths
    )


def forward_edits(
    view: RequestView, rules: Rules, new_uri: str | None, routes: tuple[str, ...], max_forwards: int
) -> Edits | Answer | Drop:
    """
    The L{Edits} of a request leaving with the Request-URI C{new_uri}
    (L{None}: unchanged) and the Route values C{routes}, after the loop
    check (RFC 3261 §16.3 item 4: 482) on the request as it would leave.
    A request retargeted after the decision (L{sipleg.routehook}) gets
    its edits here too, so its branch and loop hash name its new
    Request-URI.
    """
    method = view.method
    out_uri = new_uri if new_uri is not None else view.request.uri
    from_value = view.from_value
    loop = loop_hash(out_uri, from_tag(from_value), view.tid, routes, view.proxy_require)
    if carries_loop(view.vias, rules.legs, loop):
        return _refuse(method, 482, "Loop Detected")
    top_branch = view.via.branch or view.vias[0]
    branch = transaction_hash(
        view.tid,
        top_branch,
        view.request.get_headers("proxy-authorization"),
        view.proxy_require,
        routes,
        from_value,
        out_uri,
        loop,
    )
    return Edits(
        max_forwards,
        new_uri,
        routes if routes != view.routes else None,
        method != "REGISTER",
        branch,
        rules.credentials(view.request) if rules.credentials is not None else (),
    )


_LOCATE_REASONS = {404: "Not Found", 480: "Temporarily Unavailable"}


def _token_flow(
    view: RequestView, ours: tuple[str, ...], flow_token: Callable[[str], Flow | None]
) -> Flow | None:
    """
    The flow a token in one of our Route values C{ours} names, unless it
    is the flow the request came by (the phone's own requests in the
    dialog carry the token too, RFC 5626 §5.3).
    """
    came = (view.leg.proto, view.source.addr, view.source.port)
    for value in ours:
        uri = route_value_uri(value)
        if uri is not None and uri.user:
            flow = flow_token(uri.user)
            if flow is not None and (flow.transport, flow.host, flow.port) != came:
                return flow
    return None


def _path_flow(view: RequestView) -> Flow | None:
    """
    The phone's flow, for the Path of a REGISTER we forward (RFC 3327
    §5.1: only when it says C{Supported: path}), outbound when its
    Contact asks (RFC 5626 §5.1).
    """
    request = view.request
    supported = request.get_headers("supported")
    options = {option.strip().lower() for value in supported for option in value.split(",")}
    source = view.source
    if "path" not in options or source.addr is None:
        return None
    instance, reg_id = "", 0
    try:
        params = parse_name_addr(request.get_header("contact") or "").params
    except SIPParseError:
        params = {}
    number = params.get("reg-id") or ""
    if number.isascii() and number.isdigit() and 0 < len(number) <= 10:
        instance = (params.get("+sip.instance") or "").strip('"')
        if any(c.isspace() or c == "," for c in instance):
            instance = ""
        reg_id = int(number) if instance else 0
    return Flow(view.leg.proto, source.addr, source.port, "", instance, reg_id)


def addressed_to_us(method: str, registrar: bool) -> Answer | Drop:
    """
    The answer to a request whose Request-URI names one of our legs with
    no user part and no Route left: the proxy is its target (RFC 3261
    §16.5: "a resource at this proxy") and answers as a UAS would.

     - OPTIONS, the keep-alive ping of trunks and phones: 200 with Allow
       and Accept (RFC 3261 §11.2), from any source (it reaches nobody
       else, so it is no relay);
     - CANCEL: 481, as there is no transaction of ours it could cancel
       (§9.2);
     - ACK: nothing (an ACK is never answered);
     - any other method: 405 with Allow (§8.2.1): the proxy itself
       implements no other method (REGISTER for our addresses is the
       registrar's, decided before this).
    """
    allow = "OPTIONS, REGISTER" if registrar else "OPTIONS"
    if method == "OPTIONS":
        return Answer(200, "OK", (("Allow", allow), ("Accept", "application/sdp")))
    if method == "ACK":
        return Drop("ACK for us")
    if method == "CANCEL":
        return Answer(481, "Call/Transaction Does Not Exist")
    return Answer(405, "Method Not Allowed", (("Allow", allow),))


def in_dialog(view: RequestView) -> bool:
    """
    Whether a request belongs to a dialog (its To has a tag).  Such a
    request that came through a Route of ours follows a Record-Route we
    put in the dialog, so the access policy does not apply to it: the ACK
    and BYE of a call a stranger placed to our domain go to the callee's
    contact, which is not our domain.
    """
    to = view.request.get_header("to")
    if not to:
        return False
    try:
        return header_tag(to) is not None
    except SIPParseError:
        return False


def _acks_our_answer(view: RequestView) -> bool:
    """
    Whether an ACK acknowledges an error answer of ours (a challenge, a
    403 ...): its To tag is the one we gave the INVITE's answer
    (L{sipleg.message.answer_tag}; the ACK of a non-2xx answer repeats
    the INVITE's Call-ID, From, CSeq number and top Via, RFC 3261
    §17.1.1.3).  It ends there: the callee never saw that INVITE.
    """
    request = view.request
    try:
        tag = header_tag(request.get_header("to") or "")
    except SIPParseError:
        return False
    if tag is None or len(tag) != 16:
        return False
    return tag == answer_tag(
        request.get_header("call-id"),
        view.from_value,
        f"{request.cseq[0]} INVITE",
        request.get_header("via"),
    )


def _scanner(view: RequestView, rules: Rules) -> bool:
    """
    Whether a request from an untrusted source names a SIP scanner as its
    User-Agent (answering scanners tells them we exist).
    """
    if rules.access.trusts(view.source):
        return False
    agent = view.request.get_header("user-agent")
    if not agent:
        return False
    agent = agent.lower()
    return any(fragment in agent for fragment in rules.scanners)


def _refuse(method: str, code: int, reason: str) -> Answer | Drop:
    return Drop(reason) if method == "ACK" else Answer(code, reason)


def carries_loop(vias: tuple[str, ...], legs: LegSet, loop: str) -> bool:
    """
    Whether a Via of ours carries C{loop}: the request was here before,
    unchanged (RFC 3261 §16.3 item 4).
    """
    for value in vias:
        if legs.via_owner(value) is not None:
            branch = _branch(value)
            if branch is not None and branch.endswith(loop):
                return True
    return False


def decide_response(view: ResponseView, legs: LegSet) -> Return | Drop:
    """
    Where a response goes (RFC 3261 §16.7 item 3, §18.2.2): only a
    response whose top Via is ours goes on (design item 3).  Our Via comes
    off; when the request crossed legs our second Via names the leg it came
    in by, which the response must leave by (it holds the connection), and
    comes off too.  The next Via then says where to.
    """
    vias = view.vias
    owner = legs.via_owner(vias[0]) if vias else None
    if owner is None:
        return Drop("foreign-via")
    pinned = legs.via_owner(vias[1]) if len(vias) > 1 else None
    removed = 2 if pinned is not None else 1
    if len(vias) <= removed:
        return Drop("no-usable-via")
    try:
        via = parse_via(vias[removed])
    except SIPParseError:
        return Drop("no-usable-via")
    targets = response_targets(via)
    if targets is None:
        return Drop("no-usable-via")
    return Return(removed, pinned or owner, pinned is not None, targets)


def response_targets(via: Via) -> tuple[Address, ...] | URI | None:
    """
    Where a response to C{via} goes: its L{response_target} (and, for a
    stream, the L{response_fallback}), or a URI to resolve when the
    sent-by is a name; L{None} for a transport we do not speak.
    """
    target = response_target(via)
    if target is None:
        return None
    if not target.is_ip:
        try:
            return parse_uri(f"sip:{target.hostport};transport={target.proto}")
        except SIPParseError:
            return None
    fallback = response_fallback(via)
    return (target,) if fallback is None else (target, fallback)


def _branch(value: str) -> str | None:
    try:
        return via_branch(value)
    except SIPParseError:
        return None
