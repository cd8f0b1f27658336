"""
The I/O shell of sipleg: socket pools that move bytes for a leg.

 - L{UDPSocketPool}: one datagram socket;
 - L{StreamSocketPool}: a TCP or TLS listener and its connections, with
   stream framing, connection reuse, connect timeout and idle expiry;
 - L{TLSConfig}: certificates and verification policy for TLS pools.

Pools never parse SIP: they hand datagrams and framed stream messages to a
L{Receiver} and send what they are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipleg.lazy import lazy_names

__all__ = [
    "ISocketPool",
    "Receiver",
    "StreamConnection",
    "StreamSocketPool",
    "TLSConfig",
    "UDPSocketPool",
    "delivery_error",
]

# Each pool is imported when first named: a UDP-only configuration never
# imports the stream pool, nor TLS with it.
_LAZY = {
    "ISocketPool": "sipleg.transport.base",
    "Receiver": "sipleg.transport.base",
    "delivery_error": "sipleg.transport.base",
    "StreamConnection": "sipleg.transport.stream",
    "StreamSocketPool": "sipleg.transport.stream",
    "TLSConfig": "sipleg.transport.tls",
    "UDPSocketPool": "sipleg.transport.udp",
}

if TYPE_CHECKING:
    from sipleg.transport.base import ISocketPool, Receiver, delivery_error
    from sipleg.transport.stream import StreamConnection, StreamSocketPool
    from sipleg.transport.tls import TLSConfig
    from sipleg.transport.udp import UDPSocketPool


__getattr__ = lazy_names("sipleg.transport", _LAZY, globals())
