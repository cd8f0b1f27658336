"""
What the routing hook (C{--route-url}) costs: the latency it adds to a
forwarded request (p50 / p99, one request at a time) and the requests a
second the proxy forwards through it (C{--window} requests in flight,
for C{--seconds}), each with and without the hook.

The web service runs in a child process (C{twisted.web}, answering
C{{"action": "continue"}}); the proxy, a caller and a callee (plain
UDP legs) run in this process on 127.0.0.1, so a request's time is from
the caller's send to the callee's receipt.

    python bench/route_hook.py [--requests 2000] [--seconds 10] [--window 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402

from sipleg.address import Address  # noqa: E402
from sipleg.dispatcher import Dispatcher  # noqa: E402
from sipleg.leg import Leg  # noqa: E402
from sipleg.message import Request  # noqa: E402
from sipleg.proxy import StatelessProxy  # noqa: E402
from sipleg.routehook import HookConfig  # noqa: E402

SERVICE = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Route(Resource):
    isLeaf = True
    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"application/json")
        return b'{"action": "continue"}'

site = Site(Route())
site.noisy = False
port = reactor.listenTCP(0, site, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


class Callee:
    """
    Records when each request arrives, by Call-ID, and wakes its waiter.
    """

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[float, defer.Deferred[float]]] = {}

    def __call__(self, packet: Any, source: Address, leg: Leg) -> None:
        entry = self.waiting.pop(packet.get_header("call-id"), None)
        if entry is not None:
            entry[1].callback(time.perf_counter() - entry[0])


class Bench:
    def __init__(self, hook_url: str | None) -> None:
        self.hook_url = hook_url
        self.callee = Callee()
        self.numbers = iter(range(10**9))

    @defer.inlineCallbacks
    def start(self) -> Any:
        self.udp = Leg(port=0, proto="udp")
        self.caller = Leg(port=0, proto="udp", receiver=lambda *args: None)
        self.uas = Leg(port=0, proto="udp", receiver=self.callee)
        for leg in (self.udp, self.caller, self.uas):
            yield leg.listen()
        hook = None
        if self.hook_url is not None:
            from sipleg.hookclient import RouteHookClient

            hook = RouteHookClient(HookConfig(self.hook_url, 2.0, "503", 10_000), reactor)
        self.hook = hook
        self.proxy = StatelessProxy(Dispatcher([self.udp]), route_hook=hook)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        for leg in (self.udp, self.caller, self.uas):
            yield leg.stop()
        if self.hook is not None:
            yield self.hook.close()

    def one(self) -> defer.Deferred[float]:
        """
        Send one OPTIONS through the proxy; fires with its seconds to the callee.
        """
        call_id = f"bench-{next(self.numbers)}"
        target = f"sip:bob@{self.uas.local.hostport}"
        request = Request("OPTIONS", target, [
            ("From", "<sip:alice@127.0.0.1>;tag=1"), ("To", f"<{target}>"), ("Call-ID", call_id),
            ("CSeq", "1 OPTIONS"), ("Max-Forwards", "70"),
        ])  # fmt: skip
        done: defer.Deferred[float] = defer.Deferred()
        self.callee.waiting[call_id] = (time.perf_counter(), done)
        self.caller.deliver(request, self.udp.local)
        return done.addTimeout(5, reactor)

    @defer.inlineCallbacks
    def latency(self, count: int) -> Any:
        times = []
        for _ in range(count):
            times.append((yield self.one()))
        times.sort()
        return times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000

    @defer.inlineCallbacks
    def throughput(self, seconds: float, window: int) -> Any:
        done = [0]
        deadline = time.perf_counter() + seconds

        @defer.inlineCallbacks
        def worker() -> Any:
            while time.perf_counter() < deadline:
                yield self.one()
                done[0] += 1

        start = time.perf_counter()
        yield defer.gatherResults([worker() for _ in range(window)])
        return done[0] / (time.perf_counter() - start)


@defer.inlineCallbacks
def run(args: argparse.Namespace, url: str) -> Any:
    rows = []
    for name, hook_url in (("without the hook", None), ("with the hook", url)):
        bench = Bench(hook_url)
        yield bench.start()
        yield bench.latency(200)  # warm up (and open the hook's connection)
        p50, p99 = yield bench.latency(args.requests)
        rate = yield bench.throughput(args.seconds, args.window)
        calls = bench.hook.calls if bench.hook is not None else 0
        failures = bench.hook.failures if bench.hook is not None else 0
        yield bench.stop()
        rows.append((name, p50, p99, rate, calls, failures))
    print(f"{args.requests} requests one at a time; then {args.window} in flight for {args.seconds:g} s")
    print(f"| {'':<16} | {'p50 ms':>7} | {'p99 ms':>7} | {'forwarded/s':>11} | {'hook calls':>10} | failed |")
    for name, p50, p99, rate, calls, failures in rows:
        print(f"| {name:<16} | {p50:>7.3f} | {p99:>7.3f} | {rate:>11.0f} | {calls:>10} | {failures:>6} |")
    base, hooked = rows
    print(f"added latency: p50 {hooked[1] - base[1]:.3f} ms, p99 {hooked[2] - base[2]:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    service = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        url = f"http://127.0.0.1:{service.stdout.readline().strip()}/route"
        task.react(lambda _: run(args, url))
    finally:
        service.terminate()
        service.wait(10)


if __name__ == "__main__":
    main()
