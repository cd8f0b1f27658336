"""
The transaction-stateful proxy against the stateless one, in-process and
without sockets (stateful issue, items 7 and 5).

C{cpu} (item 7): the SIPp call of C{bench/forward.py} (INVITE, 180, 200,
ACK, BYE, 200), each call with its own Call-ID and branches, through a
real L{StatelessProxy} and a real L{StatefulProxy} on in-memory socket
pools, in the same process, runs interleaved.  The UAS's responses are
made from the request the proxy forwarded (its Via and Record-Route lines
copied), so they carry the branch of the proxy's client transaction.  The
stateful proxy also answers C{100 Trying} upstream and keeps its
transactions.  Its clock (a C{task.Clock}) advances 64*T1 + 1 s after
every call, so the call's timers (the BYE's Timer J, ...) run inside the
measured loop and none piles up; with C{--rate R} it advances 1/R s per
call instead, after 2*64*T1 s of warm-up calls, so as many transactions
are live as at R calls/s (on a clock with the reactor's heap: the sorted
list of C{task.Clock} is quadratic there).  Reports CPU microseconds per
forwarded message (6 per call for both; the 100 Trying and the timers
are the stateful proxy's cost), the ratio, and the garbage collector's
share (and, with C{--rate}, the VmRSS growth and the live transactions
and branches).  C{--by-step}: the microseconds of each message;
C{--profile}: cProfile, the stateful run's top functions and what it
spends more than the stateless one, function by function.

C{memory} (item 5): N INVITEs that nobody answers (or N BYEs answered
200, C{--kind bye}: the completed transactions waiting for Timer J that a
proxy under a steady load mostly holds) become N live transactions; their
memory per transaction (tracemalloc, by sipleg function, and VmRSS in a
pass without tracemalloc), the objects they add to the garbage
collector, then the clock runs (T1/2 steps, 200 s: past Timers B, G, H,
J, K and C) until C{proxy.transactions} is 0, and what is left.

    python bench/stateful.py cpu [--calls 3000] [--repeat 5] [--by-step | --profile]
                                 [--rate 1600] [--only stateful] [--heap-clock]
    python bench/stateful.py memory [--transactions 10000] [--kind invite|bye]
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import functools
import gc
import heapq
import os
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import forward  # noqa: E402
from twisted.internet.base import DelayedCall  # noqa: E402
from twisted.internet.interfaces import IDelayedCall  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from sipleg.address import Address  # noqa: E402
from sipleg.dispatcher import Dispatcher  # noqa: E402
from sipleg.leg import Leg  # noqa: E402
from sipleg.proxy import StatelessProxy  # noqa: E402
from sipleg.stateful import StatefulProxy, TransactionTimers  # noqa: E402
from sipleg.transport.memory import MemorySocketPool  # noqa: E402

UAC, UAS = forward.UAC, forward.UAS
TIMERS = TransactionTimers()
#: After every call: past Timer J (64*T1), so the BYE's transaction ends.
ADVANCE = 64 * TIMERS.t1 + 1


# -- the calls ------------------------------------------------------------------


def personal(message: bytes, call: str) -> bytes:
    """
    C{forward.py}'s message with the Call-ID and branches of call C{call}.
    """
    return message.replace(b"z9hG4bK-1-", f"z9hG4bK-{call}-".encode()).replace(
        b"Call-ID: 1-1234@", f"Call-ID: {call}-1234@".encode()
    )


@dataclass(frozen=True)
class Call:
    """
    One call's requests, and what its responses have after their Via and
    Record-Route lines (L{answer} puts in those of the forwarded request).
    """

    invite: bytes
    ack: bytes
    bye: bytes
    ringing: bytes
    ok: bytes
    bye_ok: bytes


def tail(request: bytes, extra: str = "") -> bytes:
    """
    What follows the Via and Record-Route lines in the UAS's response to
    C{request}: From, To with a tag, Call-ID, CSeq, C{extra}, no body (as
    C{forward.response}).
    """
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    keep = [
        line + (";tag=2" if line.startswith("To:") else "")
        for line in head
        if line.split(":", 1)[0] in ("From", "To", "Call-ID", "CSeq")
    ]
    return ("\r\n".join([*keep, *([extra] if extra else []), "Content-Length: 0"]) + "\r\n\r\n").encode()


def make_call(call: str) -> Call:
    invite = personal(forward.INVITE, call)
    bye = personal(forward.in_dialog("BYE", 2), call)
    return Call(
        invite=invite,
        ack=personal(forward.in_dialog("ACK", 1), call),
        bye=bye,
        ringing=tail(invite),
        ok=tail(invite, "Contact: <sip:service@127.0.0.1:5062>"),
        bye_ok=tail(bye),
    )


def answer(status: bytes, forwarded: bytes, rest: bytes) -> bytes:
    """
    The UAS's response to C{forwarded}: the status line, the forwarded
    request's lines from the first Via to From (its Vias and Record-Route:
    the proxy's branch comes back), and C{rest}.
    """
    start = forwarded.index(b"\r\n") + 2
    return status + forwarded[start : forwarded.index(b"\r\nFrom:", start) + 2] + rest


# -- the proxies ------------------------------------------------------------------


#: The proxies compared: the stateless one and the stateful one, as they
#: are in sipleg/.
PROXIES: dict[str, type[StatelessProxy]] = {
    "stateless": StatelessProxy,
    "stateful": StatefulProxy,
}


@dataclass
class Bench:
    """
    A one-leg proxy on 127.0.0.1:5060 with an in-memory socket pool, and
    (stateful) the clock it runs on, advanced C{step} seconds after every
    call.
    """

    name: str
    leg: Leg
    pool: MemorySocketPool
    proxy: StatelessProxy
    clock: Clock | None
    step: float = ADVANCE

    def call(self, call: Call) -> None:
        """
        One call through the proxy, answered as the UAS would.
        """
        receive = self.leg._pool_received
        sent = self.pool.sent
        receive(call.invite, UAC, None)
        out = sent[-1][0]
        receive(answer(b"SIP/2.0 180 Ringing\r\n", out, call.ringing), UAS, None)
        receive(answer(b"SIP/2.0 200 OK\r\n", out, call.ok), UAS, None)
        receive(call.ack, UAC, None)
        receive(call.bye, UAC, None)
        receive(answer(b"SIP/2.0 200 OK\r\n", sent[-1][0], call.bye_ok), UAS, None)
        if self.clock is not None:
            self.clock.advance(self.step)
        sent.clear()

    def timed_call(self, call: Call, totals: list[int]) -> None:
        """
        L{call}, adding the wall-clock nanoseconds of each step to
        C{totals} (L{STEPS}); the responses are made outside the timing.
        """
        receive = self.leg._pool_received
        sent = self.pool.sent
        clock = perf_counter_ns
        start = clock()
        receive(call.invite, UAC, None)
        totals[0] += clock() - start
        out = sent[-1][0]
        ringing = answer(b"SIP/2.0 180 Ringing\r\n", out, call.ringing)
        ok = answer(b"SIP/2.0 200 OK\r\n", out, call.ok)
        for index, data, source in ((1, ringing, UAS), (2, ok, UAS), (3, call.ack, UAC), (4, call.bye, UAC)):
            start = clock()
            receive(data, source, None)
            totals[index] += clock() - start
        bye_ok = answer(b"SIP/2.0 200 OK\r\n", sent[-1][0], call.bye_ok)
        start = clock()
        receive(bye_ok, UAS, None)
        totals[5] += clock() - start
        if self.clock is not None:
            start = clock()
            self.clock.advance(self.step)
            totals[6] += clock() - start
        sent.clear()


#: The steps of L{Bench.timed_call}.
STEPS = ("INVITE", "180", "200 (INVITE)", "ACK", "BYE", "200 (BYE)", "clock")


def build(name: str, clock: Clock | None = None, timers: TransactionTimers = TIMERS) -> Bench:
    pool = MemorySocketPool(Address("127.0.0.1", 5060))
    leg = Leg(socketpool=pool)
    kind = PROXIES[name]
    if issubclass(kind, StatefulProxy):
        clock = clock if clock is not None else Clock()
        return Bench(name, leg, pool, kind(Dispatcher([leg]), clock=clock, timers=timers), clock)
    return Bench(name, leg, pool, kind(Dispatcher([leg])), None)


def check(bench: Bench) -> None:
    """
    One call, step by step: every message forwarded to the right side,
    responses built as C{forward.response} builds them, and (stateful)
    the live transactions and branches at each step as RFC 3261 §17 has
    them over UDP: the INVITE's transaction and branch end at its 2xx
    (§17.2.1, §17.1.1.2), the 2xx's ACK goes on with no transaction, the
    BYE's transaction stays for Timer J (64*T1, §17.2.2) and its branch
    for Timer K (T4, §17.1.2.2); then, the clock running, nothing more is
    sent and everything ends on time.
    """
    call = make_call("check")
    receive, sent = bench.leg._pool_received, bench.pool.sent
    stateful = bench.clock is not None
    proxy: Any = bench.proxy

    def step(data: bytes, source: Address, to: list[Address], live: int, branches: int) -> bytes:
        sent.clear()
        receive(data, source, None)
        assert [dst for _, dst in sent] == to, (data[:20], sent)
        if stateful:
            seen = (proxy.transactions, proxy.branches)
            assert seen == (live, branches), (data[:20], seen, (live, branches))
        return sent[-1][0]

    trying = [UAC] if stateful else []
    out = step(call.invite, UAC, [*trying, UAS], 1, 1)
    ringing = answer(b"SIP/2.0 180 Ringing\r\n", out, call.ringing)
    assert ringing == forward.response(out, 180, "Ringing"), ringing
    ok = answer(b"SIP/2.0 200 OK\r\n", out, call.ok)
    assert ok == forward.response(out, 200, "OK", "Contact: <sip:service@127.0.0.1:5062>"), ok
    step(ringing, UAS, [UAC], 1, 1)
    step(ok, UAS, [UAC], 0, 0)
    step(call.ack, UAC, [UAS], 0, 0)
    out = step(call.bye, UAC, [UAS], 1, 1)
    bye_ok = answer(b"SIP/2.0 200 OK\r\n", out, call.bye_ok)
    assert bye_ok == forward.response(out, 200, "OK"), bye_ok
    step(bye_ok, UAS, [UAC], 1, 1)
    sent.clear()
    if not stateful:
        return
    # The clock runs (T1/2 steps): nothing is sent; when does each end?
    assert bench.clock is not None
    later: list[bytes] = []
    elapsed = 0.0
    ended: dict[str, float] = {}
    while bench.clock.getDelayedCalls():
        bench.clock.advance(TIMERS.t1 / 2)
        elapsed += TIMERS.t1 / 2
        later += [data.split(b"\r\n", 1)[0] for data, _ in sent]
        sent.clear()
        if not proxy.branches:
            ended.setdefault("branch", elapsed)
        if not proxy.transactions:
            ended.setdefault("transaction", elapsed)
    assert not later, later
    assert proxy.transactions == 0 and proxy.branches == 0 and not proxy._merged
    assert TIMERS.t4 <= ended["branch"] < TIMERS.t4 + TIMERS.t1, ended
    assert 64 * TIMERS.t1 <= ended["transaction"] < 65 * TIMERS.t1, ended


# -- item 7: CPU --------------------------------------------------------------------


class HeapClock(Clock):
    """
    A L{Clock} whose calls are a heap, with cancelled calls skipped when
    they come up, as in the reactor (C{ReactorBase.runUntilCurrent}):
    O(log n) per call instead of C{Clock}'s sort of every call.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cancellations = 0

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        call = DelayedCall(
            self.rightNow + delay, callable, args, kw, self._cancelled, self._sooner, self.seconds
        )
        heapq.heappush(self.calls, call)
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        self._cancellations += 1

    def _sooner(self, call: DelayedCall) -> None:
        heapq.heapify(self.calls)

    def getDelayedCalls(self) -> list[DelayedCall]:
        return [call for call in self.calls if not call.cancelled]

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        calls = self.calls
        while calls and calls[0].time <= self.rightNow:
            call = heapq.heappop(calls)
            if call.cancelled:
                self._cancellations -= 1
                continue
            if call.delayed_time > 0.0:
                call.activate_delay()
                heapq.heappush(calls, call)
                continue
            call.called = 1
            call.func(*call.args, **call.kw)
        if self._cancellations > 50 and self._cancellations > len(calls) >> 1:
            self._cancellations = 0
            self.calls = [call for call in calls if not call.cancelled]
            heapq.heapify(self.calls)


class GcWatch:
    """
    The time the cyclic garbage collector takes while it is installed
    (C{with}), in all and in its full (generation 2) collections.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self.longest = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = perf_counter()
            return
        pause = perf_counter() - self._start
        self.seconds += pause
        if info["generation"] == 2:
            self.full += 1
            self.longest = max(self.longest, pause)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def calls_for(prefix: str, count: int) -> list[Call]:
    return [make_call(f"{prefix}{n}") for n in range(count)]


def run(bench: Bench, calls: list[Call]) -> float:
    """
    Push C{calls} through; return CPU seconds.
    """
    one = bench.call
    start = time.process_time()
    for call in calls:
        one(call)
    return time.process_time() - start


def driver(calls: list[Call]) -> float:
    """
    CPU seconds of this bench's own work in a run (the three responses
    put together from the forwarded requests).
    """
    invite_out = personal(forward.INVITE, "0")
    bye_out = personal(forward.in_dialog("BYE", 2), "0")
    start = time.process_time()
    for call in calls:
        answer(b"SIP/2.0 180 Ringing\r\n", invite_out, call.ringing)
        answer(b"SIP/2.0 200 OK\r\n", invite_out, call.ok)
        answer(b"SIP/2.0 200 OK\r\n", bye_out, call.bye_ok)
    return time.process_time() - start


Profile = dict[tuple[str, int, str], tuple[int, float]]


def profile(bench: Bench, calls: list[Call], top: int) -> Profile:
    """
    cProfile one run, print the C{top} functions by own time; return
    {function: (calls, own seconds)}.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    run(bench, calls)
    profiler.disable()
    stats = pstats.Stats(profiler)
    if top:
        print(f"--- {bench.name}: top {top} by own time ---")
        stats.sort_stats("tottime").print_stats(top)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return {func: (nc, tt) for func, (_, nc, tt, _, _) in raw.items()}


def where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{name} ({short}:{line})" if line else name


def difference(base: Profile, other: Profile, calls: int, title: str, top: int = 25) -> None:
    """
    Print what C{other} spends more than C{base}, per call, by function.
    """
    print(f"--- {title}: own time per call, top {top} ---")
    print(f"{'us/call':>8} {'calls/call':>10}  function")
    rows = []
    for func in set(base) | set(other):
        nb, tb = base.get(func, (0, 0.0))
        na, ta = other.get(func, (0, 0.0))
        rows.append(((ta - tb) / calls * 1e6, (na - nb) / calls, func))
    rows.sort(key=lambda row: -row[0])
    for extra, count, func in rows[:top]:
        print(f"{extra:8.2f} {count:10.2f}  {where(func)}")
    print(f"{sum(row[0] for row in rows):8.2f} {'':>10}  in all")


def by_step(benches: list[Bench], calls: int, repeat: int) -> None:
    """
    Print the wall-clock microseconds of each step of a call, per proxy
    (best of C{repeat} runs of C{calls} calls, interleaved).
    """
    best = {bench.name: [float("inf")] * len(STEPS) for bench in benches}
    for n in range(repeat):
        batch = calls_for(f"s{n}-", calls)
        for bench in benches:
            totals = [0] * len(STEPS)
            for call in batch:
                bench.timed_call(call, totals)
            per = [total / calls / 1000 for total in totals]
            best[bench.name] = [min(old, new) for old, new in zip(best[bench.name], per, strict=True)]
    print(f"--- us per step of a call (wall clock, best of {repeat} x {calls} calls) ---")
    print(f"| step | {' | '.join(bench.name for bench in benches)} |")
    print(f"|---|{'---:|' * len(benches)}")
    for index, step in enumerate(STEPS):
        print(f"| {step} | {' | '.join(f'{best[bench.name][index]:.1f}' for bench in benches)} |")
    print(f"| all | {' | '.join(f'{sum(best[bench.name]):.1f}' for bench in benches)} |")


def cpu(args: argparse.Namespace) -> None:
    timers = TransactionTimers(max_transactions=args.max_transactions)
    benches = [build("stateless"), build("stateful", timers=timers)]
    for bench in benches:
        check(bench)
    if args.only:
        benches = [
            bench for bench in benches if bench.name in args.only.split(",") or bench.name == "stateless"
        ]
    warm = 200
    if args.heap_clock or args.rate:
        # (A new proxy on the heap clock: the proxy's timer queues keep
        # the clock it was made with.)
        benches[1:] = [build(bench.name, HeapClock(), timers) for bench in benches[1:]]
    rss: dict[str, float] = {}
    if args.rate:
        # Steady state: a call's longest-lived state is its BYE's
        # transaction (Timer J, 64*T1; its branch has Timer K, T4), on a
        # clock that moves 1/rate per call, as at that many calls/s; the
        # warm-up is twice that (as for the earlier figures).
        warm = int((2 * 64 * TIMERS.t1 + 2) * args.rate)
        for bench in benches[1:]:
            bench.step = 1 / args.rate
    for bench in benches:
        gc.collect()
        before = rss_kib()
        run(bench, calls_for("w", warm))
        gc.collect()
        rss[bench.name] = (rss_kib() - before) / 1024
    messages = 6 * args.calls
    if args.by_step:
        by_step(benches, args.calls, args.repeat)
        return
    if args.profile:
        calls = calls_for("p", args.calls)
        shown = benches[-1].name
        profiles = {bench.name: profile(bench, calls, 30 if bench.name == shown else 0) for bench in benches}
        for name, seen in profiles.items():
            print(f"profiled: {name} {sum(tt for _, tt in seen.values()) / messages * 1e6:.1f} us/msg")
        for bench in benches[1:]:
            difference(profiles["stateless"], profiles[bench.name], args.calls, f"{bench.name} - stateless")
        return
    times: dict[str, list[float]] = {bench.name: [] for bench in benches}
    watches = {bench.name: GcWatch() for bench in benches}
    calls: list[Call] = []
    for n in range(args.repeat):
        calls = calls_for(f"r{n}-", args.calls)
        for bench in benches:
            with watches[bench.name]:
                times[bench.name].append(run(bench, calls))
            assert not bench.pool.sent
    own = driver(calls)
    best = {name: min(seconds) / messages * 1e6 for name, seconds in times.items()}
    mean = {name: sum(seconds) / len(seconds) / messages * 1e6 for name, seconds in times.items()}
    mode = (
        f"clock +1/{args.rate} s per call (steady state)" if args.rate else f"clock +{ADVANCE:g} s per call"
    )
    print(f"{args.calls} calls x 6 messages, {args.repeat} runs interleaved, {mode}:")
    print("| proxy | us CPU/msg, best | x stateless | mean of runs | x stateless "
          "| GC: share, full collections, longest | live transactions | 503s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for bench in benches:
        name = bench.name
        proxy: Any = bench.proxy
        live = proxy.transactions if name != "stateless" else 0
        refused = proxy.stats.answered[503]
        watch = watches[name]
        share = watch.seconds / sum(times[name])
        print(f"| {name} | {best[name]:.1f} | {best[name] / best['stateless']:.2f}x | {mean[name]:.1f} | "
              f"{mean[name] / mean['stateless']:.2f}x | {100 * share:.1f}%, {watch.full}, "
              f"{watch.longest * 1e3:.0f} ms | {live} | {refused} |")  # fmt: skip
    print(f"(this bench's own response building: {own / messages * 1e6:.2f} us/msg of each figure)")
    if any(bench.proxy.stats.answered[503] for bench in benches):
        print(
            "503s: the transaction cap was reached; those calls failed and their figures are not comparable"
        )
    if args.rate:
        for bench in benches[1:]:
            proxy = bench.proxy
            print(f"{bench.name}: VmRSS +{rss[bench.name]:.0f} MiB over its {warm} warm-up calls; "
                  f"{proxy.transactions} live transactions, "
                  f"{proxy.branches} branches kept")  # fmt: skip
        return
    for bench in benches[1:]:
        drain(bench, 200.0)
        proxy = bench.proxy
        assert proxy.transactions == 0 and proxy.branches == 0, bench.name


# -- item 5: memory -----------------------------------------------------------------


def site(frame: tracemalloc.Frame) -> str:
    return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}"


@functools.cache
def functions(filename: str) -> list[tuple[int, int, str]]:
    """
    (first line, last line, qualified name) of every function in a file.
    """
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError):
        return []
    found: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, f"{name}.")

    visit(tree, "")
    return found


def function(frame: tracemalloc.Frame) -> str:
    """
    C{file:function} of a frame (the innermost function around its line).
    """
    spans = [span for span in functions(frame.filename) if span[0] <= frame.lineno <= span[1]]
    name = max(spans)[2] if spans else "<module>"
    return f"{'/'.join(Path(frame.filename).parts[-2:])}:{name}"


def owner(traceback: tracemalloc.Traceback) -> str:
    """
    The innermost function of sipleg/ that led to an allocation (with
    the function that allocated, when that is elsewhere).
    """
    frames = list(traceback)  # the oldest first
    if not frames:
        return "?"
    for frame in reversed(frames):
        if f"{os.sep}sipleg{os.sep}" in frame.filename:
            mine = function(frame)
            return mine if frame is frames[-1] else f"{mine} via {function(frames[-1])}"
    return function(frames[-1])


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pending(bench: Bench, count: int, prefix: str) -> None:
    """
    C{count} INVITEs nobody answers: C{count} live transactions, each
    with its branch and Timers A, B and C.  Each datagram is a new bytes
    object, as one from C{recvfrom} is.
    """
    receive, sent = bench.leg._pool_received, bench.pool.sent
    template = forward.INVITE
    for n in range(count):
        receive(personal(template, f"{prefix}{n}"), UAC, None)
        sent.clear()


def completed(bench: Bench, count: int, prefix: str) -> None:
    """
    C{count} BYEs answered 200: C{count} completed transactions waiting
    for Timer J (64*T1 over UDP), what a stateful proxy under a steady
    call load mostly holds (rate x 32 s of them).
    """
    receive, sent = bench.leg._pool_received, bench.pool.sent
    template = forward.in_dialog("BYE", 2)
    rest = tail(template)
    for n in range(count):
        receive(personal(template, f"{prefix}{n}"), UAC, None)
        receive(answer(b"SIP/2.0 200 OK\r\n", sent[-1][0], personal(rest, f"{prefix}{n}")), UAS, None)
        sent.clear()


#: How the live transactions of C{memory} are made.
KINDS: dict[str, Callable[[Bench, int, str], None]] = {"invite": pending, "bye": completed}


def drain(bench: Bench, until: float, report: Callable[[float], None] | None = None) -> None:
    """
    Let the clock run to C{until} seconds after now in T1/2 steps (what
    is sent meanwhile is dropped), reporting at some points.
    """
    assert bench.clock is not None
    step = TIMERS.t1 / 2
    marks = iter([4.0, 6.0, 31.0, 33.0, 64.0, 66.0, 97.0, 181.0, float("inf")])
    mark = next(marks)
    elapsed = 0.0
    while elapsed < until:
        bench.clock.advance(step)
        bench.pool.sent.clear()
        elapsed += step
        if report is not None and elapsed >= mark:
            report(elapsed)
            mark = next(marks)
    if report is not None:
        report(elapsed)


def settle(bench: Bench, prefix: str) -> None:
    """
    One more call, and 200 s of its timers: whatever the proxy frees only
    when another transaction ends is freed.
    """
    bench.call(make_call(f"{prefix}-settle"))
    drain(bench, 200.0)
    gc.collect()


def state(bench: Bench) -> str:
    proxy: Any = bench.proxy
    assert bench.clock is not None
    return (
        f"transactions {proxy.transactions:6}, branches {proxy.branches:6}, "
        f"merge keys {len(proxy._merged):6}, timers {len(bench.clock.getDelayedCalls()):6}"
    )


def memory(args: argparse.Namespace) -> None:
    n = args.transactions
    make = KINDS[args.kind]
    what = {"invite": "pending INVITE", "bye": "completed BYE"}[args.kind]
    bench = build("stateful", HeapClock())
    assert bench.clock is not None
    check(bench)
    # Warm up: every lazy part made, every cache filled once.
    make(bench, 1000, "w")
    drain(bench, 200.0)
    settle(bench, "w")
    assert bench.proxy.transactions == 0  # type: ignore[attr-defined]
    gc.collect()

    # VmRSS and the GC's objects, without tracemalloc (which adds to
    # every block).
    rss0, objects0 = rss_kib(), len(gc.get_objects())
    make(bench, n, "r")
    # (The reactor drops cancelled timers at its next turn; so does this.)
    bench.clock.advance(0)
    gc.collect()
    rss1, objects1 = rss_kib(), len(gc.get_objects())
    start = perf_counter()
    gc.collect()
    pause = perf_counter() - start
    print(f"{n} {what} transactions: {state(bench)}")
    drain(bench, 200.0)
    gc.collect()
    rss2, objects2 = rss_kib(), len(gc.get_objects())
    settle(bench, "r")
    rss3, objects3 = rss_kib(), len(gc.get_objects())
    print(f"VmRSS: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB with them "
          f"(+{(rss1 - rss0) * 1024 / n:.0f} bytes each), {rss2 / 1024:.1f} MiB after the timers ran "
          f"(+{(rss2 - rss0) / 1024:.1f} MiB kept), {rss3 / 1024:.1f} MiB after one more call "
          f"(+{(rss3 - rss0) / 1024:.1f} MiB)")  # fmt: skip
    print(f"GC-tracked objects: +{(objects1 - objects0) / n:.1f} per transaction, "
          f"{objects2 - objects0:+d} after the timers, {objects3 - objects0:+d} after one more call; "
          f"a full collection with them live: {pause * 1e3:.0f} ms ({objects1} objects)")  # fmt: skip

    # The same under tracemalloc: what each transaction holds, line by line.
    tracemalloc.start(12)
    gc.collect()
    base = tracemalloc.take_snapshot()
    before = tracemalloc.get_traced_memory()[0]
    make(bench, n, "t")
    bench.clock.advance(0)
    gc.collect()
    full = tracemalloc.take_snapshot()
    live = tracemalloc.get_traced_memory()[0]
    print(f"tracemalloc: +{(live - before) / n:.0f} bytes per live transaction "
          f"({(live - before) / 2**20:.1f} MiB for {n}; "
          f"{(live - before) * TIMERS.max_transactions / n / 2**20:.0f} MiB at the default cap of "
          f"{TIMERS.max_transactions:,})")  # fmt: skip
    print(f"--- where, per transaction (top {args.top} by the innermost function of sipleg/) ---")
    owners: dict[str, list[float]] = {}
    for diff in full.compare_to(base, "traceback"):
        sizes = owners.setdefault(owner(diff.traceback), [0.0, 0.0])
        sizes[0] += diff.size_diff / n
        sizes[1] += diff.count_diff / n
    for name, (size, count) in sorted(owners.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{size:7.0f} B {count:5.2f} blocks  {name}")
    del full

    def report(elapsed: float) -> None:
        gc.collect()
        now = tracemalloc.get_traced_memory()[0]
        print(f"  t={elapsed:6.1f} s  {state(bench)}  memory +{(now - before) / 2**20:6.2f} MiB")

    print("--- the timers run (T1/2 steps) ---")
    drain(bench, 200.0, report)
    gc.collect()
    after = tracemalloc.take_snapshot()
    left = tracemalloc.get_traced_memory()[0]
    settle(bench, "t")
    final = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    proxy: Any = bench.proxy
    assert proxy.transactions == 0 and proxy.branches == 0 and not proxy._merged
    assert bench.clock is not None and not bench.clock.getDelayedCalls()
    print(f"after the timers: +{(left - before) / 1024:.1f} KiB kept of {(live - before) / 1024:.0f} KiB")
    for diff in after.compare_to(base, "lineno")[:5]:
        if diff.size_diff > 1024:
            print(f"  {diff.size_diff / 1024:7.1f} KiB  {site(diff.traceback[0])}")
    print(f"after one more call (and its timers): {(final - before) / 1024:+.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("cpu", help="item 7: CPU per forwarded message, stateful against stateless")
    one.add_argument("--calls", type=int, default=3000)
    one.add_argument("--repeat", type=int, default=5)
    one.add_argument("--profile", action="store_true", help="cProfile each, top 30 and the differences")
    one.add_argument(
        "--rate",
        type=int,
        default=0,
        help="calls/s of simulated time: the clock moves 1/rate per call (after 2*64*T1 of warm-up "
        "calls) so transactions live as long as at that rate; default: all of a call's timers run "
        "after it",
    )
    one.add_argument("--max-transactions", type=int, default=TIMERS.max_transactions)
    one.add_argument("--by-step", action="store_true", help="wall-clock us of each message of a call")
    one.add_argument("--only", default="", help="comma-separated proxies to run besides the stateless one")
    one.add_argument(
        "--heap-clock",
        action="store_true",
        help="the stateful proxies run on a clock with the reactor's heap, not task.Clock's sorted list",
    )
    two = commands.add_parser("memory", help="item 5: memory per live transaction, and freed by the timers")
    two.add_argument("--transactions", type=int, default=10000)
    two.add_argument(
        "--kind", choices=sorted(KINDS), default="invite", help="pending INVITEs or completed BYEs"
    )
    two.add_argument("--top", type=int, default=20, help="allocation lines to list")
    args = parser.parse_args()
    {"cpu": cpu, "memory": memory}[args.command](args)


if __name__ == "__main__":
    main()
