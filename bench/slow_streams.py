"""
Slow-loris against the stream listener: N connections each trickle one
byte of a request every 2 s, while a legitimate client (from 127.0.0.2)
sends an OPTIONS to the proxy over UDP and over a new TCP connection every
2 s.  Reports
how long the legitimate OPTIONS take to be answered, and when the
attacking connections are closed by the proxy.

    python3 bench/slow_streams.py [--connections 1000] [--seconds 40]

Bounded: N connections on 127.0.0.1 for at most --seconds, then every
socket and the proxy are closed.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import free_port, terminate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
SLOW = (
    b"INVITE sip:victim@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-slow\r\n"
    b"X-Pad: "
)


def options(port: int, transport: str, local_port: int, n: int) -> bytes:
    return (
        f"OPTIONS sip:{HOST}:{port};transport={transport.lower()} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {LEGIT}:{local_port};branch=z9hG4bK-legit-{n}\r\n"
        f"From: <sip:legit@{HOST}>;tag={n}\r\nTo: <sip:legit@{HOST}>\r\nCall-ID: legit-{n}@{HOST}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


#: The legitimate client's own address (the attackers use 127.0.0.1).
LEGIT = "127.0.0.2"


def legit_udp(port: int, n: int) -> float | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LEGIT, 0))
        sock.settimeout(1.0)
        start = time.monotonic()
        sock.sendto(options(port, "UDP", sock.getsockname()[1], n), (HOST, port))
        try:
            sock.recv(65535)
        except OSError:
            return None
        return time.monotonic() - start


def legit_tcp(port: int, n: int) -> float | None:
    start = time.monotonic()
    try:
        with socket.create_connection((HOST, port), timeout=1.0, source_address=(LEGIT, 0)) as sock:
            sock.sendall(options(port, "TCP", sock.getsockname()[1], n))
            data = sock.recv(65535)
    except OSError:
        return None
    return time.monotonic() - start if data else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * args.connections + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    port = free_port(("udp", "tcp"))
    workdir = Path(tempfile.mkdtemp(prefix="sipleg-slow-"))
    argv = [
        sys.executable, "-m", "twisted", "--log-file", str(workdir / "twistd.log"), "sipproxy",
        "--listen", f"udp:{HOST}:{port}", "--listen", f"tcp:{HOST}:{port}",
    ]
    quiet = subprocess.DEVNULL
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proxy = subprocess.Popen(argv, cwd=workdir, env=env, stdout=quiet, stderr=quiet)
    attackers: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while legit_udp(port, 0) is None:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit("the proxy did not start")
        selector = selectors.DefaultSelector()
        start = time.monotonic()
        for _ in range(args.connections):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
            attackers.append(sock)
            selector.register(sock, selectors.EVENT_READ)
        open_at: dict[socket.socket, int] = {sock: 0 for sock in attackers}
        closed_at: dict[socket.socket, float] = {}
        udp_times: list[float | None] = []
        tcp_times: list[float | None] = []
        tick = 0
        while time.monotonic() - start < args.seconds and len(closed_at) < len(attackers):
            for sock in attackers:
                if sock in closed_at:
                    continue
                offset = open_at[sock]
                try:
                    sock.send(SLOW[offset:offset + 1] if offset < len(SLOW) else b"a")
                    open_at[sock] = offset + 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed_at[sock] = time.monotonic() - start
            tick += 1
            udp_times.append(legit_udp(port, tick))
            tcp_times.append(legit_tcp(port, tick))
            until = time.monotonic() + 2
            while (left := until - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    sock = key.fileobj  # type: ignore[assignment]
                    try:
                        gone = sock.recv(4096) == b""
                    except (BlockingIOError, InterruptedError):
                        gone = False
                    except OSError:
                        gone = True
                    if gone and sock not in closed_at:
                        closed_at[sock] = time.monotonic() - start
                        selector.unregister(sock)
        answered = [t for t in udp_times + tcp_times if t is not None]
        print(f"{args.connections} slow connections, {time.monotonic() - start:.0f} s")
        print(
            f"legitimate OPTIONS: UDP {sum(t is not None for t in udp_times)}/{len(udp_times)}, "
            f"TCP {sum(t is not None for t in tcp_times)}/{len(tcp_times)} answered within 1 s; "
            f"slowest {max(answered) * 1000:.0f} ms" if answered else "legitimate OPTIONS: none answered"
        )
        times = sorted(closed_at.values())
        if times:
            print(
                f"attacking connections closed by the proxy: {len(times)}/{len(attackers)}, "
                f"first at {times[0]:.1f} s, last at {times[-1]:.1f} s"
            )
        else:
            print("attacking connections closed by the proxy: none")
    finally:
        for sock in attackers:
            sock.close()
        terminate(proxy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
