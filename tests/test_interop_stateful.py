"""
The transaction-stateful proxy (C{--stateful}, issue item 6) with real user
agents: two Net::SIP UASs register C{sip:bob@example.test} at a proxy
running in the test's reactor (C{--registrar --domain example.test},
transactions on), and a Net::SIP UAC (for a retransmission: a raw UDP
client) calls that address of record.  The proxy forks the INVITE to both
bindings; the tests check the caller's final answer and, at each UAS, the
INVITE, the CANCEL and the ACK of its non-2xx final, both of which the
proxy makes itself (hop by hop: its own Via alone).

Every case runs over UDP and over TCP (UAC, UASs and proxy leg on the
same transport), except the retransmission, which only UDP has.  The
failover case answers the proxy's DNS queries with an authoritative
C{twisted.names} server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Protocol, ServerFactory, connectionDone
from twisted.names import authority, client, dns, server
from twisted.python.failure import Failure

from sipleg.message import Request, Response, parse_message
from sipleg.stateful import TransactionTimers
from sipleg.transport.stream import StreamConnection
from tests.interop.peers import NetSipOutcome, NetSipServer, free_port, run_netsip_uac, start_netsip_uas
from tests.test_interop_proxy import ProxyInteropTestCase

AOR = "sip:bob@example.test"
#: Seconds a peer may take: the failover case waits 64*T1 for Timer B.
PEER_TIMEOUT = 10
#: Timer C of the case where nobody answers.  Over UDP Net::SIP repeats its
#: 180 like any packet (about 1, 2 and 4 s after the first) and every
#: provisional restarts Timer C (RFC 3261 §16.8): 1.5 s stays clear of
#: those repetitions.
TIMER_C = 1.5
#: T1 of the failover case: Timer B (64*T1) gives up on the silent server
#: after 3.2 s.
SHORT_T1 = 0.05
#: The zone of the failover case's DNS server.
ZONE = b"phones.test"
#: The host name the failover case registers: its SRV records name a
#: silent server first and the UAS second.
PHONE_HOST = "bob.phones.test"


class _Zone(authority.FileAuthority):
    """
    An authority for L{ZONE} answering from records held in memory.
    """

    def loadFile(self, records: dict[bytes, list[Any]]) -> None:
        soa = dns.Record_SOA(
            mname=b"ns." + ZONE, rname=b"root." + ZONE, serial=1, refresh=60, retry=60, expire=60, minimum=60
        )
        self.soa = (ZONE, soa)  # type: ignore[assignment]
        self.records = {name: list(recs) for name, recs in records.items()}  # type: ignore[assignment]


class _Datagrams(DatagramProtocol):
    """
    A UDP socket that records what it receives and answers nothing.

    @ivar received: the datagrams, in order.
    @ivar final: fires with the first final response received.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.final: defer.Deferred[Response] = defer.Deferred()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        message = parse_message(datagram)
        if isinstance(message, Response) and message.code >= 200 and not self.final.called:
            self.final.callback(message)


class _Silent(Protocol):
    """
    A TCP server connection that records what it receives and answers
    nothing.

    @ivar lost: fires once the connection is closed.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class _SilentServer(ServerFactory):
    """
    A TCP server whose connections answer nothing.

    @ivar connections: the connections it accepted.
    """

    def __init__(self) -> None:
        self.connections: list[_Silent] = []

    def buildProtocol(self, addr: Any) -> _Silent:
        connection = _Silent()
        connection.factory = self
        self.connections.append(connection)
        return connection

    def close(self) -> defer.Deferred[Any]:
        """
        Close every connection and wait until they are gone.
        """
        for connection in self.connections:
            assert connection.transport is not None
            connection.transport.loseConnection()
        return defer.gatherResults([c.lost for c in self.connections])


class StatefulInteropTests(ProxyInteropTestCase):
    """
    Two Net::SIP UASs registered for L{AOR}, a caller, a forking proxy.
    """

    timeout = 30

    def start_proxy(self, *args: Any, **options: Any) -> None:
        options.setdefault("registrar", True)
        options.setdefault("domains", ["example.test"])
        options.setdefault("transactions", TransactionTimers())
        super().start_proxy(*args, **options)

    @defer.inlineCallbacks
    def start_uas(self, proto: str, mode: str) -> Any:
        """
        A Net::SIP UAS that registered L{AOR} at the proxy over C{proto}.

        @param mode: C{"answer"}, C{"ring"} or C{"reject"} (486).
        @return: fires with the L{NetSipServer}.
        """
        port = free_port(proto)
        contact = None
        if proto == "tcp":
            # Bracketed: in a bare addr-spec ";transport=tcp" would be a
            # header parameter (RFC 3261 §20.10), not part of the URI.
            contact = f"<sip:bob@127.0.0.1:{port};transport=tcp>"
        uas = yield start_netsip_uas(
            proto,
            mode,
            port=port,
            register=AOR,
            proxy=self.proxy(proto),
            registrar="sip:example.test",
            contact=contact,
            timeout=PEER_TIMEOUT,
        )
        self.addCleanup(uas.stop)
        return uas

    @defer.inlineCallbacks
    def start_two(self, proto: str, first: str, second: str) -> Any:
        """
        Two UASs in modes C{first} and C{second}, started together.

        @return: fires with both L{NetSipServer}s once both registered.
        """
        started = yield defer.DeferredList(
            [self.start_uas(proto, first), self.start_uas(proto, second)], consumeErrors=True
        )
        for ok, value in started:
            if not ok:
                value.raiseException()
        return [uas for _, uas in started]

    @defer.inlineCallbacks
    def fork(self, proto: str, first: str, second: str, uac_mode: str, code: int) -> Any:
        """
        Two UASs in modes C{first} and C{second} (C{"reject"} answers
        486), the UAC calls L{AOR} in C{uac_mode} expecting C{code}; every
        peer must judge its part a success, and each UAS must get the
        INVITE once, from the proxy.

        @return: fires with the UAC's outcome and the two UASs' outcomes.
        """
        servers: list[NetSipServer] = yield self.start_two(proto, first, second)
        uac: NetSipOutcome = yield run_netsip_uac(
            AOR, self.proxy(proto), uac_mode, code=code, timeout=PEER_TIMEOUT
        )
        outcomes: list[NetSipOutcome] = []
        for uas in servers:
            outcomes.append((yield uas.result()))
        self.assertTrue(uac.ok, uac.describe())
        for outcome in outcomes:
            self.assertTrue(outcome.ok, outcome.describe())
            (invite,) = outcome.requests("INVITE")
            self.assertEqual(invite["proto"], proto)
            self.assertIn(self.legs[proto].branch, invite["headers"]["via"][0])
        return uac, outcomes

    def assert_finals(self, uac: NetSipOutcome, code: int) -> None:
        """
        Every final response the caller got to its INVITE is C{code}
        (retransmissions of it included).
        """
        finals = {r["code"] for r in uac.responses("INVITE") if r["code"] >= 200}
        self.assertEqual(finals, {code}, uac.describe())

    def assert_acked(self, outcome: NetSipOutcome) -> None:
        """
        The UAS got one ACK for its non-2xx final, from the proxy.
        """
        self.assertEqual(outcome.result["ack"], "1", outcome.describe())
        self.assert_hop_by_hop(outcome, "ACK")

    def assert_cancelled(self, outcome: NetSipOutcome) -> None:
        """
        The UAS got one CANCEL, and one ACK for its 487, both from the
        proxy.
        """
        self.assertEqual(outcome.result["cancel"], "1", outcome.describe())
        self.assert_hop_by_hop(outcome, "CANCEL")
        self.assert_acked(outcome)

    def assert_hop_by_hop(self, outcome: NetSipOutcome, method: str) -> None:
        """
        The UAS's C{method} requests were made by the proxy: their only Via
        is the INVITE's top one (the proxy's, with the INVITE's branch), so
        they match the INVITE's transaction (RFC 3261 §9.1, §17.1.1.3).
        """
        (invite,) = outcome.requests("INVITE")
        for request in outcome.requests(method):
            self.assertEqual(request["headers"]["via"], invite["headers"]["via"][:1], method)

    # -- one answers, the other rings ------------------------------------------

    @defer.inlineCallbacks
    def check_answer_and_ring(self, proto: str) -> Any:
        uac, (answering, ringing) = yield self.fork(proto, "answer", "ring", "call", 200)
        self.assertEqual((uac.result["invite"], uac.result["bye"]), ("200", "200"))
        self.assert_finals(uac, 200)
        self.assertEqual([answering.result[k] for k in ("ack", "bye", "cancel")], ["1", "1", "0"])
        self.assert_cancelled(ringing)

    def test_answer_and_ring_udp(self) -> Any:
        """
        One UAS answers, the other rings: the caller gets the 200 (and not
        the other's 487); the ringing one gets a CANCEL, answers 487 and
        gets the proxy's ACK for it.
        """
        return self.check_answer_and_ring("udp")

    def test_answer_and_ring_tcp(self) -> Any:
        """
        The same over TCP.
        """
        return self.check_answer_and_ring("tcp")

    # -- 486 and 200 ------------------------------------------------------------

    @defer.inlineCallbacks
    def check_busy_and_answer(self, proto: str) -> Any:
        uac, (busy, answering) = yield self.fork(proto, "reject", "answer", "call", 200)
        self.assert_finals(uac, 200)
        self.assertEqual([answering.result[k] for k in ("ack", "bye")], ["1", "1"])
        # When the 200 overtakes the 486 the proxy cancels the busy branch
        # too, and Net::SIP answers that CANCEL with a 487 after its 486:
        # the proxy ACKs both.
        self.assertIn(busy.result["ack"], ("1", "2"), busy.describe())
        self.assert_hop_by_hop(busy, "ACK")

    def test_busy_and_answer_udp(self) -> Any:
        """
        One UAS answers 486, the other 200: the caller gets the 200 only,
        the proxy ACKs the 486.
        """
        return self.check_busy_and_answer("udp")

    def test_busy_and_answer_tcp(self) -> Any:
        """
        The same over TCP.
        """
        return self.check_busy_and_answer("tcp")

    # -- both busy --------------------------------------------------------------

    @defer.inlineCallbacks
    def check_both_busy(self, proto: str) -> Any:
        uac, outcomes = yield self.fork(proto, "reject", "reject", "rejected", 486)
        self.assert_finals(uac, 486)
        for busy in outcomes:
            self.assert_acked(busy)

    def test_both_busy_udp(self) -> Any:
        """
        Both UASs answer 486: the caller gets 486; each UAS gets the
        proxy's ACK, and the caller's ACK goes no further than the proxy.
        """
        return self.check_both_busy("udp")

    def test_both_busy_tcp(self) -> Any:
        """
        The same over TCP.
        """
        return self.check_both_busy("tcp")

    # -- nobody answers -----------------------------------------------------------

    @defer.inlineCallbacks
    def check_no_answer(self, proto: str) -> Any:
        self.start_proxy(transactions=TransactionTimers(timer_c=TIMER_C))
        started = reactor.seconds()
        uac, outcomes = yield self.fork(proto, "ring", "ring", "rejected", 408)
        self.assertGreaterEqual(reactor.seconds() - started, TIMER_C)
        self.assert_finals(uac, 408)
        for ringing in outcomes:
            self.assert_cancelled(ringing)

    def test_no_answer_udp(self) -> Any:
        """
        Both UASs ring until Timer C: each gets a CANCEL (and the ACK of
        its 487), the caller gets 408.
        """
        return self.check_no_answer("udp")

    def test_no_answer_tcp(self) -> Any:
        """
        The same over TCP.
        """
        return self.check_no_answer("tcp")

    # -- the caller cancels -------------------------------------------------------

    @defer.inlineCallbacks
    def check_caller_cancels(self, proto: str) -> Any:
        uac, outcomes = yield self.fork(proto, "ring", "ring", "cancel", 487)
        self.assertEqual((uac.result["invite"], uac.result["cancel"]), ("487", "200"))
        self.assert_finals(uac, 487)
        for ringing in outcomes:
            self.assert_cancelled(ringing)

    def test_caller_cancels_udp(self) -> Any:
        """
        Both UASs ring and the caller cancels (on the first 180): the
        proxy answers the CANCEL 200, each UAS gets a CANCEL of the
        proxy's, and the caller gets 487.
        """
        return self.check_caller_cancels("udp")

    def test_caller_cancels_tcp(self) -> Any:
        """
        The same over TCP.
        """
        return self.check_caller_cancels("tcp")

    # -- failover to the next SRV target ----------------------------------------

    def serve_dns(self, records: dict[bytes, list[Any]]) -> None:
        """
        Answer the proxy's DNS queries from C{records}: an authoritative
        server on 127.0.0.1, which the resolver the proxy makes on its first
        lookup (C{twisted.names.client.createResolver}) asks.
        """
        factory = server.DNSServerFactory(authorities=[_Zone(records)])
        port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        names = client.Resolver(servers=[("127.0.0.1", port.getHost().port)])
        self.patch(client, "createResolver", lambda: names)

    def start_silent(self, proto: str) -> tuple[int, Callable[[], list[bytes]]]:
        """
        A server on 127.0.0.1 that takes datagrams (or connections) and
        never answers.

        @return: its port, and a function giving what it received: the
            datagrams, or over TCP the bytes of all connections as one item.
        """
        if proto == "udp":
            datagrams = _Datagrams()
            udp = reactor.listenUDP(0, datagrams, interface="127.0.0.1")  # type: ignore[attr-defined]
            self.addCleanup(udp.stopListening)
            return udp.getHost().port, lambda: datagrams.received
        silent = _SilentServer()
        tcp = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(silent.close)
        self.addCleanup(tcp.stopListening)
        return tcp.getHost().port, lambda: [b"".join(c.data for c in silent.connections)]  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def check_failover(self, proto: str) -> Any:
        self.start_proxy(transactions=TransactionTimers(t1=SHORT_T1))
        silent_port, silent_received = self.start_silent(proto)
        live_port = free_port(proto)
        self.serve_dns({
            ZONE: [],
            b"silent." + ZONE: [dns.Record_A("127.0.0.1")],
            b"live." + ZONE: [dns.Record_A("127.0.0.1")],
            f"_sip._{proto}.{PHONE_HOST}".encode(): [
                dns.Record_SRV(10, 0, silent_port, b"silent." + ZONE),
                dns.Record_SRV(20, 0, live_port, b"live." + ZONE),
            ],
        })  # fmt: skip
        contact = f"sip:bob@{PHONE_HOST};transport={proto}"
        uas: NetSipServer = yield start_netsip_uas(
            proto,
            port=live_port,
            register=AOR,
            proxy=self.proxy(proto),
            registrar="sip:example.test",
            contact=f"<{contact}>",
            timeout=PEER_TIMEOUT,
        )
        self.addCleanup(uas.stop)
        # The TCP registration's flow (sipleg.flows) is closed: the proxy
        # dials the Contact, through its SRV records.
        for conn in self.legs[proto].socketpool.connections():
            assert isinstance(conn, StreamConnection)
            conn.close()
        uac: NetSipOutcome = yield run_netsip_uac(AOR, self.proxy(proto), timeout=PEER_TIMEOUT)
        live: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(live.ok, live.describe())
        self.assertEqual([live.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"], live.describe())
        (invite,) = live.requests("INVITE")
        self.assertEqual(invite["uri"], contact)
        tried = [parse_message(data) for data in silent_received()]
        # Over UDP Timer A repeated the INVITE until Timer B; TCP sent it once.
        self.assertEqual(len(tried) > 1, proto == "udp", tried)
        for request in tried:
            assert isinstance(request, Request)
            self.assertEqual((request.method, request.uri), ("INVITE", contact))
            # The failover is a new client transaction: a branch of its own.
            self.assertNotEqual(request.get_header("via"), invite["headers"]["via"][0])

    def test_failover_udp(self) -> Any:
        """
        The registered contact's SRV records name a silent server first and
        the UAS second: the INVITE gets no answer from the first; after
        Timer B (64*T1) the proxy sends it to the second, with a new
        branch, and the call is set up.
        """
        return self.check_failover("udp")

    def test_failover_tcp(self) -> Any:
        """
        The same over TCP: the first server accepts the connection and never
        answers.
        """
        return self.check_failover("tcp")

    # -- a retransmitted INVITE --------------------------------------------------

    @defer.inlineCallbacks
    def test_retransmission_udp(self) -> Any:
        """
        A raw UDP client sends its INVITE twice, back to back: the proxy
        answers the copy with its last response (100 again) and forwards
        nothing, so each UAS gets the INVITE once; both answer 486, the
        caller gets 486 and its ACK ends the transaction at the proxy.
        Only over UDP: on a stream a request is never retransmitted
        (RFC 3261 §17.1.1.2).
        """
        servers: list[NetSipServer] = yield self.start_two("udp", "reject", "reject")
        caller = _Datagrams()
        udp = reactor.listenUDP(0, caller, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(udp.stopListening)
        here = f"127.0.0.1:{udp.getHost().port}"
        proxy = self.proxy("udp")
        head = (
            f"Via: SIP/2.0/UDP {here};branch=z9hG4bK-retransmitted;rport\r\n"
            f"From: <sip:alice@{here}>;tag=a1\r\n"
            f"Call-ID: retransmitted@{here}\r\n"
            "Max-Forwards: 70\r\n"
        )
        invite = (
            f"INVITE {AOR} SIP/2.0\r\n{head}To: <{AOR}>\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@{here}>\r\nContent-Length: 0\r\n\r\n"
        )
        for _ in range(2):
            udp.write(invite.encode(), (proxy.host, proxy.port))
        final: Response = yield caller.final.addTimeout(PEER_TIMEOUT, reactor)
        self.assertEqual(final.code, 486)
        to = final.get_header("to")
        ack = f"ACK {AOR} SIP/2.0\r\n{head}To: {to}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        udp.write(ack.encode(), (proxy.host, proxy.port))
        for uas in servers:
            busy: NetSipOutcome = yield uas.result()
            self.assertTrue(busy.ok, busy.describe())
            self.assertEqual(busy.result["invite"], "1", busy.describe())
            self.assert_acked(busy)
        responses = [parse_message(data) for data in caller.received]
        self.assertEqual([r.code for r in responses if isinstance(r, Response) and r.code < 200], [100, 100])
