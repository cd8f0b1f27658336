"""
Digest authentication in the request pass (L{sipleg.auth}): who is asked,
what a proof is worth, and what an attacker learns (nothing).

A proxy with in-memory legs and a registrar for C{example.test}; its
trusted network is 127.0.0.2 only, so 127.0.0.1 is a stranger.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from sipleg.address import Address
from sipleg.auth import AuthConfig, Authenticator
from sipleg.decision import decide_request, request_view
from sipleg.digest import digest_response, hash_a1, parse_credentials
from sipleg.dispatcher import Dispatcher
from sipleg.flood import EdgePolicy
from sipleg.leg import Leg
from sipleg.message import Request, Response, parse_message
from sipleg.passwd import set_password
from sipleg.proxy import StatelessProxy
from sipleg.registrar import Registrar
from sipleg.routing import NetworkAccessPolicy
from sipleg.transport.memory import MemorySocketPool
from sipleg.users import parse_users
from tests.support import fail2ban_patterns, proxy_log_lines

STRANGER = Address("127.0.0.1", 5099)
TRUSTED = Address("127.0.0.2", 5099)
SECRET = b"k" * 32


def request(
    method: str,
    uri: str,
    from_uri: str,
    to_uri: str | None = None,
    n: int = 1,
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    fields = [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-{method}-{n};rport"),
        ("From", f"<{from_uri}>;tag=f{n}"),
        # (A REGISTER's To is the address of record: its From here.)
        ("To", f"<{to_uri or (from_uri if method == 'REGISTER' else uri)}>"),
        ("Call-ID", f"call-{n}@x"),
        ("CSeq", f"{n} {method}"),
        ("Max-Forwards", "70"),
    ]
    if method == "REGISTER":
        fields.append(("Contact", "<sip:alice@127.0.0.1:5099>"))
    return Request(method, uri, fields + list(headers))


def alice_register(n: int = 1, proof: str | None = None) -> Request:
    """
    Alice's REGISTER, with credentials when given C{proof}.
    """
    headers = (("Authorization", proof),) if proof is not None else ()
    return request("REGISTER", "sip:example.test", "sip:alice@example.test", n=n, headers=headers)


def answer_to(challenge: str, user: str, password: str, method: str, uri: str, nc: int = 1) -> str:
    """
    The credentials a user agent sends for C{challenge}.
    """
    offer = parse_credentials(challenge)
    assert offer is not None
    realm, nonce, algorithm = offer.realm, offer.nonce, offer.algorithm
    ha1 = hash_a1(algorithm, user, realm, password)
    count = f"{nc:08x}"
    response = digest_response(algorithm, ha1, nonce, count, "cn0nce", method, uri)
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, cnonce="cn0nce", qop=auth, nc={count}'
    )


class AuthProxyTests(TestCase):
    algorithms: tuple[str, ...] = ("MD5",)

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        text = set_password("", "users", "example.test", "alice", "wonderland")
        text = set_password(text, "users", "example.test", "bob", "builder")
        self.users = parse_users(text, "users")
        self.pool = MemorySocketPool(Address("127.0.0.1", 5060))
        access = NetworkAccessPolicy(["127.0.0.2/32"], ["example.test"])
        self.auth = Authenticator(
            AuthConfig(
                "example.test", self.algorithms, nonce_lifetime=300, max_failures=3, failure_window=60
            ),
            lambda: self.users,
            SECRET,
            lambda uri: uri.host == "example.test",
            access.trusts,
            self.clock,
        )
        self.registrar = Registrar(["example.test"], self.clock)
        self.proxy = StatelessProxy(
            Dispatcher([Leg(socketpool=self.pool)]),
            access=access,
            registrar=self.registrar,
            edge=EdgePolicy(flood=None, scanners=()),
            clock=self.clock,
            auth=self.auth,
        )
        self.logged = proxy_log_lines(self)

    def send(self, message: Request, source: Address = STRANGER) -> list[tuple[bytes, Address]]:
        self.pool.sent.clear()
        self.pool.deliver(bytes(message), source)
        return list(self.pool.sent)

    def answer(self, message: Request, source: Address = STRANGER) -> Response:
        sent = self.send(message, source)
        self.assertEqual(len(sent), 1, sent)
        response = parse_message(sent[0][0])
        assert isinstance(response, Response)
        return response

    def register(self, user: str, password: str, as_user: str | None = None, n: int = 1) -> Response:
        """
        REGISTER C{as_user} (default C{user}) with C{user}'s credentials,
        answering the challenge.
        """
        aor = f"sip:{as_user or user}@example.test"
        first = request("REGISTER", "sip:example.test", aor, n=n)
        challenged = self.answer(first)
        self.assertEqual(challenged.code, 401)
        value = challenged.get_header("www-authenticate")
        assert value is not None
        proof = answer_to(value, user, password, "REGISTER", "sip:example.test")
        again = request("REGISTER", "sip:example.test", aor, n=n + 1, headers=(("Authorization", proof),))
        return self.answer(again)

    # -- REGISTER ------------------------------------------------------------

    def test_register_challenged_then_accepted(self) -> None:
        for source in (STRANGER, TRUSTED):
            challenged = self.answer(alice_register(), source)
            self.assertEqual((challenged.code, challenged.reason), (401, "Unauthorized"))
            self.assertEqual(
                [parse_credentials(value).algorithm for value in challenged.get_headers("www-authenticate")],  # type: ignore[union-attr]
                list(self.algorithms),
            )
            self.assertRegex(challenged.get_header("www-authenticate") or "", r'qop="auth"')
        self.assertEqual(self.register("alice", "wonderland").code, 200)
        self.assertEqual([str(b.contact) for b in self.registrar.bindings()], ["sip:alice@127.0.0.1:5099"])

    def test_register_for_another_user_refused(self) -> None:
        answer = self.register("bob", "builder", as_user="alice")
        self.assertEqual(answer.code, 403)
        self.assertEqual(self.registrar.bindings(), [])

    def test_wrong_password_and_unknown_user_look_alike(self) -> None:
        """
        A wrong password gets a new challenge, the same an unknown user
        gets: status, reason and header names (no user enumeration).
        """
        wrong = self.register("alice", "guess")
        unknown = self.register("mallory", "guess", n=5)
        for answer in (wrong, unknown):
            self.assertEqual((answer.code, answer.reason), (401, "Unauthorized"))
        self.assertEqual(
            [name for name, _ in wrong.headers if name not in ("To", "Call-ID", "CSeq", "Via", "From")],
            [name for name, _ in unknown.headers if name not in ("To", "Call-ID", "CSeq", "Via", "From")],
        )
        self.assertEqual(self.registrar.bindings(), [])

    def test_stale_nonce(self) -> None:
        first = self.answer(alice_register())
        value = first.get_header("www-authenticate") or ""
        self.clock.advance(301)
        proof = answer_to(value, "alice", "wonderland", "REGISTER", "sip:example.test")
        again = self.answer(alice_register(n=2, proof=proof))
        self.assertEqual(again.code, 401)
        self.assertTrue((again.get_header("www-authenticate") or "").endswith("stale=true"))
        # The same with a wrong password is no stale nonce: no stale=true.
        proof = answer_to(value, "alice", "guess", "REGISTER", "sip:example.test")
        again = self.answer(alice_register(n=3, proof=proof))
        self.assertNotIn("stale", again.get_header("www-authenticate") or "")

    def test_replayed_nonce_count_refused(self) -> None:
        first = self.answer(alice_register())
        offer = first.get_header("www-authenticate") or ""
        proof = answer_to(offer, "alice", "wonderland", "REGISTER", "sip:example.test")
        self.assertEqual(self.answer(alice_register(2, proof)).code, 200)
        self.assertEqual(self.answer(alice_register(3, proof)).code, 401)

    # -- calls -----------------------------------------------------------------

    def test_our_user_calling_from_outside_is_challenged(self) -> None:
        self.assertEqual(self.register("bob", "builder").code, 200)
        invite = request("INVITE", "sip:carol@elsewhere.test", "sip:alice@example.test")
        challenged = self.answer(invite)
        self.assertEqual((challenged.code, challenged.reason), (407, "Proxy Authentication Required"))
        offer = challenged.get_header("proxy-authenticate") or ""
        proof = answer_to(offer, "alice", "wonderland", "INVITE", "sip:bob@example.test")
        foreign = 'Digest username="x", realm="elsewhere.test", nonce="n", uri="u", response="r"'
        call = request(
            "INVITE",
            "sip:bob@example.test",
            "sip:alice@example.test",
            n=2,
            headers=(("Proxy-Authorization", foreign), ("Proxy-Authorization", proof)),
        )
        sent = self.send(call)
        self.assertEqual(len(sent), 1)
        forwarded = parse_message(sent[0][0])
        assert isinstance(forwarded, Request)
        self.assertEqual((forwarded.method, forwarded.uri), ("INVITE", "sip:alice@127.0.0.1:5099"))
        # Our credentials are used up here (RFC 3261 §22.3); another
        # realm's go on.
        self.assertEqual(forwarded.get_headers("proxy-authorization"), [foreign])

    def test_ack_of_the_challenge_ends_here(self) -> None:
        """
        The ACK of our 407 repeats the INVITE's Call-ID, From, CSeq number
        and top Via, and the To tag we gave: it is not forwarded (the
        callee never saw that INVITE), whatever its Route says.
        """
        invite = request("INVITE", "sip:bob@example.test", "sip:alice@example.test", n=7)
        challenged = self.answer(invite)
        ack = request(
            "ACK",
            "sip:bob@example.test",
            "sip:alice@example.test",
            n=7,
            headers=(("Route", "<sip:127.0.0.1:5060;lr>"),),
        )
        ack.set_header("to", challenged.get_header("to") or "")
        # (§17.1.1.3: the INVITE's top Via, branch included.)
        ack.set_header("via", invite.get_header("via") or "")
        self.assertEqual(self.send(ack), [])
        self.assertEqual(self.proxy.stats.dropped["ACK for our answer"], 1)
        # An ACK with another tag (a callee's, to its contact) goes on.
        ack.set_header("to", "<sip:bob@example.test>;tag=0123456789abcdef")
        ack.uri = "sip:bob@127.0.0.1:5077"
        self.assertEqual([dst for _, dst in self.send(ack)], [Address("127.0.0.1", 5077)])

    def test_credentials_never_forwarded(self) -> None:
        """
        The ACK of a 2xx repeats the INVITE's credentials (RFC 3261
        §13.2.2.4) and is not checked: ours are removed all the same, so
        the callee never sees the caller's digest.
        """
        challenged = self.answer(request("INVITE", "sip:carol@127.0.0.1:5077", "sip:alice@example.test"))
        offer = challenged.get_header("proxy-authenticate") or ""
        proof = answer_to(offer, "alice", "wonderland", "INVITE", "sip:carol@127.0.0.1:5077")
        ack = request(
            "ACK",
            "sip:carol@127.0.0.1:5077",
            "sip:alice@example.test",
            n=2,
            headers=(("Proxy-Authorization", proof), ("Route", "<sip:127.0.0.1:5060;lr>")),
        )
        ack.set_header("to", "<sip:carol@127.0.0.1:5077>;tag=callee")
        sent = self.send(ack)
        self.assertEqual(len(sent), 1)
        forwarded = parse_message(sent[0][0])
        assert isinstance(forwarded, Request)
        self.assertEqual((forwarded.method, forwarded.get_headers("proxy-authorization")), ("ACK", []))

    def test_calling_as_another_user_refused(self) -> None:
        challenged = self.answer(request("INVITE", "sip:carol@elsewhere.test", "sip:alice@example.test"))
        proof = answer_to(challenged.get_header("proxy-authenticate") or "", "bob", "builder", "INVITE", "x")
        call = request(
            "INVITE",
            "sip:carol@elsewhere.test",
            "sip:alice@example.test",
            n=2,
            headers=(("Proxy-Authorization", proof),),
        )
        self.assertEqual(self.answer(call).code, 403)

    def test_not_challenged(self) -> None:
        self.assertEqual(self.register("bob", "builder").code, 200)
        # A call from outside our domains to our user (an incoming call).
        incoming = self.send(request("INVITE", "sip:bob@example.test", "sip:carol@elsewhere.test", n=10))
        self.assertEqual(parse_message(incoming[0][0]).uri, "sip:alice@127.0.0.1:5099")  # type: ignore[union-attr]
        # ACK and CANCEL (RFC 3261 §22.1), even claiming to be ours.
        for method in ("ACK", "CANCEL"):
            sent = self.send(request(method, "sip:bob@example.test", "sip:alice@example.test", n=11))
            self.assertEqual([data.split(b" ", 1)[0] for data, _ in sent], [method.encode()])
        # Anything but REGISTER from the trusted network.
        outward = request("INVITE", "sip:carol@127.0.0.1:5077", "sip:alice@example.test", n=12)
        sent = self.send(outward, TRUSTED)
        self.assertEqual([dst for _, dst in sent], [Address("127.0.0.1", 5077)])
        # A stranger not claiming our domain calling out: no relay (403).
        relay = request("INVITE", "sip:carol@elsewhere.test", "sip:eve@elsewhere.test", n=13)
        self.assertEqual(self.answer(relay).code, 403)

    # -- failures --------------------------------------------------------------

    def test_failures_ban_the_source(self) -> None:
        for n in range(4):
            self.assertEqual(self.register("alice", "guess", n=10 * n).code, 401)
        # The fourth failure in 60 s (over 3) banned the source: silence.
        self.assertEqual(self.send(alice_register(n=99)), [])
        bans = [line for line in self.logged if "banned source" in line]
        self.assertEqual(len(bans), 1, bans)
        self.assertIn("4 failed authentications in 60 s (user 'alice')", bans[0])
        found = [m.group("host") for pattern in fail2ban_patterns() if (m := pattern.match(bans[0]))]
        self.assertEqual(found, ["127.0.0.1"])
        # The trusted network is never banned for its failures.
        for n in range(6):
            challenged = self.answer(alice_register(200 + n), TRUSTED)
            offer = challenged.get_header("www-authenticate") or ""
            wrong = alice_register(300 + n, answer_to(offer, "alice", "guess", "REGISTER", "x"))
            self.assertEqual(self.answer(wrong, TRUSTED).code, 401)


class PreferredAlgorithmTests(AuthProxyTests):
    """
    The same, offering SHA-256 first (RFC 8760 §2.4): one challenge per
    algorithm, and the answer to the first is accepted.
    """

    algorithms = ("SHA-256", "MD5")


class DecisionOrderTests(TestCase):
    """
    Where authentication sits in the request pass.
    """

    def test_in_dialog_through_us_not_asked(self) -> None:
        asked: list[Any] = []

        def auth(view: Any, registers: bool) -> None:
            asked.append(view.method)

        pool = MemorySocketPool(Address("127.0.0.1", 5060))
        leg = Leg(socketpool=pool)
        access = NetworkAccessPolicy(["127.0.0.2/32"], ["example.test"])
        proxy = StatelessProxy(Dispatcher([leg]), access=access)
        rules = proxy.rules
        rules = type(rules)(rules.legs, rules.access, rules.routes, auth=auth)
        bye = request("BYE", "sip:bob@127.0.0.1:5077", "sip:alice@example.test")
        bye.set_header("to", "<sip:bob@example.test>;tag=t")
        bye.add_header("Route", "<sip:127.0.0.1:5060;lr>")
        decide_request(request_view(bye, leg.identity, STRANGER), rules)
        self.assertEqual(asked, [])
        invite = request("INVITE", "sip:bob@example.test", "sip:alice@example.test")
        decide_request(request_view(invite, leg.identity, STRANGER), rules)
        self.assertEqual(asked, ["INVITE"])
        self.assertTrue(re.match(r"^\d+\.\d+\.\d+\.\d+$", STRANGER.addr or ""))
