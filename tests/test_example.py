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


def _readme_block(after: str, starting: str) -> str:
    """
    The first shell block of the README after C{after} whose text starts
    with C{starting}, continuation lines joined.
    """
    section = (ROOT / "README.md").read_text().split(after, 1)[1]
    for block in section.split("```sh\n")[1:]:
        text = block.split("```", 1)[0]
        if text.startswith(starting):
            return text.replace("\\\n", " ")
    raise AssertionError(f"no block starting {starting!r} after {after!r} in README.md")


class ReadmeCommandTests(unittest.TestCase):
    def test_ci_runs_the_readme_test_command(self) -> None:
        """
        C{.ci/run} runs the README's test command verbatim, after the
        comment that says so.
        """
        command = _readme_block("## Run the tests", "").strip()
        script = (ROOT / ".ci" / "run").read_text()
        self.assertIn(f"# The README's test command, verbatim.\n{command}\n", script)
        # Debian's python3 needs python3-venv for it.
        self.assertIn("python3 -m venv", command)
        self.assertIn("python3-venv", script)

    def test_test_certificate(self) -> None:
        """
        The README's C{openssl} line makes a certificate and key the TLS
        listener accepts, for 127.0.0.1.
        """
        import ipaddress
        import shlex
        import shutil

        from cryptography import x509

        from sipleg.transport.tls import TLSConfig

        if shutil.which("openssl") is None:
            raise unittest.SkipTest("no openssl")
        line = _readme_block("## Run the proxy", "openssl").splitlines()[0]
        folder = Path(self.mktemp())
        folder.mkdir()
        subprocess.run(shlex.split(line), cwd=folder, capture_output=True, timeout=30, check=True)
        TLSConfig(str(folder / "cert.pem"), str(folder / "key.pem")).server_options()
        cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(ipaddress.ip_address("127.0.0.1"), names.get_values_for_type(x509.IPAddress))

    def test_twistd_files_ignored(self) -> None:
        """
        C{twistd -n sipproxy} run in a checkout leaves C{twistd.pid} (and
        without C{-n} C{twistd.log}): git ignores them.
        """
        ignored = (ROOT / ".gitignore").read_text().splitlines()
        self.assertIn("twistd.pid", ignored)
        self.assertIn("twistd.log", ignored)

    def test_webrtc_example(self) -> None:
        """
        The README's WebRTC command line is a valid configuration: a
        C{wss} listener with the TLS options, registrar and domain.
        """
        import shlex

        from sipleg.tap import Options

        block = _readme_block("### WebRTC", ".venv/bin/pip install '.[websocket]'")
        line = next(line for line in block.splitlines() if line.startswith("twistd"))
        args = shlex.split(line)
        options = Options()
        options.parseOptions(args[args.index("sipproxy") + 1 :])
        self.assertEqual([spec.proto for spec in options["listen"]], ["wss", "udp"])
        self.assertEqual(options["listen"][0].address.port, 8443)
        self.assertTrue(options["registrar"])
        self.assertEqual(options["domain"], ["example.com"])
