"""
Tests for L{sipleg.flows}: the flow a REGISTER sets, its text form, what
a request does when it is gone, and flows kept by the registrar and its
stores (JSON file, SQLite with the migration of an older database,
Redis encoding).
"""

from __future__ import annotations

import json
import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.flows import (
    Flow,
    asks_outbound,
    flow_gone,
    flow_token,
    parse_flow,
    registration_flow,
    token_flow,
    token_route,
)
from sipleg.keepalive import KEEPALIVE, KeepAlive
from sipleg.leg import Leg
from sipleg.message import Request
from sipleg.redisstore import _decode, _encode
from sipleg.registrar import Binding, BindingTable, Registrar
from sipleg.store import SQLiteStore
from sipleg.transport.memory import MemorySocketPool
from sipleg.uri import parse_uri

NOW = 1_700_000_000.0
AOR = "sip:bob@example.com"
INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000000000001>"
#: The Contact parameters of an RFC 5626 outbound registration, but reg-id.
OUTBOUND = f'+sip.instance="{INSTANCE}"'


def register(contact: str, cseq: int = 1, expires: int = 600, params: str = "") -> Request:
    return Request(
        "REGISTER",
        "sip:example.com",
        [
            ("Via", f"SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-r{cseq}"),
            ("From", f"<{AOR}>;tag=f"),
            ("To", f"<{AOR}>"),
            ("Call-ID", "flows"),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", f"<{contact}>;expires={expires}{params}"),
        ],
    )


class FlowTests(unittest.TestCase):
    """
    The pure rules: which REGISTER sets a flow, the text the stores keep,
    what a request does when the flow is gone.
    """

    def test_text(self) -> None:
        for flow, text in [
            (Flow("tcp", "192.0.2.9", 40112), "tcp 192.0.2.9:40112"),
            (
                Flow("tls", "2001:db8::9", 5061, "127.0.0.1:4000", INSTANCE, 2),
                f"tls [2001:db8::9]:5061 127.0.0.1:4000 ob=2,{INSTANCE}",
            ),
            (
                Flow("udp", "192.0.2.9", 5060, instance=INSTANCE, reg_id=1),
                f"udp 192.0.2.9:5060 ob=1,{INSTANCE}",
            ),
            (Flow("tls", "192.0.2.9", 1), "tls 192.0.2.9:1"),
        ]:
            self.assertEqual(str(flow), text)
            self.assertEqual(parse_flow(text), flow)
        for bad in (
            "",
            "tcp",
            "sctp 192.0.2.9:1",
            "tcp 192.0.2.9",
            "tcp 192.0.2.9:1 a b",
            "tcp [::1:1",
            "tcp 192.0.2.9:1 ob=x,<urn:a>",
            "tcp 192.0.2.9:1 ob=1,",
        ):
            self.assertRaises(ValueError, parse_flow, bad)

    def test_streams_always(self) -> None:
        """
        A REGISTER over a stream sets a flow to its source, whatever its
        Contact says; C{reg-id} and C{+sip.instance} mark it outbound.
        """
        source = Address("192.0.2.9", 40112, "tls")
        contact = parse_uri("sip:bob@192.0.2.9:5061;transport=tls")
        self.assertEqual(registration_flow(source, contact, "o"), Flow("tls", "192.0.2.9", 40112, "o"))
        outbound = registration_flow(source, contact, instance=INSTANCE, reg_id=1)
        self.assertTrue(outbound is not None and outbound.outbound)
        # Outbound over UDP: a flow even without NAT (RFC 5626 §6).
        udp = registration_flow(Address("127.0.0.1", 5060), parse_uri("sip:u@127.0.0.1"), "o", INSTANCE, 1)
        self.assertEqual(udp, Flow("udp", "127.0.0.1", 5060, "", INSTANCE, 1))

    def test_udp_nat(self) -> None:
        """
        Over UDP a flow is set only when the Contact is an address other
        than the source (NAT), not for a host name.
        """
        source = Address("127.0.0.1", 40000)
        self.assertEqual(
            registration_flow(source, parse_uri("sip:u@10.0.0.9:5060")), Flow("udp", "127.0.0.1", 40000)
        )
        self.assertEqual(
            registration_flow(source, parse_uri("sip:u@127.0.0.1")), Flow("udp", "127.0.0.1", 40000)
        )
        self.assertIsNone(registration_flow(source, parse_uri("sip:u@127.0.0.1:40000")))
        self.assertIsNone(registration_flow(source, parse_uri("sip:u@phone.example.com:5060")))

    def test_gone(self) -> None:
        """
        A gone TCP flow dials the Contact; TLS and WebSocket ones answer
        480; an outbound registration's, over any stream, 430 (RFC 5626
        §5.3).
        """
        self.assertIsNone(flow_gone(Flow("tcp", "192.0.2.9", 1)))
        self.assertEqual(flow_gone(Flow("tls", "192.0.2.9", 1)), 480)
        self.assertEqual(flow_gone(Flow("wss", "192.0.2.9", 1)), 480)
        self.assertEqual(flow_gone(Flow("tls", "192.0.2.9", 1, instance=INSTANCE, reg_id=1)), 430)
        self.assertEqual(flow_gone(Flow("tcp", "192.0.2.9", 1, instance=INSTANCE, reg_id=1)), 430)


class TableTests(unittest.TestCase):
    """
    L{BindingTable} keeps the flow of each binding, hands it out with the
    lookup, counts flows by transport and saves them.
    """

    def test_lookup_and_refresh(self) -> None:
        table = BindingTable(["example.com"])
        contact = "sip:bob@192.0.2.9:5099;transport=tcp"
        first = Address("192.0.2.9", 40001, "tcp")
        self.assertEqual(table.process(register(contact), NOW, first, "127.0.0.1:7")[0].code, 200)
        found = table.lookup(parse_uri(AOR), NOW)
        assert found is not None
        self.assertEqual(found.flows, ((contact, Flow("tcp", "192.0.2.9", 40001, "127.0.0.1:7")),))
        self.assertEqual(table.flows, {"tcp": 1})
        # A refresh over a new connection moves the flow.
        table.process(register(contact, cseq=2), NOW, Address("192.0.2.9", 40002, "tcp"))
        found = table.lookup(parse_uri(AOR), NOW)
        assert found is not None
        self.assertEqual(found.flows, ((contact, Flow("tcp", "192.0.2.9", 40002)),))
        self.assertEqual(table.flows, {"tcp": 1})
        # Without a source (a REGISTER not from the network): no flow.
        table.process(register(contact, cseq=3), NOW)
        self.assertEqual(table.lookup(parse_uri(AOR), NOW).flows, ())  # type: ignore[union-attr]
        self.assertEqual(table.flows, {"tcp": 0})

    def test_outbound(self) -> None:
        """
        RFC 5626 §6: a Contact with C{reg-id} and C{+sip.instance}
        registers an outbound flow; the 200 says C{Require: outbound}
        and the C{Flow-Timer}; each reg-id is a binding of its own, found
        by instance and reg-id (not by Contact), and the instance is one
        target whose flows come in reg-id order.
        """
        table = BindingTable(["example.com"])
        table.flow_timer = 25
        contact = "sip:bob@x.invalid;transport=tls;ob"
        first = Address("192.0.2.9", 40001, "tls")
        second = Address("192.0.2.9", 40002, "tls")
        answer, _ = table.process(register(contact, params=f";reg-id=2;{OUTBOUND}"), NOW, second)
        self.assertEqual(
            (answer.code, answer.get_header("require"), answer.get_header("flow-timer")),
            (200, "outbound", "25"),
        )
        table.process(register(contact, cseq=2, params=f";reg-id=1;{OUTBOUND}"), NOW, first)
        self.assertEqual(table.count(), 2)
        found = table.lookup(parse_uri(AOR), NOW)
        assert found is not None
        self.assertEqual(found.contacts, [contact])
        self.assertEqual(
            found.flows,
            (
                (contact, Flow("tls", "192.0.2.9", 40001, "", INSTANCE, 1)),
                (contact, Flow("tls", "192.0.2.9", 40002, "", INSTANCE, 2)),
            ),
        )
        # Refreshing reg-id 2 over a new connection replaces its flow.
        third = Address("192.0.2.9", 40003, "tls")
        table.process(register(contact, cseq=3, params=f";reg-id=2;{OUTBOUND}"), NOW, third)
        self.assertEqual(sorted(b.flow.port for b in table.bindings(NOW)), [40001, 40003])  # type: ignore[union-attr]
        # A plain REGISTER gets no Require; Require: outbound is understood.
        plain = register("sip:bob@192.0.2.9:5060", cseq=4)
        plain.add_header("Require", "outbound")
        answer, _ = table.process(plain, NOW, Address("192.0.2.9", 5060))
        self.assertEqual((answer.code, answer.get_header("require")), (200, None))
        for bad in (";reg-id=0;" + OUTBOUND, ";reg-id=x;" + OUTBOUND, ';reg-id=1;+sip.instance=""'):
            answer, _ = table.process(register(contact, cseq=5, params=bad), NOW, first)
            self.assertEqual(answer.code, 400, bad)

    def test_path(self) -> None:
        """
        RFC 3327: the Path of a REGISTER is kept with its bindings, echoed
        in the 200 when the phone supports it, and handed out with the
        lookup; the file keeps it.
        """
        table = BindingTable(["example.com"])
        request = register("sip:bob@10.0.0.9:5060")
        request.add_header("Path", "<sip:edge1.example.net;lr>, <sip:edge2.example.net;lr>")
        request.add_header("Supported", "path")
        answer, _ = table.process(request, NOW)
        path = ("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>")
        self.assertEqual(tuple(answer.get_headers("path")), path)
        found = table.lookup(parse_uri(AOR), NOW)
        assert found is not None
        self.assertEqual(found.paths, (("sip:bob@10.0.0.9:5060", path),))
        loaded = BindingTable.from_json(table.to_json(), NOW, ["example.com"])
        self.assertEqual(loaded.bindings(NOW)[0].path, path)

    def test_expiry_counts(self) -> None:
        table = BindingTable(["example.com"], min_expires=1)
        table.process(register("sip:bob@10.0.0.9:5060", expires=10), NOW, Address("127.0.0.1", 40000))
        self.assertEqual(table.flows, {"udp": 1})
        table.expire(NOW + 11)
        self.assertEqual(table.flows, {"udp": 0})

    def test_json(self) -> None:
        """
        The registrations file keeps flows; a binding without one has no
        C{flow} field (files of the previous version load as they are).
        """
        table = BindingTable(["example.com"])
        table.process(register("sip:bob@10.0.0.9:5060"), NOW, Address("127.0.0.1", 40000))
        data = table.to_json()
        (entry,) = json.loads(data)["bindings"]
        self.assertEqual(entry["flow"], "udp 127.0.0.1:40000")
        loaded = BindingTable.from_json(data, NOW, ["example.com"])
        self.assertEqual(loaded.bindings(NOW)[0].flow, Flow("udp", "127.0.0.1", 40000))
        del entry["flow"]
        plain = json.dumps({"version": 1, "next_order": 1, "known_users": [], "bindings": [entry]})
        self.assertIsNone(BindingTable.from_json(plain.encode(), NOW).bindings(NOW)[0].flow)


class StoreTests(unittest.TestCase):
    """
    The stores keep flows: SQLite (and a database of the previous
    version is migrated) and Redis's encoding.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.path = os.path.join(self.mktemp(), "registrations.db")
        os.makedirs(os.path.dirname(self.path))

    def registrar(self) -> Registrar:
        clock = Clock()
        clock.advance(NOW)
        registrar = Registrar(["example.com"], clock, SQLiteStore(self.path, self.reactor))
        self.addCleanup(registrar.stop)
        return registrar

    async def test_sqlite_round_trip(self) -> None:
        registrar = self.registrar()
        request = register("sip:bob@10.0.0.9:5060")
        request.add_header("Path", "<sip:edge.example.net;lr>")
        await registrar.register(request, source=Address("127.0.0.1", 40000))  # type: ignore[misc]
        await registrar.stop()
        (binding,) = self.registrar().bindings()
        self.assertEqual(binding.flow, Flow("udp", "127.0.0.1", 40000))
        self.assertEqual(binding.path, ("<sip:edge.example.net;lr>",))

    async def test_sqlite_migration(self) -> None:
        """
        A database written before flows existed gets the column; its
        bindings load without a flow, and new ones keep theirs.
        """
        with sqlite3.connect(self.path) as db:
            db.executescript(
                "CREATE TABLE bindings (ord INTEGER PRIMARY KEY, aor TEXT NOT NULL, contact TEXT NOT NULL,"
                " q REAL NOT NULL, expires_at REAL NOT NULL, call_id TEXT NOT NULL, cseq INTEGER NOT NULL);"
                "CREATE TABLE users (aor TEXT PRIMARY KEY) WITHOUT ROWID;"
            )
            db.execute(
                "INSERT INTO bindings VALUES (0, ?, 'sip:bob@192.0.2.1:5060', 1.0, ?, 'old', 1)",
                (AOR, NOW + 600),
            )
        db.close()
        registrar = self.registrar()
        (old,) = registrar.bindings()
        self.assertEqual((old.contact, old.flow), ("sip:bob@192.0.2.1:5060", None))
        await registrar.register(register("sip:bob@10.0.0.9:5060"), source=Address("127.0.0.1", 40000))  # type: ignore[misc]
        await registrar.stop()
        flows = {binding.contact: binding.flow for binding in self.registrar().bindings()}
        self.assertEqual(
            flows,
            {"sip:bob@192.0.2.1:5060": None, "sip:bob@10.0.0.9:5060": Flow("udp", "127.0.0.1", 40000)},
        )

    def test_redis_encoding(self) -> None:
        """
        A binding's row in Redis carries its flow's text after the other
        fields (rows of the previous version, without it, still read); a
        malformed flow makes the AOR's field unreadable, logged.
        """
        bindings = (
            Binding(AOR, "sip:bob@10.0.0.9:5060", 1.0, NOW, "c", 1, 0, Flow("udp", "127.0.0.1", 40000)),
            Binding(AOR, "sip:bob@192.0.2.1", 0.5, NOW, "c", 1, 1),
            Binding(AOR, "sip:bob@192.0.2.2", 0.5, NOW, "c", 1, 2, None, ("<sip:edge;lr>",)),
        )
        text = _encode(bindings)
        self.assertEqual(json.loads(text)[0][-1], "udp 127.0.0.1:40000")
        self.assertEqual(tuple(_decode(AOR, text)), bindings)
        self.assertEqual(json.loads(text)[2][-2:], [None, ["<sip:edge;lr>"]])
        self.assertEqual(_decode(AOR, '[["sip:bob@192.0.2.1",1,1,"c",1,0,"tcp nowhere"]]'), [])
        self.assertEqual(_decode(AOR, '[["sip:bob@192.0.2.1",1,1,"c",1,0,null,"<sip:edge;lr>"]]'), [])


class KeepAliveTests(unittest.TestCase):
    """
    L{KeepAlive} on a clock: every UDP flow once per interval, spread
    over it, bounded per tick; workers share the flows.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.registrar = Registrar(["example.com"], self.clock)
        for n in range(10):
            request = register(f"sip:bob@10.0.0.{n}:5060")
            request.set_header("to", f"<sip:u{n}@example.com>")
            request.set_header("call-id", f"c{n}")
            self.registrar.register(request, source=Address("127.0.0.1", 40000 + n))
        # Over a stream: not kept alive here.
        self.registrar.register(
            register("sip:bob@192.0.2.1;transport=tcp"), source=Address("192.0.2.1", 1, "tcp")
        )
        self.pool = MemorySocketPool(Address("127.0.0.1", 5060))
        self.leg = Leg(socketpool=self.pool)

    def keepalive(self, share: tuple[int, int] = (0, 1)) -> KeepAlive:
        keepalive = KeepAlive(self.registrar, lambda: [self.leg], 5, self.clock, share)
        keepalive.start()
        self.addCleanup(keepalive.stop)
        return keepalive

    def test_spread(self) -> None:
        keepalive = self.keepalive()
        self.clock.advance(1)
        self.assertEqual(len(self.pool.sent), 2)
        self.clock.pump([1] * 4)
        self.assertEqual(sorted(dst.port for _, dst in self.pool.sent), list(range(40000, 40010)))
        self.assertEqual({data for data, _ in self.pool.sent}, {KEEPALIVE})
        # The next round.
        self.clock.pump([1] * 5)
        self.assertEqual(keepalive.sent, 20)
        keepalive.stop()
        self.clock.pump([1] * 5)
        self.assertEqual(keepalive.sent, 20)

    def test_workers_share(self) -> None:
        first, second = self.keepalive((0, 2)), self.keepalive((1, 2))
        self.clock.pump([1] * 5)
        self.assertEqual(first.sent + second.sent, 10)
        self.assertEqual(len({dst for _, dst in self.pool.sent}), 10)

    def test_bad(self) -> None:
        self.assertRaises(ValueError, KeepAlive, self.registrar, list, 0, self.clock)
        self.assertRaises(ValueError, KeepAlive, self.registrar, list, 5, self.clock, (2, 2))


class TokenTests(unittest.TestCase):
    """
    Flow tokens (RFC 5626 §5.2) in our Record-Route and Path.
    """

    def test_round_trip(self) -> None:
        flow = Flow("tls", "2001:db8::9", 40112, "127.0.0.1:7", INSTANCE, 1)
        token = flow_token(flow, b"secret")
        self.assertRegex(token, r"^[A-Za-z0-9_.-]+$")
        self.assertEqual(token_flow(token, b"secret"), flow)
        self.assertIsNone(token_flow(token, b"other secret"))
        forged = flow_token(Flow("tcp", "192.0.2.66", 1), b"guess")
        for bad in (forged, "", "x", "a.b", token[:-2], token.replace(".", "")):
            self.assertIsNone(token_flow(bad, b"secret"), bad)

    def test_route(self) -> None:
        self.assertEqual(
            token_route("<sip:192.0.2.1:5060;transport=tcp;lr>", "T"),
            "<sip:T@192.0.2.1:5060;transport=tcp;lr>",
        )
        self.assertEqual(token_route("<sip:192.0.2.1:5060;lr>", "T", True), "<sip:T@192.0.2.1:5060;lr;ob>")

    def test_asks_outbound(self) -> None:
        self.assertTrue(asks_outbound("<sip:alice@192.0.2.1;transport=tls;ob>"))
        # (A bare addr-spec's parameters are the header's, RFC 3261 §20.10.)
        for value in (None, "", "<sip:bob@192.0.2.1>", "<sip:bob@192.0.2.1>;ob", "sip:a@192.0.2.1;ob", "<<"):
            self.assertFalse(asks_outbound(value), value)
