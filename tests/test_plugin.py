"""
Tests for the C{twistd sipproxy} plugin (twisted/plugins/sipleg_plugin.py
and sipleg/tap.py) as an operator runs it: C{twistd} in a child process,
its exit status, what it writes, and a real SIPp call through it.

The child runs C{twistd -n} with the Python running the tests; the plugin
is found through C{twisted/plugins} next to the C{sipleg} package being
tested (the checkout, or site-packages when installed), which is put on
C{PYTHONPATH}.  Every child has a hard timeout and is killed at cleanup.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from sipleg.address import Address
from tests.interop.peers import (
    SippOutcome,
    free_port,
    listening,
    require_peers,
    run_sipp_uac,
    start_sipp_uas,
)
from tests.support import SOURCE_ROOT, HookServer, child_env, run_twistd, twistd_argv

#: Seconds a C{twistd} child may run before it is killed.
CHILD_TIMEOUT = 20.0
#: Seconds C{twistd} may take to bind its sockets.
READY_TIMEOUT = 10.0
#: Seconds between two looks at the child's sockets while it starts.
READY_POLL = 0.05
#: Seconds C{twistd} may take to shut down after SIGTERM.
STOP_TIMEOUT = 5.0
#: Seconds a SIPp peer may take.
PEER_TIMEOUT = 5
#: Tries to find a port number free for both UDP and TCP.
PORT_ATTEMPTS = 3
#: The address C{twistd sipproxy} listens on without C{--listen}.
DEFAULT_PORT = 5060


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """
    Whether C{port} can be bound on C{host} for both UDP and TCP right now.
    """
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class TwistdTestCase(unittest.TestCase):
    """
    Runs C{twistd} children in a scratch directory.
    """

    timeout = 45

    def setUp(self) -> None:
        if not (SOURCE_ROOT / "twisted" / "plugins" / "sipleg_plugin.py").exists():
            self.fail(f"no twisted/plugins/sipleg_plugin.py next to sipleg in {SOURCE_ROOT}")
        self.rundir = Path(self.mktemp())
        self.rundir.mkdir(parents=True)

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{twistd -n args} to its end (bounded by L{CHILD_TIMEOUT}).
        """
        return run_twistd(self.rundir, *args, timeout=CHILD_TIMEOUT)

    def start_twistd(self, *args: str) -> subprocess.Popen[bytes]:
        """
        Start C{twistd -n args} with its stdout and stderr going to files
        (see L{output}); it is killed at cleanup if still running, and
        after L{CHILD_TIMEOUT} seconds in any case.
        """
        self.outputs = self.rundir / "twistd.out", self.rundir / "twistd.err"
        with self.outputs[0].open("wb") as out, self.outputs[1].open("wb") as err:
            proc = subprocess.Popen(
                twistd_argv(*args),
                cwd=self.rundir,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        killer = reactor.callLater(CHILD_TIMEOUT, self.kill, proc)

        def cleanup() -> None:
            if killer.active():
                killer.cancel()
            self.kill(proc)

        self.addCleanup(cleanup)
        return proc

    def output(self) -> tuple[str, str]:
        """
        What the child of L{start_twistd} wrote to stdout and stderr.
        """
        out, err = self.outputs
        return out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace")

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        """
        SIGKILL C{proc} unless it has exited, and reap it.
        """
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT)

    @defer.inlineCallbacks
    def wait_listening(self, proc: subprocess.Popen[bytes], port: int) -> Any:
        """
        Wait until C{proc} has its UDP and TCP sockets on C{port}.

        @return: fires with C{True} once it listens, C{False} when it
            exited first (then it has been reaped); fails the test after
            L{READY_TIMEOUT} seconds.
        """
        for _ in range(int(READY_TIMEOUT / READY_POLL)):
            if proc.poll() is not None:
                return False
            # The sockets are bound before the reactor runs (so a port in
            # use is an immediate error); twistd handles SIGTERM only once
            # the reactor started, when the legs log that they listen.
            if (
                listening(proc.pid, "udp", port)
                and listening(proc.pid, "tcp", port)
                and f"starting on {port}" in self.output()[0]
            ):
                return True
            yield deferLater(reactor, READY_POLL, lambda: None)
        self.fail(f"twistd not listening on udp and tcp port {port} after {READY_TIMEOUT} s")

    def terminate(self, proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
        """
        SIGTERM C{proc} and wait (at most L{STOP_TIMEOUT} seconds) for it.

        @return: its exit status, stdout and stderr.
        """
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_TIMEOUT)
        out, err = self.output()
        return code, out, err


class HelpTests(TwistdTestCase):
    """
    C{twistd} knows the plugin and shows its options.
    """

    def test_listed(self) -> None:
        """
        C{twistd --help} lists C{sipproxy} among the commands.
        """
        done = self.run_twistd("--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        commands = [line.split() for line in done.stdout.splitlines()]
        self.assertIn("sipproxy", [words[0] for words in commands if words])

    def test_options(self) -> None:
        """
        C{twistd sipproxy --help} shows every option of the proxy.
        """
        done = self.run_twistd("sipproxy", "--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        for option in (
            "--listen=",
            "--allow=",
            "--domain=",
            "--route=",
            "--outbound-proxy=",
            "--tls-cert=",
            "--tls-key=",
            "--tls-ca=",
            "--max-forwards=",
            "--trace",
            "--flood-limit=",
            "--ban-time=",
            "--scanners=",
            "--no-flood-control",
            "--max-connections=",
            "--max-per-source=",
            "--first-message-timeout=",
        ):
            self.assertIn(option, done.stdout)
        self.assertIn("127.0.0.1:5060", done.stdout)

    def test_help_readable(self) -> None:
        """
        The help text has no runs of spaces from docstring indentation; it
        gives the default ports and says that C{--allow} replaces the
        loopback default.
        """
        done = self.run_twistd("sipproxy", "--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        for line in done.stdout.splitlines():
            # The option column is padded with spaces; its help is not.
            self.assertNotIn("  ", re.sub(r"^\s*--[\w-]+=?\s+", "", line).strip(), line)
        text = " ".join(done.stdout.split())
        self.assertIn("PORT 5060, 5061 for tls", text)
        self.assertIn("Replaces the default, loopback only", text)

    def test_version(self) -> None:
        """
        C{twistd sipproxy --version} gives sipleg's version and Twisted's.
        """
        import sipleg
        import twisted

        done = self.run_twistd("sipproxy", "--version")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, f"sipleg {sipleg.__version__} (Twisted {twisted.__version__})\n")


class BadOptionTests(TwistdTestCase):
    """
    A configuration the proxy cannot run with stops it before it starts,
    with a non-zero exit status and a one-line reason on stderr.
    """

    def refused(self, *args: str) -> str:
        """
        Run C{twistd sipproxy args}, check it failed with one line on
        stderr, and return that line.
        """
        done = self.run_twistd("sipproxy", *args)
        self.assertNotEqual(done.returncode, 0, done.stdout)
        lines = done.stderr.splitlines()
        self.assertEqual(len(lines), 1, f"stderr: {done.stderr!r}\nstdout: {done.stdout[-500:]!r}")
        self.assertTrue(lines[0].startswith("sipproxy: "), lines[0])
        self.assertNotIn("Traceback", done.stdout)
        return lines[0]

    def test_bad_flood_limit(self) -> None:
        """
        C{--flood-limit} wants N/SECONDS.
        """
        self.assertIn("--flood-limit", self.refused("--flood-limit", "200"))
        self.assertIn("--flood-limit", self.refused("--flood-limit", "0/2"))
        self.assertIn("--max-per-source", self.refused("--max-per-source", "0"))

    def test_bad_cidr(self) -> None:
        """
        C{--allow 10.0.0.0/33}: no such network.
        """
        self.assertIn("10.0.0.0/33", self.refused("--allow", "10.0.0.0/33"))

    def test_bad_listen(self) -> None:
        """
        C{--listen} with a transport sipleg does not have.
        """
        self.assertIn("sctp:127.0.0.1:5060", self.refused("--listen", "sctp:127.0.0.1:5060"))

    def test_listen_not_local(self) -> None:
        """
        C{--listen} on an address this host does not have (TEST-NET-1).
        """
        self.assertIn("192.0.2.1", self.refused("--listen", "udp:192.0.2.1:5060"))

    def test_port_in_use(self) -> None:
        """
        The UDP port is already bound by someone else.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            line = self.refused("--listen", f"udp:127.0.0.1:{port}")
        self.assertIn(str(port), line)
        self.assertIn("in use", line)

    def test_tcp_port_in_use(self) -> None:
        """
        The TCP port has a listener already.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            line = self.refused("--listen", f"tcp:127.0.0.1:{port}")
        self.assertIn(str(port), line)

    def test_missing_certificate(self) -> None:
        """
        A tls listener whose certificate file does not exist.
        """
        missing = str(self.rundir / "missing.pem")
        line = self.refused(
            "--listen",
            f"tls:127.0.0.1:{free_port('tcp')}",
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        )
        self.assertIn("missing.pem", line)

    def test_garbage_certificate(self) -> None:
        """
        A tls listener whose certificate and key files are not PEM.
        """
        garbage = self.rundir / "garbage.pem"
        garbage.write_text("not a certificate\n")
        line = self.refused(
            "--listen",
            f"tls:127.0.0.1:{free_port('tcp')}",
            "--tls-cert",
            str(garbage),
            "--tls-key",
            str(garbage),
        )
        self.assertIn("TLS", line)

    def test_tls_without_certificate(self) -> None:
        """
        A tls listener and no C{--tls-cert}/C{--tls-key}.
        """
        line = self.refused("--listen", f"tls:127.0.0.1:{free_port('tcp')}")
        self.assertIn("--tls-cert", line)

    def test_bad_route(self) -> None:
        """
        C{--route} without C{=SIPURI}.
        """
        self.assertIn("example.com", self.refused("--route", "example.com"))

    def test_route_not_sip(self) -> None:
        """
        C{--route} to a URI that is not C{sip:}/C{sips:}.
        """
        self.assertIn("http:", self.refused("--route", "example.com=http://example.org/"))

    def test_corrupt_registrations_file(self) -> None:
        """
        A corrupt C{--registrations} file (not a database, or a JSON file
        of the previous version that cannot be migrated) stops the start
        with a clear reason instead of an empty binding table; the file is
        left as it was.
        """
        path = (self.rundir / "bindings.db").resolve()
        for garbage, why in (("garbage{" * 200, "file is not a database"), ('{"version": 7}', "corrupt")):
            path.write_text(garbage)
            reason = self.refused(
                "--registrar", "--domain", "example.test", "--registrations", str(path),
                "--listen", "udp:127.0.0.1:0",
            )  # fmt: skip
            self.assertIn(str(path), reason)
            self.assertIn(why, reason)
            self.assertEqual(path.read_text(), garbage)

    def test_bad_route_hook_options(self) -> None:
        """
        C{--route-url} must be http(s) with a host; the other routing hook
        options must make sense.
        """
        listen = ("--listen", "udp:127.0.0.1:0")
        self.assertIn("--route-url 'ftp://h/'", self.refused("--route-url", "ftp://h/", *listen))
        url = ("--route-url", "http://127.0.0.1:9/route")
        self.assertIn("--route-timeout", self.refused(*url, "--route-timeout", "0", *listen))
        self.assertIn("--route-failure 'drop'", self.refused(*url, "--route-failure", "drop", *listen))

    def test_numbers_name_their_option(self) -> None:
        """
        A value that is not a number names the option and the value.
        """
        self.assertIn("--workers 'abc': not an integer", self.refused("--workers", "abc"))
        self.assertIn("--ban-time 'soon': not a number", self.refused("--ban-time", "soon"))

    def test_no_bindings(self) -> None:
        """
        C{--max-bindings 0} would answer every REGISTER 503.
        """
        self.assertIn("--max-bindings", self.refused("--max-bindings", "0"))

    def test_bad_domain(self) -> None:
        """
        A C{--domain} is a host name or IP address; a URI gets a hint.
        """
        self.assertIn("'exa mple': expected a host name", self.refused("--domain", "exa mple"))
        line = self.refused("--domain", "sip:example.test")
        self.assertIn("--domain 'sip:example.test'", line)
        self.assertIn("did you mean example.test?", line)

    def test_tls_files_without_tls_listener(self) -> None:
        """
        Certificate options without a tls listener would be ignored.
        """
        line = self.refused("--tls-cert", "cert.pem", "--tls-key", "key.pem")
        self.assertIn("--tls-cert / --tls-key without a tls listener", line)
        self.assertIn("--tls-ca without a tls listener", self.refused("--tls-ca", "ca.pem"))

    def test_route_transport(self) -> None:
        """
        A next hop over a transport sipleg does not have (SCTP).
        """
        line = self.refused("--route", "example.test=sip:127.0.0.1;transport=sctp")
        self.assertIn("transport=sctp is not supported", line)

    def test_listen_ipv6_without_brackets(self) -> None:
        """
        C{--listen tcp::1:5060} gets a hint about brackets.
        """
        self.assertIn(
            "IPv6 addresses go in brackets: tcp:[::1]:5060", self.refused("--listen", "tcp::1:5060")
        )

    def test_certificate_errors_name_the_file(self) -> None:
        """
        A malformed certificate, key or CA file, or a key that is not the
        certificate's, is named in the error.
        """
        from tests.certs import CertificateAuthority

        ca = CertificateAuthority()
        cert, key, other_key = (self.rundir.resolve() / name for name in ("cert.pem", "key.pem", "other.pem"))
        leaf = ca.issue("proxy", ip_addresses=("127.0.0.1",))
        cert.write_bytes(leaf.cert)
        key.write_bytes(leaf.key)
        other_key.write_bytes(ca.issue("other").key)
        garbage = self.rundir.resolve() / "garbage.pem"
        garbage.write_text("not PEM\n")
        listen = ("--listen", f"tls:127.0.0.1:{free_port('tcp')}")
        for files, named in (
            ((garbage, key, None), f"{garbage}: cannot load the certificate"),
            ((cert, garbage, None), f"{garbage}: cannot load the private key"),
            ((cert, key, garbage), f"{garbage}: cannot load the CA certificates"),
            (
                (cert, other_key, None),
                f"the private key {other_key} is not the key of the certificate {cert}",
            ),
        ):
            tls = ("--tls-cert", str(files[0]), "--tls-key", str(files[1]))
            if files[2] is not None:
                tls += ("--tls-ca", str(files[2]))
            self.assertIn(named, self.refused(*listen, *tls))

    def test_registrar_needs_a_domain(self) -> None:
        self.assertIn("--domain", self.refused("--registrar", "--listen", "udp:127.0.0.1:0"))

    def test_bad_auth_options(self) -> None:
        """
        A missing or malformed user file, an unknown algorithm, no realm,
        and C{--workers} without a shared nonce secret: one line each.
        """
        users = (self.rundir / "users").resolve()
        listen = ("--listen", "udp:127.0.0.1:0", "--domain", "example.test")
        self.assertIn("cannot read the user file", self.refused("--auth-file", str(users), *listen))
        users.write_text("alice:example.test:" + "0" * 32 + "\nbob:example.test\n")
        self.assertIn(f"{users}:2: expected user:realm:HA1", self.refused("--auth-file", str(users), *listen))
        users.write_text("alice:example.test:" + "0" * 32 + "\n")
        self.assertIn("SHA-1", self.refused("--auth-file", str(users), "--auth-algorithms", "SHA-1", *listen))
        self.assertIn("--auth-realm", self.refused("--auth-file", str(users), "--listen", "udp:127.0.0.1:0"))
        self.assertIn(
            "--auth-secret-file", self.refused("--auth-file", str(users), "--workers", "2", *listen)
        )


class ProxyProcessTestCase(TwistdTestCase):
    """
    Starts the proxy under twistd and calls through it with SIPp.
    """

    def setUp(self) -> None:
        require_peers()
        super().setUp()

    @defer.inlineCallbacks
    def start_proxy(self, *args: str) -> Any:
        """
        Start C{twistd -n sipproxy args --listen udp:127.0.0.1:P --listen
        tcp:127.0.0.1:P} on a free port P, retried with another port when
        P turns out to be taken.

        @return: fires with the child and P once it listens.
        """
        for attempt in range(PORT_ATTEMPTS):
            port = free_port("udp+tcp")
            proc = self.start_twistd(
                "sipproxy",
                *args,
                "--listen",
                f"udp:127.0.0.1:{port}",
                "--listen",
                f"tcp:127.0.0.1:{port}",
            )
            if (yield self.wait_listening(proc, port)):
                return proc, port
            err = self.output()[1]
            if "in use" not in err or attempt == PORT_ATTEMPTS - 1:
                self.fail(f"twistd exited {proc.returncode}: {err!r}")

    @defer.inlineCallbacks
    def call_through(self, port: int) -> Any:
        """
        One SIPp call over UDP through the proxy on C{port}, to a SIPp UAS.
        """
        uas = yield start_sipp_uas("udp", timeout=PEER_TIMEOUT)
        self.addCleanup(uas.stop)
        uac: SippOutcome = yield run_sipp_uac(
            uas.address, proxy=Address("127.0.0.1", port, "udp"), timeout=PEER_TIMEOUT
        )
        self.assertTrue(uac.ok, uac.describe())
        server: SippOutcome = yield uas.result()
        self.assertTrue(server.ok, server.describe())

    def assert_clean_stop(self, proc: subprocess.Popen[bytes]) -> str:
        """
        SIGTERM C{proc}: it shuts down (twistd's "Server Shut Down.") and
        ends within L{STOP_TIMEOUT} seconds, then says nothing on stderr.

        twistd ends a run stopped by a signal by raising that signal again
        once the reactor has stopped (twisted.scripts.twistd.runApp), so
        the exit status is "killed by SIGTERM", the Unix convention for a
        daemon stopped that way.

        @return: what it logged.
        """
        code, out, err = self.terminate(proc)
        self.assertIn(code, (0, -signal.SIGTERM), out[-2000:])
        self.assertIn("Server Shut Down.", out)
        self.assertNotIn("Traceback", out)
        self.assertEqual(err, "")
        return out


class RunTests(ProxyProcessTestCase):
    """
    The proxy runs as C{twistd -n sipproxy}, forwards a call and stops on
    SIGTERM.
    """

    @defer.inlineCallbacks
    def test_call_and_sigterm(self) -> Any:
        """
        On explicit ports the proxy forwards a SIPp call (INVITE, 180, 200,
        ACK, BYE, 200) and stops cleanly on SIGTERM.
        """
        proc, port = yield self.start_proxy("--trace")
        yield self.call_through(port)
        out = self.assert_clean_stop(proc)
        # --trace logged the forwarded INVITE and BYE.
        self.assertIn("INVITE sip:service@127.0.0.1", out)
        self.assertIn("BYE sip:", out)
        self.assertTrue(port_free(port))
        # Each listener said where it listens, in one line.
        for proto in ("udp", "tcp"):
            self.assertIn(f"] listening on {proto}:127.0.0.1:{port}\n", out)

    @defer.inlineCallbacks
    def test_sigterm_idle(self) -> Any:
        """
        A proxy that never saw a packet stops cleanly on SIGTERM and frees
        its ports.
        """
        proc, port = yield self.start_proxy()
        self.assert_clean_stop(proc)
        self.assertTrue(port_free(port))

    @defer.inlineCallbacks
    def test_route_url(self) -> Any:
        """
        With C{--route-url} a SIPp call goes through as the web service
        (answering "continue") says; only its INVITE asked (the ACK and
        BYE are in-dialog).
        """
        web = HookServer(self)
        proc, port = yield self.start_proxy("--route-url", web.url)
        yield self.call_through(port)
        self.assertEqual([summary["method"] for summary, _ in web.calls], ["INVITE"])
        self.assert_clean_stop(proc)

    @defer.inlineCallbacks
    def test_default(self) -> Any:
        """
        Without C{--listen} the proxy binds udp and tcp 127.0.0.1:5060 and
        forwards a call; only run when that port is free.
        """
        if not port_free(DEFAULT_PORT):
            raise unittest.SkipTest(
                f"127.0.0.1:{DEFAULT_PORT} (udp or tcp) is in use here; "
                "cannot test the default listen address"
            )
        proc = self.start_twistd("sipproxy")
        if not (yield self.wait_listening(proc, DEFAULT_PORT)):
            err = self.output()[1]
            if "in use" in err:
                # Another process took the port after the check above.
                raise unittest.SkipTest(f"127.0.0.1:{DEFAULT_PORT} was taken meanwhile: {err.strip()}")
            self.fail(f"twistd sipproxy exited {proc.returncode}: {err!r}")
        yield self.call_through(DEFAULT_PORT)
        self.assert_clean_stop(proc)
