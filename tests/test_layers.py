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
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
        self.assertEqual(done.stdout.strip(), "[]")

    def test_public_names(self) -> None:
        for name in sipleg.__all__:
            self.assertIsNotNone(getattr(sipleg, name), name)
