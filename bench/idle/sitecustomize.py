"""
Benchmark helper, inert unless C{SIPLEG_BENCH_MODULES=PATH} is set: then
SIGUSR2 writes the names in C{sys.modules}, one a line, to PATH.  Used by
C{bench/idle_rss.py} to list what an idle C{twistd} process has imported
without touching the code under test.
"""

import os

if os.environ.get("SIPLEG_BENCH_MODULES"):
    import signal
    import sys

    def _dump(signum: int, frame: object) -> None:
        with open(os.environ["SIPLEG_BENCH_MODULES"], "w") as f:
            f.write("".join(f"{name}\n" for name in sorted(sys.modules)))

    signal.signal(signal.SIGUSR2, _dump)
