"""
Digest authentication with real phones (issue "Digest authentication",
item 5): two baresip user agents register with their passwords at
C{twistd sipproxy --registrar --domain example.test --auth-file FILE} and
call each other through it; a third, sending a wrong password, never
registers.

baresip ignores loopback-only hosts, so the run happens in a network
namespace of its own (C{unshare --net --map-root-user}) with documentation
addresses on its C{lo}: L{tests.interop.baresip} is the driver that runs
there, once for the whole module (about 3 s), and these tests judge what
it saw: the phones' C{ctrl_tcp} events, the proxy's packet trace, its
bans and its registrations.  The driver gives up after
L{DRIVER_SECONDS}; it and everything it started are killed after
L{KILL_AFTER} seconds in any case.

Needs Linux, baresip (Debian C{baresip-core} 1.0.0, which knows MD5
digests only: the proxy's default) and C{unshare} allowed to make a user
namespace; without them the tests are skipped, or fail when
C{SIPLEG_REQUIRE_PEERS=1} (CI sets it).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from sipleg.passwd import set_password
from tests.certs import CertificateAuthority
from tests.interop import baresip
from tests.interop.baresip import CALLEE, CALLER, DOMAIN, DRIVER_SECONDS, INTRUDER, PHONES, Packet, Phone
from tests.interop.peers import insist, runs
from tests.support import child_env

#: Seconds after which the driver's process group is killed.
KILL_AFTER = DRIVER_SECONDS + 15
#: Characters of the driver's stderr kept for error messages.
STDERR_TAIL = 3000


@functools.cache
def _missing() -> tuple[str, ...]:
    missing = []
    if not sys.platform.startswith("linux"):
        missing.append("Linux")
    if shutil.which("baresip") is None:
        missing.append("baresip (Debian package baresip-core)")
    if shutil.which("unshare") is None:
        missing.append("unshare (util-linux)")
    elif not runs(["unshare", "--net", "--map-root-user", "true"]):
        missing.append("a network namespace (unshare --net --map-root-user failed)")
    return tuple(missing)


def require_baresip() -> None:
    """
    Make sure baresip can be run in a network namespace of its own; call
    it in C{setUp}.

    @raise SkipTest: something is missing and C{SIPLEG_REQUIRE_PEERS} is
        not C{1}.
    @raise PeerError: something is missing and C{SIPLEG_REQUIRE_PEERS=1}.
    """
    insist(_missing(), "baresip interop needs")


@dataclass(frozen=True)
class Run:
    """
    What one run of the driver saw.

    @ivar result: the driver's C{RESULT} (L{baresip.Session.result});
        empty without one.
    @ivar log: the proxy's log events.
    @ivar problem: why the driver itself failed (killed, no C{RESULT}).
    @ivar stderr: the end of the driver's stderr.
    """

    result: dict[str, Any]
    log: list[dict[str, Any]] = field(repr=False)
    problem: str | None
    stderr: str = field(repr=False)

    @property
    def failure(self) -> str | None:
        """
        Why the run did not get through every step; L{None} when it did.
        """
        return self.problem or self.result.get("failure")

    @property
    def trace(self) -> list[Packet]:
        """
        Every SIP message the proxy received or sent, in order.
        """
        return baresip.packets(self.log)

    def events(self, phone: Phone) -> list[dict[str, str]]:
        """
        The phone's baresip events (type, peer URI, parameter).
        """
        events: list[dict[str, str]] = self.result.get("events", {}).get(phone.user, [])
        return events

    def exchange(self, phone: Phone, method: str) -> list[Packet]:
        """
        The proxy's packets from and for C{phone} whose CSeq names
        C{method}.
        """
        return [packet for packet in self.trace if packet.method == method and packet.speaks_for(phone)]

    def describe(self) -> str:
        """
        A summary for assertion messages.
        """
        result = self.result
        lines = [
            f"failure: {self.failure}",
            f"steps done: {result.get('reached')} in {result.get('seconds')} s",
            f"bindings: {result.get('bindings')}",
            f"bans: {baresip.bans(self.log)}",
        ]
        lines += [f"{phone.user} events: {[e['type'] for e in self.events(phone)]}" for phone in PHONES]
        lines += ["proxy trace:", *(f"  {packet}" for packet in self.trace[-60:])]
        for name, text in result.get("output", {}).items():
            lines += [f"--- {name} output:", text]
        lines += ["--- driver stderr:", self.stderr]
        return "\n".join(lines)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.cache
def run_driver(transport: str = "udp") -> Run:
    """
    Run L{tests.interop.baresip} in a new network namespace, once per
    test process and transport: every test judges the same run.

    The driver leads a process group of its own, with the proxy and the
    phones in it: after L{KILL_AFTER} seconds, and in any case once it
    ended, the whole group is killed.
    """
    with tempfile.TemporaryDirectory(prefix="sipleg-baresip-") as folder:
        workdir = Path(folder)
        users = ""
        for phone in PHONES:
            users = set_password(users, str(workdir / "users"), DOMAIN, phone.user, phone.password)
        (workdir / "users").write_text(users)
        if transport == "tls":
            authority = CertificateAuthority()
            leaf = authority.issue("proxy", ip_addresses=(baresip.PROXY,))
            (workdir / "ca.pem").write_bytes(authority.cert)
            (workdir / "cert.pem").write_bytes(leaf.cert)
            (workdir / "key.pem").write_bytes(leaf.key)
        argv = ["unshare", "--net", "--map-root-user", sys.executable, baresip.__file__, str(workdir)]
        argv += ["--transport", transport]
        proc = subprocess.Popen(
            argv,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        problem = None
        try:
            out, err = proc.communicate(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            problem = f"killed after {KILL_AFTER} s"
            _kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            _kill_group(proc.pid)
        result: dict[str, Any] = {}
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
        if not result and problem is None:
            problem = f"no RESULT line (exit status {proc.returncode})"
        return Run(result, baresip.read_log(workdir / "proxy.log"), problem, err[-STDERR_TAIL:])


class BaresipAuthTests(unittest.TestCase):
    """
    Two baresip phones register and call with digest authentication; one
    with the wrong password stays out.
    """

    def setUp(self) -> None:
        require_baresip()
        self.outcome = run_driver()
        self.assertIsNone(self.outcome.failure, self.outcome.describe())

    def assert_registered(self, phone: Phone) -> None:
        """
        C{phone}'s first REGISTER is answered 401 (an MD5 challenge with
        qop=auth), the next one carries its credentials and is answered
        200; the proxy holds a binding and baresip reports C{REGISTER_OK}.
        """
        run = self.outcome
        register = run.exchange(phone, "REGISTER")
        why = run.describe()
        self.assertGreaterEqual(len(register), 4, why)
        first, challenge, second, answer = register[:4]
        self.assertEqual((first.verb, "authorization" in first.headers), ("received", False), why)
        self.assertEqual((challenge.verb, challenge.code), ("sends", 401), why)
        self.assertIn('realm="example.test"', challenge.header("www-authenticate"), why)
        self.assertIn("algorithm=MD5", challenge.header("www-authenticate"), why)
        self.assertEqual(second.verb, "received", why)
        self.assertIn(f'username="{phone.user}"', second.header("authorization"), why)
        self.assertEqual((answer.verb, answer.code), ("sends", 200), why)
        self.assertIn(phone.aor, run.result["bindings"], why)
        self.assertIn("REGISTER_OK", [event["type"] for event in run.events(phone)], why)

    def test_register(self) -> None:
        """
        Both phones with the right password register.
        """
        self.assert_registered(CALLER)
        self.assert_registered(CALLEE)

    def test_call(self) -> None:
        """
        The caller dials the callee's address of record: its INVITE gets a
        407, the INVITE with credentials is forwarded to the callee's
        contact without them, both phones report the call established and,
        after the caller hangs up, closed.
        """
        run = self.outcome
        why = run.describe()
        invite = run.exchange(CALLER, "INVITE")
        received = [packet for packet in invite if packet.verb == "received" and packet.code is None]
        forwarded = [packet for packet in invite if packet.verb == "sends" and packet.code is None]
        answers = [packet.code for packet in invite if packet.verb == "sends" and packet.code]
        self.assertEqual(len(received), 2, why)
        self.assertNotIn("proxy-authorization", received[0].headers, why)
        self.assertIn(f'username="{CALLER.user}"', received[1].header("proxy-authorization"), why)
        self.assertEqual(answers[0], 407, why)
        self.assertEqual(answers[-1], 200, why)
        self.assertEqual(len(forwarded), 1, why)
        self.assertIn(f"@{CALLEE.host}:5060 SIP/2.0", forwarded[0].start, why)
        self.assertNotIn("proxy-authorization", forwarded[0].headers, why)
        for phone, peer in ((CALLER, CALLEE), (CALLEE, CALLER)):
            kinds = [(event["type"], event["peeruri"]) for event in run.events(phone)]
            self.assertIn(("CALL_ESTABLISHED", peer.aor), kinds, why)
            self.assertIn(("CALL_CLOSED", peer.aor), kinds, why)
        bye = [packet.code for packet in run.exchange(CALLER, "BYE") if packet.verb == "sends"]
        self.assertEqual(bye, [None, 200], why)

    def test_wrong_password(self) -> None:
        """
        A phone sending a wrong password gets 401 to every REGISTER, never
        a binding; baresip 1.0.0 answers every new challenge at once, so
        the proxy bans its address after the allowed failures (10 in 60 s
        by default), and only its.
        """
        run = self.outcome
        why = run.describe()
        register = run.exchange(INTRUDER, "REGISTER")
        answers = [packet.code for packet in register if packet.verb == "sends"]
        tries = [packet for packet in register if "authorization" in packet.headers]
        self.assertGreaterEqual(len(tries), 1, why)
        self.assertTrue(all(f'username="{INTRUDER.user}"' in t.header("authorization") for t in tries), why)
        self.assertGreaterEqual(len(answers), 2, why)
        self.assertEqual(set(answers), {401}, why)
        self.assertNotIn(INTRUDER.aor, run.result["bindings"], why)
        self.assertNotIn("REGISTER_OK", [event["type"] for event in run.events(INTRUDER)], why)
        self.assertEqual(baresip.bans(run.log), [INTRUDER.host], why)


class BaresipTLSTests(unittest.TestCase):
    """
    Over TLS (issue 15 item 5): both phones register over TLS, and the
    caller's call reaches the callee over the callee's registration
    connection (RFC 5626 flow semantics, L{sipleg.flows}).  A phone has
    no server certificate: a new TLS connection to its Contact would fail
    its handshake, and the caller got 503.
    """

    def setUp(self) -> None:
        require_baresip()
        self.outcome = run_driver("tls")
        self.assertIsNone(self.outcome.failure, self.outcome.describe())

    def test_call_over_the_registration_connection(self) -> None:
        run = self.outcome
        why = run.describe()
        for phone in (CALLER, CALLEE):
            self.assertIn(phone.aor, run.result["bindings"], why)
            register = run.exchange(phone, "REGISTER")
            self.assertTrue(register, why)
            self.assertTrue(all("SIP/2.0/TLS" in packet.header("via") for packet in register), why)
        invite = run.exchange(CALLER, "INVITE")
        forwarded = [packet for packet in invite if packet.verb == "sends" and packet.code is None]
        answers = [packet.code for packet in invite if packet.verb == "sends" and packet.code]
        self.assertEqual(len(forwarded), 1, why)
        self.assertIn(f"@{CALLEE.host}", forwarded[0].start, why)
        self.assertEqual(answers[-1], 200, why)
        for phone, peer in ((CALLER, CALLEE), (CALLEE, CALLER)):
            kinds = [(event["type"], event["peeruri"]) for event in run.events(phone)]
            self.assertIn(("CALL_ESTABLISHED", peer.aor), kinds, why)
            self.assertIn(("CALL_CLOSED", peer.aor), kinds, why)
