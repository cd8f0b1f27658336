"""
Flows (RFC 5626 §3, §5.3): a registration remembers the hop its REGISTER
came by, and requests for that binding go back the same way.

A L{Flow} is a frozen value kept on a L{sipleg.registrar.Binding}:

 - over a stream (TCP, TLS, and the WebSocket transports), the
   connection the REGISTER arrived on, named by its peer address: while
   it is open, requests for the binding go over it, whatever the Contact
   says (a phone behind NAT or a firewall accepts no connection, and a
   phone without a server certificate no TLS handshake).  When it is
   gone, a binding over a connection-only transport (TLS, WS, WSS: the
   phone cannot be dialled) answers 480, or 430 Flow Failed when it
   registered with RFC 5626 outbound; over TCP the Contact is dialled as
   usual;
 - over UDP, only when the source address of the REGISTER differs from
   its Contact's host and port (a phone behind NAT, as Kamailio's
   C{fix_nated_register} sees it): requests go to the source address,
   the NAT's public side, kept open by keep-alives
   (L{sipleg.keepalive}).

With C{--workers}, a stream flow belongs to the worker holding the
connection: its C{owner} is that worker's relay address
(L{sipleg.flowrelay}), where the other workers hand it what they send
over the flow.

Everything here is pure: what the registrar stores, and what a request
for a binding does given whether its connection is open.  The proxy
reads the connections (L{sipleg.transport.base.ISocketPool.flow_connection})
and sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from sipleg.address import Address, bracket, split_hostport
from sipleg.errors import SIPParseError
from sipleg.uri import URI, parse_name_addr

__all__ = [
    "CONNECTION_ONLY",
    "asks_outbound",
    "FLOW_REASONS",
    "Flow",
    "flow_gone",
    "flow_token",
    "parse_flow",
    "token_route",
    "registration_flow",
    "token_flow",
]

#: The transports whose peers cannot be dialled: a flow over them that is
#: gone cannot be replaced by a new connection to the Contact.
CONNECTION_ONLY = frozenset({"tls", "ws", "wss"})

#: The stream transports: every registration over them has a flow.
STREAMS = frozenset({"tcp", "tls", "ws", "wss"})

#: The answers to a request for a binding whose flow is gone.
FLOW_REASONS = {430: "Flow Failed", 480: "Temporarily Unavailable"}


@dataclass(frozen=True, slots=True)
class Flow:
    """
    The hop a binding was registered by.

    @ivar transport: C{"udp"}, C{"tcp"}, C{"tls"}, C{"ws"} or C{"wss"}.
    @ivar host: the peer's IP address (the REGISTER's source).
    @ivar port: the peer's port.
    @ivar owner: with C{--workers}, the relay address (C{ip:port}) of the
        worker holding the connection; C{""} without workers.
    @ivar instance: for an RFC 5626 outbound registration, the phone's
        C{+sip.instance} (C{""} otherwise): its flows, one per C{reg_id},
        are its bindings, and a request for it fails 430 only when all
        are gone.
    @ivar reg_id: the outbound registration's C{reg-id}.
    """

    transport: str
    host: str
    port: int
    owner: str = ""
    instance: str = ""
    reg_id: int = 0

    @property
    def outbound(self) -> bool:
        """
        Whether the phone asked for RFC 5626 outbound.
        """
        return bool(self.instance)

    @property
    def address(self) -> Address:
        """
        The peer, as an address of the flow's transport.
        """
        return Address(self.host, self.port, self.transport)

    def __str__(self) -> str:
        """
        The text form the stores keep: C{"tcp 192.0.2.1:5062"}, then the
        owner's address and C{ob=REG-ID,INSTANCE} when set.
        """
        text = f"{self.transport} {bracket(self.host)}:{self.port}"
        if self.owner:
            text += f" {self.owner}"
        return f"{text} ob={self.reg_id},{self.instance}" if self.outbound else text


def parse_flow(text: str) -> Flow:
    """
    The L{Flow} of C{str(flow)}.

    @raise ValueError: C{text} is not such a form.
    """
    words = text.split()
    if len(words) < 2 or words[0] not in STREAMS | {"udp"}:
        raise ValueError(f"not a flow: {text!r}")
    host, port = split_hostport(words[1])
    reg_id, instance = "0", ""
    rest = words[2:]
    if rest and rest[-1].startswith("ob="):
        reg_id, _, instance = rest.pop()[3:].partition(",")
    if port is None or len(rest) > 1 or not reg_id.isdigit() or (instance == "") != (reg_id == "0"):
        raise ValueError(f"not a flow: {text!r}")
    # (A transport this version does not speak is no flow.)
    peer = Address(host, port, words[0])
    return Flow(words[0], peer.host, port, rest[0] if rest else "", instance, int(reg_id))


def registration_flow(
    source: Address, contact: URI, owner: str = "", instance: str = "", reg_id: int = 0
) -> Flow | None:
    """
    The flow a REGISTER from C{source} sets for its Contact C{contact}:
    over a stream always; over UDP when the Contact's host is an IP
    address and it or the port is not the source's (NAT: RFC 3581
    C{received} / C{rport}, as Kamailio's C{fix_nated_register});
    L{None} otherwise.

    @param owner: the relay address of this worker (C{--workers}), for a
        stream flow.
    @param instance: the Contact's C{+sip.instance} when it asked for
        RFC 5626 outbound (with C{reg_id}, its C{reg-id}): then there is a
        flow over UDP too, whatever the Contact says (RFC 5626 §6).
    """
    if source.addr is None:
        return None
    proto = source.proto
    if proto in STREAMS or instance:
        return Flow(proto, source.addr, source.port, owner if proto in STREAMS else "", instance, reg_id)
    try:
        named = Address(contact.host, contact.effective_port, proto)
    except ValueError:
        return None
    if named.addr is None or named.sockaddr == source.sockaddr:
        # A host name is the phone's own word for where it is (it may
        # name an SRV set); an address that is the source needs no flow.
        return None
    return Flow(proto, source.addr, source.port)


def flow_token(flow: Flow, secret: bytes) -> str:
    """
    The flow token of RFC 5626 §5.2, for the user part of the Path (or
    Record-Route) of an edge proxy: the flow's text and its HMAC, in
    base64url (unreserved characters only), so that only a token we
    made names a flow.
    """
    text = str(flow).encode()
    mac = hmac.new(secret, text, hashlib.sha256).digest()[:12]
    return f"{_b64(text)}.{_b64(mac)}"


def token_flow(token: str, secret: bytes) -> Flow | None:
    """
    The flow a token of L{flow_token} names, or L{None} when it is not
    one of ours (forged, or made with another secret).
    """
    text, _, mac = token.partition(".")
    try:
        data, signature = _unb64(text), _unb64(mac)
        if not hmac.compare_digest(signature, hmac.new(secret, data, hashlib.sha256).digest()[:12]):
            return None
        return parse_flow(data.decode("ascii"))
    except (ValueError, binascii.Error):
        return None


def token_route(record_route: str, token: str, outbound: bool = False) -> str:
    """
    A leg's Record-Route value (C{<sip:host:port;...;lr>}) with a flow
    token as user part: the Record-Route of a request sent over a flow,
    so that the dialog's later requests go over it too (RFC 5626 §5.3),
    and the Path (RFC 3327) an edge proxy adds to a REGISTER it forwards,
    with C{;ob} for an outbound registration (RFC 5626 §5.1).
    """
    value = f"<sip:{token}@{record_route[len('<sip:') :]}"
    return f"{value[:-1]};ob>" if outbound else value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def asks_outbound(contact: str | None) -> bool:
    """
    Whether a dialog-forming request's Contact value has C{;ob} (RFC 5626
    §5.3: the phone wants the dialog's requests over the flow it sent
    this one by).
    """
    if not contact or "ob" not in contact:
        return False
    try:
        return "ob" in parse_name_addr(contact).uri.params
    except SIPParseError:
        return False


def flow_gone(flow: Flow) -> int | None:
    """
    What a request for a binding does when its flow's connection is
    closed: 430 for an outbound registration (RFC 5626 §5.3: its
    Contact is never dialled), 480 for the others over a connection-only
    transport; L{None}, dial the Contact (TCP).
    """
    if flow.outbound:
        return 430
    return 480 if flow.transport in CONNECTION_ONLY else None
