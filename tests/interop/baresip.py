"""
Two baresip phones calling each other through C{twistd sipproxy} with
digest authentication, run inside a network namespace of their own.

baresip ignores loopback-only hosts, so everything runs in a fresh network
namespace (C{unshare --net --map-root-user}) whose loopback device carries
documentation addresses: the proxy on L{PROXY}, every phone on its own
address.  No packet leaves the namespace, and nothing in it can clash with
the machine's own ports.

Run as a script (standard library only) inside the namespace::

    unshare --net --map-root-user python3 baresip.py WORKDIR

C{WORKDIR} holds the user file C{users} (L{PHONES} with their passwords,
realm L{DOMAIN}); C{PYTHONPATH} must find the C{sipleg} under test.  With
C{--transport tls} it also holds C{cert.pem} and C{key.pem} (the proxy's,
for L{PROXY}) and C{ca.pem} (their CA), the proxy listens on TLS port
L{TLS_PORT} too, and only L{CALLER} and L{CALLEE} take part, over TLS.
The script then:

 1. brings C{lo} up with L{PROXY} and every phone's address;
 2. starts the proxy (C{--registrar --domain example.test --auth-file
    users --allow PROXY/32 --trace}, so the phones are untrusted
    strangers) and waits for it to answer an OPTIONS;
 3. starts one headless baresip per phone (C{ctrl_tcp} on the phone's
    address, audio from C{ausine}, no player) and creates its account
    through C{ctrl_tcp} (C{uanew}), so no registration event is missed;
 4. waits for L{CALLER} and L{CALLEE} to register, makes the caller dial
    the callee's address of record, waits for both to report the call
    established, hangs up and waits for both to report it closed;
 5. waits until the proxy bans L{INTRUDER}, whose password is wrong (or
    until baresip reports its registration ended either way);
 6. reads the proxy's bindings, stops every process and prints one line
    C{RESULT {json}} (see L{Session.result}).

Everything it started is stopped when it ends, and it gives up on any
step once C{--seconds} have passed since it started.  The proxy's log
(JSON, with C{--trace}) stays in C{WORKDIR/proxy.log}; L{read_log} and
L{packets} read it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import selectors
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The domain and digest realm the proxy serves.
DOMAIN = "example.test"
#: The proxy's address (UDP and TCP port 5060).
PROXY = "192.0.2.10"
#: The proxy's TLS port (with C{--transport tls}).
TLS_PORT = 5061
#: Seconds the driver gives the whole run by default.
DRIVER_SECONDS = 30.0
#: The port every baresip's C{ctrl_tcp} listens on (each on its own address).
CONTROL_PORT = 4444
#: Seconds a stopped process may take before it is killed.
STOP_GRACE = 2.0
#: Seconds between two looks at the proxy's log or the phones' events.
POLL = 0.05
#: Characters of a process's output kept in the result.
OUTPUT_TAIL = 3000


@dataclass(frozen=True)
class Phone:
    """
    A baresip user agent and its account.

    @ivar user: the user name, of C{sip:USER@DOMAIN}.
    @ivar host: the phone's own address.
    @ivar password: the password in the proxy's user file.
    @ivar typed: the password the phone sends; L{None}: L{password}.
    @ivar answers: the phone answers calls by itself.
    """

    user: str
    host: str
    password: str
    typed: str | None = None
    answers: bool = False

    @property
    def aor(self) -> str:
        """
        The address of record.
        """
        return f"sip:{self.user}@{DOMAIN}"

    def account(self, transport: str = "udp") -> str:
        """
        The baresip account line: credentials, every request to the proxy
        over C{transport} (C{"udp"}, or C{"tls"} to port L{TLS_PORT}).
        """
        typed = self.password if self.typed is None else self.typed
        proxy = (
            f"sip:{PROXY}:{TLS_PORT};transport=tls" if transport == "tls" else f"sip:{PROXY};transport=udp"
        )
        line = f'<{self.aor}>;auth_user={self.user};auth_pass={typed};outbound="{proxy}"'
        return line + ";answermode=auto" if self.answers else line


#: Places the call.
CALLER = Phone("alice", "192.0.2.21", "alice-secret")
#: Takes the call.
CALLEE = Phone("bob", "192.0.2.22", "bob-secret", answers=True)
#: A known user sending the wrong password.
INTRUDER = Phone("mallory", "192.0.2.23", "mallory-secret", typed="not-the-password")
PHONES = (CALLER, CALLEE, INTRUDER)

# ioctl requests and the interface flag of <linux/sockios.h>, <net/if.h>.
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFADDR = 0x8916
_IFF_UP = 0x1


def _ifreq(name: str, payload: bytes) -> bytes:
    """
    A C{struct ifreq}: the interface name, then the union (24 bytes).
    """
    return struct.pack("16s24s", name.encode(), payload)


def up_loopback(addresses: list[str]) -> None:
    """
    Bring C{lo} up and give it C{addresses} (each on an alias C{lo:N}, with
    the /24 an IPv4 class C address gets), as C{ip link set lo up; ip addr
    add} would, without needing iproute2.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq("lo", b"")), 16)[0]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq("lo", struct.pack("H", flags | _IFF_UP)))
        for number, address in enumerate(addresses, 1):
            sockaddr = struct.pack("HH4s", socket.AF_INET, 0, socket.inet_aton(address))
            fcntl.ioctl(sock, _SIOCSIFADDR, _ifreq(f"lo:{number}", sockaddr))


def read_log(path: Path) -> list[dict[str, Any]]:
    """
    The events of a Twisted JSON log file (C{--log-format json}: each one
    after a record separator), without a last one still being written.
    """
    try:
        text = path.read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    events = []
    for record in text.split("\x1e"):
        if record.strip() and record.endswith("\n"):
            events.append(json.loads(record))
    return events


@dataclass(frozen=True)
class Packet:
    """
    A SIP message the proxy traced.

    @ivar verb: C{"received"} or C{"sends"}.
    @ivar start: the start line.
    @ivar headers: lower-case header name to values, in order.
    """

    verb: str
    start: str
    headers: dict[str, list[str]] = field(repr=False)

    @property
    def method(self) -> str:
        """
        The method its CSeq names (a response's request's method).
        """
        return self.header("cseq").split()[-1]

    @property
    def code(self) -> int | None:
        """
        A response's status code; L{None} for a request.
        """
        if not self.start.startswith("SIP/"):
            return None
        return int(self.start.split()[1])

    def header(self, name: str) -> str:
        """
        The first value of header C{name}, C{""} without one.
        """
        return self.headers.get(name, [""])[0]

    def speaks_for(self, phone: Phone) -> bool:
        """
        Whether the message belongs to a request C{phone} sent: its From
        names the phone's address of record.
        """
        return f"<{phone.aor}>" in self.header("from")

    def __str__(self) -> str:
        sender = self.header("from").partition("<")[2].partition(">")[0]
        return f"{self.verb} {self.start} ({self.header('cseq')}, from {sender})"


def packets(events: list[dict[str, Any]]) -> list[Packet]:
    """
    The SIP messages the proxy traced (C{--trace}), in order.
    """
    found = []
    for event in events:
        text = event.get("text")
        if not isinstance(text, str) or event.get("verb") not in ("received", "sends"):
            continue
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        found.append(Packet(event["verb"], head[0], headers))
    return found


def bans(events: list[dict[str, Any]]) -> list[str]:
    """
    The sources the proxy banned, in order.
    """
    return [
        str(event["source"])
        for event in events
        if str(event.get("log_format", "")).startswith("banned source")
    ]


class StepFailed(Exception):
    """
    A step of the run did not happen in time, or went wrong.
    """


class Control:
    """
    One baresip's C{ctrl_tcp} connection: JSON in netstrings both ways;
    commands get responses (matched by token), events come unasked.

    @ivar events: the events received so far.
    """

    def __init__(self, phone: Phone, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        self.phone = phone
        self._sock = sock
        self._buffer = b""
        self._responses: dict[str, dict[str, Any]] = {}
        self._tokens = 0
        self.events: list[dict[str, Any]] = []
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, self)

    def readable(self) -> None:
        """
        Take what arrived and decode every complete netstring.
        """
        data = self._sock.recv(65536)
        if not data:
            raise StepFailed(f"{self.phone.user}: baresip closed its ctrl_tcp connection")
        self._buffer += data
        while b":" in self._buffer:
            length, _, rest = self._buffer.partition(b":")
            size = int(length)
            if len(rest) <= size:
                return
            message = json.loads(rest[:size])
            self._buffer = rest[size + 1 :]
            if message.get("event"):
                self.events.append(message)
            elif message.get("response"):
                self._responses[str(message.get("token"))] = message

    def send(self, command: str, params: str = "") -> str:
        """
        Send a command; its response arrives later (L{response}).

        @return: the token naming the response.
        """
        self._tokens += 1
        token = f"{self.phone.user}-{self._tokens}"
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.setblocking(True)
        try:
            self._sock.sendall(b"%d:%s," % (len(data), data))
        finally:
            self._sock.setblocking(False)
        return token

    def response(self, token: str) -> dict[str, Any] | None:
        """
        The response to the command C{token}, if it arrived.
        """
        return self._responses.get(token)

    def saw(self, kind: str) -> bool:
        """
        Whether an event of type C{kind} (C{REGISTER_OK}, C{CALL_CLOSED}
        ...) arrived.
        """
        return any(event.get("type") == kind for event in self.events)


class Session:
    """
    One run: the processes, the controls and what was seen.

    @ivar reached: the steps done, in order.
    @ivar failure: why the run stopped early; L{None} when it did not.
    @ivar bindings: the addresses of record the proxy had bindings for at
        the end of the run (before the phones unregistered).
    """

    def __init__(self, workdir: Path, deadline: float, transport: str = "udp") -> None:
        self.workdir = workdir
        self.deadline = deadline
        self.transport = transport
        #: The phones of the run: over TLS, the caller and the callee.
        self.phones = PHONES if transport == "udp" else (CALLER, CALLEE)
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.controls: dict[str, Control] = {}
        self.reached: list[str] = []
        self.failure: str | None = None
        self.bindings: list[str] = []

    # -- steps -------------------------------------------------------------

    def run(self) -> None:
        """
        Every step, in order (see the module docstring).

        @raise StepFailed: a step did not happen in time.
        """
        up_loopback([PROXY, *(phone.host for phone in PHONES)])
        self.start_proxy()
        self.wait("the proxy answers OPTIONS", self.options_answered)
        for phone in self.phones:
            self.start_phone(phone)
        for phone in self.phones:
            control = self.controls[phone.user]
            self.command(control, "uanew", phone.account(self.transport))
        self.wait(
            f"{CALLER.user} and {CALLEE.user} registered",
            lambda: all(self.controls[p.user].saw("REGISTER_OK") for p in (CALLER, CALLEE)),
        )
        caller, callee = self.controls[CALLER.user], self.controls[CALLEE.user]
        self.command(caller, "dial", CALLEE.aor)
        self.wait("the call established on both sides", lambda: self.both(caller, callee, "CALL_ESTABLISHED"))
        self.command(caller, "hangup")
        self.wait("the call closed on both sides", lambda: self.both(caller, callee, "CALL_CLOSED"))
        if INTRUDER not in self.phones:
            return
        intruder = self.controls[INTRUDER.user]
        self.wait(
            f"{INTRUDER.user}'s registration ended",
            lambda: (
                INTRUDER.host in bans(read_log(self.proxy_log))
                or intruder.saw("REGISTER_OK")
                or intruder.saw("REGISTER_FAIL")
            ),
        )

    @property
    def proxy_log(self) -> Path:
        """
        The proxy's log file (JSON).
        """
        return self.workdir / "proxy.log"

    def start_proxy(self) -> None:
        """
        Start C{python -m twisted sipproxy} on L{PROXY}, trusting only
        itself, with every packet logged.
        """
        argv = [
            sys.executable, "-m", "twisted", "--log-file", str(self.proxy_log), "--log-format", "json",
            "sipproxy", "--listen", f"udp:{PROXY}:5060", "--listen", f"tcp:{PROXY}:5060",
            "--registrar", "--domain", DOMAIN, "--auth-file", str(self.workdir / "users"),
            "--allow", f"{PROXY}/32", "--registrations", str(self.workdir / "bindings.db"), "--trace",
        ]  # fmt: skip
        if self.transport == "tls":
            argv += [
                "--listen", f"tls:{PROXY}:{TLS_PORT}",
                "--tls-cert", str(self.workdir / "cert.pem"), "--tls-key", str(self.workdir / "key.pem"),
            ]  # fmt: skip
        self.spawn("proxy", argv)

    def options_answered(self) -> bool:
        """
        Whether the proxy answers an OPTIONS within L{POLL} seconds.
        """
        self.check_running("proxy")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((PROXY, 0))
            port = sock.getsockname()[1]
            request = (
                f"OPTIONS sip:{PROXY} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {PROXY}:{port};branch=z9hG4bK-probe-{port};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{PROXY}>;tag=probe\r\n"
                f"To: <sip:{PROXY}>\r\n"
                f"Call-ID: probe-{port}@{PROXY}\r\n"
                "CSeq: 1 OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            sock.sendto(request.encode(), (PROXY, 5060))
            sock.settimeout(POLL)
            try:
                return sock.recv(65536).startswith(b"SIP/2.0 200 ")
            except OSError:
                # No answer within POLL seconds.
                return False

    def start_phone(self, phone: Phone) -> None:
        """
        Write the phone's configuration, start baresip with it and connect
        to its C{ctrl_tcp}.
        """
        folder = self.workdir / phone.user
        folder.mkdir()
        (folder / "config").write_text(
            "poll_method\tepoll\n"
            f"sip_listen\t{phone.host}:5060\n"
            "net_prefer_ipv6\tno\n"
            # ausine only makes 48 kHz stereo; baresip resamples for G.711.
            "audio_source\tausine,440\n"
            "ausrc_srate\t48000\n"
            "ausrc_channels\t2\n"
            "audio_player\t\n"
            "audio_alert\t\n"
            "module_path\t/usr/lib/baresip/modules\n"
            "module\tg711.so\n"
            "module\tausine.so\n"
            "module_app\tmenu.so\n"
            "module_app\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t{phone.host}:{CONTROL_PORT}\n"
            # Over TLS, the CA of the proxy's certificate; the phones
            # themselves have none.
            + (f"sip_cafile\t{self.workdir / 'ca.pem'}\n" if self.transport == "tls" else "")
        )
        # Accounts come through ctrl_tcp (uanew), once we listen to events.
        (folder / "accounts").write_text("")
        self.spawn(phone.user, ["baresip", "-f", str(folder)])
        self.controls[phone.user] = Control(phone, self.connect(phone), self.selector)

    def connect(self, phone: Phone) -> socket.socket:
        """
        A connection to the phone's C{ctrl_tcp}, tried until it listens.
        """
        while True:
            self.check_running(phone.user)
            try:
                return socket.create_connection((phone.host, CONTROL_PORT), timeout=1)
            except OSError as e:
                if time.monotonic() > self.deadline:
                    raise StepFailed(f"{phone.user}: no ctrl_tcp on {phone.host}: {e}") from None
                time.sleep(POLL)

    def command(self, control: Control, name: str, params: str = "") -> None:
        """
        Run a baresip command and wait for its response, which must be ok.
        """
        token = control.send(name, params)
        self.wait(f"{control.phone.user}: response to {name}", lambda: control.response(token) is not None)
        response = control.response(token)
        if response is None or not response.get("ok"):
            raise StepFailed(f"{control.phone.user}: {name} {params!r} failed: {response}")

    @staticmethod
    def both(first: Control, second: Control, kind: str) -> bool:
        """
        Whether both phones reported an event of type C{kind}.
        """
        return first.saw(kind) and second.saw(kind)

    def wait(self, step: str, done: Callable[[], bool]) -> None:
        """
        Take events until C{done()} holds.

        @raise StepFailed: the deadline passed first, or a process died.
        """
        while not done():
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise StepFailed(f"timed out waiting for: {step}")
            for name in self.procs:
                self.check_running(name)
            for key, _ in self.selector.select(min(POLL, remaining)):
                key.data.readable()
        self.reached.append(step)

    def check_running(self, name: str) -> None:
        """
        @raise StepFailed: the process C{name} exited.
        """
        code = self.procs[name].poll()
        if code is not None:
            raise StepFailed(f"{name} exited with status {code}")

    def read_bindings(self) -> list[str]:
        """
        The addresses of record in the proxy's registrations database.
        """
        path = self.workdir / "bindings.db"
        if not path.exists():
            return []
        with sqlite3.connect(path) as db:
            return sorted({aor for (aor,) in db.execute("SELECT aor FROM bindings")})

    # -- processes ---------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> None:
        """
        Start a process with its output in C{WORKDIR/NAME.out}.
        """
        with (self.workdir / f"{name}.out").open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        """
        Note the proxy's bindings, stop the phones (SIGTERM: they
        unregister), then the proxy; kill whatever is still running
        L{STOP_GRACE} seconds later.
        """
        self.bindings = self.read_bindings()
        phones = [proc for name, proc in self.procs.items() if name != "proxy"]
        _terminate(phones)
        if "proxy" in self.procs:
            _terminate([self.procs["proxy"]])
        self.selector.close()

    def output(self, name: str) -> str:
        """
        The end of what process C{name} wrote.
        """
        data = (self.workdir / f"{name}.out").read_bytes()
        return data[-OUTPUT_TAIL:].decode("utf-8", "replace")

    def result(self) -> dict[str, Any]:
        """
        What the run saw, for the C{RESULT} line: C{failure} (L{None} or
        why it stopped early), C{reached} (the steps done), C{seconds},
        C{bindings}, C{events} (per user, the type, peer URI and parameter
        of every baresip event) and C{output} (per process, the end of its
        output).
        """
        return {
            "failure": self.failure,
            "reached": self.reached,
            "seconds": round(time.monotonic() - self.started, 2),
            "bindings": self.bindings,
            "events": {
                user: [
                    {key: event.get(key, "") for key in ("type", "peeruri", "param")}
                    for event in control.events
                ]
                for user, control in self.controls.items()
            },
            "output": {name: self.output(name) for name in self.procs},
        }


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    """
    SIGTERM every process, SIGKILL those still running after
    L{STOP_GRACE} seconds, and reap them all.
    """
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE
    for proc in procs:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    """
    Run a session (inside a network namespace of its own) and print its
    C{RESULT} line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--seconds", type=float, default=DRIVER_SECONDS)
    parser.add_argument("--transport", choices=("udp", "tls"), default="udp")
    args = parser.parse_args(argv)
    session = Session(args.workdir.resolve(), time.monotonic() + args.seconds, args.transport)
    try:
        session.run()
    except StepFailed as e:
        session.failure = str(e)
    finally:
        session.stop()
    print("RESULT " + json.dumps(session.result()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
