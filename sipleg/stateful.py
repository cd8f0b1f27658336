"""
The transaction-stateful proxy (C{--stateful}, RFC 3261 §16 and §17): it
keeps a server transaction for every request it forwards and a client
transaction for every branch, so it can fork to every contact of an
address of record, absorb retransmissions, fail over, time out and cancel.

The decisions are the stateless proxy's (L{sipleg.decision}); what the
responses do is L{sipleg.forking.ResponseContext}'s; this module is the
shell that keeps the transactions, their timers and the sockets:

 - a new INVITE is answered C{100 Trying} at once; a retransmitted request
   gets the last response again and goes no further (§17.2.1, §17.2.2);
 - each target gets a client transaction with a branch of its own;
   over UDP its request is retransmitted (Timer A / E, from T1 doubling,
   non-INVITE capped at T2) until a response, and it ends 408 after Timer B
   / F (64*T1); an INVITE branch also has Timer C (default 3 min): with a
   provisional it is cancelled, without one it ends 408;
 - each contact of a fork goes where the Request-URI would (static
   routes, the outbound proxy: L{sipleg.decision.next_hop});
 - responses go upstream as the response context says (1xx, every 2xx,
   the best final; a 401 / 407 with the challenges of every 401 / 407
   branch, §16.7 step 7); a branch's non-2xx final is ACKed here, hop by
   hop (§17.1.1.3), and the caller's ACK for our non-2xx final is
   absorbed; the ACK for a 2xx goes on end to end, statelessly;
 - a CANCEL for a pending INVITE is answered 200 at once and every
   pending branch gets a CANCEL (§16.10); the caller then gets the 487;
   a cancelled branch with no final 64*T1 later ends 408 (§9.1);
 - an INVITE with the From tag, Call-ID and CSeq of a live transaction but
   another branch (a merged request, §8.2.2.2) gets 482;
 - at C{max_transactions} live transactions a new request gets 503.

What outlives the final response is what RFC 3261 §17 keeps, and no
more: a server transaction becomes an L{_Answered} (the final's bytes
and where they went) for Timer H / I / J, or ends at once after a 2xx
or, for a non-INVITE, over a stream; a branch is forgotten at its final,
except for Timer D (a non-2xx INVITE final over UDP, 32 s), Timer K (a
non-INVITE over UDP, T4: only its branch string is kept) and a cancelled
INVITE (64*T1, for its 487).  Timers H / J and K, the ones every call
waits for, are L{TimerQueue}s (one reactor timer each, not one per
transaction).  Ended transactions hold no reference cycle, so they are
freed without the cyclic garbage collector, and one waiting for Timer J
holds three objects the collector tracks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sipleg.address import Address
from sipleg.decision import Answer, Drop, Forward, RequestView, Rules, from_tag, next_hop, request_view
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.flows import FLOW_REASONS
from sipleg.forking import ResponseContext, Step
from sipleg.leg import Leg
from sipleg.message import Request, Response, make_response, parse_message
from sipleg.proxy import StatelessProxy, answer_response, answer_targets, edit, flows_hop, on_connection
from sipleg.timerqueue import TimerQueue
from sipleg.uri import URI, Via, header_tag, parse_uri, parse_via, route_uri, via_branch

if TYPE_CHECKING:
    from sipleg.hookclient import RouteHookClient

__all__ = ["StatefulProxy", "TransactionTimers", "merge_challenges"]

log = Logger()


@dataclass(frozen=True)
class TransactionTimers:
    """
    The timers of RFC 3261 §17 (seconds) and the cap on transactions.

    @ivar t1: the round-trip estimate (Timer A / E start there, B / F /
        H / J are 64*T1).
    @ivar t2: the longest retransmit interval of non-INVITE requests.
    @ivar t4: how long a message may stay in the network (Timers I, K).
    @ivar timer_c: how long an INVITE branch may ring (at least 3 min by
        the RFC; shorter for tests).
    @ivar max_transactions: live server transactions at most; beyond, 503.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0
    max_transactions: int = 100_000

    def __post_init__(self) -> None:
        if min(self.t1, self.t2, self.t4, self.timer_c) <= 0 or self.max_transactions < 1:
            raise ValueError("transaction timers and cap must be positive")


@dataclass(eq=False, slots=True)
class _Client:
    """
    One branch: a client transaction.  It points at its server
    transaction while it is pending, and lets go when it ends (so ended
    branches that wait for Timer D / K hold the request they may still
    ACK or CANCEL, not the whole transaction, and no reference cycle
    outlives the branch).
    """

    server: _Server | None
    #: The caller's request as forwarded (its From, To, Call-ID, CSeq and
    #: Route are what the branch's ACK and CANCEL copy).
    request: Request
    key: str
    branch: str
    uri: str
    data: bytes = b""
    leg: Leg | None = None
    address: Address | None = None
    interval: float = 0.0
    retransmit: IDelayedCall | None = None
    timeout: IDelayedCall | None = None
    timer_c: IDelayedCall | None = None
    provisional: bool = False
    done: bool = False
    #: A CANCEL went for it.
    cancelled: bool = False
    #: The RFC 3263 targets of the branch, and which one was taken.
    pairs: list[tuple[Leg, Address]] = field(default_factory=list)
    index: int = 0
    #: The connection of the flow the branch goes over, if any.
    conn: object | None = None
    #: The flow tokens for our Record-Route (RFC 5626 §5.3).
    tokens: tuple[str, ...] = ()
    #: Cancelled before it answered: a provisional that still comes gets
    #: the CANCEL (§9.1).
    cancel_late: bool = False


@dataclass(eq=False, slots=True)
class _Server:
    """
    One pending server transaction, and the branches of its request.
    """

    key: tuple[str, str, str]
    view: RequestView
    leg: Leg
    forward: Forward
    context: ResponseContext[Response]
    merge_key: tuple[str, str, str] | None
    #: The last response sent upstream (what a retransmission gets), and
    #: its bytes.
    last: Response | None = None
    wire: bytes = b""
    #: A final response went upstream.
    final: bool = False
    #: The response context is done: the transaction is L{_Answered}
    #: now, or gone (branches being cancelled may still end).
    finished: bool = False
    #: The pending branches, by key.
    clients: dict[str, _Client] = field(default_factory=dict)
    #: Waiting for the routing hook's answer (no branch yet).
    routing: bool = False

    @property
    def via(self) -> Via:
        return self.view.via

    @property
    def source(self) -> Address:
        return self.view.source


@dataclass(eq=False, slots=True)
class _Answered:
    """
    A server transaction whose final response went upstream (Completed or
    Confirmed, §17.2): only what absorbing the caller's retransmissions
    and ACK needs, until Timer H / I / J frees it; nothing of the request.
    """

    key: tuple[str, str, str]
    #: The final's bytes, and where they went (L{answer_targets}; the
    #: request's connection over a stream).
    data: bytes
    targets: tuple[Address, ...] | URI
    conn: object | None
    leg: Leg
    merge_key: tuple[str, str, str] | None
    #: The caller's ACK ends it (a non-2xx final of an INVITE).
    acked: bool
    ended: bool = False
    #: Timer I, once the caller's ACK came over UDP.
    timer: IDelayedCall | None = None
    #: Timer G: the next retransmission of the final.
    resend: IDelayedCall | None = None


class StatefulProxy(StatelessProxy):
    """
    A transaction-stateful proxy: the stateless proxy's decisions, with
    transactions, forking, failover and cancellation (see the module
    docstring).
    """

    def __init__(self, *args: Any, timers: TransactionTimers = TransactionTimers(), **kwargs: Any) -> None:
        """
        @param timers: the transaction timers and cap.
        @param args: see L{StatelessProxy}.
        @param kwargs: see L{StatelessProxy}.
        """
        super().__init__(*args, **kwargs)
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        self.timers = timers
        self._servers: dict[tuple[str, str, str], _Server | _Answered] = {}
        self._clients: dict[str, _Client] = {}
        #: The branches of ended non-INVITE client transactions in Timer K:
        #: their retransmitted finals are absorbed (a branch is all that
        #: needs keeping).
        self._absorbing: set[str] = set()
        self._merged: dict[tuple[str, str, str], _Server | _Answered] = {}
        self._numbers = itertools.count(1)
        self.stats.transactions = self.status
        clock = self._clock
        assert clock is not None
        # Timers H and J (64*T1) of answered transactions, Timer K (T4) of
        # ended non-INVITE branches: one reactor timer each.
        self._answered_timers: TimerQueue[_Answered] = TimerQueue(clock, 64 * timers.t1, self._end)
        self._branch_timers: TimerQueue[str] = TimerQueue(clock, timers.t4, self._absorbing.discard)
        for leg in self.dispatcher.legs:
            pool = leg.socketpool
            if hasattr(pool, "on_unreachable") and pool.on_unreachable is None:
                # The kernel's ICMP errors for our datagrams (Linux).
                pool.on_unreachable = self._unreachable_datagram

    @property
    def transactions(self) -> int:
        """
        How many server transactions are live.
        """
        return len(self._servers)

    @property
    def branches(self) -> int:
        """
        How many client transactions are kept (pending, or ended and
        waiting for Timer D / K).
        """
        return len(self._clients) + len(self._absorbing)

    def status(self) -> dict[str, int]:
        """
        The figures of C{--status}: live server transactions and kept
        branches.
        """
        return {"transactions": len(self._servers), "branches": self.branches}

    # -- requests ------------------------------------------------------------

    def forward_request(self, request: Request, leg: Leg, source: Address) -> Deferred[Any] | None:
        try:
            key = _server_key(parse_via(request.get_header("via") or ""), request)
        except SIPParseError:
            return super().forward_request(request, leg, source)
        method = request.method
        if method == "ACK":
            server = self._servers.get(key)
            if isinstance(server, _Answered) and server.acked:
                # The caller's ACK for our non-2xx final: absorbed
                # (§17.2.1); Timer I absorbs its retransmissions.
                self._acked(server, leg.proto == "udp")
                return None
            # The ACK of a 2xx goes end to end.
            return super().forward_request(request, leg, source)
        if method == "CANCEL":
            server = self._servers.get((key[0], key[1], "INVITE"))
            if server is None:
                return super().forward_request(request, leg, source)
            self._answer_cancel(request, leg, source, server)
            return None
        server = self._servers.get(key)
        if server is not None:
            # A retransmission: the last response again, if any.
            if isinstance(server, _Answered):
                self._resend(server)
            elif server.last is not None:
                self._send_response(server.last, server.via, server.leg, server.source)
            return None
        if len(self._servers) >= self.timers.max_transactions:
            self._refuse(request, leg, source, 503, "Service Unavailable (too many transactions)")
            return None
        return super().forward_request(request, leg, source)

    def _refuse(self, request: Request, leg: Leg, source: Address, code: int, reason: str) -> None:
        try:
            via = parse_via(request.get_header("via") or "")
        except SIPParseError:
            return
        response = make_response(request, code, reason)
        if code == 503:
            response.add_header("Retry-After", "5")
        self.stats.answered[code] += 1
        self._send_response(response, via, leg, source)

    def _forward(self, view: RequestView, forward: Forward, in_leg: Leg) -> Deferred[Any] | None:
        """
        Create the server transaction and the first group of branches (an
        ACK, of a 2xx, and a CANCEL matching no transaction of ours go on
        statelessly, §16.10: they have no transaction).
        """
        if view.method in ("ACK", "CANCEL"):
            return super()._forward(view, forward, in_leg)
        context: ResponseContext[Response] = ResponseContext(_groups(forward, view.request))
        server = self._open(view, forward, in_leg, context)
        if server is not None:
            self._route(server, forward)
        return None

    def _ask_hook(
        self, hook: RouteHookClient, view: RequestView, forward: Forward, leg: Leg, rules: Rules
    ) -> Deferred[Any] | None:
        """
        The server transaction opens before the routing hook is asked: an
        INVITE gets its C{100 Trying} at once, retransmissions are
        absorbed, and a CANCEL meanwhile is answered 200 and ends the
        INVITE 487 (the hook's answer then does nothing); the branches
        start when the hook answers.
        """
        if view.method in ("ACK", "CANCEL"):
            return super()._ask_hook(hook, view, forward, leg, rules)
        server = self._open(view, forward, leg, ResponseContext([]))
        if server is None:
            return None
        server.routing = True
        asked = hook.route(view, forward, rules)
        if asked is None:
            # (A call for the same request still pending, its transaction
            # gone: an answer of ours ends this one.)
            self._hook_answered(Answer(503, "Service Unavailable"), server)
            return None
        return asked.addCallback(self._hook_answered, server)

    def _hook_answered(self, decision: Forward | Answer | Drop, server: _Server) -> None:
        """
        Do what the routing hook's answer made of the request, unless the
        caller cancelled meanwhile.
        """
        server.routing = False
        if server.finished:
            return
        if isinstance(decision, Forward):
            server.context = ResponseContext(_groups(decision, server.view.request))
            self._route(server, decision)
            return
        if isinstance(decision, Answer):
            self.stats.answered[decision.code] += 1
            self._upstream(server, answer_response(server.view.request, decision), ours=True)
        else:
            self.stats.dropped[decision.reason] += 1
        self._finish(server)

    def _open(
        self, view: RequestView, forward: Forward, in_leg: Leg, context: ResponseContext[Response]
    ) -> _Server | None:
        """
        Open the server transaction of a new request (an INVITE gets
        C{100 Trying}), or answer a merged request 482.
        """
        request = view.request
        method = view.method
        merge_key = _merge_key(request) if method == "INVITE" else None
        if merge_key is not None and merge_key in self._merged:
            self._refuse(request, in_leg, view.source, 482, "Loop Detected (merged request)")
            return None
        server = _Server(_server_key(view.via, request), view, in_leg, forward, context, merge_key)
        self._servers[server.key] = server
        if merge_key is not None:
            self._merged[merge_key] = server
        if method == "INVITE":
            self._upstream(server, make_response(request, 100, "Trying"), ours=True)
        return server

    def _route(self, server: _Server, forward: Forward) -> None:
        """
        Start the first group of branches of a server transaction, as
        C{forward} decided.
        """
        server.forward = forward
        edit(server.view.request, forward.edits)
        self._start(server, server.context.first())

    def _start(self, server: _Server, uris: list[str]) -> None:
        """
        One client transaction per target in C{uris}.
        """
        forward = server.forward
        request = server.view.request
        legs = self._legs_from(self._legs[forward.prefer])
        for uri in uris:
            suffix = f"{forward.edits.branch}.{next(self._numbers)}"
            client = _Client(server, request, suffix, suffix, uri)
            server.clients[suffix] = client
            server.context.started(suffix)
            request.uri = uri
            over = flows_hop(forward.flows_of(uri), legs) if forward.flows else None
            if isinstance(over, int):
                log.info("branch to {uri}: its flow is gone", uri=uri)
                self._branch_final(client, over, self._made(client, over, FLOW_REASONS[over]))
                continue
            if forward.edits.record_route:
                client.tokens = self._tokens(server.view, None if over is None else over[0])
            if over is not None:
                leg, address, client.conn = over[1]
                self._resolved([(leg, address)], client)
                continue
            try:
                # Each contact goes where the Request-URI would (its Path,
                # static routes, the outbound proxy); the first was
                # decided so.
                path = forward.path_of(uri) if forward.paths else ()
                if path:
                    target = route_uri(path[0])
                elif forward.forks:
                    target = next_hop(parse_uri(uri), self.rules)
                else:
                    target = forward.targets[0]
                found = self.dispatcher.resolve(target, legs, request, self._transports)
            except (DeliveryError, SIPParseError) as e:
                self._unreached(client, e)
                continue
            if isinstance(found, Deferred):
                found.addCallbacks(self._resolved, self._unreached_failure, (client,), errbackArgs=(client,))
            else:
                self._resolved(found, client)

    def _resolved(self, pairs: list[tuple[Leg, Address]], client: _Client) -> None:
        """
        The branch's targets are known (RFC 3263): try them in order.
        """
        client.pairs = pairs
        self._try(client, 0)

    def _try(self, client: _Client, first: int) -> None:
        """
        Send the branch's request to the first of its targets from
        C{first} on that takes it (a transport error moves on at once).
        """
        server = client.server
        if server is None:
            # (Ended while its targets were looked up: cancelled.)
            return
        request = client.request
        request.uri = client.uri
        if server.forward.paths:
            # RFC 3327 §5.4: each contact's own Path is its Route set.
            path = server.forward.path_of(client.uri)
            if path:
                request.set_header("route", ", ".join(path))
            else:
                request.remove_header("route")
        edits = server.forward.edits
        build = self._builder(
            request,
            client.branch,
            edits.record_route,
            server.leg,
            client.tokens,
            edits.path,
            self.flow_secret,
        )
        if client.conn is not None:
            build = on_connection(build, client.conn)

        def record(out: Leg) -> tuple[bytes, object | None]:
            data, conn = build(out)
            client.data = data
            return data, conn

        try:
            sent = self.dispatcher.send_in_order(client.pairs, record, first)
        except DeliveryError as e:
            self._unreached(client, e)
            return
        if isinstance(sent, Deferred):
            sent.addCallbacks(self._sent, self._unreached_failure, (client,), errbackArgs=(client,))
        else:
            self._sent(sent, client)

    def _fail_over(self, client: _Client) -> bool:
        """
        A branch's target timed out or answered 503: its request goes to
        the next target of its RFC 3263 list, as a new client transaction
        (a branch of its own), if there is one.

        @return: whether there was one.
        """
        following = client.index + 1
        if following >= len(client.pairs) or client.cancelled:
            return False
        log.info("{uri}: {address} failed, trying the next target", uri=client.uri, address=client.address)
        self._stop_timers(client)
        self._clients.pop(client.branch, None)
        client.branch = f"{client.key}.{next(self._numbers)}"
        client.leg = client.address = None
        client.provisional = False
        self._try(client, following)
        return True

    def _sent(self, pair: tuple[Leg, Address], client: _Client) -> None:
        """
        A branch's request left: its transaction's timers start.
        """
        if client.done:
            return
        leg, address = pair
        client.leg, client.address = leg, address
        if pair in client.pairs:
            client.index = client.pairs.index(pair)
        full = leg.branch + client.branch
        self._clients[full] = client
        client.branch = full
        method = client.request.method
        self.stats.forwarded[self.stats.method(method)] += 1
        timers = self.timers
        clock = self._clock
        assert clock is not None
        if leg.proto == "udp":
            client.interval = timers.t1
            client.retransmit = clock.callLater(timers.t1, self._retransmit, client)
        client.timeout = clock.callLater(64 * timers.t1, self._timed_out, client)
        if method == "INVITE":
            client.timer_c = clock.callLater(timers.timer_c, self._timer_c, client)

    def _unreached_failure(self, reason: Any, client: _Client) -> None:
        error = reason.value
        if not isinstance(error, DeliveryError):
            error = DeliveryError(None, str(error))
        self._unreached(client, error)

    def _unreached(self, client: _Client, error: Exception) -> None:
        """
        No target of a branch took its request: it ends 503 (§16.7).
        """
        log.info("branch to {uri} unreachable: {why}", uri=client.uri, why=str(error))
        self._branch_final(client, 503, self._made(client, 503, "Service Unavailable"))

    def _unreachable_datagram(self, dst: Address, code: int, payload: bytes) -> None:
        """
        The kernel says a datagram we sent to C{dst} was refused (ICMP port
        or host unreachable): when it was a pending branch's request, the
        branch fails over to its next target, or ends 503, at once instead
        of after Timer B / F.
        """
        client = self._clients.get(_top_branch(payload) or "")
        if client is None or client.done or client.address is None or client.address.sockaddr != dst.sockaddr:
            return
        if not self._fail_over(client):
            self._branch_final(client, 503, self._made(client, 503, "Service Unavailable"))

    def _retransmit(self, client: _Client) -> None:
        """
        Timer A / E: send the request again, the next interval doubled
        (capped at T2 for non-INVITE, and for INVITE once proceeding stops
        it).
        """
        client.retransmit = None
        if client.done or client.leg is None or client.address is None:
            return
        client.leg.send_now(client.data, client.address, None, _ignore)
        invite = client.request.method == "INVITE"
        client.interval = client.interval * 2 if invite else min(client.interval * 2, self.timers.t2)
        assert self._clock is not None
        client.retransmit = self._clock.callLater(client.interval, self._retransmit, client)

    def _timed_out(self, client: _Client) -> None:
        """
        Timer B / F: no final response in time: the branch ends 408; so
        does a cancelled branch whose INVITE still has no final 64*T1
        after the CANCEL (§9.1).
        """
        client.timeout = None
        if client.done:
            return
        if client.provisional and not client.cancelled and client.request.method == "INVITE":
            # (A ringing INVITE branch is Timer C's.)
            return
        if not client.provisional and self._fail_over(client):
            return
        self._branch_final(client, 408, self._made(client, 408, "Request Timeout"))

    def _timer_c(self, client: _Client) -> None:
        """
        Timer C (§16.8): a branch rang too long: it is cancelled and counts
        as 408 (its 487 is ACKed here); one that never answered at all ends
        408.
        """
        client.timer_c = None
        if client.done:
            return
        if client.provisional:
            self._send_cancel(client)
        self._branch_final(client, 408, self._made(client, 408, "Request Timeout"))

    # -- responses -------------------------------------------------------------

    def forward_response(self, response: Response, leg: Leg) -> Deferred[Any] | None:
        try:
            branch = via_branch(response.get_header("via") or "")
        except SIPParseError:
            branch = None
        client = self._clients.get(branch or "")
        if client is None:
            if branch in self._absorbing:
                # A retransmitted final of an ended non-INVITE branch (Timer K).
                return None
            # Not a branch of ours (any more): a 2xx of a forked INVITE
            # after its branch ended goes on statelessly (§16.7).
            return super().forward_response(response, leg)
        method = response.cseq[1]
        if method == "CANCEL":
            return None
        code = response.code
        if client.done:
            # (An ended INVITE branch, kept for Timer D or its CANCEL: an
            # ended non-INVITE branch is in _absorbing.)
            if code < 200:
                if client.cancel_late:
                    client.cancel_late = False
                    self._send_cancel(client)
            elif code >= 300:
                # A retransmitted or late non-2xx final: ACKed (Timer D).
                self._send_ack(client, response)
            else:
                # Another 2xx (of a branch cancelled too late): it goes on.
                super().forward_response(response, leg)
            return None
        server = client.server
        assert server is not None
        if code < 200:
            client.provisional = True
            if client.retransmit is not None and method == "INVITE":
                client.retransmit.cancel()
                client.retransmit = None
            if client.timer_c is not None and code > 100:
                client.timer_c.reset(self.timers.timer_c)
            self._execute(server, server.context.provisional(client.key, code, response))
            return None
        if code >= 300 and method == "INVITE":
            # §17.1.1.3: the ACK of a non-2xx final, hop by hop.
            self._send_ack(client, response)
        if code == 503 and self._fail_over(client):
            return None
        self._branch_final(client, code, response, received=True)
        return None

    def _branch_final(self, client: _Client, code: int, response: Response, received: bool = False) -> None:
        """
        A branch ended: its timers stop, it lets go of its server
        transaction, and the response context hears of it.  A branch that
        may still get a message stays findable a while: a received non-2xx
        final of an INVITE is ACKed again while Timer D runs (32 s over
        UDP), a non-INVITE branch absorbs its final's retransmissions for
        Timer K (T4 over UDP), and a cancelled INVITE (a CANCEL went, or
        waits for the first provisional) still gets its 487 ACKed for
        64*T1; otherwise it is forgotten at once (§17.1.1.2, §17.1.2.2).
        """
        if client.done:
            return
        client.done = True
        self._stop_timers(client)
        server = client.server
        client.server = None
        timers = self.timers
        invite = client.request.method == "INVITE"
        udp = client.leg is not None and client.leg.proto == "udp"
        if client.leg is None and not client.cancel_late:
            wait = 0.0
        elif client.cancelled or client.cancel_late:
            wait = 64 * timers.t1
        elif not received or not udp:
            wait = 0.0
        elif invite:
            wait = 32.0 if code >= 300 else 0.0
        else:
            wait = timers.t4
        if wait == timers.t4 and not invite:
            self._absorbing.add(client.branch)
            self._branch_timers.add(client.branch)
            self._forget(client)
        elif wait > 0:
            assert self._clock is not None
            client.timeout = self._clock.callLater(wait, self._forget, client)
        else:
            self._forget(client)
        if server is not None:
            server.clients.pop(client.key, None)
            self._execute(server, server.context.final(client.key, code, response))

    def _forget(self, client: _Client) -> None:
        client.timeout = None
        if self._clients.get(client.branch) is client:
            del self._clients[client.branch]

    @staticmethod
    def _stop_timers(client: _Client) -> None:
        for timer in (client.retransmit, client.timeout, client.timer_c):
            if timer is not None and timer.active():
                timer.cancel()
        client.retransmit = client.timeout = client.timer_c = None

    def _execute(self, server: _Server, step: Step[Response]) -> None:
        """
        Carry out what the response context decided.
        """
        for response in step.upstream:
            self._upstream(server, response)
        for key in step.cancel:
            client = server.clients.get(key)
            if client is not None:
                self._send_cancel(client)
        if step.start:
            self._start(server, step.start)
        if step.done:
            self._finish(server)

    def _upstream(self, server: _Server, response: Response, ours: bool = False) -> None:
        """
        Send a response to the caller, as the server transaction's: with
        the request's Vias (a branch's response had ours on top; a phone
        may even answer a CANCEL's Vias; C{ours}, made from the request,
        has them already), along the request's top Via, on the request's
        own connection over a stream (§18.2.2).  A 401 / 407 chosen as the
        best final carries the challenges of every 401 / 407 branch
        (§16.7 step 7).
        """
        view = server.view
        if not ours:
            response.remove_header("via")
            for value in view.request.get_headers("via"):
                response.add_header("Via", value)
        code = response.code
        if code >= 200:
            if code in _CHALLENGES and not server.final:
                merge_challenges(response, server.context.finals())
            server.final = True
        leg = server.leg
        data = bytes(response)
        conn = leg.connection_of(response)
        self._send(response, answer_targets(view.via, leg, view.source), [leg], lambda out: (data, conn))
        server.last = response
        server.wire = data

    def _finish(self, server: _Server) -> None:
        """
        The response context is done (a final response went upstream): the
        transaction becomes an L{_Answered} that absorbs retransmissions
        until Timer H (a non-2xx final of an INVITE, on every transport:
        the caller's ACK ends it sooner) or Timer J (64*T1, a non-INVITE
        over UDP), or it ends at once (a 2xx of an INVITE, or a non-INVITE
        over a stream).
        """
        if server.finished:
            return
        server.finished = True
        last = server.last
        invite = server.view.method == "INVITE"
        udp = server.leg.proto == "udp"
        acked = invite and last is not None and last.code >= 300
        if last is not None and last.code >= 200 and (acked or (udp and not invite)):
            leg = server.leg
            targets = answer_targets(server.via, leg, server.source)
            answered = _Answered(
                server.key, server.wire, targets, leg.connection_of(last), leg, server.merge_key, acked
            )
            self._servers[server.key] = answered
            if server.merge_key is not None:
                self._merged[server.merge_key] = answered
            self._answered_timers.add(answered)
            if acked and udp:
                # Timer G: the final again until the caller's ACK.
                self._arm(answered, self.timers.t1)
            return
        if self._servers.get(server.key) is server:
            del self._servers[server.key]
        if server.merge_key is not None and self._merged.get(server.merge_key) is server:
            del self._merged[server.merge_key]

    def _arm(self, answered: _Answered, interval: float) -> None:
        """
        Timer G: retransmit a non-2xx final to the caller at C{interval},
        doubling up to T2, until its ACK or Timer H.
        """
        assert self._clock is not None
        answered.resend = self._clock.callLater(interval, self._timer_g, answered, interval)

    def _timer_g(self, answered: _Answered, interval: float) -> None:
        answered.resend = None
        self._resend(answered)
        self._arm(answered, min(interval * 2, self.timers.t2))

    def _resend(self, answered: _Answered) -> None:
        """
        Send an answered transaction's final again (to a retransmitted
        request, or by Timer G): its bytes, where they went before.
        """
        data, conn = answered.data, answered.conn
        # (Parsed again for the log line of a failure and the SRV seed of
        # a name to resolve: retransmissions are the rare case.)
        response = parse_message(data)
        assert isinstance(response, Response)
        self._send(response, answered.targets, [answered.leg], lambda out: (data, conn))

    def _acked(self, answered: _Answered, udp: bool) -> None:
        """
        The caller's ACK for our non-2xx final: Timer G stops; the
        transaction ends after Timer I (T4 over UDP, absorbing the ACK's
        retransmissions), at once over a stream.
        """
        if answered.resend is not None and answered.resend.active():
            answered.resend.cancel()
        answered.resend = None
        if not udp:
            self._end(answered)
        elif answered.timer is None:
            assert self._clock is not None
            answered.timer = self._clock.callLater(self.timers.t4, self._end, answered)

    def _end(self, answered: _Answered) -> None:
        """
        Free an answered transaction (Timer H / I / J).
        """
        if answered.ended:
            return
        answered.ended = True
        for timer in (answered.timer, answered.resend):
            if timer is not None and timer.active():
                timer.cancel()
        answered.timer = answered.resend = None
        if self._servers.get(answered.key) is answered:
            del self._servers[answered.key]
        if answered.merge_key is not None and self._merged.get(answered.merge_key) is answered:
            del self._merged[answered.merge_key]

    def stop(self) -> None:
        """
        Cancel every timer (the service stops; what is pending is dropped).
        """
        for server in list(self._servers.values()):
            if isinstance(server, _Answered):
                for timer in (server.timer, server.resend):
                    if timer is not None and timer.active():
                        timer.cancel()
            else:
                for client in server.clients.values():
                    self._stop_timers(client)
        for client in list(self._clients.values()):
            self._stop_timers(client)
        self._answered_timers.stop()
        self._branch_timers.stop()

    # -- CANCEL ------------------------------------------------------------------

    def _answer_cancel(
        self, request: Request, leg: Leg, source: Address, server: _Server | _Answered
    ) -> None:
        """
        §16.10: 200 for the CANCEL at once; every pending branch is
        cancelled; branches never heard from end 487 here.
        """
        try:
            view = request_view(request, leg.identity, source)
        except SIPParseError:
            return
        self.stats.answered[200] += 1
        self._send_response(make_response(request, 200), view.via, leg, source)
        if isinstance(server, _Answered) or server.final:
            return
        if server.routing:
            # (No branch yet: the routing hook is still asked.)
            self.stats.answered[487] += 1
            self._upstream(server, make_response(server.view.request, 487, "Request Terminated"), ours=True)
            self._finish(server)
            return
        self._execute(server, server.context.cancel())
        for client in list(server.clients.values()):
            if not client.done and not client.provisional:
                client.cancel_late = True
                self._branch_final(client, 487, self._made(client, 487, "Request Terminated"))

    def _send_cancel(self, client: _Client) -> None:
        """
        Send CANCEL for a pending branch (§9.1: the INVITE's Request-URI,
        Call-ID, To, From, CSeq number and top Via); a final must then
        come within 64*T1, or the branch ends 408.
        """
        if client.cancelled:
            return
        client.cancelled = True
        self._send_branch_request(client, "CANCEL", client.request.get_header("to") or "")
        if not client.done:
            if client.timeout is not None and client.timeout.active():
                client.timeout.cancel()
            assert self._clock is not None
            client.timeout = self._clock.callLater(64 * self.timers.t1, self._timed_out, client)

    def _send_ack(self, client: _Client, response: Response) -> None:
        """
        Send the ACK of a branch's non-2xx final (§17.1.1.3: the To of the
        response, the rest as for CANCEL).
        """
        self._send_branch_request(client, "ACK", response.get_header("to") or "")

    def _send_branch_request(self, client: _Client, method: str, to: str) -> None:
        """
        Send a CANCEL or ACK that belongs to a branch's INVITE transaction:
        its top Via (the branch's), Request-URI, From, Call-ID, CSeq number
        and Route set, to the address the INVITE went to.
        """
        if client.leg is None or client.address is None:
            return
        request = client.request
        fields = [
            ("Via", client.data.split(b"\r\n", 2)[1].split(b": ", 1)[1].decode()),
            ("From", request.get_header("from") or ""),
            ("To", to),
            ("Call-ID", request.get_header("call-id") or ""),
            ("CSeq", f"{request.cseq[0]} {method}"),
            ("Max-Forwards", "70"),
        ]
        fields += [("Route", value) for value in request.get_headers("route")]
        data = bytes(Request(method, client.uri, fields))
        client.leg.send_now(data, client.address, None, _ignore)

    # -- helpers -----------------------------------------------------------------

    def _made(self, client: _Client, code: int, reason: str) -> Response:
        """
        A final response of ours standing for a branch (408, 503, 487): to
        the caller's request, so it goes upstream as ours.
        """
        return make_response(client.request, code, reason)


#: The finals whose challenges are merged (§16.7 step 7).
_CHALLENGES = (401, 407)


def merge_challenges(chosen: Response, finals: list[Response]) -> None:
    """
    RFC 3261 §16.7 step 7: the WWW-Authenticate and Proxy-Authenticate
    values of every other 401 / 407 of the response context are added,
    unchanged, to the chosen 401 / 407 (so a caller forked to two
    realms can answer both challenges).
    """
    for other in finals:
        if other is chosen or other.code not in _CHALLENGES:
            continue
        for name in ("WWW-Authenticate", "Proxy-Authenticate"):
            for value in other.get_headers(name):
                chosen.add_header(name, value)


def _ignore(error: DeliveryError) -> None:
    """
    A retransmission, ACK or CANCEL that could not be sent: the timers
    that wait for its answer say what happens next.
    """


def _top_branch(payload: bytes) -> str | None:
    """
    The branch of the first Via of a message's bytes (what an ICMP error
    gives back of a datagram: its first few hundred bytes), if there.
    """
    for line in payload.split(b"\r\n", 8)[1:8]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"via", b"v"):
            try:
                return via_branch(value.decode("utf-8", "replace"))
            except SIPParseError:
                return None
    return None


def _groups(forward: Forward, request: Request) -> list[list[str]]:
    """
    The targets of a decision, in groups tried one after another: the
    forks of a located address of record or of the routing hook, else
    the (new) Request-URI alone.
    """
    return [list(group) for group in forward.forks] or [[forward.edits.uri or request.uri]]


def _server_key(via: Via, request: Request) -> tuple[str, str, str]:
    """
    What matches a request to its server transaction (RFC 3261 §17.2.3):
    the top Via's branch and sent-by, and the method (an ACK matches its
    INVITE).  A branch without the RFC 3261 magic cookie falls back on the
    Call-ID, CSeq number and From tag.
    """
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith("z9hG4bK"):
        return branch, f"{via.host}:{via.port}", method
    return request.tid, from_tag(request.get_header("from")), method


def _merge_key(request: Request) -> tuple[str, str, str] | None:
    """
    From tag, Call-ID and CSeq: two INVITEs sharing them with other
    branches are a merged request (§8.2.2.2); none without a From tag.
    """
    tag = from_tag(request.get_header("from"))
    try:
        in_dialog = header_tag(request.get_header("to") or "") is not None
    except SIPParseError:
        return None
    if not tag or in_dialog:
        return None
    return tag, request.call_id, str(request.cseq[0])
