"""
The floor forwarder: the least a Python + Twisted stateless SIP forwarder
can do, the baseline C{bench/load.py} compares sipleg to.

    python bench/floor.py --port PORT [--host 127.0.0.1] [--transports udp,tcp]

Prints C{READY} once listening; runs until SIGTERM/SIGINT.

It splices bytes and parses nothing else.  A request gets our Via line
right after its start line (C{branch=z9hG4bK} + MD5 of the top Via value,
so one per transaction), its Max-Forwards number decremented (dropped at 0),
and goes to the host:port of its Request-URI (over TCP when the URI says
C{transport=tcp}).  It never Record-Routes, so in-dialog requests (SIPp's
ACK and BYE to the UAS's Contact) route on their Request-URI too and any
Route is left as it is.  A response loses its top Via value (dropped unless
it is ours) and goes to the next Via's host:port (C{received}/C{rport} when
present) on that Via's transport.  TCP: Content-Length framing, one
connection per peer address, reused both ways.  IPv4 literals only, no DNS.

Why it is the floor: the same reactor, sockets and Twisted transports as
sipleg (C{DatagramProtocol} + C{transport.write}, 4 MiB UDP buffers as
sipleg asks for; C{Protocol} over TCP), a few C{bytes.find} and one MD5 per
request: no SIP checks, no message object.  Whatever a real proxy costs
above this is its own parsing and decisions.
"""

from __future__ import annotations

import argparse
import socket
import sys
from hashlib import md5
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol

Addr = tuple[str, int]
reactor: Any = _reactor
UDP, TCP = b"UDP", b"TCP"


def header(data: bytes, end: int, names: tuple[bytes, ...], begin: int = 0) -> tuple[int, int]:
    """
    Start of the value and end of the line of the first header called one
    of C{names} (canonical spelling first, then any case) between C{begin}
    and C{end}, or C{(-1, -1)}.
    """
    for text in (data, data[:end].lower()):
        for name in names:
            i = text.find(b"\r\n" + name + b":", begin, end)
            if i >= 0:
                start = i + len(name) + 3
                return start, data.find(b"\r\n", start)
        names = tuple(n.lower() for n in names)
    return -1, -1


def via_target(value: bytes) -> tuple[bytes, Addr]:
    """
    The transport and address of one Via value C{SIP/2.0/UDP host:port;...}.
    """
    proto, _, rest = value.strip().partition(b" ")
    params = rest.strip().split(b";")
    host, _, port = params[0].strip().partition(b":")
    for param in params[1:]:
        key, _, v = param.strip().partition(b"=")
        if key == b"rport" and v:
            port = v
        elif key == b"received":
            host = v
    return proto.rpartition(b"/")[2].upper(), (host.decode(), int(port or 5060))


class Floor:
    """
    Both transports of the forwarder and its connections by peer address.
    """

    def __init__(self, host: str, port: int) -> None:
        self.sent_by = f"{host}:{port}".encode()
        self.udp: Any = None
        self.streams: dict[Addr, Stream] = {}
        self.pending: dict[Addr, list[bytes]] = {}

    def handle(self, data: bytes) -> None:
        end = data.find(b"\r\n\r\n")
        try:
            out = self.response(data, end) if data.startswith(b"SIP/2.0 ") else self.request(data, end)
        except (IndexError, ValueError):  # not SIP enough: dropped
            return
        if out is None:
            return
        message, proto, addr = out
        if proto == TCP:
            self.send_tcp(message, addr)
        elif self.udp is not None:
            self.udp.write(message, addr)

    def request(self, data: bytes, end: int) -> tuple[bytes, bytes, Addr] | None:
        line = data.find(b"\r\n")
        uri = data[:line].split(b" ")[1]
        rest = uri.partition(b":")[2]
        rest = rest[rest.find(b"@") + 1 :].split(b";", 1)
        host, _, port = rest[0].split(b"?")[0].partition(b":")
        proto = TCP if len(rest) > 1 and b"transport=tcp" in rest[1].lower() else UDP
        start, stop = header(data, end, (b"Max-Forwards",))
        if start >= 0:
            hops = int(data[start:stop])
            if hops <= 0:
                return None
            data = b"%s %d%s" % (data[:start], hops - 1, data[stop:])
        start, stop = header(data, end, (b"Via", b"v"))
        branch = md5(data[start:stop]).hexdigest().encode()
        via = b"Via: SIP/2.0/%s %s;branch=z9hG4bK%s\r\n" % (proto, self.sent_by, branch)
        return data[: line + 2] + via + data[line + 2 :], proto, (host.decode(), int(port or 5060))

    def response(self, data: bytes, end: int) -> tuple[bytes, bytes, Addr] | None:
        start, stop = header(data, end, (b"Via", b"v"))
        if start < 0:
            return None
        value = data[start:stop]
        comma = value.find(b",")
        ours = value if comma < 0 else value[:comma]
        if ours.strip().partition(b" ")[2].split(b";")[0].strip() != self.sent_by:
            return None
        if comma >= 0:  # "Via: ours, next, ..." on one line
            data = data[:start] + b" " + value[comma + 1 :].lstrip() + data[stop:]
            following = value[comma + 1 :]
        else:
            data = data[: data.rfind(b"\r\n", 0, start)] + data[stop:]
            start, stop = header(data, data.find(b"\r\n\r\n"), (b"Via", b"v"))
            if start < 0:
                return None
            following = data[start:stop]
        proto, addr = via_target(following.split(b",")[0])
        return data, proto, addr

    def send_tcp(self, message: bytes, addr: Addr) -> None:
        stream = self.streams.get(addr)
        if stream is not None:
            stream.transport.write(message)
        elif addr in self.pending:
            self.pending[addr].append(message)
        else:
            self.pending[addr] = [message]
            reactor.connectTCP(addr[0], addr[1], Streams(self, addr))


class Datagrams(DatagramProtocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.floor.handle(datagram)


class Stream(Protocol):
    """
    One TCP connection, either way: Content-Length framing.
    """

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.buffer = b""

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        addr = (peer.host, peer.port)
        self.floor.streams[addr] = self
        for message in self.floor.pending.pop(addr, ()):
            self.transport.write(message)

    def connectionLost(self, reason: Any = None) -> None:
        peer = self.transport.getPeer()
        if self.floor.streams.get((peer.host, peer.port)) is self:
            del self.floor.streams[(peer.host, peer.port)]

    def dataReceived(self, data: bytes) -> None:
        buffer, pos = self.buffer + data, 0
        while True:
            while buffer.startswith(b"\r\n", pos):  # keep-alives
                pos += 2
            end = buffer.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            start, stop = header(buffer, end, (b"Content-Length", b"l"), pos)
            total = end + 4 + (int(buffer[start:stop]) if start >= 0 else 0)
            if total > len(buffer):
                break
            self.floor.handle(buffer[pos:total])
            pos = total
        self.buffer = buffer[pos:]


class Streams(ClientFactory):
    """
    Makes L{Stream}s: for the listening port and for a connection to C{addr}.
    """

    def __init__(self, floor: Floor, addr: Addr | None = None) -> None:
        self.floor, self.addr = floor, addr

    def buildProtocol(self, addr: Any) -> Stream:
        return Stream(self.floor)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if self.addr is not None:
            self.floor.pending.pop(self.addr, None)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transports", default="udp,tcp", help="comma-separated: udp, tcp")
    args = parser.parse_args(argv)
    floor = Floor(args.host, args.port)
    if "udp" in args.transports:
        protocol = Datagrams(floor)
        port = reactor.listenUDP(args.port, protocol, interface=args.host)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            port.socket.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        floor.udp = protocol.transport
    if "tcp" in args.transports:
        reactor.listenTCP(args.port, Streams(floor), interface=args.host)
    reactor.callWhenRunning(lambda: print("READY", flush=True))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
