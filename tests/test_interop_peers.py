"""
Tests for the interop peer harness (tests/interop/peers.py): real SIPp and
Net::SIP peers talking to each other directly on loopback, no proxy.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from typing import Any
from unittest import SkipTest

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sipleg.address import Address
from tests.interop import peers
from tests.interop.peers import (
    NetSipOutcome,
    PeerError,
    SippOutcome,
    free_port,
    require_peers,
    run_netsip_uac,
    run_sipp_uac,
    start_netsip_uas,
    start_sipp_uas,
)


class FreePortTests(unittest.TestCase):
    """
    L{free_port} hands out ports that can be bound right away.
    """

    def test_udp(self) -> None:
        port = free_port("udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))
            self.assertEqual(sock.getsockname()[1], port)

    def test_tcp_ipv6(self) -> None:
        require_ipv6()
        port = free_port("tcp", "::1")
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", port))
            sock.listen()
            self.assertEqual(sock.getsockname()[1], port)


class RequirePeersTests(unittest.TestCase):
    """
    L{require_peers} skips without the peers, or fails under
    C{SIPLEG_REQUIRE_PEERS=1}.
    """

    def set_env(self, value: str | None) -> None:
        old = os.environ.get(peers.REQUIRE_ENV)
        if value is None:
            os.environ.pop(peers.REQUIRE_ENV, None)
        else:
            os.environ[peers.REQUIRE_ENV] = value

        def restore() -> None:
            if old is None:
                os.environ.pop(peers.REQUIRE_ENV, None)
            else:
                os.environ[peers.REQUIRE_ENV] = old

        self.addCleanup(restore)

    def test_missing_skips(self) -> None:
        self.set_env(None)
        with self.assertRaises(SkipTest) as caught:
            require_peers(sipp="sipleg-no-such-sipp")
        self.assertIn("sipleg-no-such-sipp", str(caught.exception))

    def test_missing_fails_when_required(self) -> None:
        self.set_env("1")
        with self.assertRaises(PeerError) as caught:
            require_peers(perl="sipleg-no-such-perl")
        self.assertIn("sipleg-no-such-perl", str(caught.exception))


def require_ipv6() -> None:
    """
    @raise SkipTest: no IPv6 loopback here.
    """
    try:
        free_port("udp", "::1")
    except OSError as e:
        raise SkipTest(f"no IPv6 loopback: {e}") from e


class PeerTestCase(unittest.TestCase):
    """
    Skips (or fails, in CI) without the peers; every test is bounded.
    """

    timeout = 25

    def setUp(self) -> None:
        require_peers()

    def taken_port_first(self, proto: str) -> socket.socket:
        """
        Make the next L{peers.free_port} return a port that is bound (by the
        returned socket), and the ones after that really free ports.
        """
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        if proto == "tcp":
            sock.listen()
        ports = [sock.getsockname()[1]]

        def fake(proto: str = "udp", host: str = "127.0.0.1") -> int:
            return ports.pop() if ports else free_port(proto, host)

        self.patch(peers, "free_port", fake)
        return sock

    def uas_done(self, server: Any) -> defer.Deferred[Any]:
        """
        Stop C{server} at cleanup if the test did not wait for it.
        """
        self.addCleanup(server.stop)
        return server.result()  # type: ignore[no-any-return]


class SippTests(PeerTestCase):
    """
    SIPp UAC -> SIPp UAS with the harness scenarios.
    """

    @defer.inlineCallbacks
    def check_calls(self, proto: str, host: str = "127.0.0.1", calls: int = 5) -> Any:
        uas = yield start_sipp_uas(proto, host=host, calls=calls)
        done = self.uas_done(uas)
        self.assertEqual(uas.address.proto, proto)
        uac: SippOutcome = yield run_sipp_uac(uas.address, calls=calls, rate=10)
        self.assertTrue(uac.ok, uac.describe())
        self.assertEqual((uac.successful, uac.failed), (calls, 0))
        server: SippOutcome = yield done
        self.assertTrue(server.ok, server.describe())
        self.assertEqual((server.successful, server.failed), (calls, 0))
        self.assertFalse(server.stopped)

    def test_udp(self) -> Any:
        """
        Five calls at 10 cps over UDP succeed on both sides.
        """
        return self.check_calls("udp")

    def test_tcp(self) -> Any:
        """
        Five calls at 10 cps over TCP succeed on both sides; the R-URI
        carries C{;transport=tcp}.
        """
        return self.check_calls("tcp")

    def test_udp_ipv6(self) -> Any:
        """
        Calls on ::1.
        """
        require_ipv6()
        return self.check_calls("udp", "::1", calls=2)

    @defer.inlineCallbacks
    def test_nobody_there(self) -> Any:
        """
        A call to a closed TCP port is judged a failure, quickly.
        """
        closed = Address("127.0.0.1", free_port("tcp"), "tcp")
        started = time.monotonic()
        uac: SippOutcome = yield run_sipp_uac(closed, calls=1)
        self.assertFalse(uac.ok)
        self.assertNotEqual(uac.exit_code, 0)
        self.assertEqual(uac.successful, 0)
        self.assertLess(time.monotonic() - started, 10)

    @defer.inlineCallbacks
    def test_port_taken(self) -> Any:
        """
        A server whose chosen port is taken (SIPp exit 254) is started
        again on another port.
        """
        taken = self.taken_port_first("tcp")
        uas = yield start_sipp_uas("tcp")
        self.addCleanup(uas.stop)
        self.assertNotEqual(uas.address.port, taken.getsockname()[1])

    @defer.inlineCallbacks
    def test_stop(self) -> Any:
        """
        A server stopped before any call reports it was stopped, not ok.
        """
        uas = yield start_sipp_uas("udp")
        outcome: SippOutcome = yield uas.stop()
        self.assertTrue(outcome.stopped)
        self.assertFalse(outcome.ok)
        self.assertEqual(outcome.successful, 0)


class NetSipTests(PeerTestCase):
    """
    Net::SIP UAC -> Net::SIP UAS, the UAS address being the "outgoing
    proxy".
    """

    @defer.inlineCallbacks
    def call(self, proto: str, uas_mode: str, uac_mode: str, host: str = "127.0.0.1") -> Any:
        uas = yield start_netsip_uas(proto, uas_mode, host=host)
        done = self.uas_done(uas)
        uac: NetSipOutcome = yield run_netsip_uac(uas.uri, uas.address, uac_mode)
        server: NetSipOutcome = yield done
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        return uac, server

    @defer.inlineCallbacks
    def test_call_udp(self) -> Any:
        """
        INVITE, 200, ACK, BYE, 200 over UDP; the UAS saw each request once
        from the UAC's leg.
        """
        uac, server = yield self.call("udp", "answer", "call")
        self.assertEqual((uac.result["invite"], uac.result["bye"]), ("200", "200"))
        self.assertEqual([server.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"])
        invite = server.requests("INVITE")[0]
        self.assertEqual(invite["proto"], "udp")
        self.assertEqual(invite["headers"]["max-forwards"], ["70"])
        self.assertEqual([r["code"] for r in uac.responses("INVITE")], [100, 200])

    @defer.inlineCallbacks
    def test_call_tcp(self) -> Any:
        """
        The same call over TCP, R-URI with C{;transport=tcp}.
        """
        uac, server = yield self.call("tcp", "answer", "call")
        self.assertEqual(uac.result["bye"], "200")
        self.assertEqual(server.requests("BYE")[0]["proto"], "tcp")

    @defer.inlineCallbacks
    def test_call_tcp_ipv6(self) -> Any:
        """
        The same call over TCP on ::1.
        """
        require_ipv6()
        uac, server = yield self.call("tcp", "answer", "call", "::1")
        self.assertEqual(uac.result["bye"], "200")
        self.assertEqual(server.requests("INVITE")[0]["src"].split("]")[0], "[::1")

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        """
        The UAS rings, the UAC cancels on 180: 200 to the CANCEL, 487 to
        the INVITE, and the ACK for the 487 reaches the UAS.
        """
        uac, server = yield self.call("udp", "ring", "cancel")
        self.assertEqual((uac.result["invite"], uac.result["cancel"]), ("487", "200"))
        self.assertEqual([server.result[k] for k in ("cancel", "ack", "bye")], ["1", "1", "0"])

    @defer.inlineCallbacks
    def test_rejected(self) -> Any:
        """
        The UAS answers 486 and reports the ACK for it.
        """
        uac, server = yield self.call("udp", "reject", "rejected")
        self.assertEqual(uac.result["invite"], "486")
        self.assertEqual(server.result["ack"], "1")

    @defer.inlineCallbacks
    def test_wrong_expectation_fails(self) -> Any:
        """
        A UAC expecting 603 judges a 486 a failure.
        """
        uas = yield start_netsip_uas("udp", "reject", code=486)
        done = self.uas_done(uas)
        uac: NetSipOutcome = yield run_netsip_uac(uas.uri, uas.address, "rejected", code=603)
        self.assertEqual((uac.status, uac.exit_code), ("fail", 1))
        self.assertEqual(uac.result["invite"], "486")
        yield done

    @defer.inlineCallbacks
    def test_port_taken(self) -> Any:
        """
        A UAS whose chosen port is taken is started again on another port.
        """
        taken = self.taken_port_first("udp")
        uas = yield start_netsip_uas("udp")
        self.addCleanup(uas.stop)
        self.assertNotEqual(uas.address.port, taken.getsockname()[1])

    @defer.inlineCallbacks
    def test_nobody_there(self) -> Any:
        """
        A call to a closed TCP port fails at once with ECONNREFUSED.
        """
        closed = Address("127.0.0.1", free_port("tcp"), "tcp")
        uac: NetSipOutcome = yield run_netsip_uac(f"sip:uas@{closed.hostport}", closed)
        self.assertEqual((uac.status, uac.exit_code), ("fail", 1))
        self.assertEqual(uac.result["error"], str(errno.ECONNREFUSED))

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A UAC calling a UAS that only rings gives up at its own timeout
        and says so.
        """
        uas = yield start_netsip_uas("udp", "ring")
        self.addCleanup(uas.stop)
        uac: NetSipOutcome = yield run_netsip_uac(uas.uri, uas.address, "call", timeout=1)
        self.assertEqual((uac.status, uac.exit_code), ("timeout", 3))
        self.assertFalse(uac.timed_out)
        self.assertEqual([r["code"] for r in uac.responses("INVITE")], [100, 180])
        server: NetSipOutcome = yield uas.stop()
        self.assertTrue(server.stopped)
        self.assertEqual(server.status, "")

    @defer.inlineCallbacks
    def test_register_first(self) -> Any:
        """
        The UAS registers its AOR (with an explicit Contact) at a registrar stub
        before it takes the call.
        """
        registrar = yield start_sipp_uas("udp", scenario=peers.REGISTRAR_SCENARIO)
        registered = self.uas_done(registrar)
        port = free_port("udp")
        contact = f"sip:uas@127.0.0.1:{port};transport=udp"
        uas = yield start_netsip_uas(
            "udp",
            port=port,
            register="sip:uas@example.test",
            proxy=registrar.address,
            contact=contact,
        )
        done = self.uas_done(uas)
        stub: SippOutcome = yield registered
        self.assertTrue(stub.ok, stub.describe())
        uac: NetSipOutcome = yield run_netsip_uac(uas.uri, uas.address)
        server: NetSipOutcome = yield done
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        self.assertEqual(server.result["register"], "ok")
        (ok,) = server.responses("REGISTER")
        self.assertEqual(ok["code"], 200)
        self.assertEqual(ok["headers"]["contact"], [f"{contact};expires=300"])


class HardBoundTests(unittest.TestCase):
    """
    The harness kills a child that outlives its hard timeout.
    """

    @defer.inlineCallbacks
    def test_killed(self) -> Any:
        proc = peers._spawn(reactor, [sys.executable, "-c", "import time; time.sleep(30)"], 0.2)
        started = time.monotonic()
        code = yield proc.ended
        self.assertIsNone(code)
        self.assertTrue(proc.timed_out)
        self.assertLess(time.monotonic() - started, 5)
