"""
Tests for L{sipleg.address}.
"""

from __future__ import annotations

import socket

from twisted.trial import unittest

from sipleg.address import Address, bracket, default_port, ip_family, split_hostport


class IPFamilyTests(unittest.TestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(ip_family("127.0.0.1"), socket.AF_INET)

    def test_ipv6(self) -> None:
        self.assertEqual(ip_family("::1"), socket.AF_INET6)
        self.assertEqual(ip_family("2001:db8::10"), socket.AF_INET6)

    def test_names_and_garbage(self) -> None:
        for text in ("example.com", "", "1.2.3", "256.1.1.1", "[::1]", "::g", "1.2.3.4a"):
            self.assertIsNone(ip_family(text), text)


class SplitHostPortTests(unittest.TestCase):
    def test_forms(self) -> None:
        self.assertEqual(split_hostport("host"), ("host", None))
        self.assertEqual(split_hostport("host:5070"), ("host", 5070))
        self.assertEqual(split_hostport("[::1]"), ("::1", None))
        self.assertEqual(split_hostport("[::1]:5070"), ("::1", 5070))
        self.assertEqual(split_hostport("2001:db8::1"), ("2001:db8::1", None))

    def test_errors(self) -> None:
        for text in ("", ":5060", "[::1", "[::1]x", "h:", "h:70000", "h:-1", "h:5a"):
            self.assertRaises(ValueError, split_hostport, text)


class AddressTests(unittest.TestCase):
    def test_ip_literal_is_resolved(self) -> None:
        a = Address("127.0.0.1", 5060)
        self.assertEqual((a.addr, a.family, a.proto), ("127.0.0.1", socket.AF_INET, "udp"))
        self.assertTrue(a.is_ip)
        self.assertEqual(a.sockaddr, ("127.0.0.1", 5060))

    def test_ipv6_canonical_and_bracketed(self) -> None:
        a = Address("[2001:DB8:0::10]", 5070, "tcp")
        self.assertEqual(a.host, "2001:db8::10")
        self.assertEqual(str(a), "[2001:db8::10]:5070")
        self.assertEqual(a, Address("2001:db8::10", 5070, "tcp"))

    def test_name_is_lowercased_and_unresolved(self) -> None:
        a = Address("PC33.Example.COM", 5060)
        self.assertEqual(a.host, "pc33.example.com")
        self.assertFalse(a.is_ip)
        self.assertRaises(ValueError, lambda: a.sockaddr)
        b = a.with_addr("192.0.2.4")
        self.assertEqual((b.host, b.addr, b.family), ("pc33.example.com", "192.0.2.4", socket.AF_INET))

    def test_parse_default_ports(self) -> None:
        self.assertEqual(Address.parse("h").port, 5060)
        self.assertEqual(Address.parse("h", "tls").port, 5061)
        self.assertEqual(Address.parse("h", port=7).port, 7)
        self.assertEqual(Address.parse("[::1]:5070", "tcp"), Address("::1", 5070, "tcp"))

    def test_transport_is_part_of_identity(self) -> None:
        self.assertNotEqual(Address("127.0.0.1", 5060, "udp"), Address("127.0.0.1", 5060, "tcp"))
        self.assertEqual(len({Address("127.0.0.1", 1), Address("127.0.0.1", 1)}), 1)

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, Address, "h", 5060, "sctp")
        self.assertRaises(ValueError, Address, "h", 70000)
        self.assertRaises(ValueError, Address, "", 1)
        self.assertRaises(ValueError, Address, "h", 1, "udp", None, "not-an-ip")

    def test_helpers(self) -> None:
        self.assertEqual(default_port("tls"), 5061)
        self.assertEqual(default_port("udp"), 5060)
        self.assertEqual(bracket("::1"), "[::1]")
        self.assertEqual(bracket("h"), "h")

    def test_port_digits_are_ascii_only(self) -> None:
        self.assertRaises(ValueError, split_hostport, "h:\u0665\u0660\u0666\u0660")
