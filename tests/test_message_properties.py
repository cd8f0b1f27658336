"""
Property tests for L{sipleg.message} (hypothesis, bounded example counts):

 - serialising then parsing a generated message gives the same message;
 - editing keeps that true;
 - arbitrary bytes, and mutations of the torture messages, never make the
   parser (or the accessors) raise anything but L{SIPParseError}.
"""

from __future__ import annotations

import glob
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sipleg.errors import SIPParseError
from sipleg.message import Message, Request, Response, parse_message

BOUNDED = settings(max_examples=200, deadline=None)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
methods = st.one_of(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"]), tokens)
uris = st.builds(
    "{}:{}".format,
    st.sampled_from(["sip", "sips", "tel", "urn", "x-y.z+1"]),
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"
        ),
        min_size=1,
        max_size=30,
    ),
)
# Any text but line breaks and lone surrogates: free-text header values.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)
# One element of a list header: no separators or quoting characters.
elements = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='\r\n,"<> \t'),
    min_size=1,
    max_size=20,
)
list_values = st.lists(elements, min_size=1, max_size=3).map(", ".join)
extra_headers = st.lists(
    st.one_of(
        st.tuples(tokens.map("X-{}".format), texts),
        st.tuples(st.sampled_from(["Subject", "User-Agent", "Date", "s"]), texts),
        st.tuples(st.sampled_from(["Route", "Record-Route", "Allow", "k", "Via", "Require"]), list_values),
    ),
    max_size=8,
)
bodies = st.binary(max_size=300)


def required(method: str, number: int) -> list[tuple[str, str]]:
    return [
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
        ("From", "<sip:a@example.com>;tag=1"),
        ("To", "<sip:b@example.com>"),
        ("Call-ID", "c@example.com"),
        ("CSeq", f"{number} {method}"),
    ]


def with_length(message: Message) -> list[tuple[str, str]]:
    return message.headers + [("Content-Length", str(len(message.body)))]


def _torture() -> list[bytes]:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")
    result = []
    for name in sorted(glob.glob(os.path.join(here, "*", "*.dat"))):
        with open(name, "rb") as f:
            result.append(f.read())
    return result


TORTURE = _torture()


def _parses(data: bytes) -> bool:
    try:
        parse_message(data)
    except SIPParseError:
        return False
    return True


def without_length(message: Message) -> list[tuple[str, str]]:
    return [(name, value) for name, value in message.headers if name != "Content-Length"]


VALID_TORTURE = [data for data in TORTURE if _parses(data)]
INSERTS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b":",
    b",",
    b";",
    b'"',
    b"\\",
    b"<",
    b">",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"SIP/2.0",
    b"Content-Length: 9999\r\n",
    b"v: x\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(TORTURE)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(INSERTS))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 60))]
    return bytes(data)


def exercise(test: TestCase, data: bytes, datagram: bool = True) -> None:
    """
    Parse C{data}; if that works, use the message every way there is and
    check that only L{SIPParseError} ever comes out, and that what it
    serialises to parses to the same thing.
    """
    try:
        message = parse_message(data, datagram=datagram)
    except SIPParseError as e:
        test.assertIsInstance(e.status, int)
        return
    out = bytes(message)
    again = parse_message(out)
    test.assertEqual(again.body, message.body)
    test.assertEqual(bytes(again), out)
    test.assertEqual(message.tid, f"{message.call_id} {message.cseq[0]}")
    copy = message.copy()
    copy.add_header("Subject", "x")
    try:
        # Reading a malformed value may raise SIPParseError, nothing else.
        for name, _ in message.headers:
            message.get_headers(name)
            message.get_header(name)
        copy.remove_header("Route", 0)
        copy.set_header("Contact", "<sip:x@y>", -1)
    except (SIPParseError, IndexError):
        pass
    test.assertEqual(bytes(message), out)
    parse_message(bytes(copy))


class RoundTripTests(TestCase):
    """
    parse(bytes(m)) == m on generated messages.
    """

    @BOUNDED
    @given(methods, uris, extra_headers, bodies, st.integers(0, 2**31 - 1))
    def test_request(
        self, method: str, uri: str, extra: list[tuple[str, str]], body: bytes, number: int
    ) -> None:
        request = Request(method, uri, required(method, number) + extra, body)
        parsed = parse_message(bytes(request))
        assert isinstance(parsed, Request)
        self.assertEqual((parsed.method, parsed.uri), (method, uri))
        self.assertEqual(parsed.headers, with_length(request))
        self.assertEqual(parsed.body, body)
        self.assertEqual(parsed.cseq, (number, method))

    @BOUNDED
    @given(st.integers(100, 699), texts, extra_headers, bodies)
    def test_response(self, code: int, reason: str, extra: list[tuple[str, str]], body: bytes) -> None:
        response = Response(code, reason, required("BYE", 1) + extra, body)
        parsed = parse_message(bytes(response))
        assert isinstance(parsed, Response)
        self.assertEqual((parsed.code, parsed.reason), (code, reason))
        self.assertEqual(parsed.headers, with_length(response))
        self.assertEqual(parsed.body, body)

    @BOUNDED
    @given(
        st.sampled_from(VALID_TORTURE),
        st.lists(
            st.tuples(
                st.sampled_from(["add", "insert", "set", "set-one", "remove", "remove-one"]),
                st.sampled_from(["Route", "Record-Route", "X-Thing", "Subject", "Via", "Contact"]),
                list_values,
                st.integers(-3, 3),
            ),
            max_size=6,
        ),
        st.one_of(st.none(), bodies),
    )
    def test_edits(self, data: bytes, edits: list[tuple[str, str, str, int]], body: bytes | None) -> None:
        message = parse_message(data)
        for op, name, value, index in edits:
            if op == "add":
                message.add_header(name, value)
            elif op == "insert":
                message.insert_header(name, value)
            elif op == "set":
                message.set_header(name, value)
            elif op == "set-one":
                try:
                    message.set_header(name, value, index)
                except IndexError:
                    pass
            elif name != "Via":
                if op == "remove":
                    message.remove_header(name)
                else:
                    message.remove_header(name, index)
        if body is not None:
            message.body = body
        parsed = parse_message(bytes(message))
        self.assertEqual(without_length(parsed), without_length(message))
        self.assertEqual(parsed.body, message.body)
        self.assertEqual(parsed.get_header("content-length"), str(len(message.body)))


class FuzzTests(TestCase):
    """
    Nothing but SIPParseError, whatever the bytes.
    """

    @BOUNDED
    @given(st.binary(max_size=600), st.booleans())
    def test_random_bytes(self, data: bytes, datagram: bool) -> None:
        exercise(self, data, datagram)

    @BOUNDED
    @given(
        st.lists(
            st.one_of(
                st.sampled_from(
                    INSERTS
                    + [
                        b"INVITE sip:a@b SIP/2.0\r\n",
                        b"CSeq: 1 INVITE\r\n",
                        b"Via: SIP/2.0/UDP h\r\n",
                        b"To: <sip:a@b>\r\n",
                        b"From: a\r\n",
                        b"Call-ID: x\r\n",
                    ]
                ),
                st.binary(max_size=10),
            ),
            max_size=30,
        ).map(b"".join)
    )
    def test_sip_like_bytes(self, data: bytes) -> None:
        exercise(self, data)

    @BOUNDED
    @given(mutated(), st.booleans())
    def test_mutated_torture(self, data: bytes, datagram: bool) -> None:
        exercise(self, data, datagram)

    def test_torture_as_is(self) -> None:
        for data in TORTURE:
            exercise(self, data)
            exercise(self, data.replace(b"\r\n", b"\n"))
