"""
The HTTP routing hook (C{--route-url}): the summary and the answers as
pure values (L{sipleg.routehook}), then the proxy on loopback UDP / TCP
legs asking a C{twisted.web} service in the test process
(L{sipleg.hookclient}, L{tests.support.HookServer}).
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.decision import (
    Answer,
    Authenticated,
    Forward,
    LegSet,
    Rules,
    decide_request,
    leg_identity,
    request_view,
)
from sipleg.dispatcher import Dispatcher
from sipleg.errors import HookAnswerError
from sipleg.hookclient import RouteHookClient
from sipleg.message import Request, Response
from sipleg.proxy import StatelessProxy
from sipleg.routehook import (
    MAX_ANSWER,
    Continue,
    HookConfig,
    Reject,
    RouteTo,
    apply_hook_answer,
    asks_hook,
    hook_summary,
    parse_hook_answer,
)
from sipleg.routing import NetworkAccessPolicy, StaticRoutes
from sipleg.stateful import StatefulProxy, TransactionTimers
from sipleg.uri import parse_uri
from tests.collector import PacketCollector, options
from tests.interop.peers import free_port
from tests.support import HookServer, listening_leg

CALLER = Address("127.0.0.1", 5099)


def route(*targets: str, parallel: bool = False) -> tuple[int, bytes]:
    return 200, json.dumps({"action": "route", "targets": list(targets), "parallel": parallel}).encode()


class PureTests(unittest.TestCase):
    """
    Which requests ask, what they say, how answers read and what they do,
    without I/O.
    """

    def setUp(self) -> None:
        self.leg = leg_identity("udp", socket.AF_INET, "127.0.0.1", 5060, "z9hG4bK-p-", 70)
        self.rules = Rules(
            LegSet((self.leg,)),
            NetworkAccessPolicy(),
            StaticRoutes({"example.org": parse_uri("sip:gw.example.net:5070")}),
        )

    def decide(self, request: Request, rules: Rules | None = None) -> tuple[Any, Any]:
        view = request_view(request, self.leg, CALLER)
        return view, decide_request(view, rules or self.rules)

    def request(
        self, method: str = "INVITE", to: str = "<sip:bob@127.0.0.1:5070>", **headers: str
    ) -> Request:
        fields = [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-caller-1"),
            ("From", "<sip:alice@127.0.0.1>;tag=a1"),
            ("To", to),
            ("Call-ID", "call-1@x"),
            ("CSeq", f"1 {method}"),
            ("Max-Forwards", "70"),
            *headers.items(),
        ]
        return Request(method, "sip:bob@127.0.0.1:5070", fields)

    def test_summary(self) -> None:
        view, forward = self.decide(self.request())
        self.assertTrue(asks_hook(view, forward))
        self.assertEqual(
            hook_summary(view, forward),
            {
                "method": "INVITE",
                "uri": "sip:bob@127.0.0.1:5070",
                "from": "<sip:alice@127.0.0.1>;tag=a1",
                "to": "<sip:bob@127.0.0.1:5070>",
                "call_id": "call-1@x",
                "source": {"address": "127.0.0.1", "port": 5099, "transport": "udp"},
                "user": None,
            },
        )

    def test_summary_names_the_authenticated_user(self) -> None:
        """
        The user the authentication step proved is the decision's, and
        the summary's.
        """
        rules = Rules(
            self.rules.legs,
            self.rules.access,
            self.rules.routes,
            auth=lambda view, registers: Authenticated("alice"),
        )
        view, forward = self.decide(self.request(), rules)
        self.assertEqual(forward.user, "alice")
        self.assertEqual(hook_summary(view, forward)["user"], "alice")

    def test_who_asks(self) -> None:
        """
        In-dialog requests, ACK, REGISTER and requests with a Route set of
        another proxy never ask; CANCEL (routed like its INVITE by a
        stateless proxy) does.
        """
        cases = [
            (self.request(to="<sip:bob@127.0.0.1:5070>;tag=b1"), False),
            (self.request("ACK"), False),
            (self.request("REGISTER"), False),
            (self.request(Route="<sip:other.example.net;lr>"), False),
            (self.request(Route="<sip:127.0.0.1:5060;lr>"), True),
            (self.request("CANCEL"), True),
            (self.request("OPTIONS"), True),
        ]
        for request, asks in cases:
            view, forward = self.decide(request)
            assert isinstance(forward, Forward), forward
            self.assertEqual(asks_hook(view, forward), asks, request.method)

    def test_answers(self) -> None:
        self.assertEqual(parse_hook_answer(b'{"action": "continue"}'), Continue())
        self.assertEqual(
            parse_hook_answer(b'{"action": "reject", "code": 486, "reason": "Busy Here"}'),
            Reject(486, "Busy Here"),
        )
        self.assertEqual(parse_hook_answer(b'{"action": "reject", "code": 404}'), Reject(404, "Not Found"))
        answer = parse_hook_answer(route("sip:a@h1", "sips:b@h2:5071")[1])
        assert isinstance(answer, RouteTo)
        self.assertEqual([str(uri) for uri in answer.targets], ["sip:a@h1", "sips:b@h2:5071"])
        self.assertFalse(answer.parallel)
        self.assertTrue(parse_hook_answer(route("sip:a@h1", parallel=True)[1]).parallel)  # type: ignore[union-attr]

    def test_bad_answers(self) -> None:
        """
        Every malformed answer fails with what is wrong with it.
        """
        cases = {
            b"": "not JSON",
            b"[1]": "not a JSON object",
            b'{"action": "drop"}': "action 'drop'",
            b'{"code": 486}': "action None",
            b'{"action": "continue", "code": 1}': "unknown member(s) for continue: 'code'",
            b'{"action": "route"}': "targets must be a non-empty list",
            b'{"action": "route", "targets": []}': "targets must be a non-empty list",
            b'{"action": "route", "targets": [7]}': "target 7 is not a string",
            b'{"action": "route", "targets": ["tel:+1555"]}': "is not a sip: or sips: URI",
            b'{"action": "route", "targets": ["sip:"]}': "target 'sip:'",
            b'{"action": "route", "targets": ["sip:a@h"], "parallel": 1}': "parallel must be true or false",
            b'{"action": "reject", "code": 200}': "code 200 is not an integer from 300 to 699",
            b'{"action": "reject", "code": 700}': "code 700",
            b'{"action": "reject", "code": "486"}': "code '486'",
            b'{"action": "reject", "code": true}': "code True",
            b'{"action": "reject", "code": 486, "reason": "Busy\\r\\nX: y"}': "printable",
            b'{"action": "reject", "code": 486, "reason": ""}': "printable",
            json.dumps({"action": "route", "targets": ["sip:a@h"] * 33}).encode(): "more than 32 targets",
            b" " * (MAX_ANSWER + 1): "larger than",
        }
        for body, why in cases.items():
            with self.assertRaises(HookAnswerError, msg=body[:60]) as caught:
                parse_hook_answer(body)
            self.assertIn(why, caught.exception.reason)

    def test_apply(self) -> None:
        """
        A list is tried in order (groups of one), a parallel one forks
        (one group); the Request-URI is the first target, the next hops
        follow the static routes, the branch is the new URI's; reject is
        an answer; continue changes nothing.
        """
        view, forward = self.decide(self.request())
        targets = (parse_uri("sip:a@example.org"), parse_uri("sip:b@127.0.0.1:5072"))
        sequential = apply_hook_answer(view, forward, RouteTo(targets), self.rules)
        assert isinstance(sequential, Forward)
        self.assertEqual(sequential.forks, (("sip:a@example.org",), ("sip:b@127.0.0.1:5072",)))
        self.assertEqual(
            [str(t) for t in sequential.targets], ["sip:gw.example.net:5070", "sip:b@127.0.0.1:5072"]
        )
        self.assertEqual(sequential.edits.uri, "sip:a@example.org")
        self.assertNotEqual(sequential.edits.branch, forward.edits.branch)
        parallel = apply_hook_answer(view, forward, RouteTo(targets, True), self.rules)
        assert isinstance(parallel, Forward)
        self.assertEqual(parallel.forks, (("sip:a@example.org", "sip:b@127.0.0.1:5072"),))
        self.assertEqual(
            apply_hook_answer(view, forward, Reject(486, "Busy Here"), self.rules), Answer(486, "Busy Here")
        )
        self.assertIs(apply_hook_answer(view, forward, Continue(), self.rules), forward)

    def test_config(self) -> None:
        for url in ("ftp://h/x", "http:///x", "127.0.0.1:8080", "http://h:99999/"):
            self.assertRaisesRegex(ValueError, "^--route-url", HookConfig, url)
        self.assertRaisesRegex(ValueError, "^--route-timeout", HookConfig, "http://h/", 0.0)
        self.assertRaisesRegex(ValueError, "^--route-failure", HookConfig, "http://h/", 1.0, "drop")
        self.assertRaisesRegex(ValueError, "^--route-max-pending", HookConfig, "http://h/", 1.0, "503", 0)
        HookConfig("https://routing.example.com:8443/route", 0.5, "fallback", 10)


class HookTestCase(unittest.TestCase):
    """
    A stateless proxy with a UDP and a TCP leg asking the web service; a
    UAC and two UASs on UDP.
    """

    proxy_class: Any = StatelessProxy
    timeout_seconds = 1.0
    on_failure = "503"
    max_pending = 1000

    @inlineCallbacks
    def setUp(self) -> Any:
        self.web = HookServer(self)
        self.udp, self.tcp = yield gatherResults([listening_leg(self, "udp"), listening_leg(self, "tcp")])
        self.hook = RouteHookClient(
            HookConfig(self.web.url, self.timeout_seconds, self.on_failure, self.max_pending), reactor
        )
        self.addCleanup(self.hook.close)
        self.proxy = self.make_proxy(Dispatcher([self.udp, self.tcp]))
        # The caller, the callee and another callee.
        self.uac_got, self.uas_got, self.other_got = PacketCollector(), PacketCollector(), PacketCollector()
        self.uac, self.uas, self.other = yield gatherResults(
            [listening_leg(self, "udp", got) for got in (self.uac_got, self.uas_got, self.other_got)]
        )

    def make_proxy(self, dispatcher: Dispatcher) -> Any:
        return StatelessProxy(dispatcher, route_hook=self.hook)

    def send(self, request: Request) -> Any:
        return self.uac.deliver(request, self.udp.local)

    @inlineCallbacks
    def answered(self, request: Request) -> Any:
        """
        Send C{request}; the UAC's only answer, which nobody else saw.
        """
        yield self.send(request)
        yield self.uac_got.wait()
        (response,) = self.uac_got.messages()
        assert isinstance(response, Response)
        self.assertEqual(self.uas_got.packets + self.other_got.packets, [])
        return response


class HookProxyTests(HookTestCase):
    @inlineCallbacks
    def test_route_to_a_list(self) -> Any:
        """
        The first target refuses the connection: the second gets the
        request, with its URI.  The service saw the request's summary.
        """
        second = f"sip:bob@{self.uas.local.hostport}"
        self.web.respond = lambda summary: route(f"sip:x@127.0.0.1:{free_port('tcp')};transport=tcp", second)
        target = f"sip:carol@{self.other.local.hostport}"
        yield self.send(options(target, call_id="list@x"))
        yield self.uas_got.wait()
        (request,) = self.uas_got.messages()
        assert isinstance(request, Request)
        self.assertEqual(request.uri, second)
        self.assertEqual(self.other_got.packets, [])
        ((summary, _),) = self.web.calls
        self.assertEqual(
            summary,
            {
                "method": "OPTIONS",
                "uri": target,
                "from": "<sip:a@127.0.0.1>;tag=1",
                "to": f"<{target}>",
                "call_id": "list@x",
                "source": {"address": "127.0.0.1", "port": self.uac.local.port, "transport": "udp"},
                "user": None,
            },
        )

    @inlineCallbacks
    def test_reject(self) -> Any:
        self.web.respond = lambda summary: (200, b'{"action": "reject", "code": 486, "reason": "Busy Here"}')
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}"))
        self.assertEqual((response.code, response.reason), (486, "Busy Here"))

    @inlineCallbacks
    def test_continue(self) -> Any:
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()
        self.assertEqual(len(self.web.calls), 1)

    @inlineCallbacks
    def test_http_error_is_503(self) -> Any:
        self.web.respond = lambda summary: (500, b"oops")
        logged = hook_log(self)
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}"))
        self.assertEqual(response.code, 503)
        self.assertIsNone(response.get_header("retry-after"))
        self.assertEqual(self.hook.failures, 1)
        self.assertIn("HTTP status 500", logged[0])

    @inlineCallbacks
    def test_bad_answer_is_503_and_logged(self) -> Any:
        self.web.respond = lambda summary: route("tel:+15551234")
        logged = hook_log(self)
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}"))
        self.assertEqual(response.code, 503)
        self.assertIn("'tel:+15551234' is not a sip: or sips: URI; answering 503", logged[0])

    @inlineCallbacks
    def test_refused_connection_is_503(self) -> Any:
        hook = RouteHookClient(HookConfig(f"http://127.0.0.1:{free_port('tcp')}/"), reactor)
        self.addCleanup(hook.close)
        self.proxy.route_hook = hook
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}"))
        self.assertEqual(response.code, 503)

    @inlineCallbacks
    def test_in_dialog_never_asks(self) -> Any:
        self.web.respond = lambda summary: (200, b'{"action": "reject", "code": 486}')
        yield self.send(
            options(f"sip:bob@{self.uas.local.hostport}", to=f"<sip:bob@{self.uas.local.hostport}>;tag=9")
        )
        yield self.uas_got.wait()
        self.assertEqual(self.web.calls, [])

    @inlineCallbacks
    def test_one_persistent_connection(self) -> Any:
        """
        Calls one after the other share one connection.
        """
        for n in range(4):
            yield self.send(options(f"sip:bob@{self.uas.local.hostport}", call_id=f"keep-{n}@x"))
            yield self.uas_got.wait(n + 1)
        self.assertEqual(len(self.web.calls), 4)
        self.assertEqual(len({port for _, port in self.web.calls}), 1)
        self.assertEqual(self.web.connections, 1)

    @inlineCallbacks
    def test_retransmission_while_asking(self) -> Any:
        """
        A retransmission while the call for its request is pending asks
        nothing more and is not forwarded twice.
        """
        self.web.respond = None
        via = f"SIP/2.0/UDP {self.uac.local.hostport};branch=z9hG4bK-again"
        data = bytes(options(f"sip:bob@{self.uas.local.hostport}", Via=via))
        for _ in range(2):
            yield self.uac.socketpool.send(data, self.udp.local)
            yield self.web.wait(1)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((len(self.web.calls), self.hook.pending), (1, 1))
        self.web.release(200, b'{"action": "continue"}')
        yield self.uas_got.wait()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((len(self.uas_got.packets), self.hook.pending), (1, 0))


class SlowHookTests(HookTestCase):
    """
    The service does not answer in time.
    """

    timeout_seconds = 0.2

    @inlineCallbacks
    def test_timeout_is_503(self) -> Any:
        self.web.respond = None
        logged = hook_log(self)
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}"))
        self.assertEqual(response.code, 503)
        self.assertIn("no answer within 0.2 s; answering 503", logged[0])


class FallbackTests(HookTestCase):
    """
    With C{--route-failure fallback}, a failed call routes as without
    the hook.
    """

    timeout_seconds = 0.2
    on_failure = "fallback"

    @inlineCallbacks
    def test_timeout_falls_back(self) -> Any:
        self.web.respond = None
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()
        self.assertEqual(self.uac_got.packets, [])

    @inlineCallbacks
    def test_http_error_falls_back(self) -> Any:
        self.web.respond = lambda summary: (502, b"")
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}"))
        yield self.uas_got.wait()
        self.assertEqual(self.hook.failures, 1)


class BusyTests(HookTestCase):
    """
    At C{max_pending} calls waiting, a new request is answered 503 with
    Retry-After at once.
    """

    max_pending = 1

    @inlineCallbacks
    def test_busy(self) -> Any:
        self.web.respond = None
        yield self.send(options(f"sip:bob@{self.uas.local.hostport}", call_id="first@x"))
        yield self.web.wait(1)
        response = yield self.answered(options(f"sip:bob@{self.uas.local.hostport}", call_id="second@x"))
        self.assertEqual((response.code, response.get_header("retry-after")), (503, "5"))
        self.assertEqual((len(self.web.calls), self.hook.busy), (1, 1))
        self.web.release(200, b'{"action": "continue"}')
        yield self.uas_got.wait()


class StatefulHookTests(HookProxyTests):
    """
    The stateful proxy does all the stateless one does with the hook
    (a retransmission while the call is pending included), and forks to
    the targets of a parallel answer.
    """

    def make_proxy(self, dispatcher: Dispatcher) -> Any:
        proxy = StatefulProxy(dispatcher, route_hook=self.hook, timers=TransactionTimers(timer_c=10))
        self.addCleanup(proxy.stop)
        return proxy

    @inlineCallbacks
    def test_parallel_fork(self) -> Any:
        first, second = f"sip:bob@{self.uas.local.hostport}", f"sip:bob@{self.other.local.hostport}"
        self.web.respond = lambda summary: route(first, second, parallel=True)
        invite = options("sip:bob@example.test", cseq="1 INVITE")
        invite.method = "INVITE"
        yield self.send(invite)
        yield self.uas_got.wait()
        yield self.other_got.wait()
        (one,), (two,) = self.uas_got.messages(), self.other_got.messages()
        assert isinstance(one, Request) and isinstance(two, Request)
        self.assertEqual((one.method, one.uri, two.uri), ("INVITE", first, second))
        self.assertNotEqual(one.get_header("via"), two.get_header("via"))
        yield self.uac_got.wait()
        self.assertEqual([m.code for m in self.uac_got.messages()], [100])  # type: ignore[union-attr]

    @inlineCallbacks
    def test_cancel_while_asking(self) -> Any:
        """
        An INVITE gets its 100 Trying before the hook answers; a CANCEL
        meanwhile is answered 200 and the INVITE 487, and the hook's
        answer, when it comes, sends nothing anywhere.
        """
        self.web.respond = None
        via = f"SIP/2.0/UDP {self.uac.local.hostport};branch=z9hG4bK-cancelled"
        invite = options("sip:bob@example.test", Via=via, CSeq="1 INVITE")
        invite.method = "INVITE"
        yield self.uac.socketpool.send(bytes(invite), self.udp.local)
        yield self.uac_got.wait()
        self.assertEqual([m.code for m in self.uac_got.messages()], [100])  # type: ignore[union-attr]
        self.assertEqual(self.hook.pending, 1)
        cancel = options("sip:bob@example.test", Via=via, CSeq="1 CANCEL")
        cancel.method = "CANCEL"
        yield self.uac.socketpool.send(bytes(cancel), self.udp.local)
        yield self.uac_got.wait(3)
        answers = [(m.code, m.cseq[1]) for m in self.uac_got.messages()]  # type: ignore[union-attr]
        self.assertEqual(sorted(answers[1:]), [(200, "CANCEL"), (487, "INVITE")])
        # The caller's ACK of the 487 stops its retransmissions (Timer G).
        (terminated,) = [m for m in self.uac_got.messages() if m.cseq[1] == "INVITE" and m.code == 487]  # type: ignore[union-attr]
        ack = options("sip:bob@example.test", Via=via, CSeq="1 ACK", To=terminated.get_header("to") or "")
        ack.method = "ACK"
        yield self.uac.socketpool.send(bytes(ack), self.udp.local)
        self.web.release(*route(f"sip:bob@{self.uas.local.hostport}"))
        for _ in range(40):
            if not self.hook.pending:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual((self.hook.pending, self.uas_got.packets, len(self.uac_got.packets)), (0, [], 3))


def hook_log(test: Any) -> list[str]:
    """
    The log lines of L{sipleg.hookclient}, until C{test} ends.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "sipleg.hookclient":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines
