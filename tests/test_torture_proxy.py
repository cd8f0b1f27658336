"""
The 62 torture messages of RFC 4475 and RFC 5118 through a real proxy on
loopback sockets, over UDP and over TCP: each gets the outcome its RFC
describes for a proxy (RFC 4475 §3, RFC 5118 §4): forwarded to the next
hop, answered with the named status to the address it came from, or, when
nothing can be answered, dropped with one log line naming the source.

The proxy sends everything to an outbound proxy (a sink socket), as an
edge proxy in front of a service does; the sender is on loopback, a
trusted network.  C{tests/test_torture.py} holds the parser's verdicts;
this is what a peer sees.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.leg import Leg
from sipleg.message import Request, parse_message
from sipleg.proxy import StatelessProxy
from sipleg.routing import StaticRoutes
from sipleg.transport.base import StreamLimits
from sipleg.transport.udp import UDPSocketPool
from sipleg.uri import parse_uri
from tests.support import Collector, RawClient

#: The sender's address (any of 127.0.0.0/8 is this machine's).
SENDER = "127.45.62.1"

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")

#: Forwarded to the next hop.
FORWARD = "forward"
#: Nothing to answer (a response that is not ours, or a request without a
#: Via or CSeq): dropped, logged.
DROP = "drop"

#: What a proxy does with each message (RFC 4475 §3, RFC 5118 §4): FORWARD,
#: DROP or the status answered.  The parser's reading of each is in
#: C{tests/test_torture.py}.
OUTCOMES: dict[str, str | int] = {
    # RFC 4475 §3.1.1: valid; forwarded.
    "rfc4475/wsinv.dat": 503,  # its Route names services.example.com, unknown here
    "rfc4475/intmeth.dat": FORWARD,
    "rfc4475/esc01.dat": FORWARD,
    "rfc4475/escnull.dat": FORWARD,
    "rfc4475/esc02.dat": FORWARD,
    "rfc4475/lwsdisp.dat": FORWARD,
    "rfc4475/longreq.dat": FORWARD,
    "rfc4475/dblreq.dat": FORWARD,  # the REGISTER; the trailing octets are not a message
    "rfc4475/semiuri.dat": FORWARD,
    "rfc4475/transports.dat": FORWARD,
    "rfc4475/mpart01.dat": FORWARD,  # by its Route (pointed at the sink here)
    "rfc4475/unreason.dat": DROP,  # a response, to nobody of ours
    "rfc4475/noreason.dat": DROP,  # a response, to nobody of ours
    # RFC 4475 §3.1.2: invalid; 400 (505 for the version) with the fault
    # named.
    "rfc4475/badinv01.dat": 400,
    "rfc4475/clerr.dat": 400,
    "rfc4475/ncl.dat": 400,
    "rfc4475/scalar02.dat": 400,
    "rfc4475/scalarlg.dat": DROP,  # a response
    "rfc4475/quotbal.dat": 400,
    "rfc4475/ltgtruri.dat": 400,
    "rfc4475/lwsruri.dat": 400,
    "rfc4475/lwsstart.dat": 400,
    "rfc4475/trws.dat": 400,
    "rfc4475/escruri.dat": FORWARD,  # escaped headers ignored, never turned into a Route
    "rfc4475/baddate.dat": FORWARD,  # Date is not a proxy's business
    "rfc4475/regbadct.dat": FORWARD,  # nor is a REGISTER's Contact when it is not the registrar
    "rfc4475/badaspec.dat": FORWARD,  # nor the To
    "rfc4475/baddn.dat": 400,
    "rfc4475/badvers.dat": 505,
    "rfc4475/mismatch01.dat": 400,
    "rfc4475/mismatch02.dat": 400,  # 501 preferred, 400 acceptable
    "rfc4475/bigcode.dat": DROP,  # a response
    # RFC 4475 §3.2, §3.3.
    "rfc4475/badbranch.dat": FORWARD,
    "rfc4475/insuf.dat": 400,  # never forwarded; answered with the Via and CSeq it has
    "rfc4475/unkscm.dat": 416,
    "rfc4475/novelsc.dat": 416,
    "rfc4475/unksm2.dat": FORWARD,
    "rfc4475/bext01.dat": 420,
    "rfc4475/invut.dat": FORWARD,  # Content-Type is the UAS's business
    "rfc4475/regaut01.dat": FORWARD,
    "rfc4475/multi01.dat": 400,
    "rfc4475/mcl01.dat": 400,
    "rfc4475/bcast.dat": DROP,  # a response
    "rfc4475/zeromf.dat": 483,
    "rfc4475/cparam01.dat": FORWARD,
    "rfc4475/cparam02.dat": FORWARD,
    "rfc4475/regescrt.dat": FORWARD,
    "rfc4475/sdp01.dat": FORWARD,
    "rfc4475/inv2543.dat": FORWARD,
    "rfc4475/test.dat": DROP,  # no Via, no CSeq: nobody to answer
    # RFC 5118 §4: every IPv6 form is accepted, but a bare one in the
    # Request-URI.
    "rfc5118/ipv6-good.dat": FORWARD,
    "rfc5118/ipv6-bad.dat": 400,
    "rfc5118/port-ambiguous.dat": FORWARD,
    "rfc5118/port-unambiguous.dat": FORWARD,
    "rfc5118/via-received-param-with-delim.dat": FORWARD,
    "rfc5118/via-received-param-no-delim.dat": FORWARD,
    "rfc5118/ipv6-in-sdp.dat": FORWARD,
    "rfc5118/mult-ip-in-header.dat": FORWARD,
    "rfc5118/mult-ip-in-sdp.dat": FORWARD,
    "rfc5118/ipv4-mapped-ipv6.dat": FORWARD,
    "rfc5118/ipv6-correct-abnf-2-colons.dat": FORWARD,
    "rfc5118/ipv6-bug-abnf-3-colons.dat": FORWARD,
}

#: Where a stream differs: Content-Length frames the message there.
STREAM_OUTCOMES: dict[str, str | int] = {
    **OUTCOMES,
    # The element waits for the rest of the body (RFC 4475 §3.1.2.2)
    # until the connection's time is up.
    "rfc4475/clerr.dat": DROP,
    # A stream message needs a Content-Length (RFC 3261 §18.3).
    "rfc4475/inv2543.dat": 400,
}

#: The messages whose connection the proxy closes: nothing after them can
#: be framed (the ones answered are answered first).
CLOSES = {
    "rfc4475/clerr.dat",
    "rfc4475/ncl.dat",
    "rfc4475/mcl01.dat",
    "rfc4475/inv2543.dat",
    "rfc4475/dblreq.dat",
}


def load(name: str, sink: int) -> bytes:
    """
    A torture message; mpart01's Route (to 127.0.0.1:5080) names the sink.
    """
    with open(os.path.join(HERE, name), "rb") as f:
        data = f.read()
    return data.replace(b"Route: <sip:127.0.0.1:5080>", b"Route: <sip:127.0.0.1:%d;lr>" % sink)


class TortureThroughTheProxyTests(TestCase):
    """
    Every torture message through a real proxy, as a peer sees it.
    """

    timeout = 120

    async def setUp(self) -> None:
        self.sink = Collector()
        sink = UDPSocketPool(Address("127.0.0.1", 0, "udp"), self.sink)
        await sink.listen()
        self.addCleanup(sink.stop)
        self.sink_port = sink.local.port
        self.udp = Leg(addr="127.0.0.1", port=0, proto="udp")
        # A message left incomplete on a stream is given up after a second.
        self.tcp = Leg(
            addr="127.0.0.1", port=0, proto="tcp", stream_limits=StreamLimits(first_message_timeout=1.0)
        )
        for leg in (self.udp, self.tcp):
            await leg.listen()
            self.addCleanup(leg.stop)
        routes = StaticRoutes(outbound_proxy=parse_uri(f"sip:127.0.0.1:{self.sink_port}"))
        self.proxy = StatelessProxy(Dispatcher([self.udp, self.tcp]), routes=routes)
        self.sender = Collector()
        # Answers to a parsed Via go to its received address and sent-by
        # port (RFC 3261 §18.2.2), 5060 in these messages: the sender
        # sits on that port, on a loopback address of its own.
        self.sender_pool = UDPSocketPool(Address(SENDER, 5060, "udp"), self.sender)
        await self.sender_pool.listen()
        self.addCleanup(self.sender_pool.stop)
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def ping(self, probe: int, transport: str) -> bytes:
        """
        An OPTIONS keep-alive to the proxy itself, told apart by C{probe}.
        """
        leg = self.udp if transport == "UDP" else self.tcp
        return (
            f"OPTIONS sip:127.0.0.1:{leg.local.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {SENDER};branch=z9hG4bKprobe{probe}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: probe-{probe}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    async def outcome_udp(self, data: bytes, probe: int) -> tuple[str | int, Any]:
        """
        Send C{data}, then a ping: once that is answered, C{data} has been
        handled.
        """
        sink_before, sender_before = len(self.sink.received), len(self.sender.received)
        await self.sender_pool.send(data, self.udp.local)
        await self.sender_pool.send(self.ping(probe, "UDP"), self.udp.local)
        marker = b"probe-%d" % probe
        while not any(marker in got for got, _, _ in self.sender.received[sender_before:]):
            await self.sender.wait(len(self.sender.received) + 1)
        # (What was forwarded may land a moment after the ping's answer.)
        await deferLater(reactor, 0.02, lambda: None)
        answers = [got for got, _, _ in self.sender.received[sender_before:] if marker not in got]
        return _outcome(answers, self.sink.received[sink_before:])

    async def outcome_tcp(self, data: bytes, probe: int) -> tuple[str | int, Any, bool]:
        """
        Send C{data} and then a ping on a connection of its own: once the
        ping is answered or the connection closed, C{data} has been
        handled.

        @return: the outcome, and whether the proxy closed the connection.
        """
        sink_before = len(self.sink.received)
        client = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.local.port, bindAddress=(SENDER, 0))
        await connectProtocol(endpoint, client)
        client.transport.write(data + self.ping(probe, "TCP"))
        marker = b"probe-%d" % probe
        # (A message whose header block swallows the ping is answered
        # without it: the wait then ends after 2 s.)
        timer = deferLater(reactor, 2, lambda: None)
        await defer.DeferredList(
            [client.wait_for(marker), client.lost, timer], fireOnOneCallback=True, consumeErrors=True
        )
        timer.cancel()
        await deferLater(reactor, 0.02, lambda: None)
        closed = client.lost.called
        client.transport.loseConnection()
        await client.lost
        answers = [b"SIP/2.0 " + m for m in client.data.split(b"SIP/2.0 ")[1:] if marker not in m]
        kind, what = _outcome(answers, self.sink.received[sink_before:])
        return kind, what, closed

    async def test_over_udp(self) -> None:
        """
        Each message over UDP: answers go where RFC 3261 §18.2.2 says,
        here the sender.
        """
        results = {}
        for probe, name in enumerate(sorted(OUTCOMES)):
            results[name] = await self.outcome_udp(load(name, self.sink_port), probe)
        self.check(results, OUTCOMES)

    async def test_over_tcp(self) -> None:
        """
        Each message over a TCP connection of its own: answered on that
        connection, which stays open unless the stream cannot be framed.
        """
        results = {}
        closed = set()
        for probe, name in enumerate(sorted(STREAM_OUTCOMES)):
            outcome, what, lost = await self.outcome_tcp(load(name, self.sink_port), probe)
            results[name] = outcome, what
            if lost:
                closed.add(name)
        self.check(results, STREAM_OUTCOMES)
        self.assertEqual(closed, CLOSES)

    def check(self, results: dict[str, tuple[str | int, Any]], expected: dict[str, str | int]) -> None:
        """
        The outcomes are C{expected}; forwarded messages are the
        requests themselves; answers name their fault; the one message
        nobody can be answered for (and the two responses that do not
        parse) are logged once, with their source.
        """
        self.assertEqual(len(results), 62)
        self.assertEqual({name: outcome for name, (outcome, _) in results.items()}, expected)
        for name, (outcome, what) in results.items():
            if outcome == FORWARD:
                # (dblreq's trailing INVITE may follow on a stream.)
                forwarded = parse_message(what[0][0])
                assert isinstance(forwarded, Request)
                original = parse_message(load(name, self.sink_port))
                self.assertEqual(forwarded.call_id, original.call_id, name)
                if name == "rfc4475/escruri.dat":
                    self.assertEqual(forwarded.get_headers("route"), [])
            elif outcome != DROP:
                self.assertEqual(len(what), 1, name)
                status = what[0].split(b"\r\n", 1)[0]
                self.assertNotEqual(status, b"SIP/2.0 400 Bad Request", name)
        drops = [
            event
            for event in self.logged
            if event.get("log_format", "").startswith("dropping unparsable packet")
        ]
        self.assertEqual(
            sorted((event["source"].addr, event["reason"]) for event in drops),
            [
                (SENDER, "CSeq number out of range"),  # scalarlg.dat
                (SENDER, "bad Request-Line"),  # test.dat
                (SENDER, "bad Status-Code b'4294967301'"),  # bigcode.dat
            ],
        )


def _outcome(answers: list[bytes], forwarded: list[Any]) -> tuple[str | int, Any]:
    """
    What became of one message: answered (the status), forwarded or
    dropped.
    """
    if answers and not forwarded:
        return int(answers[0][8:11]), answers
    if forwarded and not answers:
        return FORWARD, forwarded
    if not forwarded and not answers:
        return DROP, None
    return "answered and forwarded", (answers, forwarded)
