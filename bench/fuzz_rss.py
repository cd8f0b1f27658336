"""
Does hostile input leave memory behind?  PROTOS c07-sip style mutations of
an INVITE (one field at a time replaced by overflow strings up to 64 KiB,
format strings, extreme integers, junk bytes) sent to `twistd sipproxy`
over UDP and TCP on 127.0.0.1, twice; RSS (VmRSS) is read before, after
the first run and after the second, and the proxy must still answer an
OPTIONS afterwards.

    python3 bench/fuzz_rss.py [--repeat 2] [--transport udp,tcp]

Bounded: a few thousand cases per run, paced, every socket on loopback,
the proxy killed at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from load import free_port, terminate
from memory import rss_kib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"

#: The fields of the template that are replaced, one at a time.
TEMPLATE = (
    "{method} sip:{user}@{host}:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/{transport} {via_host}:5061;branch=z9hG4bK{branch}\r\n"
    "From: {display} <sip:caller@{host}>;tag={tag}\r\n"
    "To: <sip:{user}@{host}>\r\n"
    "Call-ID: {callid}@{host}\r\n"
    "CSeq: {cseq} {cseq_method}\r\n"
    "Contact: <sip:caller@{host}:5061>\r\n"
    "Max-Forwards: {max_forwards}\r\n"
    "Expires: {expires}\r\n"
    "Content-Type: {content_type}\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
    "{body}"
)
SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
)
FIELDS = {
    "method": "INVITE",
    "user": "callee",
    "host": "127.0.0.1",
    "port": "5099",
    "transport": "UDP",
    "via_host": "127.0.0.1",
    "branch": "-1",
    "display": '"Caller"',
    "tag": "1",
    "callid": "1",
    "cseq": "1",
    "cseq_method": "INVITE",
    "max_forwards": "70",
    "expires": "60",
    "content_type": "application/sdp",
    "length": "",
    "body": SDP,
}


def values() -> Iterator[str]:
    """
    The PROTOS test values: overflows of several characters and sizes,
    format strings, integers at the edges, junk.
    """
    for size in (128, 256, 1024, 4096, 16384, 65000):
        for char in ("a", "%", "\x00", "\xff", "@", ";", ":", "<", '"', " ", ","):
            yield char * size
    for fmt in ("%s", "%n", "%x", "%99999999999s", "%.1024d"):
        for count in (1, 16, 256):
            yield fmt * count
    yield from (
        "-1",
        "0",
        "2147483647",
        "2147483648",
        "4294967295",
        "4294967296",
        "18446744073709551616",
        "-2147483649",
        "0x7fffffff",
        "1e10",
        "999999999999999999999",
    )
    yield from ("", "\r\n", "\r", "\n", "\t", "\x1b[2J", "\u00e9\u00e8", "\udc80", "sip:", "<>", '"', "\\")


def cases() -> Iterator[bytes]:
    """
    Every field of the template replaced by every test value, with a
    unique Call-ID and branch per case.
    """
    n = 0
    for field in FIELDS:
        for value in values():
            n += 1
            fields = dict(FIELDS, callid=f"fuzz-{n}", branch=f"-{n}")
            fields[field] = value
            body = fields["body"]
            if field != "length":
                fields["length"] = str(len(body.encode("utf-8", "surrogateescape")))
            data = TEMPLATE.format(**fields).encode("utf-8", "surrogateescape")
            if len(data) <= 65000:
                yield data


def send_udp(port: int, messages: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n, data in enumerate(messages):
            try:
                sock.sendto(data, (HOST, port))
            except OSError:
                pass
            if n % 50 == 49:
                time.sleep(0.005)
                _drain(sock)


def _drain(sock: socket.socket) -> None:
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while sock.recv(65535):
            pass
    except OSError:
        pass
    finally:
        sock.settimeout(timeout)


def send_tcp(port: int, messages: list[bytes]) -> None:
    """
    Every case on a stream; a connection the proxy closes (a broken
    stream) is replaced by a new one.
    """
    sock: socket.socket | None = None
    for n, data in enumerate(messages):
        for _ in range(2):
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=5)
            try:
                sock.sendall(data)
                break
            except OSError:
                sock.close()
                sock = None
        if n % 50 == 49 and sock is not None:
            time.sleep(0.005)
            _drain(sock)
    if sock is not None:
        sock.close()


def options_answered(port: int) -> bool:
    request = (
        f"OPTIONS sip:{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:5061;branch=z9hG4bK-alive\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: alive@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind((HOST, 0))
        request = request.replace(b"5061;", f"{sock.getsockname()[1]};".encode())
        sock.sendto(request, (HOST, port))
        try:
            return sock.recv(65535).startswith(b"SIP/2.0 200 ")
        except OSError:
            return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--transport", default="udp,tcp")
    args = parser.parse_args()
    messages = list(cases())
    port = free_port(("udp", "tcp"))
    workdir = Path(tempfile.mkdtemp(prefix="sipleg-fuzz-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
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
    ]
    quiet = subprocess.DEVNULL
    proxy = subprocess.Popen(argv, cwd=workdir, env=env, stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + 20
        while not options_answered(port):
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit("the proxy did not start")
        start = rss_kib(proxy.pid)
        print(f"{len(messages)} cases per run and transport; RSS before: {start / 1024:.1f} MiB")
        for run in range(1, args.repeat + 1):
            began = time.monotonic()
            for transport in args.transport.split(","):
                (send_udp if transport == "udp" else send_tcp)(port, messages)
            time.sleep(2)
            alive = options_answered(port)
            now = rss_kib(proxy.pid)
            print(
                f"after run {run} ({time.monotonic() - began:.0f} s): RSS {now / 1024:.1f} MiB, "
                f"growth {(now - start) / 1024:+.1f} MiB, OPTIONS answered: {alive}"
            )
        log = (workdir / "twistd.log").read_text(errors="replace")
        print(f"tracebacks in the proxy's log: {log.count('Traceback')}")
    finally:
        terminate(proxy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
