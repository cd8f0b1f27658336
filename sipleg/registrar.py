"""
A registrar and location service (RFC 3261 §10.3, §16.5).

Two layers, in the aioquic manner:

 - L{BindingTable} is the sans-IO core: the bindings of every
   address-of-record (AOR) of our domains, REGISTER processing (§10.3 steps
   2 and 5-8), location lookups and expiry.  Time is an argument (C{now},
   in seconds); nothing here touches a clock, a file or the network.
 - L{Registrar} is the thin shell around it: it takes the time from an
   injected C{IReactorTime}, keeps exactly one timer pending for the next
   expiry while bindings exist (none when the table is empty), and, given a
   path, persists the table after every change by an atomic write and
   loads it at start.

Persistence survives C{kill -9} at any moment: the new state is written to
C{PATH.tmp} in the same directory, flushed and C{fsync}ed, renamed onto
C{PATH} (atomic on POSIX) and the directory is C{fsync}ed; the file is
therefore always either the old or the new state, never a torn mixture.
The file holds absolute expiry times, so the clock must be wall-clock
based (the reactor's C{seconds()} is C{time.time()}; so is this module's
expectation in production).

Addresses of record
===================

A URI is an AOR of ours when it is a C{sip:} or C{sips:} URI with a user
part whose host is one of our domains (case-insensitive, a trailing dot
ignored) and which is addressed to our domain rather than to some other
server on that host: it has no port, the scheme's default port, or a port
the caller's C{own_uri} test recognises as one of ours.  So a contact such
as C{sip:alice@127.0.0.1:5071} is never mistaken for an AOR of the domain
C{127.0.0.1}; nor is a URI that names one of the AOR's registered contacts
(same user, host and port), which is simply forwarded to it.

The canonical form of an AOR (RFC 3261 §10.3 step 5) is C{sip:user@host}:
scheme C{sip} (a C{sips:} AOR is the same AOR), the user part
case-sensitive with escapes of unreserved characters decoded, the host in
lower case; password, port, parameters and headers are dropped.  A lookup
of a C{sips:} Request-URI only returns C{sips:} contacts (RFC 5630 §3.1.3:
a SIPS request must not be retargeted to a non-SIPS URI).
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.errors import SIPError, SIPParseError
from sipleg.flows import Flow, parse_flow, registration_flow
from sipleg.message import Request, Response, make_response
from sipleg.uri import URI, normalise_escapes, parse_name_addr, parse_uri, same_hop, uri_equal

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from sipleg.address import Address
    from sipleg.store import ILocationStore, Stored

__all__ = [
    "Binding",
    "BindingTable",
    "LookupResult",
    "RegistrationFileError",
    "Registrar",
    "StoreConflict",
    "StoreUnavailable",
    "domain_key",
]

log = Logger()

#: Version of the registrations file format.
FILE_VERSION = 1

#: RFC 3261 §20.19 / §10.2.1.1: a delta-seconds value above 2**32-1 is
#: taken as 2**32-1.
_MAX_DELTA = 2**32 - 1

# qvalue  =  ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
# (Fixed-length alternatives: no backtracking.)
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


class RegistrationFileError(SIPError):
    """
    The registrations file cannot be read or written: unreadable, not
    JSON, or not a registrations table.  The message is one line, naming
    the file when it is known.
    """


class StoreUnavailable(SIPError):
    """
    The location store cannot be reached now (a REGISTER gets 503 with
    Retry-After; it may work again later).
    """


class StoreConflict(SIPError):
    """
    Another process changed the AOR first: its bindings now are
    C{current}; the REGISTER is processed again on them.
    """

    def __init__(self, aor: str, current: list[Binding]) -> None:
        super().__init__(f"{aor} changed meanwhile")
        self.aor = aor
        self.current = current


@dataclass(frozen=True)
class Binding:
    """
    One binding of an address-of-record to a contact address.

    @ivar aor: the canonical AOR, C{sip:user@domain}.
    @ivar contact: the contact URI as registered (its text, without the
        header parameters of the Contact value).
    @ivar q: the preference (RFC 3261 §20.10 C{q}), 0 to 1, default 1.
    @ivar expires_at: the absolute time the binding expires (the clock's
        seconds).
    @ivar call_id: the Call-ID of the REGISTER that last set it.
    @ivar cseq: the CSeq number of that REGISTER.
    @ivar order: registration order (a counter over the table), to pick the
        first of several contacts of equal C{q}; a refresh keeps it.
    @ivar flow: the hop the REGISTER came by, when requests go back that
        way (L{sipleg.flows}): its connection, or its NAT'ed source.
    @ivar path: the REGISTER's Path values (RFC 3327): the Route set of
        the requests for this binding.
    """

    aor: str
    contact: str
    q: float = 1.0
    expires_at: float = 0.0
    call_id: str = ""
    cseq: int = 0
    order: int = 0
    flow: Flow | None = None
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class LookupResult:
    """
    What the location service says about a Request-URI that is an AOR of
    our domains.

    @ivar aor: the canonical AOR.
    @ivar contacts: the contact URIs bound to it, highest C{q} first, ties
        in registration order; empty when C{code} is set.
    @ivar code: L{None}: retarget the request to C{contacts[0]}; 480 (the
        AOR is known but has no current binding) or 404 (never registered):
        answer the request with that code.
    @ivar groups: C{contacts} in groups of equal C{q}, best first (a
        forking proxy tries a group in parallel, then the next).
    @ivar flows: C{(contact, flow)} for the contacts registered with a
        L{Flow}, in C{contacts} order.
    @ivar paths: C{(contact, Path values)} for the contacts registered
        through a Path (RFC 3327).
    """

    aor: str
    contacts: list[str]
    code: int | None = None
    groups: list[list[str]] = field(default_factory=list)
    flows: tuple[tuple[str, Flow], ...] = ()
    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Change:
    """
    What one REGISTER changed: the bindings of one AOR before and after
    (what a store writes, or what is put back when it cannot).
    """

    aor: str
    before: tuple[Binding, ...]
    after: tuple[Binding, ...]


class _Refused(Exception):
    """
    A REGISTER fails: answer it with C{code} (and C{reason}).
    """

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def domain_key(host: str) -> str:
    """
    How a host compares with our domains: case-insensitively,
    C{example.com.} as C{example.com}, IPv6 literals without brackets.
    """
    return host.strip("[]").rstrip(".").lower()


def _delta_seconds(text: str, what: str) -> int:
    """
    Parse a delta-seconds value (RFC 3261 §25.1: C{1*DIGIT}).

    @raise _Refused: 400, C{text} is not a number.
    """
    if not (text.isascii() and text.isdigit()):
        raise _Refused(400, f"Bad {what}")
    # Long digit strings are certainly above the cap: do not convert them.
    return _MAX_DELTA if len(text) > 10 else min(int(text), _MAX_DELTA)


def _unsupported(request: Request) -> list[str]:
    """
    The option tags of a REGISTER's Require that we do not support (all
    but C{outbound}, RFC 5626).
    """
    return [
        option.strip()
        for value in request.get_headers("require")
        for option in value.split(",")
        if option.strip().lower() != "outbound"
    ]


def _outbound(params: dict[str, str | None]) -> tuple[str, int]:
    """
    The C{+sip.instance} and C{reg-id} of a Contact asking for RFC 5626
    outbound (both present), else C{("", 0)}.

    @raise _Refused: 400, a C{reg-id} that is not a number from 1 to
        2**31-1 or an empty or spaced instance.
    """
    instance, reg_id = params.get("+sip.instance"), params.get("reg-id")
    if instance is None or reg_id is None:
        return "", 0
    # reg-id = "reg-id" EQUAL 1*10DIGIT ; 1 to (2^31 - 1)
    if not (reg_id.isascii() and reg_id.isdigit() and len(reg_id) <= 10 and 0 < int(reg_id) < 2**31):
        raise _Refused(400, "Bad reg-id")
    instance = instance.strip('"')
    if not instance or any(c.isspace() or c == "," for c in instance):
        raise _Refused(400, "Bad +sip.instance")
    return instance, int(reg_id)


def _targets(ordered: list[Binding]) -> tuple[list[Binding], tuple[tuple[str, Flow], ...]]:
    """
    The bindings a request is sent to, and their flows: the flows of one
    RFC 5626 instance (several C{reg-id}s) are one target, the Contact of
    its best binding, with every flow in C{reg-id} order (the next is
    tried when one is gone, RFC 5626 §5.3).
    """
    instances: dict[str, list[Flow]] = {}
    shown = []
    for binding in ordered:
        flow = binding.flow
        if flow is not None and flow.outbound:
            if flow.instance in instances:
                instances[flow.instance].append(flow)
                continue
            instances[flow.instance] = [flow]
        shown.append(binding)
    flows: list[tuple[str, Flow]] = []
    for binding in shown:
        flow = binding.flow
        if flow is not None:
            same = sorted(instances[flow.instance], key=lambda f: f.reg_id) if flow.outbound else [flow]
            flows += [(binding.contact, each) for each in same]
    return shown, tuple(flows)


def _sort_key(binding: Binding) -> tuple[float, int]:
    return (-binding.q, binding.order)


#: Default cap on the bindings a registrar keeps.
DEFAULT_MAX_BINDINGS = 100_000


class BindingTable:
    """
    The location service's bindings, with RFC 3261 §10.3 REGISTER
    processing.  Pure: every method that depends on time takes C{now}.

    @ivar domains: our domains (lower-case hosts, IPv6 without brackets).
    @ivar min_expires: the shortest registration accepted (423 below it).
    @ivar max_expires: registrations are shortened to this.
    @ivar default_expires: the registration time when a REGISTER gives none,
        within C{[min_expires, max_expires]}.
    @ivar changes: incremented on every change of the bindings.
    """

    def __init__(
        self,
        domains: Iterable[str],
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_bindings: int = DEFAULT_MAX_BINDINGS,
    ) -> None:
        """
        @param domains: the domains whose AORs we keep.
        @param default_expires: clamped into C{[min_expires, max_expires]}.
        @param max_bindings: the most bindings kept at once; a REGISTER
            that would add more is answered 503 (memory and the file stay
            bounded whoever registers).
        @raise ValueError: C{min_expires} negative, C{max_expires} zero or
            below C{min_expires}.
        """
        if min_expires < 0 or max_expires < max(min_expires, 1):
            raise ValueError(
                f"need 0 <= min_expires <= max_expires and max_expires >= 1, "
                f"got {min_expires} and {max_expires}"
            )
        self.domains = frozenset(domain_key(domain) for domain in domains)
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = min(max(default_expires, min_expires), max_expires)
        self.max_bindings = max_bindings
        self.changes = 0
        #: The C{Flow-Timer} of the 200 to an RFC 5626 outbound
        #: registration: the seconds between the phone's keep-alives
        #: (L{None}: none is sent).
        self.flow_timer: int | None = None
        #: How many bindings have a flow, by its transport.
        self.flows: dict[str, int] = {}
        self._bindings: dict[str, list[Binding]] = {}
        self._total = 0
        self._known: set[str] = set()
        self._next_order = 0
        # Expiry in time independent of the table size: a heap of
        # (expires_at, order, aor), an entry valid while that binding of
        # the AOR still expires then (stale ones are skipped).  (Orders
        # are unique within an AOR; bindings written by other processes
        # sharing a store may reuse them across AORs.)
        self._heap: list[tuple[float, int, str]] = []
        self._expiry: dict[tuple[str, int], float] = {}

    # -- AORs ----------------------------------------------------------------

    def canonical_aor(self, uri: URI) -> str | None:
        """
        The canonical AOR of C{uri}, if it names a user of one of our
        domains, whatever its port (the To of a REGISTER).

        @return: C{sip:user@host}, or L{None}.
        """
        if not uri.is_sip or not uri.user:
            return None
        host = domain_key(uri.host)
        if host not in self.domains:
            return None
        # RFC 3261 §10.3 step 5: parameters removed, escapes decoded.
        user = normalise_escapes(uri.user)
        return f"sip:{user}@[{host}]" if ":" in host else f"sip:{user}@{host}"

    def addressed_to_us(self, uri: URI, own_uri: Callable[[URI], bool] | None = None) -> bool:
        """
        Whether C{uri} is addressed to one of our domains: a SIP URI whose
        host is one of them, with no port or the default port of its
        scheme, or one that C{own_uri} accepts.
        """
        if not uri.is_sip or domain_key(uri.host) not in self.domains:
            return False
        if uri.port is None or uri.port == (5061 if uri.is_secure else 5060):
            return True
        return own_uri is not None and own_uri(uri)

    @property
    def known_users(self) -> frozenset[str]:
        """
        Every AOR that ever had a binding (404 versus 480).
        """
        return frozenset(self._known)

    # -- REGISTER (RFC 3261 §10.3) --------------------------------------------

    def register(self, request: Request, now: float, source: Address | None = None) -> Response:
        """
        Process a REGISTER (see L{process}) and return the answer.
        """
        return self.process(request, now, source)[0]

    def process(
        self, request: Request, now: float, source: Address | None = None, owner: str = ""
    ) -> tuple[Response, Change | None]:
        """
        Process a REGISTER for one of our domains (RFC 3261 §10.3 steps 2
        and 5-8; authentication and authorisation, steps 3 and 4, are
        L{sipleg.auth}'s).  The binding changes are all made or, when
        the answer is not 200, none.  The work depends on the AOR's
        bindings only, never on the size of the table.

        @param request: the REGISTER, whose Request-URI is ours (the caller
            checked, step 1).
        @param now: the current time.
        @param source: where the REGISTER came from (its transport too):
            each binding gets the L{Flow} it sets
            (L{sipleg.flows.registration_flow}); L{None}: no flows.
        @param owner: this process's relay address, for stream flows
            (C{--workers}).
        @return: 200 listing every current binding of the AOR with its
            remaining seconds; 400 (malformed To, Contact, Call-ID, CSeq,
            C{expires} or C{q}; C{*} with other contacts or a non-zero
            Expires), 404 (To is not an AOR of ours), 420 (a Require),
            423 with Min-Expires (too short), 500 (a CSeq below the one
            stored for a binding of the same Call-ID), or 503 with
            Retry-After (the table holds L{max_bindings} already); and
            the L{Change}, or L{None} when nothing changed.
        """
        try:
            aor, bindings, changed, next_order = self._process(request, now, source, owner)
        except _Refused as refused:
            response = make_response(request, refused.code, refused.reason)
            if refused.code == 423:
                response.add_header("Min-Expires", str(self.min_expires))
            elif refused.code == 420:
                for option in _unsupported(request):
                    response.add_header("Unsupported", option)
            return response, None
        change = None
        if changed:
            previous = self._bindings.get(aor, [])
            before = len(previous)
            if len(bindings) > before and self.count() - before + len(bindings) > self.max_bindings:
                response = make_response(request, 503, "Service Unavailable (registrar full)")
                response.add_header("Retry-After", str(self.min_expires or 60))
                return response, None
            change = Change(aor, tuple(previous), tuple(bindings))
            self._set(aor, bindings)
            self._next_order = next_order
        # Step 8: the 200 enumerates the current bindings, each with its
        # expires parameter.
        response = make_response(request, 200)
        for binding in sorted(bindings, key=_sort_key):
            value = f"<{binding.contact}>;expires={self._remaining(binding, now)}"
            if binding.q != 1.0:
                value += f";q={binding.q:g}"
            response.add_header("Contact", value)
        response.add_header("Date", formatdate(now, usegmt=True))
        if any(option.lower() == "path" for option in request.get_headers("supported")):
            # RFC 3327 §5.3: the Path stored, for the phone to see.
            for value in request.get_headers("path"):
                response.add_header("Path", value)
        if any(b.flow is not None and b.flow.outbound and b.cseq == request.cseq[0] for b in bindings):
            # RFC 5626 §6: the registrar says it did outbound, and how
            # often the phone should refresh its flows (§4.4).
            response.add_header("Require", "outbound")
            if self.flow_timer:
                response.add_header("Flow-Timer", str(self.flow_timer))
        return response, change

    def restore(self, change: Change) -> bool:
        """
        Put back the bindings C{change} replaced (its store could not keep
        it), unless the AOR changed again since.

        @return: whether they were put back.
        """
        if tuple(self._bindings.get(change.aor, ())) != change.after:
            return False
        self._set(change.aor, list(change.before))
        return True

    def replace(self, aor: str, bindings: Iterable[Binding], now: float) -> None:
        """
        Make C{bindings} (those not expired at C{now}) the AOR's: another
        process sharing the store changed them.
        """
        live = [binding for binding in bindings if binding.expires_at > now]
        if live != self._bindings.get(aor, []):
            self._set(aor, live)

    def aors(self) -> list[str]:
        """
        Every AOR with bindings.
        """
        return list(self._bindings)

    def _set(self, aor: str, bindings: list[Binding]) -> None:
        """
        Make C{bindings} the AOR's bindings, keeping the count, the known
        users and the expiry heap in step.
        """
        expiry, flows = self._expiry, self.flows
        for old in self._bindings.get(aor, ()):
            expiry.pop((aor, old.order), None)
            if old.flow is not None:
                flows[old.flow.transport] -= 1
        self._total += len(bindings) - len(self._bindings.get(aor, ()))
        if bindings:
            self._bindings[aor] = bindings
            self._remember(aor)
            for binding in bindings:
                if binding.flow is not None:
                    flows[binding.flow.transport] = flows.get(binding.flow.transport, 0) + 1
                expiry[aor, binding.order] = binding.expires_at
                heapq.heappush(self._heap, (binding.expires_at, binding.order, aor))
                if binding.order >= self._next_order:
                    self._next_order = binding.order + 1
        else:
            self._bindings.pop(aor, None)
        self.changes += 1
        if len(self._heap) > 2 * len(expiry) + 1024:
            # Mostly stale entries (refreshed bindings): rebuild.
            self._heap = [
                (binding.expires_at, binding.order, binding.aor)
                for live in self._bindings.values()
                for binding in live
            ]
            heapq.heapify(self._heap)

    def count(self) -> int:
        """
        How many bindings the table holds.
        """
        return self._total

    def _remember(self, aor: str) -> None:
        """
        Note that C{aor} had a binding (404 versus 480); past a few times
        L{max_bindings} entries the users without a binding are forgotten.
        """
        self._known.add(aor)
        if len(self._known) > 4 * self.max_bindings:
            self._known = {known for known in self._known if known in self._bindings}

    @staticmethod
    def _remaining(binding: Binding, now: float) -> int:
        # A live binding has at least one second left: "expires=0" would
        # tell the user agent it is gone.
        return max(1, math.ceil(binding.expires_at - now - 1e-6))

    def _process(
        self, request: Request, now: float, source: Address | None, owner: str
    ) -> tuple[str, list[Binding], bool, int]:
        """
        The tentative result of a REGISTER.

        @return: C{(aor, its bindings afterwards, whether they changed,
            the next registration order number)}.
        @raise _Refused: the REGISTER fails.
        """
        try:
            # Step 2: the only extension we understand is RFC 5626
            # outbound.
            if _unsupported(request):
                raise _Refused(420, "Bad Extension")
            # Step 5: the AOR comes from To.
            to = parse_name_addr(request.get_header("to") or "")
            call_id = request.call_id
            cseq = request.cseq[0]
            contacts = request.get_headers("contact")
        except SIPParseError as e:
            raise _Refused(400, e.reason) from None
        aor = self.canonical_aor(to.uri)
        if aor is None:
            raise _Refused(404, "Not Found (not an address-of-record of ours)")

        # Expires = "Expires" HCOLON delta-seconds.  An RFC 2543 SIP-date
        # is ignored (the message parser lets only that non-number through).
        header = request.get_header("expires")
        header_expires: int | None = None
        if header is not None and header[:1].isdigit():
            header_expires = _delta_seconds(header, "Expires")

        previous = self._bindings.get(aor, [])
        current = [binding for binding in previous if binding.expires_at > now]
        changed = len(current) != len(previous)

        # Step 6: the wildcard.
        if any(value.strip() == "*" for value in contacts):
            if len(contacts) != 1 or header_expires != 0:
                raise _Refused(400, "Bad Request (wildcard Contact needs Expires: 0 alone)")
            for binding in current:
                self._check_order(binding, call_id, cseq)
            return aor, [], changed or bool(current), self._next_order

        # Step 7: each contact, with its own expiry; all or nothing.
        updates: list[tuple[str, URI, float, int, Flow | None]] = []
        for value in contacts:
            try:
                contact = parse_name_addr(value)
            except SIPParseError as e:
                raise _Refused(400, e.reason) from None
            # c-p-expires = "expires" EQUAL delta-seconds
            expires: int
            if "expires" in contact.params:
                param = contact.params["expires"] or ""
                expires = _delta_seconds(param.strip('"'), "expires parameter")
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                raise _Refused(423)
            # c-p-q = "q" EQUAL qvalue
            q = 1.0
            if "q" in contact.params:
                param = contact.params["q"] or ""
                if _QVALUE.fullmatch(param) is None:
                    raise _Refused(400, "Bad q parameter")
                q = float(param)
            flow = None
            if source is not None:
                instance, reg_id = _outbound(contact.params)
                flow = registration_flow(source, contact.uri, owner, instance, reg_id)
            updates.append((str(contact.uri), contact.uri, q, min(expires, self.max_expires), flow))

        path = tuple(request.get_headers("path"))
        order = self._next_order
        touched: set[int] = set()
        for text, uri, q, expires, flow in updates:
            index = self._find(current, uri, flow)
            if index is None:
                if expires:
                    binding = Binding(aor, text, q, now + expires, call_id, cseq, order, flow, path)
                    touched.add(order)
                    order += 1
                    current.append(binding)
                    changed = True
                continue
            existing = current[index]
            if existing.order not in touched:
                # The same contact twice in one REGISTER: the last wins.
                self._check_order(existing, call_id, cseq)
            touched.add(existing.order)
            changed = True
            if expires:
                current[index] = replace(
                    existing,
                    contact=text,
                    q=q,
                    expires_at=now + expires,
                    call_id=call_id,
                    cseq=cseq,
                    flow=flow,
                    path=path,
                )
            else:
                del current[index]
        return aor, current, changed, order

    @staticmethod
    def _find(bindings: list[Binding], uri: URI, flow: Flow | None) -> int | None:
        if flow is not None and flow.outbound:
            # RFC 5626 §6: an outbound binding is its instance and reg-id.
            for index, binding in enumerate(bindings):
                other = binding.flow
                if other is not None and (other.instance, other.reg_id) == (flow.instance, flow.reg_id):
                    return index
            return None
        # "using the URI comparison rules" (§10.3 step 7, §19.1.4).
        for index, binding in enumerate(bindings):
            outbound = binding.flow is not None and binding.flow.outbound
            if not outbound and uri_equal(parse_uri(binding.contact), uri):
                return index
        return None

    @staticmethod
    def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
        """
        RFC 3261 §10.3 step 7: a binding set by the same Call-ID changes
        only with a higher CSeq; otherwise "the update MUST be aborted and
        the request fails" -- with 500, as every failed update (§10.3:
        "the request MUST fail with a 500 (Server Error) response").

        An I{equal} CSeq is let through: a stateless proxy has no server
        transaction to absorb a retransmitted REGISTER (its 200 lost), and
        applying the same REGISTER again is harmless.

        @raise _Refused: 500, C{cseq} is older than the binding's.
        """
        if binding.call_id == call_id and cseq < binding.cseq:
            raise _Refused(500, "Server Internal Error (out-of-order CSeq)")

    # -- location service ----------------------------------------------------

    def lookup(
        self,
        uri: URI,
        now: float,
        own_uri: Callable[[URI], bool] | None = None,
    ) -> LookupResult | None:
        """
        Where a request for C{uri} goes (RFC 3261 §16.5).

        @param uri: the Request-URI.
        @param now: the current time (expired bindings do not count, even
            before L{expire} dropped them).
        @param own_uri: recognises our own addresses: a URI with a
            non-default port is an AOR only when it accepts it.
        @return: L{None} when C{uri} is not an AOR of ours (forward it as
            any request), or a L{LookupResult}.
        """
        if not uri.user or not self.addressed_to_us(uri, own_uri):
            return None
        aor = self.canonical_aor(uri)
        assert aor is not None
        live = [binding for binding in self._bindings.get(aor, ()) if binding.expires_at > now]
        for binding in live:
            # A registered contact on our domain's host, not the AOR.
            if same_hop(parse_uri(binding.contact), uri):
                return None
        if uri.is_secure:
            live = [binding for binding in live if binding.contact[:5].lower() == "sips:"]
        if live:
            ordered, flows = _targets(sorted(live, key=_sort_key))
            groups: list[list[str]] = []
            for index, binding in enumerate(ordered):
                if index == 0 or binding.q != ordered[index - 1].q:
                    groups.append([])
                groups[-1].append(binding.contact)
            paths = tuple((binding.contact, binding.path) for binding in ordered if binding.path)
            return LookupResult(aor, [binding.contact for binding in ordered], None, groups, flows, paths)
        return LookupResult(aor, [], 480 if aor in self._known else 404)

    def bindings(self, now: float) -> list[Binding]:
        """
        Every binding not expired at C{now}, in registration order.
        """
        live = [
            binding
            for bindings in self._bindings.values()
            for binding in bindings
            if binding.expires_at > now
        ]
        live.sort(key=lambda binding: binding.order)
        return live

    # -- expiry --------------------------------------------------------------

    def expire(self, now: float) -> bool:
        """
        Drop every binding expired at C{now} (the work is in the number
        of bindings that expire, not in the table size).

        @return: whether anything was dropped.
        """
        heap, expiry = self._heap, self._expiry
        due: set[str] = set()
        while heap and heap[0][0] <= now:
            expires_at, order, aor = heapq.heappop(heap)
            if expiry.get((aor, order)) == expires_at:
                due.add(aor)
        for aor in due:
            bindings = self._bindings[aor]
            self._set(aor, [binding for binding in bindings if binding.expires_at > now])
        return bool(due)

    def next_expiry(self) -> float | None:
        """
        When the next binding expires, or L{None} when there is none.
        """
        heap, expiry = self._heap, self._expiry
        while heap and expiry.get((heap[0][2], heap[0][1])) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- persistence ---------------------------------------------------------

    def to_json(self) -> bytes:
        """
        The table as JSON: C{{"version": 1, "next_order": N, "known_users":
        [...], "bindings": [{aor, contact, q, expires_at, call_id, cseq,
        order[, flow]}, ...]}}, expiry times absolute; C{flow} (the text
        of a L{Flow}) only for a binding that has one.
        """
        everything = [binding for bindings in self._bindings.values() for binding in bindings]
        everything.sort(key=lambda binding: binding.order)
        document = {
            "version": FILE_VERSION,
            "next_order": self._next_order,
            "known_users": sorted(self._known),
            "bindings": [_binding_document(binding) for binding in everything],
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(
        cls,
        data: bytes,
        now: float,
        domains: Iterable[str] = (),
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_bindings: int = DEFAULT_MAX_BINDINGS,
    ) -> BindingTable:
        """
        Rebuild a table saved by L{to_json}, without the bindings expired
        at C{now}.  (The other arguments are the constructor's.)

        @raise RegistrationFileError: C{data} is not such a document.
        """
        table = cls(domains, min_expires, max_expires, default_expires, max_bindings)
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise RegistrationFileError(f"not JSON ({' '.join(str(e).split())})") from None
        if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
            raise RegistrationFileError(f"not a version {FILE_VERSION} registrations table")
        next_order = document.get("next_order")
        known = document.get("known_users")
        entries = document.get("bindings")
        if (
            type(next_order) is not int
            or not isinstance(known, list)
            or not all(isinstance(aor, str) for aor in known)
            or not isinstance(entries, list)
        ):
            raise RegistrationFileError("bad next_order, known_users or bindings")
        table._known = set(known)
        bindings = []
        for number, entry in enumerate(entries):
            binding = _binding_from(entry, number)
            if binding.order >= next_order:
                raise RegistrationFileError(f"binding {number}: order beyond next_order")
            bindings.append(binding)
        table.load(bindings, table._known, now)
        table._next_order = next_order
        return table

    def load(self, bindings: Iterable[Binding], known: Iterable[str], now: float) -> None:
        """
        Fill an empty table with stored bindings (those expired at C{now}
        left out) and known users.
        """
        by_aor: dict[str, list[Binding]] = {}
        for binding in bindings:
            self._known.add(binding.aor)
            if binding.expires_at > now:
                by_aor.setdefault(binding.aor, []).append(binding)
            self._next_order = max(self._next_order, binding.order + 1)
        self._known.update(known)
        for aor, live in by_aor.items():
            self._set(aor, live)


#: The fields of a binding in the file and their types.
_FIELDS: dict[str, tuple[type, ...]] = {
    "aor": (str,),
    "contact": (str,),
    "q": (float, int),
    "expires_at": (float, int),
    "call_id": (str,),
    "cseq": (int,),
    "order": (int,),
}


def _binding_document(binding: Binding) -> dict[str, Any]:
    """
    One binding of a registrations file.
    """
    document: dict[str, Any] = {
        "aor": binding.aor,
        "contact": binding.contact,
        "q": binding.q,
        "expires_at": binding.expires_at,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "order": binding.order,
    }
    if binding.flow is not None:
        document["flow"] = str(binding.flow)
    if binding.path:
        document["path"] = list(binding.path)
    return document


def _binding_from(entry: Any, number: int) -> Binding:
    """
    One binding of a registrations file.

    @raise RegistrationFileError: C{entry} is not a well-formed binding.
    """
    if not isinstance(entry, dict) or set(entry) - {"flow", "path"} != set(_FIELDS):
        raise RegistrationFileError(f"binding {number}: wrong fields")
    path = entry.get("path", [])
    if not isinstance(path, list) or not all(isinstance(value, str) for value in path):
        raise RegistrationFileError(f"binding {number}: bad path")
    flow = None
    if "flow" in entry:
        try:
            flow = parse_flow(entry["flow"]) if isinstance(entry["flow"], str) else None
        except ValueError:
            pass
        if flow is None:
            raise RegistrationFileError(f"binding {number}: bad flow")
    for name, types in _FIELDS.items():
        value = entry[name]
        if type(value) not in types or (isinstance(value, float) and not math.isfinite(value)):
            raise RegistrationFileError(f"binding {number}: bad {name}")
    try:
        aor = parse_uri(entry["aor"])
        parse_uri(entry["contact"])
    except SIPParseError as e:
        raise RegistrationFileError(f"binding {number}: {e.reason}") from None
    if aor.scheme != "sip" or not aor.user or not 0.0 <= entry["q"] <= 1.0:
        raise RegistrationFileError(f"binding {number}: bad aor or q")
    return Binding(
        entry["aor"],
        entry["contact"],
        float(entry["q"]),
        float(entry["expires_at"]),
        entry["call_id"],
        entry["cseq"],
        entry["order"],
        flow,
        tuple(path),
    )


class Registrar:
    """
    The registrar on a clock: a L{BindingTable} whose bindings expire on
    time and, given a store, are kept across restarts.

    @ivar table: the L{BindingTable}.
    @ivar clock: the C{IReactorTime}; its C{seconds()} must be wall-clock
        time when a store is given (it holds absolute times).
    @ivar store: where the bindings are kept (L{sipleg.store}), or L{None}
        (memory only).
    """

    def __init__(
        self,
        domains: Iterable[str],
        clock: IReactorTime,
        store: ILocationStore | None = None,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_bindings: int = DEFAULT_MAX_BINDINGS,
    ) -> None:
        """
        Load what C{store} holds (start-up).

        @raise ValueError: bad expiry limits (see L{BindingTable}).
        """
        self.clock = clock
        self.store = store
        self.table = BindingTable(domains, min_expires, max_expires, default_expires, max_bindings)
        #: Whether the bindings are loaded (a shared store loads after the
        #: reactor starts; REGISTERs get 503 until then).
        self.ready = True
        #: Changes the store kept, and the seconds they took in all.
        self.writes = 0
        self.write_seconds = 0.0
        #: This process's flow relay address with C{--workers}
        #: (L{sipleg.flowrelay}): the owner of the stream flows it records.
        self.flow_owner = ""
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        if store is not None:
            store.attach(self)

    def loaded(self, stored: Stored) -> None:
        """
        Take what the store holds (at start, and after a shared store came
        back: everything is read again).
        """
        now = self.clock.seconds()
        table = self.table
        live = {binding.aor for binding in stored.bindings if binding.expires_at > now}
        for aor in table.aors():
            if aor not in live:
                table.replace(aor, (), now)
        table.load(stored.bindings, stored.known, now)
        self.ready = True
        self._schedule()

    def changed(self, aor: str, bindings: list[Binding]) -> None:
        """
        Another process sharing the store changed C{aor}.
        """
        self.table.replace(aor, bindings, self.clock.seconds())
        self._schedule()

    def is_registration(self, request: Request, own_uri: Callable[[URI], bool]) -> bool:
        """
        Whether C{request} is a REGISTER this registrar answers (RFC 3261
        §10.3 step 1): its Request-URI names one of our domains or, as
        C{own_uri} tells, one of our own addresses.  Any other REGISTER is
        forwarded like any request.
        """
        if request.method != "REGISTER":
            return False
        try:
            uri = parse_uri(request.uri)
        except SIPParseError:
            return False
        return self.registers(uri, own_uri)

    def registers(self, uri: URI, own_uri: Callable[[URI], bool]) -> bool:
        """
        Whether a REGISTER with Request-URI C{uri} is ours to answer: it
        names one of our domains or, as C{own_uri} tells, one of our own
        addresses.
        """
        return uri.is_sip and (self.table.addressed_to_us(uri) or own_uri(uri))

    def register(
        self, request: Request, attempts: int = 3, source: Address | None = None
    ) -> Response | Deferred[Response]:
        """
        Answer a REGISTER (see L{BindingTable.process}; C{source}, where
        it came from, sets the bindings' flows, owned by L{flow_owner}).  With a store, a
        change is answered once the store has kept it: the answer is then
        a L{Deferred}.  When another process sharing the store changed the
        AOR first (L{StoreConflict}), the REGISTER is processed again on
        its bindings, up to C{attempts} times.  When the store cannot keep
        the change, it is undone (RFC 3261 §10.3 step 7: bindings are
        committed if and only if every update succeeds) and the answer is
        503 with Retry-After when the store is unreachable for now, else
        500.
        """
        if not self.ready:
            return _unavailable(request)
        now = self.clock.seconds()
        response, change = self.table.process(request, now, source, self.flow_owner)
        if change is None:
            return response
        self._schedule()
        if self.store is None:
            return response

        def failed(reason: Failure) -> Response | Deferred[Response]:
            self.table.restore(change)
            conflict = reason.check(StoreConflict)
            if conflict is not None:
                error = reason.value
                assert isinstance(error, StoreConflict)
                self.table.replace(error.aor, error.current, self.clock.seconds())
                self._schedule()
                if attempts > 1:
                    return self.register(request, attempts - 1, source)
            self._schedule()
            if reason.check(StoreUnavailable):
                return _unavailable(request)
            log.error("registration not stored: {error}", error=reason.getErrorMessage())
            return make_response(request, 500, "Server Internal Error (cannot store)")

        started = self.clock.seconds()

        def kept(_: None) -> Response:
            self.writes += 1
            self.write_seconds += self.clock.seconds() - started
            return response

        return self.store.write(change).addCallbacks(kept, failed)

    def status(self) -> dict[str, Any]:
        """
        For the status page: the bindings held, those with a flow by its
        transport, and the store's writes (count, total seconds).
        """
        return {
            "bindings": self.table.count(),
            "flows": {transport: count for transport, count in self.table.flows.items() if count},
            "store_writes": self.writes,
            "store_write_seconds": round(self.write_seconds, 6),
        }

    def lookup(self, uri: URI, own_uri: Callable[[URI], bool] | None = None) -> LookupResult | None:
        """
        Where a request for C{uri} goes (see L{BindingTable.lookup}).
        """
        return self.table.lookup(uri, self.clock.seconds(), own_uri)

    def bindings(self) -> list[Binding]:
        """
        Every current binding, in registration order.
        """
        return self.table.bindings(self.clock.seconds())

    def stop(self) -> Deferred[None] | None:
        """
        Cancel the expiry timer; close the store once its pending writes
        are done.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        return self.store.close() if self.store is not None else None

    # -- internals -------------------------------------------------------------

    def _schedule(self) -> None:
        """
        Keep exactly one timer pending, for the next expiry, while there
        are bindings; none otherwise.
        """
        when = self.table.next_expiry()
        if when is not None and self._timer_at == when and self._timer is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        if when is not None:
            self._timer_at = when
            self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        assert self._timer_at is not None
        # The timer fired, so its time has come, whatever rounding the
        # clock's arithmetic did.
        now = max(self.clock.seconds(), self._timer_at)
        self._timer = None
        self._timer_at = None
        if self.table.expire(now) and self.store is not None:
            # (A restart drops expired bindings at load in any case.)
            self.store.purge(now)
        self._schedule()


def _unavailable(request: Request) -> Response:
    """
    503 with Retry-After: the store is out of reach for now.
    """
    response = make_response(request, 503, "Service Unavailable (location store unreachable)")
    response.add_header("Retry-After", "5")
    return response
