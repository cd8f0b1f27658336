"""
L{sipleg.digest}: the hashes against the RFCs' own examples, credentials
parsing, challenges and stateless nonces.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from sipleg.digest import (
    Credentials,
    NonceState,
    challenge,
    check_nonce,
    digest_response,
    hash_a1,
    make_nonce,
    parse_credentials,
)

#: RFC 7616 §3.9.1.
RFC7616 = {
    "user": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nc": "00000001",
    "method": "GET",
    "uri": "/dir/index.html",
}


class HashTests(TestCase):
    def test_rfc7616_md5(self) -> None:
        v = RFC7616
        ha1 = hash_a1("MD5", v["user"], v["realm"], v["password"])
        self.assertEqual(
            digest_response("MD5", ha1, v["nonce"], v["nc"], v["cnonce"], v["method"], v["uri"]),
            "8ca523f5e9506fed4657c9700eebdbec",
        )

    def test_rfc7616_sha256(self) -> None:
        v = RFC7616
        ha1 = hash_a1("SHA-256", v["user"], v["realm"], v["password"])
        self.assertEqual(
            digest_response("SHA-256", ha1, v["nonce"], v["nc"], v["cnonce"], v["method"], v["uri"]),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        )

    def test_rfc2617(self) -> None:
        # RFC 2617 §3.5.
        ha1 = hash_a1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
        self.assertEqual(
            digest_response(
                "MD5",
                ha1,
                "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                "00000001",
                "0a4f113b",
                "GET",
                "/dir/index.html",
            ),
            "6629fae49393a05397450978507c4ef1",
        )

    def test_htdigest_line(self) -> None:
        # What `htdigest` writes for user "alice", realm "example.test",
        # password "secret": the MD5 of "alice:example.test:secret"
        # (as `printf alice:example.test:secret | md5sum` prints it).
        self.assertEqual(
            hash_a1("MD5", "alice", "example.test", "secret"), "4842575394a190ef4c973253ba19099c"
        )

    def test_sha512_256(self) -> None:
        self.assertEqual(len(hash_a1("SHA-512-256", "a", "b", "c")), 64)
        self.assertNotEqual(hash_a1("SHA-512-256", "a", "b", "c"), hash_a1("SHA-256", "a", "b", "c"))


class CredentialsTests(TestCase):
    def test_parse(self) -> None:
        value = (
            'Digest username="bob", realm="example.test",nonce="n1", uri="sip:example.test",'
            ' response="ABCDEF", algorithm=SHA-256, cnonce="c\\"x", qop=auth, nc=00000002'
        )
        self.assertEqual(
            parse_credentials(value),
            Credentials(
                "bob",
                "example.test",
                "n1",
                "sip:example.test",
                "abcdef",
                "SHA-256",
                'c"x',
                "auth",
                "00000002",
            ),
        )

    def test_defaults_and_refusals(self) -> None:
        parsed = parse_credentials('digest username="a"')
        assert parsed is not None
        self.assertEqual((parsed.algorithm, parsed.qop, parsed.nc), ("MD5", "", ""))
        for bad in (
            "Basic dXNlcjpwYXNz",
            'Digest username="unterminated',
            "Digest novalue",
            "Digest " + ", ".join(f"p{n}=1" for n in range(40)),
        ):
            self.assertIsNone(parse_credentials(bad), bad)

    def test_challenge(self) -> None:
        self.assertEqual(
            challenge("example.test", "N", "MD5"),
            'Digest realm="example.test", nonce="N", qop="auth", algorithm=MD5',
        )
        stale = challenge("r", "N", "SHA-256", stale=True)
        self.assertTrue(stale.endswith(", algorithm=SHA-256, stale=true"))


class NonceTests(TestCase):
    SECRET = b"0123456789abcdef0123456789abcdef"

    def test_fresh_stale_forged(self) -> None:
        nonce = make_nonce(self.SECRET, "example.test", 1000.0, b"12345678")
        self.assertEqual(len(nonce), 40)
        # Each challenge its own nonce.
        self.assertNotEqual(make_nonce(self.SECRET, "example.test", 1000.0, b"12345679"), nonce)
        check = check_nonce
        self.assertIs(check(self.SECRET, "example.test", nonce, 1000.0, 300), NonceState.FRESH)
        self.assertIs(check(self.SECRET, "example.test", nonce, 1300.0, 300), NonceState.FRESH)
        self.assertIs(check(self.SECRET, "example.test", nonce, 1301.0, 300), NonceState.STALE)
        # Another secret, another realm, a changed byte, junk: not ours.
        self.assertIs(check(b"x" * 32, "example.test", nonce, 1000.0, 300), NonceState.FORGED)
        self.assertIs(check(self.SECRET, "other.test", nonce, 1000.0, 300), NonceState.FORGED)
        changed = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
        self.assertIs(check(self.SECRET, "example.test", changed, 1000.0, 300), NonceState.FORGED)
        for junk in ("", "!" * 40, "a" * 1000):
            self.assertIs(check(self.SECRET, "example.test", junk, 1000.0, 300), NonceState.FORGED)
