"""
What hostile input can leave behind in the process is bounded: caches keyed
by what peers send keep only short keys.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sipleg import message, uri
from sipleg.address import Address
from sipleg.leg import Leg
from sipleg.transport.memory import MemorySocketPool
from sipleg.uri import parse_uri, route_uri


def invite(extra: str = "", call_id: str = "c1@example.org") -> bytes:
    return (
        "INVITE sip:bob@192.0.2.20 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.1:5061;branch=z9hG4bK-1\r\n"
        "From: <sip:alice@example.org>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class BoundsTests(TestCase):
    def test_invented_header_names_not_kept(self) -> None:
        """
        Header names no real header has are neither cached nor interned
        once they are long: 3,000 distinct 4 KiB names leave the name
        cache holding only short keys.
        """
        for n in range(3000):
            message.parse_message(invite(f"X-{n:05d}{'a' * 4096}: 1\r\n"))
        self.assertTrue(all(len(key) <= 64 for key in message._WIRE_KEYS))

    def test_long_uris_not_cached(self) -> None:
        """
        URI parses are cached for short texts only.
        """
        uri._parse_uri_cached.cache_clear()
        uri._route_uri_cached.cache_clear()
        before = (0, 0)
        for n in range(50):
            long = f"sip:{n}{'a' * 1000}@example.com"
            parse_uri(long)
            route_uri(f"<{long};lr>")
        after = (uri._parse_uri_cached.cache_info().currsize, uri._route_uri_cached.cache_info().currsize)
        self.assertEqual(after, before)
        parse_uri("sip:short-and-new@example.com")
        self.assertEqual(uri._parse_uri_cached.cache_info().currsize, before[0] + 1)

    def test_long_transaction_ids_not_remembered(self) -> None:
        """
        A stream leg remembers which connection a request came on, by its
        transaction id, only for ids of a sane length.
        """
        pool = MemorySocketPool(Address("127.0.0.1", 5060, "tcp"))
        leg = Leg(socketpool=pool)
        source = Address("192.0.2.1", 40000, "tcp")
        pool.deliver(invite(call_id="short@example.org"), source, object())
        pool.deliver(invite(call_id="x" * 1000 + "@example.org"), source, object())
        self.assertEqual([tid.split()[0] for tid in leg._tid_connections], ["short@example.org"])
