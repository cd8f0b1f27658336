"""
A flood from one untrusted source while another untrusted source places
calls: does the caller still get through, and what does the flooder get
back?

The proxy trusts only 127.0.0.254/32 (`--allow`), so 127.0.0.1 (the
flooder) and 127.0.0.2 (SIPp's UAC and UAS, calling `sip:service@
example.test`, our `--domain`, routed to the UAS) are strangers.  The
flooder sends OPTIONS for our domain at --rate per second for --seconds
from one socket and counts the bytes it gets back; SIPp places calls at
--cps meanwhile.

    python3 bench/flood.py [--rate 20000] [--seconds 10] [--cps 20]

Bounded: --rate x --seconds datagrams at most, all on 127.0.0.0/8, every
process stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import free_port, terminate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCENARIOS = REPO / "tests" / "interop" / "scenarios"
PROXY = "127.0.0.1"
CALLER = "127.0.0.2"


def flood(port: int, rate: int, seconds: float) -> tuple[int, int, int]:
    """
    Send OPTIONS at C{rate} per second for C{seconds} from 127.0.0.1.

    @return: datagrams sent, bytes sent, bytes received back.
    """
    sent = sent_bytes = got = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PROXY, 0))
        sock.setblocking(False)
        local = sock.getsockname()[1]
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                data = (
                    f"OPTIONS sip:service@example.test SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {PROXY}:{local};branch=z9hG4bK-f{sent}\r\n"
                    f"From: <sip:flood@example.org>;tag={sent}\r\nTo: <sip:service@example.test>\r\n"
                    f"Call-ID: f{sent}@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                ).encode()
                try:
                    sock.sendto(data, (PROXY, port))
                    sent_bytes += len(data)
                except OSError:
                    pass
                sent += 1
            try:
                while True:
                    got += len(sock.recv(65535))
            except OSError:
                pass
            time.sleep(0.001)
        time.sleep(1)
        try:
            while True:
                got += len(sock.recv(65535))
        except OSError:
            pass
    return sent, sent_bytes, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cps", type=int, default=20)
    args = parser.parse_args()
    port = free_port(("udp",))
    uas_port = free_port(("udp",))
    workdir = Path(tempfile.mkdtemp(prefix="sipleg-flood-"))
    quiet = subprocess.DEVNULL
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twisted",
            "--log-format",
            "text",
            "--log-file",
            str(workdir / "twistd.log"),
            "sipproxy",
            "--listen",
            f"udp:{PROXY}:{port}",
            "--allow",
            "127.0.0.254/32",
            "--domain",
            "example.test",
            "--route",
            f"example.test=sip:{CALLER}:{uas_port}",
        ],
        cwd=workdir,
        env=env,
        stdout=quiet,
        stderr=quiet,
    )
    uas = subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(SCENARIOS / "uas.xml"),
            "-i",
            CALLER,
            "-p",
            str(uas_port),
            "-nostdin",
            "-bind_local",
        ],
        cwd=workdir,
        stdout=quiet,
        stderr=quiet,
    )
    calls = int(args.cps * (args.seconds + 2))
    uac = None
    try:
        time.sleep(2)
        uac_port = free_port(("udp",))
        uac = subprocess.Popen(
            [
                "sipp",
                f"{CALLER}:{uas_port}",
                "-sf",
                str(SCENARIOS / "uac.xml"),
                "-t",
                "u1",
                "-i",
                CALLER,
                "-p",
                str(uac_port),
                "-bind_local",
                "-nostdin",
                "-rsa",
                f"{PROXY}:{port}",
                "-key",
                "ruri",
                "sip:service@example.test",
                "-r",
                str(args.cps),
                "-m",
                str(calls),
                "-timeout",
                f"{int(args.seconds) + 30}s",
                "-recv_timeout",
                "10000",
                "-trace_stat",
                "-stf",
                str(workdir / "stats.csv"),
                "-fd",
                "1",
            ],
            cwd=workdir,
            stdout=quiet,
            stderr=quiet,
        )
        time.sleep(1)
        sent, sent_bytes, got = flood(port, args.rate, args.seconds)
        uac.wait(args.seconds + 40)
        stats = (workdir / "stats.csv").read_text().splitlines()
        header, last = stats[0].split(";"), stats[-1].split(";")
        ok = int(last[header.index("SuccessfulCall(C)")])
        failed = int(last[header.index("FailedCall(C)")])
        log = (workdir / "twistd.log").read_text(errors="replace")
        bans = [line for line in log.splitlines() if "banned source" in line]
        print(
            f"flooder: {sent} OPTIONS in {args.seconds:g} s ({sent_bytes} bytes), got back {got} bytes "
            f"({100 * got / max(sent_bytes, 1):.2f}%)"
        )
        print(
            f"caller ({CALLER}, {args.cps} calls/s): {ok} calls succeeded, {failed} failed "
            f"({100 * ok / max(ok + failed, 1):.1f}% success)"
        )
        print(f"bans logged: {len(bans)}" + (f"; first: {bans[0]}" if bans else ""))
    finally:
        for process in (uac, uas, proxy):
            terminate(process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
