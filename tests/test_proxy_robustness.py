"""
Nothing a peer sends makes the proxy fail: every torture message, and
random mutations of them, through a real StatelessProxy whose legs have
in-memory socket pools, is forwarded, answered or dropped, and no
unexpected error is logged.
"""

from __future__ import annotations

import os
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.dispatcher import Dispatcher
from sipleg.errors import SIPParseError
from sipleg.leg import Leg
from sipleg.message import Response, parse_message
from sipleg.proxy import StatelessProxy
from sipleg.transport.memory import MemorySocketPool

TORTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")
MESSAGES = [
    open(os.path.join(TORTURE, folder, name), "rb").read()
    for folder in sorted(os.listdir(TORTURE))
    if os.path.isdir(os.path.join(TORTURE, folder))
    for name in sorted(os.listdir(os.path.join(TORTURE, folder)))
]
PEER = Address("127.0.0.1", 5099)


def assert_sendable(sent: bytes, received: bytes) -> None:
    """
    Whatever leaves the proxy is a valid message, or the answer to a
    malformed request (L{sipleg.message.salvage_answer}): a status line
    and header lines copied from that request, a To tag and a zero
    Content-Length added.
    """
    try:
        parse_message(sent)
        return
    except SIPParseError:
        pass
    head, sep, body = sent.partition(b"\r\n\r\n")
    assert sep and not body, sent
    status, *lines = head.split(b"\r\n")
    assert _STATUS.fullmatch(status), status
    assert lines.pop() == b"Content-Length: 0", sent
    theirs = {line.partition(b":")[2].strip(b" \t\r") for line in received.split(b"\n")}
    for line in lines:
        name, _, value = line.partition(b": ")
        if name == b"To" and value not in theirs:
            value = value.rpartition(b";tag=")[0]
        assert name in _ECHOED and value in theirs, line


_STATUS = re.compile(rb"SIP/2\.0 [1-6][0-9][0-9] [^\r\n]*")
_ECHOED = {b"Via", b"From", b"To", b"Call-ID", b"CSeq"}


class RobustnessTests(TestCase):
    def setUp(self) -> None:
        self.udp = MemorySocketPool(Address("127.0.0.1", 5060, "udp"))
        self.tcp = MemorySocketPool(Address("127.0.0.1", 5060, "tcp"))
        legs = [Leg(socketpool=self.udp), Leg(socketpool=self.tcp)]
        # Names resolve to nothing here (tests/conftest.py keeps DNS off
        # the network): requests for them are answered 503.
        self.proxy = StatelessProxy(Dispatcher(legs))
        self.failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def feed(self, data: bytes) -> None:
        self.udp.sent.clear()
        self.udp.receiver(data, PEER, None)
        self.assertEqual([e["log_failure"].getTraceback() for e in self.failures], [], data[:300])
        for sent, _ in self.udp.sent:
            assert_sendable(sent, data)

    def test_torture_messages(self) -> None:
        self.assertGreater(len(MESSAGES), 60)
        for data in MESSAGES:
            self.feed(data)

    def test_torture_messages_over_a_stream(self) -> None:
        for data in MESSAGES:
            self.tcp.receiver(data, Address("127.0.0.1", 40000, "tcp"), object())
            self.assertEqual([e["log_failure"].getTraceback() for e in self.failures], [], data[:300])

    def test_bad_requests_are_answered(self) -> None:
        # As RFC 4475 badvers.dat, but from a sent-by that needs no DNS: an
        # unsupported SIP-Version is answered 505, to that Via.
        data = open(os.path.join(TORTURE, "rfc4475", "badvers.dat"), "rb").read()
        self.feed(data.replace(b"c.example.com", b"127.0.0.1:5099"))
        self.assertEqual(len(self.udp.sent), 1)
        answer, dst = self.udp.sent[0]
        self.assertTrue(answer.startswith(b"SIP/2.0 505 "), answer[:40])
        self.assertEqual(dst, PEER)

    def test_answer_goes_back_by_the_arrival_transport(self) -> None:
        """
        RFC 4475 unkscm.dat and bext01.dat name TCP and TLS in their Via;
        arriving over UDP they are still answered (416, 420 with
        Unsupported), over UDP to the address they came from.
        """
        for name, code in (("unkscm.dat", 416), ("bext01.dat", 420)):
            self.feed(open(os.path.join(TORTURE, "rfc4475", name), "rb").read())
            self.assertEqual(len(self.udp.sent), 1, name)
            answer, dst = self.udp.sent[0]
            response = parse_message(answer)
            assert isinstance(response, Response)
            self.assertEqual((response.code, dst), (code, PEER), name)
        self.assertEqual(
            response.get_headers("unsupported"), ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
        )

    def test_stream_answer_goes_back_on_its_connection(self) -> None:
        """
        Over a stream, an answer goes to the request's source (its
        connection) even when the Via names a host that needs DNS.
        """
        source = Address("127.0.0.1", 40000, "tcp")
        data = open(os.path.join(TORTURE, "rfc4475", "unkscm.dat"), "rb").read()
        self.tcp.receiver(data, source, object())
        self.assertEqual(len(self.tcp.sent), 1)
        answer, dst = self.tcp.sent[0]
        self.assertTrue(answer.startswith(b"SIP/2.0 416 "), answer[:40])
        self.assertEqual(dst, source)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.sampled_from(MESSAGES),
        st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=8)), max_size=6),
    )
    def test_mutated_messages(self, data: bytes, edits: list[tuple[int, bytes]]) -> None:
        mutated = bytearray(data)
        for position, replacement in edits:
            at = position % (len(mutated) + 1)
            mutated[at : at + len(replacement)] = replacement
        self.feed(bytes(mutated))
        # The same bytes as one framed stream message (parsed without the
        # datagram rules).
        self.tcp.deliver(bytes(mutated), Address("127.0.0.1", 40000, "tcp"), object())
        self.assertEqual([e["log_failure"].getTraceback() for e in self.failures], [])
