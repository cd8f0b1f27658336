"""
The stream socket pool: a TCP or TLS listener plus its connections.

A L{StreamSocketPool} accepts connections, opens connections on demand when
it has to send, and keeps each one open for reuse until it has been idle
for a while.  Bytes read from a connection go through a
L{sipleg.framing.StreamFramer}; every framed message goes to the receiver
together with the connection handle (a L{StreamConnection}), which may be
passed back to L{StreamSocketPool.send} to answer on the same connection
(RFC 3261 §18.2.2).

Timing (all on the injected clock):
 - connect timeout: a connection that is not established (TCP connected
   and, for TLS, handshake complete) within C{connect_timeout} seconds is
   dropped and its pending sends fail with C{ETIMEDOUT};
 - idle expiry: a connection without activity (accept, connect, write or a
   complete message read) for C{15 + 105 / n} seconds, C{n} being the
   number of connections, is closed (Net::SIP's rule: 120 s for a single
   connection, about 15 s under load); a fixed C{idle_timeout} replaces the
   rule.  The expiry timer is armed for the oldest connection's deadline,
   so it only exists while there are connections.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipleg.address import Address
from sipleg.errors import DeliveryError, SIPParseError
from sipleg.framing import StreamFramer
from sipleg.message import salvage_answer
from sipleg.transport.base import (
    DEFAULT_MAX_CONNECTIONS,
    ISocketPool,
    Receiver,
    StreamLimits,
    delivery_error,
    send_deferred,
)

if TYPE_CHECKING:
    # TLS is imported when a TLS pool is made: a TCP-only configuration
    # never needs it.
    from sipleg.transport.tls import TLSConfig

__all__ = [
    "StreamLimits",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_EXPIRE",
    "MIN_EXPIRE",
    "StreamConnection",
    "StreamSocketPool",
]

_log = Logger()

#: Connections the kernel completes while the reactor is busy (the accept
#: queue): Twisted's default of 50 drops SYNs under a burst of new
#: connections, which then wait a second or more for the retransmission.
#: The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = socket.SOMAXCONN

#: Idle expiry bounds of Net::SIP's rule C{MIN + (MAX - MIN) / n}, seconds.
MIN_EXPIRE = 15.0

MAX_EXPIRE = 120.0
#: How long a graceful close may take before the connection is aborted.
_CLOSE_GRACE = 5.0
#: Answer to an RFC 5626 §3.5.1 double-CRLF ping.
_PONG = b"\r\n"
_WILDCARDS = ("0.0.0.0", "::")


@implementer(IHandshakeListener)
class StreamConnection(Protocol):
    """
    One TCP or TLS connection of a L{StreamSocketPool}.

    This is the C{conn} handle the pool gives to its receiver.  Data is
    only written once the connection is I{ready}: TCP connected and, for
    TLS, the handshake (including the server's identity check) complete.
    Until then sends are queued.

    @ivar peer: the remote IP address and port (transport C{tcp}/C{tls}).
    @ivar inbound: whether the connection was accepted by the listener
        (else the pool opened it to send).
    @ivar ready: whether data can be written.
    @ivar last_activity: clock time of the last accept, connect, write or
        complete message read.
    """

    def __init__(
        self,
        pool: StreamSocketPool,
        peer: Address,
        inbound: bool,
        tls_hostname: str | None = None,
    ) -> None:
        """
        @param pool: the owning pool.
        @param peer: see L{peer}.
        @param inbound: see L{inbound}.
        @param tls_hostname: for outgoing TLS, the name or IP the server's
            certificate must match (used in error messages).
        """
        self.peer = peer
        self.inbound = inbound
        #: Other C{(ip, port)} keys this connection carries (RFC 5923).
        self.aliases: list[tuple[str, int]] = []
        self.ready = False
        self.last_activity = 0.0
        self._pool = pool
        self._tls_hostname = tls_hostname
        self._framer = StreamFramer()
        self._pending: list[tuple[bytes, Deferred[None]]] = []
        # The endpoint's connect Deferred until TCP is up (outgoing only).
        self._connecting: Deferred[Any] | None = None
        self._connect_timer: Any = None
        self._linger_timer: Any = None
        # Why the connection is being closed, told to pending sends.
        self._failure: DeliveryError | None = None
        self._closing = False
        self._lost = False
        self._final_error: DeliveryError | None = None
        self._waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        direction = "from" if self.inbound else "to"
        return f"<StreamConnection {direction} {self.peer.proto}:{self.peer}>"

    @property
    def key(self) -> tuple[str, int]:
        """
        C{(ip, port)} of the peer: what connections are reused by.
        """
        return self.peer.sockaddr

    @property
    def is_open(self) -> bool:
        """
        Whether the connection can still carry data (possibly after the
        connect or handshake completes).
        """
        return not (self._closing or self._lost)

    def when_closed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} firing with L{None} once the connection is
            gone (or at once if it is already).
        """
        if self._lost:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def write(self, data: bytes) -> Deferred[None]:
        """
        Send C{data}, or queue it until the connection is ready.

        @return: a L{Deferred} firing with L{None} once the data is written
            to the established connection; errbacks L{DeliveryError} when
            the connection fails first.
        """
        try:
            waiting = self.write_now(data)
        except DeliveryError:
            return defer.fail()
        return defer.succeed(None) if waiting is None else waiting

    def write_now(self, data: bytes) -> Deferred[None] | None:
        """
        L{write} without a L{Deferred} when the connection is ready.

        @return: L{None} once written; a L{Deferred} as from L{write} while
            the connection is being made.
        @raise DeliveryError: the connection is gone.
        """
        if self._lost or self._closing:
            raise self._final_error or self._failure or DeliveryError(errno.ECONNRESET)
        if self.ready:
            transport: Any = self.transport
            transport.write(data)
            self._pool._touch(self)
            return None
        waiter: Deferred[None] = Deferred()
        self._pending.append((data, waiter))
        return waiter

    def close(self, failure: DeliveryError | None = None, abort: bool = False) -> None:
        """
        Close the connection.

        @param failure: what queued sends fail with.
        @param abort: drop the connection at once instead of flushing what
            is written and closing gracefully.
        """
        if self._closing or self._lost:
            return
        self._closing = True
        if failure is not None:
            self._failure = failure
        self._pool._detach(self)
        if self._connecting is not None:
            # Not connected yet: the canceller ends up in _connect_failed.
            self._connecting.cancel()
            return
        transport: Any = self.transport
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()
            self._linger_timer = self._pool._clock.callLater(_CLOSE_GRACE, transport.abortConnection)

    # Connection set-up (outgoing connections)

    def start_connect(self, connecting: Deferred[Any], timeout: float) -> None:
        """
        Track the endpoint's connect L{Deferred} and arm the connect timer.

        @param connecting: fires when TCP is connected.
        @param timeout: seconds until the connection must be ready.
        """
        self._connect_timer = self._pool._clock.callLater(timeout, self._connect_timed_out)
        if not self._lost and not self.connected:
            self._connecting = connecting
        connecting.addCallbacks(self._connect_succeeded, self._connect_failed)

    def _connect_succeeded(self, _: object) -> None:
        self._connecting = None

    def _connect_failed(self, reason: Failure) -> None:
        """
        The TCP connection could not be established (or was cancelled).
        """
        self._connecting = None
        if self._lost:
            return
        self._finish(self._failure or delivery_error(reason.value))

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if not self.ready:
            self.close(DeliveryError(errno.ETIMEDOUT, "connect timed out"), abort=True)

    # IProtocol / IHandshakeListener

    def connectionMade(self) -> None:
        """
        TCP is connected (for TLS the handshake starts now).
        """
        self._connecting = None
        self._pool._connection_made(self)
        if self._pool.tls is None:
            self._become_ready()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake succeeded, peer verification included.
        """
        self._become_ready()

    def dataReceived(self, data: bytes) -> None:
        """
        Frame the received bytes and pass each message to the pool.

        Nothing raised by framing or by the receiver leaves this method: a
        broken stream closes the connection, receiver errors are logged.
        """
        if self._closing or self._lost:
            return
        try:
            events = self._framer.feed(data)
        except SIPParseError as exc:
            self._broken(exc)
            return
        for event in events:
            if self._closing or self._lost:
                return
            if isinstance(event, bytes):
                self._pool._message_received(self, event)
            else:
                # RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                transport: Any = self.transport
                transport.write(_PONG)
                self._pool._touch(self)
        if self._framer.error is not None:
            self._broken(self._framer.error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection is gone: fail queued sends and tell the pool.
        """
        if self._lost:
            return
        if self._failure is not None:
            error = self._failure
        elif not self.ready and self._pool.tls is not None:
            from sipleg.transport.tls import describe_tls_failure

            error = DeliveryError(None, describe_tls_failure(reason.value, self._tls_hostname))
        else:
            error = delivery_error(reason.value)
        if not self.ready and self._pending:
            _log.info("Connection {conn} failed: {error}", conn=self, error=error)
        self._finish(error)

    # Internals

    def _become_ready(self) -> None:
        """
        Mark the connection usable and write the queued data.
        """
        if self._closing or self._lost:
            return
        self.ready = True
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None
        pending, self._pending = self._pending, []
        transport: Any = self.transport
        for data, _ in pending:
            transport.write(data)
        self._pool._touch(self)
        for _, waiter in pending:
            waiter.callback(None)

    def _broken(self, reason: SIPParseError) -> None:
        """
        The stream cannot be framed any more: close the connection, after
        answering a request whose header block is complete but whose
        Content-Length is refused (513 for a body too large; 400 for a
        Content-Length missing, malformed or conflicting).
        """
        _log.warn("Closing {conn}: broken SIP stream: {reason}", conn=self, reason=reason.reason)
        head = self._framer.refused_head
        if head is not None and self.ready:
            answer = salvage_answer(head, reason.status, reason.reason)
            if answer is not None:
                transport: Any = self.transport
                transport.write(answer)
        self.close(DeliveryError(None, f"broken SIP stream: {reason.reason}"))

    def _finish(self, error: DeliveryError) -> None:
        """
        Final clean-up once the connection is lost or never came up.

        @param error: what queued sends fail with.
        """
        self._lost = True
        self._final_error = error
        for timer in (self._connect_timer, self._linger_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connect_timer = self._linger_timer = None
        pending, self._pending = self._pending, []
        self._pool._connection_lost(self)
        for _, waiter in pending:
            waiter.errback(error)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


class _ListenerFactory(Factory):
    """
    Builds a L{StreamConnection} for each accepted connection, or refuses
    it (L{None}: Twisted closes the socket) when the pool says so.
    """

    noisy = False

    def __init__(self, pool: StreamSocketPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self._pool._accept(addr.host, addr.port)


class _OutgoingFactory(Factory):
    """
    Hands the prepared L{StreamConnection} to a client endpoint.
    """

    noisy = False

    def __init__(self, connection: StreamConnection) -> None:
        self._connection = connection

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self._connection


@implementer(ISocketPool)
class StreamSocketPool:
    """
    The sockets of a TCP or TLS leg.

    Connections are reused by peer C{(ip, port)}, in both directions: a
    send to an address that has an open connection (opened by us or
    accepted from there) goes over it, so responses follow their request
    back.  An RFC 5626 ping is answered with a pong; a stream that cannot
    be framed is closed and logged.

    Connection cap: at most C{max_connections} connections exist.  Past
    the cap, a newly accepted connection takes the place of the oldest
    accepted one that has not delivered a complete message yet, or is
    closed at once when there is none (logged); a send that needs a new
    connection first closes the least recently active one; when every
    connection is still being set up it fails with C{EMFILE}.

    Slow peers: an accepted connection that has not delivered a complete
    message (TLS handshake included) within C{first_message_timeout}
    seconds is closed; connections then expire when idle (a partial
    message is no activity).

    With a C{peer}, the pool only talks to that peer: every send goes to
    it, and connections accepted from any other IP address are closed at
    once (its source port is not checked: TCP clients use ephemeral ports).

    @ivar local: see L{ISocketPool.local}.
    @ivar peer: see L{ISocketPool.peer}.
    @ivar tls: the L{TLSConfig} of a TLS pool, L{None} for TCP; replacing
        it (a reload) changes what new connections, accepted or made, use.
    @cvar transports: the C{proto} of a pool's addresses without and with
        TLS.
    """

    transports = ("tcp", "tls")

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
        @param local: the address to listen on; an IP address (C{addr}
            set), port 0 for an ephemeral port.  Outgoing connections are
            bound to its IP.  Its C{proto} must be C{"tcp"}, or C{"tls"}
            together with C{tls}.
        @param receiver: called for every framed message, see L{Receiver}.
        @param peer: restrict the pool to this peer (resolved address).
        @param tls: certificates and verification policy (TLS pools).
        @param sock: a bound (ideally listening) TCP socket to adopt instead
            of binding C{local}.  The pool takes it over: the original
            socket object is closed once adopted.
        @param reactor: provider of C{IReactorTCP}, C{IReactorSocket} and
            C{IReactorTime}; the global reactor by default.
        @param clock: C{IReactorTime} for the connect timeout and idle
            expiry; C{reactor} by default.
        @param limits: timeouts and caps (L{StreamLimits}; the defaults
            when not given).
        @raise ValueError: bad transport, unresolved addresses, or limits
            out of range.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        expected = self.transports[tls is not None]
        if local.proto != expected:
            raise ValueError(f"{expected} pool given a {local.proto} address")
        if sock is None and local.addr is None:
            raise ValueError(f"local address {local} is not an IP address")
        if peer is not None and peer.addr is None:
            raise ValueError(f"peer {peer} is not resolved")
        if limits is None:
            limits = StreamLimits()
        self.limits = limits
        self.local = local
        self.peer = peer
        self.tls = tls
        self.receiver = receiver
        self._sock = sock
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._connect_timeout = limits.connect_timeout
        self._max_connections = limits.max_connections
        self._idle_timeout = limits.idle_timeout
        self._port: Any = None
        self._stopping = False
        # Every connection not being closed, connecting ones included.
        self._conns: dict[StreamConnection, None] = {}
        # Connections being closed, until they are gone.
        self._closing: dict[StreamConnection, None] = {}
        # Open connections by peer (ip, port), for reuse.
        self._by_peer: dict[tuple[str, int], StreamConnection] = {}
        # Connected ones, least recently active first.
        self._lru: OrderedDict[StreamConnection, None] = OrderedDict()
        self._idle_timer: Any = None
        self._first_message_timeout = limits.first_message_timeout
        self._max_per_source = limits.max_per_source
        # Accepted connections open per source IP address.
        self._per_source: dict[str | None, int] = {}
        # Accepted connections that have not delivered a complete message
        # yet, oldest first, with their deadline.
        self._unproven: OrderedDict[StreamConnection, float] = OrderedDict()
        self._unproven_timer: Any = None

    def __repr__(self) -> str:
        return f"<StreamSocketPool {self.local.proto}:{self.local}>"

    def _current_tls(self) -> TLSConfig:
        assert self.tls is not None
        return self.tls

    # ISocketPool

    def listen(self) -> Deferred[Address]:
        """
        Start listening (or adopt the given socket).

        @return: a L{Deferred} firing with the bound L{local} address, or
            failing with Twisted's C{CannotListenError}.
        """
        factory: Any = _ListenerFactory(self)
        if self.tls is not None:
            # A reload may replace self.tls: new connections use the new one.
            from sipleg.transport.tls import CurrentServerOptions, ListenerTLSFactory

            # ValueError now for a configuration without a certificate.
            self.tls.server_options()
            options = CurrentServerOptions(self._current_tls)
            factory = ListenerTLSFactory(options, False, factory, clock=self._reactor)
        listening: Deferred[Any]
        if self._sock is not None:
            sock, self._sock = self._sock, None
            try:
                sock.setblocking(False)
                sock.listen(LISTEN_BACKLOG)
                port = self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            except (OSError, ValueError, error.CannotListenError):
                return defer.fail()
            finally:
                # The reactor works on a duplicate of the descriptor.
                sock.close()
            listening = defer.succeed(port)
        else:
            endpoint_type = TCP6ServerEndpoint if self.local.family == socket.AF_INET6 else TCP4ServerEndpoint
            endpoint = endpoint_type(
                self._reactor, self.local.port, backlog=LISTEN_BACKLOG, interface=self.local.addr
            )
            listening = endpoint.listen(factory)
        return listening.addCallback(self._listening)

    def send(self, data: bytes, dst: Address, conn: object | None = None) -> Deferred[None]:
        """
        Send one message.

        @param data: the serialised message.
        @param dst: the destination (L{peer} instead, when restricted).
        @param conn: a handle given to the receiver: used when still open.
        @return: a L{Deferred} firing with L{None} once the data is written
            to an established connection; errbacks L{DeliveryError}
            (C{ECONNREFUSED}, C{ETIMEDOUT}, C{EAFNOSUPPORT} for the other
            address family, C{EMFILE} at the connection cap, or L{None}
            with a C{"TLS ..."} reason when the TLS handshake or the
            server's identity check fails).
        @raise ValueError: C{dst} is not resolved.
        """
        return send_deferred(self.send_now, data, dst, conn)

    def send_now(
        self, data: bytes, dst: Address, conn: object | None = None, failed: object = None
    ) -> Deferred[None] | None:
        """
        L{send} without a L{Deferred} on an established connection (a
        stream pool holds nothing back, so C{failed} is not used).

        @return: L{None} once written; a L{Deferred} as from L{send} while
            a connection is being made.
        @raise DeliveryError: as L{send} fails, when it fails at once.
        """
        if isinstance(conn, StreamConnection) and conn._pool is self and conn.is_open:
            return conn.write_now(data)
        target = self.peer if self.peer is not None else dst
        existing = self._by_peer.get(target.sockaddr)
        if existing is not None and self._may_reuse(existing, target):
            return existing.write_now(data)
        return self._connect(data, target)

    def _connect(self, data: bytes, target: Address) -> Deferred[None] | None:
        """
        Open a connection to C{target} and send C{data} once it is ready.

        @return: as L{send_now}.
        @raise DeliveryError: as L{send_now}.
        """
        if self._stopping:
            raise DeliveryError(errno.ESHUTDOWN, "socket pool stopped")
        endpoint = self._client_endpoint(target)
        if len(self._conns) >= self._max_connections and not self._evict():
            raise DeliveryError(errno.EMFILE, "connection limit reached")
        hostname = target.host if self.tls is not None else None
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls.client_options(target.host), endpoint, clock=self._reactor)
        connection = StreamConnection(
            self, Address(target.sockaddr[0], target.port, self.local.proto), False, hostname
        )
        self._register(connection)
        connection.start_connect(endpoint.connect(_OutgoingFactory(connection)), self._connect_timeout)
        return connection.write_now(data)

    def stop(self) -> Deferred[None]:
        """
        Stop listening and close every connection (gracefully: written data
        is flushed first); queued sends fail with C{ESHUTDOWN}.

        @return: a L{Deferred} firing once the listener and all connections
            are closed.
        """
        self._stopping = True
        self._cancel_idle_timer()
        timer, self._unproven_timer = self._unproven_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        waiting: list[Deferred[Any]] = []
        port, self._port = self._port, None
        if port is not None:
            waiting.append(defer.maybeDeferred(port.stopListening))
        for connection in [*self._conns, *self._closing]:
            waiting.append(connection.when_closed())
            connection.close(DeliveryError(errno.ESHUTDOWN, "socket pool stopped"))
        return defer.gatherResults(waiting, consumeErrors=True).addCallback(lambda _: None)

    @property
    def listening_socket(self) -> socket.socket | None:
        """
        The bound socket, whose kernel counters the status page reads
        (L{sipleg.status}); L{None} when not listening.
        """
        return None if self._port is None else self._port.socket

    def connections(self) -> list[object]:
        """
        @return: the connected L{StreamConnection}s (TCP up; a TLS one may
            still be handshaking), not counting those being closed.
        """
        return [connection for connection in self._conns if connection.connected]

    def flow_connection(self, peer: Address) -> object | None:
        """
        The open connection accepted from or made to C{peer}'s IP address
        and port (L{ISocketPool.flow_connection}), if any.
        """
        connection = self._by_peer.get(peer.sockaddr)
        if connection is None or not connection.is_open or connection.key != peer.sockaddr:
            # (An alias, RFC 5923, is not the flow of its address.)
            return None
        return connection

    def alias(self, conn: object, address: Address) -> bool:
        """
        Let an inbound connection also carry what is sent to C{address}
        (RFC 5923 connection reuse: its peer asked with C{;alias} in its
        Via).  Only the peer's own IP may be aliased, so a peer cannot
        capture traffic meant for another host.

        @return: whether the alias was made.
        """
        if not (
            isinstance(conn, StreamConnection)
            and conn._pool is self
            and conn.is_open
            and address.addr == conn.peer.addr
        ):
            return False
        key = address.sockaddr
        if key not in self._by_peer:
            self._by_peer[key] = conn
            conn.aliases.append(key)
        return True

    # Used by StreamConnection

    def _accept(self, host: str, port: int) -> StreamConnection | None:
        """
        Decide about an accepted connection.

        @return: its protocol, or L{None} to close it.
        """
        if self._stopping:
            return None
        source = Address(host, port, self.local.proto)
        if self.peer is not None and source.addr != self.peer.addr:
            _log.info("Refused connection from {source}: not the peer", source=source)
            return None
        if self._per_source.get(source.addr, 0) >= self._max_per_source:
            _log.warn(
                "Refused connection from {source}: {count} connections from it are open",
                source=source,
                count=self._max_per_source,
            )
            return None
        if len(self._conns) >= self._max_connections:
            if not self._unproven:
                _log.warn(
                    "Refused connection from {source}: {count} connections open",
                    source=source,
                    count=len(self._conns),
                )
                return None
            # Make room: the oldest connection that has sent nothing
            # usable gives way, so peers hoarding connections cannot lock
            # newcomers out.
            oldest = next(iter(self._unproven))
            _log.info("Connection cap reached: closing {conn}, which sent no message", conn=oldest)
            oldest.close(DeliveryError(errno.EMFILE, "connection limit reached"), abort=True)
        connection = self._accepted(source)
        self._register(connection)
        self._per_source[source.addr] = self._per_source.get(source.addr, 0) + 1
        self._unproven[connection] = self._clock.seconds() + self._first_message_timeout
        if self._unproven_timer is None:
            self._schedule_unproven_check()
        return connection

    def _accepted(self, source: Address) -> StreamConnection:
        """
        The protocol of a connection accepted from C{source}.
        """
        return StreamConnection(self, source, True)

    def _schedule_unproven_check(self) -> None:
        """
        Arm the timer for the oldest unproven connection's deadline.
        """
        oldest = next(iter(self._unproven.values()), None)
        if oldest is None or self._stopping:
            self._unproven_timer = None
            return
        delay = max(0.0, oldest - self._clock.seconds())
        self._unproven_timer = self._clock.callLater(delay, self._expire_unproven)

    def _expire_unproven(self) -> None:
        """
        Close the accepted connections whose first message is overdue.
        """
        now = self._clock.seconds()
        overdue = []
        for connection, deadline in self._unproven.items():
            if deadline > now:
                break
            overdue.append(connection)
        for connection in overdue:
            _log.info(
                "Closing {conn}: no complete message within {timeout} s",
                conn=connection,
                timeout=self._first_message_timeout,
            )
            connection.close(DeliveryError(errno.ETIMEDOUT, "no message in time"), abort=True)
        self._schedule_unproven_check()

    def _connection_made(self, connection: StreamConnection) -> None:
        """
        A connection is up: start tracking its activity.
        """
        if not connection.is_open:
            return
        self._lru[connection] = None
        self._touch(connection)
        self._schedule_idle_check()

    def _message_received(self, connection: StreamConnection, data: bytes) -> None:
        """
        Pass a framed message to the receiver.
        """
        self._touch(connection)
        if self._unproven:
            self._unproven.pop(connection, None)
        try:
            self.receiver(data, connection.peer, connection)
        except Exception:  # noqa: BLE001 - a receiver bug must not kill the connection
            _log.failure("Stream receiver failed on a message from {conn}", conn=connection)

    def _touch(self, connection: StreamConnection) -> None:
        """
        Record activity on a connection.
        """
        connection.last_activity = self._clock.seconds()
        if connection in self._lru:
            self._lru.move_to_end(connection)

    def _detach(self, connection: StreamConnection) -> None:
        """
        A connection is being closed: no more reuse, no longer counted.
        """
        if connection in self._conns:
            del self._conns[connection]
            if connection.inbound:
                # (Counted once: a connection is detached again when lost.)
                addr = connection.peer.addr
                left = self._per_source.get(addr, 1) - 1
                if left > 0:
                    self._per_source[addr] = left
                else:
                    self._per_source.pop(addr, None)
        self._lru.pop(connection, None)
        self._unproven.pop(connection, None)
        for key in (connection.key, *connection.aliases):
            if self._by_peer.get(key) is connection:
                del self._by_peer[key]
        self._closing[connection] = None
        if not self._lru:
            self._cancel_idle_timer()

    def _connection_lost(self, connection: StreamConnection) -> None:
        """
        A connection is gone.
        """
        self._detach(connection)
        del self._closing[connection]

    # Internals

    def _listening(self, port: Any) -> Address:
        self._port = port
        self.local = dataclasses.replace(self.local, port=port.getHost().port)
        return self.local

    def _may_reuse(self, connection: StreamConnection, target: Address) -> bool:
        """
        Whether C{connection} may carry data for C{target}: always over TCP
        or to an IP address; over TLS to a host name, only a connection
        whose server certificate was verified for that very name.
        """
        if self.tls is None or target.host == target.addr:
            return True
        return connection._tls_hostname == target.host

    def _register(self, connection: StreamConnection) -> None:
        self._conns[connection] = None
        self._by_peer[connection.key] = connection

    def _client_endpoint(self, target: Address) -> Any:
        """
        A TCP client endpoint to C{target}, bound to our local IP.

        @raise DeliveryError: C{EAFNOSUPPORT} when our IP is of the other
            family.
        """
        local_addr = self.local.addr
        bind: tuple[str, int] | None = None
        if local_addr is not None and local_addr not in _WILDCARDS:
            if self.local.family != target.family:
                raise DeliveryError(errno.EAFNOSUPPORT)
            bind = (local_addr, 0)
        endpoint_type = TCP6ClientEndpoint if target.family == socket.AF_INET6 else TCP4ClientEndpoint
        # The endpoint's own timeout (on the reactor) only backs up ours.
        return endpoint_type(
            self._reactor,
            target.sockaddr[0],
            target.port,
            timeout=self._connect_timeout + 1,
            bindAddress=bind,
        )

    def _evict(self) -> bool:
        """
        Close the least recently active connection to make room.

        @return: whether one was closed.
        """
        oldest = next(iter(self._lru), None)
        if oldest is None:
            return False
        _log.info("Connection cap reached: closing {conn}", conn=oldest)
        oldest.close(DeliveryError(errno.EMFILE, "connection limit reached"))
        return True

    def _expire_after(self, count: int) -> float:
        """
        Idle time after which connections are closed when C{count} exist.
        """
        if self._idle_timeout is not None:
            return self._idle_timeout
        return MIN_EXPIRE + (MAX_EXPIRE - MIN_EXPIRE) / max(count, 1)

    def _schedule_idle_check(self) -> None:
        """
        Arm the idle timer for the oldest connection's deadline (unless it
        is already armed earlier).
        """
        oldest = next(iter(self._lru), None)
        if oldest is None:
            self._cancel_idle_timer()
            return
        deadline = oldest.last_activity + self._expire_after(len(self._lru))
        timer = self._idle_timer
        if timer is not None and timer.active():
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        delay = max(0.0, deadline - self._clock.seconds())
        self._idle_timer = self._clock.callLater(delay, self._expire_idle)

    def _expire_idle(self) -> None:
        """
        Close connections idle for longer than the expiry time.
        """
        self._idle_timer = None
        now = self._clock.seconds()
        expire = self._expire_after(len(self._lru))
        stale = []
        for connection in self._lru:
            if now - connection.last_activity < expire:
                break
            stale.append(connection)
        for connection in stale:
            self._idle(connection)
        self._schedule_idle_check()

    def _idle(self, connection: StreamConnection) -> None:
        """
        C{connection} has been idle for the expiry time: close it.
        """
        _log.debug("Closing idle connection {conn}", conn=connection)
        connection.close(DeliveryError(errno.ETIMEDOUT, "idle connection closed"))

    def _cancel_idle_timer(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()
