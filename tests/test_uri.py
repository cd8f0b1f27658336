"""
Tests for L{sipleg.uri}: SIP/SIPS URIs, name-addr values, Via values.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from sipleg.errors import SIPParseError
from sipleg.uri import (
    URI,
    NameAddr,
    Via,
    header_tag,
    parse_name_addr,
    parse_params,
    parse_uri,
    parse_via,
    same_hop,
    uri_equal,
    via_branch,
)


class ParseURITests(TestCase):
    """
    L{parse_uri} on SIP and SIPS URIs (RFC 3261 §19.1, §25.1).
    """

    def test_fields(self) -> None:
        """
        Every component lands in its field; the host is lower-cased, user
        and parameter values keep their case, parameter names do not.
        """
        uri = parse_uri("sip:Alice:Secret@Atlanta.EXAMPLE.com:5070;Transport=TCP;lr?Subject=Hi&P=x")
        self.assertEqual(uri.scheme, "sip")
        self.assertEqual(uri.user, "Alice")
        self.assertEqual(uri.password, "Secret")
        self.assertEqual(uri.host, "atlanta.example.com")
        self.assertEqual(uri.port, 5070)
        self.assertEqual(list(uri.params.items()), [("transport", "TCP"), ("lr", None)])
        self.assertEqual(uri.headers, (("Subject", "Hi"), ("P", "x")))
        self.assertIsNone(uri.opaque)

    def test_minimal(self) -> None:
        """
        A URI may be just a host.
        """
        uri = parse_uri("sip:example.com")
        self.assertEqual(uri, URI("sip", None, None, "example.com", None, {}, [], None))

    def test_scheme_case(self) -> None:
        """
        The scheme is case-insensitive and stored lower-cased.
        """
        self.assertEqual(parse_uri("SIPS:bob@biloxi.com").scheme, "sips")
        self.assertEqual(parse_uri("Sip:bob@biloxi.com").scheme, "sip")

    def test_telephone_subscriber(self) -> None:
        """
        RFC 3261 §19.1.3 example: a telephone-subscriber user with a
        password, and one with a ";" inside the user part.
        """
        uri = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
        self.assertEqual((uri.user, uri.password), ("+1-212-555-1212", "1234"))
        self.assertEqual(uri.params, {"user": "phone"})
        uri = parse_uri("sip:+1-212-555-1212;postd=pp22#@gateway.com;user=phone")
        self.assertEqual(uri.user, "+1-212-555-1212;postd=pp22#")
        self.assertEqual(uri.host, "gateway.com")

    def test_empty_password(self) -> None:
        """
        C{password = *( ... )} may be empty, and that differs from none.
        """
        uri = parse_uri("sip:alice:@atlanta.com")
        self.assertEqual((uri.user, uri.password), ("alice", ""))
        self.assertEqual(str(uri), "sip:alice:@atlanta.com")

    def test_escapes_kept(self) -> None:
        """
        Escapes stay as written in the user part and in parameter values.
        """
        uri = parse_uri("sip:%61lice%20x@atlanta.com;foo=a%3bb?to=sip:bob%40biloxi.com")
        self.assertEqual(uri.user, "%61lice%20x")
        self.assertEqual(uri.params, {"foo": "a%3bb"})
        self.assertEqual(uri.headers, (("to", "sip:bob%40biloxi.com"),))

    def test_ipv4(self) -> None:
        """
        An IPv4 host with and without port.
        """
        uri = parse_uri("sip:192.0.2.4")
        self.assertEqual((uri.host, uri.port), ("192.0.2.4", None))
        uri = parse_uri("sip:alice@192.0.2.4:5061")
        self.assertEqual((uri.host, uri.port), ("192.0.2.4", 5061))

    def test_ipv6_reference(self) -> None:
        """
        RFC 5118 §4.4: a bracketed IPv6 reference followed by a port; the
        host is stored without brackets, lower-cased.
        """
        uri = parse_uri("sip:[2001:DB8::10]:5070")
        self.assertEqual((uri.host, uri.port), ("2001:db8::10", 5070))
        self.assertEqual(uri.hostport, "[2001:db8::10]:5070")
        self.assertEqual(str(uri), "sip:[2001:db8::10]:5070")

    def test_ipv6_port_ambiguous(self) -> None:
        """
        RFC 5118 §4.3: inside the brackets the last group is part of the
        address, not a port.
        """
        uri = parse_uri("sip:[2001:db8::10:5070]")
        self.assertEqual((uri.host, uri.port), ("2001:db8::10:5070", None))

    def test_ipv6_forms(self) -> None:
        """
        RFC 5118 §4.9 (IPv4-mapped) and §4.10 (the RFC 3261 ABNF bug with a
        trailing three-digit group) parse as IPv6 references.
        """
        self.assertEqual(parse_uri("sip:[::ffff:192.0.2.10]:19823").host, "::ffff:192.0.2.10")
        self.assertEqual(parse_uri("sip:user@[2001:db8::9:255]").host, "2001:db8::9:255")
        self.assertEqual(parse_uri("sip:[::1];lr").params, {"lr": None})

    def test_bare_ipv6_malformed(self) -> None:
        """
        RFC 5118 §4.2: an IPv6 address without brackets in a SIP URI is
        malformed.
        """
        for text in ("sip:2001:db8::10", "sip:user@2001:db8::10", "sip:::1"):
            with self.assertRaises(SIPParseError, msg=text) as caught:
                parse_uri(text)
            self.assertEqual(caught.exception.status, 400)

    def test_parameters(self) -> None:
        """
        The uri-parameters of RFC 3261 §19.1.1, in order, plus any other.
        """
        uri = parse_uri(
            "sip:alice@atlanta.com;transport=udp;user=ip;method=INVITE;ttl=15;"
            "maddr=239.255.255.1;lr;x-custom=[a]/b:c&d+e$f"
        )
        self.assertEqual(
            list(uri.params),
            ["transport", "user", "method", "ttl", "maddr", "lr", "x-custom"],
        )
        self.assertEqual(uri.params["method"], "INVITE")
        self.assertEqual(uri.params["x-custom"], "[a]/b:c&d+e$f")
        self.assertEqual(uri.maddr, "239.255.255.1")

    def test_properties(self) -> None:
        """
        C{transport} and C{maddr} are normalised; C{effective_port} falls
        back to the scheme's default port.
        """
        uri = parse_uri("sips:Bob@Biloxi.com;Transport=TCP;maddr=[2001:DB8::1]")
        self.assertEqual(uri.transport, "tcp")
        self.assertEqual(uri.maddr, "2001:db8::1")
        self.assertTrue(uri.is_secure)
        self.assertTrue(uri.is_sip)
        self.assertEqual(uri.effective_port, 5061)
        self.assertEqual(uri.hostport, "biloxi.com")
        uri = parse_uri("sip:bob@biloxi.com")
        self.assertIsNone(uri.transport)
        self.assertIsNone(uri.maddr)
        self.assertFalse(uri.is_secure)
        self.assertEqual(uri.effective_port, 5060)
        self.assertEqual(parse_uri("sip:biloxi.com:6000").effective_port, 6000)
        self.assertEqual(parse_uri("sips:biloxi.com:5060").effective_port, 5060)

    def test_headers(self) -> None:
        """
        C{?h=v&h2=v2}: order kept, an empty value allowed.
        """
        uri = parse_uri("sip:alice@atlanta.com?subject=project%20x&priority=urgent&x=")
        self.assertEqual(uri.headers, (("subject", "project%20x"), ("priority", "urgent"), ("x", "")))

    def test_port_range(self) -> None:
        """
        A port is 1 to 5 ASCII digits up to 65535.
        """
        self.assertEqual(parse_uri("sip:h:0").port, 0)
        self.assertEqual(parse_uri("sip:h:65535").port, 65535)
        for text in (
            "sip:h:65536",
            "sip:h:",
            "sip:h:123456",
            "sip:h:50a",
            "sip:h:\u0665\u0660",
            "sip:h:-1",
            "sip:[::1]:99999",
        ):
            self.assertRaises(SIPParseError, parse_uri, text)

    def test_other_schemes_opaque(self) -> None:
        """
        A non-SIP scheme is no error: scheme and opaque text are kept.
        """
        for text, scheme, opaque in [
            ("tel:+1-201-555-0123", "tel", "+1-201-555-0123"),
            ("TEL:+358-555-1234567;postd=pp22", "tel", "+358-555-1234567;postd=pp22"),
            ("http://www.example.com/a?b=c", "http", "//www.example.com/a?b=c"),
            ("urn:service:sos", "urn", "service:sos"),
            ("im:alice@example.com", "im", "alice@example.com"),
        ]:
            uri = parse_uri(text)
            self.assertEqual((uri.scheme, uri.opaque), (scheme, opaque))
            self.assertFalse(uri.is_sip)
            self.assertEqual(str(uri), f"{scheme}:{opaque}")

    def test_malformed(self) -> None:
        """
        Malformed URIs raise L{SIPParseError} with status 400.
        """
        for text in [
            "",
            "alice@atlanta.com",
            ":foo",
            "1sip:x",
            "s p:x",
            "sip:",
            "sips:",
            "sip:@host",
            "sip::pw@host",
            "sip:a@",
            "sip:a@@b",
            "sip:a b@c",
            "sip:a@b c",
            "sip:[::1",
            "sip:[::1]x",
            "sip:[192.0.2.1]",
            "sip:[not:v6]",
            "sip:[]",
            "sip:host;",
            "sip:host;=x",
            "sip:host;a=",
            "sip:host;a=b=c",
            "sip:host;a b",
            "sip:host?",
            "sip:host?a",
            "sip:host?=v",
            "sip:host?a=b&",
            "sip:host?a=b;c",
            "sip:ho_st-.com",
            "sip:-host.com",
            "sip:ho..st",
            "sip:1.2.3",
            "sip:256.1.1.1",
            "sip:1.2.3.4.5",
            "sip:h%41st",
            "sip:a%4@b",
            "sip:a%zz@b",
            "sip:host;maddr=bad..host",
            "sip:host;ttl=256",
            "sip:host;ttl=x",
            "sip:h\u00e9st",
            "sip:host\r\n",
            "tel:",
            "tel:a b",
            "tel:<x>",
            'sip:a"b@c',
        ]:
            with self.assertRaises(SIPParseError, msg=repr(text)) as caught:
                parse_uri(text)
            self.assertEqual(caught.exception.status, 400)

    def test_error_reason_safe(self) -> None:
        """
        The reason of an error is short and carries no raw CR or LF, so it
        can be used as a reason phrase.
        """
        with self.assertRaises(SIPParseError) as caught:
            parse_uri("sip:a\r\nX-Injected: 1@" + "b" * 500 + "!")
        self.assertNotIn("\r", caught.exception.reason)
        self.assertNotIn("\n", caught.exception.reason)
        self.assertLess(len(caught.exception.reason), 120)

    def test_round_trip(self) -> None:
        """
        Well-formed URIs are written back unchanged.
        """
        for text in [
            "sip:alice@atlanta.com",
            "sips:alice:pw@atlanta.com:5061;transport=TCP;lr",
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            "sip:%61lice@atlanta.com;x=%3B?to=sip:bob%40biloxi.com&subject=a%20b",
            "sip:[2001:db8::10]:5070;maddr=[2001:db8::1];ttl=1",
            "sip:192.0.2.1;lr;ob",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            "sip:host.example.com.",
            "tel:+1-201-555-0123;phone-context=example.com",
        ]:
            self.assertEqual(str(parse_uri(text)), text)

    def test_build(self) -> None:
        """
        A URI built in code serialises with brackets around IPv6.
        """
        uri = URI(host="::1", port=5070, params={"transport": "tcp", "lr": None})
        self.assertEqual(str(uri), "sip:[::1]:5070;transport=tcp;lr")
        uri = dataclasses.replace(uri, user="bob", headers=(("Subject", "x"),))
        self.assertEqual(str(uri), "sip:bob@[::1]:5070;transport=tcp;lr?Subject=x")
        self.assertEqual(str(URI("tel", opaque="+123")), "tel:+123")


class IPv6ABNFBugTests(TestCase):
    """
    RFC 5118 §4.10: the IPv6 reference with a third colon before an
    embedded IPv4 address, which RFC 3261's ABNF let through, is accepted
    as the address it means.
    """

    def test_three_colons(self) -> None:
        uri = parse_uri("sip:user@[2001:db8:::192.0.2.1]")
        self.assertEqual(uri.host, "2001:db8::192.0.2.1")
        self.assertTrue(uri_equal(uri, "sip:user@[2001:db8::192.0.2.1]"))

    def test_other_extra_colons_refused(self) -> None:
        for text in ("sip:[2001:db8:::1]", "sip:[2001:::db8::192.0.2.1]", "sip:[::::192.0.2.1]"):
            with self.assertRaises(SIPParseError, msg=text):
                parse_uri(text)


class URIEqualTests(TestCase):
    """
    L{uri_equal} follows RFC 3261 §19.1.4.
    """

    # RFC 3261 §19.1.4: "The URIs within each of the following sets are
    # equivalent".
    EQUIVALENT_SETS = (
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        (
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5",
            "sip:carol@chicago.com;security=on",
        ),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    )

    # RFC 3261 §19.1.4: "The URIs within each of the following sets are
    # not equivalent".
    DIFFERENT_PAIRS = (
        # different usernames
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        # can resolve to different ports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        # can resolve to different transports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        # can resolve to different port and transports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        # different header component
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        # even though that's what phone21.boxesbybob.com resolves to
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        # "Note that equality is not transitive"
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    )

    def test_rfc_equivalent(self) -> None:
        """
        Every pair inside each RFC equivalence set compares equal, both
        ways and as parsed objects.
        """
        for group in self.EQUIVALENT_SETS:
            for a in group:
                for b in group:
                    self.assertTrue(uri_equal(a, b), f"{a} != {b}")
                    self.assertTrue(uri_equal(parse_uri(a), parse_uri(b)))

    def test_rfc_not_equivalent(self) -> None:
        """
        The RFC's not-equivalent pairs differ, both ways.
        """
        for a, b in self.DIFFERENT_PAIRS:
            self.assertFalse(uri_equal(a, b), f"{a} == {b}")
            self.assertFalse(uri_equal(b, a), f"{b} == {a}")

    def test_scheme(self) -> None:
        """
        A SIP and a SIPS URI are never equivalent.
        """
        self.assertFalse(uri_equal("sip:bob@biloxi.com", "sips:bob@biloxi.com"))
        self.assertTrue(uri_equal("SIPS:bob@biloxi.com", "sips:bob@biloxi.com"))

    def test_escapes_any_hex_pair(self) -> None:
        """
        C{%XX} of an unreserved character equals the character for any hex
        pair (Net::SIP only decoded pairs of letters), in either hex case.
        """
        self.assertTrue(uri_equal("sip:%41lice@atlanta.com", "sip:Alice@atlanta.com"))
        self.assertTrue(uri_equal("sip:%61lice@atlanta.com", "sip:alice@atlanta.com"))
        self.assertTrue(uri_equal("sip:a%7eb@atlanta.com", "sip:a%7Eb@atlanta.com"))
        self.assertTrue(uri_equal("sip:a%7eb@atlanta.com", "sip:a~b@atlanta.com"))
        self.assertTrue(uri_equal("sip:x@h;foo=%62ar", "sip:x@h;foo=bar"))
        self.assertFalse(uri_equal("sip:%41lice@atlanta.com", "sip:alice@atlanta.com"))

    def test_reserved_escapes(self) -> None:
        """
        An escaped reserved character is not the character itself, but
        two spellings of the same escape are equal.
        """
        self.assertFalse(uri_equal("sip:a%3Bb@atlanta.com", "sip:a;b@atlanta.com"))
        self.assertTrue(uri_equal("sip:a%3bb@atlanta.com", "sip:a%3Bb@atlanta.com"))

    def test_user_password(self) -> None:
        """
        User and password are case-sensitive; omitting one never equals
        having one.
        """
        self.assertFalse(uri_equal("sip:Bob@biloxi.com", "sip:bob@biloxi.com"))
        self.assertFalse(uri_equal("sip:bob@biloxi.com", "sip:biloxi.com"))
        self.assertFalse(uri_equal("sip:bob:pw@biloxi.com", "sip:bob@biloxi.com"))
        self.assertFalse(uri_equal("sip:bob:PW@biloxi.com", "sip:bob:pw@biloxi.com"))
        self.assertTrue(uri_equal("sip:bob:pw@biloxi.com", "sip:bob:pw@BILOXI.com"))

    def test_significant_params(self) -> None:
        """
        user, ttl, method, maddr and transport must match when either URI
        has them; values compare case-insensitively.
        """
        for param in ("user=phone", "ttl=1", "method=INVITE", "maddr=192.0.2.1", "transport=tcp"):
            self.assertFalse(uri_equal(f"sip:h;{param}", "sip:h"), param)
            self.assertFalse(uri_equal("sip:h", f"sip:h;{param}"), param)
            self.assertTrue(uri_equal(f"sip:h;{param}", f"sip:h;{param.upper()}"), param)
        self.assertFalse(uri_equal("sip:h;maddr=192.0.2.1", "sip:h;maddr=192.0.2.2"))

    def test_other_params(self) -> None:
        """
        Other parameters only count when both URIs carry them (so C{lr} is
        ignored when only one side has it).
        """
        self.assertTrue(uri_equal("sip:p.example.com;lr", "sip:p.example.com"))
        self.assertTrue(uri_equal("sip:h;a=1", "sip:h;b=2"))
        self.assertFalse(uri_equal("sip:h;a=1", "sip:h;a=2"))
        self.assertFalse(uri_equal("sip:h;a", "sip:h;a=1"))

    def test_headers(self) -> None:
        """
        Headers are never ignored: names compare case-insensitively and
        order does not matter.
        """
        self.assertTrue(uri_equal("sip:h?Subject=x", "sip:h?subject=x"))
        self.assertFalse(uri_equal("sip:h?subject=x", "sip:h?subject=y"))
        self.assertFalse(uri_equal("sip:h?a=1&a=1", "sip:h?a=1"))

    def test_ipv6_spellings(self) -> None:
        """
        Two spellings of one IPv6 address are the same host.
        """
        self.assertTrue(uri_equal("sip:[2001:DB8::1]", "sip:[2001:db8:0:0::1]"))
        self.assertFalse(uri_equal("sip:[2001:db8::1]", "sip:[2001:db8::2]"))
        self.assertFalse(uri_equal("sip:[2001:db8::1]:5060", "sip:[2001:db8::1]"))

    def test_opaque(self) -> None:
        """
        Non-SIP URIs are equal when scheme and opaque text are identical.
        """
        self.assertTrue(uri_equal("tel:+123", "TEL:+123"))
        self.assertFalse(uri_equal("tel:+123", "tel:+124"))
        self.assertFalse(uri_equal("tel:+123", "sip:+123@h"))

    def test_built_objects(self) -> None:
        """
        URIs built in code compare like parsed ones (upper-case host,
        upper-case parameter name).
        """
        built = URI(user="alice", host="AtLanTa.com", params={"Transport": "TCP"})
        self.assertTrue(uri_equal(built, "sip:alice@atlanta.com;transport=tcp"))

    def test_malformed_text(self) -> None:
        """
        Text that is no URI raises L{SIPParseError}.
        """
        self.assertRaises(SIPParseError, uri_equal, "sip:a@", "sip:a@b")
        self.assertRaises(SIPParseError, same_hop, "sip:a@b", "nothing")


class SameHopTests(TestCase):
    """
    L{same_hop}: lenient comparison used for our own Route entries.
    """

    def test_default_ports(self) -> None:
        """
        An absent port is the scheme's default port.
        """
        self.assertTrue(same_hop("sip:p.example.com", "sip:p.example.com:5060"))
        self.assertTrue(same_hop("sips:p.example.com:5061", "sips:p.example.com"))
        self.assertFalse(same_hop("sip:p.example.com", "sip:p.example.com:5061"))
        self.assertFalse(same_hop("sips:p.example.com", "sips:p.example.com:5060"))

    def test_case_and_params(self) -> None:
        """
        Host case and every parameter are ignored.
        """
        self.assertTrue(same_hop("sip:P.Example.COM;lr", "sip:p.example.com:5060;transport=tcp"))
        self.assertTrue(same_hop(parse_uri("sip:192.0.2.1;lr;ftag=1"), "sip:192.0.2.1"))

    def test_differences(self) -> None:
        """
        Scheme, user and host still count.
        """
        self.assertFalse(same_hop("sip:p.example.com", "sips:p.example.com:5060"))
        self.assertFalse(same_hop("sip:a@p.example.com", "sip:p.example.com"))
        self.assertFalse(same_hop("sip:a@p.example.com", "sip:A@p.example.com"))
        self.assertTrue(same_hop("sip:%61@p.example.com", "sip:a@p.example.com"))
        self.assertFalse(same_hop("sip:p.example.com", "sip:q.example.com"))

    def test_ipv6(self) -> None:
        """
        IPv6 hosts compare by address.
        """
        self.assertTrue(same_hop("sip:[2001:DB8::1];lr", "sip:[2001:db8:0::1]:5060"))
        self.assertFalse(same_hop("sip:[::1]:5070", "sip:[::1]"))

    def test_opaque(self) -> None:
        """
        Non-SIP URIs are the same hop only when identical.
        """
        self.assertTrue(same_hop("tel:+1", "tel:+1"))
        self.assertFalse(same_hop("tel:+1", "tel:+2"))


class ParseParamsTests(TestCase):
    """
    L{parse_params} on header parameters.
    """

    def test_forms(self) -> None:
        """
        Names lower-cased, values as written, bare names map to None,
        order kept; blanks around C{;} and C{=} allowed.
        """
        params = parse_params(' ;Tag=A6c85Cf ; lr;q = 0.5;x="a;b,c"')
        self.assertEqual(
            list(params.items()),
            [("tag", "A6c85Cf"), ("lr", None), ("q", "0.5"), ("x", '"a;b,c"')],
        )

    def test_empty(self) -> None:
        """
        No text, no parameters.
        """
        self.assertEqual(parse_params(""), {})
        self.assertEqual(parse_params("  "), {})

    def test_host_values(self) -> None:
        """
        gen-value may be a host, including an IPv6 reference.
        """
        self.assertEqual(
            parse_params(";received=[2001:db8::1];maddr=2001:db8::2"),
            {"received": "[2001:db8::1]", "maddr": "2001:db8::2"},
        )

    def test_duplicate(self) -> None:
        """
        A repeated name keeps its first position and its last value.
        """
        self.assertEqual(list(parse_params(";a=1;b;a=2").items()), [("a", "2"), ("b", None)])

    def test_malformed(self) -> None:
        """
        Malformed parameters raise L{SIPParseError}.
        """
        for text in [
            "a=b",
            ";",
            ";;a",
            ";a=",
            ";a=b c",
            ';a="open',
            ";a=<x>",
            ";a@b",
            ";a=b,",
            ";a=\u00e9",
            ';a="\\\n"',
            ";a=b;",
        ]:
            self.assertRaises(SIPParseError, parse_params, text)


class NameAddrTests(TestCase):
    """
    L{parse_name_addr} and L{NameAddr} (RFC 3261 §20.10, §25.1).
    """

    def test_quoted_display(self) -> None:
        """
        A quoted display name is unquoted and unescaped; commas,
        semicolons and angle brackets inside it are plain text.
        """
        value = parse_name_addr('"Smith, Bob; \\"the <boss>\\"" <sip:bob@biloxi.com>;tag=1928')
        self.assertEqual(value.display, 'Smith, Bob; "the <boss>"')
        self.assertEqual(str(value.uri), "sip:bob@biloxi.com")
        self.assertEqual(value.params, {"tag": "1928"})
        self.assertEqual(value.tag, "1928")
        self.assertTrue(value.bracketed)
        self.assertEqual(str(value), '"Smith, Bob; \\"the <boss>\\"" <sip:bob@biloxi.com>;tag=1928')

    def test_token_display(self) -> None:
        """
        A display name of token words (RFC 3261 §25.1 C{*(token LWS)}); it
        is written back quoted.
        """
        value = parse_name_addr("Bob  B.   Smith <sip:bob@biloxi.com>")
        self.assertEqual(value.display, "Bob B. Smith")
        self.assertEqual(str(value), '"Bob B. Smith" <sip:bob@biloxi.com>')
        self.assertEqual(parse_name_addr("Bob<sip:b@h>").display, "Bob")

    def test_empty_and_utf8_display(self) -> None:
        """
        An empty quoted display name differs from none; UTF-8 is allowed.
        """
        value = parse_name_addr('"" <sip:b@h>')
        self.assertEqual(value.display, "")
        self.assertEqual(str(value), '"" <sip:b@h>')
        self.assertEqual(parse_name_addr('"J\u00f6rg \u65e5" <sip:j@h>').display, "J\u00f6rg \u65e5")

    def test_uri_params_vs_header_params(self) -> None:
        """
        Inside brackets the parameters belong to the URI; after them, to
        the header.
        """
        value = parse_name_addr("<sip:p1.example.com;lr>;foo=bar")
        self.assertEqual(value.uri.params, {"lr": None})
        self.assertEqual(value.params, {"foo": "bar"})
        self.assertIsNone(value.display)
        self.assertIsNone(value.tag)
        self.assertEqual(str(value), "<sip:p1.example.com;lr>;foo=bar")

    def test_bare_addr_spec(self) -> None:
        """
        RFC 3261 §20.10: in a bare addr-spec the parameters are header
        parameters; the value is written back bare.
        """
        value = parse_name_addr("sip:alice@atlanta.com ; tag=88sja8x")
        self.assertEqual(str(value.uri), "sip:alice@atlanta.com")
        self.assertEqual(value.uri.params, {})
        self.assertEqual(value.params, {"tag": "88sja8x"})
        self.assertFalse(value.bracketed)
        self.assertEqual(str(value), "sip:alice@atlanta.com;tag=88sja8x")
        value = parse_name_addr("tel:+1-201-555-0123;phone-context=x")
        self.assertEqual(value.uri.opaque, "+1-201-555-0123")
        self.assertEqual(value.params, {"phone-context": "x"})

    def test_contact_params(self) -> None:
        """
        Contact parameters with quoted values containing "<", ">" and ";"
        (RFC 5626 +sip.instance), in both forms.
        """
        text = (
            "<sip:a@[2001:db8::1]:5070;ob>;reg-id=1;"
            '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";expires=60'
        )
        value = parse_name_addr(text)
        self.assertEqual(value.uri.host, "2001:db8::1")
        self.assertEqual(value.params["+sip.instance"], '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"')
        self.assertEqual(str(value), text)
        value = parse_name_addr('sip:a@h;+sip.instance="<urn:x>";q=0.7')
        self.assertEqual(value.params, {"+sip.instance": '"<urn:x>"', "q": "0.7"})

    def test_round_trip(self) -> None:
        """
        Bracketed and bare values are written back unchanged.
        """
        for text in [
            '"Alice" <sip:alice@atlanta.com>;tag=1928301774',
            "<sip:ss2.biloxi.example.com;lr>",
            "<sips:[2001:db8::1]:5061;transport=tcp;lr>",
            "sip:bob@biloxi.com;tag=a6c85cf",
            "<tel:+1-201-555-0123>",
            '"\\\\" <sip:x@y>',
        ]:
            self.assertEqual(str(parse_name_addr(text)), text)

    def test_brackets_forced(self) -> None:
        """
        An unbracketed value is still written in brackets when it needs
        them: a display name, or a URI with parameters, headers or ";".
        """
        self.assertEqual(str(NameAddr(parse_uri("sip:h"), display="A", bracketed=False)), '"A" <sip:h>')
        self.assertEqual(
            str(NameAddr(parse_uri("sip:h;lr"), params={"tag": "1"}, bracketed=False)),
            "<sip:h;lr>;tag=1",
        )
        self.assertEqual(str(NameAddr(parse_uri("tel:+1;x=y"), bracketed=False)), "<tel:+1;x=y>")
        self.assertEqual(str(NameAddr(parse_uri("sip:h"))), "<sip:h>")

    def test_wildcard(self) -> None:
        """
        The wildcard Contact C{*} is not a name-addr: callers check it first.
        """
        with self.assertRaises(SIPParseError) as caught:
            parse_name_addr(" * ")
        self.assertEqual(caught.exception.status, 400)

    def test_malformed(self) -> None:
        """
        Malformed values raise L{SIPParseError}.
        """
        for text in [
            "",
            "   ",
            "<>",
            "<sip:h",
            "sip:h>",
            '"Bob <sip:h>',
            '"Bob" sip:h',
            "Bob sip:h",
            "<sip:h> junk",
            "<sip:h>;",
            "<sip:h>;ta g=1",
            "<sip:h>;tag=",
            "<sip:a@>",
            "< sip:h>",
            "<sip:h >",
            "Bob@x <sip:h>",
            "B\u00f6b <sip:h>",
            "sip:a@b junk",
            "sip:2001:db8::1",
            "<sip:h>,<sip:i>",
            '"a" "b" <sip:h>',
            "<sip:h>>",
            "nothing",
        ]:
            with self.assertRaises(SIPParseError, msg=repr(text)):
                parse_name_addr(text)


class ViaTests(TestCase):
    """
    L{parse_via} and L{Via} (RFC 3261 §20.42, RFC 3581, RFC 5923, RFC 5118).
    """

    def test_fields(self) -> None:
        """
        Every part of a via-parm lands in its field.
        """
        via = parse_via("SIP/2.0/udp PC33.Atlanta.COM:5066;branch=z9hG4bK776asdhds;x=Y;rport")
        self.assertEqual(via.protocol, "SIP/2.0")
        self.assertEqual(via.transport, "UDP")
        self.assertEqual(via.host, "pc33.atlanta.com")
        self.assertEqual(via.port, 5066)
        self.assertEqual(via.sent_by, "pc33.atlanta.com:5066")
        self.assertEqual(
            list(via.params.items()),
            [("branch", "z9hG4bK776asdhds"), ("x", "Y"), ("rport", None)],
        )
        self.assertEqual(via.branch, "z9hG4bK776asdhds")
        self.assertEqual(str(via), "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;x=Y;rport")

    def test_lws(self) -> None:
        """
        RFC 4475 §3.1.1.1 (wsinv), once unfolded: blanks around the slashes,
        around ";" and "=", and around the sent-by colon.
        """
        via = parse_via("SIP  /   2.0 /UDP\t 192.0.2.2 : 5060 ;  branch = 390skdjuw ")
        self.assertEqual((via.protocol, via.transport), ("SIP/2.0", "UDP"))
        self.assertEqual((via.host, via.port), ("192.0.2.2", 5060))
        self.assertEqual(via.branch, "390skdjuw")
        self.assertEqual(str(via), "SIP/2.0/UDP 192.0.2.2:5060;branch=390skdjuw")

    def test_ipv6_sent_by(self) -> None:
        """
        RFC 5118: the sent-by host is a bracketed IPv6 reference.
        """
        via = parse_via("SIP/2.0/TCP [2001:DB8::9:1]:5070;branch=z9hG4bK1")
        self.assertEqual((via.host, via.port), ("2001:db8::9:1", 5070))
        self.assertEqual(via.sent_by, "[2001:db8::9:1]:5070")
        self.assertEqual(str(via), "SIP/2.0/TCP [2001:db8::9:1]:5070;branch=z9hG4bK1")
        via = parse_via("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbzi")
        self.assertEqual(via.host, "::ffff:192.0.2.10")

    def test_received_both_forms(self) -> None:
        """
        RFC 5118 §4.5: received with and without brackets around IPv6.
        """
        first = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-111")
        second = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
        self.assertEqual(first.received, "2001:db8::9:255")
        self.assertEqual(second.received, "2001:db8::9:255")
        self.assertEqual(first.params["received"], "[2001:db8::9:255]")
        self.assertEqual(parse_via("SIP/2.0/UDP h;received=192.0.2.1").received, "192.0.2.1")

    def test_rport_forms(self) -> None:
        """
        RFC 3581: rport is absent (None), present without value (""), or
        carries digits.
        """
        self.assertIsNone(parse_via("SIP/2.0/UDP h;branch=z9hG4bK1").rport)
        self.assertEqual(parse_via("SIP/2.0/UDP h;rport;branch=z9hG4bK1").rport, "")
        self.assertEqual(parse_via("SIP/2.0/UDP h;rport=5062").rport, "5062")
        self.assertEqual(parse_via("SIP/2.0/UDP h;RPORT = 5062").rport, "5062")

    def test_edit_keeps_order(self) -> None:
        """
        Setting an existing parameter keeps its place, a new one is
        appended, None removes; the RFC 3581 server rewrite of a request.
        """
        via = parse_via("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKA;x")
        via.received = "192.0.2.7"
        via.rport = "25092"
        self.assertEqual(
            str(via), "SIP/2.0/UDP 10.0.0.1:5060;rport=25092;branch=z9hG4bKA;x;received=192.0.2.7"
        )
        via.rport = ""
        via.branch = "z9hG4bKB"
        self.assertEqual(via.rport, "")
        self.assertEqual(str(via), "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKB;x;received=192.0.2.7")
        via.received = None
        via.rport = None
        via.branch = None
        self.assertEqual(str(via), "SIP/2.0/UDP 10.0.0.1:5060;x")
        self.assertIsNone(via.rport)
        self.assertIsNone(via.received)

    def test_other_params(self) -> None:
        """
        maddr, ttl, alias (RFC 5923) and extension parameters.
        """
        via = parse_via('SIP/2.0/UDP h;maddr=[FF02::1];ttl=16;alias;comp=sigcomp;sigcomp-id="x;y"')
        self.assertEqual(via.maddr, "ff02::1")
        self.assertEqual(via.ttl, 16)
        self.assertTrue(via.alias)
        self.assertEqual(via.params["sigcomp-id"], '"x;y"')
        plain = parse_via("SIP/2.0/TLS h.example.com")
        self.assertFalse(plain.alias)
        self.assertIsNone(plain.maddr)
        self.assertIsNone(plain.ttl)
        self.assertIsNone(plain.branch)
        self.assertIsNone(plain.port)
        self.assertEqual(plain.sent_by, "h.example.com")

    def test_other_transport(self) -> None:
        """
        Any transport token is accepted and upper-cased.
        """
        self.assertEqual(parse_via("SIP/2.0/sctp h").transport, "SCTP")
        self.assertEqual(parse_via("SIP/2.0/WSS h").transport, "WSS")

    def test_build(self) -> None:
        """
        A Via built in code writes IPv6 in brackets.
        """
        via = Via(transport="TCP", host="::1", port=5060, params={"branch": "z9hG4bKx"})
        via.rport = ""
        self.assertEqual(str(via), "SIP/2.0/TCP [::1]:5060;branch=z9hG4bKx;rport")
        self.assertEqual(str(Via(host="h")), "SIP/2.0/UDP h")

    def test_round_trip(self) -> None:
        """
        Canonically written values come back unchanged.
        """
        for text in [
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.9",
            "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK1;alias",
            "SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1;received=2001:db8::9:255",
        ]:
            self.assertEqual(str(parse_via(text)), text)

    def test_malformed(self) -> None:
        """
        Malformed Via values raise L{SIPParseError} with status 400.
        """
        for text in [
            "",
            "SIP/2.0",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP ",
            "SIP/2.0 UDP h",
            "SIP//UDP h",
            "SIP/2.0/UDPh",
            "SIP/2.0/UDP2.0.0.1",
            "SIP/2.0/UDP 2001:db8::1",
            "SIP/2.0/UDP [2001:db8::1",
            "SIP/2.0/UDP [h]",
            "SIP/2.0/UDP h:",
            "SIP/2.0/UDP h:70000",
            "SIP/2.0/UDP h:50x",
            "SIP/2.0/UDP h;branch",
            "SIP/2.0/UDP h;branch=",
            'SIP/2.0/UDP h;branch="x"',
            "SIP/2.0/UDP h;received=host.com",
            "SIP/2.0/UDP h;received",
            "SIP/2.0/UDP h;received=[192.0.2.1",
            "SIP/2.0/UDP h;rport=x",
            "SIP/2.0/UDP h;rport=70000",
            "SIP/2.0/UDP h;ttl=256",
            "SIP/2.0/UDP h;ttl",
            "SIP/2.0/UDP h;maddr",
            "SIP/2.0/UDP h;maddr=a..b",
            "SIP/2.0/UDP h, SIP/2.0/UDP i",
            "SIP/2.0/UDP h junk",
            "SIP/2.0/UDP h;",
            "SIP/2.0/UDP h\u00e9",
            "SIP/2.0/UDP 1.2.3",
        ]:
            with self.assertRaises(SIPParseError, msg=repr(text)) as caught:
                parse_via(text)
            self.assertEqual(caught.exception.status, 400)


# Fragments that steer random text into the parsers' deeper branches.
_FRAGMENTS = st.sampled_from(
    [
        "sip:",
        "sips:",
        "tel:",
        "SIP/2.0/UDP ",
        "[",
        "]",
        "[::1]",
        "<",
        ">",
        '"',
        "\\",
        ";",
        "=",
        "@",
        "?",
        "&",
        "%",
        "%4",
        "%41",
        ":",
        "::",
        " ",
        "\t",
        ",",
        ".",
        "-",
        "a",
        "Z",
        "0",
        "5060",
        "65536",
        "lr",
        "branch=z9hG4bK",
        "received=",
        "rport",
        "maddr=",
        "ttl=",
        "tag=",
        "*",
        "\u00e9",
        "\x00",
        "\r\n",
    ]
)
_TEXT = st.one_of(st.text(max_size=80), st.lists(_FRAGMENTS, max_size=30).map("".join))


class FuzzTests(TestCase):
    """
    Random input: the parsers raise nothing but L{SIPParseError}, and what
    they accept is written in a form they parse back to the same text.
    """

    @settings(max_examples=400, deadline=None, database=None)
    @given(_TEXT)
    def test_parse_uri(self, text: str) -> None:
        try:
            uri = parse_uri(text)
        except SIPParseError:
            return
        self.assertEqual(str(parse_uri(str(uri))), str(uri))

    @settings(max_examples=400, deadline=None, database=None)
    @given(_TEXT)
    def test_parse_via(self, text: str) -> None:
        try:
            via = parse_via(text)
        except SIPParseError:
            return
        self.assertEqual(str(parse_via(str(via))), str(via))

    @settings(max_examples=400, deadline=None, database=None)
    @given(_TEXT)
    def test_parse_name_addr(self, text: str) -> None:
        try:
            value = parse_name_addr(text)
        except SIPParseError:
            return
        self.assertEqual(str(parse_name_addr(str(value))), str(value))

    @settings(max_examples=200, deadline=None, database=None)
    @given(_TEXT)
    def test_parse_params(self, text: str) -> None:
        try:
            parse_params(text)
        except SIPParseError:
            pass


_VIA_TEXT = st.one_of(
    _TEXT,
    st.lists(_FRAGMENTS, max_size=12).map(lambda parts: "SIP/2.0/UDP h" + "".join(parts)),
)
_NAME_TEXT = st.one_of(
    _TEXT,
    st.lists(_FRAGMENTS, max_size=12).map(lambda parts: "<sip:a@b>" + "".join(parts)),
)


class FastReadTests(TestCase):
    """
    L{via_branch} and L{header_tag} agree with the full parsers on every
    value those accept, and raise only L{SIPParseError}.
    """

    def test_examples(self) -> None:
        self.assertEqual(via_branch("SIP/2.0/UDP h:5060;branch=z9hG4bKab;rport"), "z9hG4bKab")
        self.assertEqual(via_branch("SIP/2.0/UDP h ; BRANCH = z9hG4bKab"), "z9hG4bKab")
        self.assertIsNone(via_branch("SIP/2.0/UDP h;received=1.2.3.4"))
        self.assertEqual(header_tag('"A" <sip:a@b>;tag=x1'), "x1")
        self.assertEqual(header_tag("<sip:a@b;tag=uri>;tag=hdr"), "hdr")
        self.assertIsNone(header_tag("<sip:a@b;tag=uri>"))
        self.assertEqual(header_tag("sip:a@b;tag=bare"), "bare")

    @settings(max_examples=400, deadline=None, database=None)
    @given(_VIA_TEXT)
    def test_via_branch(self, text: str) -> None:
        try:
            expected = parse_via(text).branch
        except SIPParseError:
            try:
                via_branch(text)
            except SIPParseError:
                pass
            return
        self.assertEqual(via_branch(text), expected)

    @settings(max_examples=400, deadline=None, database=None)
    @given(_NAME_TEXT)
    def test_header_tag(self, text: str) -> None:
        try:
            expected = parse_name_addr(text).tag
        except SIPParseError:
            try:
                header_tag(text)
            except SIPParseError:
                pass
            return
        self.assertEqual(header_tag(text), expected)


_PLAIN_VIA = st.builds(
    lambda transport, host, port, params: f"SIP/2.0/{transport} {host}{port}{params}",
    st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "XYZ"]),
    st.sampled_from(
        ["127.0.0.1", "h.example", "H-1.Example.COM", "1.2.3", "999.1.1.1", "a_b", "-x", "1.2.3.4."]
    ),
    st.sampled_from(["", ":5060", ":0", ":65535", ":65536", ":99999", ":007"]),
    st.lists(
        st.sampled_from(
            [
                ";branch=z9hG4bKa",
                ";BRANCH=z9hG4bKB",
                ";branch",
                ";rport",
                ";rport=5",
                ";rport=x",
                ";received=127.0.0.1",
                ";received=::1",
                ";received=[::1]",
                ";received=nope",
                ";maddr=h.x",
                ";maddr=[::1]",
                ";ttl=1",
                ";ttl=300",
                ";alias",
                ";x=y",
                ";X=Y",
                ";x=y",
            ]
        ),
        max_size=5,
    ).map("".join),
)


class ViaFastPathTests(TestCase):
    """
    The plain-form fast path of L{parse_via} gives exactly what the full
    parser gives, errors included.
    """

    @settings(max_examples=500, deadline=None, database=None)
    @given(_PLAIN_VIA)
    def test_same_as_full_parser(self, text: str) -> None:
        from sipleg.uri import _parse_via

        try:
            expected = _parse_via(text)
        except SIPParseError:
            self.assertRaises(SIPParseError, parse_via, text)
            return
        self.assertEqual(parse_via(text), expected)
