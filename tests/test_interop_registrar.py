"""
The proxy as registrar, with real Net::SIP user agents (issue "Registrar in
the proxy"): a Net::SIP UAS registers C{sip:uas@example.test} at the proxy
(C{--registrar --domain example.test}), a Net::SIP UAC calls that address
of record through the proxy, and INVITE, ACK and BYE all reach the UAS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer

from tests.interop.peers import (
    PEER_TIMEOUT,
    NetSipOutcome,
    NetSipServer,
    free_port,
    run_netsip_uac,
    start_netsip_uas,
)
from tests.test_interop_proxy import ProxyInteropTestCase

AOR = "sip:uas@example.test"


class RegistrarInteropTests(ProxyInteropTestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.registrations = os.path.join(folder, "bindings.db")
        super().setUp()

    def start_proxy(self, *args: Any, **options: Any) -> None:
        options.setdefault("registrar", True)
        options.setdefault("domains", ["example.test"])
        options.setdefault("registrations", self.registrations)
        super().start_proxy(*args, **options)

    @defer.inlineCallbacks
    def register_and_call(self, uas_proto: str, uac_proto: str, restart: bool = False) -> Any:
        """
        The UAS registers over C{uas_proto}; the UAC calls the AOR over
        C{uac_proto}; with C{restart} a new proxy (reading the same
        registrations file) takes the call.
        """
        contact = None
        if uas_proto == "tcp":
            # Bracketed: in a bare addr-spec ";transport=tcp" would be a
            # header parameter (RFC 3261 §20.10), not part of the URI.
            contact = "<sip:uas@{host};transport=tcp>"
        uas: NetSipServer = yield self.start_uas(uas_proto, contact)
        if restart:
            self.start_proxy()
        uac: NetSipOutcome = yield run_netsip_uac(AOR, self.proxy(uac_proto), timeout=PEER_TIMEOUT)
        server: NetSipOutcome = yield uas.result()
        self.assertTrue(uac.ok, uac.describe())
        self.assertTrue(server.ok, server.describe())
        self.assertEqual(server.result["register"], "ok")
        self.assertEqual([server.result[k] for k in ("invite", "ack", "bye")], ["1", "1", "1"])
        self.assert_from_proxy(server, uas_proto)
        return uac, server

    @defer.inlineCallbacks
    def start_uas(self, proto: str, contact: str | None) -> Any:
        port = free_port(proto)
        if contact is not None:
            contact = contact.format(host=f"127.0.0.1:{port}")
        uas = yield start_netsip_uas(
            proto,
            port=port,
            register=AOR,
            proxy=self.proxy(proto),
            registrar="sip:example.test",
            contact=contact,
            timeout=PEER_TIMEOUT,
        )
        self.addCleanup(uas.stop)
        return uas

    def assert_from_proxy(self, server: NetSipOutcome, proto: str) -> None:
        leg = self.legs[proto]
        for method in ("INVITE", "ACK", "BYE"):
            (request,) = server.requests(method)
            self.assertEqual(request["proto"], proto, method)
            self.assertIn(leg.branch, request["headers"]["via"][0], method)

    def test_udp(self) -> Any:
        return self.register_and_call("udp", "udp")

    def test_tcp(self) -> Any:
        return self.register_and_call("tcp", "tcp")

    def test_uas_tcp_uac_udp(self) -> Any:
        return self.register_and_call("tcp", "udp")

    def test_binding_survives_restart(self) -> Any:
        """
        A proxy started afresh on the same registrations file knows the
        binding: the call reaches the UAS.
        """
        return self.register_and_call("udp", "udp", restart=True)
