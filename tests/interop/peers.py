"""
Start and judge real SIP peers (SIPp, Perl Net::SIP) from Twisted tests.

Every function returns a L{Deferred}; every child process is spawned with
C{reactor.spawnProcess}, carries its own timeout (SIPp C{-timeout}, an
C{alarm} in the Perl scripts) and is killed with SIGKILL by the harness
C{KILL_GRACE} seconds after that, so no run outlives C{timeout +
KILL_GRACE} seconds (20 s by default).

Servers (a SIPp UAS, a Net::SIP UAS) are started first; the Deferred of
C{start_*} fires once the peer listens, with a handle whose C{result()}
fires with the outcome when the peer exits and whose C{stop()} ends it.
Clients (C{run_*_uac}) fire with their outcome when they exit.

A proxy test is then::

    require_peers()
    uas = yield start_sipp_uas("tcp")
    self.addCleanup(uas.stop)
    uac = yield run_sipp_uac(uas.address, proxy=Address("127.0.0.1", port, "udp"),
                             calls=5, rate=10)
    self.assertTrue(uac.ok, uac.describe())

Loopback only; readiness of a SIPp server is read from C{/proc/net}, so
the harness needs Linux (L{require_peers} checks it).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar
from unittest import SkipTest

from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure

from sipleg.address import Address, ip_family

__all__ = [
    "KILL_GRACE",
    "PEER_TIMEOUT",
    "REGISTER_AUTH_SCENARIO",
    "REGISTRAR_SCENARIO",
    "REQUIRE_ENV",
    "UAC_AUTH_SCENARIO",
    "UAC_SCENARIO",
    "UAS_SCENARIO",
    "NetSipOutcome",
    "NetSipServer",
    "PeerError",
    "SippOutcome",
    "SippServer",
    "free_port",
    "listening",
    "require_peers",
    "run_netsip_uac",
    "run_sipp_uac",
    "start_netsip_uas",
    "start_sipp_uas",
]

_HERE = Path(__file__).resolve().parent
#: SIPp UAC: INVITE to C{-key ruri}, ACK/BYE to the 2xx Contact with Route.
UAC_SCENARIO = _HERE / "scenarios" / "uac.xml"
#: SIPp UAS: 180 and 200 copying Record-Route, ACK required, BYE.
UAS_SCENARIO = _HERE / "scenarios" / "uas.xml"
#: SIPp registrar stub: one REGISTER answered 200 with the binding.
REGISTRAR_SCENARIO = _HERE / "scenarios" / "registrar.xml"
#: SIPp UAC: INVITE from C{-key aor}, 407, ACK, INVITE with credentials
#: (C{auth}), then as L{UAC_SCENARIO}.
UAC_AUTH_SCENARIO = _HERE / "scenarios" / "uac_auth.xml"
#: SIPp registration of C{-key aor} at C{-key ruri}: 401, then the REGISTER
#: with credentials (C{auth}) must get 200.
REGISTER_AUTH_SCENARIO = _HERE / "scenarios" / "register_auth.xml"
_NETSIP_UAC = _HERE / "netsip_uac.pl"
_NETSIP_UAS = _HERE / "netsip_uas.pl"

#: Seconds a peer gives itself before it reports a timeout and exits.
PEER_TIMEOUT = 15
#: Seconds after a peer's own timeout at which the harness SIGKILLs it.
KILL_GRACE = 5.0
#: Seconds a server may take to start listening.
_READY_TIMEOUT = 5.0
#: Seconds between two looks at /proc/net while a SIPp server starts.
_READY_POLL = 0.02
#: Attempts with a fresh port when a peer finds its free port taken.
_PORT_ATTEMPTS = 3
#: Bytes of a SIPp screen output kept for error messages.
_OUTPUT_TAIL = 4096
#: With this environment variable set to 1, missing peers fail tests
#: instead of skipping them (CI sets it).
REQUIRE_ENV = "SIPLEG_REQUIRE_PEERS"

# SIPp exits with -2 when it cannot bind a socket.
_SIPP_BIND_ERROR = 254


class PeerError(Exception):
    """
    A peer could not be run at all (missing, failed to start, port taken):
    a harness problem, as opposed to an outcome that is not C{ok}.
    """


class _PortTaken(PeerError):
    """
    A server could not bind the port it was given.
    """


def free_port(proto: str = "udp", host: str = "127.0.0.1") -> int:
    """
    A port that is free on C{host} for C{proto} right now.

    The port is found by binding port 0 and closing the socket again, so
    it is racy: another process may take it before the peer binds it.  On
    loopback with ephemeral ports that is rare, and a peer that loses the
    race fails to bind and exits at once; the C{start_*}/C{run_*}
    functions then retry with a fresh port (when they chose the port).
    Net::SIP peers need an explicit port anyway: Net::SIP treats port 0 as
    "try 5060 first".

    @param proto: C{"udp"} or C{"tcp"}, or C{"udp+tcp"} for a port free
        for both (a proxy listening on both with one port).
    @param host: the IP literal to bind.
    @return: the port number.
    """
    family = ip_family(host) or socket.AF_INET
    if proto == "udp+tcp":
        for _ in range(100):
            with (
                socket.socket(family, socket.SOCK_DGRAM) as udp,
                socket.socket(family, socket.SOCK_STREAM) as tcp,
            ):
                udp.bind((host, 0))
                port: int = udp.getsockname()[1]
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
        raise OSError(f"no port free for both UDP and TCP on {host}")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return port


@cache
def _missing_peers(sipp: str, perl: str) -> tuple[str, ...]:
    missing = []
    if shutil.which(sipp) is None:
        missing.append(f"{sipp} (Debian package sip-tester)")
    perl_path = shutil.which(perl)
    if perl_path is None:
        missing.append(perl)
    elif not runs([perl_path, "-MNet::SIP", "-MJSON::PP", "-e", "1"]):
        missing.append("perl Net::SIP (Debian package libnet-sip-perl)")
    if not os.path.exists("/proc/net/udp"):
        missing.append("/proc/net (Linux)")
    return tuple(missing)


def require_peers(sipp: str = "sipp", perl: str = "perl") -> None:
    """
    Make sure SIPp and Perl Net::SIP can be run; call it in C{setUp}.

    @param sipp: the SIPp command.
    @param perl: the Perl command.
    @raise SkipTest: a peer is missing and C{SIPLEG_REQUIRE_PEERS} is not
        C{1}.
    @raise PeerError: a peer is missing and C{SIPLEG_REQUIRE_PEERS=1}.
    """
    insist(_missing_peers(sipp, perl), "interop peers missing")


def runs(argv: list[str]) -> bool:
    """
    Whether C{argv} runs and exits 0 (quietly, within 20 s).
    """
    done = subprocess.run(
        argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, timeout=20,
    )  # fmt: skip
    return done.returncode == 0


def insist(missing: Sequence[str], what: str) -> None:
    """
    Nothing C{missing}, or the test cannot run: a failure when
    C{SIPLEG_REQUIRE_PEERS=1} (CI), else a skip.

    @param what: what the test lacks, e.g. C{"interop peers missing"}.
    @raise SkipTest: something is missing, outside CI.
    @raise PeerError: something is missing, in CI.
    """
    if not missing:
        return
    text = f"{what}: " + ", ".join(missing)
    if os.environ.get(REQUIRE_ENV) == "1":
        raise PeerError(f"{text} ({REQUIRE_ENV}=1)")
    raise SkipTest(text)


def _uri(user: str, address: Address) -> str:
    """
    The SIP URI of a peer: C{;transport=} only for non-UDP, since a URI
    without it means UDP (RFC 3263 §4.1 for an IP literal with a port).
    """
    uri = f"sip:{user}@{address.hostport}"
    return uri if address.proto == "udp" else f"{uri};transport={address.proto}"


_O = TypeVar("_O")


class _Outcome:
    """
    A value that arrives once and that several callers may wait for.
    """

    def __init__(self) -> None:
        self._value: Any = None
        self._known = False
        self._waiting: list[defer.Deferred[Any]] = []

    def fire(self, value: Any) -> None:
        self._value, self._known = value, True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value)

    def wait(self) -> defer.Deferred[Any]:
        if self._known:
            return defer.succeed(self._value)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(d)
        return d


class _PeerProcess(protocol.ProcessProtocol):
    """
    One child process: collects its output and SIGKILLs it after
    C{hard_timeout} seconds.

    @ivar ended: fires with the exit code, or L{None} when a signal ended
        the process.
    @ivar timed_out: whether the harness had to kill the process.
    @ivar stopped: whether L{stop} was asked to end the process.
    @ivar pid: the process id.
    """

    def __init__(
        self,
        reactor: Any,
        hard_timeout: float,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._hard_timeout = hard_timeout
        self._on_line = on_line
        self._partial = b""
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.running = False
        self.pid = 0
        self.timed_out = False
        self.stopped = False
        self._killer: Any = None

    def connectionMade(self) -> None:
        self.running = True
        transport: Any = self.transport
        self.pid = transport.pid
        transport.closeStdin()
        self._killer = self._reactor.callLater(self._hard_timeout, self._kill)

    def outReceived(self, data: bytes) -> None:
        if self._on_line is None:
            # SIPp redraws its screen: keep only the tail.
            self.stdout += data
            del self.stdout[:-_OUTPUT_TAIL]
            return
        self.stdout += data
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._on_line(line.decode("utf-8", "replace").rstrip("\r"))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def _kill(self) -> None:
        self.timed_out = True
        self.signal("KILL")

    def signal(self, name: str) -> None:
        if self.running:
            transport: Any = self.transport
            try:
                transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    def stop(self) -> None:
        """
        End the process: SIGTERM now, SIGKILL after a second.
        """
        if not self.running:
            return
        self.stopped = True
        self.signal("TERM")
        if self._killer is not None and self._killer.active():
            self._killer.reset(1.0)

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        self.ended.callback(reason.value.exitCode)


def _spawn(
    reactor: Any,
    argv: list[str],
    hard_timeout: float,
    cwd: str | None = None,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> _PeerProcess:
    proc = _PeerProcess(reactor, hard_timeout, on_line)
    executable = shutil.which(argv[0])
    if executable is None:
        raise PeerError(f"{argv[0]} not found")
    reactor.spawnProcess(proc, executable, argv, env={**os.environ, **(env or {})}, path=cwd)
    return proc


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default

        return default
    return reactor


def _delay(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


# ---------------------------------------------------------------- SIPp


@dataclass(frozen=True)
class SippOutcome:
    """
    How a SIPp run ended.

    @ivar exit_code: SIPp's exit code (0 all calls successful, 1 some
        failed, 97 internal exit, 99 no calls, 255 fatal, 254 bind error),
        or L{None} when killed by a signal.
    @ivar successful: successful calls (C{SuccessfulCall(C)} of the stat
        file).
    @ivar failed: failed calls (C{FailedCall(C)}).
    @ivar stats: the last line of SIPp's statistics file, by column.
    @ivar errors: SIPp's error log (unexpected messages, failures).
    @ivar output: the end of SIPp's stdout and stderr.
    @ivar timed_out: the harness had to kill SIPp.
    @ivar stopped: the run was ended by C{stop()}.
    """

    exit_code: int | None
    successful: int
    failed: int
    stats: dict[str, str] = field(repr=False)
    errors: str = field(repr=False)
    output: str = field(repr=False)
    timed_out: bool = False
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """
        Every call SIPp made or took succeeded, and there was at least one.
        """
        return self.exit_code == 0 and not self.timed_out and self.failed == 0 and self.successful > 0

    def describe(self) -> str:
        """
        A summary for assertion messages.
        """
        return (
            f"sipp exit={self.exit_code} successful={self.successful} "
            f"failed={self.failed} timed_out={self.timed_out}\n"
            f"errors:\n{self.errors[-2000:]}\noutput:\n{self.output[-1000:]}"
        )


def _read_stats(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _count(stats: dict[str, str], column: str) -> int:
    value = stats.get(column, "0").strip()
    return int(value) if value.isdigit() else 0


def _sipp_outcome(proc: _PeerProcess, exit_code: int | None, rundir: Path) -> SippOutcome:
    stats = _read_stats(rundir / "stat.csv")
    errors_log = rundir / "errors.log"
    errors = errors_log.read_text("utf-8", "replace") if errors_log.exists() else ""
    shutil.rmtree(rundir, ignore_errors=True)
    return SippOutcome(
        exit_code=exit_code,
        successful=_count(stats, "SuccessfulCall(C)"),
        failed=_count(stats, "FailedCall(C)"),
        stats=stats,
        errors=errors,
        output=(bytes(proc.stdout) + bytes(proc.stderr)).decode("utf-8", "replace"),
        timed_out=proc.timed_out,
        stopped=proc.stopped,
    )


def _fire_sipp(exit_code: int | None, outcome: _Outcome, proc: _PeerProcess, rundir: Path) -> None:
    outcome.fire(_sipp_outcome(proc, exit_code, rundir))


def _sipp_argv(
    scenario: Path,
    proto: str,
    host: str,
    calls: int,
    timeout: int,
    rundir: Path,
) -> list[str]:
    return [
        "sipp",
        "-sf", str(scenario),
        "-t", "t1" if proto == "tcp" else "u1",
        "-i", host,
        "-bind_local",
        "-m", str(calls),
        "-timeout", f"{timeout}s",
        "-timeout_error",
        # A lost message fails its call after 5 s (TCP has no retransmits).
        "-recv_timeout", "5000",
        "-trace_stat", "-stf", str(rundir / "stat.csv"),
        "-trace_err", "-error_file", str(rundir / "errors.log"),
        "-nostdin",
    ]  # fmt: skip


def _sipp_run(reactor: Any, argv: list[str], timeout: int, rundir: Path) -> _PeerProcess:
    return _spawn(reactor, argv, timeout + KILL_GRACE, cwd=str(rundir))


class _PeerServer(Generic[_O]):
    """
    A running peer process that serves calls (a SIPp or Net::SIP UAS).

    @ivar address: where it listens.
    """

    #: The user part of L{uri}.
    user = "service"

    def __init__(self, address: Address, proc: _PeerProcess, outcome: _Outcome) -> None:
        self.address = address
        self._proc = proc
        self._outcome = outcome

    @property
    def uri(self) -> str:
        """
        C{sip:USER@host:port}, with C{;transport=tcp} on TCP.
        """
        return _uri(self.user, self.address)

    def result(self) -> defer.Deferred[_O]:
        """
        @return: fires with the outcome once the process exited.
        """
        return self._outcome.wait()

    def stop(self) -> defer.Deferred[_O]:
        """
        End the process and wait for it.
        """
        self._proc.stop()
        return self.result()


class SippServer(_PeerServer["SippOutcome"]):
    """
    A running SIPp server scenario (by default the UAS), serving
    C{sip:service@...}; it exits after its C{calls} calls, its timeout, or
    L{stop} (it still writes its statistics then).
    """


def _socket_inodes(pid: int) -> set[str]:
    """
    The inodes of the sockets process C{pid} has open (C{/proc/PID/fd}).
    """
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(pid: int, proto: str, port: int) -> bool:
    """
    Whether process C{pid} has a socket bound to C{port}: an unconnected
    UDP socket (state 07) or a listening TCP socket (state 0A) in
    C{/proc/net}, whose inode is one of the process's open sockets and
    not one of ours (so a foreign socket that took the port does not
    count).
    """
    state = "07" if proto == "udp" else "0A"
    # Right after the fork the child still holds copies of our sockets.
    inodes = _socket_inodes(pid) - _socket_inodes(os.getpid())
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            # sl local_address rem_address st ... uid timeout inode
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False


@defer.inlineCallbacks
def _start_sipp_once(
    reactor: Any,
    address: Address,
    calls: int,
    scenario: Path,
    timeout: int,
) -> Any:
    rundir = Path(tempfile.mkdtemp(prefix="sipleg-sipp-"))
    argv = _sipp_argv(scenario, address.proto, address.host, calls, timeout, rundir)
    argv += ["-p", str(address.port)]
    proc = _sipp_run(reactor, argv, timeout, rundir)
    outcome = _Outcome()
    proc.ended.addCallback(_fire_sipp, outcome, proc, rundir)
    for _ in range(int(_READY_TIMEOUT / _READY_POLL)):
        if not proc.running and proc.ended.called:
            failed: SippOutcome = yield outcome.wait()
            error = _PortTaken if failed.exit_code == _SIPP_BIND_ERROR else PeerError
            raise error(f"SIPp server did not start\n{failed.describe()}")
        if listening(proc.pid, address.proto, address.port):
            return SippServer(address, proc, outcome)
        yield _delay(reactor, _READY_POLL)
    proc.stop()
    yield outcome.wait()
    raise PeerError(f"SIPp server not listening on {address} after {_READY_TIMEOUT} s")


@defer.inlineCallbacks
def start_sipp_uas(
    proto: str = "udp",
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    calls: int = 1,
    scenario: Path = UAS_SCENARIO,
    timeout: int = PEER_TIMEOUT,
    reactor: Any = None,
) -> Any:
    """
    Start a SIPp server scenario (C{sipp -sf uas.xml -m calls}).

    It exits after C{calls} calls (then C{result()} fires) or after
    C{timeout} seconds, which counts as an error.

    @param proto: C{"udp"} or C{"tcp"}.
    @param host: the loopback IP to listen on.
    @param port: the port; L{None} picks a free one (retried if taken).
    @param calls: calls to take before exiting.
    @param scenario: the scenario file, e.g. L{REGISTRAR_SCENARIO}.
    @param timeout: SIPp's global timeout in seconds.
    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @return: fires with a L{SippServer} once SIPp listens; errbacks with
        L{PeerError} when it cannot start.
    """
    reactor = _reactor(reactor)
    for attempt in range(_PORT_ATTEMPTS):
        chosen = free_port(proto, host) if port is None else port
        try:
            server = yield _start_sipp_once(reactor, Address(host, chosen, proto), calls, scenario, timeout)
        except _PortTaken:
            if port is not None or attempt == _PORT_ATTEMPTS - 1:
                raise
        else:
            return server


@defer.inlineCallbacks
def run_sipp_uac(
    uas: Address,
    proxy: Address | None = None,
    *,
    calls: int = 1,
    rate: float = 10,
    limit: int | None = None,
    ruri: str | None = None,
    host: str | None = None,
    scenario: Path = UAC_SCENARIO,
    auth: tuple[str, str] | None = None,
    keys: dict[str, str] | None = None,
    timeout: int = PEER_TIMEOUT,
    reactor: Any = None,
) -> Any:
    """
    Run a SIPp UAC making C{calls} calls to the UAS at C{uas}.

    Every packet goes to C{proxy} (SIPp C{-rsa}) while the Request-URI
    names the UAS: C{sip:service@UAS} plus C{;transport=tcp} when the UAS
    is on TCP, so a proxy can route UDP in / TCP out.  ACK and BYE go to
    the 2xx Contact with the recorded route set.

    @param uas: the UAS address; its C{proto} goes into the Request-URI.
    @param proxy: where to send packets; L{None} calls the UAS directly.
        The UAC's transport is C{proxy.proto} (or C{uas.proto}).
    @param calls: number of calls (C{-m}).
    @param rate: calls per second (C{-r}).
    @param limit: most simultaneous calls (C{-l}); SIPp's default if
        L{None}.
    @param ruri: Request-URI (and To) to use instead of the default.
    @param host: the local IP; default 127.0.0.1, or ::1 when the first
        hop is IPv6.
    @param scenario: the scenario file; it must use C{[ruri]}.
    @param auth: the user name and password SIPp's C{[authentication]}
        answers a 401/407 with (C{-au}, C{-ap}; the digest C{uri} is the
        Request-URI).
    @param keys: more C{[name]} keywords for the scenario (C{-key name
        value}), such as C{aor} for L{UAC_AUTH_SCENARIO} and
        L{REGISTER_AUTH_SCENARIO}.
    @param timeout: SIPp's global timeout in seconds.
    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @return: fires with the L{SippOutcome} when SIPp exits.
    """
    reactor = _reactor(reactor)
    hop = proxy if proxy is not None else uas
    if host is None:
        host = "::1" if hop.family == socket.AF_INET6 else "127.0.0.1"
    for attempt in range(_PORT_ATTEMPTS):
        rundir = Path(tempfile.mkdtemp(prefix="sipleg-sipp-"))
        argv = _sipp_argv(scenario, hop.proto, host, calls, timeout, rundir)
        # The remote host is the UAS: [remote_ip]/[remote_port] name it.
        argv[1:1] = [uas.hostport]
        request_uri = ruri or _uri("service", uas)
        argv += ["-r", f"{rate:g}", "-key", "ruri", request_uri]
        for name, value in (keys or {}).items():
            argv += ["-key", name, value]
        if auth is not None:
            # The digest "uri" is sip:REMOTE-HOST unless -auth_uri says
            # otherwise (SIPp puts "sip:" before it): the Request-URI, as
            # a phone sends it (RFC 7616 §3.4.6).
            argv += ["-au", auth[0], "-ap", auth[1], "-auth_uri", request_uri.removeprefix("sip:")]
        # Without -p (and with -p 0) SIPp takes 5060, 5061 ... whichever is
        # free, which would race with a proxy wanting the default port.
        argv += ["-p", str(free_port(hop.proto, host))]
        if proxy is not None:
            argv += ["-rsa", proxy.hostport]
        if limit is not None:
            argv += ["-l", str(limit)]
        proc = _sipp_run(reactor, argv, timeout, rundir)
        code = yield proc.ended
        outcome = _sipp_outcome(proc, code, rundir)
        if code != _SIPP_BIND_ERROR or attempt == _PORT_ATTEMPTS - 1:
            return outcome


# ----------------------------------------------------------- Net::SIP


@dataclass(frozen=True)
class NetSipOutcome:
    """
    How a Net::SIP peer script ended.

    @ivar exit_code: 0 ok, 1 failure, 2 bad arguments, 3 timeout (the
        script's own alarm), other values for a crash; L{None} when killed
        by a signal.
    @ivar result: the fields of the C{RESULT} line (C{status}, C{mode},
        and per script: UAC C{invite}/C{cancel}/C{bye}/C{register} =
        final response codes, C{error} = errno when the INVITE could not
        be delivered;
        UAS C{invite}/C{ack}/C{bye}/C{cancel} = requests received,
        C{register} = C{ok}/C{fail}/C{none}); empty when none was printed.
    @ivar received: every packet the peer received, as decoded C{RECV}
        events: requests have C{method} and C{uri}, responses C{code},
        C{reason} and C{cseq}; all have C{src} (C{ip:port} of the
        sender), C{proto} and C{headers} (lower-case name -> list of
        values).
    @ivar stderr: what the script wrote to stderr.
    @ivar timed_out: the harness had to kill the script.
    @ivar stopped: the run was ended by C{stop()}.
    """

    exit_code: int | None
    result: dict[str, str]
    received: list[dict[str, Any]] = field(repr=False)
    stderr: str = field(repr=False)
    timed_out: bool = False
    stopped: bool = False

    @property
    def status(self) -> str:
        """
        C{ok}, C{fail}, C{timeout}, or C{""} without a C{RESULT} line.
        """
        return self.result.get("status", "")

    @property
    def ok(self) -> bool:
        """
        The script judged its call a success.
        """
        return self.exit_code == 0 and self.status == "ok"

    def requests(self, method: str) -> list[dict[str, Any]]:
        """
        The received requests of one method (retransmissions included).
        """
        return [e for e in self.received if e.get("method") == method]

    def responses(self, method: str | None = None) -> list[dict[str, Any]]:
        """
        The received responses, all or those whose CSeq names C{method}.
        """
        return [
            e for e in self.received if "code" in e and (method is None or e["cseq"].split()[-1] == method)
        ]

    def describe(self) -> str:
        """
        A summary for assertion messages.
        """
        seen = " ".join(str(e.get("method") or e.get("code")) for e in self.received)
        return (
            f"exit={self.exit_code} result={self.result} timed_out={self.timed_out}\n"
            f"received: {seen}\nstderr:\n{self.stderr[-2000:]}"
        )


class _NetSipLines:
    """
    Parses the line protocol of the Perl peers (see SiplegInterop.pm).
    """

    def __init__(self) -> None:
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.result: dict[str, str] = {}
        self.received: list[dict[str, Any]] = []

    def __call__(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "RECV":
            self.received.append(json.loads(rest))
        elif kind == "RESULT":
            self.result = dict(item.partition("=")[::2] for item in rest.split())
        elif kind == "READY" and not self.ready.called:
            self.ready.callback(None)

    def outcome(self, proc: _PeerProcess, exit_code: int | None) -> NetSipOutcome:
        return NetSipOutcome(
            exit_code=exit_code,
            result=self.result,
            received=self.received,
            stderr=proc.stderr.decode("utf-8", "replace"),
            timed_out=proc.timed_out,
            stopped=proc.stopped,
        )


def _fire_netsip(exit_code: int | None, outcome: _Outcome, lines: _NetSipLines, proc: _PeerProcess) -> None:
    outcome.fire(lines.outcome(proc, exit_code))


def _perl_leg(address: Address) -> str:
    return f"{address.proto}:{address.hostport}"


def _port_taken(outcome: NetSipOutcome) -> bool:
    return not outcome.result and "Address already in use" in outcome.stderr


class NetSipServer(_PeerServer["NetSipOutcome"]):
    """
    A running C{netsip_uas.pl}, serving C{sip:uas@...}: takes one call,
    then exits (after L{stop}, without a C{RESULT} line).
    """

    user = "uas"


@defer.inlineCallbacks
def start_netsip_uas(
    proto: str = "udp",
    mode: str = "answer",
    *,
    code: int = 486,
    host: str = "127.0.0.1",
    port: int | None = None,
    register: str | None = None,
    proxy: Address | None = None,
    registrar: str | None = None,
    contact: str | None = None,
    auth: tuple[str, str] | None = None,
    timeout: int = PEER_TIMEOUT,
    reactor: Any = None,
) -> Any:
    """
    Start C{netsip_uas.pl}, a Net::SIP UAS that takes one call.

    @param proto: C{"udp"} or C{"tcp"}.
    @param mode: C{"answer"} (200, then needs ACK and BYE), C{"ring"} (180,
        then needs CANCEL and the ACK for the 487) or C{"reject"} (C{code},
        then needs the ACK).
    @param code: the rejection code in C{"reject"} mode.
    @param host: the IP to listen on.
    @param port: the port; L{None} picks a free one (retried if taken).
    @param register: an AOR such as C{sip:uas@example.com}: REGISTER it
        through C{proxy} before taking calls (Request-URI C{registrar},
        default C{sip:DOMAIN}); a failed registration ends the script.
    @param proxy: the outgoing proxy for the REGISTER.
    @param registrar: the REGISTER Request-URI.
    @param contact: the Contact to register, e.g. with C{;transport=tcp}
        (Net::SIP's own Contact has no transport parameter).
    @param auth: the user name and password Net::SIP answers the
        registrar's 401 with.
    @param timeout: the script's own time limit in seconds.
    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @return: fires with a L{NetSipServer} once it listens (and is
        registered); errbacks with L{PeerError} when it cannot start.
    """
    if register is not None and proxy is None:
        raise ValueError("register needs a proxy")
    reactor = _reactor(reactor)
    for attempt in range(_PORT_ATTEMPTS):
        address = Address(host, free_port(proto, host) if port is None else port, proto)
        argv = ["perl", str(_NETSIP_UAS), "--leg", _perl_leg(address),
                "--mode", mode, "--code", str(code), "--timeout", str(timeout)]  # fmt: skip
        if register is not None and proxy is not None:
            argv += ["--register", register, "--proxy", _perl_leg(proxy)]
            if registrar is not None:
                argv += ["--registrar", registrar]
            if contact is not None:
                argv += ["--contact", contact]
            if auth is not None:
                argv += ["--auth", ":".join(auth)]
        lines = _NetSipLines()
        proc = _spawn(reactor, argv, timeout + KILL_GRACE, on_line=lines)
        outcome = _Outcome()
        proc.ended.addCallback(_fire_netsip, outcome, lines, proc)
        first = yield defer.DeferredList(
            [lines.ready, outcome.wait()], fireOnOneCallback=True, consumeErrors=True
        )
        if first[1] == 0:
            return NetSipServer(address, proc, outcome)
        failed: NetSipOutcome = yield outcome.wait()
        if port is not None or attempt == _PORT_ATTEMPTS - 1 or not _port_taken(failed):
            raise PeerError(f"Net::SIP UAS did not start\n{failed.describe()}")


@defer.inlineCallbacks
def run_netsip_uac(
    to: str,
    proxy: Address,
    mode: str = "call",
    *,
    code: int = 486,
    leg: Address | None = None,
    from_uri: str | None = None,
    auth: tuple[str, str] | None = None,
    timeout: int = PEER_TIMEOUT,
    reactor: Any = None,
) -> Any:
    """
    Run C{netsip_uac.pl}, a Net::SIP UAC that places one call (or makes
    one registration).

    @param to: the Request-URI, e.g. C{NetSipServer.uri}.  Net::SIP lets
        a C{;transport=} parameter here pick the transport even towards
        the outgoing proxy.  In C{"register"} mode: the address of record.
    @param proxy: the outgoing proxy every request is sent to (for a
        direct call: the UAS address).
    @param mode: C{"call"} (200, ACK, BYE, 200), C{"cancel"} (CANCEL on
        180, expects 200 to it and 487), C{"rejected"} (expects C{code})
        or C{"register"} (REGISTER C{to} at C{sip:DOMAIN} of C{to},
        expects C{code} as the final answer).
    @param code: the expected final code in C{"rejected"} and
        C{"register"} modes.
    @param leg: the local address; default a free port on 127.0.0.1 (or
        ::1 for an IPv6 proxy) with C{proxy.proto} (retried if taken).
    @param from_uri: the From URI; default C{sip:uac@LEG-IP}.
    @param auth: the user name and password Net::SIP answers a 401/407
        challenge with (once per realm).
    @param timeout: the script's own time limit in seconds.
    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @return: fires with the L{NetSipOutcome} when the script exits.
    """
    reactor = _reactor(reactor)
    for attempt in range(_PORT_ATTEMPTS):
        host = "::1" if proxy.family == socket.AF_INET6 else "127.0.0.1"
        local = leg or Address(host, free_port(proxy.proto, host), proxy.proto)
        argv = ["perl", str(_NETSIP_UAC), "--leg", _perl_leg(local),
                "--proxy", _perl_leg(proxy), "--to", to, "--mode", mode,
                "--code", str(code), "--timeout", str(timeout)]  # fmt: skip
        if from_uri is not None:
            argv += ["--from", from_uri]
        if auth is not None:
            argv += ["--auth", ":".join(auth)]
        lines = _NetSipLines()
        proc = _spawn(reactor, argv, timeout + KILL_GRACE, on_line=lines)
        outcome = lines.outcome(proc, (yield proc.ended))
        if leg is not None or attempt == _PORT_ATTEMPTS - 1 or not _port_taken(outcome):
            return outcome
