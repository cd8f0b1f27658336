"""
The layering the design promises: the sans-IO core never imports Twisted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

import sipleg

ROOT = Path(sipleg.__file__).resolve().parent.parent


class SansIOTests(unittest.TestCase):
    def test_core_imports_no_twisted(self) -> None:
        code = (
            "import sys\n"
            "import sipleg, sipleg.errors, sipleg.address, sipleg.uri, sipleg.message, sipleg.framing\n"
            "import sipleg.branch, sipleg.decision, sipleg.routing, sipleg.stats\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
        self.assertEqual(done.stdout.strip(), "[]")

    def test_optional_parts_imported_on_demand(self) -> None:
        """
        A proxy without C{--status}, C{--workers} or a TLS listener imports
        neither twisted.web nor the worker supervisor nor sipleg's TLS
        module.
        """
        code = (
            "import sys\n"
            "from sipleg.service import ProxyConfig, make_service, parse_listen\n"
            "listen = [parse_listen('udp:127.0.0.1:0'), parse_listen('tcp:127.0.0.1:0')]\n"
            "make_service(ProxyConfig(listen=listen))\n"
            "import sipleg.tap\n"
            "wanted = ('twisted.web', 'sipleg.status', 'sipleg.workers', 'sipleg.transport.tls')\n"
            "print(sorted(m for m in sys.modules if m.startswith(wanted)))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
        self.assertEqual(done.stdout.strip(), "[]")

    def test_public_names(self) -> None:
        for name in sipleg.__all__:
            self.assertIsNotNone(getattr(sipleg, name), name)
