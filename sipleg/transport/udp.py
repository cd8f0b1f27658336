"""
The UDP socket pool: one datagram socket per leg.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, udp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipleg.address import Address
from sipleg.errors import DeliveryError
from sipleg.logwindow import LogWindow
from sipleg.transport.base import ISocketPool, Receiver, delivery_error, send_deferred

__all__ = ["MAX_DATAGRAM", "UDPSocketPool"]

_log = Logger()

#: The largest datagram read from the socket: a whole UDP payload, not
#: Twisted's default of 8192 bytes (SIP over UDP may exceed the MTU and is
#: then fragmented by IP).
MAX_DATAGRAM = 65535

#: Who hears how a held-back send went: its Deferred, or the sender's
#: failure callback.
_Waiter = Deferred[None] | Callable[[DeliveryError], object]

#: The most sends a pool holds back before it flushes them early.
COALESCE_MAX = 512

# Bytes that make up keep-alive datagrams (CRLF, RFC 5626 §4.4.1 "STUN or
# CRLF"; some devices send a single space or NUL-free whitespace).
_WHITESPACE = frozenset(b" \t\r\n")

# How many source addresses are remembered so that a busy peer does not cost
# an Address construction per datagram.
_SOURCE_CACHE_SIZE = 4096


class _DatagramReader(DatagramProtocol):
    """
    The Twisted protocol of a L{UDPSocketPool}: hands datagrams to the pool.
    """

    noisy = False

    def __init__(self, pool: UDPSocketPool) -> None:
        self._pool = pool
        #: Set while a send is in progress, to catch the ECONNREFUSED that
        #: Twisted reports through L{connectionRefused} on connected sockets.
        self.refused_during_send = False
        self.sending = False

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Pass one datagram to the pool.

        @param datagram: the payload.
        @param addr: C{(host, port)} of the sender.
        """
        self._pool._datagram_received(datagram, addr[0], addr[1])

    def connectionRefused(self) -> None:
        """
        An ICMP port unreachable came back for a connected socket.
        """
        if self.sending:
            self.refused_during_send = True
        else:
            _log.debug("UDP peer {peer} refused a datagram", peer=self._pool.peer)


#: Linux's socket options that queue the ICMP errors of an unconnected
#: UDP socket (C{IP_RECVERR}, C{IPV6_RECVERR}), and the control messages
#: they come back in.
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}

#: C{struct sock_extended_error}: the errno comes first.
_EXTENDED_ERROR = struct.Struct("=IBBBBII")


@implementer(IHalfCloseableDescriptor)
class _ErrorQueuePort(udp.Port):
    """
    A UDP port whose socket queues ICMP errors (Linux C{IP_RECVERR}): they
    are read before the datagrams and handed to the pool.

    A queued error alone makes C{epoll} report the socket as hung up
    (C{EPOLLERR} without C{EPOLLIN}): the reactor then stops reading and
    calls L{readConnectionLost} (the port says it can be half-closed),
    which reads the errors and reads on.
    """

    protocol: _DatagramReader

    def doRead(self) -> None:
        self.protocol._pool._read_errors()
        udp.Port.doRead(self)

    def readConnectionLost(self, reason: Failure) -> None:
        self.protocol._pool._read_errors()
        if self.connected:
            self.startReading()

    def writeConnectionLost(self, reason: Failure) -> None:
        """
        A datagram port has no write side to lose.
        """


@implementer(ISocketPool)
class UDPSocketPool:
    """
    The socket of a UDP leg.

    Received datagrams go to the receiver as they are (datagrams made only
    of whitespace, such as CRLF keep-alives, are dropped); sends are
    reported as delivered once the kernel accepted them.

    Sends are coalesced: a datagram is handed to the kernel at the end of
    the current reactor iteration, together with every other datagram
    sent meanwhile (as Twisted writes stream data in the reactor's write
    phase).  A proxy working through a burst of received datagrams thus
    sends its answers back to back, so the kernel wakes each receiving
    peer once per burst instead of once per datagram: on loopback this
    halves the cost of a forwarded message (C{bench/README.md}).  Each
    send's L{Deferred} fires when its datagram was handed over, or fails
    with its own error, so failover still works.

    With a C{peer} the socket is I{connected} to it: the kernel then drops
    datagrams from anyone else, reports ICMP errors (ECONNREFUSED) and every
    send goes to the peer whatever destination is asked for.

    @ivar local: see L{ISocketPool.local}.
    @ivar peer: see L{ISocketPool.peer}.
    """

    def __init__(
        self,
        local: Address,
        receiver: Receiver,
        peer: Address | None = None,
        sock: socket.socket | None = None,
        reactor: Any = None,
    ) -> None:
        """
        @param local: the address to bind; must be an IP address (C{addr}
            set).  Port 0 picks an ephemeral port.
        @param receiver: called for every datagram, see L{Receiver}.
        @param peer: restrict the pool to this peer (resolved address).
        @param sock: an already bound UDP socket to adopt instead of binding
            C{local}.  The pool takes it over: the original socket object is
            closed once adopted and the pool's copy is closed by L{stop}.
        @param reactor: an C{IReactorUDP} provider; the global reactor by
            default.
        @raise ValueError: C{local} or C{peer} is not an IP address, or the
            transport is not UDP.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if local.proto != "udp":
            raise ValueError(f"UDP pool given a {local.proto} address")
        if sock is None and local.addr is None:
            raise ValueError(f"local address {local} is not an IP address")
        if peer is not None and peer.addr is None:
            raise ValueError(f"peer {peer} is not resolved")
        self.local = local
        self.peer = peer
        self.receiver = receiver
        self._sock = sock
        self._reactor = reactor
        self._protocol = _DatagramReader(self)
        self._port: Any = None
        self._sources: dict[tuple[str, int], Address] = {}
        self._pending: list[tuple[bytes, tuple[str, int], _Waiter]] = []
        self._flush_call: Any = None
        #: Told C{(destination, errno, payload)} when an ICMP error comes
        #: back for a datagram this (unconnected, Linux) pool sent: the
        #: payload is the start of that datagram (IPv4 ICMP keeps about
        #: 500 bytes of it).  Every such error is also logged, once per
        #: destination and minute.
        self.on_unreachable: Callable[[Address, int, bytes], object] | None = None
        self._unreachable_log: LogWindow | None = None

    def __repr__(self) -> str:
        return f"<UDPSocketPool {self.local}>"

    def listen(self) -> Deferred[Address]:
        """
        Bind the socket (or adopt the given one) and start reading.

        @return: a L{Deferred} firing with the bound L{local} address, or
            failing with Twisted's C{CannotListenError}.
        """
        try:
            if self._sock is not None:
                sock = self._sock
                sock.setblocking(False)
                if self._reads_errors(sock.family):
                    self._port = _ErrorQueuePort._fromListeningDescriptor(
                        self._reactor, sock.fileno(), sock.family, self._protocol, maxPacketSize=MAX_DATAGRAM
                    )
                    self._port.startListening()
                else:
                    self._port = self._reactor.adoptDatagramPort(
                        sock.fileno(), sock.family, self._protocol, maxPacketSize=MAX_DATAGRAM
                    )
                # The reactor works on a duplicate of the descriptor.
                sock.close()
                self._sock = None
            elif self._reads_errors(self.local.family):
                self._port = _ErrorQueuePort(
                    self.local.port,
                    self._protocol,
                    interface=self.local.addr or "",
                    maxPacketSize=MAX_DATAGRAM,
                    reactor=self._reactor,
                )
                self._port.startListening()
            else:
                self._port = self._reactor.listenUDP(
                    self.local.port,
                    self._protocol,
                    interface=self.local.addr,
                    maxPacketSize=MAX_DATAGRAM,
                )
            if self.peer is not None:
                self._port.connect(self.peer.addr, self.peer.port)
            elif isinstance(self._port, _ErrorQueuePort):
                level, option = _RECVERR[self._port.socket.family]
                self._port.socket.setsockopt(level, option, 1)
            _enlarge_buffers(self._port.socket)
        except (OSError, ValueError, error.CannotListenError):
            return defer.fail()
        self.local = dataclasses.replace(self.local, port=self._port.getHost().port)
        return defer.succeed(self.local)

    def _reads_errors(self, family: int | None) -> bool:
        """
        Whether this pool's socket is to queue ICMP errors: Linux, a posix
        reactor (whose ports we can subclass), no fixed peer (a connected
        socket gets them as C{ECONNREFUSED} anyway).
        """
        return (
            sys.platform == "linux"
            and self.peer is None
            and family in _RECVERR
            and isinstance(self._reactor, PosixReactorBase)
        )

    def _read_errors(self) -> None:
        """
        Read the queued ICMP errors (C{MSG_ERRQUEUE}): log each, once per
        destination and minute, and tell L{on_unreachable}.
        """
        port = self._port
        if port is None:
            return
        while True:
            try:
                payload, ancillary, _, sockaddr = port.socket.recvmsg(MAX_DATAGRAM, 512, socket.MSG_ERRQUEUE)
            except OSError:
                # EAGAIN: nothing (more) queued.
                return
            for level, kind, data in ancillary:
                if (level, kind) in _RECVERR.values() and len(data) >= _EXTENDED_ERROR.size:
                    code = _EXTENDED_ERROR.unpack_from(data)[0]
                    self._unreachable(Address(sockaddr[0], sockaddr[1], "udp"), code, payload)

    def _unreachable(self, dst: Address, code: int, payload: bytes) -> None:
        """
        An ICMP error came back for a datagram sent to C{dst}.
        """
        if self._unreachable_log is None:
            self._unreachable_log = LogWindow(self._reactor)
        logged, previous = self._unreachable_log.admit(dst)
        if previous:
            _log.info(
                "{count} more ICMP errors for UDP datagrams in the previous {window} s,"
                " not logged one by one",
                count=previous,
                window=self._unreachable_log.window,
            )
        if logged:
            _log.info(
                "UDP datagram to {dst} not delivered: {reason}"
                " (ICMP; a destination is logged once per {window} s)",
                dst=dst,
                reason=os.strerror(code),
                window=self._unreachable_log.window,
            )
        if self.on_unreachable is not None:
            try:
                self.on_unreachable(dst, code, payload)
            except Exception:
                _log.failure("handling an ICMP error for {dst} failed", dst=dst)

    def send(self, data: bytes, dst: Address, conn: object | None = None) -> Deferred[None]:
        """
        Send one datagram.

        @param data: the payload.
        @param dst: the destination (ignored in favour of L{peer} when the
            pool is restricted).
        @param conn: ignored (UDP has no connections).
        @return: a L{Deferred} that has already fired: L{None} when the
            kernel took the datagram, else a L{DeliveryError} (C{EMSGSIZE}
            for an oversized datagram, C{ECONNREFUSED} when a connected
            socket learnt that the peer port is closed, C{EAFNOSUPPORT} for
            a destination of the other address family, ...).
        @raise ValueError: C{dst} is not resolved.
        """
        return send_deferred(self.send_now, data, dst, conn)

    def send_now(
        self,
        data: bytes,
        dst: Address,
        conn: object | None = None,
        failed: Callable[[DeliveryError], object] | None = None,
    ) -> Deferred[None] | None:
        """
        L{send}: a L{Deferred} for a coalesced send (see the class), or
        L{None} with C{failed} given (called if the send fails when it is
        made); L{None} for a send made at once (a connected socket).

        @raise DeliveryError: as L{send} fails, when it fails at once.
        """
        port = self._port
        if port is None:
            raise DeliveryError(None, "UDP socket is not listening")
        if self.peer is None and dst.family == self.local.family and dst.addr is not None:
            # The hot path: an IP of our family (Address checked it), so
            # Twisted's per-write address checks in Port.write are skipped.
            if len(data) > _MAX_PAYLOAD[self.local.family]:
                raise DeliveryError(errno.EMSGSIZE)
            waiter: Deferred[None] | None = None
            if failed is not None:
                told: _Waiter = failed
            else:
                told = waiter = Deferred()
            pending = self._pending
            pending.append((data, (dst.addr, dst.port), told))
            if len(pending) == 1:
                self._flush_call = self._reactor.callLater(0, self._flush)
            elif len(pending) >= COALESCE_MAX:
                self._flush()
            return waiter
        sockaddr = None if self.peer is not None else dst.sockaddr
        reader = self._protocol
        reader.sending = True
        reader.refused_during_send = False
        try:
            if sockaddr is None:
                port.write(data)
            else:
                port.write(data, sockaddr)
        except (OSError, error.MessageLengthError, error.InvalidAddressError) as exc:
            raise delivery_error(exc) from None
        finally:
            reader.sending = False
        if reader.refused_during_send:
            raise DeliveryError(errno.ECONNREFUSED)
        return None

    def _flush(self) -> None:
        """
        Hand every held-back datagram to the kernel, in order, and tell
        each sender how it went.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        pending, self._pending = self._pending, []
        port = self._port
        for data, sockaddr, waiter in pending:
            try:
                if port is None:
                    raise DeliveryError(errno.ESHUTDOWN, "UDP socket closed")
                _sendto(port.socket, data, sockaddr)
            except DeliveryError as e:
                if isinstance(waiter, Deferred):
                    waiter.errback(e)
                else:
                    _tell(waiter, e, sockaddr)
            else:
                if isinstance(waiter, Deferred):
                    waiter.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Send what is held back, then close the socket.

        @return: a L{Deferred} firing once it is closed.
        """
        self._flush()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)

    @property
    def listening_socket(self) -> socket.socket | None:
        """
        The bound socket, whose kernel counters the status page reads
        (L{sipleg.status}); L{None} when not listening.
        """
        return None if self._port is None else self._port.socket

    def connections(self) -> list[object]:
        """
        UDP has no connections.

        @return: an empty list.
        """
        return []

    def flow_connection(self, peer: Address) -> object | None:
        """
        A UDP flow is its peer's address alone (L{ISocketPool.flow_connection}).

        @return: L{None}.
        """
        return None

    def _datagram_received(self, data: bytes, host: str, port: int) -> None:
        """
        Filter one datagram and pass it to the receiver.

        @param data: the payload.
        @param host: the sender's IP.
        @param port: the sender's port.
        """
        # SIP messages start with a token; anything starting with
        # whitespace is looked at more closely (keep-alives are dropped).
        if not data or (data[0] in _WHITESPACE and not data.strip()):
            return
        peer = self.peer
        if peer is not None and (peer.port != port or peer.addr != host):
            # Only possible before connect() took effect or with an
            # unnormalised address; the kernel filters the rest.
            return
        key = (host, port)
        source = self._sources.get(key)
        if source is None:
            if len(self._sources) >= _SOURCE_CACHE_SIZE:
                self._sources.clear()
            source = self._sources[key] = Address(host, port, "udp")
        try:
            self.receiver(data, source, None)
        except Exception:  # noqa: BLE001 - a receiver bug must not kill the socket
            _log.failure("UDP receiver failed on a datagram from {source}", source=source)


def _tell(failed: Callable[[DeliveryError], object], error: DeliveryError, sockaddr: tuple[str, int]) -> None:
    """
    Report a held-back send's failure to its sender; nothing it raises
    stops the other sends.
    """
    try:
        failed(error)
    except Exception:
        _log.failure("handling a failed send to {dst} failed", dst=sockaddr)


def _sendto(sock: socket.socket, data: bytes, sockaddr: tuple[str, int]) -> None:
    """
    C{sendto} on an unconnected socket, errors mapped as C{Port.write}
    maps them (EINTR retried; ECONNREFUSED, an ICMP error left over from
    an earlier datagram, ignored).

    @raise DeliveryError: any other error.
    """
    while True:
        try:
            sock.sendto(data, sockaddr)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            if exc.errno == errno.ECONNREFUSED:
                return
            raise DeliveryError(exc.errno) from None
        return


#: The largest UDP payload of each address family (RFC 768 length field
#: less the IP and UDP headers): anything larger fails with EMSGSIZE.
_MAX_PAYLOAD: dict[int | None, int] = {socket.AF_INET: 65535 - 20 - 8, socket.AF_INET6: 65535 - 8}

#: Socket buffer size asked for: a burst of datagrams while the reactor is
#: busy waits in the kernel instead of being dropped (the kernel caps it at
#: net.core.rmem_max / wmem_max).
SOCKET_BUFFER = 4 * 1024 * 1024


def _enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, option) < SOCKET_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            _log.debug("could not enlarge the UDP socket buffers")
