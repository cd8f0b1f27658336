"""
The torture messages of RFC 4475 and RFC 5118 against L{sipleg.message}.

Every file in C{tests/torture/} has a verdict here, taken from the RFC
that carries it.  Where the RFC's verdict is about something beyond the
message syntax (a URI, a scheme, a media type, a semantic check a proxy or
user agent makes), the parser must parse the message and preserve what the
later stage needs; the comment says who answers what.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from sipleg.errors import SIPParseError
from sipleg.message import Message, Request, Response, parse_message

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture")

#: Parsed, and a later stage decides.
VALID = "valid"

#: file -> VALID, or the status of the SIPParseError (None for responses,
#: which are discarded rather than answered).
VERDICTS: dict[str, str | int | None] = {
    # RFC 4475 §3.1.1: valid messages.
    "rfc4475/wsinv.dat": VALID,  # 3.1.1.1 short tortuous INVITE
    "rfc4475/intmeth.dat": VALID,  # 3.1.1.2 wide range of valid characters
    "rfc4475/esc01.dat": VALID,  # 3.1.1.3 valid use of the % escaping mechanism
    "rfc4475/escnull.dat": VALID,  # 3.1.1.4 escaped nulls in URIs
    "rfc4475/esc02.dat": VALID,  # 3.1.1.5 use of % when it is not an escape
    "rfc4475/lwsdisp.dat": VALID,  # 3.1.1.6 message with no LWS between display name and <
    "rfc4475/longreq.dat": VALID,  # 3.1.1.7 long values in header fields
    "rfc4475/dblreq.dat": VALID,  # 3.1.1.8 extra trailing octets in a UDP datagram
    "rfc4475/semiuri.dat": VALID,  # 3.1.1.9 semicolon-separated parameters in URI user part
    "rfc4475/transports.dat": VALID,  # 3.1.1.10 varied and unknown transport types
    "rfc4475/mpart01.dat": VALID,  # 3.1.1.11 multipart MIME message
    "rfc4475/unreason.dat": VALID,  # 3.1.1.12 unusual reason phrase
    "rfc4475/noreason.dat": VALID,  # 3.1.1.13 empty reason phrase
    # RFC 4475 §3.1.2: invalid messages.
    "rfc4475/badinv01.dat": 400,  # 3.1.2.1 extraneous header field separators
    "rfc4475/clerr.dat": 400,  # 3.1.2.2 Content-Length larger than message
    "rfc4475/ncl.dat": 400,  # 3.1.2.3 negative Content-Length
    "rfc4475/scalar02.dat": 400,  # 3.1.2.4 request scalar fields with overlarge values
    "rfc4475/scalarlg.dat": None,  # 3.1.2.5 response scalar fields with overlarge values
    "rfc4475/quotbal.dat": 400,  # 3.1.2.6 unterminated quoted string in display name
    "rfc4475/ltgtruri.dat": 400,  # 3.1.2.7 <> enclosing Request-URI
    "rfc4475/lwsruri.dat": 400,  # 3.1.2.8 malformed SIP Request-URI (embedded LWS)
    "rfc4475/lwsstart.dat": 400,  # 3.1.2.9 multiple SP separating Request-Line elements
    "rfc4475/trws.dat": 400,  # 3.1.2.10 SP characters at end of Request-Line
    # 3.1.2.11 escaped headers in SIP Request-URI: "acceptable to reject
    # with 400", or to ignore the escaped headers.  The URI is not the
    # parser's business: it keeps it verbatim; sipleg.uri / the proxy
    # decide (and must not turn ?Route= into a header).
    "rfc4475/escruri.dat": VALID,
    # 3.1.2.12 invalid time zone in Date: "acceptable to reject", an element
    # may also ignore Date.  Date is opaque to the parser and to a proxy.
    "rfc4475/baddate.dat": VALID,
    # 3.1.2.13 failure to enclose name-addr URI in <>: "reasonable to reject
    # with 400", liberal elements may infer the brackets.  Contact is
    # sipleg.uri's business; the parser preserves it.
    "rfc4475/regbadct.dat": VALID,
    # 3.1.2.14 spaces within addr-spec: "reasonable to reject", liberal
    # elements may ignore the spaces.  To is preserved for sipleg.uri.
    "rfc4475/badaspec.dat": VALID,
    # 3.1.2.15 non-token characters in display name: "reasonable to always
    # reject with 400".  (The archive's copy also lacks the empty line
    # after the headers, which is a 400 in any case.)
    "rfc4475/baddn.dat": 400,
    "rfc4475/badvers.dat": 505,  # 3.1.2.16 unknown protocol version
    "rfc4475/mismatch01.dat": 400,  # 3.1.2.17 start line and CSeq method mismatch
    # 3.1.2.18 unknown method with CSeq method mismatch: 501 is preferred,
    # 400 acceptable; the parser cannot know the method is unsupported.
    "rfc4475/mismatch02.dat": 400,
    "rfc4475/bigcode.dat": None,  # 3.1.2.19 overlarge response code
    # RFC 4475 §3.2: transaction layer semantics.
    "rfc4475/badbranch.dat": VALID,  # 3.2.1 missing transaction identifier
    # RFC 4475 §3.3: application layer semantics.
    "rfc4475/insuf.dat": 400,  # 3.3.1 missing required header fields
    "rfc4475/unkscm.dat": VALID,  # 3.3.2 unknown scheme in Request-URI: the proxy answers 416
    "rfc4475/novelsc.dat": VALID,  # 3.3.3 known but atypical scheme: 416 if unsupported
    "rfc4475/unksm2.dat": VALID,  # 3.3.4 unknown URI schemes in header fields
    "rfc4475/bext01.dat": VALID,  # 3.3.5 Proxy-Require and Require: 420 by the element
    "rfc4475/invut.dat": VALID,  # 3.3.6 unknown Content-Type: 415 by a UAS
    "rfc4475/regaut01.dat": VALID,  # 3.3.7 unknown authorization scheme: a registrar's 401
    "rfc4475/multi01.dat": 400,  # 3.3.8 multiple values in single value required fields
    "rfc4475/mcl01.dat": 400,  # 3.3.9 multiple Content-Length values
    "rfc4475/bcast.dat": VALID,  # 3.3.10 200 OK with broadcast Via: the UAC discards it
    "rfc4475/zeromf.dat": VALID,  # 3.3.11 Max-Forwards of zero: a proxy answers 483
    "rfc4475/cparam01.dat": VALID,  # 3.3.12 REGISTER with a Contact header parameter
    "rfc4475/cparam02.dat": VALID,  # 3.3.13 REGISTER with a url-parameter
    "rfc4475/regescrt.dat": VALID,  # 3.3.14 REGISTER with a URL escaped header
    "rfc4475/sdp01.dat": VALID,  # 3.3.15 unacceptable Accept offering: a UAS's 406
    # RFC 4475 §3.4: backward compatibility.
    "rfc4475/inv2543.dat": VALID,  # 3.4.1 INVITE with RFC 2543 syntax
    # In the RFC's archive only: no SIP-Version on the Request-Line and a
    # header line without a colon.
    "rfc4475/test.dat": 400,
    # RFC 5118 §4.
    "rfc5118/ipv6-good.dat": VALID,  # 4.1 valid SIP message with an IPv6 reference
    # 4.2 invalid SIP message with an IPv6 reference (no brackets in the
    # Request-URI): "should be rejected with 400" by the element parsing the
    # URI, sipleg.uri; the message parser keeps the Request-URI as text.
    "rfc5118/ipv6-bad.dat": VALID,
    "rfc5118/port-ambiguous.dat": VALID,  # 4.3 port ambiguous in a SIP URI
    "rfc5118/port-unambiguous.dat": VALID,  # 4.4 port unambiguous in a SIP URI
    "rfc5118/via-received-param-with-delim.dat": VALID,  # 4.5 IPv6 reference delimiters in Via
    "rfc5118/via-received-param-no-delim.dat": VALID,  # 4.5
    "rfc5118/ipv6-in-sdp.dat": VALID,  # 4.6 IPv6 addresses in SDP
    "rfc5118/mult-ip-in-header.dat": VALID,  # 4.7 multiple IP addresses in SIP headers
    "rfc5118/mult-ip-in-sdp.dat": VALID,  # 4.8 multiple IP addresses in SDP
    "rfc5118/ipv4-mapped-ipv6.dat": VALID,  # 4.9 IPv4-mapped IPv6 addresses
    # 4.10 IPv6 reference bug in RFC 3261 ABNF: the 2-colon form is right,
    # the 3-colon form is an artefact of the old ABNF that elements should
    # still accept (RFC 5954 fixed the grammar).  Both are URI questions
    # for sipleg.uri; the parser preserves both.
    "rfc5118/ipv6-correct-abnf-2-colons.dat": VALID,
    "rfc5118/ipv6-bug-abnf-3-colons.dat": VALID,
}


def load(name: str) -> bytes:
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def headers_without_length(message: Message) -> list[tuple[str, str]]:
    return [(name, value) for name, value in message.headers if name != "Content-Length"]


class VerdictTests(TestCase):
    """
    Every torture message gets the verdict of its RFC.
    """

    def test_every_file_has_a_verdict(self) -> None:
        files = {
            f"{directory}/{name}"
            for directory in ("rfc4475", "rfc5118")
            for name in os.listdir(os.path.join(HERE, directory))
            if name.endswith(".dat")
        }
        self.assertEqual(files, set(VERDICTS))
        self.assertEqual(len(files), 62)

    def test_valid_messages_parse_and_round_trip(self) -> None:
        for name, verdict in VERDICTS.items():
            if verdict != VALID:
                continue
            data = load(name)
            message = parse_message(data)
            again = parse_message(bytes(message))
            self.assertEqual(type(again), type(message), name)
            if isinstance(message, Request):
                assert isinstance(again, Request)
                self.assertEqual((again.method, again.uri), (message.method, message.uri), name)
            else:
                assert isinstance(message, Response) and isinstance(again, Response)
                self.assertEqual((again.code, again.reason), (message.code, message.reason), name)
            self.assertEqual(headers_without_length(again), headers_without_length(message), name)
            self.assertEqual(again.body, message.body, name)
            # Every header can be read (nothing but SIPParseError is ever
            # raised; here nothing at all).
            for header, _ in message.headers:
                message.get_headers(header)
            self.assertEqual(message.tid, f"{message.call_id} {message.cseq[0]}")

    def test_invalid_messages_rejected(self) -> None:
        for name, verdict in VERDICTS.items():
            if verdict == VALID:
                continue
            error = self.assertRaises(SIPParseError, parse_message, load(name))
            if verdict is not None:
                self.assertEqual(error.status, verdict, name)

    def test_untouched_valid_messages_are_the_input(self) -> None:
        # Those with a correct Content-Length and nothing after the body
        # serialise to their own bytes.
        for name in (
            "rfc4475/wsinv.dat",
            "rfc4475/intmeth.dat",
            "rfc4475/longreq.dat",
            "rfc4475/mpart01.dat",
            "rfc5118/ipv6-good.dat",
        ):
            data = load(name)
            self.assertEqual(bytes(parse_message(data)), data, name)


class DetailTests(TestCase):
    """
    What the valid messages must yield.
    """

    def test_wsinv(self) -> None:
        message = parse_message(load("rfc4475/wsinv.dat"))
        self.assertEqual(
            message.get_header("TO"), "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"
        )
        self.assertEqual(message.cseq, (9, "INVITE"))
        self.assertEqual(message.get_header("max-forwards"), "0068")
        self.assertEqual(message.get_header("subject"), "")
        self.assertEqual(
            message.get_header("newfangledheader"), "newfangled value continued newfangled value"
        )
        # an unknown header is never split, however many commas it has
        self.assertEqual(message.get_headers("UnknownHeaderWithUnusualValue"), [";;,,;;,;"])
        self.assertEqual(
            message.get_headers("via"),
            [
                "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw",
                "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8",
                "SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
            ],
        )
        self.assertEqual(len(message.get_headers("contact")), 1)
        self.assertEqual(len(message.body), 150)

    def test_intmeth(self) -> None:
        message = parse_message(load("rfc4475/intmeth.dat"))
        assert isinstance(message, Request)
        method = "!interesting-Method0123456789_*+`.%indeed'~"
        self.assertEqual(message.method, method)
        self.assertEqual(message.cseq, (139122385, method))
        self.assertTrue(message.uri.startswith("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it"))
        self.assertEqual(message.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
        # UTF-8 header value, decoded
        self.assertEqual(message.get_header("extensionHeader-!.%*+_`'~"), "\ufeff大停電")
        self.assertIn("\x00", message.get_header("to") or "")

    def test_escapes_kept(self) -> None:
        message = parse_message(load("rfc4475/esc01.dat"))
        assert isinstance(message, Request)
        self.assertEqual(message.uri, "sip:sips%3Auser%40example.com@example.net")
        self.assertEqual(message.get_header("c"), "application/sdp")
        self.assertEqual(
            message.get_header("contact"),
            "<sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        )

    def test_esc02(self) -> None:
        message = parse_message(load("rfc4475/esc02.dat"))
        assert isinstance(message, Request)
        # RE%47IST%45R is not REGISTER, C%6Fntact is not Contact.
        self.assertEqual(message.method, "RE%47IST%45R")
        self.assertEqual(
            message.get_headers("contact"),
            ["<sip:alias1@host1.example.com>", "<sip:alias3@host3.example.com>"],
        )
        self.assertEqual(message.get_headers("C%6Fntact"), ["<sip:alias2@host2.example.com>"])

    def test_escnull(self) -> None:
        message = parse_message(load("rfc4475/escnull.dat"))
        self.assertEqual(
            message.get_headers("contact"),
            ["<sip:%00@host5.example.com>", "<sip:%00%00@host5.example.com>"],
        )

    def test_lwsdisp(self) -> None:
        message = parse_message(load("rfc4475/lwsdisp.dat"))
        self.assertEqual(message.get_header("from"), "caller<sip:caller@example.com>;tag=323")

    def test_longreq(self) -> None:
        message = parse_message(load("rfc4475/longreq.dat"))
        vias = message.get_headers("VIA")
        self.assertEqual(len(vias), 34)
        self.assertEqual(vias[0], "SIP/2.0/TCP sip33.example.com")
        self.assertEqual(vias[32], "SIP/2.0/TCP sip1.example.com")
        self.assertTrue(
            vias[33].startswith("SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylong")
        )
        self.assertEqual(len(message.body), 150)

    def test_dblreq(self) -> None:
        # Only the REGISTER: Content-Length 0 drops the INVITE after it.
        message = parse_message(load("rfc4475/dblreq.dat"))
        assert isinstance(message, Request)
        self.assertEqual(message.method, "REGISTER")
        self.assertEqual(message.body, b"")
        self.assertNotIn(b"INVITE", bytes(message))

    def test_semiuri(self) -> None:
        message = parse_message(load("rfc4475/semiuri.dat"))
        assert isinstance(message, Request)
        self.assertEqual(message.uri, "sip:user;par=u%40example.net@example.com")
        self.assertEqual(
            message.get_headers("accept"),
            [
                "application/sdp",
                "application/pkcs7-mime",
                "multipart/mixed",
                "multipart/signed",
                "message/sip",
                "message/sipfrag",
            ],
        )

    def test_transports(self) -> None:
        message = parse_message(load("rfc4475/transports.dat"))
        self.assertEqual(
            [via.split()[0] for via in message.get_headers("via")],
            ["SIP/2.0/UDP", "SIP/2.0/SCTP", "SIP/2.0/TLS", "SIP/2.0/UNKNOWN", "SIP/2.0/TCP"],
        )
        self.assertEqual(message.call_id, "transports.kijh4akdnaqjkwendsasfdj")

    def test_mpart01(self) -> None:
        data = load("rfc4475/mpart01.dat")
        message = parse_message(data)
        self.assertEqual(len(message.body), 553)
        self.assertTrue(data.endswith(message.body))

    def test_reasons(self) -> None:
        message = parse_message(load("rfc4475/unreason.dat"))
        assert isinstance(message, Response)
        self.assertEqual(message.code, 200)
        self.assertTrue(message.reason.startswith("= 2**3 * 5**2 но сто девяносто девять"))
        message = parse_message(load("rfc4475/noreason.dat"))
        assert isinstance(message, Response)
        self.assertEqual((message.code, message.reason), (100, ""))

    def test_application_layer(self) -> None:
        message = parse_message(load("rfc4475/bext01.dat"))
        self.assertEqual(message.get_headers("require"), ["nothingSupportsThis", "nothingSupportsThisEither"])
        self.assertEqual(
            message.get_headers("proxy-require"), ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
        )
        self.assertEqual(parse_message(load("rfc4475/zeromf.dat")).get_header("max-forwards"), "0")
        message = parse_message(load("rfc4475/unkscm.dat"))
        assert isinstance(message, Request)
        self.assertEqual(message.uri, "nobodyKnowsThisScheme:totallyopaquecontent")
        message = parse_message(load("rfc4475/novelsc.dat"))
        assert isinstance(message, Request)
        self.assertEqual(message.uri, "soap.beep://192.0.2.103:3002")
        message = parse_message(load("rfc4475/regaut01.dat"))
        self.assertEqual(message.get_header("authorization"), "NoOneKnowsThisScheme opaque-data=here")
        message = parse_message(load("rfc4475/regescrt.dat"))
        self.assertEqual(
            message.get_header("contact"), "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"
        )
        message = parse_message(load("rfc4475/bcast.dat"))
        self.assertEqual(message.get_headers("via")[1], "SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23")

    def test_inv2543(self) -> None:
        # No Content-Length, no Max-Forwards, no branch: the body is the
        # rest of the datagram and the output gets a Content-Length.
        data = load("rfc4475/inv2543.dat")
        message = parse_message(data)
        self.assertEqual(message.body, data.split(b"\r\n\r\n", 1)[1])
        self.assertIsNone(message.get_header("max-forwards"))
        self.assertIn(b"\r\nContent-Length: %d\r\n\r\n" % len(message.body), bytes(message))

    def test_ipv6(self) -> None:
        uris = {
            "ipv6-good": "sip:[2001:db8::10]",
            "ipv6-bad": "sip:2001:db8::10",
            "port-ambiguous": "sip:[2001:db8::10:5070]",
            "port-unambiguous": "sip:[2001:db8::10]:5070",
            "ipv6-bug-abnf-3-colons": "sip:user@[2001:db8:::192.0.2.1]",
            "ipv6-correct-abnf-2-colons": "sip:user@[2001:db8::192.0.2.1]",
        }
        for name, uri in uris.items():
            message = parse_message(load(f"rfc5118/{name}.dat"))
            assert isinstance(message, Request)
            self.assertEqual(message.uri, uri)
        message = parse_message(load("rfc5118/via-received-param-with-delim.dat"))
        self.assertEqual(
            message.get_header("via"),
            "SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        )
        message = parse_message(load("rfc5118/mult-ip-in-header.dat"))
        self.assertEqual(len(message.get_headers("via")), 3)
