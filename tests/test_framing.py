"""
Tests for L{sipleg.framing}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sipleg.errors import FramingError, MessageTooLarge
from sipleg.framing import KEEPALIVE_PING, FramingEvent, StreamFramer


def make_message(body: bytes = b"", length_line: bytes | None = None, method: bytes = b"OPTIONS") -> bytes:
    """
    A small SIP request with a Content-Length header.

    @param body: the body.
    @param length_line: the Content-Length header line to use, without CRLF
        (default: a correct one).
    @param method: the request method.
    """
    if length_line is None:
        length_line = b"Content-Length: %d" % len(body)
    return (
        method + b" sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        b"Call-ID: abc@example.com\r\n"
        b"CSeq: 1 " + method + b"\r\n" + length_line + b"\r\n"
        b"\r\n" + body
    )


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[FramingEvent]:
    """
    Feed every chunk and collect the events.
    """
    events: list[FramingEvent] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    return events


class SplittingTests(TestCase):
    """
    Messages are cut exactly, however the stream is chopped.
    """

    def test_single(self) -> None:
        message = make_message(b"v=0\r\n")
        self.assertEqual(StreamFramer().feed(message), [message])

    def test_several_in_one_feed(self) -> None:
        first = make_message(b"hello")
        second = make_message(b"", method=b"BYE")
        third = make_message(b"x" * 100)
        self.assertEqual(StreamFramer().feed(first + second + third), [first, second, third])

    def test_split_everywhere(self) -> None:
        """
        Two messages split in two at every possible offset.
        """
        stream = make_message(b"body") + make_message(b"", method=b"BYE")
        expected = [make_message(b"body"), make_message(b"", method=b"BYE")]
        for cut in range(len(stream) + 1):
            framer = StreamFramer()
            self.assertEqual(feed_all(framer, [stream[:cut], stream[cut:]]), expected, cut)

    def test_byte_by_byte(self) -> None:
        stream = b"\r\n" + make_message(b"abc") + b"\r\n\r\n" + make_message(b"")
        framer = StreamFramer()
        events = feed_all(framer, [stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(events, [make_message(b"abc"), KEEPALIVE_PING, make_message(b"")])

    def test_incomplete_body_waits(self) -> None:
        message = make_message(b"0123456789")
        framer = StreamFramer()
        self.assertEqual(framer.feed(message[:-1]), [])
        self.assertEqual(framer.feed(b""), [])
        self.assertEqual(framer.feed(message[-1:]), [message])

    def test_body_holding_headers_is_not_scanned(self) -> None:
        """
        Only the header block is searched for Content-Length.
        """
        body = b"x\r\nContent-Length: 9999\r\n\r\n"
        message = make_message(body)
        self.assertEqual(StreamFramer().feed(message + message), [message, message])

    def test_header_search_does_not_rescan(self) -> None:
        """
        Feeding a header block one byte at a time searches each byte a
        bounded number of times (no quadratic rescans).
        """
        searched = []

        class CountingBuffer(bytearray):
            def find(self, sub: bytes, start: int = 0, end: int = 2**63 - 1) -> int:  # type: ignore[override]
                searched.append(min(len(self), end) - start)
                return super().find(sub, start, end)

        framer = StreamFramer()
        framer._buffer = CountingBuffer()
        message = make_message(b"", length_line=b"Content-Length: 0\r\nX-Pad: " + b"p" * 8000)
        events = feed_all(framer, [message[i : i + 1] for i in range(len(message))])
        self.assertEqual(events, [message])
        self.assertGreater(len(searched), 1000)
        self.assertLessEqual(sum(searched), 4 * len(message))

    @settings(max_examples=200, deadline=None)
    @given(
        bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=4),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
        keepalives=st.lists(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]), min_size=4, max_size=4),
    )
    def test_any_chunking(self, bodies: list[bytes], cuts: list[int], keepalives: list[bytes]) -> None:
        """
        However a stream of messages and keep-alives is chunked, the same
        events come out.
        """
        stream = b""
        expected: list[FramingEvent] = []
        for body, keepalive in zip(bodies, keepalives, strict=False):
            stream += keepalive + make_message(body)
            if keepalive == b"\r\n\r\n":
                expected.append(KEEPALIVE_PING)
            expected.append(make_message(body))
        points = sorted({min(cut, len(stream)) for cut in cuts})
        chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=False)]
        self.assertEqual(feed_all(StreamFramer(), chunks), expected)


class KeepaliveTests(TestCase):
    """
    RFC 3261 §7.5 leading CRLFs and RFC 5626 §3.5.1 ping/pong.
    """

    def test_leading_crlf_skipped(self) -> None:
        message = make_message(b"")
        self.assertEqual(StreamFramer().feed(b"\r\n" + message), [message])

    def test_crlf_between_messages_skipped(self) -> None:
        message = make_message(b"a")
        self.assertEqual(StreamFramer().feed(message + b"\r\n" + message), [message, message])

    def test_ping(self) -> None:
        self.assertEqual(StreamFramer().feed(b"\r\n\r\n"), [KEEPALIVE_PING])

    def test_two_pings(self) -> None:
        self.assertEqual(StreamFramer().feed(b"\r\n\r\n\r\n\r\n"), [KEEPALIVE_PING] * 2)

    def test_ping_between_messages(self) -> None:
        message = make_message(b"")
        self.assertEqual(
            StreamFramer().feed(message + b"\r\n\r\n" + message),
            [message, KEEPALIVE_PING, message],
        )

    def test_single_crlf_waits_for_next_bytes(self) -> None:
        """
        A lone CRLF may be the first half of a ping.
        """
        framer = StreamFramer()
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(b"\r\n"), [KEEPALIVE_PING])

    def test_single_crlf_then_message(self) -> None:
        framer = StreamFramer()
        message = make_message(b"")
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(message), [message])

    def test_ping_byte_by_byte(self) -> None:
        framer = StreamFramer()
        self.assertEqual(feed_all(framer, [b"\r", b"\n", b"\r", b"\n"]), [KEEPALIVE_PING])

    def test_odd_crlfs(self) -> None:
        """
        Three CRLFs: a ping, then a CRLF that is skipped before a message.
        """
        message = make_message(b"")
        self.assertEqual(StreamFramer().feed(b"\r\n\r\n\r\n" + message), [KEEPALIVE_PING, message])

    def test_ping_repr(self) -> None:
        self.assertEqual(repr(KEEPALIVE_PING), "KEEPALIVE_PING")


class ContentLengthTests(TestCase):
    """
    Finding Content-Length (RFC 3261 §20.14, §7.3.3 compact form).
    """

    def frame(self, line: bytes, body: bytes = b"12345") -> list[FramingEvent]:
        return StreamFramer().feed(make_message(body, line) + make_message(b""))

    def test_compact_form(self) -> None:
        self.assertEqual(self.frame(b"l: 5")[0], make_message(b"12345", b"l: 5"))

    def test_case_insensitive(self) -> None:
        self.assertEqual(len(self.frame(b"CONTENT-LENGTH: 5")), 2)
        self.assertEqual(len(self.frame(b"content-length:5")), 2)
        self.assertEqual(len(self.frame(b"L:5")), 2)

    def test_whitespace_before_colon(self) -> None:
        """
        HCOLON allows SP / HTAB before the colon (Net::SIP treated this as
        missing and closed the connection).
        """
        self.assertEqual(len(self.frame(b"Content-Length : 5")), 2)
        self.assertEqual(len(self.frame(b"Content-Length\t:\t5 ")), 2)

    def test_folded_value(self) -> None:
        self.assertEqual(len(self.frame(b"Content-Length:\r\n 5")), 2)

    def test_leading_zeros(self) -> None:
        self.assertEqual(len(self.frame(b"Content-Length: 0005")), 2)

    def test_similar_names_ignored(self) -> None:
        """
        C{Location}, C{X-Content-Length} and the like are not Content-Length.
        """
        message = make_message(b"", b"Location: 99\r\nX-Content-Length: 7\r\nl: 0")
        self.assertEqual(StreamFramer().feed(message), [message])

    def test_equal_duplicates_accepted(self) -> None:
        line = b"Content-Length: 5\r\nl: 5"
        self.assertEqual(len(self.frame(line)), 2)

    def test_missing(self) -> None:
        message = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n"
        error = self.assertRaises(FramingError, StreamFramer().feed, message)
        self.assertIn("missing Content-Length", error.reason)
        self.assertEqual(error.status, 400)

    def test_no_headers_at_all(self) -> None:
        self.assertRaises(FramingError, StreamFramer().feed, b"OPTIONS sip:a@b SIP/2.0\r\n\r\n")

    def test_malformed(self) -> None:
        for line in (b"Content-Length: abc", b"l: -1", b"l: 1 2", b"l:", b"l: 0x10", b"l: 5\r\n 6"):
            self.assertRaises(FramingError, StreamFramer().feed, make_message(b"", line))

    def test_conflicting(self) -> None:
        error = self.assertRaises(
            FramingError, StreamFramer().feed, make_message(b"", b"l: 0\r\nContent-Length: 3")
        )
        self.assertIn("conflicting", error.reason)

    def test_conflicting_far_apart(self) -> None:
        line = b"Content-Length: 0\r\nTo: <sip:x@y>\r\ncontent-length: 1"
        self.assertRaises(FramingError, StreamFramer().feed, make_message(b"", line))


class LimitTests(TestCase):
    """
    Header and body size limits.
    """

    def test_header_too_large_without_end(self) -> None:
        """
        A header block that has not ended within the limit is refused at
        once, without waiting for more data.
        """
        framer = StreamFramer(max_header=1024)
        data = b"OPTIONS sip:a@b SIP/2.0\r\nX: " + b"a" * 1100
        error = self.assertRaises(MessageTooLarge, framer.feed, data)
        self.assertEqual(error.status, 513)

    def test_header_too_large_with_end(self) -> None:
        framer = StreamFramer(max_header=100)
        message = make_message(b"", b"l: 0\r\nX: " + b"a" * 100)
        self.assertRaises(MessageTooLarge, framer.feed, message)

    def test_header_at_limit(self) -> None:
        message = make_message(b"ab")
        header_length = message.index(b"\r\n\r\n") + 4
        self.assertEqual(StreamFramer(max_header=header_length).feed(message), [message])
        self.assertRaises(MessageTooLarge, StreamFramer(max_header=header_length - 1).feed, message)

    def test_default_header_limit(self) -> None:
        """
        Net::SIP's verified outcomes: a 15 KiB header is fine, a header
        beyond 16 KiB is refused.
        """
        ok = make_message(b"", b"l: 0\r\nX: " + b"a" * 15 * 1024)
        self.assertEqual(StreamFramer().feed(ok), [ok])
        big = make_message(b"", b"l: 0\r\nX: " + b"a" * 16 * 1024)
        self.assertRaises(MessageTooLarge, StreamFramer().feed, big)

    def test_body_too_large(self) -> None:
        error = self.assertRaises(
            MessageTooLarge, StreamFramer().feed, make_message(b"", b"Content-Length: 70000")
        )
        self.assertEqual(error.status, 513)

    def test_body_at_limit(self) -> None:
        message = make_message(b"z" * 10)
        self.assertEqual(StreamFramer(max_body=10).feed(message), [message])
        self.assertRaises(MessageTooLarge, StreamFramer(max_body=9).feed, message)

    def test_huge_number(self) -> None:
        self.assertRaises(MessageTooLarge, StreamFramer().feed, make_message(b"", b"l: " + b"9" * 5000))

    def test_bad_limits(self) -> None:
        self.assertRaises(ValueError, StreamFramer, max_header=0)
        self.assertRaises(ValueError, StreamFramer, max_body=-1)


class ErrorStateTests(TestCase):
    """
    A broken stream stays broken.
    """

    def test_errors_persist(self) -> None:
        framer = StreamFramer()
        bad = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"
        first = self.assertRaises(FramingError, framer.feed, bad)
        self.assertIs(framer.error, first)
        self.assertIs(self.assertRaises(FramingError, framer.feed, b""), first)
        self.assertRaises(FramingError, framer.feed, make_message(b""))

    def test_error_after_good_messages(self) -> None:
        """
        Messages framed before the error in the same feed are returned; the
        error is recorded and raised by the next feed.
        """
        framer = StreamFramer()
        good = make_message(b"ok")
        self.assertIsNone(framer.error)
        events = framer.feed(good + b"INVITE sip:x SIP/2.0\r\n\r\n")
        self.assertEqual(events, [good])
        self.assertIsInstance(framer.error, FramingError)
        self.assertRaises(FramingError, framer.feed, good)

    def test_too_large_persists(self) -> None:
        framer = StreamFramer(max_body=1)
        self.assertRaises(MessageTooLarge, framer.feed, make_message(b"12"))
        self.assertRaises(MessageTooLarge, framer.feed, make_message(b""))


class RefusedHeadTests(TestCase):
    def test_header_of_an_oversized_body_is_kept(self) -> None:
        framer = StreamFramer(max_body=10)
        head = b"INVITE sip:x SIP/2.0\r\nContent-Length: 11\r\n\r\n"
        self.assertRaises(MessageTooLarge, framer.feed, head + b"x")
        self.assertEqual(framer.refused_head, head)

    def test_head_kept_for_a_refused_content_length(self) -> None:
        # So the request can still be answered 400 before the close.
        for length in (b"Content-Length: -1\r\n", b"l: 1\r\nl: 2\r\n", b""):
            framer = StreamFramer()
            head = b"INVITE sip:x SIP/2.0\r\n" + length + b"\r\n"
            self.assertRaises(FramingError, framer.feed, head + b"x")
            self.assertEqual(framer.refused_head, head)

    def test_no_head_for_an_oversized_header(self) -> None:
        framer = StreamFramer(max_header=64)
        self.assertRaises(MessageTooLarge, framer.feed, b"INVITE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 20)
        self.assertIsNone(framer.refused_head)
