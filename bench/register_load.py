"""
REGISTERs at 2,000/s into the registrar with SQLite persistence, and the
delay of the calls forwarded meanwhile (location-store issue, item 2).

For each rate of C{--rates}, a fresh proxy::

    twistd -n sipproxy --registrar --domain example.test \\
        --registrations WORKDIR/registrations.db --listen udp:127.0.0.1:P

(this worktree first on C{PYTHONPATH}), a fresh SIPp UAS
(C{tests/interop/scenarios/uas.xml}: 180 then 200) and two phases:

 1. calls alone: a SIPp UAC (C{bench/register_call.xml}) places
    C{--cps} calls/s to C{sip:service@127.0.0.1:UASPORT}, every packet
    sent to the proxy (C{-rsa}), for C{--seconds} - 2 s;
 2. the same calls while a second SIPp UAC (C{bench/register.xml})
    sends C{rate} REGISTERs/s for C{--seconds} s, one distinct user per
    REGISTER (C{-inf users.csv}, C{[field0]}: C{rate x --seconds} users,
    SEQUENTIAL), each expecting 200 (anything else, or nothing within
    C{--grace} s, fails it).  The calls start 1 s after the REGISTERs.

Measured: REGISTERs attempted / answered 200 / failed (SIPp's statistics
file and exit code), retransmissions, the rate SIPp reached, REGISTER ->
200 (SIPp's C{rtd}: its clock ticks every 4 ms here, so that is coarse);
INVITE -> 180 of every call (p50/p90/p99/max) from kernel timestamps of
the packets on C{lo} (an C{AF_PACKET} socket with a port filter; needs
root): end to end at the UAC's socket, and the part spent in the proxy
(INVITE in -> out plus 180 in -> out); the proxy's CPU (C{/proc/PID/stat}:
every thread, and per thread: the reactor is the main thread), its
busiest 0.5 s window, VmRSS and VmHWM; UDP datagrams dropped at the
proxy's socket (C{/proc/net/udp}) and host-wide (C{RcvbufErrors} of
C{/proc/net/snmp}); the database's size (file, WAL) at the end; and,
once the proxy has stopped, the bindings in the database (Python's
C{sqlite3}) against the users SIPp saw answered 200 (C{-trace_logs}).

A rate is sustained when every REGISTER was answered 200 at its first
transmission (no retransmission: each within SIPp's 500 ms T1), SIPp
reached 95% of the rate, and every user answered 200 is bound in the
database.  The exit status is 0 when every rate was sustained.

Why calls slow down: C{--profile} runs C{py-spy record --threads} on the
proxy during the REGISTERs (top functions per thread); C{--probe} runs
the proxy under C{bench/register_probe.py} (garbage collections, store
commits, bursts of the store's answers, reads of the socket with the
reactor thread's wall and CPU time) and says which slow calls overlapped
what.  Experiments, nothing in C{sipleg} changed: C{--writer-cpu 0} moves
the store's writer thread off the reactor's core; with C{--probe},
C{--no-debug-log} drops debug-level log events at the source and
C{--switch-interval} sets the proxy's GIL switch interval.

The proxy is pinned to CPU 1, the SIPp processes and this script (its
packet capture) to CPU 0, as in C{bench/load.py}.  Bounded: every SIPp
gives up C{--grace} s after its last call; every process started here
is killed at the end, also on an error or Ctrl-C.  Loopback only.  Run
by hand from the repository root (never in CI)::

    python3 bench/register_load.py                            # 2,000/s, 15 s, 50 calls/s
    python3 bench/register_load.py --rates 500,1000,1500,2000 # the curve
    python3 bench/register_load.py --profile                  # py-spy on the proxy meanwhile
    python3 bench/register_load.py --probe [--writer-cpu 0] [--no-debug-log]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from load import (
    HOST,
    REPO,
    SIPP_BUFFER,
    UAS_SCENARIO,
    BenchError,
    Processes,
    aggregate_raw,
    cpu_seconds,
    free_port,
    peak_rss_kib,
    read_stats,
    status_kib,
    udp_drops,
)

HERE = Path(__file__).resolve().parent
REGISTER_SCENARIO = HERE / "register.xml"
CALL_SCENARIO = HERE / "register_call.xml"
PROBE = HERE / "register_probe.py"
DOMAIN = "example.test"
#: Seconds the REGISTERs run before the calls of phase 2 start.
LEAD = 1.0
#: Seconds between two CPU samples (busiest window).
SAMPLE = 0.5
#: Calls before the first phase (caches filled, sockets warm).
WARMUP_CALLS = 50
#: Seconds the proxy has to stop on SIGTERM (its store finishes writing).
STOP_TIMEOUT = 30.0
#: A rate is sustained when SIPp reached this share of it.
REACHED = 0.95
#: py-spy samples per second in --profile.
PROFILE_RATE = 100
#: --probe: a call that spent longer than this in the proxy is slow (ms).
SLOW_CALL = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc


def thread_cpu(pid: int) -> dict[int, float]:
    """
    CPU seconds (user + system) of each live thread of C{pid}, by thread id.
    """
    times: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return times
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def snmp_udp() -> dict[str, int]:
    """
    The host's UDP counters (C{Udp:} lines of C{/proc/net/snmp}).
    """
    with open("/proc/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------- capture

# Classic BPF (linux/filter.h) for packets on lo seen as Ethernet frames:
# IPv4 UDP with a given port as source or destination.
_BPF_LD_B_ABS = 0x30
_BPF_LDX_B_MSH = 0xB1
_BPF_LD_H_IND = 0x48
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = 35
_SO_RCVBUFFORCE = 33
_ETH_P_IP = 0x0800


def _port_filter(ports: Sequence[int]) -> bytes:
    """
    A C{struct sock_fprog} body: accept UDP over IPv4 to or from C{ports}.
    """
    n = len(ports)
    program: list[tuple[int, int, int, int]] = [
        (_BPF_LD_B_ABS, 0, 0, 23),  # IP protocol
        (_BPF_JEQ_K, 0, 2 * n + 3, socket.IPPROTO_UDP),  # else drop
        (_BPF_LDX_B_MSH, 0, 0, 14),  # X = IP header length
        (_BPF_LD_H_IND, 0, 0, 14),  # UDP source port
    ]
    for i, port in enumerate(ports):
        program.append((_BPF_JEQ_K, 2 * n + 1 - i, 0, port))  # accept
    program.append((_BPF_LD_H_IND, 0, 0, 16))  # UDP destination port
    for i, port in enumerate(ports):
        program.append((_BPF_JEQ_K, n - i, 0, port))  # accept
    program += [(_BPF_RET_K, 0, 0, 0), (_BPF_RET_K, 0, 0, 0xFFFF)]
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


@dataclass(frozen=True)
class Packet:
    """
    One captured SIP datagram: kernel timestamp, ports, start line, Call-ID.
    """

    at: float
    src: int
    dst: int
    start: str
    call_id: str


_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class Capture:
    """
    The SIP datagrams to or from some ports on C{lo}, with the kernel's
    receive timestamps, read on a thread of their own.
    """

    def __init__(self, ports: Sequence[int]) -> None:
        program = _port_filter(ports)
        # struct sock_fprog: the instruction count and a pointer to them
        # (kept alive as long as the socket).
        self._program = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(self._program))
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_IP))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._sock.bind(("lo", _ETH_P_IP))
        self._sock.settimeout(0.2)
        self.packets: list[Packet] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self._sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    at = seconds + nanoseconds / 1e9
            if len(data) < 42 or data[23] != socket.IPPROTO_UDP:
                continue  # queued before the filter was attached
            udp = 14 + (data[14] & 0x0F) * 4
            src, dst = struct.unpack("!HH", data[udp : udp + 4])
            payload = data[udp + 8 :]
            start = payload.split(b"\r\n", 1)[0].decode("latin-1")
            match = _CALL_ID.search(payload)
            call_id = match.group(1).decode("latin-1") if match else ""
            self.packets.append(Packet(at, src, dst, start, call_id))

    def take(self) -> list[Packet]:
        """
        The packets captured so far, forgetting them.
        """
        time.sleep(0.3)  # what is still in the socket's queue
        packets, self.packets = self.packets, []
        return packets

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


@dataclass
class CallTimes:
    """
    Per call (first transmissions only): INVITE -> 180 at the UAC's socket
    and the part spent in the proxy, in milliseconds.
    """

    end_to_end: list[float] = field(default_factory=list)
    in_proxy: list[float] = field(default_factory=list)
    invite_retransmissions: int = 0
    incomplete: int = 0
    #: Per call: INVITE in, 180 out (epoch seconds), ms in the proxy.
    calls: list[tuple[float, float, float]] = field(default_factory=list)


def call_times(packets: list[Packet], uac: int, uas: int) -> CallTimes:
    """
    Pair the INVITEs and 180s of each Call-ID: UAC -> proxy, proxy ->
    UAS, UAS -> proxy, proxy -> UAC.
    """
    seen: dict[str, dict[str, float]] = {}
    times = CallTimes()
    for packet in sorted(packets, key=lambda p: p.at):
        if packet.start.startswith("INVITE "):
            leg = "invite_in" if packet.src == uac else "invite_out" if packet.dst == uas else ""
        elif packet.start.startswith("SIP/2.0 180"):
            leg = "ring_in" if packet.src == uas else "ring_out" if packet.dst == uac else ""
        else:
            continue
        if not leg:
            continue
        call = seen.setdefault(packet.call_id, {})
        if leg in call:
            times.invite_retransmissions += leg == "invite_in"
            continue
        call[leg] = packet.at
    for call in seen.values():
        if len(call) != 4:
            times.incomplete += 1
            continue
        in_proxy = 1e3 * ((call["invite_out"] - call["invite_in"]) + (call["ring_out"] - call["ring_in"]))
        times.end_to_end.append(1e3 * (call["ring_out"] - call["invite_in"]))
        times.in_proxy.append(in_proxy)
        times.calls.append((call["invite_in"], call["ring_out"], in_proxy))
    return times


def percentile(values: Sequence[float], share: float) -> float:
    """
    The nearest-rank percentile of C{values} (0.0 without values).
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def spread(values: Sequence[float]) -> str:
    if not values:
        return "no values"
    return (
        f"p50 {percentile(values, 0.5):.3f} / p90 {percentile(values, 0.9):.3f} / "
        f"p99 {percentile(values, 0.99):.3f} / max {max(values):.3f} ms (n={len(values)})"
    )


# ------------------------------------------------------------------- SIPp


def _sipp_common(port: int) -> list[str]:
    return [
        "-t", "u1", "-i", HOST, "-p", str(port), "-bind_local", "-nostdin",
        "-buff_size", str(SIPP_BUFFER),
    ]  # fmt: skip


def register_argv(
    port: int, proxy_port: int, users: Path, rate: int, count: int, grace: int, stats: Path
) -> list[str]:
    """
    A SIPp UAC sending C{count} REGISTERs at C{rate}/s, each for the next
    user of C{users}.
    """
    seconds = math.ceil(count / rate)
    return [
        "sipp", f"{HOST}:{proxy_port}", "-sf", str(REGISTER_SCENARIO),
        *_sipp_common(port),
        "-inf", str(users), "-key", "domain", DOMAIN,
        "-r", str(rate), "-m", str(count),
        # Never throttled by its open calls: a slow proxy shows as failures.
        "-l", str(count),
        "-timeout", f"{seconds + grace}s", "-recv_timeout", str(1000 * grace),
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1", "-trace_logs",
    ]  # fmt: skip


def call_argv(
    port: int, proxy_port: int, uas_port: int, rate: int, count: int, grace: int, stats: Path
) -> list[str]:
    """
    A SIPp UAC placing C{count} calls at C{rate}/s to the UAS through the
    proxy.
    """
    seconds = math.ceil(count / rate)
    return [
        "sipp", f"{HOST}:{uas_port}", "-sf", str(CALL_SCENARIO),
        *_sipp_common(port),
        "-rsa", f"{HOST}:{proxy_port}", "-key", "ruri", f"sip:service@{HOST}:{uas_port}",
        "-r", str(rate), "-m", str(count),
        "-timeout", f"{seconds + grace}s", "-recv_timeout", str(1000 * grace),
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "1",
    ]  # fmt: skip


def _int(row: dict[str, str], column: str) -> int:
    value = row.get(column, "").strip()
    return int(value) if value.isdigit() else 0


def _epoch(row: dict[str, str], column: str) -> float:
    return float(row[column].split("\t")[-1])


def rtt_values(workdir: Path, scenario: Path, pid: int, timer: str) -> list[float]:
    """
    SIPp's response times of C{timer} (C{-trace_rtt}), in milliseconds.
    """
    path = workdir / f"{scenario.stem}_{pid}_rtt.csv"
    values = []
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        parts = line.split(";")
        if len(parts) >= 3 and parts[2] == timer:
            values.append(float(parts[1]))
    return values


@dataclass
class SippResult:
    """
    What a SIPp UAC's statistics file says.
    """

    exit_code: int | None = None
    planned: int = 0
    attempted: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    unexpected: int = 0
    reached: float = 0.0
    cpu: float = 0.0
    rtd: list[float] = field(default_factory=list)


def sipp_result(stats: Path, code: int | None, planned: int, cpu: float) -> SippResult:
    rows = read_stats(stats)
    if not rows:
        raise BenchError(f"SIPp (exit {code}) wrote no statistics in {stats}")
    last = rows[-1]
    result = SippResult(code, planned, cpu=cpu)
    result.attempted = _int(last, "OutgoingCall(C)")
    result.successful = _int(last, "SuccessfulCall(C)")
    result.failed = _int(last, "FailedCall(C)")
    result.retransmissions = _int(last, "Retransmissions(C)")
    result.timeouts = _int(last, "FailedMaxUDPRetrans(C)") + _int(last, "FailedTimeoutOnRecv(C)")
    result.unexpected = _int(last, "FailedUnexpectedMessage(C)")
    # The rate reached while placing calls: over the periods before the
    # last one was placed.
    calls, seconds = 0, 0.0
    for row in rows[1:]:
        if _int(row, "OutgoingCall(C)") >= result.attempted:
            break
        calls += _int(row, "OutgoingCall(P)")
        seconds += _epoch(row, "CurrentTime") - _epoch(row, "LastResetTime")
    if seconds < 0.5:
        calls = result.attempted
        seconds = _epoch(last, "CurrentTime") - _epoch(last, "StartTime")
    result.reached = calls / seconds if seconds > 0 else 0.0
    return result


# ------------------------------------------------------------------ phases


@dataclass
class ProxyUse:
    """
    The proxy over one phase.

    @ivar threads: CPU seconds per thread ("reactor" is the main thread).
    @ivar peak: the highest share of a core over a L{SAMPLE} window.
    @ivar sipp_peak: the same for every SIPp process together.
    """

    wall: float = 0.0
    cpu: float = 0.0
    system: float = 0.0
    peak: float = 0.0
    sipp_peak: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)
    rss_kib: int = 0
    hwm_kib: int = 0
    socket_drops: int = 0
    host_rcvbuf_errors: int = 0


class Meter:
    """
    The proxy's CPU, memory and drops between L{start} and L{finish}.
    """

    def __init__(self, proxy: int, proxy_port: int) -> None:
        self.proxy = proxy
        self.port = proxy_port
        self.sipps: list[int] = []
        self.start()

    def start(self) -> None:
        self.use = ProxyUse()
        self._started = time.monotonic()
        self._cpu = cpu_seconds(self.proxy)
        self._threads = thread_cpu(self.proxy)
        self._drops = udp_drops([self.port]).get(self.port, 0)
        self._snmp = snmp_udp()
        self._last = (self._started, sum(self._cpu), self._sipp_cpu())

    def _sipp_cpu(self) -> float:
        return sum(sum(cpu_seconds(pid)) for pid in self.sipps)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last[0] < SAMPLE:
            return
        current = (now, sum(cpu_seconds(self.proxy)), self._sipp_cpu())
        elapsed = now - self._last[0]
        self.use.peak = max(self.use.peak, (current[1] - self._last[1]) / elapsed)
        self.use.sipp_peak = max(self.use.sipp_peak, (current[2] - self._last[2]) / elapsed)
        self._last = current

    def finish(self) -> ProxyUse:
        use = self.use
        use.wall = time.monotonic() - self._started
        after = cpu_seconds(self.proxy)
        use.cpu = sum(after) - sum(self._cpu)
        use.system = after[1] - self._cpu[1]
        for tid, seconds in thread_cpu(self.proxy).items():
            name = "reactor" if tid == self.proxy else f"thread {tid}"
            use.threads[name] = seconds - self._threads.get(tid, 0.0)
        use.rss_kib = status_kib(self.proxy, "VmRSS")
        use.hwm_kib = peak_rss_kib(self.proxy)
        use.socket_drops = udp_drops([self.port]).get(self.port, 0) - self._drops
        use.host_rcvbuf_errors = snmp_udp()["RcvbufErrors"] - self._snmp["RcvbufErrors"]
        return use


@dataclass
class RateResult:
    rate: int
    calls_alone: SippResult
    alone_times: CallTimes
    alone_use: ProxyUse
    registers: SippResult
    calls_during: SippResult
    during_times: CallTimes
    during_use: ProxyUse
    db_bytes: int = 0
    wal_bytes: int = 0
    db_bytes_after: int = 0
    wal_bytes_after: int = 0
    stop_seconds: float = 0.0
    bindings: int = 0
    bound_users: int = 0
    answered_users: int = 0
    answered_not_stored: int = 0
    stored_not_answered: int = 0
    profile: str = ""
    probe: str = ""

    @property
    def sustained(self) -> bool:
        """
        Every REGISTER answered 200 at its first transmission (none
        retransmitted: each answered within SIPp's 500 ms T1), at
        L{REACHED} of the rate or more, and every user answered 200 bound
        in the database.
        """
        r = self.registers
        return (
            r.exit_code == 0
            and r.failed == 0
            and r.retransmissions == 0
            and r.successful == r.planned
            and r.reached >= REACHED * self.rate
            and self.answered_not_stored == 0
        )


def proxy_argv(port: int, database: Path, workdir: Path, probe: bool) -> list[str]:
    """
    C{twistd sipproxy} with the registrar and its SQLite store; with
    C{probe}, under C{bench/register_probe.py}.
    """
    runner = [sys.executable, str(PROBE)] if probe else [str(Path(sys.executable).parent / "twistd")]
    return [
        *runner,
        "--pidfile=", "-n", "--logfile", str(workdir / "twistd.log"),
        "sipproxy", "--registrar", "--domain", DOMAIN,
        "--registrations", str(database), "--listen", f"udp:{HOST}:{port}",
    ]  # fmt: skip


def write_users(path: Path, count: int, prefix: str) -> None:
    """
    A SIPp injection file of C{count} distinct users, read in order.
    """
    with path.open("w") as f:
        f.write("SEQUENTIAL\n")
        for n in range(count):
            f.write(f"{prefix}{n};\n")


def run_rate(
    procs: Processes, args: argparse.Namespace, rate: int, capture: type[Capture] | None
) -> RateResult:
    """
    A fresh proxy and UAS; calls alone, then calls during C{rate}
    REGISTERs/s; the database checked once the proxy stopped.
    """
    workdir = procs.workdir / f"rate-{rate}"
    workdir.mkdir()
    database = workdir / "registrations.db"
    registers = rate * args.seconds
    users = workdir / "users.csv"
    write_users(users, registers, f"r{rate}u")
    call_count = args.cps * max(1, args.seconds - 2)
    uas_port = free_port(["udp"])
    uas = procs.start(f"uas-{rate}", ["sipp", "-sf", str(UAS_SCENARIO), *_sipp_common(uas_port)], 0)
    procs.wait_bound(f"uas-{rate}", uas, ["udp"], uas_port)
    proxy_port = free_port(["udp"])
    probe_out = workdir / "probe.json"
    os.environ["PROBE_OUT"] = str(probe_out)
    if args.no_debug_log:
        os.environ["PROBE_NO_DEBUG"] = "1"
    if args.switch_interval is not None:
        os.environ["PROBE_SWITCH_INTERVAL"] = str(args.switch_interval)
    proxy = procs.start(f"proxy-{rate}", proxy_argv(proxy_port, database, workdir, args.probe), 1)
    procs.wait_bound(f"proxy-{rate}", proxy, ["udp"], proxy_port)
    if args.writer_cpu is not None:
        # Every thread but the reactor's: the store's writer.
        for tid in thread_cpu(proxy.pid):
            if tid != proxy.pid:
                os.sched_setaffinity(tid, {args.writer_cpu})
    meter = Meter(proxy.pid, proxy_port)
    meter.sipps.append(uas.pid)
    ports = (proxy_port, uas_port)
    sniffer: Capture | None = None
    try:
        _calls(procs, meter, f"warmup-{rate}", ports, free_port(["udp"]), args, WARMUP_CALLS)
        time.sleep(1)

        # Phase 1: calls alone.
        uac_port = free_port(["udp"])
        if capture is not None:
            sniffer = capture([uac_port, uas_port])
        meter.start()
        alone, alone_times = _calls(procs, meter, f"calls-alone-{rate}", ports, uac_port, args, call_count)
        alone_use = meter.finish()
        if sniffer is not None:
            alone_times = call_times(sniffer.take(), uac_port, uas_port)
            sniffer.close()
            sniffer = None
        time.sleep(1)

        # Phase 2: the same calls during the REGISTERs.
        reg_port = free_port(["udp"])
        reg_stats = workdir / "register.csv"
        uac_port = free_port(["udp"])
        while uac_port == reg_port:
            uac_port = free_port(["udp"])
        if capture is not None:
            sniffer = capture([uac_port, uas_port])
        meter.start()
        window_start = time.time()
        reg = procs.start(
            f"register-{rate}",
            register_argv(reg_port, proxy_port, users, rate, registers, args.grace, reg_stats),
            0,
        )
        meter.sipps.append(reg.pid)
        spy = None
        if args.profile:
            spy = _start_profile(procs, proxy.pid, workdir, args.seconds)
        deadline = time.monotonic() + LEAD
        while time.monotonic() < deadline:
            meter.tick()
            time.sleep(0.02)
        during, during_times = _calls(procs, meter, f"calls-during-{rate}", ports, uac_port, args, call_count)
        code, cpu = procs.wait(reg, args.seconds + args.grace + 10, meter.tick)
        during_use = meter.finish()
        window = (window_start, time.time())
        db_bytes = file_size(database)
        wal_bytes = file_size(Path(f"{database}-wal"))
        if sniffer is not None:
            during_times = call_times(sniffer.take(), uac_port, uas_port)
            sniffer.close()
            sniffer = None
        register_result = sipp_result(reg_stats, code, registers, cpu)
        register_result.rtd = rtt_values(procs.workdir, REGISTER_SCENARIO, reg.pid, "reg")
        answered = _answered(procs.workdir, reg.pid)
        profile = ""
        if spy is not None:
            procs.wait(spy, 30)
            profile = _profile_table(workdir / "profile.txt", args.top)

        # The proxy stops (its store finishes writing), then the database.
        started = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        try:
            proxy.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"the proxy did not stop within {STOP_TIMEOUT} s") from e
        stop_seconds = time.monotonic() - started
        procs.stop(proxy)
        result = RateResult(
            rate,
            alone,
            alone_times,
            alone_use,
            register_result,
            during,
            during_times,
            during_use,
            db_bytes,
            wal_bytes,
            file_size(database),
            file_size(Path(f"{database}-wal")),
            stop_seconds,
            profile=profile,
        )
        _check_database(result, database, answered)
        if args.probe:
            result.probe = probe_report(probe_out, window, during_times, alone_times)
        return result
    finally:
        if sniffer is not None:
            sniffer.close()
        procs.stop(proxy)
        procs.stop(uas)


def _calls(
    procs: Processes,
    meter: Meter,
    name: str,
    ports: tuple[int, int],
    uac_port: int,
    args: argparse.Namespace,
    count: int,
) -> tuple[SippResult, CallTimes]:
    stats = procs.workdir / f"{name}.csv"
    argv = call_argv(uac_port, ports[0], ports[1], args.cps, count, args.grace, stats)
    uac = procs.start(name, argv, 0)
    meter.sipps.append(uac.pid)
    code, cpu = procs.wait(uac, math.ceil(count / args.cps) + args.grace + 10, meter.tick)
    meter.sipps.remove(uac.pid)
    result = sipp_result(stats, code, count, cpu)
    result.rtd = rtt_values(procs.workdir, CALL_SCENARIO, uac.pid, "ring")
    return result, CallTimes()


def _answered(workdir: Path, pid: int) -> set[str]:
    """
    The users SIPp saw answered 200 (its C{-trace_logs} file).
    """
    path = workdir / f"{REGISTER_SCENARIO.stem}_{pid}_logs.log"
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def _check_database(result: RateResult, database: Path, answered: set[str]) -> None:
    """
    Count the bindings and compare the AORs with the users answered 200.
    """
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        result.bindings = db.execute("SELECT COUNT(*) FROM bindings").fetchone()[0]
        aors = {aor for (aor,) in db.execute("SELECT DISTINCT aor FROM bindings")}
    finally:
        db.close()
    expected = {f"sip:{user}@{DOMAIN}" for user in answered}
    result.bound_users = len(aors)
    result.answered_users = len(expected)
    result.answered_not_stored = len(expected - aors)
    result.stored_not_answered = len(aors - expected)


def _start_profile(procs: Processes, pid: int, workdir: Path, seconds: int) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise BenchError(f"{py_spy} missing")
    argv = [
        str(py_spy), "record", "--pid", str(pid), "--threads", "--format", "raw",
        "--rate", str(PROFILE_RATE), "--duration", str(seconds), "-o", str(workdir / "profile.txt"),
    ]  # fmt: skip
    return procs.start("py-spy", argv, 0)


def _profile_table(path: Path, top: int) -> str:
    """
    Per thread of the proxy (py-spy C{--threads}: each stack starts with
    C{thread (TID): NAME}), its busy samples and its functions by self and
    by total time, from the collapsed stacks in C{path}.
    """
    if not path.exists():
        return "(py-spy wrote nothing)"
    by_thread: dict[str, list[str]] = {}
    for line in path.read_text("utf-8", "replace").splitlines():
        thread, _, rest = line.partition(";")
        by_thread.setdefault(thread, []).append(rest)
    lines = [f"py-spy at {PROFILE_RATE} Hz during the REGISTERs; collapsed stacks in {path}"]
    for thread, stacks in sorted(by_thread.items(), key=lambda item: -len(item[1])):
        part = path.with_name(f"{path.stem}-{len(lines)}.txt")
        part.write_text("\n".join(stacks) + "\n")
        own, inclusive, busy, idle = aggregate_raw(part)
        if not busy:
            continue
        lines += [
            "",
            f"{thread}: {busy} busy samples ({busy / PROFILE_RATE:.1f} s; {idle} more in epoll_wait)",
            "",
            f"| self % | total % | function (top {top} by self time) |",
            "|---:|---:|---|",
        ]
        for function, count in own.most_common(top):
            lines.append(
                f"| {100 * count / busy:.1f} | {100 * inclusive[function] / busy:.1f} | `{function}` |"
            )
        lines += [
            "",
            f"| total % | function (top {top} by total time, below the reactor loop) |",
            "|---:|---|",
        ]
        below = [(f, c) for f, c in inclusive.most_common() if c < 0.95 * busy]
        for function, count in below[:top]:
            lines.append(f"| {100 * count / busy:.1f} | `{function}` |")
    return "\n".join(lines)


def _overlaps(start: float, end: float, spans: list[tuple[float, float]]) -> bool:
    return any(a < end and b > start for a, b in spans)


def probe_report(path: Path, window: tuple[float, float], during: CallTimes, alone: CallTimes) -> str:
    """
    What C{bench/register_probe.py} saw during the REGISTERs, and which
    slow calls (more than L{SLOW_CALL} ms in the proxy) overlapped a burst
    of the store's answers, a long read of the proxy's socket or a
    generation-2 collection on the reactor thread.
    """
    try:
        events = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"(no probe data: {e})"
    start, end = window
    inside = {kind: [e for e in rows if start <= e[0] <= end] for kind, rows in events.items()}
    commits, bursts, reads = inside["commit"], inside["burst"], inside["read"]
    collections = [e for e in inside["gc"] if e[3] == "MainThread"]
    wall = end - start
    busy_wall = sum(r[2] for r in reads) + sum(b[2] for b in bursts)
    busy_cpu = sum(r[3] for r in reads) + sum(b[3] for b in bursts)

    def ms(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 0.5):.2f} / p99 {percentile(values, 0.99):.2f} / "
            f"max {max(values, default=0):.2f} ms"
        )

    def count(values: list[int]) -> str:
        top = max(values, default=0)
        return f"p50 {percentile(values, 0.5):.0f} / p99 {percentile(values, 0.99):.0f} / max {top}"

    lines = [
        f"Probe over the {wall:.1f} s of REGISTERs:",
        f"- store commits: {len(commits)}, changes per commit {count([c[1] for c in commits])}; "
        f"commit (fsync included) {ms([1e3 * c[2] for c in commits])}; "
        f"the writer was committing {100 * sum(c[2] for c in commits) / wall:.0f}% of the time",
        f"- reactor turns running the store's answers (callFromThread): {len(bursts)}, answers per turn "
        f"{count([b[1] for b in bursts])}; turn {ms([1e3 * b[2] for b in bursts])}",
        f"- reads of the proxy's socket: {len(reads)}, datagrams per read {count([r[1] for r in reads])}; "
        f"read {ms([1e3 * r[2] for r in reads])}",
        f"- reactor thread in reads and answer turns: {busy_wall:.2f} s of wall time, {busy_cpu:.2f} s of "
        "its CPU (the rest: ready but not running, for the GIL or the CPU)",
    ]
    for generation in (0, 1, 2):
        pauses = [1e3 * g[2] for g in collections if g[1] == generation]
        if pauses:
            lines.append(f"- GC generation {generation} on the reactor thread: {len(pauses)}, {ms(pauses)}")
    long_bursts = [(b[0], b[0] + b[2]) for b in bursts if b[2] * 1e3 >= 1.0]
    long_reads = [(r[0], r[0] + r[2]) for r in reads if r[2] * 1e3 >= 10.0]
    full = [(g[0] - g[2], g[0]) for g in collections if g[1] == 2]
    slow = [c for c in during.calls if c[2] > SLOW_CALL]
    lines += [
        f"- calls during: {len(slow)} of {len(during.calls)} over {SLOW_CALL:g} ms in the proxy; of them "
        f"{sum(_overlaps(c[0], c[1], long_bursts) for c in slow)} overlap a reactor turn of >= 1 ms "
        f"running the store's answers, {sum(_overlaps(c[0], c[1], long_reads) for c in slow)} a socket "
        f"read of >= 10 ms, {sum(_overlaps(c[0], c[1], full) for c in slow)} a generation-2 GC",
        f"- calls alone: {sum(c[2] > SLOW_CALL for c in alone.calls)} of {len(alone.calls)} over "
        f"{SLOW_CALL:g} ms in the proxy",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ report


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _use_line(use: ProxyUse) -> str:
    threads = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in sorted(use.threads.items()) if seconds)
    return (
        f"proxy CPU {use.cpu:.2f} s in {use.wall:.1f} s ({100 * use.cpu / use.wall:.0f}% of a core, "
        f"busiest {SAMPLE:g} s: {100 * use.peak:.0f}%; system {use.system:.2f} s; {threads}); "
        f"SIPp busiest {100 * use.sipp_peak:.0f}%; VmRSS {_mib(use.rss_kib)}, VmHWM {_mib(use.hwm_kib)}; "
        f"UDP drops at the proxy's socket {use.socket_drops}, host RcvbufErrors +{use.host_rcvbuf_errors}"
    )


def _calls_line(result: SippResult, times: CallTimes) -> str:
    return (
        f"{result.successful}/{result.planned} calls ok, {result.failed} failed, "
        f"{result.retransmissions} retransmissions (exit {result.exit_code})\n"
        f"    INVITE->180 end to end: {spread(times.end_to_end)}\n"
        f"    of which in the proxy:  {spread(times.in_proxy)}\n"
        f"    SIPp rtd (4 ms clock):  p50 {percentile(result.rtd, 0.5):.0f} / "
        f"p99 {percentile(result.rtd, 0.99):.0f} ms (n={len(result.rtd)})"
        + (f"; {times.incomplete} calls not paired in the capture" if times.incomplete else "")
    )


def report(result: RateResult) -> str:
    r = result.registers
    reg_cpu = result.during_use.cpu
    calls_share = (
        result.alone_use.cpu * result.calls_during.successful / result.calls_alone.successful
        if result.calls_alone.successful
        else 0.0
    )
    per_register = (reg_cpu - calls_share) * 1e6 / r.successful if r.successful else 0.0
    lines = [
        f"## {result.rate} REGISTERs/s: {'SUSTAINED' if result.sustained else 'NOT sustained'}",
        "",
        f"REGISTERs: {r.successful}/{r.planned} answered 200, {r.failed} failed "
        f"({r.timeouts} timed out, {r.unexpected} other answer), {r.retransmissions} retransmissions, "
        f"reached {r.reached:.0f}/s, SIPp exit {r.exit_code}; REGISTER->200 (SIPp, 4 ms clock): "
        f"p50 {percentile(r.rtd, 0.5):.0f} / p99 {percentile(r.rtd, 0.99):.0f} / "
        f"max {max(r.rtd, default=0):.0f} ms",
        f"proxy CPU per REGISTER ~{per_register:.0f} us (phase CPU minus the calls' share of phase 1)",
        "",
        "Calls alone: " + _calls_line(result.calls_alone, result.alone_times),
        "  " + _use_line(result.alone_use),
        "",
        "Calls during the REGISTERs: " + _calls_line(result.calls_during, result.during_times),
        "  " + _use_line(result.during_use),
        "",
        f"Database: {result.db_bytes / 1e6:.2f} MB + WAL {result.wal_bytes / 1e6:.2f} MB at the end of the "
        f"REGISTERs; after the proxy stopped ({result.stop_seconds:.1f} s): "
        f"{result.db_bytes_after / 1e6:.2f} MB + WAL {result.wal_bytes_after / 1e6:.2f} MB",
        f"Bindings: {result.bindings} rows, {result.bound_users} distinct AORs; users answered 200: "
        f"{result.answered_users}; answered but not stored: {result.answered_not_stored}; "
        f"stored but no 200 seen: {result.stored_not_answered}",
    ]
    if result.profile:
        lines += ["", result.profile]
    if result.probe:
        lines += ["", result.probe]
    return "\n".join(lines)


def summary(results: list[RateResult]) -> str:
    lines = [
        "| REGISTER/s | ok / sent | failed | retrans | reached/s | REG->200 p50/p99 ms "
        "| INVITE->180 p50/p99 ms alone | during | in proxy alone | during "
        "| proxy core % avg/peak | bindings | DB+WAL MB |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---|---|---:|---:|",
    ]
    for x in results:
        r, a, d = x.registers, x.alone_times, x.during_times
        use = x.during_use
        lines.append(
            f"| {x.rate} | {r.successful}/{r.planned} | {r.failed} | {r.retransmissions} | {r.reached:.0f} "
            f"| {percentile(r.rtd, 0.5):.0f}/{percentile(r.rtd, 0.99):.0f} "
            f"| {percentile(a.end_to_end, 0.5):.3f}/{percentile(a.end_to_end, 0.99):.3f} "
            f"| {percentile(d.end_to_end, 0.5):.3f}/{percentile(d.end_to_end, 0.99):.3f} "
            f"| {percentile(a.in_proxy, 0.5):.3f}/{percentile(a.in_proxy, 0.99):.3f} "
            f"| {percentile(d.in_proxy, 0.5):.3f}/{percentile(d.in_proxy, 0.99):.3f} "
            f"| {100 * use.cpu / use.wall:.0f}/{100 * use.peak:.0f} | {x.bindings} "
            f"| {(x.db_bytes + x.wal_bytes) / 1e6:.1f} |"
        )
    return "\n".join(lines)


# -------------------------------------------------------------------- main


def _csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=_csv_ints, default=[2000], help="REGISTERs/s, one run each")
    parser.add_argument("--seconds", type=int, default=15, help="seconds of REGISTERs per run")
    parser.add_argument("--cps", type=int, default=50, help="calls/s through the proxy meanwhile")
    parser.add_argument("--grace", type=int, default=10, help="seconds SIPp waits for an answer")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy record on the proxy during the REGISTERs"
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="run the proxy under bench/register_probe.py: GC pauses, commits, answer bursts",
    )
    parser.add_argument(
        "--no-debug-log",
        action="store_true",
        help="with --probe: debug-level log events dropped at the source (twistd logs every level)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="with --probe: the proxy's sys.setswitchinterval, seconds (CPython's default 0.005)",
    )
    parser.add_argument(
        "--writer-cpu",
        type=int,
        default=None,
        help="pin the proxy's threads but the reactor (the store's writer) to this CPU",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, stats, database)")
    args = parser.parse_args(argv)
    if not args.rates or any(not 1 <= r <= 20000 for r in args.rates):
        parser.error("--rates: 1 to 20000 each")
    if not 3 <= args.seconds <= 120:
        parser.error("--seconds: 3 to 120")
    if not 1 <= args.cps <= 1000:
        parser.error("--cps: 1 to 1000")
    if (args.no_debug_log or args.switch_interval is not None) and not args.probe:
        parser.error(
            "--no-debug-log and --switch-interval need --probe (bench/register_probe.py runs the proxy)"
        )
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.pin:
        # The capture thread stays off the proxy's core.
        os.sched_setaffinity(0, {0})
    capture: type[Capture] | None = Capture
    try:
        Capture([1]).close()
    except OSError as e:
        print(f"no packet capture ({e}): SIPp's 4 ms response times only", file=sys.stderr)
        capture = None
    workdir = Path(tempfile.mkdtemp(prefix="sipleg-register-load-"))
    procs = Processes(workdir, args.pin)
    print(
        f"worktree {REPO}; work directory {workdir}; {os.cpu_count()} CPUs; "
        f"{'proxy on CPU 1, SIPp on CPU 0' if args.pin else 'no pinning'}\n",
        flush=True,
    )
    results: list[RateResult] = []
    try:
        for rate in args.rates:
            result = run_rate(procs, args, rate, capture)
            results.append(result)
            print(report(result) + "\n", flush=True)
        print(summary(results))
        return 0 if all(r.sustained for r in results) else 1
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
