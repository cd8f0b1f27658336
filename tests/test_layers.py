"""
The layering the design promises: the sans-IO core never imports Twisted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

import sipleg

ROOT = Path(sipleg.__file__).resolve().parent.parent


def imported(code: str, wanted: tuple[str, ...]) -> list[str]:
    """
    The modules starting with one of C{wanted} that a fresh interpreter
    has imported after running C{code}.
    """
    script = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if m.startswith({wanted!r})))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    found: list[str] = ast.literal_eval(done.stdout)
    return found


class SansIOTests(unittest.TestCase):
    def test_core_imports_no_twisted(self) -> None:
        code = (
            "import sipleg, sipleg.errors, sipleg.address, sipleg.uri, sipleg.message, sipleg.framing\n"
            "import sipleg.branch, sipleg.decision, sipleg.digest, sipleg.forking, sipleg.routing\n"
            "import sipleg.stats, sipleg.flows\n"
        )
        self.assertEqual(imported(code, ("twisted",)), [])

    def test_optional_parts_imported_on_demand(self) -> None:
        """
        A proxy without C{--status}, C{--workers}, a TLS listener,
        C{--auth-file}, C{--registrations} or C{--stateful} imports neither
        twisted.web nor the worker supervisor nor sipleg's TLS,
        authentication, store, stateful or WebSocket modules (nor sqlite3,
        txredisapi or autobahn).
        """
        code = (
            "from sipleg.service import ProxyConfig, make_service, parse_listen\n"
            "listen = [parse_listen('udp:127.0.0.1:0'), parse_listen('tcp:127.0.0.1:0')]\n"
            "make_service(ProxyConfig(listen=listen))\n"
            "import sipleg.tap\n"
        )
        wanted = (
            "twisted.web",
            "sipleg.status",
            "sipleg.workers",
            "sipleg.transport.tls",
            "sipleg.auth",
            "sipleg.digest",
            "sipleg.users",
            "sipleg.store",
            "sipleg.redisstore",
            "txredisapi",
            "sqlite3",
            "sipleg.stateful",
            "sipleg.transport.websocket",
            "autobahn",
        )
        self.assertEqual(imported(code, wanted), [])

    def test_public_names(self) -> None:
        for name in sipleg.__all__:
            self.assertIsNotNone(getattr(sipleg, name), name)
