"""
Interop over WebSocket (RFC 7118, issue 15 item 5): JsSIP in Node (the
browser SIP stack, tests/interop/jssip/) registers at the proxy over WS and
WSS, and exchanges MESSAGEs and a call with SIPp on UDP through it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from sipleg.leg import Leg
from sipleg.service import ProxyConfig, make_service, parse_listen
from tests.certs import CertificateAuthority
from tests.interop.jssip_peer import JsSIPPeer, require_jssip, start_jssip
from tests.interop.peers import (
    PEER_TIMEOUT,
    SippOutcome,
    require_peers,
    run_sipp_uac,
    start_sipp_uas,
)

_SCENARIOS = Path(__file__).resolve().parent / "interop" / "scenarios"
MESSAGE_UAS = _SCENARIOS / "message_uas.xml"
MESSAGE_UAC = _SCENARIOS / "message_uac.xml"
AOR = "sip:alice@example.test"


class JsSIPInteropTests(unittest.TestCase):
    """
    A proxy with C{ws}, C{wss} and C{udp} legs, C{--registrar --domain
    example.test}, running in the test's reactor; one JsSIP user agent per
    test.
    """

    timeout = 30

    def setUp(self) -> None:
        require_peers()
        require_jssip()
        folder = Path(tempfile.mkdtemp())
        ca = CertificateAuthority()
        leaf = ca.issue("sip.test", ip_addresses=("127.0.0.1",))
        files = {"ca.pem": ca.cert, "cert.pem": leaf.cert, "key.pem": leaf.key}
        for name, data in files.items():
            (folder / name).write_bytes(data)
        self.ca_file = str(folder / "ca.pem")
        config = ProxyConfig(
            listen=[parse_listen(f"{proto}:127.0.0.1:0") for proto in ("ws", "wss", "udp")],
            tls_cert=str(folder / "cert.pem"),
            tls_key=str(folder / "key.pem"),
            registrar=True,
            domains=["example.test"],
        )
        service = make_service(config)
        service.startService()
        self.addCleanup(service.stopService)
        self.legs = {child.proto: child for child in service if isinstance(child, Leg)}

    def jssip(self, proto: str = "ws", **options: Any) -> JsSIPPeer:
        """
        Start JsSIP, connected to the proxy's C{proto} leg.
        """
        url = f"{proto}://{self.legs[proto].local.hostport}"
        peer = start_jssip(url, AOR, ca_file=self.ca_file if proto == "wss" else None, **options)
        self.addCleanup(peer.stop)
        return peer

    async def test_register_ws(self) -> None:
        """
        JsSIP registers over WS.
        """
        peer = self.jssip("ws")
        await peer.wait("registered")

    async def test_register_wss(self) -> None:
        """
        JsSIP registers over WSS, trusting the proxy's certificate.
        """
        peer = self.jssip("wss")
        await peer.wait("registered")

    async def test_message_to_udp_peer(self) -> None:
        """
        A MESSAGE from JsSIP reaches SIPp on UDP, whose 200 comes back.
        """
        uas = await start_sipp_uas("udp", scenario=MESSAGE_UAS, timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        peer = self.jssip("ws", message={"to": f"sip:bob@{uas.address.hostport}", "body": "hello from jssip"})
        sent = await peer.wait("sent")
        self.assertEqual(sent["code"], 200)
        server: SippOutcome = await uas.result()
        self.assertTrue(server.ok, server.describe())

    async def test_message_from_udp_peer(self) -> None:
        """
        A MESSAGE from SIPp on UDP to JsSIP's address of record reaches
        JsSIP over its connection (its Contact host is C{.invalid}).
        """
        peer = self.jssip("ws")
        await peer.wait("registered")
        uac: SippOutcome = await run_sipp_uac(
            self.legs["udp"].local, proxy=self.legs["udp"].local, ruri=AOR, scenario=MESSAGE_UAC
        )
        self.assertTrue(uac.ok, uac.describe())
        message = await peer.wait("message")
        self.assertEqual(message["body"].strip(), "hello from sipp")

    async def test_invite_to_jssip(self) -> None:
        """
        An INVITE from SIPp on UDP to JsSIP's address of record goes over
        the WS connection; JsSIP answers 200 (inactive media), and the ACK
        and BYE (to its C{.invalid} Contact) reach it through the proxy's
        Record-Route.
        """
        peer = self.jssip("ws")
        await peer.wait("registered")
        uac: SippOutcome = await run_sipp_uac(self.legs["udp"].local, proxy=self.legs["udp"].local, ruri=AOR)
        self.assertTrue(uac.ok, uac.describe())
        await peer.wait("confirmed")
        ended = await peer.wait("ended")
        self.assertEqual(ended["originator"], "remote")
