"""
Tests for L{sipleg.registrar}: RFC 3261 §10.3 REGISTER processing, the
location service, expiry on a clock and persistence.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from sipleg.errors import SIPError
from sipleg.message import Request, Response
from sipleg.registrar import (
    Binding,
    BindingTable,
    LookupResult,
    Registrar,
    RegistrationFileError,
)
from sipleg.store import SQLiteStore
from sipleg.uri import URI, parse_uri

ALICE = "<sip:alice@example.com>"
HOME = "<sip:alice@192.0.2.10:5071>"
WORK = "<sip:alice@192.0.2.20:5072>"
MOBILE = "<sip:alice@192.0.2.30:5073>"
NOW = 1_700_000_000.0


def make_register(
    contacts: Iterable[str] = (HOME,),
    to: str = ALICE,
    expires: int | str | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    uri: str = "sip:example.com",
    extra: Iterable[tuple[str, str]] = (),
) -> Request:
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.10:5071;branch=z9hG4bK-{call_id}-{cseq}"),
        ("Max-Forwards", "70"),
        ("From", f"{to};tag=from{cseq}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
    ]
    headers += [("Contact", contact) for contact in contacts]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers += list(extra)
    return Request("REGISTER", uri, headers)


def contact_list(response: Response) -> list[str]:
    return response.get_headers("contact")


def never(uri: URI) -> bool:
    return False


class RegisterTests(unittest.TestCase):
    """
    L{BindingTable.register}: RFC 3261 §10.3 steps 2 and 5-8.
    """

    def setUp(self) -> None:
        self.table = BindingTable(["Example.COM", "127.0.0.1"])

    def register(self, now: float = NOW, **kwargs: Any) -> Response:
        return self.table.register(make_register(**kwargs), now)

    def test_default_expiry(self) -> None:
        """
        A contact without expiry gets the default; the 200 lists it with
        its expires parameter and carries a Date.
        """
        response = self.register()
        self.assertEqual(response.code, 200)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=3600"])
        self.assertEqual(response.get_header("date"), "Tue, 14 Nov 2023 22:13:20 GMT")
        self.assertIn(";tag=", response.get_header("to") or "")
        self.assertEqual(
            self.table.bindings(NOW),
            [Binding("sip:alice@example.com", "sip:alice@192.0.2.10:5071", 1.0, NOW + 3600, "call-1", 1, 0)],
        )
        self.assertEqual(self.table.known_users, frozenset(["sip:alice@example.com"]))

    def test_expires_header_and_parameter(self) -> None:
        """
        The Contact's expires parameter wins over the Expires header, which
        wins over the default.
        """
        response = self.register(contacts=[HOME + ";expires=120", WORK], expires=300)
        self.assertEqual(
            contact_list(response),
            ["<sip:alice@192.0.2.10:5071>;expires=120", "<sip:alice@192.0.2.20:5072>;expires=300"],
        )

    def test_max_expires_shortens(self) -> None:
        response = self.register(expires=100000)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=3600"])
        response = self.register(contacts=[HOME + ";expires=99999999999999999999"], cseq=2)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=3600"])

    def test_min_expires(self) -> None:
        """
        A non-zero expiry below the minimum is a 423 with Min-Expires, and
        the whole REGISTER fails.
        """
        response = self.register(contacts=[WORK, HOME + ";expires=59"])
        self.assertEqual((response.code, response.reason), (423, "Interval Too Brief"))
        self.assertEqual(response.get_header("min-expires"), "60")
        self.assertEqual(self.table.bindings(NOW), [])
        self.assertEqual(self.table.known_users, frozenset())
        self.assertEqual(self.register(expires=60).code, 200)

    def test_default_clamped_to_limits(self) -> None:
        table = BindingTable(["example.com"], min_expires=7200, max_expires=9000)
        self.assertEqual(table.default_expires, 7200)
        table = BindingTable(["example.com"], max_expires=300)
        self.assertEqual(table.default_expires, 300)
        self.assertRaises(ValueError, BindingTable, ["example.com"], 100, 50)
        self.assertRaises(ValueError, BindingTable, ["example.com"], -1, 50)

    def test_remove_with_expires_zero(self) -> None:
        self.register(contacts=[HOME, WORK])
        response = self.register(contacts=[HOME + ";expires=0"], cseq=2)
        self.assertEqual(response.code, 200)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.20:5072>;expires=3600"])
        response = self.register(contacts=[WORK], expires=0, cseq=3)
        self.assertEqual(contact_list(response), [])
        self.assertEqual(self.table.bindings(NOW), [])
        self.assertEqual(self.table.next_expiry(), None)

    def test_remove_unknown_contact(self) -> None:
        response = self.register(expires=0)
        self.assertEqual((response.code, contact_list(response)), (200, []))
        self.assertEqual(self.table.known_users, frozenset())

    def test_contacts_compare_as_uris(self) -> None:
        """
        A contact matches its binding by URI equality (§19.1.4): host case
        and an unescaped character do not make a second binding.
        """
        self.register(contacts=["<sip:alice@Host.Example.NET;transport=udp>"])
        response = self.register(contacts=["<sip:%61lice@host.example.net;transport=UDP>"], cseq=2)
        self.assertEqual(len(contact_list(response)), 1)
        self.assertEqual(self.table.bindings(NOW)[0].cseq, 2)

    def test_wildcard_removes_all(self) -> None:
        self.register(contacts=[HOME, WORK])
        self.register(contacts=[MOBILE], call_id="other")
        response = self.register(contacts=["*"], expires=0, cseq=2)
        self.assertEqual((response.code, contact_list(response)), (200, []))
        self.assertEqual(self.table.bindings(NOW), [])

    def test_wildcard_needs_expires_zero_alone(self) -> None:
        self.register()
        for contacts, expires in [
            (["*"], None),
            (["*"], 10),
            (["*", WORK], 0),
            (["*;expires=0"], 0),
        ]:
            response = self.register(contacts=contacts, expires=expires, cseq=5)
            self.assertEqual(response.code, 400, (contacts, expires))
        self.assertEqual(len(self.table.bindings(NOW)), 1)

    def test_wildcard_with_older_cseq(self) -> None:
        """
        C{*} removes a binding of the same Call-ID only with a higher CSeq;
        otherwise nothing is removed.
        """
        self.register(cseq=5)
        self.register(contacts=[WORK], call_id="other")
        response = self.register(contacts=["*"], expires=0, cseq=4)
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.table.bindings(NOW)), 2)

    def test_older_cseq_rejected(self) -> None:
        """
        An older CSeq on the same Call-ID is a 500; the binding is
        untouched.  Another Call-ID updates whatever its CSeq.
        """
        self.register(cseq=10, expires=600)
        response = self.register(cseq=9, expires=1200, now=NOW + 10)
        self.assertEqual(response.code, 500)
        self.assertEqual(self.table.bindings(NOW)[0].expires_at, NOW + 600)
        response = self.register(cseq=1, call_id="call-2", expires=1200, now=NOW + 10)
        self.assertEqual(response.code, 200)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=1200"])
        (binding,) = self.table.bindings(NOW)
        self.assertEqual((binding.call_id, binding.cseq, binding.expires_at), ("call-2", 1, NOW + 1210))

    def test_older_cseq_fails_whole_request(self) -> None:
        self.register(contacts=[HOME], cseq=10)
        response = self.register(contacts=[WORK, HOME], cseq=9)
        self.assertEqual(response.code, 500)
        self.assertEqual([b.contact for b in self.table.bindings(NOW)], ["sip:alice@192.0.2.10:5071"])

    def test_retransmission_accepted(self) -> None:
        """
        The same REGISTER again (its 200 was lost; no transaction layer
        absorbs it) gets a 200 again.
        """
        first = self.register(cseq=3)
        again = self.register(cseq=3, now=NOW + 1)
        self.assertEqual((first.code, again.code), (200, 200))
        self.assertEqual(len(self.table.bindings(NOW)), 1)

    def test_same_contact_twice(self) -> None:
        response = self.register(contacts=[HOME + ";expires=100", HOME + ";expires=200"])
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=200"])

    def test_lists_every_binding_with_remaining_time(self) -> None:
        """
        The 200 lists every current binding of the AOR, with the seconds
        it has left, highest q first; a query (no Contact) changes nothing.
        """
        self.register(contacts=[HOME + ";q=0.5"], expires=3600)
        self.register(contacts=[WORK], call_id="c2", expires=600, now=NOW + 100)
        self.register(to="<sip:bob@example.com>", contacts=[MOBILE])
        changes = self.table.changes
        response = self.register(contacts=[], call_id="c3", now=NOW + 200.5)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            contact_list(response),
            [
                "<sip:alice@192.0.2.20:5072>;expires=500",
                "<sip:alice@192.0.2.10:5071>;expires=3400;q=0.5",
            ],
        )
        self.assertEqual(self.table.changes, changes)

    def test_expired_binding_not_listed(self) -> None:
        self.register(contacts=[HOME], expires=60)
        self.register(contacts=[WORK], call_id="c2", expires=600)
        response = self.register(contacts=[], call_id="c3", now=NOW + 60)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.20:5072>;expires=540"])

    def test_to_is_the_aor(self) -> None:
        """
        The AOR comes from To, canonical: parameters and port dropped,
        escapes decoded, host lower-case, sips as sip.
        """
        self.register(to='"Alice" <sips:al%69ce@EXAMPLE.com:5061;user=phone>')
        (binding,) = self.table.bindings(NOW)
        self.assertEqual(binding.aor, "sip:alice@example.com")

    def test_to_not_ours(self) -> None:
        for to in ["<sip:alice@example.org>", "<sip:example.com>", "<tel:+15551234>"]:
            response = self.register(to=to)
            self.assertEqual(response.code, 404, to)
        self.assertEqual(self.table.bindings(NOW), [])

    def test_malformed(self) -> None:
        cases: list[dict[str, Any]] = [
            {"to": "<sip:alice@exa mple.com>"},
            {"contacts": ["<sip:alice@@x>"]},
            {"contacts": [HOME + ";expires=soon"]},
            {"contacts": [HOME + ";expires=-1"]},
            {"contacts": [HOME + ";q=1.5"]},
            {"contacts": [HOME + ";q=0.1234"]},
            {"contacts": [HOME + ";q"]},
            {"contacts": [HOME + ";expires"]},
        ]
        for kwargs in cases:
            response = self.register(**kwargs)
            self.assertEqual(response.code, 400, kwargs)
        self.assertEqual(self.table.bindings(NOW), [])

    def test_require(self) -> None:
        response = self.register(extra=[("Require", "path, gruu")])
        self.assertEqual(response.code, 420)
        self.assertEqual(response.get_headers("unsupported"), ["path", "gruu"])

    def test_rfc2543_date_expires_ignored(self) -> None:
        response = self.register(expires="Thu, 01 Dec 2094 16:00:00 GMT")
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=3600"])


class LookupTests(unittest.TestCase):
    """
    L{BindingTable.lookup}: the location service.
    """

    def setUp(self) -> None:
        self.table = BindingTable(["example.com", "127.0.0.1"])

    def register(self, **kwargs: Any) -> None:
        response = self.table.register(make_register(**kwargs), NOW)
        self.assertEqual(response.code, 200)

    def lookup(
        self, uri: str, now: float = NOW, own_uri: Callable[[URI], bool] | None = None
    ) -> LookupResult | None:
        return self.table.lookup(parse_uri(uri), now, own_uri)

    def test_routes_to_contact(self) -> None:
        self.register()
        self.assertEqual(
            self.lookup("sip:alice@example.com"),
            LookupResult(
                "sip:alice@example.com", ["sip:alice@192.0.2.10:5071"], None, [["sip:alice@192.0.2.10:5071"]]
            ),
        )
        # Host case-insensitive, parameters ignored, default port.
        result = self.lookup("sip:alice@EXAMPLE.COM:5060;transport=udp")
        assert result is not None
        self.assertEqual(result.contacts, ["sip:alice@192.0.2.10:5071"])

    def test_q_order_and_ties(self) -> None:
        """
        Highest q first; among equals the first registered, even after a
        refresh.
        """
        self.register(contacts=[HOME + ";q=0.5", WORK])
        self.register(contacts=[MOBILE + ";q=1.0"], call_id="c2")
        self.register(contacts=[WORK], cseq=2)
        result = self.lookup("sip:alice@example.com")
        assert result is not None
        self.assertEqual(
            result.contacts,
            ["sip:alice@192.0.2.20:5072", "sip:alice@192.0.2.30:5073", "sip:alice@192.0.2.10:5071"],
        )
        self.assertIsNone(result.code)
        # For a forking proxy: one group per q.
        self.assertEqual(
            result.groups,
            [["sip:alice@192.0.2.20:5072", "sip:alice@192.0.2.30:5073"], ["sip:alice@192.0.2.10:5071"]],
        )

    def test_unknown_user_404_known_480(self) -> None:
        self.assertEqual(self.lookup("sip:alice@example.com"), LookupResult("sip:alice@example.com", [], 404))
        self.register(expires=60)
        self.assertEqual(
            self.lookup("sip:alice@example.com", NOW + 60),
            LookupResult("sip:alice@example.com", [], 480),
        )
        self.assertTrue(self.table.expire(NOW + 60))
        result = self.lookup("sip:alice@example.com", NOW + 60)
        assert result is not None
        self.assertEqual(result.code, 480)

    def test_user_is_case_sensitive(self) -> None:
        self.register()
        result = self.lookup("sip:Alice@example.com")
        assert result is not None
        self.assertEqual(result.code, 404)
        result = self.lookup("sip:%61lice@example.com")
        assert result is not None
        self.assertEqual(result.contacts, ["sip:alice@192.0.2.10:5071"])

    def test_not_ours(self) -> None:
        self.register()
        for uri in ["sip:alice@example.org", "sip:example.com", "tel:+15551234", "sip:alice@192.0.2.10:5071"]:
            self.assertIsNone(self.lookup(uri), uri)

    def test_contact_is_not_an_aor(self) -> None:
        """
        On a domain that is an IP, a contact on that host (another port)
        is not the AOR, even when its binding is gone; the AOR itself and
        our own port are.
        """
        self.register(to="<sip:alice@127.0.0.1>", contacts=["<sip:alice@127.0.0.1:5071>"], expires=60)
        result = self.lookup("sip:alice@127.0.0.1")
        assert result is not None
        self.assertEqual(result.contacts, ["sip:alice@127.0.0.1:5071"])
        self.assertIsNone(self.lookup("sip:alice@127.0.0.1:5071"))
        self.assertIsNone(self.lookup("sip:alice@127.0.0.1:5071", NOW + 100))
        self.assertIsNone(self.lookup("sip:alice@127.0.0.1:5099"))
        result = self.lookup("sip:alice@127.0.0.1:5099", own_uri=lambda uri: uri.port == 5099)
        assert result is not None
        self.assertEqual(result.contacts, ["sip:alice@127.0.0.1:5071"])

    def test_contact_on_default_port(self) -> None:
        """
        A registered contact that looks like the AOR itself is forwarded
        to, not looked up again.
        """
        self.register(to="<sip:alice@127.0.0.1>", contacts=["<sip:alice@127.0.0.1>"])
        self.assertIsNone(self.lookup("sip:alice@127.0.0.1"))

    def test_sips_only_to_sips_contacts(self) -> None:
        self.register(contacts=[HOME])
        result = self.lookup("sips:alice@example.com")
        assert result is not None
        self.assertEqual(result.code, 480)
        self.register(contacts=["<sips:alice@192.0.2.40>"], call_id="c2")
        result = self.lookup("sips:alice@example.com")
        assert result is not None
        self.assertEqual(result.contacts, ["sips:alice@192.0.2.40"])
        result = self.lookup("sip:alice@example.com")
        assert result is not None
        self.assertEqual(len(result.contacts), 2)

    def test_expiry(self) -> None:
        self.assertIsNone(self.table.next_expiry())
        self.assertFalse(self.table.expire(NOW))
        self.register(contacts=[HOME + ";expires=100", WORK + ";expires=200"])
        self.assertEqual(self.table.next_expiry(), NOW + 100)
        self.assertFalse(self.table.expire(NOW + 99))
        self.assertTrue(self.table.expire(NOW + 100))
        self.assertEqual(self.table.next_expiry(), NOW + 200)
        self.assertEqual([b.contact for b in self.table.bindings(NOW)], ["sip:alice@192.0.2.20:5072"])
        self.assertTrue(self.table.expire(NOW + 300))
        self.assertIsNone(self.table.next_expiry())


class JSONTests(unittest.TestCase):
    """
    L{BindingTable.to_json} and L{BindingTable.from_json}.
    """

    def setUp(self) -> None:
        self.table = BindingTable(["example.com"])
        self.table.register(make_register(contacts=[HOME + ";expires=100;q=0.3", WORK]), NOW)
        self.table.register(make_register(to="<sip:bob@example.com>", contacts=[MOBILE]), NOW)

    def test_round_trip(self) -> None:
        data = self.table.to_json()
        document = json.loads(data)
        self.assertEqual(document["version"], 1)
        self.assertEqual(document["bindings"][0]["expires_at"], NOW + 100)
        copy = BindingTable.from_json(data, NOW, ["example.com"])
        self.assertEqual(copy.bindings(NOW), self.table.bindings(NOW))
        self.assertEqual(copy.known_users, self.table.known_users)
        self.assertEqual(copy.to_json(), data)
        # The order counter goes on where it stopped.
        copy.register(make_register(contacts=["<sip:alice@192.0.2.99>"], call_id="new"), NOW)
        self.assertEqual(max(b.order for b in copy.bindings(NOW)), 3)

    def test_expired_dropped_known_kept(self) -> None:
        copy = BindingTable.from_json(self.table.to_json(), NOW + 3600, ["example.com"])
        self.assertEqual(copy.bindings(NOW), [])
        self.assertIsNone(copy.next_expiry())
        result = copy.lookup(parse_uri("sip:bob@example.com"), NOW + 3600)
        assert result is not None
        self.assertEqual(result.code, 480)

    def test_corrupt(self) -> None:
        good = json.loads(self.table.to_json())
        binding = good["bindings"][0]
        bad: list[object] = [
            b"",
            b"{",
            b"\xff\xfe",
            b"[]",
            b"null",
            {**good, "version": 2},
            {**good, "bindings": {}},
            {**good, "known_users": [1]},
            {**good, "next_order": "3"},
            {**good, "next_order": 1},
            {**good, "bindings": [{**binding, "extra": 1}]},
            {**good, "bindings": [{k: v for k, v in binding.items() if k != "cseq"}]},
            {**good, "bindings": [{**binding, "cseq": "1"}]},
            {**good, "bindings": [{**binding, "q": 2}]},
            {**good, "bindings": [{**binding, "expires_at": None}]},
            {**good, "bindings": [{**binding, "contact": "sip:"}]},
            {**good, "bindings": [{**binding, "aor": "tel:123"}]},
            {**good, "bindings": [{**binding, "order": True}]},
        ]
        for value in bad:
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            error = self.assertRaises(RegistrationFileError, BindingTable.from_json, data, NOW)
            self.assertIsInstance(error, SIPError)
            self.assertNotIn("\n", str(error))
        self.assertRaises(
            RegistrationFileError,
            BindingTable.from_json,
            self.table.to_json().replace(b"Infinity", b"x").replace(b'"q":0.3', b'"q":NaN'),
            NOW,
        )


class RegistrarTests(unittest.TestCase):
    """
    L{Registrar}: the table on a clock and on disk.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)

    def registrar(self, **kwargs: int) -> Registrar:
        registrar = Registrar(["example.com", "127.0.0.1"], self.clock, **kwargs)
        self.addCleanup(registrar.stop)
        return registrar

    def pending(self) -> list[float]:
        return [call.getTime() for call in self.clock.getDelayedCalls()]

    def test_is_registration(self) -> None:
        registrar = self.registrar()
        self.assertTrue(registrar.is_registration(make_register(), never))
        self.assertTrue(registrar.is_registration(make_register(uri="sip:EXAMPLE.com:5060"), never))
        self.assertFalse(registrar.is_registration(make_register(uri="sip:example.org"), never))
        self.assertFalse(registrar.is_registration(make_register(uri="sip:127.0.0.1:5099"), never))
        self.assertTrue(
            registrar.is_registration(make_register(uri="sip:127.0.0.1:5099"), lambda uri: uri.port == 5099)
        )
        self.assertTrue(registrar.is_registration(make_register(uri="sip:192.0.2.1"), lambda uri: True))
        invite = Request("INVITE", "sip:example.com", make_register().headers)
        self.assertFalse(registrar.is_registration(invite, lambda uri: True))
        self.assertFalse(registrar.is_registration(make_register(uri="tel:123"), lambda uri: True))

    def test_timer_only_while_bindings_exist(self) -> None:
        """
        Exactly one timer is pending, for the next expiry, while there are
        bindings; none when the table is empty.
        """
        registrar = self.registrar()
        self.assertEqual(self.pending(), [])
        registrar.register(make_register(expires=600))
        self.assertEqual(self.pending(), [NOW + 600])
        registrar.register(make_register(contacts=[WORK], call_id="c2", expires=300))
        self.assertEqual(self.pending(), [NOW + 300])
        registrar.register(make_register(contacts=[MOBILE], call_id="c3", expires=900))
        self.assertEqual(self.pending(), [NOW + 300])
        self.clock.advance(300)
        self.assertEqual(self.pending(), [NOW + 600])
        self.assertEqual(len(registrar.bindings()), 2)
        registrar.register(make_register(contacts=["*"], expires=0, call_id="c4"))
        self.assertEqual(self.pending(), [])
        self.assertEqual(registrar.bindings(), [])

    def test_expiry_on_clock(self) -> None:
        registrar = self.registrar()
        registrar.register(make_register(contacts=[HOME, WORK + ";expires=120"]))
        self.clock.advance(119)
        result = registrar.lookup(parse_uri("sip:alice@example.com"))
        assert result is not None
        self.assertEqual(len(result.contacts), 2)
        self.clock.advance(1)
        self.assertEqual([b.contact for b in registrar.bindings()], ["sip:alice@192.0.2.10:5071"])
        self.clock.advance(3480)
        self.assertEqual(registrar.bindings(), [])
        self.assertEqual(self.pending(), [])
        result = registrar.lookup(parse_uri("sip:alice@example.com"))
        assert result is not None
        self.assertEqual(result.code, 480)

    def test_stop_cancels_timer(self) -> None:
        registrar = self.registrar()
        registrar.register(make_register())
        registrar.stop()
        self.assertEqual(self.pending(), [])

    def test_limits_passed_on(self) -> None:
        registrar = self.registrar(min_expires=120, max_expires=600, default_expires=300)
        response = registrar.register(make_register(expires=100))
        assert isinstance(response, Response)
        self.assertEqual(response.get_header("min-expires"), "120")
        response = registrar.register(make_register())
        assert isinstance(response, Response)
        self.assertEqual(contact_list(response), ["<sip:alice@192.0.2.10:5071>;expires=300"])


class StoredRegistrarTests(unittest.TestCase):
    """
    L{Registrar} on an L{SQLiteStore}: answered once durable, loaded at
    start, expired on time after a restart, undone when it cannot be kept.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = os.path.join(self.mktemp(), "registrations.db")
        os.makedirs(os.path.dirname(self.path))

    def registrar(self, path: str | None = None, **kwargs: int) -> Registrar:
        store = SQLiteStore(path or self.path, self.reactor)
        registrar = Registrar(["example.com", "127.0.0.1"], self.clock, store, **kwargs)
        self.addCleanup(registrar.stop)
        return registrar

    def pending(self) -> list[float]:
        return [call.getTime() for call in self.clock.getDelayedCalls()]

    def on_disk(self) -> list[str]:
        with sqlite3.connect(self.path) as db:
            return [contact for (contact,) in db.execute("SELECT contact FROM bindings ORDER BY ord")]

    async def test_round_trip(self) -> None:
        """
        Every change is on disk when it is answered; a new registrar loads
        it, schedules the next expiry and routes as before.
        """
        registrar = self.registrar()
        self.assertEqual(self.on_disk(), [])
        answer = registrar.register(make_register(contacts=[HOME, WORK]))
        self.assertIsInstance(answer, Deferred)
        self.assertEqual((await answer).code, 200)
        self.assertEqual(self.on_disk(), ["sip:alice@192.0.2.10:5071", "sip:alice@192.0.2.20:5072"])
        removed = await registrar.register(make_register(contacts=[WORK], expires=0, cseq=2))
        self.assertEqual(removed.code, 200)
        self.assertEqual(self.on_disk(), ["sip:alice@192.0.2.10:5071"])
        await registrar.stop()

        self.clock.advance(10)
        again = self.registrar()
        self.assertEqual(again.bindings(), registrar.bindings())
        self.assertEqual(self.pending(), [NOW + 3600])
        result = again.lookup(parse_uri("sip:alice@example.com"))
        assert result is not None
        self.assertEqual(result.contacts, ["sip:alice@192.0.2.10:5071"])
        # A new binding comes after the stored ones.
        await again.register(make_register(contacts=[MOBILE], call_id="new"))
        self.assertEqual(
            [b.contact for b in again.bindings()], ["sip:alice@192.0.2.10:5071", "sip:alice@192.0.2.30:5073"]
        )

    async def test_expired_dropped_on_load(self) -> None:
        registrar = self.registrar()
        await registrar.register(make_register(contacts=[HOME + ";expires=100", WORK]))
        await registrar.stop()
        self.clock.advance(100)
        again = self.registrar()
        self.assertEqual([b.contact for b in again.bindings()], ["sip:alice@192.0.2.20:5072"])
        # Known users are remembered (480, not 404).
        self.clock.advance(3500)
        await again.stop()
        third = self.registrar()
        result = third.lookup(parse_uri("sip:alice@example.com"))
        assert result is not None
        self.assertEqual(result.code, 480)

    async def test_expired_rows_purged(self) -> None:
        registrar = self.registrar()
        await registrar.register(make_register(contacts=[HOME + ";expires=100", WORK]))
        self.clock.advance(100)
        # The purge is queued behind nothing: a later write proves it done.
        await registrar.register(make_register(to="<sip:bob@example.com>", contacts=[MOBILE], call_id="b"))
        self.assertEqual(self.on_disk(), ["sip:alice@192.0.2.20:5072", "sip:alice@192.0.2.30:5073"])

    def test_json_file_migrated(self) -> None:
        table = BindingTable(["example.com"])
        table.register(make_register(contacts=[HOME, WORK]), NOW)
        with open(self.path, "wb") as f:
            f.write(table.to_json())
        logged: list[str] = []
        from twisted.logger import formatEvent, globalLogPublisher

        def observe(event: dict[str, object]) -> None:
            logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        registrar = self.registrar()
        self.assertEqual(registrar.bindings(), table.bindings(NOW))
        self.assertEqual(self.on_disk(), ["sip:alice@192.0.2.10:5071", "sip:alice@192.0.2.20:5072"])
        self.assertTrue(os.path.exists(self.path + ".json-migrated"))
        self.assertEqual(len([line for line in logged if "migrated 2 bindings" in line]), 1)

    def test_corrupt_file_is_an_error(self) -> None:
        for data in [b'{"version": 1, "bindings": [', b"garbage\n\nmore" * 100]:
            with open(self.path, "wb") as f:
                f.write(data)
            error = self.assertRaises(RegistrationFileError, SQLiteStore, self.path, self.reactor)
            message = str(error)
            self.assertIn(self.path, message)
            self.assertNotIn("\n", message)
            # The evidence is left alone.
            with open(self.path, "rb") as f:
                self.assertEqual(f.read(), data)

    def test_unwritable_location_is_an_error(self) -> None:
        path = os.path.join(self.mktemp(), "missing-dir", "registrations.db")
        error = self.assertRaises(RegistrationFileError, SQLiteStore, path, self.reactor)
        self.assertIn("cannot use the registrations database", str(error))
        if os.getuid() != 0:
            # (root writes read-only files anyway.)
            with open(self.path, "wb"):
                pass
            os.chmod(self.path, 0o400)
            self.assertRaises(RegistrationFileError, SQLiteStore, self.path, self.reactor)

    async def test_write_failure_rolls_back(self) -> None:
        """
        When the change cannot be stored the REGISTER fails with 500 and
        the bindings stay as they were.
        """
        registrar = self.registrar()
        await registrar.register(make_register(contacts=[HOME]))
        store = registrar.store
        assert isinstance(store, SQLiteStore)
        # The database goes away under the writer.
        store._db.execute("DROP TABLE bindings")
        response = await registrar.register(make_register(contacts=[WORK], cseq=2))
        self.assertEqual(response.code, 500)
        self.assertEqual([b.contact for b in registrar.bindings()], ["sip:alice@192.0.2.10:5071"])
        self.assertEqual(self.pending(), [NOW + 3600])

    async def test_no_write_without_change(self) -> None:
        registrar = self.registrar()
        await registrar.register(make_register())
        for request in (make_register(contacts=[], call_id="query"), make_register(expires=10, cseq=2)):
            # A query and a 423 change nothing: answered at once.
            self.assertIsInstance(registrar.register(request), Response)

    async def test_many_registers_share_commits(self) -> None:
        """
        REGISTERs that arrive together are answered together, every one
        of them on disk.
        """
        registrar = self.registrar()
        answers = [
            registrar.register(
                make_register(
                    to=f"<sip:u{n}@example.com>",
                    contacts=[f"<sip:u{n}@192.0.2.1:{n + 1000}>"],
                    call_id=f"c{n}",
                )
            )
            for n in range(300)
        ]
        codes = [(await answer).code for answer in answers]
        self.assertEqual(codes, [200] * 300)
        self.assertEqual(len(self.on_disk()), 300)
        status = registrar.status()
        self.assertEqual((status["bindings"], status["store_writes"]), (300, 300))


class BoundedTableTests(unittest.TestCase):
    """
    Whoever registers, the table (and so memory and the file) stays bounded.
    """

    def register(self, table: BindingTable, user: str, cseq: int = 1, expires: int | None = None) -> int:
        request = make_register(
            [f"<sip:{user}@192.0.2.10:5071>"],
            to=f"<sip:{user}@example.com>",
            expires=expires,
            call_id=f"call-{user}",
            cseq=cseq,
        )
        return table.register(request, 1000.0).code

    def test_full_table_answers_503(self) -> None:
        table = BindingTable(["example.com"], max_bindings=2)
        self.assertEqual([self.register(table, user) for user in "abc"], [200, 200, 503])
        self.assertEqual(table.count(), 2)
        # Refreshing or removing an existing binding still works when full.
        self.assertEqual(self.register(table, "a", cseq=2), 200)
        self.assertEqual(self.register(table, "a", cseq=3, expires=0), 200)
        self.assertEqual(table.count(), 1)
        self.assertEqual(self.register(table, "c"), 200)
        self.assertTrue(table.expire(10_000.0))
        self.assertEqual(table.count(), 0)

    def test_count_survives_a_round_trip(self) -> None:
        table = BindingTable(["example.com"], max_bindings=5)
        for user in "abc":
            self.register(table, user)
        again = BindingTable.from_json(table.to_json(), 1000.0, ["example.com"], max_bindings=5)
        self.assertEqual(again.count(), 3)
