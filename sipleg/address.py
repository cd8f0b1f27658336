"""
Transport addresses: C{host:port} plus the transport protocol.

An L{Address} names one end of a SIP hop: a host (an IP literal or a DNS
name), a port, and the transport (C{udp}, C{tcp} or C{tls}) used to reach
it.  It is a small frozen value type, hashable and cheap to compare, used
for local leg addresses, packet sources and delivery destinations alike.

This module is part of the sans-IO core: it never touches the network.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass, field

__all__ = [
    "Address",
    "address",
    "bracket",
    "default_port",
    "ip_family",
    "split_hostport",
    "PROTOCOLS",
    "WEBSOCKET",
    "uri_transport",
]

#: The transports sipleg speaks.
PROTOCOLS = ("udp", "tcp", "tls", "ws", "wss")

#: The WebSocket transports (RFC 7118): a WebSocket server reaches its
#: clients only over the connections they opened.
WEBSOCKET = ("ws", "wss")


def default_port(proto: str) -> int:
    """
    The default SIP port of a transport (RFC 3261 §19.1.2): 5061 for TLS
    (and secure WebSocket), 5060 otherwise.  (RFC 7118 names no SIP
    port for WebSocket: a WebSocket listener is always given its port.)
    """
    return 5061 if proto in ("tls", "wss") else 5060


def uri_transport(proto: str) -> str:
    """
    The C{transport} URI parameter of a transport: RFC 7118 §5.2 writes
    C{ws} for WebSocket, secure or not (the Via says C{WS} or C{WSS}).
    """
    return "ws" if proto == "wss" else proto


def ip_family(text: str) -> int | None:
    """
    Tell whether C{text} is an IP literal.

    @param text: a host without brackets or port.
    @return: C{socket.AF_INET}, C{socket.AF_INET6} or L{None} when C{text}
        is not an IP address (a host name, or garbage).
    """
    if ":" in text:
        try:
            socket.inet_pton(socket.AF_INET6, text)
        except (OSError, ValueError):
            return None
        return socket.AF_INET6
    if not text or text[-1] not in "0123456789":
        return None
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return None
    return socket.AF_INET


def _canonical_ip(text: str, family: int) -> str:
    return socket.inet_ntop(family, socket.inet_pton(family, text))


@dataclass(frozen=True)
class Address:
    """
    One end of a SIP hop.

    @ivar host: the host as given, lower-cased; an IP literal (canonical
        form, IPv6 without brackets) or a DNS name.
    @ivar port: the port number.
    @ivar proto: C{"udp"}, C{"tcp"}, C{"tls"}, C{"ws"} or C{"wss"}.
    @ivar family: C{socket.AF_INET} or C{socket.AF_INET6} when the host is
        an IP literal, else L{None} until resolved.
    @ivar addr: the IP address to use on the socket: C{host} itself for an
        IP literal, the resolved address for a name, or L{None} for a name
        not resolved yet.
    """

    host: str
    port: int
    proto: str = "udp"
    family: int | None = field(default=None, compare=False)
    addr: str | None = None

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"unknown transport {self.proto!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port!r}")
        host = self.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        host = host.lower()
        family = ip_family(host)
        if family is not None:
            host = _canonical_ip(host, family)
            object.__setattr__(self, "addr", host)
            object.__setattr__(self, "family", family)
        elif self.addr is not None:
            addr_family = ip_family(self.addr)
            if addr_family is None:
                raise ValueError(f"not an IP address: {self.addr!r}")
            object.__setattr__(self, "addr", _canonical_ip(self.addr, addr_family))
            object.__setattr__(self, "family", addr_family)
        elif not host:
            raise ValueError("empty host")
        object.__setattr__(self, "host", host)

    @classmethod
    def parse(cls, text: str, proto: str = "udp", port: int | None = None) -> Address:
        """
        Parse C{host}, C{host:port}, C{[v6]}, C{[v6]:port} or a bare IPv6
        literal.

        @param text: the address text.
        @param proto: the transport of the result.
        @param port: the port to use when C{text} carries none; defaults to
            the transport's default port.
        @raise ValueError: C{text} is not an address.
        """
        text = text.strip()
        host, found = split_hostport(text)
        if found is None:
            found = default_port(proto) if port is None else port
        return cls(host, found, proto)

    @property
    def is_ip(self) -> bool:
        """
        Whether the address can be used on a socket without resolving.
        """
        return self.addr is not None

    @property
    def hostport(self) -> str:
        """
        C{host:port}, with IPv6 literals in brackets.
        """
        return f"{bracket(self.host)}:{self.port}"

    @property
    def sockaddr(self) -> tuple[str, int]:
        """
        The C{(ip, port)} pair used by sockets and by Twisted.

        @raise ValueError: the host name is not resolved yet.
        """
        if self.addr is None:
            raise ValueError(f"{self.host} is not resolved")
        return (self.addr, self.port)

    def with_addr(self, addr: str) -> Address:
        """
        This address, resolved to the IP C{addr}.
        """
        return Address(self.host, self.port, self.proto, addr=addr)

    def __str__(self) -> str:
        return self.hostport


def bracket(host: str) -> str:
    """
    C{host} as it is written in a URI or Via: IPv6 literals in brackets.
    """
    return f"[{host}]" if ":" in host else host


def split_hostport(text: str) -> tuple[str, int | None]:
    """
    Split C{host[:port]}, C{[v6][:port]} or a bare IPv6 literal.

    @return: the host (without brackets) and the port or L{None}.
    @raise ValueError: malformed text or port.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after ']' in {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        host, port_text = text, None
    else:
        host, _, port_text = text.partition(":")
        if not _:
            port_text = None
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


def address(host: str, port: int, proto: str = "udp") -> Address:
    """
    C{Address(host, port, proto)}, shared: the last few thousand addresses
    made from short hosts are cached (an L{Address} is a frozen value), so
    the proxy does not validate the same peer's address for every packet.

    @raise ValueError: as L{Address} does.
    """
    if len(host) <= 64:
        return _cached_address(host, port, proto)
    return Address(host, port, proto)


@functools.lru_cache(maxsize=4096)
def _cached_address(host: str, port: int, proto: str) -> Address:
    return Address(host, port, proto)
