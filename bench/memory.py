"""
Does the proxy's memory stay flat?  RSS after 1,000 calls against RSS after
100,000 (issue target: at most 10 MB more).

SIPp uac -> twistd sipproxy -> SIPp uas on 127.0.0.1, every call with its
own Call-ID and branches; RSS (VmRSS) of the proxy is read after the first
1,000 calls and again after all of them.  Bounded: SIPp stops after the
calls (or its timeout), everything is killed at the end.

    python bench/memory.py [--calls 100000] [--rate 2000] [--transport udp]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = ROOT / "tests" / "interop" / "scenarios"
HOST = "127.0.0.1"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sipp(scenario: str, transport: str, port: int, workdir: Path, *extra: str) -> list[str]:
    return [
        "sipp", "-sf", str(SCENARIOS / scenario), "-t", "t1" if transport == "tcp" else "u1",
        "-i", HOST, "-p", str(port), "-nostdin", "-timeout", "300s", "-timeout_error",
        "-buff_size", str(1 << 20), *extra,
    ]  # fmt: skip


def run_calls(uac: list[str], count: int, rate: int, workdir: Path) -> None:
    done = subprocess.run(
        [*uac, "-m", str(count), "-r", str(rate)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=count / rate + 60,
        check=False,
    )
    if done.returncode != 0:
        print(f"  (SIPp reported failed calls: exit {done.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    kind = socket.SOCK_DGRAM if args.transport == "udp" else socket.SOCK_STREAM
    proxy_port, uas_port, uac_port = (free_port(kind) for _ in range(3))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    twistd = str(Path(sys.executable).parent / "twistd")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        listen = f"{args.transport}:{HOST}:{proxy_port}"
        proxy = subprocess.Popen(
            [
                twistd,
                "-n",
                "--pidfile=",
                "--logfile",
                str(workdir / "proxy.log"),
                "sipproxy",
                "--listen",
                listen,
            ],
            env=env,
            start_new_session=True,
        )
        uas = subprocess.Popen(
            sipp("uas.xml", args.transport, uas_port, workdir),
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(2)
            transport = ";transport=tcp" if args.transport == "tcp" else ""
            uac = sipp(
                "uac.xml",
                args.transport,
                uac_port,
                workdir,
                f"{HOST}:{uas_port}",
                "-rsa",
                f"{HOST}:{proxy_port}",
                "-key",
                "ruri",
                f"sip:service@{HOST}:{uas_port}{transport}",
            )
            run_calls(uac, 1000, min(args.rate, 1000), workdir)
            before = rss_kib(proxy.pid)
            print(f"RSS after 1,000 calls: {before / 1024:.1f} MiB")
            run_calls(uac, args.calls - 1000, args.rate, workdir)
            after = rss_kib(proxy.pid)
            print(f"RSS after {args.calls:,} calls: {after / 1024:.1f} MiB")
            print(f"growth: {(after - before) / 1024:+.1f} MiB ({args.transport}, {args.rate} calls/s)")
        finally:
            for process in (proxy, uas):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()


if __name__ == "__main__":
    main()
