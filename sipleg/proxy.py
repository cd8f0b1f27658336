"""
L{StatelessProxy}: RFC 3261 §16 forwarding without transaction state.

The proxy is the receiver of a L{sipleg.dispatcher.Dispatcher} and the
executor of the request pass (C{docs/design.md}, "The request pass"):
for each packet it builds one view (L{sipleg.decision.request_view},
L{sipleg.decision.response_view}), asks the pure decision functions of
L{sipleg.decision} what to do, and does it:

 - L{Forward}: apply the edits once, resolve the next hop (at once for an
   IP literal, through RFC 3263 DNS otherwise) and try the targets in
   order (L{Dispatcher.send_in_order}), splicing the outgoing leg's Via and
   Record-Route on top of the edited bytes;
 - L{Answer}: a stateless response, sent where the request's top Via
   says, or to the source address when no Via can be used (one place
   sends every answer: L{StatelessProxy._send_response});
 - L{Register}: the registrar answers;
 - L{Return}: a response goes back along the Via path;
 - L{Drop}: counted and logged.

Nothing waits on a L{Deferred} unless I/O does (DNS, a stream connect).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.address import Address
from sipleg.decision import (
    Answer,
    Drop,
    Edits,
    Forward,
    LegIdentity,
    LegSet,
    Located,
    Register,
    RequestView,
    Rules,
    decide_request,
    decide_response,
    request_view,
    response_targets,
    response_view,
)
from sipleg.dispatcher import Dispatcher, pair_legs
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.flood import EdgePolicy, FloodControl, FloodLimits, Verdict
from sipleg.flows import (
    FLOW_REASONS,
    STREAMS,
    Flow,
    asks_outbound,
    flow_gone,
    flow_token,
    token_flow,
    token_route,
)
from sipleg.leg import BadMessage, Leg
from sipleg.message import Message, Request, Response, make_response, salvage_answer
from sipleg.refusals import RefusalLog
from sipleg.registrar import Registrar
from sipleg.routing import IAccessPolicy, IRoutePolicy, NetworkAccessPolicy, StaticRoutes
from sipleg.stats import ProxyStats
from sipleg.uri import URI, Via

if TYPE_CHECKING:
    from sipleg.auth import Authenticator
    from sipleg.flowrelay import FlowRelay
    from sipleg.hookclient import RouteHookClient

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
        edge: EdgePolicy | None = None,
        clock: IReactorTime | None = None,
        auth: Authenticator | None = None,
        route_hook: RouteHookClient | None = None,
    ) -> None:
        """
        @param dispatcher: the dispatcher whose legs the proxy forwards
            between; the proxy becomes its receiver.
        @param access: who may use the proxy (see L{access}).
        @param routes: static next hops (see L{routes}).
        @param registrar: answers REGISTER for our domains and resolves
            their addresses of record (RFC 3261 §10.3, §16.5); none by
            default.
        @param edge: what untrusted sources may send (flood control,
            scanners); none by default.
        @param clock: the time for flood control (default: the reactor).
        @param auth: who must authenticate, and how (L{sipleg.auth}); its
            bans of sources that fail too often are the proxy's to keep.
        @param route_hook: the web service that routes initial requests
            (L{sipleg.hookclient}, C{--route-url}); none by default.
        """
        self.route_hook = route_hook
        self.registrar = registrar
        #: With C{--workers}: hands requests over flows of other workers
        #: to them (L{sipleg.flowrelay}).
        self.flow_relay: FlowRelay | None = None
        #: What our flow tokens are signed with (L{sipleg.flows.flow_token}):
        #: the workers of C{--workers} share it.
        self.flow_secret = secrets.token_bytes(16)
        self.auth = auth
        self.edge = edge if edge is not None else EdgePolicy(flood=None, scanners=())
        limits = self.edge.flood
        # Sources that fail to authenticate are banned even without rate
        # limits (then with the default ban time).
        flooding = limits is not None or auth is not None
        self._flood = FloodControl(limits or FloodLimits()) if flooding else None
        if auth is not None:
            auth.on_ban = self._auth_ban
        if clock is None and self._flood is not None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._refusals: RefusalLog | None = None
        self.stats = ProxyStats()
        self.dispatcher = dispatcher
        self.access: IAccessPolicy = access if access is not None else NetworkAccessPolicy()
        self.routes: IRoutePolicy = routes if routes is not None else StaticRoutes()
        self._rules_key: tuple[int, int, int] = (-1, -1, -1)
        self._registrar: Registrar | None = None
        self._rules: Rules | None = None
        self._legs: dict[LegIdentity, Leg] = {}
        self._transports: tuple[str, ...] = ()
        dispatcher.receiver = self
        # request_view() stamps received/rport on the top Via it parses.
        dispatcher.stamps = False
        self._gate_legs()

    def _gate_legs(self) -> None:
        """
        Put flood control in front of the parser of every leg.
        """
        gate = self._admit if self._flood is not None else None
        for leg in self.dispatcher.legs:
            leg.gate = gate

    def _admit(self, source: Address, data: bytes) -> bool:
        """
        Flood control (L{sipleg.flood}) for a packet from C{source}, before
        it is parsed: trusted sources always pass; requests are counted,
        responses only stopped while their source is banned; a banned
        source's packets are dropped without an answer, and its ban logged
        once in a stable form for fail2ban (C{docs/fail2ban/}).
        """
        if self.access.trusts(source):
            return True
        assert self._flood is not None and self._clock is not None and source.addr is not None
        now = self._clock.seconds()
        if data.startswith(b"SIP/"):
            if not self._flood.is_banned(source.addr, now):
                return True
            self.stats.dropped["banned"] += 1
            return False
        if self.edge.flood is None:
            verdict = Verdict.DROP if self._flood.is_banned(source.addr, now) else Verdict.ADMIT
        else:
            verdict = self._flood.check(source.addr, now)
        if verdict is Verdict.ADMIT:
            return True
        if verdict is Verdict.BANNED:
            limits = self._flood.limits
            self.stats.dropped["ban"] += 1
            log.warn(
                "banned source {source} for {ban:g} s: more than {limit} packets in {window:g} s",
                source=source.addr,
                ban=limits.ban,
                limit=limits.limit,
                window=limits.window,
            )
        else:
            self.stats.dropped["banned"] += 1
        return False

    def _auth_ban(self, source: Address, user: str, failures: int, window: float) -> None:
        """
        Ban a source that failed to authenticate too often (L{sipleg.auth}),
        logged once in the form of the flood bans, with the user it tried.
        """
        assert self._flood is not None and self._clock is not None and source.addr is not None
        self._flood.ban(source.addr, self._clock.seconds())
        self.stats.dropped["ban"] += 1
        log.warn(
            "banned source {source} for {ban:g} s: {failures} failed authentications in {window:g} s"
            " (user {user!r})",
            source=source.addr,
            ban=self._flood.limits.ban,
            failures=failures,
            window=window,
            user=user[:64],
        )

    def banned(self) -> list[str]:
        """
        The sources banned now (flooding, or failing to authenticate), for
        the status page.
        """
        if self._flood is None or self._clock is None:
            return []
        return self._flood.banned(self._clock.seconds())

    @property
    def rules(self) -> Rules:
        """
        The frozen L{Rules} the decisions are made with, rebuilt when the
        legs (or a leg's identity), the policies or the registrar change.
        """
        dispatcher = self.dispatcher
        rules = self._rules
        if (
            rules is None
            or self._rules_key != (dispatcher.generation, len(dispatcher.legs), Leg.identities_made)
            or rules.access is not self.access
            or rules.routes is not self.routes
            or self._registrar is not self.registrar
            or rules.auth is not self.auth
        ):
            self._rules_key = (dispatcher.generation, len(dispatcher.legs), Leg.identities_made)
            self._registrar = self.registrar
            identities = tuple(leg.identity for leg in dispatcher.legs)
            legs = LegSet(identities)
            registers = locate = None
            if self.registrar is not None:
                registers, locate = _registrar_rules(self.registrar, legs)
            rules = self._rules = Rules(
                legs,
                self.access,
                self.routes,
                registers,
                locate,
                self.edge.scanners,
                self.auth,
                self.auth.own_credentials if self.auth is not None else None,
                partial(token_flow, secret=self.flow_secret),
            )
            self._gate_legs()
            self._legs = {leg.identity: leg for leg in self.dispatcher.legs}
            self._transports = tuple(dict.fromkeys(leg.proto for leg in self.dispatcher.legs))
        return rules

    def is_own_uri(self, uri: URI) -> bool:
        """
        Whether C{uri} names one of our legs' addresses
        (L{sipleg.decision.LegSet.hop}).
        """
        return self.rules.legs.hop(uri) is not None

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

    def forward_response(self, response: Response, leg: Leg) -> Deferred[Any] | None:
        """
        Route a response back along the Via path (RFC 3261 §16.7): see
        L{sipleg.decision.decide_response}.

        @return: a L{Deferred} when the send waits on I/O, else L{None}.
        """
        rules = self.rules
        decision = decide_response(response_view(response), rules.legs)
        if isinstance(decision, Drop):
            self.stats.dropped[decision.reason] += 1
            log.info(
                "dropping response {code} {callid}: {reason}",
                code=response.code,
                callid=response.get_header("call-id"),
                reason=decision.reason,
            )
            return None
        for _ in range(decision.vias):
            response.remove_header("via", 0)
        self.stats.responses[f"{response.code // 100}xx"] += 1
        out = self._legs[decision.leg]
        # Unpinned, the request left by the leg it came in on (one Via of
        # ours): that leg holds its connection, so it is tried first.
        legs = [out] if decision.pinned else self._legs_from(out)
        return self._send(response, decision.targets, legs, _wire(response))

    # -- requests ----------------------------------------------------------

    def forward_request(self, request: Request, leg: Leg, source: Address) -> Deferred[Any] | None:
        """
        Decide about a request (RFC 3261 §16.3-§16.6) and do it.

        @return: a L{Deferred} when the work waits on I/O, else L{None}.
        """
        stats = self.stats
        stats.requests[stats.method(request.method)] += 1
        rules = self.rules
        try:
            view = request_view(request, leg.identity, source)
        except SIPParseError as e:
            self._answer_bad(BadMessage(e, bytes(request)), leg, source)
            return None
        decision = decide_request(view, rules)
        if isinstance(decision, Forward):
            hook = self.route_hook
            if hook is not None and hook.asks(view, decision):
                return self._ask_hook(hook, view, decision, leg, rules)
            return self._forward(view, decision, leg)
        if isinstance(decision, Answer):
            if decision.code == 403:
                self._refused(request, source, decision)
            return self._answer(view, decision, leg)
        if isinstance(decision, Register):
            assert self.registrar is not None
            # Only a REGISTER straight from the phone (one Via) came by
            # the phone's own flow (RFC 5626 §6: the registrar is then
            # its first hop).
            answer = self.registrar.register(request, source=source if len(view.vias) == 1 else None)
            if isinstance(answer, Deferred):
                # Answered once the store has kept the change.
                return answer.addCallback(self._registered, view, leg)
            return self._registered(answer, view, leg)
        assert isinstance(decision, Drop)
        # An ACK refused, or a packet with nothing to answer: the counter
        # keys are the decisions' fixed reasons, a small set whatever
        # peers send.
        stats.dropped[f"ACK {decision.reason}" if request.method == "ACK" else decision.reason] += 1
        log.info(
            "dropping {method} {uri}: {reason}",
            method=request.method,
            uri=request.uri,
            reason=decision.reason,
        )
        return None

    def _ask_hook(
        self, hook: RouteHookClient, view: RequestView, forward: Forward, leg: Leg, rules: Rules
    ) -> Deferred[Any] | None:
        """
        Ask the routing hook about a request the proxy would forward, and
        do what its answer makes of C{forward} (L{_routed}).
        """
        asked = hook.route(view, forward, rules)
        # (None: a retransmission while its call is pending.)
        return None if asked is None else asked.addCallback(self._routed, view, leg)

    def _routed(self, decision: Forward | Answer | Drop, view: RequestView, leg: Leg) -> Deferred[Any] | None:
        """
        Do what the routing hook's answer made of a L{Forward}.
        """
        if isinstance(decision, Forward):
            return self._forward(view, decision, leg)
        if isinstance(decision, Answer):
            return self._answer(view, decision, leg)
        self.stats.dropped[decision.reason] += 1
        return None

    def _refused(self, request: Request, source: Address, answer: Answer) -> None:
        """
        Log a refusal (rate-limited: L{RefusalLog}).
        """
        if self._refusals is None:
            clock = self._clock
            if clock is None:
                from twisted.internet import reactor as clock
            assert clock is not None
            self._refusals = RefusalLog(clock)
        self._refusals.refused(source, request.method, request.uri, answer.code, answer.reason)

    def _forward(self, view: RequestView, forward: Forward, in_leg: Leg) -> Deferred[Any] | None:
        """
        Execute a L{Forward}: edit the request once, then splice the
        outgoing leg's lines on top of its bytes for each target tried.
        The edits leave alone what an error answer is built from (Via,
        From, To, Call-ID, CSeq), so the request is edited in place.
        """
        return self._send_request(view, forward, in_leg, edit(view.request, forward.edits), 0)

    def _send_request(
        self, view: RequestView, forward: Forward, in_leg: Leg, request: Request, index: int
    ) -> Deferred[Any] | None:
        """
        Send the edited request to C{forward.targets[index]}; when it
        cannot be delivered there, to the next target, if any.
        """
        if index:
            # The next of several targets (a routing hook's list) goes
            # with the next URI of the forks.
            request.uri = [uri for group in forward.forks for uri in group][index]
        legs = self._legs_from(self._legs[forward.prefer])
        relay = self.flow_relay
        found = flows_hop(forward.flows_of(request.uri), legs, relay) if forward.flows else None
        edits = forward.edits
        tokens: tuple[str, ...] = ()
        if edits.record_route:
            tokens = self._tokens(view, found[0] if isinstance(found, tuple) else None)
        if tokens or edits.path is not None:
            path = edits.path
            if path is not None and relay is not None and path.transport in STREAMS:
                path = replace(path, owner=relay.address)
            build = self._builder(
                request, edits.branch, edits.record_route, in_leg, tokens, path, self.flow_secret
            )
        else:
            build = self._builder(request, edits.branch, edits.record_route, in_leg)
        # A datagram held back (design item 18) that fails when it is sent
        # moves on to the next address by itself; this hears when none is
        # left.
        failed = partial(self._target_failed, view, forward, in_leg, request, index)
        try:
            if isinstance(found, int):
                return self._flow_failed(view, forward, in_leg, request, index, found)
            if found is None:
                sent = self.dispatcher.send_to(
                    forward.targets[index], legs, request, build, failed, self._transports
                )
            else:
                flow, (leg, address, conn) = found
                if relay is not None and conn is relay:
                    relay.send(flow, build(leg)[0])
                    sent = (leg, address)
                else:
                    sent = self.dispatcher.send_in_order(
                        ((leg, address),), on_connection(build, conn), failed=failed
                    )
        except DeliveryError as e:
            return self._target_failed(view, forward, in_leg, request, index, e)
        if isinstance(sent, Deferred):
            sent.addCallbacks(
                self._forwarded,
                self._unreachable,
                (request,),
                errbackArgs=(view, forward, in_leg, request, index),
            )
            return sent
        self._forwarded(sent, request)
        return None

    def _tokens(self, view: RequestView, out: Flow | None) -> tuple[str, ...]:
        """
        The flow tokens for our Record-Route of a request (RFC 5626 §5.3):
        the flow it goes over, and the stream it came by straight from a
        phone that asks (C{;ob} in its Contact), so that the dialog's
        later requests reach either end over its own connection.
        """
        tokens: tuple[str, ...] = () if out is None else (flow_token(out, self.flow_secret),)
        source = view.source
        if view.leg.proto not in STREAMS or len(view.vias) != 1 or source.addr is None:
            return tokens
        try:
            contact = view.request.get_header("contact")
        except SIPParseError:
            # A malformed Contact asks for nothing (the request goes on as
            # it is: its UAS answers it).
            return tokens
        if asks_outbound(contact):
            relay = self.flow_relay
            owner = "" if relay is None else relay.address
            came = Flow(view.leg.proto, source.addr, source.port, owner)
            tokens += (flow_token(came, self.flow_secret),)
        return tokens

    def _flow_failed(
        self, view: RequestView, forward: Forward, in_leg: Leg, request: Request, index: int, code: int
    ) -> Deferred[Any] | None:
        """
        The flow of a target is gone (L{sipleg.flows.flow_gone}): the next
        target, or the flow's answer (480, 430) when it was the last.
        """
        if index + 1 < len(forward.targets):
            return self._send_request(view, forward, in_leg, request, index + 1)
        log.info("{method} to {uri}: its flow is gone", method=request.method, uri=request.uri)
        if request.method == "ACK":
            self.stats.dropped[f"ACK {FLOW_REASONS[code]}"] += 1
            return None
        return self._answer(view, Answer(code, FLOW_REASONS[code]), in_leg)

    def _target_failed(
        self,
        view: RequestView,
        forward: Forward,
        in_leg: Leg,
        request: Request,
        index: int,
        error: DeliveryError,
    ) -> Deferred[Any] | None:
        """
        No address of one target took the request: the next target, or
        503 when it was the last.
        """
        if index + 1 < len(forward.targets):
            log.info(
                "cannot forward {method} to {uri}: {error}; trying the next target",
                method=request.method,
                uri=request.uri,
                error=str(error),
            )
            return self._send_request(view, forward, in_leg, request, index + 1)
        self._undeliverable(view, in_leg, error)
        return None

    @staticmethod
    def _builder(
        request: Request,
        branch_text: str,
        record_route: bool,
        in_leg: Leg,
        tokens: tuple[str, ...] = (),
        path: Flow | None = None,
        secret: bytes = b"",
    ) -> Any:
        """
        The build function of L{Dispatcher.send_in_order} for an edited
        request: its bytes, made once, with the Via (C{leg.branch +
        branch_text}) and Record-Route of the leg it leaves by spliced on
        top.

        @param tokens: flow tokens for our Record-Route (the flows of the
            dialog's ends, RFC 5626 §5.3): one value per token.
        @param path: the flow to name in our Path (a REGISTER we forward,
            RFC 3327), with its token made with C{secret}.
        """
        data = bytes(request)
        cut = data.index(b"\r\n") + 2
        start, rest = data[:cut], data[cut:]
        branch = branch_text.encode()
        if tokens or path is not None:
            return _flow_build(start, rest, branch, record_route, in_leg, tokens, path, secret)

        def build(out: Leg) -> tuple[bytes, object | None]:
            # RFC 3261 §16.6 items 4 and 8: Record-Route and Via of the leg
            # it leaves by on top; crossing legs, the incoming leg's too
            # (design item 1), so responses and in-dialog requests find
            # their way back out of the leg the request came in on.
            if out is in_leg:
                if record_route:
                    return b"".join((start, out.via_line, branch, b"\r\n", out.record_route_line, rest)), None
                return b"".join((start, out.via_line, branch, b"\r\n", rest)), None
            lines = [start, out.via_line, branch, b"\r\n", in_leg.via_line, branch, b"\r\n"]
            if record_route:
                lines.append(out.record_route_line)
                if out.record_route != in_leg.record_route:
                    lines.append(in_leg.record_route_line)
            lines.append(rest)
            return b"".join(lines), None

        return build

    def _legs_from(self, first: Leg) -> list[Leg]:
        """
        Every leg, C{first} first.
        """
        legs = self.dispatcher.legs
        if legs[0] is first:
            return legs
        return [first] + [other for other in legs if other is not first]

    def _forwarded(self, pair: tuple[Leg, Address], request: Request) -> tuple[Leg, Address]:
        self.stats.forwarded[self.stats.method(request.method)] += 1
        return pair

    def _unreachable(
        self, reason: Failure, view: RequestView, forward: Forward, leg: Leg, request: Request, index: int
    ) -> Deferred[Any] | None:
        error = reason.value
        if not isinstance(error, DeliveryError):
            log.failure("forwarding {method} failed", reason, method=view.request.method)
            error = DeliveryError(None, str(error))
        return self._target_failed(view, forward, leg, request, index, error)

    def _undeliverable(self, view: RequestView, leg: Leg, error: DeliveryError) -> None:
        """
        No target took the request: 503 (RFC 3261 §16.7 item 6 / §16.9
        for a stateless proxy), nothing for an ACK.
        """
        request = view.request
        log.info(
            "cannot forward {method} {uri}: {error}",
            method=request.method,
            uri=request.uri,
            error=str(error),
        )
        if request.method == "ACK":
            self.stats.dropped["ACK Service Unavailable"] += 1
        else:
            self._answer(view, Answer(503, "Service Unavailable"), leg)

    # -- answers -------------------------------------------------------------

    def _registered(self, answer: Response, view: RequestView, leg: Leg) -> Deferred[Any] | None:
        """
        Send the registrar's answer to a REGISTER.
        """
        self.stats.answered[answer.code] += 1
        return self._send_response(answer, view.via, leg, view.source)

    def _answer(self, view: RequestView, answer: Answer, leg: Leg) -> Deferred[Any] | None:
        """
        Answer a request statelessly (RFC 3261 §8.2.6) where its (stamped)
        top Via says.
        """
        self.stats.answered[answer.code] += 1
        return self._send_response(answer_response(view.request, answer), view.via, leg, view.source)

    def _answer_bad(self, bad: BadMessage, leg: Leg, source: Address) -> None:
        """
        Answer bytes that did not parse (L{salvage_answer}) to the address
        they came from, or log their drop once when nobody can be
        answered.
        """
        error = bad.error
        data = salvage_answer(bad.data, error.status, error.reason)
        if data is None:
            self.stats.dropped["unparsable"] += 1
            log.info(
                "dropping unparsable packet from {source}: {reason}",
                source=source,
                reason=error.reason,
            )
            return
        self.stats.answered[error.status] += 1
        log.info(
            "answering bad request from {source}: {code} {reason}",
            source=source,
            code=error.status,
            reason=error.reason,
        )
        failed = partial(_unsent, error.status)
        try:
            sent = self.dispatcher.send_in_order(
                pair_legs((source,), [leg]), lambda leg: (data, None), failed=failed
            )
        except DeliveryError as e:
            failed(e)
            return
        if isinstance(sent, Deferred):
            sent.addErrback(lambda reason: failed(reason.value))

    def _send_response(self, response: Response, via: Via, leg: Leg, source: Address) -> Deferred[Any] | None:
        """
        The one place an answer of ours is sent, by the leg its request
        came in on: where the request's top Via says (RFC 3261 §18.2.2,
        with C{received} / C{rport} stamped from the source), or to the
        source itself when that Via names another transport than the one
        the request came by, or nothing we can send to (a stream answer
        then goes back on the request's connection).
        """
        return self._send(response, answer_targets(via, leg, source), [leg], _wire(response))

    def _send(
        self,
        response: Response,
        targets: tuple[Address, ...] | URI,
        legs: list[Leg],
        build: Any,
    ) -> Deferred[Any] | None:
        """
        Send a response to the first of C{targets} that takes it.
        """
        dispatcher = self.dispatcher
        failed = partial(_unsent, response.code)
        try:
            if isinstance(targets, URI):
                sent = dispatcher.send_to(targets, legs, response, build, failed, self._transports)
            else:
                sent = dispatcher.send_in_order(pair_legs(targets, legs), build, failed=failed)
        except DeliveryError as e:
            failed(e)
            return None
        if isinstance(sent, Deferred):
            return sent.addErrback(lambda reason: failed(reason.value))
        return None


def answer_response(request: Request, answer: Answer) -> Response:
    """
    The response an L{Answer} decision makes of C{request}: its code,
    reason and extra headers.
    """
    response = make_response(request, answer.code, answer.reason)
    for name, value in answer.headers:
        response.add_header(name, value)
    return response


def answer_targets(via: Via, leg: Leg, source: Address) -> tuple[Address, ...] | URI:
    """
    Where an answer to a request goes (see L{StatelessProxy._send_response}):
    the addresses its top Via names, or a name to resolve; its source when
    the Via names another transport than the leg's or nothing we can send
    to; over a stream, the request's own connection (its source) first.
    """
    targets = response_targets(via) if via.transport.lower() == leg.proto else None
    if targets is None:
        return (source,)
    if leg.proto != "udp":
        # A stream answer goes back on the request's connection: its
        # source first, then what the Via names should it be gone
        # (§18.2.2), without DNS when the Via has an address.
        return (source, *targets) if isinstance(targets, tuple) else (source,)
    return targets


def edit(request: Request, edits: Edits) -> Request:
    """
    Make a L{Forward}'s leg-independent changes to C{request}, in place.
    The edits leave alone what an error answer is built from (Via, From,
    To, Call-ID, CSeq).
    """
    request.set_header("max-forwards", str(edits.max_forwards))
    if edits.uri is not None:
        request.uri = edits.uri
    if edits.routes is not None:
        if edits.routes:
            request.set_header("route", ", ".join(edits.routes))
        else:
            request.remove_header("route")
    for index in reversed(edits.strip):
        request.remove_header("proxy-authorization", index)
    return request


def _unsent(code: int, error: object) -> None:
    log.info("could not send response {code}: {why}", code=code, why=error)


def _wire(response: Response) -> Any:
    """
    The build function of L{Dispatcher.send_in_order} for a response: its
    bytes, made once, and the connection its request came on (per leg).
    """
    data = bytes(response)

    def build(leg: Leg) -> tuple[bytes, object | None]:
        return data, leg.connection_of(response)

    return build


def _flow_build(
    start: bytes,
    rest: bytes,
    branch: bytes,
    record_route: bool,
    in_leg: Leg,
    tokens: tuple[str, ...],
    path: Flow | None,
    secret: bytes,
) -> Any:
    """
    L{StatelessProxy._builder}'s build function with a flow token in our
    Record-Route values, or our Path.
    """
    path_token = None if path is None else flow_token(path, secret)

    def build(out: Leg) -> tuple[bytes, object | None]:
        legs = [out] if out is in_leg else [out, in_leg]
        lines = [start]
        for leg in legs:
            lines += [leg.via_line, branch, b"\r\n"]
        if path is not None and path_token is not None:
            lines.append(f"Path: {token_route(out.record_route, path_token, path.outbound)}\r\n".encode())
        if record_route:
            for value in dict.fromkeys(leg.record_route for leg in legs):
                for route in [token_route(value, token) for token in tokens] or [value]:
                    lines.append(f"Record-Route: {route}\r\n".encode())
        lines.append(rest)
        return b"".join(lines), None

    return build


def flow_hop(
    flow: Flow, legs: Sequence[Leg], relay: FlowRelay | None = None
) -> tuple[Leg, Address, object | None] | int | None:
    """
    Where a request over C{flow} goes now: the leg, address and open
    connection to send on (a UDP flow: the first leg of its transport and
    family, no connection; a flow another worker owns: C{relay} in place
    of the connection); L{None} when the connection is gone and the
    Contact is dialled instead (TCP); else the status code to answer
    (L{sipleg.flows.flow_gone}).
    """
    address = flow.address
    for leg in legs:
        if leg.proto == flow.transport and leg.family == address.family:
            if flow.transport == "udp":
                return leg, address, None
            if relay is not None and relay.foreign(flow):
                return leg, address, relay
            conn = leg.socketpool.flow_connection(address)
            if conn is not None:
                return leg, address, conn
    return flow_gone(flow)


def flows_hop(
    flows: Sequence[Flow], legs: Sequence[Leg], relay: FlowRelay | None = None
) -> tuple[Flow, tuple[Leg, Address, object | None]] | int | None:
    """
    The first of C{flows} (one contact's: several for an RFC 5626
    instance) that is open now, with its L{flow_hop}; when none is:
    L{None} (no flow, or dial the Contact), else the answer: 430 when
    one was outbound, else 480.
    """
    codes = []
    for flow in flows:
        hop = flow_hop(flow, legs, relay)
        if isinstance(hop, tuple):
            return flow, hop
        codes.append(hop)
    if not codes or None in codes:
        return None
    return min(code for code in codes if code is not None)


def on_connection(build: Any, conn: object) -> Any:
    """
    A build function (L{Dispatcher.send_in_order}) whose bytes go on
    C{conn}.
    """

    def built(leg: Leg) -> tuple[bytes, object | None]:
        return build(leg)[0], conn

    return built


def _registrar_rules(registrar: Registrar, legs: LegSet) -> tuple[Any, Any]:
    """
    The registrar's two questions, as the decisions ask them.
    """

    def own(uri: URI) -> bool:
        return legs.hop(uri) is not None

    def registers(uri: URI) -> bool:
        return registrar.registers(uri, own)

    def locate(uri: URI) -> int | Located | None:
        found = registrar.lookup(uri, own)
        if found is None:
            return None
        return found.code if found.code is not None else Located(found.groups, found.flows, found.paths)

    return registers, locate
