# zope.interface methods are declared without "self"; mypy has no plugin here.
# mypy: disable-error-code="misc,empty-body"
"""
What every socket pool offers, and the mapping of network failures to
L{DeliveryError}.

A socket pool is the I/O half of a leg: it owns one listening socket (UDP)
or one listener plus its connections (TCP, TLS), moves bytes, and reports
every received datagram or framed stream message to a L{Receiver}.  It never
parses SIP.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sipleg.address import Address
from sipleg.errors import DeliveryError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "ISocketPool",
    "Receiver",
    "StreamLimits",
    "delivery_error",
    "send_deferred",
]

#: Default cap on the connections of one stream pool.
DEFAULT_MAX_CONNECTIONS = 1000

#: The most connections a stream pool accepts from one IP address at once:
#: enough for an office of phones behind one NAT, too few for one peer to
#: take the whole connection cap.
DEFAULT_MAX_PER_SOURCE = 128

#: Seconds an accepted connection has to deliver its first complete
#: message (a TLS handshake included) before it is closed: a phone sends
#: its REGISTER at once, a slow-loris attacker trickles bytes forever.
FIRST_MESSAGE_TIMEOUT = 16.0

#: Called by a pool for every received datagram or framed stream message:
#: C{receiver(data, source, conn)}.  C{source} carries the transport of the
#: pool; C{conn} is an opaque connection handle (L{None} for UDP) that may be
#: passed back to L{ISocketPool.send} to answer on the same connection.
Receiver = Callable[[bytes, Address, object | None], None]


class ISocketPool(Interface):
    """
    The sockets of one leg.
    """

    local = Attribute(
        "L{Address}: where the pool listens; after L{listen} the port is the "
        "real bound port (useful with port 0)."
    )
    peer = Attribute(
        "L{Address} or L{None}: when set, the pool only talks to this peer: "
        "every send goes there and packets or connections from elsewhere are "
        "dropped."
    )
    receiver = Attribute(
        "The L{Receiver} every datagram or framed message goes to; settable, "
        "so that a leg built on a shared pool takes over what it receives."
    )

    def listen() -> Deferred[Address]:
        """
        Bind the listening socket.

        @return: a L{Deferred} firing with the bound local L{Address}.
        """

    def send(data: bytes, dst: Address, conn: object | None = None) -> Deferred[None]:
        """
        Send one datagram or stream message.

        @param data: the serialised message.
        @param dst: the destination; its C{addr} must be set (resolved).
        @param conn: a connection handle given to the receiver; when that
            connection is still open the data goes out on it.
        @return: a L{Deferred} firing with L{None} once the data is handed to
            the kernel (UDP) or written to an established connection (TCP,
            TLS); it errbacks with L{DeliveryError}.
        """

    def send_now(
        data: bytes,
        dst: Address,
        conn: object | None = None,
        failed: Callable[[DeliveryError], object] | None = None,
    ) -> Deferred[None] | None:
        """
        L{send} without a L{Deferred} when none is needed: the hot path of
        a forwarding proxy.

        @param failed: for a send the pool holds back (UDP coalescing):
            called with the L{DeliveryError} if it fails when it is made, and
            then L{None} is returned at once instead of a L{Deferred}.
            Pools that hold nothing back ignore it.

        @return: L{None} when the data was handed to the kernel or written
            to an established connection at once; a L{Deferred} (as from
            L{send}) when the send waits: for a connection to be made, or
            (UDP) for the end of the reactor iteration, when the datagrams
            sent meanwhile are handed over together.
        @raise DeliveryError: the send failed at once.
        """

    def stop() -> Deferred[None]:
        """
        Close the listener and every connection.

        @return: a L{Deferred} firing once everything is closed.
        """

    def connections() -> list[object]:
        """
        The open connection handles (always empty for UDP).
        """

    def flow_connection(peer: Address) -> object | None:
        """
        The open connection this pool holds with C{peer}, whichever side
        made it: the flow a registration came by (RFC 5626 §5.3,
        L{sipleg.flows}).  Never opens a connection, and never waits.

        @param peer: the peer's IP address and port (its C{addr} and
            C{port}; the transport is the pool's).
        @return: the connection handle, to pass to L{send_now} as C{conn}
            (which then writes on it), or L{None} when no open connection
            has that peer (always L{None} for a datagram pool).
        """


def send_deferred(
    send_now: Callable[..., Deferred[None] | None],
    data: bytes,
    dst: Address,
    conn: object | None,
) -> Deferred[None]:
    """
    L{ISocketPool.send} in terms of L{ISocketPool.send_now}.
    """
    try:
        waiting = send_now(data, dst, conn)
    except DeliveryError:
        return defer.fail()
    return defer.succeed(None) if waiting is None else waiting


def delivery_error(reason: BaseException) -> DeliveryError:
    """
    Translate a failure to send or to connect into a L{DeliveryError}.

    @param reason: the exception Twisted or the socket layer raised.
    @return: a L{DeliveryError} carrying the matching C{errno} where there
        is one, else L{None} and a description.
    """
    if isinstance(reason, DeliveryError):
        return reason
    if isinstance(reason, error.ConnectError):
        # getConnectError() keeps the errno in osError; subclasses raised
        # without one still name the condition.
        if isinstance(reason.osError, int):
            return DeliveryError(reason.osError)
        for cls, number in _CONNECT_ERRORS:
            if isinstance(reason, cls):
                return DeliveryError(number)
        return DeliveryError(None, str(reason) or type(reason).__name__)
    if isinstance(reason, error.MessageLengthError):
        return DeliveryError(errno.EMSGSIZE)
    if isinstance(reason, error.InvalidAddressError):
        return DeliveryError(errno.EAFNOSUPPORT)
    if isinstance(reason, error.DNSLookupError):
        return DeliveryError(errno.EHOSTUNREACH)
    if isinstance(reason, OSError) and reason.errno:
        return DeliveryError(reason.errno)
    if isinstance(reason, (error.ConnectionLost, error.ConnectionDone)):
        return DeliveryError(errno.ECONNRESET)
    if isinstance(reason, (defer.TimeoutError, defer.CancelledError)):
        return DeliveryError(errno.ETIMEDOUT)
    return DeliveryError(None, str(reason) or type(reason).__name__)


# Most specific first: TimeoutError and friends subclass ConnectError.
_CONNECT_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (error.ConnectionRefusedError, errno.ECONNREFUSED),
    (error.TCPTimedOutError, errno.ETIMEDOUT),
    (error.TimeoutError, errno.ETIMEDOUT),
    (error.NoRouteError, errno.EHOSTUNREACH),
    (error.UnknownHostError, errno.EHOSTUNREACH),
    (error.ConnectBindError, errno.EADDRNOTAVAIL),
)


@dataclass(frozen=True)
class StreamLimits:
    """
    The timeouts and caps of a stream pool.

    @ivar connect_timeout: seconds to connect (and finish the TLS handshake)
        before a send fails with C{ETIMEDOUT}.
    @ivar max_connections: the connection cap (see
        L{sipleg.transport.stream.StreamSocketPool}).
    @ivar idle_timeout: fixed idle expiry in seconds; L{None} uses the
        adaptive C{15 + 105 / n} rule.
    @ivar first_message_timeout: seconds an accepted connection has to
        deliver its first complete message.
    @ivar max_per_source: the most connections accepted from one IP
        address at once; more are closed at once (logged).
    """

    connect_timeout: float = 10.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float | None = None
    first_message_timeout: float = FIRST_MESSAGE_TIMEOUT
    max_per_source: int = DEFAULT_MAX_PER_SOURCE

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.connect_timeout <= 0:
            raise ValueError("max_connections and connect_timeout must be positive")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.first_message_timeout <= 0 or self.max_per_source < 1:
            raise ValueError("first_message_timeout and max_per_source must be positive")
