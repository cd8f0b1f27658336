"""
Interop tests for the proxy: real SIPp and Perl Net::SIP user agents call
each other through a L{sipleg.service.make_service} proxy running in the
test's reactor (see tests/interop/README.md for the peers).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.leg import Leg
from sipleg.service import ConfigError, ProxyConfig, make_service, parse_listen
from sipleg.uri import URI, parse_uri
from tests.interop.peers import (
    NetSipOutcome,
    NetSipServer,
    SippOutcome,
    free_port,
    require_peers,
    run_netsip_uac,
    run_sipp_uac,
    start_netsip_uas,
    start_sipp_uas,
)

#: Seconds a peer may take; far more than a loopback call needs.
PEER_TIMEOUT = 5
#: Tries to find a port number free for both UDP and TCP.
PORT_ATTEMPTS = 3


class ProxyInteropTestCase(unittest.TestCase):
    """
    A proxy with a UDP and a TCP leg on ephemeral 127.0.0.1 ports, the way
    C{twistd sipproxy --listen udp:... --listen tcp:...} builds it, running
    in the test's reactor.

    @ivar legs: the proxy's legs by transport (C{"udp"}, C{"tcp"}).
    """

    timeout = 20

    def setUp(self) -> None:
        require_peers()
        self.start_proxy()

    def start_proxy(
        self, routes: dict[str, URI] | None = None, shared_port: bool = False, **options: Any
    ) -> None:
        """
        Build the proxy with L{make_service} and start it; it is stopped at
        cleanup.  A test may call it again to replace the proxy of C{setUp}
        (which keeps running on its own ports).

        @param routes: static routes (C{--route DOMAIN=SIPURI}).
        @param shared_port: listen on the same port number for UDP and TCP,
            as the default C{udp:127.0.0.1:5060 tcp:127.0.0.1:5060} does;
            else on two ephemeral ports.
        @param options: more L{ProxyConfig} fields.
        """
        for attempt in range(PORT_ATTEMPTS):
            port = free_port("udp+tcp") if shared_port else 0
            config = ProxyConfig(
                listen=[
                    parse_listen(f"udp:127.0.0.1:{port}"),
                    parse_listen(f"tcp:127.0.0.1:{port}"),
                ],
                routes=routes or {},
                **options,
            )
            try:
                service = make_service(config)
            except ConfigError:
                # free_port() is racy: the TCP port may be taken.
                if attempt == PORT_ATTEMPTS - 1:
                    raise
            else:
                break
        service.startService()
        self.addCleanup(service.stopService)
        self.legs: dict[str, Leg] = {}
        for child in service:
            if isinstance(child, Leg):
                self.legs[child.proto] = child

    def proxy(self, proto: str) -> Address:
        """
        The address of the proxy leg for C{proto}.
        """
        return self.legs[proto].local

    def rr_uri(self, proto: str) -> str:
        """
        The Record-Route value the proxy leg for C{proto} inserts.
        """
        return self.legs[proto].record_route


class SippThroughProxyTests(ProxyInteropTestCase):
    """
    SIPp UAC -> proxy -> SIPp UAS: INVITE, 180, 200, ACK and BYE, 200 (ACK
    and BYE follow the recorded route, so they cross the proxy too).
    """

    @defer.inlineCallbacks
    def check_calls(self, uac_proto: str, uas_proto: str, calls: int, rate: float) -> Any:
        uas = yield start_sipp_uas(uas_proto, calls=calls, timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        uac: SippOutcome = yield run_sipp_uac(
            uas.address,
            proxy=self.proxy(uac_proto),
            calls=calls,
            rate=rate,
            timeout=PEER_TIMEOUT,
        )
        self.assertTrue(uac.ok, uac.describe())
        self.assertEqual((uac.successful, uac.failed), (calls, 0))
        server: SippOutcome = yield uas.result()
        self.assertTrue(server.ok, server.describe())
        self.assertEqual((server.successful, server.failed), (calls, 0))

    def test_udp(self) -> Any:
        """
        Ten calls at 20 cps, UDP on both sides.
        """
        return self.check_calls("udp", "udp", calls=10, rate=20)

    def test_tcp(self) -> Any:
        """
        Ten calls at 20 cps, TCP on both sides.
        """
        return self.check_calls("tcp", "tcp", calls=10, rate=20)

    def test_udp_in_tcp_out(self) -> Any:
        """
        The UAC sends over UDP to a Request-URI with C{;transport=tcp}: the
        proxy forwards on its TCP leg, and the responses come back over UDP.
        """
        return self.check_calls("udp", "tcp", calls=5, rate=20)

    def test_tcp_in_udp_out(self) -> Any:
        """
        The UAC sends over TCP to a UDP UAS.
        """
        return self.check_calls("tcp", "udp", calls=5, rate=20)

    def test_udp_in_tcp_out_shared_port(self) -> Any:
        """
        UDP in, TCP out with both legs on one port number (the default
        configuration's shape): the two Record-Routes differ only in
        C{;transport=tcp}, and both must be recognised as ours.
        """
        self.start_proxy(shared_port=True)
        self.assertEqual(self.proxy("udp").port, self.proxy("tcp").port)
        return self.check_calls("udp", "tcp", calls=5, rate=20)


class NetSipThroughProxyTests(ProxyInteropTestCase):
    """
    Net::SIP UAC -> proxy -> Net::SIP UAS, one call per test.
    """

    @defer.inlineCallbacks
    def call(
        self,
        proto: str,
        uas_mode: str,
        uac_mode: str,
        code: int = 486,
        uac_proto: str | None = None,
    ) -> Any:
        """
        One call from a Net::SIP UAC on C{uac_proto} (default C{proto})
        through the proxy leg of that transport to a Net::SIP UAS on
        C{proto}; both must judge it a success.

        @return: fires with the UAC's and the UAS's L{NetSipOutcome}.
        """
        uas: NetSipServer = yield start_netsip_uas(proto, uas_mode, code=code, timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        # In angle brackets the ;transport= parameter stays in the
        # Request-URI; bare, Net::SIP reads it as a To header parameter and
        # the proxy would route the INVITE to UDP.
        uac: NetSipOutcome = yield run_netsip_uac(
            f"<{uas.uri}>",
            self.proxy(uac_proto or proto),
            uac_mode,
            code=code,
            timeout=PEER_TIMEOUT,
        )
        server: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        return uac, server

    def assert_via_proxy(self, server: NetSipOutcome, proto: str) -> None:
        """
        Every request the UAS got came from the proxy leg, over C{proto},
        with the proxy's Via on top.
        """
        leg = self.legs[proto]
        requests = [e for e in server.received if "method" in e]
        self.assertTrue(requests)
        for request in requests:
            self.assertEqual(request["proto"], proto)
            if proto == "udp":
                self.assertEqual(request["src"], str(leg.local))
            else:
                # A TCP connection the proxy opens has an ephemeral port.
                self.assertEqual(request["src"].rsplit(":", 1)[0], leg.local.host)
            top = request["headers"]["via"][0]
            self.assertIn(leg.branch, top, request["method"])

    @defer.inlineCallbacks
    def check_full_call(self, proto: str) -> Any:
        uac, server = yield self.call(proto, "answer", "call")
        self.assertEqual((uac.result["invite"], uac.result["bye"]), ("200", "200"))
        self.assertEqual(
            [len(server.requests(m)) > 0 for m in ("INVITE", "ACK", "BYE")],
            [True, True, True],
        )
        self.assertEqual([server.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"])
        self.assert_via_proxy(server, proto)
        invite = server.requests("INVITE")[0]
        self.assertEqual(invite["headers"]["max-forwards"], ["69"])
        self.assertEqual(invite["headers"]["record-route"], [self.rr_uri(proto)])
        self.assertEqual(len(invite["headers"]["via"]), 2)
        # The UAC saw the proxy's Record-Route in the 200 and the ACK and
        # BYE went along it: the UAS got them from the proxy (above).
        (ok,) = [r for r in uac.responses("INVITE") if r["code"] == 200]
        self.assertEqual(ok["headers"]["record-route"], [self.rr_uri(proto)])
        self.assertEqual(len(ok["headers"]["via"]), 1)

    def test_call_udp(self) -> Any:
        """
        INVITE, 200, ACK, BYE, 200 over UDP: INVITE, ACK and BYE each reach
        the UAS once, from the proxy.
        """
        return self.check_full_call("udp")

    def test_call_tcp(self) -> Any:
        """
        The same call with UAC and UAS on TCP legs.
        """
        return self.check_full_call("tcp")

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        """
        The UAS rings, the UAC cancels: the CANCEL crosses the proxy, the
        UAC gets 200 for it and 487 for the INVITE, and the ACK for the 487
        reaches the UAS.
        """
        uac, server = yield self.call("udp", "ring", "cancel")
        self.assertEqual((uac.result["invite"], uac.result["cancel"]), ("487", "200"))
        self.assertEqual(
            [server.result[k] for k in ("invite", "cancel", "ack", "bye")],
            ["1", "1", "1", "0"],
        )
        self.assert_via_proxy(server, "udp")
        self.assertIn(180, [r["code"] for r in uac.responses("INVITE")])

    @defer.inlineCallbacks
    def test_rejected(self) -> Any:
        """
        The UAS answers 486: the UAC gets it through the proxy and its ACK
        reaches the UAS.
        """
        uac, server = yield self.call("udp", "reject", "rejected", code=486)
        self.assertEqual(uac.result["invite"], "486")
        self.assertEqual(server.result["ack"], "1")
        self.assert_via_proxy(server, "udp")
        (ack,) = server.requests("ACK")
        self.assertEqual(ack["uri"], server.requests("INVITE")[0]["uri"])

    @defer.inlineCallbacks
    def test_call_udp_in_tcp_out(self) -> Any:
        """
        A UAC on UDP calls C{sip:uas@example.test}, which a static route
        sends to a UAS on TCP (Net::SIP refuses a C{;transport=tcp}
        Request-URI on a UDP-only leg).  The INVITE crosses legs, so it
        carries two Record-Routes (TCP leg on top) and two proxy Vias; the
        UAC's ACK and BYE, routed by both Route entries, must reach the UAS
        in one pass through the proxy: one Via of each leg and no Route
        left, not a detour through the proxy itself.
        """
        uas: NetSipServer = yield start_netsip_uas("tcp", timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        self.start_proxy({"example.test": parse_uri(f"sip:{uas.address.hostport};transport=tcp")})
        uac: NetSipOutcome = yield run_netsip_uac(
            "sip:uas@example.test", self.proxy("udp"), timeout=PEER_TIMEOUT
        )
        server: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        self.assertEqual([server.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"])
        self.assert_via_proxy(server, "tcp")
        invite = server.requests("INVITE")[0]
        self.assertEqual(invite["headers"]["record-route"], [self.rr_uri("tcp"), self.rr_uri("udp")])
        for method in ("INVITE", "ACK", "BYE"):
            (request,) = server.requests(method)
            vias = request["headers"]["via"]
            self.assertEqual(len(vias), 3, f"{method}: {vias}")
            self.assertIn(self.legs["tcp"].branch, vias[0])
            self.assertIn(self.legs["udp"].branch, vias[1])
            self.assertNotIn("route", request["headers"], method)
