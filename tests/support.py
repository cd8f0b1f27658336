"""
Helpers shared by the test modules: receivers that record what they get,
a raw TCP client, minimal framed requests, the proxy's log lines as twistd
writes them and the fail2ban filter that reads them, the status page
fetched and its metrics parsed.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

import sipleg
from sipleg.address import Address


class Collector:
    """
    A receiver that records what it gets and can be waited on.
    """

    def __init__(self) -> None:
        self.received: list[tuple[bytes, Address, object]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def __call__(self, data: bytes, source: Address, conn: object) -> None:
        self.received.append((data, source, conn))
        ready = [w for w in self._waiters if w[0] <= len(self.received)]
        self._waiters = [w for w in self._waiters if w[0] > len(self.received)]
        for _, waiter in ready:
            waiter.callback(None)

    def wait(self, count: int) -> Deferred[None]:
        """
        @return: a L{Deferred} firing once C{count} items were received.
        """
        if len(self.received) >= count:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((count, waiter))
        return waiter


@defer.inlineCallbacks
def listening_leg(test: Any, proto: str, receiver: Any = None) -> Any:
    """
    A L{sipleg.leg.Leg} listening on 127.0.0.1 (a free port), stopped at
    C{test}'s cleanup.

    @return: a L{Deferred} firing with the leg.
    """
    from sipleg.leg import Leg

    leg = Leg(port=0, proto=proto, receiver=receiver)
    yield leg.listen()
    test.addCleanup(leg.stop)
    return leg


def sip(body: bytes = b"", method: bytes = b"OPTIONS") -> bytes:
    """
    A minimal framed SIP request.
    """
    return (
        method + b" sip:bob@example.com SIP/2.0\r\n"
        b"Call-ID: c1\r\nCSeq: 1 " + method + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def register(n: int, port: int, expires: int = 3600) -> bytes:
    """
    A REGISTER over UDP for user C{u<n>@example.test}, its contact on
    127.0.0.1:C{port}.
    """
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-r{n}\r\n"
        f"From: <sip:u{n}@example.test>;tag=t{n}\r\nTo: <sip:u{n}@example.test>\r\n"
        f"Call-ID: reg-{n}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:u{n}@127.0.0.1:{port}>;expires={expires}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def options(uri: str, n: int, port: int) -> bytes:
    """
    An OPTIONS over UDP for C{uri}, from 127.0.0.1:C{port} (transaction
    and call C{n}).
    """
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-o{n}\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=o{n}\r\nTo: <{uri}>\r\n"
        f"Call-ID: probe-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class RawClient(Protocol):
    """
    A plain TCP client that records what it receives.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for expected, waiter in list(self._waiters):
            if expected in self.data:
                self._waiters.remove((expected, waiter))
                waiter.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def wait_for(self, expected: bytes) -> Deferred[None]:
        if expected in self.data:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((expected, waiter))
        return waiter


async def eventually(check: Any, seconds: float = 10.0) -> None:
    """
    Wait until C{check()} is true (bounded).
    """
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.02, lambda: None)


#: Seconds a status page may take to show what was sent (bounded polling).
STATUS_WAIT = 10.0


@defer.inlineCallbacks
def fetch(url: str, accept: str | None = None) -> Any:
    """
    GET C{url} (with C{Accept: accept}) on a fresh connection.

    @return: fires with the response and its body.
    """
    headers = {} if accept is None else {"Accept": [accept]}
    response = yield treq.get(url, headers=headers, pool=HTTPConnectionPool(reactor, persistent=False))
    body = yield treq.content(response)
    return response, body


@defer.inlineCallbacks
def poll_status(base: str, ready: Any, wait: float = STATUS_WAIT) -> Any:
    """
    Fetch C{base + "/status.json"} until C{ready(status)} holds (every
    0.05 s, at most C{wait} seconds; a refused connection is retried).

    @return: fires with that status.
    @raise AssertionError: it never held.
    """
    deadline = time.monotonic() + wait
    status = None
    while True:
        try:
            _, body = yield fetch(base + "/status.json")
        except ConnectError:
            # A child process still starting.
            pass
        else:
            status = json.loads(body)
            if ready(status):
                return status
        if time.monotonic() > deadline:
            raise AssertionError(f"status never got there: {status}")
        yield deferLater(reactor, 0.05, lambda: None)


def metric_values(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    The samples of a C{/metrics} body, parsed by C{prometheus_client}:
    C{(name, sorted labels)} to value.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


#: The directory holding the C{sipleg} package and C{twisted/plugins}.
SOURCE_ROOT = Path(sipleg.__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """
    Our environment with L{SOURCE_ROOT} first on C{PYTHONPATH}: a child
    process (C{twistd sipproxy}, C{python3 -m sipleg...}) runs this tree.
    """
    env = dict(os.environ)
    paths = [str(SOURCE_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def twistd_argv(*args: str) -> list[str]:
    """
    The command line of C{twistd -n [args]} for this Python, without a
    pid file (so several can run at once and nothing is left behind).
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        *args,
    ]


def run_twistd(cwd: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd -n args} in C{cwd} to its end (at most C{timeout}
    seconds), its output captured as text.
    """
    return subprocess.run(
        twistd_argv(*args),
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_twistd(test: Any, cwd: Path, log: Path, *args: str, stop_timeout: float = 10.0) -> Any:
    """
    Start C{twistd -n args} in C{cwd}, its stdout and stderr both written
    to C{log}; at C{test}'s cleanup it gets SIGTERM, and is killed if it has
    not ended C{stop_timeout} seconds later.

    @return: the C{subprocess.Popen}.
    """
    import signal

    with log.open("wb") as out:
        proc = subprocess.Popen(
            twistd_argv(*args),
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(stop_timeout)

    test.addCleanup(stop)
    return proc


#: The fail2ban filter shipped in docs/.
FAIL2BAN_FILTER = Path(__file__).resolve().parent.parent / "docs" / "fail2ban" / "sipleg.conf"


def fail2ban_patterns() -> list[re.Pattern[str]]:
    """
    The filter's C{failregex} lines, with C{<HOST>} as the group C{host}.
    """
    text = FAIL2BAN_FILTER.read_text()
    block = re.search(r"^failregex = (.*?)\n(?=\S)", text, re.M | re.S)
    assert block is not None
    return [
        re.compile(line.strip().replace("<HOST>", r"(?P<host>\S+)"))
        for line in block.group(1).splitlines()
        if line.strip()
    ]


def proxy_log_lines(test: Any, namespace: str = "sipleg.proxy") -> list[str]:
    """
    Record the log lines of L{sipleg.proxy} (or another module's
    C{namespace}) as twistd writes them to its log file, until C{test}
    ends.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == namespace:
            lines.append(
                f"2026-12-02T15:50:01+0000 [{namespace}#{event['log_level'].name}] {formatEvent(event)}"
            )

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def stored_bindings(path: str) -> list[tuple[str, str]]:
    """
    The address of record and contact of every binding in a registrations
    database (L{sipleg.store.SQLiteStore}), in registration order.
    """
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT aor, contact FROM bindings ORDER BY ord"))


class RedisServer:
    """
    Debian's C{redis-server}, started on a free loopback port with its own
    temporary directory (never a system service), its data kept in an
    append-only file so a restart finds it.  Missing C{redis-server}
    fails the test when C{SIPLEG_REQUIRE_PEERS=1} (CI), else skips it.
    """

    def __init__(self, test: Any) -> None:
        import shutil
        import socket
        import tempfile

        from tests.interop.peers import insist

        insist(
            () if shutil.which("redis-server") else ("redis-server (Debian package redis-server)",),
            "Redis tests need",
        )
        self.folder = tempfile.mkdtemp(prefix="sipleg-redis-")
        test.addCleanup(shutil.rmtree, self.folder, True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        test.addCleanup(self.stop)
        self.start()

    def start(self) -> None:
        """
        Start the server; return once it accepts connections.
        """
        import socket
        import time

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder,
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def command(self, *words: str) -> bytes:
        """
        One command over a plain socket; the raw reply.
        """
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            parts = [f"*{len(words)}\r\n".encode()]
            for word in words:
                data = word.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            sock.sendall(b"".join(parts))
            return sock.recv(65536)


class HookServer:
    """
    A routing hook web service (C{--route-url}) on 127.0.0.1, in the test
    process: it records every call (the JSON summary and the client's
    port, so a reused connection shows) and answers with L{respond}, or
    holds the call in L{held} while L{respond} is L{None}.  Everything is
    closed at the test's cleanup.

    @ivar calls: C{(summary, client port)} of every call, in order.
    @ivar respond: the answer to a summary: C{(HTTP status, body)}.
    """

    def __init__(self, test: Any) -> None:
        import json

        from twisted.internet import reactor
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET, Site

        self.calls: list[tuple[dict[str, Any], int]] = []
        self.respond: Any = lambda summary: (200, b'{"action": "continue"}')
        self.held: list[Any] = []
        self._lost: list[Deferred[None]] = []
        self._transports: list[Any] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []
        server = self

        class Route(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                summary = json.loads(request.content.read())
                server.calls.append((summary, request.getClientAddress().port))
                for waiter in [w for w in server._waiters if w[0] <= len(server.calls)]:
                    server._waiters.remove(waiter)
                    waiter[1].callback(None)
                if server.respond is None:
                    server.held.append(request)
                    return NOT_DONE_YET
                code, body = server.respond(summary)
                request.setResponseCode(code)
                request.setHeader(b"content-type", b"application/json")
                return body

        class RecordingSite(Site):
            def buildProtocol(self, addr: Any) -> Any:
                protocol = super().buildProtocol(addr)
                lost: Deferred[None] = Deferred()
                server._lost.append(lost)
                original = protocol.connectionLost
                made = protocol.makeConnection

                def makeConnection(transport: Any) -> None:
                    server._transports.append(transport)
                    made(transport)

                def connectionLost(reason: Failure) -> None:
                    original(reason)
                    lost.callback(None)

                protocol.makeConnection = makeConnection
                protocol.connectionLost = connectionLost
                return protocol

        self._port = reactor.listenTCP(0, RecordingSite(Route()), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/route"
        test.addCleanup(self.close)

    @property
    def connections(self) -> int:
        """
        How many TCP connections clients opened.
        """
        return len(self._transports)

    def wait(self, count: int) -> Deferred[None]:
        """
        @return: a L{Deferred} firing once C{count} calls came.
        """
        if len(self.calls) >= count:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((count, waiter))
        return waiter

    def release(self, code: int, body: bytes) -> None:
        """
        Answer every held call.
        """
        held, self.held = self.held, []
        for request in held:
            if not request._disconnected:
                request.setResponseCode(code)
                request.write(body)
                request.finish()

    @defer.inlineCallbacks
    def close(self) -> Any:
        for transport, lost in zip(self._transports, self._lost, strict=True):
            if not lost.called:
                transport.abortConnection()
        yield defer.gatherResults(self._lost)
        yield self._port.stopListening()


class WebSocketClient:
    """
    An RFC 7118 client made of autobahn's Twisted client (imported when
    one is made): records the messages it receives and can be waited on.

    @ivar messages: the messages received, in order.
    @ivar opened: fires with the agreed subprotocol once the handshake is
        done.
    @ivar closed: fires with C{(was_clean, code)} once the connection is
        gone.
    @ivar protocol: the autobahn protocol (C{sendMessage}, C{sendClose}).
    """

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.opened: Deferred[str | None] = Deferred()
        self.closed: Deferred[tuple[bool, int | None]] = Deferred()
        self.protocol: Any = None
        self.pings = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def received(self, payload: bytes) -> None:
        self.messages.append(payload)
        ready = [w for w in self._waiters if w[0] <= len(self.messages)]
        self._waiters = [w for w in self._waiters if w[0] > len(self.messages)]
        for _, waiter in ready:
            waiter.callback(None)

    def wait(self, count: int) -> Deferred[None]:
        """
        @return: a L{Deferred} firing once C{count} messages were received.
        """
        if len(self.messages) >= count:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((count, waiter))
        return waiter

    def send(self, data: bytes) -> None:
        self.protocol.sendMessage(data, isBinary=False)


def websocket_client(
    test: Any,
    address: Address,
    protocols: tuple[str, ...] = ("sip",),
    ca: bytes | None = None,
    pong: bool = True,
) -> Deferred[WebSocketClient]:
    """
    Connect a L{WebSocketClient} to C{ws://address} (C{wss://} with
    C{ca}, the PEM CA certificate that signed the server's), aborted at
    C{test}'s cleanup.

    @param protocols: the subprotocols offered.
    @param pong: whether pings are answered.
    @return: a L{Deferred} firing with the client once TCP (and TLS) is
        connected; wait on its C{opened} for the handshake.
    """
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

    client = WebSocketClient()

    class Protocol(WebSocketClientProtocol):  # type: ignore[misc]
        def onOpen(self) -> None:
            client.opened.callback(self.websocket_protocol_in_use)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            client.received(payload)

        def onPing(self, payload: bytes) -> None:
            client.pings += 1
            if pong:
                self.sendPong(payload)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            if not client.opened.called:
                client.opened.errback(ConnectError(f"handshake failed: {reason}"))
            if not client.closed.called:
                client.closed.callback((wasClean, code))

    scheme = "ws" if ca is None else "wss"
    factory = WebSocketClientFactory(f"{scheme}://{address.hostport}", protocols=list(protocols))
    factory.protocol = Protocol
    endpoint: Any = TCP4ClientEndpoint(reactor, address.addr, address.port)
    if ca is not None:
        from sipleg.transport.tls import TLSConfig

        endpoint = wrapClientTLS(TLSConfig(None, None, ca=ca).client_options(address.addr), endpoint)

    def connected(protocol: Any) -> WebSocketClient:
        client.protocol = protocol
        test.addCleanup(lambda: protocol.transport.abortConnection() if protocol.transport else None)
        return client

    return endpoint.connect(factory).addCallback(connected)
