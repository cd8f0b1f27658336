"""
Tests for C{--config FILE} (L{sipleg.configfile}, L{sipleg.tap}) and the
reload without restart (L{sipleg.reload}): the file's options and their
errors, what a reload applies or refuses in a running proxy, and
C{twistd sipproxy --config FILE} reloading on SIGHUP as an operator runs
it, with calls and connections in progress.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from sipleg.address import Address
from sipleg.auth import AuthConfig, AuthSettings
from sipleg.errors import ConfigError
from sipleg.reload import ReloadOnSignal, diff_config
from sipleg.service import ProxyConfig, make_service, parse_listen
from sipleg.tap import Options, load_config
from sipleg.uri import parse_uri
from tests.certs import CertificateAuthority
from tests.interop.peers import free_port
from tests.support import run_twistd, spawn_twistd

#: Seconds a blocking socket operation of the process tests may take.
IO_TIMEOUT = 5.0
#: Seconds C{twistd} may take to start listening, or to log a reload.
READY_TIMEOUT = 10.0
#: Seconds between two looks at the child while waiting.
POLL = 0.05
#: Seconds a C{twistd} child may run before it is killed.
CHILD_TIMEOUT = 40.0

#: User file lines (any 32 hex digits are an MD5 HA1).
ALICE = "alice:example.test:" + "a" * 32 + "\n"
BOB = "bob:example.test:" + "b" * 32 + "\n"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class ConfigFileTests(unittest.TestCase):
    """
    The options of a C{--config} file, and its errors.
    """

    def config_file(self, text: str) -> str:
        directory = Path(self.mktemp())
        directory.mkdir()
        return write(directory / "sipproxy.toml", text)

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parse(argv)
        return options

    def refused(self, text: str, *argv: str) -> str:
        path = self.config_file(text)
        error = self.assertRaises(ConfigError, self.parse, "--config", path, *argv)
        message = str(error)
        self.assertIn(path, message)
        self.assertNotIn("\n", message)
        return message

    def test_options(self) -> None:
        """
        Each kind of option: lists, a table of routes, numbers, flags.
        """
        path = self.config_file(
            'listen = ["udp:127.0.0.1:5070"]\n'
            'domain = ["Example.test"]\n'
            'route = { "example.org" = "sip:10.0.0.7", "*" = "sip:10.0.0.1" }\n'
            'allow = ["10.0.0.0/8"]\n'
            "max-forwards = 20\n"
            "ban-time = 3\n"
            "registrar = true\n"
            "trace = false\n"
        )
        options = self.parse("--config", path)
        config = options.config()
        self.assertEqual(config.listen, [parse_listen("udp:127.0.0.1:5070")])
        self.assertEqual(config.domains, ["example.test"])
        self.assertEqual(
            config.routes, {"example.org": parse_uri("sip:10.0.0.7"), "*": parse_uri("sip:10.0.0.1")}
        )
        self.assertEqual(config.allow, ["10.0.0.0/8"])
        self.assertEqual(config.max_forwards, 20)
        self.assertEqual(options["ban-time"], 3.0)
        self.assertTrue(config.registrar)
        self.assertFalse(config.trace)

    def test_command_line_overrides(self) -> None:
        """
        An option on the command line replaces the file's: a repeatable
        one its whole list, wherever C{--config} stands.
        """
        path = self.config_file(
            'allow = ["10.0.0.0/8", "10.1.0.0/16"]\nmax-forwards = 20\ndomain = ["a.test"]\n'
        )
        config = self.parse("--allow", "192.168.0.0/16", "--config", path, "--max-forwards=30").config()
        self.assertEqual(config.allow, ["192.168.0.0/16"])
        self.assertEqual(config.max_forwards, 30)
        self.assertEqual(config.domains, ["a.test"])

    def test_unknown_key(self) -> None:
        self.assertIn("unknown option 'alow'", self.refused('alow = ["10.0.0.0/8"]\n'))
        # --config itself is not an option of the file.
        self.assertIn("unknown option 'config'", self.refused('config = "other.toml"\n'))

    def test_wrong_types(self) -> None:
        self.assertIn("'max-forwards' must be an integer", self.refused('max-forwards = "20"\n'))
        self.assertIn("'max-forwards' must be an integer", self.refused("max-forwards = true\n"))
        self.assertIn("'ban-time' must be a number", self.refused('ban-time = "3"\n'))
        self.assertIn("'registrar' must be true or false", self.refused("registrar = 1\n"))
        self.assertIn("'allow' must be a list of strings", self.refused('allow = "10.0.0.0/8"\n'))
        self.assertIn("'listen' must be a list of strings", self.refused("listen = [5060]\n"))
        self.assertIn("'route' must be a table of strings", self.refused('route = ["a=sip:b"]\n'))
        self.assertIn("'tls-cert' must be a string", self.refused("tls-cert = 1\n"))

    def test_bad_value_named_with_file(self) -> None:
        """
        A value the option refuses is named with the file it came from.
        """
        message = self.refused('allow = ["not-a-network"]\n')
        self.assertIn("--allow 'not-a-network'", message)
        self.assertIn("--route 'x=': expected DOMAIN=SIPURI", self.refused('route = { "x" = "" }\n'))

    def test_not_toml(self) -> None:
        self.assertIn("not TOML", self.refused("max-forwards = \n"))

    def test_missing_file(self) -> None:
        message = str(self.assertRaises(ConfigError, self.parse, "--config", "/nonexistent/sip.toml"))
        self.assertEqual(message, "--config /nonexistent/sip.toml: No such file or directory")

    def test_readme_example(self) -> None:
        """
        The README's example file is a valid configuration.
        """
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
        config = self.parse("--config", self.config_file(example)).config()
        self.assertEqual(config.domains, ["example.test"])
        self.assertEqual(config.routes["*"], parse_uri("sip:10.0.0.1"))
        self.assertEqual(len(config.listen), 3)

    def test_load_config(self) -> None:
        """
        L{load_config} reads the file again: what a reload applies.
        """
        path = self.config_file('domain = ["a.test"]\n')
        argv = ["--config", path, "--max-forwards", "9"]
        self.assertEqual(load_config(argv).domains, ["a.test"])
        write(Path(path), 'domain = ["b.test"]\nmax-forwards = 50\n')
        config = load_config(argv)
        self.assertEqual((config.domains, config.max_forwards), (["b.test"], 9))


class DiffConfigTests(unittest.TestCase):
    def test_reloaded_and_restart(self) -> None:
        old = ProxyConfig(domains=["a.test"])
        new = ProxyConfig(
            domains=["b.test"],
            allow=["10.0.0.0/8"],
            listen=[parse_listen("udp:127.0.0.1:5070")],
            max_forwards=9,
        )
        self.assertEqual(diff_config(old, new), (["domains", "allow"], ["listen", "max_forwards"]))
        self.assertEqual(diff_config(old, old), ([], []))

    def test_auth(self) -> None:
        """
        Another user file or realm reloads; turning authentication on or
        off, or another nonce secret, needs a restart.
        """
        one = AuthSettings("users", AuthConfig("a.test"))
        other = AuthSettings("other", AuthConfig("b.test"))
        secret = AuthSettings("users", AuthConfig("a.test"), "secret")
        self.assertEqual(diff_config(ProxyConfig(auth=one), ProxyConfig(auth=other)), (["auth"], []))
        self.assertEqual(diff_config(ProxyConfig(), ProxyConfig(auth=one)), ([], ["auth"]))
        self.assertEqual(diff_config(ProxyConfig(auth=one), ProxyConfig(auth=secret)), ([], ["auth"]))


class ReloadTests(unittest.TestCase):
    """
    A reload of a proxy built by L{make_service}, running in this process.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.next_config: ProxyConfig | Exception = ConfigError("no configuration")

    def start(self, config: ProxyConfig) -> ReloadOnSignal:
        service = make_service(config, reload_with=self.load)
        service.startService()
        self.addCleanup(service.stopService)
        return next(child for child in service if isinstance(child, ReloadOnSignal))

    def load(self) -> ProxyConfig:
        if isinstance(self.next_config, Exception):
            raise self.next_config
        return self.next_config

    @inlineCallbacks
    def reload(self, reloader: ReloadOnSignal, config: ProxyConfig | Exception) -> Any:
        """
        Reload with C{config}; the log lines it wrote.
        """
        self.next_config = config
        with capturedLogs() as events:
            yield reloader.reload()
        return [formatEvent(event) for event in events if event["log_namespace"] == "sipleg.reload"]

    @inlineCallbacks
    def test_route_hook_replaced(self) -> Any:
        """
        A new C{--route-url} (or timeout) gives the proxy a new hook
        client, asked by the next request; none turns the hook off.
        """
        from sipleg.routehook import HookConfig

        listen = [parse_listen("udp:127.0.0.1:0")]
        first = HookConfig("http://127.0.0.1:9/first")
        reloader = self.start(ProxyConfig(listen=listen, route_hook=first))
        proxy = reloader.live.proxy
        old = proxy.route_hook
        assert old is not None
        self.assertEqual(old.config, first)
        second = HookConfig("http://127.0.0.1:9/second", timeout=0.5)
        lines = yield self.reload(reloader, ProxyConfig(listen=listen, route_hook=second))
        self.assertEqual(lines, ["reloaded the configuration; changed: route-url"])
        assert proxy.route_hook is not None
        self.assertIsNot(proxy.route_hook, old)
        self.assertEqual(proxy.route_hook.config, second)
        lines = yield self.reload(reloader, ProxyConfig(listen=listen))
        self.assertEqual(lines, ["reloaded the configuration; changed: route-url"])
        self.assertIsNone(proxy.route_hook)

    @inlineCallbacks
    def test_policies_swapped(self) -> Any:
        """
        Routes, trusted networks and domains reach the access policy, the
        routes and the registrar; the sockets stay.
        """
        listen = [parse_listen("udp:127.0.0.1:0")]
        old = ProxyConfig(listen=listen, domains=["a.test"], registrar=True)
        reloader = self.start(old)
        live = reloader.live
        legs = list(live.proxy.dispatcher.legs)
        here = Address("10.1.2.3", 5060, "udp")
        self.assertFalse(live.proxy.access.trusts(here))
        new = ProxyConfig(
            listen=listen,
            domains=["b.test"],
            registrar=True,
            allow=["10.0.0.0/8"],
            routes={"example.org": parse_uri("sip:10.0.0.7")},
        )
        lines = yield self.reload(reloader, new)
        self.assertEqual(lines, ["reloaded the configuration; changed: domain, route, allow"])
        self.assertTrue(live.proxy.access.trusts(here))
        self.assertEqual(
            live.proxy.routes.next_hop(parse_uri("sip:x@example.org")), parse_uri("sip:10.0.0.7")
        )
        assert live.registrar is not None
        self.assertEqual(live.registrar.table.domains, frozenset({"b.test"}))
        self.assertIs(live.proxy.rules.access, live.proxy.access)
        self.assertEqual(list(live.proxy.dispatcher.legs), legs)
        self.assertEqual(live.config, new)

    @inlineCallbacks
    def test_bad_configuration_keeps_old(self) -> Any:
        """
        A configuration that cannot be used changes nothing and is
        reported in one line.
        """
        reloader = self.start(ProxyConfig(listen=[parse_listen("udp:127.0.0.1:0")], domains=["a.test"]))
        live = reloader.live
        access, routes, config = live.proxy.access, live.proxy.routes, live.config
        lines = yield self.reload(reloader, ConfigError("--config x.toml: unknown option 'alow'"))
        self.assertEqual(
            lines,
            ["reload refused, keeping the running configuration: --config x.toml: unknown option 'alow'"],
        )
        lines = yield self.reload(reloader, ProxyConfig(listen=config.listen, allow=["10.0.0.0/33"]))
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("reload refused, keeping the running configuration: --allow:"))
        self.assertIs(live.proxy.access, access)
        self.assertIs(live.proxy.routes, routes)
        self.assertIs(live.config, config)

    @inlineCallbacks
    def test_restart_needed(self) -> Any:
        """
        What needs a restart is named in one line and not applied; the
        rest is.
        """
        listen = [parse_listen("udp:127.0.0.1:0")]
        reloader = self.start(ProxyConfig(listen=listen))
        new = ProxyConfig(listen=[parse_listen("tcp:127.0.0.1:0")], allow=["10.0.0.0/8"], trace=True)
        lines = yield self.reload(reloader, new)
        self.assertEqual(
            lines,
            ["reloaded the configuration; changed: allow", "not applied until a restart: listen, trace"],
        )
        self.assertEqual(reloader.live.config.listen, listen)
        self.assertFalse(reloader.live.config.trace)
        self.assertEqual(reloader.live.config.allow, ["10.0.0.0/8"])

    @inlineCallbacks
    def test_user_file(self) -> Any:
        """
        The user file is read again (another file may be named); a bad one
        is refused, the users kept.
        """
        users = write(self.dir / "users", ALICE)
        listen = [parse_listen("udp:127.0.0.1:0")]
        settings = AuthSettings(users, AuthConfig("example.test"))
        reloader = self.start(ProxyConfig(listen=listen, domains=["example.test"], auth=settings))
        live = reloader.live
        assert live.users is not None
        self.assertEqual(set(live.users.users), {("alice", "example.test")})
        other = write(self.dir / "other", BOB)
        moved = ProxyConfig(
            listen=listen, domains=["example.test"], auth=AuthSettings(other, AuthConfig("example.test"))
        )
        lines = yield self.reload(reloader, moved)
        self.assertEqual(lines, ["reloaded the configuration; changed: auth-file"])
        self.assertEqual(set(live.users.users), {("bob", "example.test")})
        self.assertEqual(live.users.path, other)
        write(self.dir / "other", "bob:example.test:nothex\n")
        lines = yield self.reload(reloader, moved)
        self.assertEqual(len(lines), 1)
        self.assertIn(f"reload refused, keeping the running configuration: {other}:1:", lines[0])
        self.assertEqual(set(live.users.users), {("bob", "example.test")})

    @inlineCallbacks
    def test_tls(self) -> Any:
        """
        The TLS listener takes a new certificate; a key that is not the
        certificate's is refused, naming the files.
        """
        ca = CertificateAuthority()
        first, second = ca.issue("first"), ca.issue("second")
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        cert.write_bytes(first.cert)
        key.write_bytes(first.key)
        config = ProxyConfig(listen=[parse_listen("tls:127.0.0.1:0")], tls_cert=str(cert), tls_key=str(key))
        reloader = self.start(config)
        live = reloader.live
        pool: Any = live.proxy.dispatcher.legs[0].socketpool
        cert.write_bytes(second.cert)
        key.write_bytes(second.key)
        lines = yield self.reload(reloader, config)
        self.assertEqual(lines, ["reloaded the configuration; changed: tls-cert"])
        self.assertIs(pool.tls, live.tls)
        assert live.tls is not None and live.tls.certificate is not None
        self.assertEqual(common_name(live.tls.certificate), "second")
        key.write_bytes(first.key)
        lines = yield self.reload(reloader, config)
        self.assertEqual(len(lines), 1)
        self.assertIn(f"the private key {key} is not the key of the certificate {cert}", lines[0])
        self.assertEqual(common_name(pool.tls.certificate), "second")


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def options(call_id: str, via: str, target: str = "sip:bob@example.org") -> bytes:
    """
    An OPTIONS request for C{target}, sent from the transport and address
    of C{via} (C{"TCP 127.0.0.1:5555"}).
    """
    return (
        f"OPTIONS {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/{via};branch=z9hG4bK{call_id}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@client.test>;tag=1\r\n"
        f"To: <{target}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def via_of(sock: socket.socket, proto: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"{proto} {host}:{port}"


class ProxyProcessTests(unittest.TestCase):
    """
    C{twistd sipproxy --config FILE} in a child process, reloaded with
    SIGHUP while connections stay open.
    """

    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.config = self.dir / "sipproxy.toml"
        # Next hops: UDP sockets of ours the proxy forwards to.
        self.hops = [self.udp_socket() for _ in range(2)]

    def udp_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(IO_TIMEOUT)
        return sock

    def hop_uri(self, index: int) -> str:
        return f"sip:127.0.0.1:{self.hops[index].getsockname()[1]}"

    def start(self, port: int, *args: str, processes: int = 1) -> subprocess.Popen[bytes]:
        """
        Start C{twistd -n sipproxy --config FILE args}; wait until its
        C{processes} stream listeners on C{port} are up.
        """
        self.log = self.dir / "twistd.log"
        proc = spawn_twistd(
            self, self.dir, self.log, "sipproxy", "--config", str(self.config), *args, stop_timeout=IO_TIMEOUT
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while (
            self.output().count(f"Factory starting on {port}")
            + self.output().count(f"Factory (TLS) starting on {port}")
            < processes
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail(f"twistd did not start:\n{self.output()}")
            time.sleep(POLL)
        return proc

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")

    def sighup(self, proc: subprocess.Popen[bytes], expected: str, count: int = 1) -> list[str]:
        """
        SIGHUP C{proc} and wait for C{count} next log lines containing
        C{expected}.

        @return: the reload's log lines.
        """
        before = self.output().count("sipleg.reload")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            lines = [line for line in self.output().splitlines() if "sipleg.reload" in line][before:]
            if sum(expected in line for line in lines) >= count:
                return lines
            if time.monotonic() > deadline:
                self.fail(f"no {expected!r} after SIGHUP:\n{self.output()}")
            time.sleep(POLL)

    def received(self, index: int, call_id: str) -> None:
        """
        Next hop C{index} gets the request of C{call_id}.
        """
        data, _ = self.hops[index].recvfrom(65535)
        self.assertIn(f"Call-ID: {call_id}\r\n".encode(), data)

    def answer(self, conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65535)
            if not chunk:
                self.fail(f"connection closed; got {data!r}")
            data += chunk
        return data

    def test_routes_and_allow(self) -> None:
        """
        A new route and new trusted networks apply to the next request on
        a TCP connection opened before the reload; a bad file is refused
        in one line and the proxy goes on as before.
        """
        port = free_port("tcp")
        listen = f'listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\n'
        write(self.config, listen + f'route = {{ "example.org" = "{self.hop_uri(0)}" }}\n')
        proc = self.start(port)
        conn = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
        self.addCleanup(conn.close)
        via = via_of(conn, "TCP")
        conn.sendall(options("before", via))
        self.received(0, "before")

        write(self.config, listen + f'route = {{ "example.org" = "{self.hop_uri(1)}" }}\n')
        lines = self.sighup(proc, "reloaded the configuration")
        self.assertIn("changed: route", lines[-1])
        conn.sendall(options("after", via))
        self.received(1, "after")

        write(self.config, listen + 'rute = { "example.org" = "sip:127.0.0.1:9" }\n')
        lines = self.sighup(proc, "reload refused")
        self.assertEqual(len(lines), 1)
        self.assertIn(f"--config {self.config}: unknown option 'rute'", lines[0])
        conn.sendall(options("refused", via))
        self.received(1, "refused")

        # Loopback no longer trusted: a foreign domain is refused.
        write(self.config, listen + 'allow = ["127.0.0.2/32"]\n')
        self.sighup(proc, "reloaded the configuration")
        conn.sendall(options("stranger", via))
        self.assertTrue(self.answer(conn).startswith(b"SIP/2.0 403 "))
        self.assertIsNone(proc.poll())

    def test_tls_certificate(self) -> None:
        """
        After a reload, a new TLS handshake gets the new certificate; a
        connection made before keeps working; a key that does not match
        is refused in one line naming the files.
        """
        ca = CertificateAuthority()
        first, second = ca.issue("first"), ca.issue("second")
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        cert.write_bytes(first.cert)
        key.write_bytes(first.key)
        port = free_port("tcp")
        write(
            self.config,
            f'listen = ["udp:127.0.0.1:{port}", "tls:127.0.0.1:{port}"]\n'
            f'tls-cert = "{cert}"\ntls-key = "{key}"\n'
            f'route = {{ "example.org" = "{self.hop_uri(0)}" }}\n',
        )
        proc = self.start(port)
        old, name = self.tls_connect(port)
        self.assertEqual(name, "first")

        cert.write_bytes(second.cert)
        key.write_bytes(second.key)
        lines = self.sighup(proc, "reloaded the configuration")
        self.assertIn("changed: tls-cert", lines[-1])
        _, name = self.tls_connect(port)
        self.assertEqual(name, "second")
        old.sendall(options("old-connection", via_of(old, "TLS")))
        self.received(0, "old-connection")

        key.write_bytes(first.key)
        lines = self.sighup(proc, "reload refused")
        self.assertEqual(len(lines), 1)
        self.assertIn(f"the private key {key} is not the key of the certificate {cert}", lines[0])
        _, name = self.tls_connect(port)
        self.assertEqual(name, "second")

    def tls_connect(self, port: int) -> tuple[ssl.SSLSocket, str]:
        """
        A TLS connection to the proxy, and the common name of the
        certificate it presented.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
        conn = context.wrap_socket(raw)
        self.addCleanup(conn.close)
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return conn, common_name(x509.load_der_x509_certificate(der))

    def test_bad_file_at_start(self) -> None:
        """
        A bad file at start: exit status 1 and one line naming it.
        """
        write(self.config, "max-forwards = true\n")
        done = run_twistd(self.dir, "sipproxy", "--config", str(self.config), timeout=CHILD_TIMEOUT)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr.strip(), f"sipproxy: --config {self.config}: 'max-forwards' must be an integer"
        )

    def test_workers(self) -> None:
        """
        With C{--workers}, the supervisor passes SIGHUP on and every
        worker reloads.
        """
        port = free_port("tcp")
        listen = f'listen = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\nworkers = 2\n'
        write(self.config, listen + f'route = {{ "example.org" = "{self.hop_uri(0)}" }}\n')
        proc = self.start(port, processes=2)
        write(self.config, listen + f'route = {{ "example.org" = "{self.hop_uri(1)}" }}\n')
        lines = self.sighup(proc, "reloaded the configuration", count=2)
        self.assertEqual(sum("changed: route" in line for line in lines), 2)
        # The kernel spreads connections over the workers: all route anew.
        for attempt in range(8):
            conn = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
            self.addCleanup(conn.close)
            conn.sendall(options(f"worker-{attempt}", via_of(conn, "TCP")))
            self.received(1, f"worker-{attempt}")
