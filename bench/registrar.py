"""
Reactor-thread CPU of a REGISTER and of a lookup, against the number of
bindings, in memory and with the SQLite store (location-store issue,
item 2).

For each table size N the registrar is filled with N users, then 2,000
REGISTERs refresh random users (each answered once its change is
durable, with the store), and 2,000 lookups route random users.  The CPU
is the reactor thread's alone (C{time.thread_time}): the store's writer
thread is not counted, as it does not hold up forwarding.

    python3 bench/registrar.py [--sizes 100,1000,10000,100000]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task  # noqa: E402

from sipleg.message import Request  # noqa: E402
from sipleg.registrar import Registrar  # noqa: E402
from sipleg.store import SQLiteStore  # noqa: E402
from sipleg.uri import parse_uri  # noqa: E402

ROUNDS = 2000


def register(n: int, cseq: int) -> Request:
    return Request(
        "REGISTER",
        "sip:example.test",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{n}-{cseq}"),
            ("From", f"<sip:u{n}@example.test>;tag=t{n}"),
            ("To", f"<sip:u{n}@example.test>"),
            ("Call-ID", f"reg-{n}"),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", f"<sip:u{n}@192.0.2.1:{10000 + n % 50000}>"),
        ],
    )


async def measure(size: int, stored: bool, folder: str) -> tuple[float, float]:
    """
    @return: microseconds of reactor-thread CPU per REGISTER and per lookup.
    """
    store = SQLiteStore(f"{folder}/{size}.db", reactor) if stored else None
    registrar = Registrar(["example.test"], reactor, store, max_bindings=10 * size)
    batch = []
    for n in range(size):
        answer = registrar.register(register(n, 1))
        if isinstance(answer, defer.Deferred):
            batch.append(answer)
        if len(batch) >= 5000:
            await defer.gatherResults(batch)
            batch = []
    await defer.gatherResults(batch)
    rng = random.Random(size)
    users = [rng.randrange(size) for _ in range(ROUNDS)]
    requests = [register(n, 2 + i) for i, n in enumerate(users)]
    start = time.thread_time()
    answers = [registrar.register(request) for request in requests]
    cost = time.thread_time() - start
    # (Waiting for the writer is not reactor-thread work.)
    pending = [answer for answer in answers if isinstance(answer, defer.Deferred)]
    done = await defer.gatherResults(pending) if pending else []
    codes = {answer.code for answer in answers if not isinstance(answer, defer.Deferred)} | {
        answer.code for answer in done
    }
    assert codes == {200}, codes
    uris = [parse_uri(f"sip:u{n}@example.test") for n in users]
    start = time.thread_time()
    for uri in uris:
        found = registrar.lookup(uri)
        assert found is not None and found.contacts
    lookup = time.thread_time() - start
    await defer.maybeDeferred(registrar.stop)
    return cost / ROUNDS * 1e6, lookup / ROUNDS * 1e6


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        header = f"{'bindings':>9} | {'REGISTER, memory':>16} | {'REGISTER, SQLite':>16} | {'lookup':>7}"
        print(header + "  (us, reactor thread)")
        for size in sizes:
            memory, lookup = await measure(size, False, folder)
            stored, _ = await measure(size, True, folder)
            print(f"{size:>9} | {memory:>16.1f} | {stored:>16.1f} | {lookup:>7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    args = parser.parse_args()
    task.react(lambda _: defer.ensureDeferred(main([int(s) for s in args.sizes.split(",")])))
