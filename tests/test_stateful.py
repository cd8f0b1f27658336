"""
The transaction-stateful proxy (L{sipleg.stateful}) and its response
context (L{sipleg.forking}): forking to every binding, the best final
response, CANCEL, timers, retransmissions, merged requests and the cap.

The proxy has one in-memory UDP leg and a registrar where
C{sip:bob@example.test} has two phones (and a third, less preferred); a
L{Clock} drives the timers.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from sipleg import stateful
from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.flood import EdgePolicy
from sipleg.forking import ResponseContext, best_response
from sipleg.leg import Leg
from sipleg.message import Message, Request, Response, parse_message
from sipleg.registrar import Registrar
from sipleg.routing import StaticRoutes
from sipleg.stateful import StatefulProxy, TransactionTimers
from sipleg.transport.memory import MemorySocketPool
from sipleg.uri import parse_uri
from tests.collector import PacketCollector, options
from tests.interop.peers import free_port
from tests.support import listening_leg

CALLER = Address("127.0.0.1", 5071)
DESK = Address("127.0.0.1", 5072)
SOFT = Address("127.0.0.1", 5073)
SPARE = Address("127.0.0.1", 5074)


class BestResponseTests(TestCase):
    def test_rfc3261_16_7_step_6(self) -> None:
        self.assertEqual(best_response([486, 603, 404]), 1)
        self.assertEqual(best_response([503, 486]), 1)
        self.assertEqual(best_response([404, 407, 480]), 1)
        self.assertEqual(best_response([408, 486]), 0)
        self.assertRaises(ValueError, best_response, [])

    def test_context_groups_and_cancel(self) -> None:
        context: ResponseContext[str] = ResponseContext([["a", "b"], ["c"]])
        self.assertEqual(context.first(), ["a", "b"])
        context.started("a")
        context.started("b")
        self.assertEqual(context.provisional("a", 180, "180a").upstream, ["180a"])
        self.assertEqual(context.provisional("a", 100, "100a").upstream, [])
        step = context.final("b", 486, "486b")
        self.assertEqual((step.upstream, step.start), ([], []))
        step = context.final("a", 480, "480a")
        self.assertEqual(step.start, ["c"])
        context.started("c")
        step = context.final("c", 404, "404c")
        self.assertEqual((step.upstream, step.done), (["486b"], True))

    def test_each_branch_cancelled_once(self) -> None:
        """
        A 2xx cancels the ringing branch at once and the calling one at its
        first provisional; later provisionals cancel nothing more.
        """
        context: ResponseContext[str] = ResponseContext([["a", "b", "c"]])
        context.first()
        for key in "abc":
            context.started(key)
        context.provisional("b", 180, "180b")
        self.assertEqual(context.final("a", 200, "200a").cancel, ["b"])
        self.assertEqual(context.provisional("b", 183, "183b").cancel, [])
        self.assertEqual(context.provisional("c", 100, "100c").cancel, ["c"])
        self.assertEqual(context.provisional("c", 180, "180c").cancel, [])


class StatefulTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.pool = MemorySocketPool(Address("127.0.0.1", 5060))
        self.registrar = Registrar(["example.test"], self.clock)
        self.addCleanup(self.registrar.stop)
        for n, (phone, q) in enumerate(((DESK, "1"), (SOFT, "1"), (SPARE, "0.5"))):
            self.registrar.register(self.request(
                "REGISTER", "sip:example.test", call_id=f"reg{n}",
                extra=[("Contact", f"<sip:bob@{phone.host}:{phone.port}>;q={q}")], to="sip:bob@example.test",
            ))  # fmt: skip
        self.proxy = StatefulProxy(
            Dispatcher([Leg(socketpool=self.pool)]),
            registrar=self.registrar,
            edge=EdgePolicy(flood=None, scanners=()),
            clock=self.clock,
            timers=TransactionTimers(timer_c=100),
        )

    def request(
        self,
        method: str = "INVITE",
        uri: str = "sip:bob@example.test",
        call_id: str = "call1",
        branch: str = "z9hG4bKcaller1",
        cseq: int = 1,
        extra: list[tuple[str, str]] | None = None,
        to: str | None = None,
    ) -> Request:
        return Request(method, uri, [
            ("Via", f"SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch={branch}"),
            ("From", "<sip:alice@example.test>;tag=a1"),
            ("To", f"<{to or uri}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Max-Forwards", "70"),
            *(extra or []),
        ])  # fmt: skip

    def sent(self) -> list[tuple[Message, Address]]:
        out = [(parse_message(data), dst) for data, dst in self.pool.sent]
        self.pool.sent.clear()
        return out

    def to(self, where: Address) -> list[Message]:
        return [message for message, dst in self.sent_now if dst == where]

    def step(self, data: Message | bytes, source: Address) -> list[tuple[Message, Address]]:
        self.pool.deliver(bytes(data), source)
        self.sent_now = self.sent()
        return self.sent_now

    def answer(self, request: Message, code: int, tag: str) -> Response:
        """
        A phone's answer to the INVITE it got (all its Vias copied).
        """
        assert isinstance(request, Request)
        response = Response(code, None, [
            *(("Via", value) for value in request.get_headers("via")),
            ("From", request.get_header("from") or ""),
            ("To", f"{request.get_header('to')};tag={tag}"),
            ("Call-ID", request.get_header("call-id") or ""),
            ("CSeq", request.get_header("cseq") or ""),
        ])  # fmt: skip
        if 200 <= code < 300:
            response.add_header("Contact", f"<{request.uri}>")
        return response

    def invite(self) -> tuple[Request, Request, Request]:
        """
        The caller's INVITE: 100 Trying back at once, and one INVITE to
        each q=1 phone, with branches of their own.
        """
        invite = self.request()
        self.step(invite, CALLER)
        (trying,) = self.to(CALLER)
        assert isinstance(trying, Response)
        self.assertEqual(trying.code, 100)
        (desk,), (soft,) = self.to(DESK), self.to(SOFT)
        assert isinstance(desk, Request) and isinstance(soft, Request)
        self.assertEqual((desk.uri, soft.uri), ("sip:bob@127.0.0.1:5072", "sip:bob@127.0.0.1:5073"))
        self.assertNotEqual(desk.get_header("via"), soft.get_header("via"))
        self.assertEqual(self.to(SPARE), [])
        return invite, desk, soft

    def codes(self, where: Address) -> list[int | str]:
        return [m.code if isinstance(m, Response) else m.method for m in self.to(where)]

    def test_one_answers_the_other_is_cancelled(self) -> None:
        _, desk, soft = self.invite()
        self.step(self.answer(soft, 180, "s"), SOFT)
        self.assertEqual(self.codes(CALLER), [180])
        self.step(self.answer(desk, 200, "d"), DESK)
        self.assertEqual(self.codes(CALLER), [200])
        self.assertEqual(self.codes(SOFT), ["CANCEL"])
        (cancel,) = self.to(SOFT)
        self.assertEqual(cancel.get_header("via"), soft.get_header("via"))
        self.step(self.answer(soft, 487, "s"), SOFT)
        # The 487 is ACKed here and never reaches the caller.
        self.assertEqual(self.codes(SOFT), ["ACK"])
        self.assertEqual(self.codes(CALLER), [])
        self.assertEqual(self.proxy.transactions, 0)

    def test_busy_and_answered(self) -> None:
        _, desk, soft = self.invite()
        self.step(self.answer(desk, 486, "d"), DESK)
        self.assertEqual((self.codes(DESK), self.codes(CALLER)), (["ACK"], []))
        self.step(self.answer(soft, 200, "s"), SOFT)
        self.assertEqual(self.codes(CALLER), [200])

    def test_both_busy(self) -> None:
        """
        Both phones busy: the next q group is tried; when it fails too the
        best response (486 before 404) goes to the caller, once.
        """
        _, desk, soft = self.invite()
        self.step(self.answer(desk, 486, "d"), DESK)
        self.step(self.answer(soft, 486, "s"), SOFT)
        (spare,) = self.to(SPARE)
        assert isinstance(spare, Request)
        self.step(self.answer(spare, 404, "x"), SPARE)
        self.assertEqual(self.codes(CALLER), [486])
        # The caller's ACK for that 486 is absorbed here.
        ack = self.request("ACK")
        ack.set_header("to", "<sip:bob@example.test>;tag=d")
        self.step(ack, CALLER)
        self.assertEqual(self.sent_now, [])

    def test_decline_everywhere_cancels_the_rest(self) -> None:
        _, desk, soft = self.invite()
        self.step(self.answer(soft, 180, "s"), SOFT)
        self.step(self.answer(desk, 603, "d"), DESK)
        self.assertEqual(self.codes(SOFT), ["CANCEL"])
        self.step(self.answer(soft, 487, "s"), SOFT)
        self.assertEqual(self.codes(CALLER), [603])
        self.assertEqual(self.to(SPARE), [])

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, in steps of 0.25 s; what was sent meanwhile
        becomes L{sent_now}.
        """
        for _ in range(int(seconds / 0.25)):
            self.clock.advance(0.25)
        self.sent_now = self.sent()

    def test_nobody_answers(self) -> None:
        """
        Over UDP the INVITEs are retransmitted (Timer A: 0.5, 1, 2 ... s)
        until Timer B (32 s) ends both branches 408; the next group is
        tried, and when it is silent too the caller gets 408, once; the
        transaction ends.
        """
        self.invite()
        self.advance(0.5)
        self.assertEqual((self.codes(DESK), self.codes(SOFT)), (["INVITE"], ["INVITE"]))
        self.advance(1.0)
        self.assertEqual((self.codes(DESK), self.codes(SOFT)), (["INVITE"], ["INVITE"]))
        self.advance(30.5)
        self.assertEqual(self.codes(SPARE), ["INVITE"])
        self.assertEqual(self.codes(CALLER), [])
        self.advance(32)
        self.assertEqual([code for code in self.codes(CALLER)][:1], [408])
        self.advance(40)
        self.assertEqual(self.proxy.transactions, 0)

    def test_timer_c_cancels_a_ringing_branch(self) -> None:
        _, desk, soft = self.invite()
        self.step(self.answer(desk, 180, "d"), DESK)
        self.step(self.answer(soft, 180, "s"), SOFT)
        self.clock.advance(100)
        self.sent_now = self.sent()
        self.assertEqual((self.codes(DESK), self.codes(SOFT)), (["CANCEL"], ["CANCEL"]))
        # Nobody answered in time: the caller gets 408 (then the next q
        # group would be tried: the spare phone rings no longer either).
        self.assertEqual(self.codes(SPARE), ["INVITE"])

    def test_caller_cancels(self) -> None:
        invite, desk, soft = self.invite()
        self.step(self.answer(desk, 180, "d"), DESK)
        self.step(self.answer(soft, 180, "s"), SOFT)
        self.step(self.request("CANCEL"), CALLER)
        self.assertEqual(self.codes(CALLER), [200])
        self.assertEqual((self.codes(DESK), self.codes(SOFT)), (["CANCEL"], ["CANCEL"]))
        self.step(self.answer(desk, 487, "d"), DESK)
        self.step(self.answer(soft, 487, "s"), SOFT)
        self.assertEqual(self.codes(CALLER), [487])

    def failover_setup(self) -> tuple[Address, Address]:
        """
        carol's phone has a name with two addresses (as DNS would give
        them, RFC 3263): the dispatcher's resolution is stood in for.
        """
        first, second = Address("127.0.0.1", 5081), Address("127.0.0.1", 5082)
        self.registrar.register(self.request(
            "REGISTER", "sip:example.test", call_id="regc",
            extra=[("Contact", "<sip:carol@phone.example>")], to="sip:carol@example.test",
        ))  # fmt: skip
        dispatcher = self.proxy.dispatcher
        real = dispatcher.resolve

        def resolve(uri: Any, legs: Any, packet: Any, transports: Any = None) -> Any:
            if uri.host == "phone.example":
                return [(legs[0], first), (legs[0], second)]
            return real(uri, legs, packet, transports)

        dispatcher.resolve = resolve  # type: ignore[method-assign]
        return first, second

    def test_failover_on_silence(self) -> None:
        """
        The first address is silent: after Timer B the INVITE goes to the
        next one, on a branch of its own, and its answer reaches the caller.
        """
        first, second = self.failover_setup()
        self.step(self.request(uri="sip:carol@example.test", call_id="c3"), CALLER)
        (invite,) = self.to(first)
        self.advance(31.75)
        self.assertEqual(self.to(second), [])
        self.advance(0.5)
        (again,) = self.to(second)
        assert isinstance(invite, Request) and isinstance(again, Request)
        self.assertNotEqual(again.get_header("via"), invite.get_header("via"))
        self.step(self.answer(again, 200, "c"), second)
        self.assertEqual(self.codes(CALLER), [200])

    def test_failover_on_503(self) -> None:
        first, second = self.failover_setup()
        self.step(self.request(uri="sip:carol@example.test", call_id="c4"), CALLER)
        (invite,) = self.to(first)
        self.step(self.answer(invite, 503, "x"), first)
        self.assertEqual(self.codes(first), ["ACK"])
        (again,) = self.to(second)
        self.step(self.answer(again, 486, "c"), second)
        self.assertEqual(self.codes(CALLER), [486])

    def test_retransmitted_invite_absorbed(self) -> None:
        invite, _, _ = self.invite()
        self.step(invite, CALLER)
        self.assertEqual(self.codes(CALLER), [100])
        self.assertEqual((self.to(DESK), self.to(SOFT)), ([], []))

    def test_merged_request(self) -> None:
        self.invite()
        self.step(self.request(branch="z9hG4bKother"), CALLER)
        self.assertEqual(self.codes(CALLER), [482])

    def test_cap(self) -> None:
        self.proxy.timers = TransactionTimers(max_transactions=1)
        self.invite()
        self.step(self.request(call_id="call2", branch="z9hG4bKcaller2"), CALLER)
        (answer,) = self.to(CALLER)
        assert isinstance(answer, Response)
        self.assertEqual((answer.code, answer.get_header("retry-after")), (503, "5"))

    def test_branches_kept_as_rfc3261_says(self) -> None:
        """
        A branch ends with its final (§17.1): a 2xx INVITE branch is
        forgotten at once; over UDP a non-2xx INVITE branch stays for
        Timer D (32 s) and ACKs a retransmitted final again, a non-INVITE
        branch for Timer K (T4); the server transaction of a non-INVITE
        stays for Timer J (64*T1) and answers a retransmission from it.
        """
        _, desk, soft = self.invite()
        self.step(self.answer(desk, 486, "d"), DESK)
        self.step(self.answer(soft, 200, "s"), SOFT)
        self.assertEqual((self.proxy.transactions, self.proxy.branches), (0, 1))
        self.advance(31.75)
        self.step(self.answer(desk, 486, "d"), DESK)
        self.assertEqual((self.codes(DESK), self.codes(CALLER)), (["ACK"], []))
        self.advance(0.5)
        self.assertEqual(self.proxy.branches, 0)

        bye = self.request("BYE", "sip:bob@127.0.0.1:5073", branch="z9hG4bKbye1", cseq=2)
        self.step(bye, CALLER)
        (forwarded,) = self.to(SOFT)
        ok = self.answer(forwarded, 200, "s")
        self.step(ok, SOFT)
        self.assertEqual(self.codes(CALLER), [200])
        self.assertEqual((self.proxy.transactions, self.proxy.branches), (1, 1))
        self.step(ok, SOFT)
        self.assertEqual(self.sent_now, [])
        self.step(bye, CALLER)
        self.assertEqual((self.codes(CALLER), self.to(SOFT)), ([200], []))
        self.advance(5.0)
        self.assertEqual((self.proxy.transactions, self.proxy.branches), (1, 0))
        self.advance(27.0)
        self.assertEqual((self.proxy.transactions, self.proxy.branches), (0, 0))

    def test_ended_transactions_are_freed_without_the_collector(self) -> None:
        """
        A transaction holds no reference cycle once it ended: with the
        cyclic garbage collector off, a forked call, its BYE and a
        cancelled call leave no transaction object behind once their
        timers ran (at a steady load, cycles would make every call wait
        for full collections).
        """
        kinds = (stateful._Server, stateful._Client, stateful._Answered, ResponseContext)
        gc.collect()
        # (Other tests' proxies may still be about: only this one's count.)
        before = {id(o) for o in gc.get_objects() if isinstance(o, kinds)}
        gc.disable()
        self.addCleanup(gc.enable)
        _, desk, soft = self.invite()
        self.step(self.answer(soft, 180, "s"), SOFT)
        self.step(self.answer(desk, 200, "d"), DESK)
        self.step(self.answer(soft, 487, "s"), SOFT)
        bye = self.request("BYE", "sip:bob@127.0.0.1:5072", branch="z9hG4bKbye2", cseq=2)
        self.step(bye, CALLER)
        (forwarded,) = self.to(DESK)
        self.step(self.answer(forwarded, 200, "d"), DESK)
        self.step(self.request(call_id="call2", branch="z9hG4bKcaller2"), CALLER)
        self.step(self.request("CANCEL", call_id="call2", branch="z9hG4bKcaller2"), CALLER)
        self.advance(70)
        self.assertEqual((self.proxy.transactions, self.proxy.branches), (0, 0))
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, kinds) and id(o) not in before], [])

    def test_challenges_merged(self) -> None:
        """
        §16.7 step 7: the 401 chosen as the best final carries the
        challenges of the 407 from the other branch, unchanged.
        """
        _, desk, soft = self.invite()
        challenge = self.answer(desk, 401, "d")
        challenge.add_header("WWW-Authenticate", 'Digest realm="desk", nonce="1"')
        proxy_challenge = self.answer(soft, 407, "s")
        proxy_challenge.add_header("Proxy-Authenticate", 'Digest realm="soft", nonce="2"')
        self.step(challenge, DESK)
        self.step(proxy_challenge, SOFT)
        (spare,) = self.to(SPARE)
        self.step(self.answer(spare, 404, "x"), SPARE)
        (final,) = self.to(CALLER)
        assert isinstance(final, Response)
        self.assertEqual(final.code, 401)
        self.assertEqual(final.get_headers("www-authenticate"), ['Digest realm="desk", nonce="1"'])
        self.assertEqual(final.get_headers("proxy-authenticate"), ['Digest realm="soft", nonce="2"'])

    def test_forks_follow_the_static_routes(self) -> None:
        """
        Every forked contact goes where the Request-URI would: with an
        outbound proxy for what is not ours, each branch's INVITE goes
        there with the contact as its Request-URI.
        """
        outbound = Address("127.0.0.1", 5090)
        self.proxy.routes = StaticRoutes(
            outbound_proxy=parse_uri(f"sip:{outbound.host}:{outbound.port};lr"), domains=["example.test"]
        )
        self.step(self.request(), CALLER)
        uris = sorted(m.uri for m in self.to(outbound) if isinstance(m, Request))
        self.assertEqual(uris, ["sip:bob@127.0.0.1:5072", "sip:bob@127.0.0.1:5073"])
        self.assertEqual((self.to(DESK), self.to(SOFT)), ([], []))


class UnreachableTests(TestCase):
    """
    The stateful proxy on real UDP sockets: a branch whose datagram the
    kernel refuses (ICMP port unreachable, Linux's C{IP_RECVERR}) ends at
    once.
    """

    @inlineCallbacks
    def test_refused_branch_ends_at_once(self) -> Any:
        """
        An INVITE to a port where nothing listens: the caller gets 100
        Trying, then 503 within a second, not after Timer B (32 s).
        """
        if sys.platform != "linux":
            raise SkipTest("IP_RECVERR is Linux's")
        got = PacketCollector()
        proxy_leg, caller = yield gatherResults([listening_leg(self, "udp"), listening_leg(self, "udp", got)])
        proxy = StatefulProxy(Dispatcher([proxy_leg]), edge=EdgePolicy(flood=None, scanners=()))
        self.addCleanup(proxy.stop)
        invite = options(f"sip:bob@127.0.0.1:{free_port('udp')}", CSeq="1 INVITE")
        invite.method = "INVITE"
        yield caller.deliver(invite, proxy_leg.local)
        yield got.wait(2, timeout=1.0)
        codes = [m.code for m in got.messages() if isinstance(m, Response)]
        self.assertEqual(codes, [100, 503])
        self.assertEqual(proxy.branches, 0)
