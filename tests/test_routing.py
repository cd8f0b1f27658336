"""
Tests for L{sipleg.routing}: access policy, static routes, response target.
"""

from __future__ import annotations

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from sipleg.address import Address
from sipleg.message import Request
from sipleg.routing import (
    IAccessPolicy,
    IRoutePolicy,
    NetworkAccessPolicy,
    StaticRoutes,
    response_fallback,
    response_target,
)
from sipleg.uri import parse_uri, parse_via

REQUEST = Request("OPTIONS", "sip:bob@example.com")


class NetworkAccessPolicyTests(unittest.TestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAccessPolicy, NetworkAccessPolicy()))

    def test_default_is_loopback_only(self) -> None:
        policy = NetworkAccessPolicy()
        target = parse_uri("sip:bob@example.com")
        self.assertTrue(policy.allows(REQUEST, target, Address("127.0.0.1", 5060)))
        self.assertTrue(policy.allows(REQUEST, target, Address("127.8.9.1", 5060)))
        self.assertTrue(policy.allows(REQUEST, target, Address("::1", 5060)))
        self.assertFalse(policy.allows(REQUEST, target, Address("192.0.2.1", 5060)))
        self.assertFalse(policy.allows(REQUEST, target, Address("::2", 5060)))

    def test_foreign_sources_reach_our_domains_only(self) -> None:
        policy = NetworkAccessPolicy(domains=["Example.COM"])
        outsider = Address("192.0.2.1", 5060)
        self.assertTrue(policy.allows(REQUEST, parse_uri("sip:bob@example.com"), outsider))
        self.assertFalse(policy.allows(REQUEST, parse_uri("sip:bob@example.org"), outsider))

    def test_allow_cidr(self) -> None:
        policy = NetworkAccessPolicy(["192.0.2.0/24", "2001:db8::/32"])
        target = parse_uri("sip:x@elsewhere.test")
        self.assertTrue(policy.allows(REQUEST, target, Address("192.0.2.77", 1)))
        self.assertTrue(policy.allows(REQUEST, target, Address("::ffff:192.0.2.77", 1)))
        self.assertTrue(policy.allows(REQUEST, target, Address("2001:db8::5", 1)))
        self.assertFalse(policy.allows(REQUEST, target, Address("127.0.0.1", 1)))
        self.assertFalse(policy.allows(REQUEST, target, Address("name.test", 1)))

    def test_bad_cidr(self) -> None:
        self.assertRaises(ValueError, NetworkAccessPolicy, ["10.0.0.0/33"])
        self.assertRaises(ValueError, NetworkAccessPolicy, ["nonsense"])


class StaticRoutesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.exact = parse_uri("sip:10.0.0.1:5070")
        self.wild = parse_uri("sip:10.0.0.2")
        self.any = parse_uri("sip:10.0.0.3;transport=tcp")
        self.outbound = parse_uri("sip:outbound.test")

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRoutePolicy, StaticRoutes()))

    def test_lookup_order(self) -> None:
        routes = StaticRoutes(
            {"a.example.com": self.exact, "*.example.com": self.wild, "*": self.any},
            self.outbound,
        )
        self.assertIs(routes.next_hop(parse_uri("sip:u@A.example.com")), self.exact)
        self.assertIs(routes.next_hop(parse_uri("sip:u@b.c.example.com")), self.wild)
        self.assertIs(routes.next_hop(parse_uri("sip:u@example.org")), self.any)

    def test_outbound_proxy_but_not_for_our_domains(self) -> None:
        routes = StaticRoutes({}, self.outbound, domains=["example.com"])
        self.assertIs(routes.next_hop(parse_uri("sip:u@example.org")), self.outbound)
        self.assertIsNone(routes.next_hop(parse_uri("sip:u@example.com")))

    def test_nothing_configured(self) -> None:
        self.assertIsNone(StaticRoutes().next_hop(parse_uri("sip:u@example.org")))


class ResponseTargetTests(unittest.TestCase):
    def target(self, via: str) -> object:
        return response_target(parse_via(via))

    def test_sent_by(self) -> None:
        self.assertEqual(self.target("SIP/2.0/UDP 10.1.1.1:5999;branch=z9hG4bKa"), Address("10.1.1.1", 5999))
        self.assertEqual(
            self.target("SIP/2.0/TLS 10.1.1.1;branch=z9hG4bKa"), Address("10.1.1.1", 5061, "tls")
        )

    def test_received_and_rport(self) -> None:
        # An example verified against Net::SIP 0.835.
        self.assertEqual(
            self.target("SIP/2.0/UDP 10.1.1.1:5999;received=127.0.0.1;rport=25090;branch=z9hG4bKa"),
            Address("127.0.0.1", 25090),
        )
        self.assertEqual(
            self.target("SIP/2.0/TCP h.test:5070;rport;branch=z9hG4bKa"), Address("h.test", 5070, "tcp")
        )

    def test_maddr(self) -> None:
        self.assertEqual(
            self.target("SIP/2.0/UDP h.test;maddr=224.0.1.75;ttl=1;branch=z9hG4bKa"),
            Address("224.0.1.75", 5060),
        )

    def test_ipv6(self) -> None:
        self.assertEqual(
            self.target("SIP/2.0/UDP [2001:db8::9]:6060;branch=z9hG4bKa"), Address("2001:db8::9", 6060)
        )

    def test_unknown_transport(self) -> None:
        self.assertIsNone(self.target("SIP/2.0/SCTP 10.1.1.1;branch=z9hG4bKa"))


class ResponseFallbackTests(unittest.TestCase):
    """
    RFC 3261 §18.2.2: a stream response whose connection is gone goes to
    the sent-by port.
    """

    def fallback(self, via: str) -> object:
        return response_fallback(parse_via(via))

    def test_tcp_with_rport(self) -> None:
        self.assertEqual(
            self.fallback("SIP/2.0/TCP 10.1.1.1:5070;received=127.0.0.1;rport=40123;branch=z9hG4bKa"),
            Address("127.0.0.1", 5070, "tcp"),
        )
        self.assertEqual(
            self.fallback("SIP/2.0/TLS h.test;received=127.0.0.1;rport=40123;branch=z9hG4bKa"),
            Address("127.0.0.1", 5061, "tls"),
        )

    def test_none_when_nothing_to_fall_back_to(self) -> None:
        self.assertIsNone(self.fallback("SIP/2.0/UDP 10.1.1.1:5070;rport=40123;branch=z9hG4bKa"))
        self.assertIsNone(self.fallback("SIP/2.0/TCP 10.1.1.1:5070;branch=z9hG4bKa"))
        self.assertIsNone(self.fallback("SIP/2.0/TCP 10.1.1.1:5070;rport=5070;branch=z9hG4bKa"))
