"""
Digest authentication with real user agents (issue "Digest
authentication", item 5): SIPp and Perl Net::SIP answer the proxy's 401 and
407 challenges with their own digest code, over UDP and TCP.

The proxy is the registrar for C{example.test}
(C{--registrar --domain example.test --auth-file USERS}, users alice and
bob) and trusts 127.0.0.254 only (C{--allow 127.0.0.254/32}): the peers,
on 127.0.0.1, are strangers, so their calls as a user of C{example.test}
are challenged (407) as well as their REGISTERs (401).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer

from sipleg.auth import AuthConfig, AuthSettings
from sipleg.digest import parse_credentials
from sipleg.passwd import set_password
from tests.interop.peers import (
    REGISTER_AUTH_SCENARIO,
    UAC_AUTH_SCENARIO,
    NetSipOutcome,
    NetSipServer,
    SippOutcome,
    free_port,
    run_netsip_uac,
    run_sipp_uac,
    start_netsip_uas,
)
from tests.support import stored_bindings
from tests.test_interop_proxy import ProxyInteropTestCase

DOMAIN = "example.test"
#: The REGISTER Request-URI.
REGISTRAR = f"sip:{DOMAIN}"
ALICE = f"sip:alice@{DOMAIN}"
BOB = f"sip:bob@{DOMAIN}"
#: The users of the user file and their passwords.
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
#: The only trusted network: not the peers' 127.0.0.1.
TRUSTED = "127.0.0.254/32"
#: Seconds a peer may take: far more than a loopback call needs, and with
#: the harness's kill grace well inside the test's own 20 s, so a stuck
#: peer shows in the peer's outcome rather than as a test timeout.
PEER_TIMEOUT = 5


def credentials(user: str) -> tuple[str, str]:
    """
    The user name and password of one of our users.
    """
    return user, PASSWORDS[user]


class AuthInteropTestCase(ProxyInteropTestCase):
    """
    The proxy as an authenticating registrar for C{example.test}, with a
    registrations file that is written before every answer (so it shows
    the bindings as soon as a peer got its answer).
    """

    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.registrations = os.path.join(folder, "bindings.db")
        self.users_file = os.path.join(folder, "users")
        text = ""
        for user, password in PASSWORDS.items():
            text = set_password(text, self.users_file, DOMAIN, user, password)
        with open(self.users_file, "w", encoding="utf-8") as f:
            f.write(text)
        super().setUp()

    def start_proxy(self, *args: Any, **options: Any) -> None:
        options.setdefault("registrar", True)
        options.setdefault("domains", [DOMAIN])
        options.setdefault("registrations", self.registrations)
        options.setdefault("auth", AuthSettings(self.users_file, AuthConfig(DOMAIN)))
        options.setdefault("allow", [TRUSTED])
        super().start_proxy(*args, **options)

    def bindings(self) -> list[tuple[str, str]]:
        """
        The address of record and contact of every binding in the
        registrations database.
        """
        return stored_bindings(self.registrations)

    def assert_challenge(self, values: list[str]) -> None:
        """
        One challenge, for our realm, MD5 with C{qop=auth}, as
        C{AuthConfig} offers by default.
        """
        (value,) = values
        # The parameters of a challenge parse as those of credentials.
        offer = parse_credentials(value)
        assert offer is not None
        self.assertEqual((offer.realm, offer.algorithm, offer.qop), (DOMAIN, "MD5", "auth"))
        self.assertTrue(offer.nonce)

    def assert_invite_forwarded(self, server: NetSipOutcome, proto: str) -> None:
        """
        Exactly one INVITE (the one with credentials, CSeq 2), one ACK for
        its 2xx and one BYE reached the UAS, all from the proxy leg of
        C{proto}, and none carries a Proxy-Authorization: the proxy used
        up the credentials for its realm (RFC 3261 §22.3), also those the
        ACK repeats (§13.2.2.4), and there were no others.
        """
        leg = self.legs[proto]
        (invite,) = server.requests("INVITE")
        (ack,) = [r for r in server.requests("ACK") if r["headers"]["cseq"] == ["2 ACK"]]
        (bye,) = server.requests("BYE")
        for request in (invite, ack, bye):
            self.assertEqual(request["proto"], proto, request["method"])
            self.assertIn(leg.branch, request["headers"]["via"][0], request["method"])
        self.assertEqual(invite["headers"]["cseq"], ["2 INVITE"])
        for request in (invite, ack, bye):
            self.assertNotIn("proxy-authorization", request["headers"], request["method"])


class SippAuthTests(AuthInteropTestCase):
    """
    SIPp's built-in digest support (C{auth="true"} on the challenge,
    C{[authentication]} in the next request).
    """

    @defer.inlineCallbacks
    def check_register(self, proto: str) -> Any:
        """
        SIPp registers alice: 401, then 200 for the REGISTER with
        credentials, and the binding is made.
        """
        outcome: SippOutcome = yield run_sipp_uac(
            self.proxy(proto),
            scenario=REGISTER_AUTH_SCENARIO,
            ruri=REGISTRAR,
            keys={"aor": ALICE},
            auth=credentials("alice"),
            timeout=PEER_TIMEOUT,
        )
        self.assertTrue(outcome.ok, outcome.describe())
        self.assertEqual((outcome.successful, outcome.failed), (1, 0))
        ((aor, contact),) = self.bindings()
        self.assertEqual(aor, ALICE)
        self.assertRegex(contact, rf"^sip:sipp@127\.0\.0\.1:\d+;transport={proto.upper()}$")

    def test_register_udp(self) -> Any:
        return self.check_register("udp")

    def test_register_tcp(self) -> Any:
        return self.check_register("tcp")

    @defer.inlineCallbacks
    def check_call(self, proto: str) -> Any:
        """
        SIPp calls a Net::SIP UAS at its IP address as alice: the first
        INVITE gets 407 and does not reach the UAS; SIPp ACKs the 407 (a
        stranger's ACK to a foreign host is refused: dropped, so it never
        reaches the UAS either) and sends the INVITE again with
        Proxy-Authorization, which the proxy forwards without it; the call
        completes (200, ACK, BYE, 200), the in-dialog requests through the
        proxy's Record-Route.
        """
        uas: NetSipServer = yield start_netsip_uas(proto, timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        uac: SippOutcome = yield run_sipp_uac(
            uas.address,
            proxy=self.proxy(proto),
            scenario=UAC_AUTH_SCENARIO,
            ruri=uas.uri,
            keys={"aor": ALICE},
            auth=credentials("alice"),
            timeout=PEER_TIMEOUT,
        )
        server: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertEqual((uac.successful, uac.failed), (1, 0))
        self.assertTrue(server.ok, server.describe())
        self.assertEqual([server.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"])
        self.assert_invite_forwarded(server, proto)

    def test_call_udp(self) -> Any:
        return self.check_call("udp")

    def test_call_tcp(self) -> Any:
        return self.check_call("tcp")


class NetSipAuthTests(AuthInteropTestCase):
    """
    Net::SIP's digest support (C{Net::SIP::Simple->new(auth => [user,
    password])}, which answers one challenge per realm).
    """

    @defer.inlineCallbacks
    def check_register_and_call(self, proto: str) -> Any:
        """
        A Net::SIP UAS registers bob (401, then 200); a Net::SIP UAC calls
        bob's address of record as alice with alice's credentials (407,
        then the INVITE with Proxy-Authorization goes to bob's contact
        without it) and the call completes.

        The ACK for the 407 carries the To tag the proxy gave its 407, so
        the stateless proxy knows it acknowledges its own answer and drops
        it: bob never sees it.
        """
        port = free_port(proto)
        # Bracketed: in a bare addr-spec ";transport=tcp" would be a
        # header parameter (RFC 3261 §20.10), not part of the URI.
        contact = None if proto == "udp" else f"<sip:bob@127.0.0.1:{port};transport=tcp>"
        uas: NetSipServer = yield start_netsip_uas(
            proto,
            port=port,
            register=BOB,
            proxy=self.proxy(proto),
            registrar=REGISTRAR,
            contact=contact,
            auth=credentials("bob"),
            timeout=PEER_TIMEOUT,
        )
        self.addCleanup(uas.stop)
        self.assertEqual([aor for aor, _ in self.bindings()], [BOB])
        uac: NetSipOutcome = yield run_netsip_uac(
            BOB,
            self.proxy(proto),
            from_uri=ALICE,
            auth=credentials("alice"),
            timeout=PEER_TIMEOUT,
        )
        server: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        self.assertEqual(server.result["register"], "ok")
        unauthorized, registered = server.responses("REGISTER")
        self.assertEqual((unauthorized["code"], registered["code"]), (401, 200))
        self.assert_challenge(unauthorized["headers"]["www-authenticate"])
        challenged, *_, answered = uac.responses("INVITE")
        self.assertEqual((challenged["code"], answered["code"]), (407, 200))
        self.assert_challenge(challenged["headers"]["proxy-authenticate"])
        self.assertEqual((uac.result["invite"], uac.result["bye"]), ("200", "200"))
        self.assert_invite_forwarded(server, proto)
        self.assertEqual([r["headers"]["cseq"] for r in server.requests("ACK")], [["2 ACK"]])

    def test_register_and_call_udp(self) -> Any:
        return self.check_register_and_call("udp")

    def test_register_and_call_tcp(self) -> Any:
        return self.check_register_and_call("tcp")

    @defer.inlineCallbacks
    def check_refused(self, proto: str, user: str, password: str, codes: list[int]) -> Any:
        """
        Net::SIP registers alice with C{user}'s name and C{password}: it
        gets C{codes}, the challenge to its first REGISTER and the final
        answer to the second (with credentials), and no binding is made.
        """
        uac: NetSipOutcome = yield run_netsip_uac(
            ALICE,
            self.proxy(proto),
            "register",
            code=codes[-1],
            auth=(user, password),
            timeout=PEER_TIMEOUT,
        )
        self.assertTrue(uac.ok, uac.describe())
        self.assertEqual(
            [(r["code"], r["cseq"]) for r in uac.responses("REGISTER")],
            [(code, f"{n} REGISTER") for n, code in enumerate(codes, 1)],
        )
        self.assertEqual(self.bindings(), [])

    def test_wrong_password_udp(self) -> Any:
        """
        A wrong password gets a new 401, which Net::SIP (having answered
        this realm once) gives up on.
        """
        return self.check_refused("udp", "alice", "guess", [401, 401])

    def test_wrong_password_tcp(self) -> Any:
        return self.check_refused("tcp", "alice", "guess", [401, 401])

    def test_other_user_udp(self) -> Any:
        """
        Bob's valid credentials do not register alice's address of record:
        403.
        """
        return self.check_refused("udp", *credentials("bob"), [401, 403])

    def test_other_user_tcp(self) -> Any:
        return self.check_refused("tcp", *credentials("bob"), [401, 403])
