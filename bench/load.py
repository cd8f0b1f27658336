"""
SIPp load comparison of stateless proxies: sipleg, Perl Net::SIP, Twisted's
C{twisted.protocols.sip.Proxy}, Kamailio and the floor forwarder
(C{bench/floor.py}: the least a Python + Twisted forwarder can do, the
baseline: the summary divides every system's us/msg by the floor's, per
transport and rate, from the same run).

For each system and transport it supports, a SIPp UAS is started, then the
proxy (on 127.0.0.1, free ports), then a SIPp UAC makes calls UAC -> proxy
-> UAS at stepped call rates (C{tests/interop/scenarios/uac.xml} and
C{uas.xml}: INVITE, 180, 200, ACK, BYE, 200; the UAS sends no 100 and a
stateless proxy makes none, so the proxy forwards exactly 6 messages per
successful call, plus retransmissions).  Each step is bounded: C{rate x
--step-seconds} calls, and SIPp gives up after C{--step-seconds +
--grace} seconds.

Measured per step: calls attempted / successful / failed (SIPp's
statistics file), the call rate SIPp actually reached, the proxy's CPU time
over the step (utime + stime of every process of the proxy, children
included, from C{/proc/PID/stat}) and so CPU microseconds per forwarded
message, the proxy's peak RSS (C{VmHWM}), and the CPU share of the SIPp
processes.

By default the proxy is pinned to CPU 1 and the SIPp processes to CPU 0,
so the proxy has a core to itself and a step where SIPp is the limit can
be told apart: it is flagged C{sipp-limit} when the SIPp processes
together used >= 90% of their core or dropped datagrams, or placed calls
at < 95% of the target rate while the proxy was not saturated.  A system with several workers
(C{sipleg-2w}) is never pinned, nor are its SIPp processes: it needs every
core (use C{--no-pin} to compare it with one process on equal terms).

C{--pairs N} runs N SIPp UAC/UAS pairs at once, each with its own ports
(so each its own UDP 4-tuples and TCP connections, which SO_REUSEPORT can
spread over workers), each at rate / N; their statistics are summed.

Run by hand from the repository root (never in CI; loopback only)::

    /tmp/venv/bin/python bench/load.py                 # everything, < 15 min
    /tmp/venv/bin/python bench/load.py --quick         # ~1 min
    /tmp/venv/bin/python bench/load.py --systems sipleg --transports udp
    /tmp/venv/bin/python bench/load.py --profile       # py-spy on sipleg, 1600 cps UDP
    /tmp/venv/bin/python bench/load.py --systems sipleg,sipleg-2w --no-pin --pairs 4

Every process started here runs in its own session and is killed (SIGTERM,
then SIGKILL to its process group) at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import linecache
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UAC_SCENARIO = REPO / "tests" / "interop" / "scenarios" / "uac.xml"
UAS_SCENARIO = REPO / "tests" / "interop" / "scenarios" / "uas.xml"
HOST = "127.0.0.1"

#: Messages a stateless proxy forwards per successful call: INVITE, 180,
#: 200, ACK, BYE, 200 (the UAS scenario sends no 100 Trying).
MESSAGES_PER_CALL = 6
#: A step passes with fewer failed calls than this fraction.
PASS_FAILED = 0.001
#: After a step with more failed calls than this, higher rates are skipped.
GIVE_UP_FAILED = 0.10
#: A process is saturated when it uses this share of its core over a
#: sampling window.
SATURATED = 0.90
#: A step that places calls at less than this share of the target rate
#: does not count as reaching it.
REACHED = 0.95
#: Seconds between two CPU and drop samples during a step.
SAMPLE = 0.5
#: Socket buffer of the SIPp processes (-buff_size), bytes.
SIPP_BUFFER = 1 << 20
#: Seconds a server may take to listen.
READY_TIMEOUT = 15.0
#: Seconds between a SIGTERM and a SIGKILL at cleanup.
TERM_GRACE = 2.0
#: Seconds of rest between two steps, so the proxy drains.
REST = 1.0
#: py-spy samples per second in --profile.
PROFILE_RATE = 250
#: Linux clock ticks per second, for /proc/PID/stat times.
CLK_TCK = os.sysconf("SC_CLK_TCK")

DEFAULT_RATES = (100, 400, 1600, 3200, 6400)
QUICK_RATES = (100, 1600)


class BenchError(Exception):
    """
    The benchmark could not run (a peer missing, a server that did not
    start).
    """


# ------------------------------------------------------------------ /proc


def _stat_fields(pid: int) -> list[str] | None:
    """
    The fields of C{/proc/PID/stat} after the command name, or L{None}
    when the process is gone.  Index 0 is field 3 (state) of proc(5).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """
    C{root} and every live descendant of it.
    """
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> tuple[float, float]:
    """
    CPU time used so far by C{root} and its descendants, including
    children they already reaped.

    @return: user and system seconds.
    """
    user = system = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # proc(5) fields 14-17: utime stime cutime cstime.
            utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
            user += utime + cutime
            system += stime + cstime
    return user / CLK_TCK, system / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kib(root: int) -> int:
    """
    The sum of C{VmHWM} over the process tree (for a multi-process server
    this counts shared memory once per process that touched it).
    """
    return sum(status_kib(pid, "VmHWM") for pid in process_tree(root))


def pss_kib(root: int) -> int:
    """
    The sum of the current proportional set size over the process tree:
    shared pages divided among the processes sharing them.
    """
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """
    End a process started without a process group of its own: SIGTERM,
    then SIGKILL after 10 s.  Nothing for one not started or already gone.
    """
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def udp_drops(ports: Sequence[int]) -> dict[int, int]:
    """
    Datagrams the kernel dropped so far, for want of receive buffer, at the
    UDP sockets bound to each of C{ports} on this host (the C{drops}
    column of C{/proc/net/udp}); ports without a socket are left out.
    """
    drops: dict[int, int] = {}
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                drops[port] = drops.get(port, 0) + int(fields[-1])
    return drops


def bound(proto: str, port: int) -> bool:
    """
    Whether some socket on this host listens on C{port}: an unconnected UDP
    socket (state 07) or a listening TCP socket (state 0A).
    """
    state = "07" if proto == "udp" else "0A"
    with open(f"/proc/net/{proto}") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def free_port(protos: Sequence[str]) -> int:
    """
    A port free on 127.0.0.1 for every protocol in C{protos} right now.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port: int = udp.getsockname()[1]
            if "tcp" not in protos:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise BenchError("no free port on 127.0.0.1")


# ------------------------------------------------------------- processes


class Processes:
    """
    Every child process of the benchmark, each in its own session so that
    it and whatever it forks can be ended together.
    """

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self._live: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
        """
        Start C{argv} with its output in C{workdir/name.log}, pinned to
        C{cpu} when pinning is on.
        """
        if shutil.which(argv[0]) is None:
            raise BenchError(f"{argv[0]} not found")
        target = {cpu} if self.pin and cpu is not None else None

        def pin() -> None:
            if target is not None:
                os.sched_setaffinity(0, target)

        # twistd finds the sipproxy plugin in REPO/twisted/plugins, which an
        # editable install does not put on sys.path.
        path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=pin,
            )
        self._live.append(proc)
        return proc

    def log_tail(self, name: str, size: int = 1500) -> str:
        try:
            data = (self.workdir / f"{name}.log").read_bytes()
        except OSError:
            return ""
        return data[-size:].decode("utf-8", "replace")

    def wait_bound(self, name: str, proc: subprocess.Popen[bytes], protos: Sequence[str], port: int) -> None:
        """
        Wait until C{port} is bound for every protocol in C{protos}.

        @raise BenchError: C{proc} exited or did not bind in time.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            if all(bound(proto, port) for proto in protos):
                return
            time.sleep(0.05)
        raise BenchError(f"{name} not listening on {port} after {READY_TIMEOUT} s:\n{self.log_tail(name)}")

    def wait(
        self, proc: subprocess.Popen[bytes], timeout: float, tick: Callable[[], None] | None = None
    ) -> tuple[int | None, float]:
        """
        Reap C{proc}, killing it after C{timeout} seconds; call C{tick}
        every few milliseconds meanwhile.

        @return: its exit status (L{None} when killed by a signal) and the
            CPU seconds it used (its rusage, children included).
        """
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self._signal(proc, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if tick is not None:
                tick()
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self._live.remove(proc)
        code = proc.returncode if proc.returncode >= 0 else None
        return code, usage.ru_utime + usage.ru_stime

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """
        End C{proc} and its process group: SIGTERM, then SIGKILL.
        """
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            pass
        self._signal(proc, signal.SIGKILL)
        proc.wait()
        if proc in self._live:
            self._live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self._live):
            self.stop(proc)


# --------------------------------------------------------------- systems


@dataclass(frozen=True)
class System:
    """
    A proxy under test.

    @ivar transports: the transports it can forward.
    @ivar argv: the command line for a proxy on 127.0.0.1:port listening
        on the given transports, run in the given work directory.
    @ivar workers: processes that share its ports (SO_REUSEPORT); with
        more than one, nothing is pinned to a CPU for this system.
    """

    name: str
    transports: tuple[str, ...]
    argv: Callable[[int, Sequence[str], Path], list[str]]
    workers: int = 1


def _sipleg(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    argv = [
        str(Path(sys.executable).parent / "twistd"),
        "--pidfile=",
        "-n",
        "--logfile",
        str(workdir / "twistd.log"),
        "sipproxy",
    ]
    for proto in protos:
        argv += ["--listen", f"{proto}:{HOST}:{port}"]
    return argv


def _sipleg_workers(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    return [*_sipleg(port, protos, workdir), "--workers", "2"]


def _netsip(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    return [
        "perl",
        str(HERE / "netsip_proxy.pl"),
        "--addr",
        HOST,
        "--port",
        str(port),
        "--proto",
        ",".join(protos),
    ]


def _twisted(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    return [sys.executable, str(HERE / "twisted_proxy.py"), "--host", HOST, "--port", str(port)]


def _floor(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    return [
        sys.executable,
        str(HERE / "floor.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--transports",
        ",".join(protos),
    ]


def _kamailio(port: int, protos: Sequence[str], workdir: Path) -> list[str]:
    argv = [
        "kamailio",
        "-f",
        str(HERE / "kamailio.cfg"),
        "-DD",
        "-E",
        "-P",
        str(workdir / "kamailio.pid"),
        "-Y",
        str(workdir),
        "-m",
        "64",
        "-M",
        "8",
    ]
    for proto in protos:
        argv += ["-l", f"{proto}:{HOST}:{port}"]
    return argv


SYSTEMS = {
    "sipleg": System("sipleg", ("udp", "tcp"), _sipleg),
    "sipleg-2w": System("sipleg-2w", ("udp", "tcp"), _sipleg_workers, workers=2),
    "floor": System("floor", ("udp", "tcp"), _floor),
    "netsip": System("netsip", ("udp", "tcp"), _netsip),
    "twisted": System("twisted", ("udp",), _twisted),
    "kamailio": System("kamailio", ("udp", "tcp"), _kamailio),
}


# ------------------------------------------------------------------ SIPp


def read_stats(path: Path) -> list[dict[str, str]]:
    """
    The rows of a SIPp statistics file (C{-trace_stat}), by column.
    """
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except FileNotFoundError:
        return []
    return [dict(zip(rows[0], row, strict=False)) for row in rows[1:]]


def _int(row: dict[str, str], column: str) -> int:
    value = row.get(column, "").strip()
    return int(value) if value.isdigit() else 0


def _epoch(row: dict[str, str], column: str) -> float:
    # "2026-11-27\t04:04:54.495508\t1795752294.495508"
    return float(row[column].split("\t")[-1])


def achieved_rate(rows: list[dict[str, str]]) -> float:
    """
    The call rate SIPp reached while placing calls: over the periods in
    which it placed calls all along (cumulative count still short of the
    final one at the period's end), else over the whole run.
    """
    if not rows:
        return 0.0
    total = _int(rows[-1], "OutgoingCall(C)")
    calls, seconds = 0, 0.0
    for row in rows[1:]:
        if _int(row, "OutgoingCall(C)") >= total:
            break
        calls += _int(row, "OutgoingCall(P)")
        seconds += _epoch(row, "CurrentTime") - _epoch(row, "LastResetTime")
    if seconds < 0.5:
        calls = total
        seconds = _epoch(rows[-1], "CurrentTime") - _epoch(rows[-1], "StartTime")
    return calls / seconds if seconds > 0 else 0.0


#: SIPp transport mode of the UAC: "1" = one socket for all calls, "n" =
#: one socket per call (many source ports, as many phones would be; this
#: is what lets SO_REUSEPORT spread the load over --workers).
UAC_SOCKETS = "1"


def _sipp_common(proto: str, port: int, sockets: str = "1") -> list[str]:
    return [
        "-t", ("t" if proto == "tcp" else "u") + sockets,
        *(["-max_socket", "10000"] if sockets == "n" else []),
        "-i", HOST, "-p", str(port), "-bind_local", "-nostdin",
        # SIPp's default 64 KiB socket buffers overflow in bursts long
        # before the proxy does.
        "-buff_size", str(SIPP_BUFFER),
    ]  # fmt: skip


def uas_argv(proto: str, port: int) -> list[str]:
    return ["sipp", "-sf", str(UAS_SCENARIO), *_sipp_common(proto, port)]


def uac_argv(
    proto: str,
    port: int,
    uas_port: int,
    proxy_port: int,
    rate: int,
    calls: int,
    timeout: int,
    stats: Path,
    pairs: int = 1,
) -> list[str]:
    """
    A SIPp UAC placing C{calls} calls at C{rate / pairs} calls/s (C{rate}
    calls every C{pairs} seconds: SIPp spreads them evenly).
    """
    ruri = f"sip:service@{HOST}:{uas_port}" + (";transport=tcp" if proto == "tcp" else "")
    return [
        "sipp", f"{HOST}:{uas_port}", "-sf", str(UAC_SCENARIO),
        *_sipp_common(proto, port, UAC_SOCKETS),
        "-rsa", f"{HOST}:{proxy_port}", "-key", "ruri", ruri,
        "-r", str(rate), "-rp", str(1000 * pairs), "-m", str(calls),
        "-timeout", f"{timeout}s",
        # A call whose next message never comes fails before the global
        # timeout ends the step, so it is counted.
        "-recv_timeout", f"{max(1, timeout - 2) * 1000}",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
    ]  # fmt: skip


# ----------------------------------------------------------------- steps


@dataclass
class Step:
    """
    What one call-rate step measured.

    @ivar proxy_peak: the highest share of a core the proxy used over a
        L{SAMPLE}-second window.
    @ivar sipp_peak: the same for the UAC and UAS together (they share a
        core when pinned).
    @ivar proxy_drops: datagrams dropped at the proxy's UDP socket.
    @ivar sipp_drops: datagrams dropped at the UAC's and UAS's UDP sockets.
    """

    system: str
    transport: str
    target: int
    achieved: float = 0.0
    attempted: int = 0
    successful: int = 0
    retransmissions: int = 0
    wall: float = 0.0
    proxy_cpu: float = 0.0
    proxy_sys: float = 0.0
    proxy_peak: float = 0.0
    uac_cpu: float = 0.0
    uas_cpu: float = 0.0
    sipp_peak: float = 0.0
    proxy_drops: int = 0
    sipp_drops: int = 0
    rss_kib: int = 0
    skipped: str = ""

    @property
    def failed(self) -> int:
        """
        Attempted calls that did not succeed, including calls still open
        when SIPp gave up.
        """
        return self.attempted - self.successful

    @property
    def failed_share(self) -> float:
        return self.failed / self.attempted if self.attempted else 1.0

    @property
    def reached(self) -> bool:
        return self.achieved >= REACHED * self.target

    @property
    def passed(self) -> bool:
        """
        The target rate was reached with fewer than L{PASS_FAILED} calls
        failed.
        """
        return not self.skipped and self.reached and self.attempted > 0 and self.failed_share < PASS_FAILED

    @property
    def us_per_message(self) -> float | None:
        """
        Proxy CPU microseconds per forwarded message: CPU time over
        C{MESSAGES_PER_CALL} x successful calls.
        """
        if not self.successful:
            return None
        return self.proxy_cpu * 1e6 / (MESSAGES_PER_CALL * self.successful)

    @property
    def flags(self) -> list[str]:
        """
        C{proxy-limit}: the proxy saturated its core or dropped datagrams;
        C{sipp-limit}: SIPp saturated its core or dropped datagrams, or
        fell short of the target rate while the proxy was not saturated;
        C{short}: the target rate was not reached.
        """
        if self.skipped:
            return [self.skipped]
        proxy = self.proxy_peak >= SATURATED or self.proxy_drops > 0
        sipp = self.sipp_peak >= SATURATED or self.sipp_drops > 0 or (not self.reached and not proxy)
        return [
            flag
            for flag, on in (("proxy-limit", proxy), ("sipp-limit", sipp), ("short", not self.reached))
            if on
        ]


class Sampler:
    """
    Reads the CPU time of the proxy and of both SIPp processes every
    L{SAMPLE} seconds during a step, keeping the busiest window of each.
    """

    def __init__(self, step: Step, proxy: int, sipps: Sequence[int]) -> None:
        self._step = step
        self._proxy = proxy
        self._sipps = sipps
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        return (
            time.monotonic(),
            sum(cpu_seconds(self._proxy)),
            sum(sum(cpu_seconds(pid)) for pid in self._sipps),
        )

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last[0] < SAMPLE:
            return
        current = self._read()
        elapsed = current[0] - self._last[0]
        self._step.proxy_peak = max(self._step.proxy_peak, (current[1] - self._last[1]) / elapsed)
        self._step.sipp_peak = max(self._step.sipp_peak, (current[2] - self._last[2]) / elapsed)
        self._last = current


@dataclass
class Combo:
    """
    One system on one transport: its steps and memory.
    """

    system: str
    transport: str
    steps: list[Step] = field(default_factory=list)
    rss_kib: int = 0
    pss_kib: int = 0
    error: str = ""
    #: The proxy on CPU 1 and SIPp on CPU 0 (when pinning is on): not for
    #: a system with several workers, which need every core.
    pinned: bool = True


@dataclass(frozen=True)
class Settings:
    """
    @ivar pairs: SIPp UAC/UAS pairs run at once, each its own sockets
        (so its own flows for SO_REUSEPORT) at C{rate / pairs}.
    """

    rates: tuple[int, ...]
    step_seconds: float
    grace: int
    warmup_calls: int
    pairs: int = 1


@dataclass
class Rig:
    """
    A running proxy and its SIPp UAS processes (one per pair).
    """

    proxy: subprocess.Popen[bytes]
    proxy_port: int
    uases: list[subprocess.Popen[bytes]]
    uas_ports: list[int]


def _name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}{index + 1}"


def free_ports(proto: str, count: int, taken: Sequence[int]) -> list[int]:
    """
    C{count} distinct ports free on 127.0.0.1 for C{proto}, none in C{taken}.
    """
    ports: list[int] = []
    for _ in range(100 * count):
        if len(ports) == count:
            break
        port = free_port([proto])
        if port not in ports and port not in taken:
            ports.append(port)
    if len(ports) < count:
        raise BenchError(f"not {count} free ports on 127.0.0.1")
    return ports


def run_step(
    procs: Processes,
    combo: Combo,
    rig: Rig,
    rate: int,
    settings: Settings,
    during: Callable[[], None] | None = None,
) -> Step:
    """
    Run one step: C{rate x step_seconds} calls at C{rate} calls/s, split
    evenly over the SIPp pairs of C{rig} (their statistics summed).

    @param during: called right after the UACs started (the profiler).
    """
    pairs = len(rig.uases)
    calls = max(pairs, round(rate * settings.step_seconds))
    timeout = int(settings.step_seconds + 0.999) + settings.grace
    uac_ports = free_ports(combo.transport, pairs, [rig.proxy_port, *rig.uas_ports])
    ports = (rig.proxy_port, *rig.uas_ports, *uac_ports)
    step = Step(combo.system, combo.transport, rate)
    drops_before = udp_drops(ports)
    proxy_before = cpu_seconds(rig.proxy.pid)
    uas_before = sum(sum(cpu_seconds(uas.pid)) for uas in rig.uases)
    started = time.monotonic()
    uacs, stats = [], []
    for i, (uas_port, uac_port) in enumerate(zip(rig.uas_ports, uac_ports, strict=True)):
        stats.append(procs.workdir / f"stat-{combo.system}-{combo.transport}-{rate}-{i}.csv")
        share = calls // pairs + (i < calls % pairs)
        argv = uac_argv(
            combo.transport, uac_port, uas_port, rig.proxy_port, rate, share, timeout, stats[-1], pairs
        )
        uacs.append(procs.start(_name("uac", i), argv, 0 if combo.pinned else None))
    if during is not None:
        during()
    sampler = Sampler(step, rig.proxy.pid, [p.pid for p in (*rig.uases, *uacs)])
    drops = dict(drops_before)

    def tick() -> None:
        sampler.tick()
        # The UAC's socket goes with it: keep its last count.
        drops.update(udp_drops(ports))

    deadline = time.monotonic() + timeout + 5
    codes = []
    for uac in uacs:
        code, cpu = procs.wait(uac, max(0.1, deadline - time.monotonic()), tick)
        codes.append(code)
        step.uac_cpu += cpu
    step.wall = time.monotonic() - started
    proxy_after = cpu_seconds(rig.proxy.pid)
    step.proxy_cpu = sum(proxy_after) - sum(proxy_before)
    step.proxy_sys = proxy_after[1] - proxy_before[1]
    step.uas_cpu = sum(sum(cpu_seconds(uas.pid)) for uas in rig.uases) - uas_before
    drops.update(udp_drops(ports))
    lost = {port: drops.get(port, 0) - drops_before.get(port, 0) for port in ports}
    step.proxy_drops = lost[rig.proxy_port]
    step.sipp_drops = sum(lost[port] for port in ports[1:])
    step.rss_kib = peak_rss_kib(rig.proxy.pid)
    for i, (path, code) in enumerate(zip(stats, codes, strict=True)):
        rows = read_stats(path)
        if not rows:
            name = _name("uac", i)
            raise BenchError(f"SIPp {name} (exit {code}) wrote no statistics:\n{procs.log_tail(name)}")
        step.attempted += _int(rows[-1], "OutgoingCall(C)")
        step.successful += _int(rows[-1], "SuccessfulCall(C)")
        step.retransmissions += _int(rows[-1], "Retransmissions(C)")
        step.achieved += achieved_rate(rows)
    if rig.proxy.poll() is not None:
        raise BenchError(
            f"{combo.system} exited with {rig.proxy.returncode}:\n{procs.log_tail(combo.system)}"
        )
    return step


@contextmanager
def running_pair(
    procs: Processes, system: System, transport: str, pairs: int = 1, pinned: bool = True
) -> Iterator[Rig]:
    """
    C{pairs} SIPp UAS (CPU 0) and the proxy (CPU 1) on C{transport}, all
    listening; all stopped on exit.
    """
    uases: list[subprocess.Popen[bytes]] = []
    try:
        uas_ports = free_ports(transport, pairs, [])
        for i, port in enumerate(uas_ports):
            uases.append(procs.start(_name("uas", i), uas_argv(transport, port), 0 if pinned else None))
        for i, (uas, port) in enumerate(zip(uases, uas_ports, strict=True)):
            procs.wait_bound(_name("uas", i), uas, [transport], port)
        proxy_port = free_port(system.transports)
        argv = system.argv(proxy_port, system.transports, procs.workdir)
        proxy = procs.start(system.name, argv, 1 if pinned else None)
        try:
            procs.wait_bound(system.name, proxy, system.transports, proxy_port)
            yield Rig(proxy, proxy_port, uases, uas_ports)
        finally:
            procs.stop(proxy)
    finally:
        for uas in uases:
            procs.stop(uas)


def warm_up(procs: Processes, combo: Combo, rig: Rig, settings: Settings) -> None:
    """
    A few calls before measuring (connections opened, caches filled).
    """
    if settings.warmup_calls:
        warm = Settings((), settings.warmup_calls / 100, settings.grace, 0)
        run_step(procs, combo, rig, 100, warm)
        time.sleep(REST)


def run_combo(procs: Processes, system: System, transport: str, settings: Settings) -> Combo:
    """
    All steps of one system on one transport, from the lowest rate up,
    skipping the rates above a step that failed badly.
    """
    combo = Combo(system.name, transport, pinned=system.workers == 1)
    try:
        with running_pair(procs, system, transport, settings.pairs, combo.pinned) as rig:
            proxy = rig.proxy
            warm_up(procs, combo, rig, settings)
            given_up = 0
            for rate in settings.rates:
                if given_up:
                    combo.steps.append(
                        Step(system.name, transport, rate, skipped=f"skipped (>{given_up} cps)")
                    )
                    continue
                step = run_step(procs, combo, rig, rate, settings)
                combo.steps.append(step)
                print(step_row(step), flush=True)
                if step.failed_share > GIVE_UP_FAILED:
                    given_up = rate
                time.sleep(REST)
            if proxy.poll() is not None:
                raise BenchError(
                    f"{system.name} exited with {proxy.returncode} after the last step:\n"
                    + procs.log_tail(system.name)
                )
            combo.rss_kib = peak_rss_kib(proxy.pid)
            combo.pss_kib = pss_kib(proxy.pid)
    except BenchError as e:
        combo.error = str(e)
        print(f"{system.name}/{transport}: {e}", file=sys.stderr, flush=True)
    return combo


# ---------------------------------------------------------------- report


STEP_HEADER = (
    "| system | transport | target cps | reached cps | attempted | ok | failed | retrans "
    "| UDP drops proxy/SIPp | proxy CPU s | proxy core % avg/peak | us/msg | peak RSS MiB "
    "| UAC+UAS core % peak | flags |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def step_row(step: Step) -> str:
    if step.skipped:
        return f"| {step.system} | {step.transport} | {step.target} |" + " |" * 11 + f" {step.skipped} |"
    us = step.us_per_message
    average = 100 * step.proxy_cpu / step.wall if step.wall else 0.0
    return (
        f"| {step.system} | {step.transport} | {step.target} | {step.achieved:.0f} | {step.attempted} "
        f"| {step.successful} | {step.failed} ({100 * step.failed_share:.2f}%) | {step.retransmissions} "
        f"| {step.proxy_drops}/{step.sipp_drops} | {step.proxy_cpu:.2f} "
        f"| {average:.0f}/{100 * step.proxy_peak:.0f} | {'-' if us is None else f'{us:.1f}'} "
        f"| {_mib(step.rss_kib)} | {100 * step.sipp_peak:.0f} | {' '.join(step.flags)} |"
    )


def summary(combos: list[Combo], reference: int) -> str:
    lines = [
        f"| system | transport | highest cps with <{100 * PASS_FAILED:g}% failed | us/msg at {reference} cps "
        "| peak RSS MiB (sum VmHWM) | PSS MiB at end |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for combo in combos:
        if combo.error and not combo.steps:
            lines.append(f"| {combo.system} | {combo.transport} | error | | | |")
            continue
        passed = [s for s in combo.steps if s.passed]
        best = max(passed, key=lambda s: s.target, default=None)
        best_text = "none" if best is None else f"{best.target}"
        if best is not None and best.flags:
            best_text += f" ({' '.join(best.flags)}, reached {best.achieved:.0f})"
        at_ref = next((s for s in combo.steps if s.target == reference and not s.skipped), None)
        us = None if at_ref is None else at_ref.us_per_message
        us_text = "-" if us is None else f"{us:.1f}"
        if at_ref is not None and us is not None and not at_ref.passed:
            why = [f"{100 * at_ref.failed_share:.1f}% failed"] if at_ref.failed_share >= PASS_FAILED else []
            why += [] if at_ref.reached else [f"reached {at_ref.achieved:.0f}"]
            us_text += f" ({', '.join(why)})"
        lines.append(
            f"| {combo.system} | {combo.transport} | {best_text} | {us_text} "
            f"| {_mib(max([combo.rss_kib] + [s.rss_kib for s in combo.steps]))} "
            f"| {_mib(combo.pss_kib) if combo.pss_kib else 'exited' if combo.error else '-'} |"
        )
    return "\n".join(lines)


def floor_ratios(combos: list[Combo]) -> str:
    """
    For each transport and rate, every system's us/msg over the floor
    forwarder's (C{bench/floor.py}) from the same run, as a Markdown table;
    empty without a floor.  C{*}: that step or the floor's did not pass
    (failed calls or rate not reached), so the ratio means little.
    """
    floors = {
        c.transport: {s.target: s for s in c.steps if s.us_per_message is not None}
        for c in combos
        if c.system == "floor"
    }
    rates = sorted({s.target for t in floors.values() for s in t.values()})
    if not rates:
        return ""
    lines = [
        "| system | transport | " + " | ".join(f"{r} cps: us/msg (x floor)" for r in rates) + " |",
        "|---|---|" + "---:|" * len(rates),
    ]
    for combo in sorted(combos, key=lambda c: (c.transport, c.system != "floor")):
        floor = floors.get(combo.transport)
        if floor is None:
            continue
        cells = []
        for rate in rates:
            step = next((s for s in combo.steps if s.target == rate and not s.skipped), None)
            us = None if step is None else step.us_per_message
            base = floor.get(rate)
            if step is None or us is None:
                cells.append("-")
            elif base is None or not base.us_per_message:
                cells.append(f"{us:.1f}")
            else:
                mark = "" if step.passed and base.passed else "*"
                cells.append(f"{us:.1f} ({us / base.us_per_message:.2f}x){mark}")
        lines.append(f"| {combo.system} | {combo.transport} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "?"


def environment(args: argparse.Namespace) -> str:
    """
    The machine, date and versions, as Markdown lines.
    """
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    twisted_version = _first_line([sys.executable, "-c", "import twisted; print(twisted.__version__)"])
    netsip = _first_line(["perl", "-MNet::SIP", "-e", "print $Net::SIP::VERSION"])
    pin = "proxy pinned to CPU 1, all SIPp processes to CPU 0" if args.pin else "no CPU pinning"
    several = [name for name in args.systems if SYSTEMS[name].workers > 1]
    if args.pin and several:
        pin += f" (none for {', '.join(several)}: several workers)"
    if args.uac_sockets == "n":
        pin += "; SIPp UAC with one socket per call"
    pairs = (
        "one UAC and one UAS process"
        if args.pairs == 1
        else f"{args.pairs} UAC/UAS pairs at once, each its own ports, each at rate / {args.pairs}"
    )
    return "\n".join(
        [
            f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} CPUs ({model}), "
            f"{platform.system()} {platform.release()}",
            f"- load generator: SIPp, {pairs}; {pin}",
            f"- steps: {args.step_seconds:g} s of calls per rate (SIPp gives up {args.grace} s later)",
            f"- sipp: {_first_line(['sipp', '-v'])}; kamailio: {_first_line(['kamailio', '-v'])}",
            f"- Net::SIP {netsip}; Twisted {twisted_version}; Python {platform.python_version()}",
        ]
    )


# --------------------------------------------------------------- profile


_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


def _is_idle(frame: str) -> bool:
    """
    Whether a leaf frame is the reactor waiting in C{epoll_wait}/C{poll}:
    py-spy's idle detection misses some of those waits.
    """
    match = _FRAME.match(frame)
    if match is None or match["line"] is None or not match["function"].endswith("doPoll"):
        return False
    return "poll(" in linecache.getline(match["path"], int(match["line"]))


def _function(frame: str) -> str:
    """
    C{function (path:line)} -> C{function (path)}, shortened.
    """
    match = _FRAME.match(frame)
    text = frame if match is None else f"{match['function']} ({match['path']})"
    return re.sub(r"\(/.*?/(sipleg|twisted)/", r"(\1/", text)


def aggregate_raw(path: Path) -> tuple[Counter[str], Counter[str], int, int]:
    """
    Self and inclusive sample counts per function from a py-spy C{raw}
    file (collapsed stacks: C{root;...;leaf COUNT}, frames
    C{function (path:line)}), leaving out samples of the reactor waiting.

    @return: self counts, inclusive counts, busy samples, idle samples.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text("utf-8", "replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if _FRAME.match(f)]
        if not frames:
            continue
        if _is_idle(frames[-1]):
            idle += count
            continue
        busy += count
        own[_function(frames[-1])] += count
        for function in {_function(f) for f in frames}:
            inclusive[function] += count
    return own, inclusive, busy, idle


def profile(procs: Processes, settings: Settings, rate: int, out: Path, top: int) -> None:
    """
    sipleg on UDP at C{rate} cps under py-spy; print the top functions.
    """
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise BenchError(f"{py_spy} missing: {sys.executable} -m pip install py-spy")
    system = SYSTEMS["sipleg"]
    combo = Combo("sipleg", "udp")
    with running_pair(procs, system, "udp", settings.pairs) as rig:
        warm_up(procs, combo, rig, settings)
        spy: list[subprocess.Popen[bytes]] = []
        argv = [
            str(py_spy),
            "record",
            "--pid",
            str(rig.proxy.pid),
            "--format",
            "raw",
            "--rate",
            str(PROFILE_RATE),
            "--duration",
            str(int(settings.step_seconds)),
            "-o",
            str(out),
        ]
        step = run_step(
            procs,
            combo,
            rig,
            rate,
            settings,
            during=lambda: spy.append(procs.start("py-spy", argv, None)),
        )
        code, _ = procs.wait(spy[0], 30)
        if not out.exists():
            raise BenchError(f"py-spy (exit {code}) wrote nothing:\n{procs.log_tail('py-spy')}")
    print(STEP_HEADER)
    print(step_row(step))
    own, inclusive, busy, idle = aggregate_raw(out)
    print(
        f"\npy-spy at {PROFILE_RATE} Hz: {busy} busy samples ({idle} more in epoll_wait left out); "
        f"proxy CPU {step.proxy_cpu:.2f} s = user {step.proxy_cpu - step.proxy_sys:.2f} + system "
        f"{step.proxy_sys:.2f}; collapsed stacks in {out}\n"
    )
    print(f"| self % | total % | function (top {top} by self time) |\n|---:|---:|---|")
    for function, count in own.most_common(top):
        print(f"| {100 * count / busy:.1f} | {100 * inclusive[function] / busy:.1f} | `{function}` |")
    print(f"\n| total % | self % | function (top {top} by total time, below the reactor) |\n|---:|---:|---|")
    below = [(f, c) for f, c in inclusive.most_common() if c < 0.99 * busy]
    for function, count in below[:top]:
        print(f"| {100 * count / busy:.1f} | {100 * own[function] / busy:.1f} | `{function}` |")


# ------------------------------------------------------------------ main


def _csv(kind: Callable[[str], object]) -> Callable[[str], list[object]]:
    return lambda text: [kind(v) for v in text.split(",") if v]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems",
        type=_csv(str),
        default=list(SYSTEMS),
        help="comma-separated, from: " + ", ".join(SYSTEMS),
    )
    parser.add_argument("--transports", type=_csv(str), default=["udp", "tcp"])
    parser.add_argument(
        "--rates",
        type=_csv(int),
        default=None,
        help=f"calls/s per step (default {DEFAULT_RATES}, --quick {QUICK_RATES})",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=None, help="seconds of calls per step (default 8)"
    )
    parser.add_argument("--grace", type=int, default=None, help="seconds SIPp waits after a step (default 6)")
    parser.add_argument("--quick", action="store_true", help="2 rates, 2 s steps")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument(
        "--uac-sockets",
        choices=("1", "n"),
        default="1",
        help="SIPp UAC: one socket for all calls (1) or one per call (n, many source ports)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="SIPp UAC/UAS pairs at once, each its own sockets (flows), each at rate / N",
    )
    parser.add_argument("--reference", type=int, default=1600, help="rate for the us/msg summary column")
    parser.add_argument("--profile", action="store_true", help="py-spy on sipleg at --reference cps UDP")
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sipleg-profile.txt",
        help="collapsed stacks file (flamegraph.pl, speedscope)",
    )
    parser.add_argument("--top", type=int, default=15, help="functions listed by --profile")
    args = parser.parse_args(argv)
    for name in args.systems:
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}")
    for proto in args.transports:
        if proto not in ("udp", "tcp"):
            parser.error(f"unknown transport {proto!r}")
    if not 1 <= args.pairs <= 16:
        parser.error("--pairs: 1 to 16")
    if args.rates is None:
        args.rates = list(QUICK_RATES if args.quick else DEFAULT_RATES)
    if args.step_seconds is None:
        args.step_seconds = 2.0 if args.quick else 8.0
    if args.grace is None:
        args.grace = 4 if args.quick else 6
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    global UAC_SOCKETS
    UAC_SOCKETS = args.uac_sockets
    if not Path("/proc/net/udp").exists():
        print("needs Linux /proc", file=sys.stderr)
        return 2
    # SIGINT too: a background job of a non-interactive shell ignores it.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    settings = Settings(tuple(args.rates), args.step_seconds, args.grace, 50, args.pairs)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sipleg-load-") as workdir:
        procs = Processes(Path(workdir), args.pin)
        try:
            print(environment(args) + "\n", flush=True)
            if args.profile:
                profile(procs, settings, args.reference, args.profile_out, args.top)
                return 0
            print(STEP_HEADER, flush=True)
            combos = [
                run_combo(procs, SYSTEMS[name], proto, settings)
                for name in args.systems
                for proto in args.transports
                if proto in SYSTEMS[name].transports
            ]
            print("\n" + summary(combos, args.reference))
            ratios = floor_ratios(combos)
            if ratios:
                print("\n" + ratios)
            print(f"\n({time.monotonic() - started:.0f} s)")
            return 1 if any(combo.error for combo in combos) else 0
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
