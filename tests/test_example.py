"""
The README's example runs and does what it says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parent.parent


class ExampleTests(unittest.TestCase):
    def test_options_ping(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "options_ping.py")],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.decode().splitlines()
        self.assertEqual([line.split(" from ")[0] for line in lines], ["udp: 200 OK", "tcp: 200 OK"])

    def test_readme_snippet(self) -> None:
        readme = (ROOT / "README.md").read_text()
        section = readme.split("## Using Leg in your reactor application", 1)[1]
        code = section.split("```python\n", 1)[1].split("```", 1)[0]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, env=env, timeout=30, check=False
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.decode().strip(), "200")
