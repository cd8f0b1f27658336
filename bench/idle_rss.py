"""
Idle memory of C{twistd -n sipproxy} against a bare C{twistd -n} running a
service that does nothing, measured in the same run.

    python bench/idle_rss.py [--repeat 3] [--settle 2]

The baseline is C{twistd -n idle} (C{bench/idle/twisted/plugins/
idle_plugin.py}): the same interpreter, reactor, twistd logging and plugin
discovery, so the difference is what sipleg itself loads and allocates.
Both run with the same C{PYTHONPATH} (the checkout, for the sipproxy
plugin, and C{bench/idle}, for the idle one) and the default options of
each; sipproxy listens on UDP and TCP 127.0.0.1 as by default, but on a
free port instead of 5060.  Each process is read once its RSS has not
changed for C{--settle} seconds; the two alternate, C{--repeat} times, and
the medians are reported.

Then each runs once more with C{SIPLEG_BENCH_MODULES} set, which makes
C{bench/idle/sitecustomize.py} write C{sys.modules} on SIGUSR2: the modules
the idle proxy imported that the idle baseline did not are listed, by top
package.  Every process is started in its own session and killed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from load import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
#: /proc/PID/status fields reported, KiB (Pss is left out: it depends on
#: whatever else runs and shares the same files).
FIELDS = ("VmRSS", "RssAnon", "RssFile")
#: Seconds a process may take to settle.
TIMEOUT = 30.0


def memory_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                values[key] = int(rest.split()[0])
    return values


def argv(which: str, workdir: Path) -> list[str]:
    twistd = str(Path(sys.executable).parent / "twistd")
    command = [twistd, "-n", "--pidfile=", "--logfile", str(workdir / f"{which}.log"), which]
    if which == "sipproxy":
        port = free_port(("udp", "tcp"))
        command += ["--listen", f"udp:{HOST}:{port}", "--listen", f"tcp:{HOST}:{port}"]
    return command


def settled(which: str, workdir: Path, settle: float, modules: Path | None = None) -> dict[str, int]:
    """
    Start C{twistd which}, wait until its RSS is steady for C{settle}
    seconds, read its memory (and its modules into C{modules}), kill it.
    """
    path = [str(REPO), str(HERE / "idle"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    env.pop("SIPLEG_BENCH_MODULES", None)
    if modules is not None:
        env["SIPLEG_BENCH_MODULES"] = str(modules)
    with open(workdir / f"{which}.err", "wb") as err:
        proc = subprocess.Popen(
            argv(which, workdir),
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        last, since = -1, time.monotonic()
        while True:
            if proc.poll() is not None:
                log = (workdir / f"{which}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"twistd {which} exited with {proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"twistd {which}: RSS not steady after {TIMEOUT} s")
            rss = memory_kib(proc.pid)["VmRSS"]
            if rss != last:
                last, since = rss, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
            time.sleep(0.1)
        values = memory_kib(proc.pid)
        if modules is not None:
            os.kill(proc.pid, signal.SIGUSR2)
            for _ in range(100):
                if modules.exists() and modules.read_text().endswith("\n"):
                    break
                time.sleep(0.05)
        return values
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians reported)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of steady RSS before reading")
    parser.add_argument("--all", action="store_true", help="list every extra module, not only by package")
    options = parser.parse_args(args)
    names = ("idle", "sipproxy")
    with tempfile.TemporaryDirectory(prefix="sipleg-idle-") as tmp:
        workdir = Path(tmp)
        runs: dict[str, list[dict[str, int]]] = {name: [] for name in names}
        for i in range(options.repeat):
            for name in names if i % 2 == 0 else names[::-1]:
                runs[name].append(settled(name, workdir, options.settle))
        loaded = {}
        for name in names:
            out = workdir / f"{name}.modules"
            settled(name, workdir, options.settle, out)
            loaded[name] = set(out.read_text().split())
    median = {n: {k: statistics.median(r[k] for r in runs[n]) / 1024 for k in FIELDS} for n in names}
    print(f"Python {sys.version.split()[0]}; median of {options.repeat} runs each, MiB\n")
    print("| process | " + " | ".join(FIELDS) + " | modules |")
    print("|---|" + "---:|" * (len(FIELDS) + 1))
    for name in names:
        cells = " | ".join(f"{median[name][k]:.1f}" for k in FIELDS)
        print(f"| twistd -n {name} | {cells} | {len(loaded[name])} |")
    extra = sorted(loaded["sipproxy"] - loaded["idle"])
    cells = " | ".join(f"{median['sipproxy'][k] - median['idle'][k]:+.1f}" for k in FIELDS)
    print(f"| difference | {cells} | {len(extra):+d} |")
    missing = sorted(loaded["idle"] - loaded["sipproxy"])
    if missing:
        print(f"\nimported by idle only: {', '.join(missing)}")
    packages = Counter(name.split(".")[0] for name in extra)
    print(f"\n{len(extra)} modules imported by idle sipproxy and not by idle twistd, by top package:\n")
    for package, count in sorted(packages.items()):
        below = sorted({n.split(".")[1] for n in extra if n.startswith(package + ".")})
        detail = f" ({', '.join(below)})" if below and package in ("twisted", "cryptography") else ""
        print(f"- {package}: {count}{detail}")
    if options.all:
        print("\n" + "\n".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
