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
 - responses go upstream as the response context says (1xx, every 2xx,
   the best final); a branch's non-2xx final is ACKed here, hop by hop
   (§17.1.1.3), and the caller's ACK for our non-2xx final is absorbed;
   the ACK for a 2xx goes on end to end, statelessly;
 - a CANCEL for a pending INVITE is answered 200 at once and every
   pending branch gets a CANCEL (§16.10); the caller then gets the 487;
 - an INVITE with the From tag, Call-ID and CSeq of a live transaction but
   another branch (a merged request, §8.2.2.2) gets 482;
 - at C{max_transactions} live transactions a new request gets 503.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sipleg.address import Address
from sipleg.decision import Forward, RequestView, from_tag, request_view
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.forking import ResponseContext, Step
from sipleg.leg import Leg
from sipleg.message import Request, Response, make_response
from sipleg.proxy import StatelessProxy, edit
from sipleg.uri import header_tag, parse_uri, parse_via, via_branch

__all__ = ["StatefulProxy", "TransactionTimers"]

log = Logger()


@dataclass(frozen=True)
class TransactionTimers:
    """
    The timers of RFC 3261 §17 (seconds) and the cap on transactions.

    @ivar t1: the round-trip estimate (Timer A / E start there, B / F /
        H / J are 64*T1).
    @ivar t2: the longest retransmit interval of non-INVITE requests.
    @ivar t4: how long a message may stay in the network (Timer I).
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


@dataclass(eq=False)
class _Client:
    """
    One branch: a client transaction.
    """

    server: _Server
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
    #: The RFC 3263 targets of the branch, and which one was taken.
    pairs: list[tuple[Leg, Address]] = field(default_factory=list)
    index: int = 0
    #: Cancelled before it answered: a provisional that still comes gets
    #: the CANCEL (§9.1).
    cancel_late: bool = False


@dataclass(eq=False)
class _Server:
    """
    One server transaction, and the branches of its request.
    """

    key: tuple[str, str, str]
    view: RequestView
    leg: Leg
    forward: Forward | None = None
    ended: bool = False
    context: ResponseContext[Response] | None = None
    last: Response | None = None
    final: bool = False
    clients: dict[str, _Client] = field(default_factory=dict)
    #: Timer H / I / J: the end of the transaction.
    timer: IDelayedCall | None = None
    #: Timer G: the next retransmission of a non-2xx final.
    resend: IDelayedCall | None = None
    merge_key: tuple[str, str, str] | None = None


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
            from twisted.internet import reactor as clock

            self._clock = clock
        self.timers = timers
        self._servers: dict[tuple[str, str, str], _Server] = {}
        self._clients: dict[str, _Client] = {}
        self._merged: dict[tuple[str, str, str], _Server] = {}
        self._numbers = itertools.count(1)
        self._forget: deque[IDelayedCall] = deque()

    @property
    def transactions(self) -> int:
        """
        How many server transactions are live.
        """
        return len(self._servers)

    # -- requests ------------------------------------------------------------

    def forward_request(self, request: Request, leg: Leg, source: Address) -> Deferred[Any] | None:
        try:
            key = _server_key(request)
        except SIPParseError:
            return super().forward_request(request, leg, source)
        method = request.method
        if method == "ACK":
            server = self._servers.get(key)
            if server is not None and server.final and server.last is not None and server.last.code >= 300:
                # The caller's ACK for our non-2xx final: absorbed (§17.2.1).
                self._end(server, self.timers.t4 if leg.proto == "udp" else 0)
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
            if server.last is not None:
                self._upstream(server, server.last, resend=True)
            return None
        if method == "INVITE":
            merge_key = _merge_key(request)
            if merge_key is not None and merge_key in self._merged:
                self._refuse(request, leg, source, 482, "Loop Detected (merged request)")
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
        ACK, of a 2xx, goes on statelessly: it has no transaction).
        """
        if view.method in ("ACK", "CANCEL"):
            # (A CANCEL matching no transaction of ours, §16.10.)
            return super()._forward(view, forward, in_leg)
        request = view.request
        server = _Server(_server_key(request), view, in_leg, forward)
        self._servers[server.key] = server
        if request.method == "INVITE":
            server.merge_key = _merge_key(request)
            if server.merge_key is not None:
                self._merged[server.merge_key] = server
            trying = make_response(request, 100, "Trying")
            self._upstream(server, trying)
        groups = [list(group) for group in forward.forks] or [[forward.edits.uri or request.uri]]
        context: ResponseContext[Response] = ResponseContext(groups)
        server.context = context
        edit(request, forward.edits)
        self._start(server, forward, context.first())
        return None

    def _start(self, server: _Server, forward: Forward, uris: list[str]) -> None:
        """
        One client transaction per target in C{uris}.
        """
        assert server.context is not None
        request = server.view.request
        legs = self._legs_from(self._legs[forward.prefer])
        for uri in uris:
            suffix = f"{forward.edits.branch}.{next(self._numbers)}"
            client = _Client(server, suffix, suffix, uri)
            server.clients[suffix] = client
            server.context.started(suffix)
            target = parse_uri(uri) if forward.forks else forward.targets[0]
            request.uri = uri
            try:
                found = self.dispatcher.resolve(target, legs, request, self._transports)
            except DeliveryError as e:
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
        forward = self._forward_of(server)
        request = server.view.request
        request.uri = client.uri
        build = self._builder(request, client.branch, forward.edits.record_route, server.leg)

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
        if following >= len(client.pairs):
            return False
        log.info("{uri}: {address} failed, trying the next target", uri=client.uri, address=client.address)
        self._stop_timers(client)
        self._clients.pop(client.branch, None)
        client.branch = f"{client.key}.{next(self._numbers)}"
        client.leg = client.address = None
        self._try(client, following)
        return True

    def _sent(self, pair: tuple[Leg, Address], client: _Client) -> None:
        """
        A branch's request left: its transaction's timers start.
        """
        leg, address = pair
        client.leg, client.address = leg, address
        if pair in client.pairs:
            client.index = client.pairs.index(pair)
        full = leg.branch + client.branch
        self._clients[full] = client
        client.branch = full
        self.stats.forwarded[self.stats.method(client.server.view.method)] += 1
        timers = self.timers
        invite = client.server.view.method == "INVITE"
        clock = self._clock
        assert clock is not None
        if leg.proto == "udp":
            client.interval = timers.t1
            client.retransmit = clock.callLater(timers.t1, self._retransmit, client)
        client.timeout = clock.callLater(64 * timers.t1, self._timed_out, client)
        if invite:
            client.timer_c = clock.callLater(timers.timer_c, self._timer_c, client)

    def _unreached_failure(self, reason: Any, client: _Client) -> None:
        error = reason.value
        if not isinstance(error, DeliveryError):
            error = DeliveryError(None, str(error))
        self._unreached(client, error)

    def _unreached(self, client: _Client, error: DeliveryError) -> None:
        """
        No target of a branch took its request: it ends 503 (§16.7).
        """
        log.info("branch to {uri} unreachable: {why}", uri=client.uri, why=error)
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
        client.leg.send_now(client.data, client.address, None, lambda error: None)
        invite = client.server.view.method == "INVITE"
        client.interval = client.interval * 2 if invite else min(client.interval * 2, self.timers.t2)
        assert self._clock is not None
        client.retransmit = self._clock.callLater(client.interval, self._retransmit, client)

    def _timed_out(self, client: _Client) -> None:
        """
        Timer B / F: no final response in time: the branch ends 408.
        """
        client.timeout = None
        if client.done or (client.provisional and client.server.view.method == "INVITE"):
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
            self._cancel_branch(client)
        self._branch_final(client, 408, self._made(client, 408, "Request Timeout"))

    # -- responses -------------------------------------------------------------

    def forward_response(self, response: Response, leg: Leg) -> Deferred[Any] | None:
        try:
            branch = via_branch(response.get_header("via") or "")
        except SIPParseError:
            branch = None
        client = self._clients.get(branch or "")
        if client is None:
            return super().forward_response(response, leg)
        method = response.cseq[1]
        if method == "CANCEL":
            return None
        code = response.code
        if client.done and code < 300:
            if code < 200 and client.cancel_late:
                client.cancel_late = False
                self._send_cancel(client)
            elif code >= 200:
                # Another 2xx of a forked INVITE: it goes on (§16.7).
                super().forward_response(response, leg)
            return None
        if client.done:
            # A retransmitted non-2xx final: our ACK again.
            self._send_ack(client, response)
            return None
        if code < 200:
            client.provisional = True
            if client.retransmit is not None and method == "INVITE":
                client.retransmit.cancel()
                client.retransmit = None
            if client.timer_c is not None and code > 100:
                client.timer_c.reset(self.timers.timer_c)
            assert client.server.context is not None
            self._execute(client.server, client.server.context.provisional(client.key, code, response))
            return None
        if code >= 300 and method == "INVITE":
            # §17.1.1.3: the ACK of a non-2xx final, hop by hop.
            self._send_ack(client, response)
        if code == 503 and self._fail_over(client):
            return None
        self._branch_final(client, code, response)
        return None

    def _branch_final(self, client: _Client, code: int, response: Response) -> None:
        """
        A branch ended (its transaction is done; 2xx retransmissions of
        it still find their way statelessly).
        """
        first = not client.done
        client.done = True
        self._stop_timers(client)
        server = client.server
        if server.context is not None and first:
            self._execute(server, server.context.final(client.key, code, response))

    @staticmethod
    def _stop_timers(client: _Client) -> None:
        for name in ("retransmit", "timeout", "timer_c"):
            timer = getattr(client, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(client, name, None)

    def _execute(self, server: _Server, step: Step[Response]) -> None:
        """
        Carry out what the response context decided.
        """
        for response in step.upstream:
            self._upstream(server, response)
        for key in step.cancel:
            client = server.clients.get(key)
            if client is not None:
                self._cancel_branch(client)
        if step.start:
            forward = self._forward_of(server)
            self._start(server, forward, step.start)
        if step.done:
            server.final = True
            self._finish(server)

    def _upstream(self, server: _Server, response: Response, resend: bool = False) -> None:
        """
        Send a response to the caller, as the server transaction's: with
        the request's Vias (a branch's response had ours on top; a phone
        may even answer a CANCEL's Vias), along the request's top Via, on
        the request's own connection over a stream (§18.2.2).
        """
        view = server.view
        if not resend:
            response.remove_header("via")
            for value in view.request.get_headers("via"):
                response.add_header("Via", value)
        self._send_response(response, view.via, server.leg, view.source)
        server.last = response
        if response.code >= 200:
            server.final = True
            invite = server.view.method == "INVITE"
            if response.code >= 300 and invite and server.leg.proto == "udp" and not resend:
                # (Timer G: the caller's ACK stops the retransmissions.)
                self._arm(server, self.timers.t1)

    def _arm(self, server: _Server, interval: float) -> None:
        """
        Timer G: retransmit a non-2xx final to the caller until its ACK
        (or Timer H ends the transaction).
        """
        assert self._clock is not None

        def again() -> None:
            if server.key not in self._servers or server.last is None:
                return
            self._upstream(server, server.last, resend=True)
            if interval * 2 < 64 * self.timers.t1:
                self._arm(server, min(interval * 2, self.timers.t2))

        if server.resend is not None and server.resend.active():
            server.resend.cancel()
        server.resend = self._clock.callLater(interval, again)

    def _finish(self, server: _Server) -> None:
        """
        A final response went upstream: the transaction ends after the
        time retransmissions may still arrive (Timer H / J, 64*T1 over UDP,
        at once after a 2xx or over a stream).
        """
        last = server.last
        if last is not None and last.code >= 300 and server.view.method == "INVITE":
            # Timer H, on every transport: the caller's ACK ends it sooner.
            wait = 64 * self.timers.t1
        elif server.leg.proto == "udp" and server.view.method != "INVITE":
            # Timer J: retransmitted requests get the final again.
            wait = 64 * self.timers.t1
        else:
            wait = 0.0
        self._end(server, wait)

    def _end(self, server: _Server, wait: float) -> None:
        """
        Free the transaction (after C{wait} seconds that absorb stray
        retransmissions).
        """
        if server.timer is not None and server.timer.active():
            server.timer.cancel()
        server.timer = None
        if wait > 0:
            assert self._clock is not None
            server.timer = self._clock.callLater(wait, self._end, server, 0)
            return
        if server.resend is not None and server.resend.active():
            server.resend.cancel()
        server.resend = None
        server.ended = True
        if self._servers.get(server.key) is server:
            del self._servers[server.key]
        if server.merge_key is not None and self._merged.get(server.merge_key) is server:
            del self._merged[server.merge_key]
        # Branches still pending (being cancelled) go when they end; ended
        # ones stay a while (Timer K), so a late 487 or a retransmitted
        # final is still ACKed here.
        assert self._clock is not None
        forget = self._forget
        while forget and not forget[0].active():
            forget.popleft()
        forget.append(
            self._clock.callLater(64 * self.timers.t1, self._forget_clients, server)
        )

    def _forget_clients(self, server: _Server) -> None:
        for client in server.clients.values():
            if client.done:
                self._clients.pop(client.branch, None)

    def stop(self) -> None:
        """
        Cancel every timer (the service stops; what is pending is dropped).
        """
        for server in list(self._servers.values()):
            for timer in (server.timer, server.resend):
                if timer is not None and timer.active():
                    timer.cancel()
        for client in list(self._clients.values()):
            self._stop_timers(client)
        for server in list(self._servers.values()):
            for client in server.clients.values():
                self._stop_timers(client)
        for call in self._forget:
            if call.active():
                call.cancel()
        self._forget.clear()

    # -- CANCEL ------------------------------------------------------------------

    def _answer_cancel(self, request: Request, leg: Leg, source: Address, server: _Server) -> None:
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
        if server.context is None or server.final:
            return
        self._execute(server, server.context.cancel())
        for client in list(server.clients.values()):
            if not client.done and not client.provisional:
                client.cancel_late = True
                self._branch_final(client, 487, self._made(client, 487, "Request Terminated"))

    def _cancel_branch(self, client: _Client) -> None:
        """
        Cancel a pending branch.
        """
        if not client.done:
            self._send_cancel(client)

    def _send_cancel(self, client: _Client) -> None:
        """
        Send CANCEL for a branch (§9.1: the INVITE's Request-URI, Call-ID,
        To, From, CSeq number and top Via).
        """
        self._send_branch_request(client, "CANCEL", client.server.view.request.get_header("to") or "")

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
        request = client.server.view.request
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
        client.leg.send_now(data, client.address, None, lambda error: None)

    # -- helpers -----------------------------------------------------------------

    def _made(self, client: _Client, code: int, reason: str) -> Response:
        """
        A final response of ours standing for a branch (408, 503, 487): to
        the caller's request, so it goes upstream as ours.
        """
        return make_response(client.server.view.request, code, reason)

    def _forward_of(self, server: _Server) -> Forward:
        """
        The decision the transaction was made with (for the next group).
        """
        forward = server.forward
        assert forward is not None
        return forward


def _server_key(request: Request) -> tuple[str, str, str]:
    """
    What matches a request to its server transaction (RFC 3261 §17.2.3):
    the top Via's branch and sent-by, and the method (an ACK matches its
    INVITE).  A branch without the RFC 3261 magic cookie falls back on the
    Call-ID, CSeq number and From tag.

    @raise SIPParseError: no usable top Via.
    """
    via = parse_via(request.get_header("via") or "")
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith("z9hG4bK"):
        return branch, f"{via.host}:{via.port}", method
    return request.tid, _from_tag(request), method


def _from_tag(request: Request) -> str:
    return from_tag(request.get_header("from"))


def _merge_key(request: Request) -> tuple[str, str, str] | None:
    """
    From tag, Call-ID and CSeq: two INVITEs sharing them with other
    branches are a merged request (§8.2.2.2); none without a From tag.
    """
    tag = _from_tag(request)
    try:
        in_dialog = header_tag(request.get_header("to") or "") is not None
    except SIPParseError:
        return None
    if not tag or in_dialog:
        return None
    return tag, request.call_id, str(request.cseq[0])
