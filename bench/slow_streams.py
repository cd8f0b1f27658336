"""
Slow-loris against the stream listeners: N TCP connections each trickle
one byte of a request every 2 s, and M connections to the TLS listener
stall their handshake (half of them send nothing, half the first half of
a ClientHello), while a legitimate client (from 127.0.0.2) sends an
OPTIONS to the proxy every 2 s over UDP, over a new TCP connection and
over a new TLS connection (verifying the proxy's certificate).  Reports
how many legitimate OPTIONS are answered within 1 s and the slowest
answer, per transport, and when the attacking connections are closed by
the proxy.

    python3 bench/slow_streams.py [--connections 1000] [--tls-stalls 400]
        [--seconds 40] [--single-source]

The attackers come from several loopback addresses (the trickling ones
from 127.0.0.10 on, the stalled TLS ones from 127.0.0.100 on, at most 125
connections each, under the proxy's per-source cap of 128), so the
connection cap itself is exercised; with --single-source they all come
from 127.0.0.1 and the per-source cap turns most of them away at once.

Bounded: at most 10,000 connections of each kind, on 127.0.0.0/8 only,
for at most --seconds, then every socket and the proxy are closed.  The
throwaway CA and certificate live in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from load import free_port, terminate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.certs import CertificateAuthority  # noqa: E402

HOST = "127.0.0.1"
SLOW = (
    b"INVITE sip:victim@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-slow\r\nX-Pad: "
)
#: The legitimate client's own address.
LEGIT = "127.0.0.2"
#: Last octet of the first source address of the trickling attackers and
#: of the stalled TLS ones (127.0.0.X).
TRICKLE_SOURCES = 10
STALL_SOURCES = 100
#: Attacking connections per source address, under the proxy's default
#: per-source cap (128).
PER_SOURCE = 125
#: Most connections of each kind (80 source addresses of 125).
MAX_ATTACKERS = 10_000
#: A legitimate OPTIONS answered later than this many seconds is a failure.
ANSWER_WITHIN = 1.0


@dataclass
class Attackers:
    """
    A group of attacking connections and when the proxy closed each.

    @ivar sockets: the connections, in the order they were opened.
    @ivar sources: how many source addresses they come from.
    @ivar closed_at: seconds from the start of the attack to the moment
        each closed connection was seen closed.
    """

    sockets: list[socket.socket]
    sources: int
    closed_at: dict[socket.socket, float] = field(default_factory=dict)

    def report(self, name: str) -> str:
        """
        @return: one line: how many were closed, first and last time.
        """
        times = sorted(self.closed_at.values())
        if not times:
            return f"{name} closed by the proxy: none of {len(self.sockets)}"
        return (
            f"{name} closed by the proxy: {len(times)}/{len(self.sockets)}, "
            f"first at {times[0]:.1f} s, last at {times[-1]:.1f} s"
        )


def options(port: int, transport: str, local_port: int, n: int) -> bytes:
    """
    An OPTIONS for the proxy itself from the legitimate client.
    """
    return (
        f"OPTIONS sip:{HOST}:{port};transport={transport.lower()} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {LEGIT}:{local_port};branch=z9hG4bK-legit-{n}\r\n"
        f"From: <sip:legit@{HOST}>;tag={n}\r\nTo: <sip:legit@{HOST}>\r\nCall-ID: legit-{n}@{HOST}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answered(data: bytes, start: float) -> float | None:
    """
    @return: seconds since C{start} if C{data} is a SIP response, else
        L{None}.
    """
    return time.monotonic() - start if data.startswith(b"SIP/2.0 ") else None


def legit_udp(port: int, n: int) -> float | None:
    """
    @return: how long the proxy took to answer an OPTIONS over UDP, or
        L{None} without an answer within 1 s.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LEGIT, 0))
        sock.settimeout(ANSWER_WITHIN)
        start = time.monotonic()
        sock.sendto(options(port, "UDP", sock.getsockname()[1], n), (HOST, port))
        try:
            data = sock.recv(65535)
        except OSError:
            return None
        return answered(data, start)


def legit_tcp(port: int, n: int) -> float | None:
    """
    @return: how long a new TCP connection took to get an OPTIONS
        answered, or L{None} when it failed (each step has 1 s).
    """
    start = time.monotonic()
    try:
        with socket.create_connection((HOST, port), timeout=ANSWER_WITHIN, source_address=(LEGIT, 0)) as sock:
            sock.sendall(options(port, "TCP", sock.getsockname()[1], n))
            data = sock.recv(65535)
    except OSError:
        return None
    return answered(data, start)


def legit_tls(port: int, context: ssl.SSLContext, n: int) -> float | None:
    """
    @return: how long a new TLS connection (handshake and certificate
        check included) took to get an OPTIONS answered, or L{None} when it
        failed (each step has 1 s).
    """
    start = time.monotonic()
    try:
        with (
            socket.create_connection((HOST, port), timeout=ANSWER_WITHIN, source_address=(LEGIT, 0)) as raw,
            context.wrap_socket(raw, server_hostname=HOST) as sock,
        ):
            sock.sendall(options(port, "TLS", sock.getsockname()[1], n))
            data = sock.recv(65535)
    except OSError:
        return None
    return answered(data, start)


def client_hello() -> bytes:
    """
    @return: the first flight of a TLS client: a complete ClientHello.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=HOST)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def write_certificates(workdir: Path) -> dict[str, Path]:
    """
    Make a throwaway CA and a server certificate for 127.0.0.1.

    @return: the PEM files by role: C{"ca"}, C{"cert"}, C{"key"}.
    """
    ca = CertificateAuthority("sipleg bench CA")
    leaf = ca.issue(HOST, ip_addresses=(HOST,))
    files = {"ca": workdir / "ca.pem", "cert": workdir / "cert.pem", "key": workdir / "key.pem"}
    files["ca"].write_bytes(ca.cert)
    files["cert"].write_bytes(leaf.cert)
    files["key"].write_bytes(leaf.key)
    return files


def open_attackers(
    count: int, port: int, first_source: int | None, selector: selectors.BaseSelector
) -> Attackers:
    """
    Open C{count} non-blocking connections to C{port}, watched for reads.

    @param first_source: last octet of the first source address
        (127.0.0.X, then X+1 every L{PER_SOURCE} connections); L{None} for
        all from 127.0.0.1.
    """
    sockets: list[socket.socket] = []
    for i in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(sock)
        sock.setblocking(False)
        if first_source is not None:
            sock.bind((f"127.0.0.{first_source + i // PER_SOURCE}", 0))
        sock.connect_ex((HOST, port))
        selector.register(sock, selectors.EVENT_READ)
    sources = 1 if first_source is None else -(-count // PER_SOURCE)
    return Attackers(sockets, sources)


def send_some(group: Attackers, data: bytes, start: float, every: int = 1) -> None:
    """
    Send C{data} on every C{every}th open connection of C{group}; a
    connection the send finds broken counts as closed now.
    """
    for sock in group.sockets[every - 1 :: every]:
        if sock in group.closed_at:
            continue
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            group.closed_at[sock] = time.monotonic() - start


def watch(selector: selectors.BaseSelector, groups: list[Attackers], seconds: float, start: float) -> None:
    """
    For C{seconds}, record the attacking connections the proxy closes
    (end of stream or reset) and drain whatever else they receive.
    """
    owner = {sock: group for group in groups for sock in group.sockets}
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                gone = sock.recv(4096) == b""
            except (BlockingIOError, InterruptedError):
                gone = False
            except OSError:
                gone = True
            if gone:
                selector.unregister(sock)
                owner[sock].closed_at.setdefault(sock, time.monotonic() - start)


def summary(name: str, times: list[float | None]) -> str:
    """
    @return: answered within 1 s / attempted, and the slowest answer.
    """
    on_time = sum(t is not None and t <= ANSWER_WITHIN for t in times)
    late = [t for t in times if t is not None]
    slowest = f"slowest {max(late) * 1000:.0f} ms" if late else "no answer"
    return f"{name} {on_time}/{len(times)} ({slowest})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000, help="trickling TCP connections")
    parser.add_argument("--tls-stalls", type=int, default=400, help="connections stalling the TLS handshake")
    parser.add_argument("--seconds", type=float, default=40.0, help="longest duration of the attack")
    parser.add_argument(
        "--single-source", action="store_true", help="every attacker from 127.0.0.1 (else 125 per address)"
    )
    args = parser.parse_args()
    for name in ("connections", "tls_stalls"):
        if not 0 <= getattr(args, name) <= MAX_ATTACKERS:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and {MAX_ATTACKERS}")
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be between 0 and 600")
    total = args.connections + args.tls_stalls
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * total + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    port = free_port(("udp", "tcp"))
    tls_port = port
    while tls_port == port:
        tls_port = free_port(("tcp",))
    workdir = Path(tempfile.mkdtemp(prefix="sipleg-slow-"))
    pem = write_certificates(workdir)
    context = ssl.create_default_context(cafile=str(pem["ca"]))
    argv = [
        sys.executable,
        "-m",
        "twisted",
        "--log-file",
        str(workdir / "twistd.log"),
        "sipproxy",
        "--listen",
        f"udp:{HOST}:{port}",
        "--listen",
        f"tcp:{HOST}:{port}",
        "--listen",
        f"tls:{HOST}:{tls_port}",
        "--tls-cert",
        str(pem["cert"]),
        "--tls-key",
        str(pem["key"]),
        "--tls-ca",
        str(pem["ca"]),
    ]
    quiet = subprocess.DEVNULL
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proxy = subprocess.Popen(argv, cwd=workdir, env=env, stdout=quiet, stderr=quiet)
    selector = selectors.DefaultSelector()
    groups: list[Attackers] = []
    try:
        deadline = time.monotonic() + 20
        while legit_udp(port, 0) is None or legit_tls(tls_port, context, 0) is None:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit("the proxy did not start")
        hello = client_hello()
        start = time.monotonic()
        single = args.single_source
        trickling = open_attackers(args.connections, port, None if single else TRICKLE_SOURCES, selector)
        groups.append(trickling)
        stalling = open_attackers(args.tls_stalls, tls_port, None if single else STALL_SOURCES, selector)
        groups.append(stalling)
        udp_times: list[float | None] = []
        tcp_times: list[float | None] = []
        tls_times: list[float | None] = []
        tick = 0
        while time.monotonic() - start < args.seconds and sum(len(g.closed_at) for g in groups) < total:
            if tick == 0:
                # Every other stall sends the first half of a ClientHello, once.
                send_some(stalling, hello[: len(hello) // 2], start, every=2)
            send_some(trickling, SLOW[tick : tick + 1] or b"a", start)
            tick += 1
            udp_times.append(legit_udp(port, tick))
            tcp_times.append(legit_tcp(port, tick))
            tls_times.append(legit_tls(tls_port, context, tick))
            watch(selector, groups, 2.0, start)
        print(
            f"{args.connections} trickling TCP connections from {trickling.sources} address(es), "
            f"{args.tls_stalls} stalled TLS handshakes from {stalling.sources}, "
            f"{time.monotonic() - start:.0f} s"
        )
        legit = (("UDP", udp_times), ("TCP", tcp_times), ("TLS", tls_times))
        print("legitimate OPTIONS answered within 1 s: " + ", ".join(summary(*item) for item in legit))
        print(trickling.report("trickling connections"))
        print(stalling.report("stalled TLS connections"))
        print(f"proxy log: {workdir / 'twistd.log'}")
    finally:
        selector.close()
        for group in groups:
            for sock in group.sockets:
                sock.close()
        terminate(proxy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
