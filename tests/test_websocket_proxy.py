"""
The proxy between a WebSocket leg and a UDP leg (RFC 7118): a WebSocket
client's request forwarded to a UDP peer and the answer back over the
client's connection; the status counts the WebSocket connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from sipleg.dispatcher import Dispatcher
from sipleg.message import Request, Response, parse_message
from sipleg.proxy import StatelessProxy
from sipleg.status import proxy_status
from sipleg.uri import parse_via, route_uri
from tests.collector import PacketCollector, options
from tests.support import listening_leg, websocket_client


def ws_options(target: str, n: int = 1) -> bytes:
    """
    An OPTIONS as JsSIP writes it: a C{.invalid} Via host without a port
    or C{rport}, no Content-Length (RFC 7118 §5).
    """
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{n}abc\r\n"
        f"From: <sip:alice@example.test>;tag=t{n}\r\nTo: <{target}>\r\n"
        f"Call-ID: ws-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n\r\n"
    ).encode()


class WebSocketProxyTests(unittest.TestCase):
    """
    A proxy with a C{ws} and a C{udp} leg, a WebSocket client and a UDP
    peer.
    """

    timeout = 10

    def setUp(self) -> Any:
        return defer.ensureDeferred(self.start())

    async def start(self) -> None:
        self.ws = await listening_leg(self, "ws")
        self.udp = await listening_leg(self, "udp")
        self.proxy = StatelessProxy(Dispatcher([self.ws, self.udp]))
        self.uas_got = PacketCollector()
        self.uas = await listening_leg(self, "udp", self.uas_got)

    async def test_options_to_udp_and_back(self) -> None:
        """
        Forwarded from WS to UDP, the request carries both legs' Vias and
        Record-Routes (C{transport=ws} on the WebSocket one); the answer
        goes back over the client's connection, though its Via host is
        C{.invalid}.
        """
        client = await websocket_client(self, self.ws.local)
        await client.opened
        client.send(ws_options(f"sip:bob@{self.uas.local.hostport}"))
        await self.uas_got.wait()
        request = self.uas_got.messages()[0]
        vias = [parse_via(value) for value in request.get_headers("via")]
        self.assertEqual([via.transport for via in vias], ["UDP", "WS", "WS"])
        self.assertTrue(self.udp.owns_branch(vias[0].branch))
        self.assertTrue(self.ws.owns_branch(vias[1].branch))
        self.assertEqual(vias[2].host, "df7jal23ls0d.invalid")
        self.assertEqual(vias[2].received, "127.0.0.1")
        routes = request.get_headers("record-route")
        self.assertEqual(routes, [self.udp.record_route, self.ws.record_route])
        self.assertEqual(route_uri(routes[1]).transport, "ws")
        self.assertIsNone(route_uri(routes[0]).transport)

        response = Response(200, "OK")
        for name in ("via", "from", "to", "call-id", "cseq"):
            for value in request.get_headers(name):
                response.add_header(name, value)
        response.set_header("to", request.get_header("to") + ";tag=b1")
        await self.uas.deliver(response, self.udp.local)
        await client.wait(1)
        answer = parse_message(client.messages[0], datagram=False)
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 200)
        self.assertEqual(
            [parse_via(value).host for value in answer.get_headers("via")],
            ["df7jal23ls0d.invalid"],
        )
        self.assertEqual(self.proxy.stats.responses["2xx"], 1)
        status = proxy_status(self.proxy, [self.ws, self.udp])
        self.assertEqual(status["leg_counters"][f"ws:{self.ws.local.hostport}"]["connections"], 1)

    async def test_answer_goes_back_over_the_connection(self) -> None:
        """
        The proxy's own answer (here 483, Max-Forwards 0) goes back over
        the client's connection.
        """
        client = await websocket_client(self, self.ws.local)
        await client.opened
        client.send(
            ws_options(f"sip:bob@{self.uas.local.hostport}").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
        )
        await client.wait(1)
        answer = parse_message(client.messages[0], datagram=False)
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 483)
        self.assertEqual(self.uas_got.packets, [])

    async def test_request_to_invalid_host(self) -> None:
        """
        A request for a WebSocket client's C{.invalid} Contact goes over
        the connection whose requests announced that host in their Via;
        for a host no connection announced it is answered 503 at once
        (no DNS).
        """
        client = await websocket_client(self, self.ws.local)
        await client.opened
        client.send(ws_options(f"sip:bob@{self.uas.local.hostport}"))
        await self.uas_got.wait()
        uac_got = PacketCollector()
        uac = await listening_leg(self, "udp", uac_got)
        await uac.deliver(options("sip:alice@df7jal23ls0d.invalid;transport=ws", "in-1"), self.udp.local)
        await client.wait(1)
        request = parse_message(client.messages[0], datagram=False)
        assert isinstance(request, Request)
        self.assertEqual(request.uri, "sip:alice@df7jal23ls0d.invalid;transport=ws")
        self.assertEqual(request.get_header("call-id"), "in-1")
        await uac.deliver(options("sip:alice@nobody.invalid;transport=ws", "in-2"), self.udp.local)
        await uac_got.wait()
        answer = uac_got.messages()[0]
        assert isinstance(answer, Response)
        self.assertEqual(answer.code, 503)
        self.assertEqual(len(client.messages), 1)

    def test_contact_and_record_route(self) -> Any:
        """
        A WebSocket leg names its transport C{ws} in URIs, secure or not
        (RFC 7118 §5.2), and C{WS}/C{WSS} in its Via.
        """
        from sipleg.leg import Leg
        from sipleg.transport.tls import TLSConfig
        from tests.certs import CertificateAuthority

        leaf = CertificateAuthority().issue("sip.test", ip_addresses=("127.0.0.1",))
        ws = Leg(port=8080, proto="ws")
        wss = Leg(port=8443, proto="wss", tls=TLSConfig(leaf.cert, leaf.key))
        self.assertEqual(ws.contact, "sip:127.0.0.1:8080;transport=ws")
        self.assertEqual(wss.record_route, "<sip:127.0.0.1:8443;transport=ws;lr>")
        self.assertTrue(wss.via_line.startswith(b"Via: SIP/2.0/WSS 127.0.0.1:8443;"))
        self.assertTrue(wss.is_local_uri(route_uri(wss.record_route)))
        self.assertTrue(wss.can_deliver_to("sip:x@127.0.0.1:9;transport=ws"))
        self.assertFalse(ws.can_deliver_to("sip:x@127.0.0.1:9;transport=tcp"))


class ListenTests(unittest.TestCase):
    """
    C{--listen ws:} and C{wss:}.
    """

    def test_port_required(self) -> None:
        from sipleg.service import ConfigError, parse_listen

        self.assertEqual(parse_listen("wss:127.0.0.1:8443").address.proto, "wss")
        with self.assertRaises(ConfigError) as raised:
            parse_listen("ws:127.0.0.1")
        self.assertIn("a ws listener needs a port (ws:ADDR:PORT)", str(raised.exception))

    def test_wss_needs_certificate(self) -> None:
        from sipleg.service import ConfigError, ProxyConfig, make_service, parse_listen

        with self.assertRaises(ConfigError) as raised:
            make_service(ProxyConfig(listen=[parse_listen("wss:127.0.0.1:0")]))
        self.assertEqual(str(raised.exception), "a tls or wss listener needs --tls-cert and --tls-key")
