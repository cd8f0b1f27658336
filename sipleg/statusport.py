"""
Where C{--status} listens: the option parsed (no I/O) and its socket bound
at configuration time, so that a port in use, an address this host does
not have or a missing directory is a one-line error before the proxy
starts, as for the SIP ports (L{sipleg.service.bind_socket}).

The forms accepted::

    tcp:8060                       127.0.0.1:8060 (loopback by default)
    tcp:127.0.0.1:8060             like --listen: PROTO:ADDR:PORT
    tcp:[::1]:8060
    unix:/run/sipleg/status.sock
    tcp:8060:interface=127.0.0.1   Twisted's endpoint strings (tcp, tcp6,
    tcp6:8060:interface=::1        unix; options interface, backlog, mode)
    unix:/run/sipleg/status.sock:mode=660
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service

from sipleg.address import split_hostport
from sipleg.errors import ConfigError

__all__ = ["StatusEndpoint", "StatusServer", "bind_status", "parse_status"]

#: Connections the status socket queues by default (Twisted's default).
DEFAULT_BACKLOG = 50
#: Twisted's default mode of a listening UNIX socket.
DEFAULT_MODE = 0o666


@dataclass(frozen=True)
class StatusEndpoint:
    """
    One C{--status} option.

    @ivar family: C{AF_INET}, C{AF_INET6} or C{AF_UNIX}.
    @ivar address: C{(host, port)} or the socket file's path.
    @ivar mode: the permissions of a UNIX socket file.
    """

    family: int
    address: tuple[str, int] | str
    backlog: int = DEFAULT_BACKLOG
    mode: int = DEFAULT_MODE

    def __str__(self) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        host, port = self.address
        return f"tcp:[{host}]:{port}" if self.family == socket.AF_INET6 else f"tcp:{host}:{port}"


def _fields(rest: str) -> tuple[list[str], dict[str, str]]:
    """
    Split C{a:b:key=value:key=value} into positional and keyword fields.
    A field without C{=} after a keyword continues its value, so that
    C{interface=::1} needs no backslashes (which Twisted's form allows too).
    """
    positional: list[str] = []
    keywords: dict[str, str] = {}
    last: str | None = None
    for part in rest.replace("\\:", "\0").split(":"):
        part = part.replace("\0", ":")
        key, sep, value = part.partition("=")
        if sep:
            last = key
            keywords[key] = value
        elif last is not None:
            keywords[last] += ":" + part
        else:
            positional.append(part)
    return positional, keywords


def _number(option: str, text: str, low: int, high: int, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise ValueError(f"bad {option} {text!r}")
    return value


def parse_status(text: str) -> StatusEndpoint:
    """
    Parse a C{--status} option (see the module's forms).

    @raise ConfigError: one line naming the option and what is wrong.
    """
    proto, sep, rest = text.partition(":")
    proto = proto.lower()
    try:
        if not sep or proto not in ("tcp", "tcp6", "unix"):
            raise ValueError("expected tcp:[ADDR:]PORT or unix:PATH")
        if proto == "unix":
            path, keywords = _fields(rest)
            if len(path) != 1 or not path[0]:
                raise ValueError("expected unix:PATH")
            unknown = set(keywords) - {"mode", "backlog"}
            if unknown:
                raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
            return StatusEndpoint(
                socket.AF_UNIX,
                path[0],
                _number("backlog", keywords.get("backlog", "50"), 1, 65535),
                _number("mode", keywords.get("mode", "666"), 0, 0o777, 8),
            )
        if rest.startswith("["):
            # Like --listen: tcp:[::1]:8060.
            positional, keywords = [rest], {}
        else:
            positional, keywords = _fields(rest)
        unknown = set(keywords) - {"interface", "backlog"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}")
        if rest.startswith("[") or len(positional) == 2 and not positional[0].isdigit():
            # tcp:ADDR:PORT, as --listen writes it.
            host, port = split_hostport(":".join(positional))
            if port is None:
                raise ValueError("expected ADDR:PORT")
        elif 1 <= len(positional) <= 2:
            # Twisted's tcp:PORT[:INTERFACE].
            port = _number("port", positional[0], 0, 65535)
            host = positional[1] if len(positional) == 2 else ""
        else:
            raise ValueError("expected tcp:[ADDR:]PORT")
        host = keywords.get("interface", host).strip("[]") or ("::1" if proto == "tcp6" else "127.0.0.1")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            socket.inet_pton(family, host)
        except OSError:
            raise ValueError(f"{host!r} is not an IP address") from None
        backlog = _number("backlog", keywords.get("backlog", "50"), 1, 65535)
        return StatusEndpoint(family, (host, port), backlog)
    except ValueError as e:
        raise ConfigError(f"--status {text!r}: {e}") from None


def bind_status(endpoint: StatusEndpoint) -> socket.socket:
    """
    Create, bind and listen on the socket of C{endpoint}.  A UNIX socket
    file that nobody listens on any more (a process that died) is
    replaced; one still in use is an error.

    @raise ConfigError: it cannot be bound, in one line.
    """
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        if endpoint.family == socket.AF_UNIX:
            assert isinstance(endpoint.address, str)
            _bind_unix(sock, endpoint.address)
            os.chmod(endpoint.address, endpoint.mode)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if endpoint.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(endpoint.address)
        sock.listen(endpoint.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        # A path too long for a UNIX socket has no errno, only a message.
        raise ConfigError(f"--status: cannot listen on {endpoint}: {e.strerror or e}") from None
    return sock


def _bind_unix(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(path)
    except OSError as e:
        if e.errno != errno.EADDRINUSE or _answers(path):
            raise
        os.unlink(path)
        sock.bind(path)


def _answers(path: str) -> bool:
    """
    Whether something listens on the UNIX socket C{path}.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


class StatusServer(Service):
    """
    Serves a site on a socket bound by L{bind_status} (the reactor removes
    a UNIX socket file when it stops listening).
    """

    def __init__(self, sock: socket.socket, factory: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._sock = sock
        self._factory = factory
        self._reactor = reactor
        self._port: Any = None

    def startService(self) -> None:
        Service.startService(self)
        # The reactor works on a duplicate of the descriptor.
        self._port = self._reactor.adoptStreamPort(self._sock.fileno(), self._sock.family, self._factory)
        self._sock.close()

    def stopService(self) -> Any:
        Service.stopService(self)
        port, self._port = self._port, None
        return None if port is None else port.stopListening()

    @property
    def port(self) -> Any:
        """
        The listening port (L{None} unless running).
        """
        return self._port
