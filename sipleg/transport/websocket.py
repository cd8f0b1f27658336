"""
The WebSocket socket pool: SIP over WebSocket (RFC 7118), server side.

A L{WebSocketSocketPool} is a L{StreamSocketPool} whose connections speak
the WebSocket protocol (RFC 6455, through autobahn, a kept library: its
handshake, framing, masking and close rules are not ours to maintain) with
the C{sip} subprotocol.  One WebSocket message is one SIP message (RFC 7118
§5): no stream framing, a Content-Length is optional and, when present,
must match the body (L{sipleg.message.parse_message} with
C{datagram=False}).

What it shares with the TCP and TLS pools: connections kept by peer
C{(ip, port)} (a response or a request for that peer goes over its
connection), the caps per listener and per source address, the
first-message timeout (the TLS and WebSocket handshakes included) and the
idle expiry, all on the injected clock.  What differs:

 - a WebSocket server cannot connect to its clients (browsers accept no
   connections): a send to a peer without an open connection fails with
   L{DeliveryError} (C{ENOTCONN});
 - a client's made-up C{xxx.invalid} host (its Via and Contact, RFC 7118
   §5) names its connection (L{WebSocketSocketPool.name}, learnt by the
   leg from the Via of its requests): the dispatcher sends requests for
   that host over it (L{WebSocketSocketPool.named_peer});
 - a handshake without the C{sip} subprotocol is refused (HTTP 400);
 - a message larger than L{MAX_MESSAGE_SIZE} closes the connection (close
   code 1009, autobahn's limit);
 - keep-alive: a connection idle for the expiry time is sent a WebSocket
   ping; one still idle (no pong, no message) after another expiry time
   is closed.

This module (and autobahn with it) is imported only by a configuration
with a C{ws} or C{wss} listener.
"""

from __future__ import annotations

import errno
import socket
from enum import Enum
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.address import Address, bracket
from sipleg.errors import DeliveryError
from sipleg.framing import StreamFramer
from sipleg.transport.base import Receiver, StreamLimits
from sipleg.transport.stream import StreamConnection, StreamSocketPool

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from sipleg.transport.tls import TLSConfig

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MAX_NAMES",
    "SUBPROTOCOL",
    "WebSocketConnection",
    "WebSocketSocketPool",
    "WebSocketState",
]

_log = Logger()

#: The WebSocket subprotocol of SIP (RFC 7118 §4.1).
SUBPROTOCOL = "sip"

#: The largest WebSocket message accepted, in bytes: what a TCP stream
#: accepts in one SIP message (L{StreamFramer}'s header and body caps).
MAX_MESSAGE_SIZE = StreamFramer().max_header + StreamFramer().max_body

#: The most C{.invalid} names one connection may hold (a browser uses
#: one; the cap bounds what a client can make the pool keep).
MAX_NAMES = 4

#: RFC 6455 §7.4.1 close codes.
_NORMAL_CLOSURE = 1000
_GOING_AWAY = 1001


class WebSocketState(Enum):
    """
    Where a L{WebSocketConnection} is in its life.

    @cvar HANDSHAKE: accepted (TCP, and TLS for C{wss}); the WebSocket
        opening handshake has not completed.  Nothing can be sent.
    @cvar OPEN: the handshake agreed on the C{sip} subprotocol: SIP
        messages flow both ways.
    @cvar CLOSING: a close frame was sent or received, or the pool is
        closing the connection.
    @cvar CLOSED: the TCP connection is gone.
    """

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _SIPWebSocket(WebSocketServerProtocol):
    """
    autobahn's side of a L{WebSocketConnection}: it is given the
    connection's transport and reports what happens to the connection.
    """

    def __init__(self, connection: WebSocketConnection) -> None:
        super().__init__()
        self._connection = connection

    def onConnect(self, request: ConnectionRequest) -> str:
        return self._connection.handshake(request.protocols)

    def onOpen(self) -> None:
        self._connection.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._connection.message(payload)

    def onPong(self, payload: bytes) -> None:
        self._connection.ponged()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._connection.closing(code, reason)


class WebSocketConnection(StreamConnection):
    """
    One accepted WebSocket connection of a L{WebSocketSocketPool}: the
    C{conn} handle the pool gives its receiver.

    It is the Twisted protocol of the TCP (or TLS) connection and hands
    the bytes to autobahn, which hands back the handshake, the messages,
    the pongs and the close.  It is I{ready} (L{StreamConnection.ready})
    once the handshake is done.

    @ivar state: the L{WebSocketState}.
    @ivar pinged: whether a ping is waiting for its pong.
    """

    def __init__(self, pool: WebSocketSocketPool, peer: Address) -> None:
        """
        @param pool: the owning pool.
        @param peer: the client's address (transport C{ws}/C{wss}).
        """
        super().__init__(pool, peer, True)
        self._ws_pool = pool
        self.state = WebSocketState.HANDSHAKE
        self.pinged = False
        #: The C{.invalid} host names the connection is reached by
        #: (L{WebSocketSocketPool.name}).
        self.names: list[str] = []
        self._ws = _SIPWebSocket(self)
        self._ws.factory = pool.factory

    def __repr__(self) -> str:
        return f"<WebSocketConnection from {self.peer.proto}:{self.peer} {self.state.value}>"

    # Sending and closing

    def write_now(self, data: bytes) -> Deferred[None] | None:
        """
        Send C{data} as one WebSocket message: a text message when it is
        UTF-8 (RFC 7118 §5.1: SIP messages nearly always are), else a
        binary one.

        @return: L{None}: the message is written at once.
        @raise DeliveryError: the connection is gone, or (C{ENOTCONN}) its
            handshake is not complete.
        """
        if self._lost or self._closing:
            raise self._final_error or self._failure or DeliveryError(errno.ECONNRESET)
        if self.state is not WebSocketState.OPEN:
            raise DeliveryError(errno.ENOTCONN, "WebSocket handshake not complete")
        self._ws.sendMessage(data, isBinary=not _is_utf8(data))
        self._pool._touch(self)
        return None

    def ping(self) -> None:
        """
        Send a WebSocket ping (RFC 6455 §5.5.2); its pong is activity.
        """
        if self.state is WebSocketState.OPEN:
            self.pinged = True
            self._ws.sendPing()

    def close(self, failure: DeliveryError | None = None, abort: bool = False) -> None:
        """
        Close the connection: with a WebSocket close frame first when it
        is open (code 1001 when the pool stops, else 1000).
        """
        if self.state is WebSocketState.OPEN and not abort:
            going = failure is not None and failure.errno == errno.ESHUTDOWN
            # (sendClose() takes only application codes.)
            self._ws.sendCloseFrame(code=_GOING_AWAY if going else _NORMAL_CLOSURE, isReply=False)
        if self.state is not WebSocketState.CLOSED:
            self.state = WebSocketState.CLOSING
        super().close(failure, abort)

    # Reported by autobahn

    def handshake(self, protocols: list[str]) -> str:
        """
        The client's opening handshake: accept it with the C{sip}
        subprotocol (RFC 7118 §4.1), or refuse it.

        @param protocols: the subprotocols the client offers.
        @return: C{"sip"}.
        @raise ConnectionDeny: C{sip} is not offered (HTTP 400).
        """
        if SUBPROTOCOL not in protocols:
            _log.info("Refused WebSocket handshake from {peer}: no sip subprotocol", peer=self.peer)
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "the sip subprotocol is required (RFC 7118)")
        return SUBPROTOCOL

    def opened(self) -> None:
        """
        The handshake is complete: the connection carries SIP.
        """
        if self.state is WebSocketState.HANDSHAKE:
            self.state = WebSocketState.OPEN
            self._become_ready()

    def message(self, payload: bytes) -> None:
        """
        One WebSocket message: one SIP message for the pool's receiver
        (blank messages are keep-alives, only activity).
        """
        if self.state is not WebSocketState.OPEN:
            return
        self.pinged = False
        if payload.strip():
            self._pool._message_received(self, payload)
        else:
            self._pool._touch(self)

    def ponged(self) -> None:
        """
        A pong: the client is alive.
        """
        self.pinged = False
        if self.state is WebSocketState.OPEN:
            self._pool._touch(self)

    def closing(self, code: int | None, reason: str | None) -> None:
        """
        autobahn saw the close (the client's close frame, a failure such
        as a message too large, or the connection lost).
        """
        if self.state is WebSocketState.CLOSED:
            return
        if code not in (None, _NORMAL_CLOSURE, _GOING_AWAY):
            _log.info(
                "WebSocket {conn} closed: code {code} {reason}", conn=self, code=code, reason=reason or ""
            )
        # autobahn, a server, drops the TCP connection now: sends fail
        # meanwhile, connectionLost() follows.
        self.state = WebSocketState.CLOSING

    # IProtocol

    def connectionMade(self) -> None:
        """
        TCP is accepted (for C{wss} the TLS handshake starts now); the
        WebSocket handshake follows.
        """
        self._pool._connection_made(self)
        self._ws.makeConnection(self.transport)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake of a C{wss} connection succeeded: the connection
        is ready only after the WebSocket handshake.
        """

    def dataReceived(self, data: bytes) -> None:
        """
        Hand the bytes to autobahn; nothing it raises leaves this method.
        """
        if self._closing or self._lost:
            return
        try:
            self._ws.dataReceived(data)
        except Exception:  # noqa: BLE001 - a library bug must not reach the reactor
            _log.failure("WebSocket {conn} failed on received data", conn=self)
            self.close(DeliveryError(None, "WebSocket failure"), abort=True)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        The connection is gone: tell autobahn, then the pool.
        """
        if reason is None:
            from twisted.internet.protocol import connectionDone

            reason = connectionDone
        state, self.state = self.state, WebSocketState.CLOSED
        if state is not WebSocketState.CLOSED:
            try:
                self._ws.connectionLost(reason)
            except Exception:  # noqa: BLE001
                _log.failure("WebSocket {conn} failed on connection loss", conn=self)
        super().connectionLost(reason)


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class WebSocketSocketPool(StreamSocketPool):
    """
    The sockets of a C{ws} or C{wss} leg: a listener and the connections
    browsers (or any RFC 7118 client) opened to it.

    Everything L{StreamSocketPool} says of caps, the first-message timeout
    and idle expiry holds (with a ping before an idle connection is
    closed); but the pool never opens a connection.

    @ivar factory: autobahn's factory, holding the protocol options.
    """

    transports = ("ws", "wss")

    def __init__(
        self,
        local: Address,
        receiver: Receiver,
        peer: Address | None = None,
        tls: TLSConfig | None = None,
        sock: socket.socket | None = None,
        reactor: Any = None,
        clock: Any = None,
        limits: StreamLimits | None = None,
    ) -> None:
        """
        As L{StreamSocketPool}, with C{local.proto} C{"ws"}, or C{"wss"}
        together with C{tls}.

        @raise ValueError: as L{StreamSocketPool}.
        """
        super().__init__(local, receiver, peer, tls, sock, reactor, clock, limits)
        scheme = "wss" if tls is not None else "ws"
        factory = WebSocketServerFactory(f"{scheme}://{bracket(local.host)}", reactor=self._reactor)
        # The timers are the pool's, on its clock (first message, idle,
        # ping); autobahn's own would run on the global reactor.
        factory.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE_SIZE,
            maxFramePayloadSize=MAX_MESSAGE_SIZE,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
        )
        factory.server = "sipleg"
        self.factory = factory
        # Open connections by the .invalid host names they announced.
        self._by_name: dict[str, WebSocketConnection] = {}

    def __repr__(self) -> str:
        return f"<WebSocketSocketPool {self.local.proto}:{self.local}>"

    def _accepted(self, source: Address) -> WebSocketConnection:
        return WebSocketConnection(self, source)

    def name(self, conn: object, host: str) -> bool:
        """
        Let the open connection C{conn} be reached by the C{.invalid} host
        name its client writes in its Via and Contact (RFC 7118 §5: a
        browser has no address of its own to give).  First come: a name
        held by an open connection is not given to another; a connection
        holds at most L{MAX_NAMES}.

        @return: whether C{conn} holds the name now.
        """
        host = host.lower()
        if not (isinstance(conn, WebSocketConnection) and conn._pool is self and conn.is_open):
            return False
        if not host.endswith(".invalid"):
            return False
        holder = self._by_name.get(host)
        if holder is not None:
            return holder is conn
        if len(conn.names) >= MAX_NAMES:
            return False
        self._by_name[host] = conn
        conn.names.append(host)
        return True

    def named_peer(self, host: str) -> Address | None:
        """
        The peer address of the open connection holding the name C{host}
        (see L{name}), to send to: L{None} when none does.
        """
        holder = self._by_name.get(host.lower())
        return None if holder is None else holder.peer

    def _detach(self, connection: StreamConnection) -> None:
        super()._detach(connection)
        if isinstance(connection, WebSocketConnection):
            for host in connection.names:
                if self._by_name.get(host) is connection:
                    del self._by_name[host]

    def _connect(self, data: bytes, target: Address) -> Deferred[None] | None:
        """
        A WebSocket server cannot reach a client that has no connection
        open to it.

        @raise DeliveryError: C{ENOTCONN}, always.
        """
        raise DeliveryError(errno.ENOTCONN, f"no WebSocket connection from {target}")

    def _idle(self, connection: StreamConnection) -> None:
        """
        Ping an idle connection once; close it when it stayed idle since.
        """
        if isinstance(connection, WebSocketConnection) and not connection.pinged:
            connection.ping()
            if connection.pinged:
                self._touch(connection)
                return
        super()._idle(connection)
