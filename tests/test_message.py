"""
Tests for L{sipleg.message}: RFC 3261 §7 (message format), §20 (header
fields), §25 (grammar), §18.3 (framing of datagrams) and §8.2.6 (stateless
responses).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sipleg.errors import SIPParseError
from sipleg.message import REASONS, Request, Response, make_response, parse_message, salvage_answer

START = b"INVITE sip:bob@example.com SIP/2.0"
BASE = [
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9",
    b"Max-Forwards: 70",
    b"From: Alice <sip:alice@example.com>;tag=9fxced76sl",
    b"To: Bob <sip:bob@example.com>",
    b"Call-ID: 3848276298220188511@example.com",
    b"CSeq: 1 INVITE",
]


def raw(
    lines: list[bytes] | None = None,
    body: bytes = b"",
    start: bytes = START,
    length: bool = True,
) -> bytes:
    """
    A message: C{start}, the header C{lines} (L{BASE} by default), a
    correct Content-Length unless C{length} is false, and C{body}.
    """
    lines = list(BASE if lines is None else lines)
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join([start, *lines, b"", body])


def without(prefix: bytes) -> list[bytes]:
    return [line for line in BASE if not line.startswith(prefix)]


class ParseErrorMixin:
    def assertParseError(self, data: bytes, status: int = 400, **kw: bool) -> SIPParseError:
        error = self.assertRaises(SIPParseError, parse_message, data, **kw)  # type: ignore[attr-defined]
        self.assertEqual(error.status, status)  # type: ignore[attr-defined]
        self.assertTrue(error.reason)  # type: ignore[attr-defined]
        return error


class RequestLineTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7.1: C{Request-Line = Method SP Request-URI SP SIP-Version CRLF}.
    """

    def test_request(self) -> None:
        message = parse_message(raw())
        self.assertIsInstance(message, Request)
        assert isinstance(message, Request)
        self.assertEqual(message.method, "INVITE")
        self.assertEqual(message.uri, "sip:bob@example.com")
        self.assertEqual(message.body, b"")

    def test_unknown_method(self) -> None:
        lines = without(b"CSeq") + [b"CSeq: 1 FOO.bar-baz"]
        message = parse_message(raw(lines, start=b"FOO.bar-baz sip:x@example.com SIP/2.0"))
        assert isinstance(message, Request)
        self.assertEqual(message.method, "FOO.bar-baz")

    def test_method_case_sensitive(self) -> None:
        # RFC 3261 §7.1: "The method names are case-sensitive": the CSeq
        # method then does not match.
        self.assertParseError(raw(start=b"invite sip:bob@example.com SIP/2.0"))

    def test_version_case_insensitive(self) -> None:
        message = parse_message(raw(start=b"INVITE sip:bob@example.com sip/2.0"))
        self.assertIn(b"INVITE sip:bob@example.com sip/2.0\r\n", bytes(message))
        message.add_header("Subject", "x")
        self.assertTrue(bytes(message).startswith(b"INVITE sip:bob@example.com SIP/2.0\r\n"))

    def test_other_version_is_505(self) -> None:
        # RFC 3261 §8.2.2, RFC 4475 §3.1.2.16
        error = self.assertParseError(raw(start=b"INVITE sip:bob@example.com SIP/3.0"), 505)
        self.assertIn("SIP/3.0", error.reason)

    def test_not_sip_is_400(self) -> None:
        self.assertParseError(raw(start=b"GET sip:bob@example.com HTTP/1.1"))

    def test_missing_version(self) -> None:
        self.assertParseError(raw(start=b"INVITE sip:bob@example.com"))

    def test_extra_spaces(self) -> None:
        # RFC 4475 §3.1.2.8 - §3.1.2.10: exactly one SP, none at the end.
        for start in (
            b"INVITE  sip:bob@example.com SIP/2.0",
            b"INVITE sip:bob@example.com  SIP/2.0",
            b"INVITE sip:bob@example.com SIP/2.0 ",
            b"INVITE sip:bob@example.com; lr SIP/2.0",
            b" INVITE sip:bob@example.com SIP/2.0",
        ):
            self.assertParseError(raw(start=start))

    def test_uri_needs_scheme(self) -> None:
        # RFC 4475 §3.1.2.7: <sip:...> is not a Request-URI.
        for uri in (b"<sip:bob@example.com>", b"bob@example.com", b":bob", b"1sip:bob", b"si\x00p:x"):
            self.assertParseError(raw(start=b"INVITE " + uri + b" SIP/2.0"))

    def test_uri_control_characters(self) -> None:
        self.assertParseError(raw(start=b"INVITE sip:bob\tx@example.com SIP/2.0"))
        self.assertParseError(raw(start=b"INVITE sip:bob\x7f@example.com SIP/2.0"))

    def test_uri_any_scheme(self) -> None:
        # The URI is sipleg.uri's business (and a proxy's, 416): kept as is.
        lines = without(b"CSeq") + [b"CSeq: 1 OPTIONS"]
        message = parse_message(raw(lines, start=b"OPTIONS urn:x-foo:bar%20baz SIP/2.0"))
        assert isinstance(message, Request)
        self.assertEqual(message.uri, "urn:x-foo:bar%20baz")

    def test_bad_method(self) -> None:
        self.assertParseError(raw(start=b"INV(ITE sip:bob@example.com SIP/2.0"))

    def test_empty(self) -> None:
        self.assertParseError(b"")
        self.assertParseError(b"\r\n\r\n")
        self.assertParseError(b"\x00\x00\x00\x00")

    def test_leading_crlf_skipped(self) -> None:
        data = raw()
        message = parse_message(b"\r\n\r\n" + data)
        self.assertEqual(bytes(message), data)


class StatusLineTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7.2: C{Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF}.
    """

    def response(self, start: bytes) -> bytes:
        return raw(without(b"Max-Forwards"), start=start)

    def test_response(self) -> None:
        message = parse_message(self.response(b"SIP/2.0 180 Ringing"))
        assert isinstance(message, Response)
        self.assertEqual((message.code, message.reason), (180, "Ringing"))
        self.assertEqual(message.method, "INVITE")

    def test_reason_with_spaces_and_utf8(self) -> None:
        reason = "Не найдено at all"
        message = parse_message(self.response(b"SIP/2.0 404 " + reason.encode()))
        assert isinstance(message, Response)
        self.assertEqual(message.reason, reason)

    def test_empty_reason(self) -> None:
        # RFC 4475 §3.1.1.13
        for start in (b"SIP/2.0 100 ", b"SIP/2.0 100"):
            message = parse_message(self.response(start))
            assert isinstance(message, Response)
            self.assertEqual(message.reason, "")

    def test_bad_codes(self) -> None:
        # RFC 4475 §3.1.2.19 and Status-Code = 3DIGIT
        for code in (b"4294967301", b"20", b"2000", b"099", b"abc", b"", b"+20"):
            self.assertParseError(self.response(b"SIP/2.0 " + code + b" OK"))

    def test_version(self) -> None:
        self.assertParseError(self.response(b"SIP/2.1 200 OK"), 505)
        self.assertParseError(self.response(b"SIP/x 200 OK"))

    def test_any_class(self) -> None:
        for code in (100, 299, 699):
            message = parse_message(self.response(b"SIP/2.0 %d X" % code))
            assert isinstance(message, Response)
            self.assertEqual(message.code, code)


class HeaderNameTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7.3, §7.3.3: names are case-insensitive, compact forms are
    equivalent to the full names.
    """

    def test_case_insensitive(self) -> None:
        message = parse_message(raw(BASE + [b"rEcOrD-rOuTe: <sip:p.example.com;lr>"]))
        for name in ("record-route", "Record-Route", "RECORD-ROUTE"):
            self.assertEqual(message.get_header(name), "<sip:p.example.com;lr>")
            self.assertTrue(message.has_header(name))

    def test_compact_forms(self) -> None:
        forms = {
            "i": "Call-ID",
            "m": "Contact",
            "e": "Content-Encoding",
            "l": "Content-Length",
            "c": "Content-Type",
            "f": "From",
            "s": "Subject",
            "k": "Supported",
            "t": "To",
            "v": "Via",
            "o": "Event",
            "r": "Refer-To",
            "b": "Referred-By",
            "u": "Allow-Events",
            "x": "Session-Expires",
            "a": "Accept-Contact",
            "j": "Reject-Contact",
            "d": "Request-Disposition",
            "y": "Identity",
            "n": "Identity-Info",
        }
        once = ("Call-ID", "Content-Length", "From", "To")
        for letter, full in forms.items():
            if full in once:
                lines = [line for line in BASE if not line.lower().startswith(full.lower().encode())]
                value = {"Call-ID": "abc@x", "From": "<sip:a@x>;tag=1", "To": "<sip:b@x>"}.get(full, "0")
                data = raw(lines + [f"{letter}: {value}".encode()], length=full != "Content-Length")
            else:
                value = "SIP/2.0/TCP h.example.com;branch=z9hG4bKx" if full == "Via" else "val"
                data = raw(BASE + [f"{letter.upper()}: {value}".encode()])
            message = parse_message(data)
            self.assertEqual(message.get_headers(full)[-1], value, letter)
            self.assertEqual(message.get_headers(letter)[-1], value, letter)
            self.assertEqual(message.get_headers(full.upper())[-1], value, letter)

    def test_unknown_header_preserved(self) -> None:
        data = raw(BASE + [b'X-Weird_Name.1: some, value; with "stuff'])
        message = parse_message(data)
        # Unknown headers are never split.
        self.assertEqual(message.get_headers("x-weird_name.1"), ['some, value; with "stuff'])
        self.assertEqual(bytes(message), data)

    def test_whitespace_before_colon(self) -> None:
        # HCOLON = *( SP / HTAB ) ":" SWS
        message = parse_message(raw(BASE + [b"Subject \t :   hello  "]))
        self.assertEqual(message.get_header("subject"), "hello")

    def test_empty_value(self) -> None:
        message = parse_message(raw(BASE + [b"Subject:", b"Supported:"]))
        self.assertEqual(message.get_header("subject"), "")
        self.assertEqual(message.get_headers("supported"), [])
        self.assertIsNone(message.get_header("supported"))
        self.assertTrue(message.has_header("supported"))

    def test_bad_names(self) -> None:
        for line in (b"Bad Name: x", b": x", b"No colon here", b"Na(me: x", b"\x00: x"):
            self.assertParseError(raw(BASE + [line]))

    def test_absent(self) -> None:
        message = parse_message(raw())
        self.assertIsNone(message.get_header("Route"))
        self.assertEqual(message.get_headers("Route"), [])
        self.assertFalse(message.has_header("Route"))

    def test_api_rejects_bad_names(self) -> None:
        message = parse_message(raw())
        self.assertRaises(ValueError, message.get_header, "bad name")
        self.assertRaises(ValueError, message.add_header, "", "x")
        self.assertRaises(ValueError, message.has_header, "Näme")


class FoldingTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7.3.1: a line starting with whitespace continues the value;
    the fold is one SP.
    """

    def test_unfolded(self) -> None:
        data = raw(BASE + [b"Subject: I know you're there,", b"    pick up the phone", b"\tand talk"])
        message = parse_message(data)
        self.assertEqual(message.get_header("subject"), "I know you're there, pick up the phone and talk")
        self.assertEqual(bytes(message), data)

    def test_fold_right_after_colon(self) -> None:
        message = parse_message(raw(BASE + [b"Route:", b" <sip:a.example.com;lr>,", b" <sip:b;lr>"]))
        self.assertEqual(message.get_headers("route"), ["<sip:a.example.com;lr>", "<sip:b;lr>"])

    def test_folded_numbers(self) -> None:
        lines = [line for line in BASE if not line.startswith((b"CSeq", b"Max"))]
        lines += [b"CSeq: 0009", b"  INVITE", b"Max-Forwards:", b" 69"]
        message = parse_message(raw(lines))
        self.assertEqual(message.cseq, (9, "INVITE"))
        self.assertEqual(message.get_header("Max-Forwards"), "69")

    def test_folded_lines_kept_when_editing(self) -> None:
        data = raw(BASE + [b"Subject: one", b" two"])
        message = parse_message(data)
        message.add_header("Priority", "urgent")
        self.assertIn(b"\r\nSubject: one\r\n two\r\n", bytes(message))

    def test_continuation_of_start_line(self) -> None:
        self.assertParseError(raw([b" folded"] + BASE))


class ListHeaderTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7.3.1: a comma-separated list may be on one line or many;
    commas in quoted strings and in C{<...>} do not separate.
    """

    def test_via_split_and_ordered(self) -> None:
        lines = [
            b"Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1 , SIP/2.0/TCP b.example.com;branch=z9hG4bK2",
            b"v: SIP/2.0/UDP c.example.com;branch=z9hG4bK3",
        ] + without(b"Via")
        message = parse_message(raw(lines))
        self.assertEqual(
            message.get_headers("Via"),
            [
                "SIP/2.0/UDP a.example.com;branch=z9hG4bK1",
                "SIP/2.0/TCP b.example.com;branch=z9hG4bK2",
                "SIP/2.0/UDP c.example.com;branch=z9hG4bK3",
            ],
        )
        self.assertEqual(message.get_header("via"), "SIP/2.0/UDP a.example.com;branch=z9hG4bK1")

    def test_quotes_and_brackets(self) -> None:
        contact = (
            b'Contact: "Smith, John \\"JS\\", Jr." <sip:js@example.com;a=b,c>;q=0.5, '
            b'<sip:x@example.com>;expires="Thu, 01 Dec 1994", sip:y@example.com'
        )
        message = parse_message(raw(BASE + [contact]))
        self.assertEqual(
            message.get_headers("m"),
            [
                '"Smith, John \\"JS\\", Jr." <sip:js@example.com;a=b,c>;q=0.5',
                '<sip:x@example.com>;expires="Thu, 01 Dec 1994"',
                "sip:y@example.com",
            ],
        )

    def test_escaped_backslash_before_quote(self) -> None:
        message = parse_message(raw(BASE + [b'Contact: "a\\\\" <sip:a@x>, <sip:b@x>']))
        self.assertEqual(message.get_headers("contact"), ['"a\\\\" <sip:a@x>', "<sip:b@x>"])

    def test_not_split(self) -> None:
        lines = BASE + [
            b'WWW-Authenticate: Digest realm="a", nonce="b", qop="auth"',
            b"Subject: a, b",
            b"Date: Sat, 13 Nov 2010 23:29:00 GMT",
        ]
        message = parse_message(raw(lines, start=b"SIP/2.0 401 Unauthorized"))
        self.assertEqual(len(message.get_headers("www-authenticate")), 1)
        self.assertEqual(message.get_headers("subject"), ["a, b"])
        self.assertEqual(message.get_headers("date"), ["Sat, 13 Nov 2010 23:29:00 GMT"])

    def test_other_list_headers(self) -> None:
        lines = BASE + [
            b"Allow: INVITE, ACK,CANCEL",
            b"Supported: timer, 100rel",
            b"Require: foo",
            b"Proxy-Require: bar, baz",
            b"Record-Route: <sip:p1;lr>, <sip:p2;lr>",
        ]
        message = parse_message(raw(lines))
        self.assertEqual(message.get_headers("allow"), ["INVITE", "ACK", "CANCEL"])
        self.assertEqual(message.get_headers("k"), ["timer", "100rel"])
        self.assertEqual(message.get_headers("proxy-require"), ["bar", "baz"])
        self.assertEqual(message.get_headers("record-route"), ["<sip:p1;lr>", "<sip:p2;lr>"])

    def test_empty_element(self) -> None:
        # RFC 4475 §3.1.2.1.  Via is checked when parsing; other list
        # headers when their value is first asked for.
        self.assertParseError(raw([b"Via: SIP/2.0/UDP h;branch=z9hG4bK1, ,"] + without(b"Via")))
        message = parse_message(raw(BASE + [b"Route: <sip:a;lr>,,<sip:b;lr>"]))
        self.assertRaises(SIPParseError, message.get_headers, "route")
        message = parse_message(raw(BASE + [b"Route: <sip:a;lr>,"]))
        self.assertRaises(SIPParseError, message.get_header, "route")

    def test_unterminated(self) -> None:
        message = parse_message(raw(BASE + [b'Contact: "Joe <sip:joe@x>']))
        self.assertRaises(SIPParseError, message.get_headers, "contact")
        message = parse_message(raw(BASE + [b"Contact: <sip:joe@x"]))
        self.assertRaises(SIPParseError, message.get_headers, "contact")

    def test_address_headers_checked(self) -> None:
        # RFC 4475 §3.1.2.6: an unterminated quoted string in To is a 400.
        for line in (b'To: "Bob <sip:bob@example.com>', b"To: Bob <sip:bob@example.com"):
            self.assertParseError(raw(without(b"To") + [line]))
        message = parse_message(raw(without(b"From") + [b'From: "A, \\"B\\"" <sip:a@x>;tag=1']))
        self.assertEqual(message.get_header("from"), '"A, \\"B\\"" <sip:a@x>;tag=1')


class OnceOnlyTests(TestCase, ParseErrorMixin):
    """
    Call-ID, CSeq, From, To, Content-Length, Content-Type and Max-Forwards
    occur once; a second, different value is a 400 (RFC 4475 §3.3.8, §3.3.9).
    """

    def test_conflicts(self) -> None:
        for line in (
            b"Call-ID: other@example.com",
            b"CSeq: 2 INVITE",
            b"From: <sip:eve@example.com>;tag=1",
            b"t: <sip:eve@example.com>",
            b"Content-Type: text/plain",
            b"Max-Forwards: 69",
        ):
            data = raw(BASE + [b"Content-Type: application/sdp", line])
            error = self.assertParseError(data)
            self.assertIn("conflicting", error.reason)
        self.assertParseError(raw(BASE + [b"l: 3"], body=b"abcd"))

    def test_identical_duplicates(self) -> None:
        data = raw(BASE + [b"Max-Forwards: 70", b"i: 3848276298220188511@example.com"])
        message = parse_message(data)
        self.assertEqual(message.call_id, "3848276298220188511@example.com")
        self.assertEqual(bytes(message), data)


class CSeqTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §20.16: C{CSeq = "CSeq" HCOLON 1*DIGIT LWS Method}, the number
    below 2**31, and for requests the method of the Request-Line.
    """

    def cseq(self, value: bytes, start: bytes = START) -> bytes:
        return raw(without(b"CSeq") + [b"CSeq: " + value], start=start)

    def test_property(self) -> None:
        message = parse_message(self.cseq(b"  4711   INVITE "))
        self.assertEqual(message.cseq, (4711, "INVITE"))
        self.assertEqual(message.tid, "3848276298220188511@example.com 4711")

    def test_limits(self) -> None:
        self.assertEqual(parse_message(self.cseq(b"2147483647 INVITE")).cseq[0], 2**31 - 1)
        self.assertEqual(parse_message(self.cseq(b"0 INVITE")).cseq[0], 0)
        self.assertParseError(self.cseq(b"2147483648 INVITE"))
        self.assertParseError(self.cseq(b"36893488147419103232 INVITE"))
        self.assertEqual(parse_message(self.cseq(b"00000000000000001 INVITE")).cseq[0], 1)

    def test_malformed(self) -> None:
        for value in (b"INVITE", b"1", b"-1 INVITE", b"1 INVITE extra", b"x1 INVITE", b"1 INV(ITE", b""):
            self.assertParseError(self.cseq(value))

    def test_method_mismatch(self) -> None:
        # RFC 4475 §3.1.2.17
        self.assertParseError(self.cseq(b"1 OPTIONS"))
        self.assertParseError(self.cseq(b"1 invite"))

    def test_response(self) -> None:
        response = parse_message(self.cseq(b"7 BYE", start=b"SIP/2.0 200 OK"))
        assert isinstance(response, Response)
        self.assertEqual(response.method, "BYE")
        self.assertEqual(response.tid, "3848276298220188511@example.com 7")
        self.assertParseError(self.cseq(b"7 B<E", start=b"SIP/2.0 200 OK"))

    def test_ack_and_cancel_share_tid(self) -> None:
        tids = set()
        for method in (b"INVITE", b"ACK", b"CANCEL"):
            data = self.cseq(b"1 " + method, start=method + b" sip:bob@example.com SIP/2.0")
            tids.add(parse_message(data).tid)
        self.assertEqual(len(tids), 1)


class RequiredHeaderTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §8.1.1: To, From, CSeq, Call-ID, Via are mandatory (RFC 4475
    §3.3.1); Max-Forwards may be missing (RFC 2543 peers, §3.4.1).
    """

    def test_missing(self) -> None:
        for prefix in (b"To", b"From", b"CSeq", b"Call-ID", b"Via"):
            error = self.assertParseError(raw(without(prefix)))
            self.assertIn("missing", error.reason)
            self.assertParseError(raw(without(prefix), start=b"SIP/2.0 200 OK"))

    def test_max_forwards_optional(self) -> None:
        message = parse_message(raw(without(b"Max-Forwards")))
        self.assertIsNone(message.get_header("Max-Forwards"))

    def test_empty_via(self) -> None:
        self.assertParseError(raw(without(b"Via") + [b"Via:  "]))

    def test_bad_call_id(self) -> None:
        for value in (b"", b"a b@c"):
            self.assertParseError(raw(without(b"Call-ID") + [b"Call-ID: " + value]))


class NumericHeaderTests(TestCase, ParseErrorMixin):
    """
    Content-Length, Max-Forwards and Expires (as delta-seconds) are digits.
    """

    def test_max_forwards(self) -> None:
        for value in (b"-1", b"7O", b"", b"1 2", b"\xd9\xa3", b"99999999999"):
            lines = without(b"Max-Forwards") + [b"Max-Forwards: " + value]
            self.assertParseError(raw(lines))
        lines = without(b"Max-Forwards") + [b"Max-Forwards: 0068"]
        self.assertEqual(parse_message(raw(lines)).get_header("max-forwards"), "0068")

    def test_content_length(self) -> None:
        # RFC 4475 §3.1.2.3: a negative Content-Length is a 400.
        for value in (b"-999", b"1.0", b"", b"0x10", b"99999999999"):
            self.assertParseError(raw(BASE + [b"Content-Length: " + value], length=False))

    def test_expires(self) -> None:
        message = parse_message(raw(BASE + [b"Expires: 3600"]))
        self.assertEqual(message.get_header("Expires"), "3600")
        # An RFC 2543 SIP-date is left to the application.
        message = parse_message(raw(BASE + [b"Expires: Sat, 01 Jan 2000 00:00:00 GMT"]))
        self.assertEqual(message.get_header("Expires"), "Sat, 01 Jan 2000 00:00:00 GMT")
        self.assertParseError(raw(BASE + [b"Expires: 12x"]))


class LineEndTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §7: lines end in CRLF; bare LF is tolerated on input.
    """

    def test_bare_lf(self) -> None:
        head, _, body = raw(body=b"v=0\n").partition(b"\r\n\r\n")
        message = parse_message(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
        self.assertEqual(message.get_header("call-id"), "3848276298220188511@example.com")
        # the body is not touched: 4 bytes, and the output says so
        self.assertEqual(message.body, b"v=0\n")
        self.assertEqual(bytes(message), raw(body=b"v=0\n"))

    def test_mixed(self) -> None:
        data = raw().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n")
        message = parse_message(data)
        self.assertEqual(bytes(message), raw())

    def test_bare_lf_empty_line(self) -> None:
        data = b"\r\n".join([START, *BASE]) + b"\r\n\nbody"
        message = parse_message(data)
        self.assertEqual(message.body, b"body")

    def test_bare_cr(self) -> None:
        self.assertParseError(raw(BASE + [b"Subject: a\rX-Injected: b"]))

    def test_no_empty_line(self) -> None:
        self.assertParseError(b"\r\n".join([START, *BASE]) + b"\r\n")
        self.assertParseError(b"\r\n".join([START, *BASE]))


class BodyTests(TestCase, ParseErrorMixin):
    """
    RFC 3261 §18.3, §20.14: Content-Length cuts a datagram; a stream framer
    has already cut the message.
    """

    def test_extra_bytes_dropped(self) -> None:
        data = raw(body=b"hello")
        message = parse_message(data + b"\r\nGARBAGE")
        self.assertEqual(message.body, b"hello")
        self.assertEqual(bytes(message), data)

    def test_short_body(self) -> None:
        # RFC 4475 §3.1.2.2
        data = raw(BASE + [b"Content-Length: 10"], body=b"hello", length=False)
        self.assertParseError(data)
        self.assertParseError(data, datagram=False)

    def test_no_content_length(self) -> None:
        data = raw(body=b"whole rest", length=False)
        message = parse_message(data)
        self.assertEqual(message.body, b"whole rest")
        self.assertEqual(bytes(message), raw(body=b"whole rest"))

    def test_stream(self) -> None:
        data = raw(body=b"hello")
        self.assertEqual(parse_message(data, datagram=False).body, b"hello")
        self.assertParseError(data + b"x", datagram=False)

    def test_binary_body(self) -> None:
        body = bytes(range(256)) * 2
        message = parse_message(raw(body=body))
        self.assertEqual(message.body, body)

    def test_body_set(self) -> None:
        message = parse_message(raw(body=b"hello"))
        message.body = b"longer body"
        out = bytes(message)
        self.assertTrue(out.endswith(b"Content-Length: 11\r\n\r\nlonger body"))
        self.assertEqual(out.count(b"Content-Length"), 1)
        self.assertRaises(TypeError, setattr, message, "body", "text")

    def test_wrong_length_rewritten_in_place(self) -> None:
        message = Request("INVITE", "sip:x@y", [("Content-Length", "99"), ("Subject", "s")], b"abc")
        self.assertEqual(
            bytes(message),
            b"INVITE sip:x@y SIP/2.0\r\nContent-Length: 3\r\nSubject: s\r\n\r\nabc",
        )

    def test_right_length_untouched(self) -> None:
        data = raw(BASE + [b"l:    005"], body=b"hello", length=False)
        message = parse_message(data)
        message.add_header("Subject", "x")
        self.assertIn(b"\r\nl:    005\r\n", bytes(message))


class SerialiseTests(TestCase):
    """
    Untouched lines go out byte for byte, modified ones canonically.
    """

    def test_untouched_is_the_input(self) -> None:
        data = raw(body=b"x")
        message = parse_message(data)
        message.get_headers("via")
        message.get_header("cseq")
        self.assertIs(bytes(message), data)

    def test_spelling_kept(self) -> None:
        lines = [b"vIA  :   SIP/2.0/UDP a;branch=z9hG4bK1", b"v: SIP/2.0/UDP b;branch=z9hG4bK2"]
        data = raw(lines + without(b"Via"))
        message = parse_message(data)
        message.add_header("record-route", "<sip:p;lr>")
        out = bytes(message)
        self.assertIn(
            b"\r\nvIA  :   SIP/2.0/UDP a;branch=z9hG4bK1\r\nv: SIP/2.0/UDP b;branch=z9hG4bK2\r\n", out
        )
        self.assertTrue(out.endswith(b"Content-Length: 0\r\nRecord-Route: <sip:p;lr>\r\n\r\n"))

    def test_canonical_names(self) -> None:
        message = Request("INVITE", "sip:x@y")
        for name in (
            "v",
            "record-route",
            "max-forwards",
            "CALL-ID",
            "cseq",
            "www-authenticate",
            "X-Custom-thing",
            "l",
        ):
            message.add_header(name, "1")
        out = bytes(message).split(b"\r\n")
        self.assertEqual(
            out[1:9],
            [
                b"Via: 1",
                b"Record-Route: 1",
                b"Max-Forwards: 1",
                b"Call-ID: 1",
                b"CSeq: 1",
                b"WWW-Authenticate: 1",
                b"X-Custom-thing: 1",
                b"Content-Length: 0",
            ],
        )

    def test_modified_line_canonical(self) -> None:
        lines = without(b"Max-Forwards") + [b"max-FORWARDS:70"]
        message = parse_message(raw(lines))
        message.set_header("Max-Forwards", "69")
        out = bytes(message)
        self.assertIn(b"\r\nMax-Forwards: 69\r\n", out)
        self.assertNotIn(b"max-FORWARDS", out)

    def test_unknown_modified_keeps_spelling(self) -> None:
        message = parse_message(raw(BASE + [b"x-fOO: a, b"]))
        message.set_header("X-Foo", "c", index=0)
        self.assertIn(b"\r\nx-fOO: c\r\n", bytes(message))

    def test_element_removed_from_joined_line(self) -> None:
        lines = [b"v:SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/UDP b;branch=z9hG4bK2 ,SIP/2.0/UDP c"]
        message = parse_message(raw(lines + without(b"Via")))
        self.assertEqual(message.remove_header("via", 0), 1)
        self.assertIn(b"\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2, SIP/2.0/UDP c\r\n", bytes(message))
        self.assertNotIn(b"v:", bytes(message))

    def test_round_trip_after_edits(self) -> None:
        message = parse_message(raw(BASE + [b"Route: <sip:a;lr>, <sip:b;lr>"], body=b"body"))
        message.insert_header("Via", "SIP/2.0/UDP proxy;branch=z9hG4bKp")
        message.remove_header("Route", 0)
        message.set_header("Max-Forwards", "69")
        again = parse_message(bytes(message))
        self.assertEqual(again.headers, message.headers)
        self.assertEqual(again.body, b"body")


class EditingTests(TestCase):
    """
    add_header, insert_header, set_header, remove_header, copy.
    """

    def setUp(self) -> None:
        lines = [
            b"Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
            b"Via: SIP/2.0/UDP c;branch=z9hG4bK3",
        ] + without(b"Via")
        self.message = parse_message(raw(lines))

    def vias(self) -> list[str]:
        return [value.split()[1].split(";")[0] for value in self.message.get_headers("via")]

    def test_add(self) -> None:
        self.message.add_header("Via", "SIP/2.0/UDP d")
        self.assertEqual(self.vias(), ["a", "b", "c", "d"])
        self.assertEqual(self.message.headers[-1], ("Via", "SIP/2.0/UDP d"))

    def test_add_list_value(self) -> None:
        self.message.add_header("Route", "<sip:a;lr>, <sip:b;lr>")
        self.assertEqual(self.message.get_headers("route"), ["<sip:a;lr>", "<sip:b;lr>"])

    def test_insert_before_first(self) -> None:
        self.message.insert_header("v", "SIP/2.0/UDP z")
        self.assertEqual(self.vias(), ["z", "a", "b", "c"])
        self.assertTrue(bytes(self.message).startswith(START + b"\r\nVia: SIP/2.0/UDP z\r\n"))

    def test_insert_at_top(self) -> None:
        self.message.insert_header("Record-Route", "<sip:p;lr>")
        self.assertEqual(self.message.headers[0], ("Record-Route", "<sip:p;lr>"))

    def test_set_all(self) -> None:
        self.message.add_header("Subject", "s")
        self.message.set_header("via", "SIP/2.0/UDP n")
        self.assertEqual(self.vias(), ["n"])
        self.assertEqual(self.message.headers[0], ("Via", "SIP/2.0/UDP n"))
        self.message.set_header("Priority", "urgent")
        self.assertEqual(self.message.headers[-1], ("Priority", "urgent"))

    def test_set_one(self) -> None:
        self.message.set_header("via", "SIP/2.0/UDP n", index=1)
        self.assertEqual(self.vias(), ["a", "n", "c"])
        self.message.set_header("via", "SIP/2.0/UDP m", index=-1)
        self.assertEqual(self.vias(), ["a", "n", "m"])
        self.assertRaises(IndexError, self.message.set_header, "via", "x", 3)
        self.assertRaises(IndexError, self.message.set_header, "via", "x", -4)
        self.assertRaises(IndexError, self.message.set_header, "route", "x", 0)

    def test_remove_all(self) -> None:
        self.assertEqual(self.message.remove_header("v"), 3)
        self.assertFalse(self.message.has_header("via"))
        self.assertEqual(self.message.remove_header("via"), 0)

    def test_remove_one(self) -> None:
        self.assertEqual(self.message.remove_header("via", 2), 1)
        self.assertEqual(self.vias(), ["a", "b"])
        self.assertEqual(self.message.remove_header("via", -1), 1)
        self.assertEqual(self.vias(), ["a"])
        self.assertEqual(self.message.remove_header("via", 5), 0)
        self.assertEqual(self.message.remove_header("via", 0), 1)
        self.assertEqual(self.message.get_headers("via"), [])

    def test_remove_malformed(self) -> None:
        message = parse_message(raw(BASE + [b"Route: <sip:a;lr>,,"]))
        self.assertEqual(message.remove_header("route"), 1)
        self.assertFalse(message.has_header("route"))

    def test_values_checked(self) -> None:
        for value in ("a\r\nX-Injected: b", "a\nb", "a\rb", "\ud800"):
            self.assertRaises(ValueError, self.message.add_header, "Subject", value)
        self.assertRaises(ValueError, self.message.add_header, "Route", '"unterminated')
        self.assertRaises(TypeError, self.message.add_header, "Subject", b"bytes")

    def test_returned_list_is_a_copy(self) -> None:
        self.message.get_headers("via").append("x")
        self.assertEqual(len(self.message.get_headers("via")), 3)

    def test_copy(self) -> None:
        copy = self.message.copy()
        self.assertIsInstance(copy, Request)
        copy.remove_header("via", 0)
        copy.set_header("Max-Forwards", "1")
        assert isinstance(copy, Request)
        copy.uri = "sip:other@example.com"
        self.assertEqual(self.vias(), ["a", "b", "c"])
        self.assertEqual(self.message.get_header("max-forwards"), "70")
        self.assertEqual(bytes(self.message.copy()), bytes(self.message))

    def test_start_line_edits(self) -> None:
        message = self.message
        assert isinstance(message, Request)
        message.uri = "sip:carol@example.com"
        self.assertTrue(bytes(message).startswith(b"INVITE sip:carol@example.com SIP/2.0\r\n"))
        self.assertRaises(ValueError, setattr, message, "uri", "sip:a b")
        self.assertRaises(ValueError, setattr, message, "uri", "no-scheme")
        self.assertRaises(ValueError, setattr, message, "method", "BAD METHOD")
        response = Response(200)
        response.reason = "Fine"
        response.code = 202
        self.assertTrue(bytes(response).startswith(b"SIP/2.0 202 Fine\r\n"))
        self.assertRaises(ValueError, setattr, response, "code", 99)
        self.assertRaises(ValueError, setattr, response, "reason", "a\r\nb")


class ConstructionTests(TestCase):
    """
    Messages built from parts.
    """

    def test_request(self) -> None:
        headers = [
            (name.decode(), value.strip().decode())
            for name, _, value in (line.partition(b":") for line in BASE)
        ]
        request = Request("INVITE", "sip:bob@example.com", headers, b"v=0\r\n")
        self.assertEqual(bytes(request), raw(body=b"v=0\r\n"))
        parsed = parse_message(bytes(request))
        self.assertEqual(parsed.headers, request.headers + [("Content-Length", "5")])

    def test_response_reasons(self) -> None:
        self.assertEqual(Response(483).reason, "Too Many Hops")
        self.assertEqual(Response(482).reason, REASONS[482])
        self.assertEqual(Response(299).reason, "OK")
        self.assertEqual(Response(499).reason, "Bad Request")
        self.assertEqual(Response(200, "Fine").reason, "Fine")

    def test_repr(self) -> None:
        self.assertEqual(repr(Response(404)), "<Response 404 Not Found>")
        self.assertEqual(repr(Request("BYE", "sip:a@b")), "<Request BYE sip:a@b>")

    def test_missing_call_id(self) -> None:
        request = Request("BYE", "sip:a@b")
        self.assertRaises(SIPParseError, getattr, request, "call_id")
        self.assertRaises(SIPParseError, getattr, request, "cseq")


class MakeResponseTests(TestCase):
    """
    RFC 3261 §8.2.6: a stateless response copies Via, From, To, Call-ID and
    CSeq, and adds a To tag.
    """

    def setUp(self) -> None:
        lines = [
            b"v: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2",
            b"Via: SIP/2.0/UDP c;branch=z9hG4bK3",
            b"Route: <sip:p;lr>",
            b"Record-Route: <sip:rr;lr>",
        ] + without(b"Via")
        request = parse_message(raw(lines, body=b"sdp"))
        assert isinstance(request, Request)
        self.request = request

    def test_copied(self) -> None:
        response = make_response(self.request, 483)
        self.assertEqual(
            [name for name, _ in response.headers],
            ["Via", "Via", "Via", "From", "To", "Call-ID", "CSeq", "Content-Length"],
        )
        self.assertEqual(response.get_headers("via"), self.request.get_headers("via"))
        self.assertEqual(response.get_header("from"), self.request.get_header("from"))
        self.assertEqual(response.call_id, self.request.call_id)
        self.assertEqual(response.cseq, (1, "INVITE"))
        self.assertEqual(response.reason, "Too Many Hops")
        self.assertEqual(response.body, b"")
        out = bytes(response)
        self.assertTrue(out.startswith(b"SIP/2.0 483 Too Many Hops\r\nv: SIP/2.0/UDP a;"))
        self.assertTrue(out.endswith(b"\r\nContent-Length: 0\r\n\r\n"))
        self.assertEqual(parse_message(out).headers, response.headers)

    def test_to_tag(self) -> None:
        first = make_response(self.request, 404, "Nobody")
        second = make_response(self.request.copy(), 404)
        to = first.get_header("to")
        assert to is not None
        self.assertTrue(to.startswith("Bob <sip:bob@example.com>;tag="))
        self.assertEqual(first.reason, "Nobody")
        self.assertEqual(second.get_header("to"), to)
        other = self.request.copy()
        other.set_header("CSeq", "2 INVITE")
        self.assertNotEqual(make_response(other, 404).get_header("to"), to)

    def test_no_tag_for_100(self) -> None:
        self.assertEqual(make_response(self.request, 100).get_header("to"), "Bob <sip:bob@example.com>")

    def test_existing_tag_kept(self) -> None:
        for to in (
            "<sip:bob@example.com>;tag=abc",
            "sip:bob@example.com;TAG=abc",
            '"x>;tag=no" <sip:bob@example.com>;tag=abc',
        ):
            self.request.set_header("To", to)
            self.assertEqual(make_response(self.request, 486).get_header("to"), to)

    def test_tag_not_in_uri(self) -> None:
        self.request.set_header("To", "<sip:bob@example.com;tag=uri-param>")
        to = make_response(self.request, 486).get_header("to")
        assert to is not None
        self.assertRegex(to, r"^<sip:bob@example.com;tag=uri-param>;tag=[0-9a-f]{16}$")


class SalvageAnswerTests(TestCase):
    """
    L{salvage_answer}: answering bytes that did not parse (RFC 3261 §16.3).
    """

    BROKEN = (
        b"OPTIONS sip:bob@example.com SIP/7.0\r\n"
        b"v: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\n"
        b"Via: SIP/2.0/UDP b.example;branch=z9hG4bK2\r\n"
        b"f: <sip:alice@example.com>;tag=1\r\n"
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: broken@x\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 5\r\n\r\n"
    )

    def answer(self, data: bytes, code: int = 400, reason: str | None = None) -> Response:
        wire = salvage_answer(data, code, reason)
        assert wire is not None
        response = parse_message(wire)
        assert isinstance(response, Response)
        return response

    def test_answers_from_raw_lines(self) -> None:
        response = self.answer(self.BROKEN, 505, "Version Not Supported")
        self.assertEqual((response.code, response.reason), (505, "Version Not Supported"))
        self.assertEqual(
            response.get_headers("via"),
            ["SIP/2.0/UDP a.example;branch=z9hG4bK1", "SIP/2.0/UDP b.example;branch=z9hG4bK2"],
        )
        self.assertEqual(response.get_header("cseq"), "1 INVITE")
        self.assertEqual(response.get_header("from"), "<sip:alice@example.com>;tag=1")
        self.assertRegex(response.get_header("to") or "", r"^<sip:bob@example.com>;tag=[0-9a-f]{16}$")
        # A retransmission gets the same tag.
        self.assertEqual(self.answer(self.BROKEN, 505).get_header("to"), response.get_header("to"))
        self.assertEqual(response.get_header("call-id"), "broken@x")
        self.assertEqual(response.body, b"")

    def test_malformed_fields_echoed_verbatim(self) -> None:
        """
        The field at fault is copied as it came (§8.2.6.2): the requester
        matches the answer by its own Via branch and CSeq method.
        """
        data = self.BROKEN.replace(b"To: <sip:bob@example.com>", b'To: "Bob <sip:bob@example.com>')
        data = data.replace(b"CSeq: 1 INVITE", b"CSeq: 36893488147419103232 INVITE")
        wire = salvage_answer(data, 400, "malformed To")
        assert wire is not None
        lines = wire.split(b"\r\n")
        self.assertEqual(lines[0], b"SIP/2.0 400 malformed To")
        self.assertIn(b"CSeq: 36893488147419103232 INVITE", lines)
        self.assertTrue(any(line.startswith(b'To: "Bob <sip:bob@example.com>;tag=') for line in lines))
        self.assertTrue(wire.endswith(b"\r\nContent-Length: 0\r\n\r\n"))
        # Never much larger than the request: no amplification.
        self.assertLess(len(wire), len(data) + 64)

    def test_missing_fields_stay_missing(self) -> None:
        # RFC 4475 §3.3.1: no From, To or Call-ID; the Via and CSeq make
        # an answer the requester can match.
        data = self.BROKEN.replace(b"To: <sip:bob@example.com>\r\n", b"")
        data = data.replace(b"Call-ID: broken@x\r\n", b"")
        wire = salvage_answer(data, 400, "missing To header")
        assert wire is not None
        self.assertNotIn(b"\r\nTo:", wire)
        self.assertNotIn(b"Call-ID", wire)
        self.assertIn(b"\r\nCSeq: 1 INVITE\r\n", wire)

    def test_nobody_to_answer(self) -> None:
        self.assertIsNone(salvage_answer(b"SIP/2.0 200 OK\r\nVia: x\r\nCSeq: 1 A\r\n\r\n", 400))
        self.assertIsNone(salvage_answer(self.BROKEN.replace(b"CSeq: 1 INVITE\r\n", b""), 400))
        no_via = self.BROKEN.replace(b"v: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\n", b"")
        no_via = no_via.replace(b"Via: SIP/2.0/UDP b.example;branch=z9hG4bK2\r\n", b"")
        self.assertIsNone(salvage_answer(no_via, 400))
        self.assertIsNone(salvage_answer(b"", 400))
        self.assertIsNone(salvage_answer(b"\x00\x01garbage", 400))

    def test_unusable_reason_falls_back(self) -> None:
        response = self.answer(self.BROKEN, 400, "bad\r\nInjected: yes")
        self.assertEqual(response.reason, REASONS[400])
        self.assertIsNone(response.get_header("injected"))

    def test_bare_cr_lines_not_copied(self) -> None:
        data = self.BROKEN.replace(b"Call-ID: broken@x", b"Call-ID: broken\rInjected: yes")
        wire = salvage_answer(data, 400)
        assert wire is not None
        self.assertNotIn(b"Injected", wire)
