"""
The C{twistd sipproxy} command line: options in, services out.

Only option parsing lives here; L{sipleg.service.make_service} builds the
proxy.
"""

from __future__ import annotations

import getopt
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from twisted.application.service import IService
from twisted.python import usage

import sipleg
from sipleg.address import split_hostport
from sipleg.configfile import OptionKind, file_arguments, read_config
from sipleg.errors import SIPParseError
from sipleg.flood import SCANNERS, EdgePolicy, FloodLimits
from sipleg.routing import NetworkAccessPolicy
from sipleg.service import TLS_LISTENERS, ConfigError, ProxyConfig, bind_socket, make_service, parse_listen
from sipleg.transport.base import StreamLimits
from sipleg.uri import URI, check_host, parse_uri

__all__ = ["Options", "load_config", "makeService"]

#: The transports a next hop may ask for (C{;transport=}).
_TRANSPORTS = ("udp", "tcp", "tls")


def _sip_uri(option: str, text: str) -> URI:
    try:
        uri = parse_uri(text)
    except SIPParseError as e:
        raise usage.UsageError(f"{option} {text!r}: {e.reason}") from None
    if uri.scheme not in ("sip", "sips"):
        raise usage.UsageError(f"{option} {text!r}: not a sip: or sips: URI")
    transport = uri.params.get("transport")
    if transport is not None and transport.lower() not in _TRANSPORTS:
        raise usage.UsageError(f"{option} {text!r}: transport={transport} is not supported (udp, tcp or tls)")
    return uri


def _domain(text: str) -> str:
    """
    A C{--domain}: a host name or IP address, lower-cased.

    @raise usage.UsageError: anything else (a URI gets a hint).
    """
    try:
        check_host(text)
        return text.lower()
    except SIPParseError:
        pass
    hint = ""
    _, colon, rest = text.partition(":")
    if colon and not text.startswith("["):
        # sip:example.test, sips:alice@example.test:5061, http://example.test/
        hostport = rest.lstrip("/").partition("/")[0].rpartition("@")[2]
        try:
            hint = f"; did you mean {check_host(split_hostport(hostport)[0])}?"
        except (SIPParseError, ValueError):
            pass
    raise usage.UsageError(f"--domain {text!r}: expected a host name or IP address, no scheme or port{hint}")


_OptionsType = TypeVar("_OptionsType", bound=type["Options"])


def _one_line_help(cls: _OptionsType) -> _OptionsType:
    """
    Put the docstring of every C{opt_} method of C{cls} on one line:
    C{--help} shows it as written, indentation included.
    """
    for name, method in vars(cls).items():
        if name.startswith("opt_") and method.__doc__:
            method.__doc__ = " ".join(method.__doc__.split())
    return cls


def _named_numbers(cls: _OptionsType) -> _OptionsType:
    """
    Give every C{int} or C{float} parameter of C{cls} a coercer whose error
    names the option and the value (Twisted's says only "Parameter type
    enforcement failed").
    """
    parameters: list[Any] = cls.optParameters
    cls.optParameters = [
        [*entry[:4], _Number(entry[0], entry[4])] if len(entry) == 5 and entry[4] in (int, float) else entry
        for entry in parameters
    ]
    return cls


@dataclass(frozen=True)
class _Number:
    """
    The coercer of C{--name}: C{kind(text)}, or a L{usage.UsageError}
    naming the option.

    @ivar name: the option.
    @ivar kind: C{int} or C{float} (what a C{--config} file's value is).
    """

    name: str
    kind: type

    def __call__(self, text: str) -> Any:
        try:
            return self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise usage.UsageError(f"--{self.name} {text!r}: not {what}") from None


@_named_numbers
@_one_line_help
class Options(usage.Options):
    """
    Options of C{twistd sipproxy}.
    """

    synopsis = "[options]"
    longdesc = (
        "A SIP forwarding proxy and registrar (RFC 3261 sections 16 and 10), "
        "stateless unless --stateful. By default it listens on udp and tcp "
        "127.0.0.1:5060 and only forwards requests coming from loopback."
    )
    optFlags = [
        ["trace", None, "Log every packet in and out."],
        ["registrar", None, "Answer REGISTER for our --domain(s) and route to their bindings."],
        ["reuse-port", None, "Bind with SO_REUSEPORT (set by --workers for its workers)."],
        ["no-flood-control", None, "Do not rate-limit and ban untrusted sources."],
        [
            "stateful",
            None,
            "Keep transactions: fork to every binding, absorb retransmissions, fail over, CANCEL, 408.",
        ],
    ]
    optParameters = [
        [
            "config",
            None,
            None,
            "TOML file of options (long names as keys), re-read on SIGHUP; the command line overrides it.",
        ],
        ["tls-cert", None, None, "PEM certificate for tls and wss listeners."],
        ["tls-key", None, None, "PEM private key for tls and wss listeners."],
        ["tls-ca", None, None, "PEM CA bundle to verify TLS peers with."],
        ["outbound-proxy", None, None, "Send requests for foreign domains to this SIP URI."],
        ["max-forwards", None, 70, "Cap on Max-Forwards of forwarded requests.", int],
        ["registrations", None, None, "File keeping the registrar's bindings across restarts."],
        ["min-expires", None, 60, "Shortest registration accepted (shorter: 423).", int],
        ["max-expires", None, 3600, "Longest registration granted.", int],
        ["max-bindings", None, 100_000, "Most registrations kept (beyond: 503).", int],
        [
            "keepalive",
            None,
            30,
            "Seconds between keep-alives to NAT'ed UDP phones of the registrar (0: none).",
            int,
        ],
        ["workers", None, 1, "Run N proxy processes sharing the ports (SO_REUSEPORT).", int],
        [
            "flood-limit",
            None,
            "200/2",
            "N/SECONDS: an untrusted source sending more than N packets in SECONDS is banned.",
        ],
        ["ban-time", None, 300.0, "Seconds a flooding source stays banned (its packets dropped).", float],
        [
            "max-connections",
            None,
            1000,
            "Most TCP/TLS/WebSocket connections open at once, per listener.",
            int,
        ],
        [
            "max-per-source",
            None,
            128,
            "Most TCP/TLS/WebSocket connections accepted from one IP address.",
            int,
        ],
        [
            "first-message-timeout",
            None,
            16.0,
            "Seconds a new TCP/TLS connection has to send a complete message (TLS handshake included).",
            float,
        ],
        [
            "scanners",
            None,
            ",".join(SCANNERS),
            "Comma-separated User-Agent fragments whose requests from untrusted sources are "
            "dropped ('' for none).",
        ],
        ["timer-t1", None, 0.5, "With --stateful: RFC 3261 T1, the round-trip estimate (s).", float],
        ["timer-t2", None, 4.0, "With --stateful: T2, the longest non-INVITE retransmit gap (s).", float],
        ["timer-t4", None, 5.0, "With --stateful: T4, how long a message may live in transit (s).", float],
        ["timer-c", None, 180.0, "With --stateful: Timer C, how long a branch may ring (s).", float],
        ["max-transactions", None, 100_000, "With --stateful: live transactions at most (beyond: 503).", int],
        ["auth-file", None, None, "Users who must authenticate (htdigest format; see the README)."],
        ["auth-realm", None, None, "Digest realm (default: the first --domain)."],
        [
            "auth-algorithms",
            None,
            "MD5",
            "Comma-separated digest algorithms offered, preferred first (MD5, SHA-256, SHA-512-256).",
        ],
        [
            "auth-secret-file",
            None,
            None,
            "File keying the nonces, shared by processes that accept each other's (default: random).",
        ],
        ["nonce-lifetime", None, 300.0, "Seconds a nonce is good for (then stale=true).", float],
        [
            "auth-failures",
            None,
            "10/60",
            "N/SECONDS: an untrusted source failing to authenticate more than N times in SECONDS is banned.",
        ],
        [
            "route-url",
            None,
            None,
            "POST each initial request's summary to this http(s) URL; route as it answers.",
        ],
        ["route-timeout", None, 1.0, "With --route-url: seconds the web service has to answer.", float],
        [
            "route-failure",
            None,
            "503",
            "With --route-url: on a timeout, HTTP error or bad answer, answer 503 or 'fallback' to the "
            "normal routing.",
        ],
        ["route-max-pending", None, 1000, "With --route-url: calls waiting at most (beyond: 503).", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["domain"] = []
        self["route"] = {}
        self["allow"] = []
        self["status"] = None

    def opt_listen(self, value: str) -> None:
        """
        PROTO:ADDR[:PORT] to listen on (udp, tcp or tls; IPv6 as
        udp:[::1]:5060; PORT 5060, 5061 for tls; ws and wss, SIP over
        WebSocket, need a PORT). Repeatable. Default udp:127.0.0.1:5060
        and tcp:127.0.0.1:5060.
        """
        try:
            self["listen"].append(parse_listen(value))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def opt_status(self, value: str) -> None:
        """
        Serve /status.json and /metrics (Prometheus) on tcp:[ADDR:]PORT
        (127.0.0.1 by default), tcp:[::1]:PORT or unix:PATH.
        """
        if self["status"] is not None:
            raise usage.UsageError("--status given twice")
        from sipleg.statusport import parse_status

        try:
            parse_status(value)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["status"] = value

    def opt_domain(self, value: str) -> None:
        """
        A domain this proxy serves (reachable from any source): a host
        name or IP address. Repeatable.
        """
        self["domain"].append(_domain(value))

    def opt_route(self, value: str) -> None:
        """
        DOMAIN=SIPURI: send requests for DOMAIN (or *.DOMAIN, or * for any)
        to SIPURI. Repeatable.
        """
        domain, sep, target = value.partition("=")
        if not sep or not domain or not target:
            raise usage.UsageError(f"--route {value!r}: expected DOMAIN=SIPURI")
        self["route"][domain.lower()] = _sip_uri("--route", target)

    def opt_allow(self, value: str) -> None:
        """
        CIDR of sources that may send anywhere. Repeatable. Replaces the
        default, loopback only: add 127.0.0.0/8 and ::1/128 to keep it.
        Refused requests (403) are logged.
        """
        try:
            NetworkAccessPolicy([value])
        except ValueError as e:
            raise usage.UsageError(f"--allow {value!r}: {e}") from None
        self["allow"].append(value)

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse the command line; a bad option ends the process with one line
        on stderr and exit status 1 (twistd itself would print the whole
        usage text on stdout).
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            self.parse(self.argv)
        except ConfigError as e:
            sys.stderr.write(f"sipproxy: {e}\n")
            raise SystemExit(1) from None

    def opt_version(self) -> None:
        """
        Print the versions of sipleg and Twisted, and exit.
        """
        import twisted

        print(f"sipleg {sipleg.__version__} (Twisted {twisted.__version__})")
        sys.exit(0)

    def parse(self, argv: Sequence[str]) -> None:
        """
        Parse C{argv} after the options of its C{--config} file, if any:
        an option on the command line replaces the file's value of it
        (for a repeatable option, the whole list).

        @raise ConfigError: a bad option or file, in one line; a bad value
            from the file is named with the file.
        """
        try:
            given, _ = getopt.getopt(list(argv), self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise ConfigError(str(e)) from None
        names = [option.lstrip("-") for option, _ in given]
        paths = [value for option, value in given if option == "--config"]
        arguments = list(argv)
        from_file: set[str] = set()
        if paths:
            table = read_config(paths[-1])
            arguments = file_arguments(table, paths[-1], option_kinds(), names) + arguments
            from_file = set(table) - set(names)
        try:
            super().parseOptions(arguments)
        except usage.UsageError as e:
            named = re.match(r"--([\w-]+)", str(e))
            if named is not None and named[1] in from_file:
                raise ConfigError(f"--config {paths[-1]}: {e}") from None
            raise ConfigError(str(e)) from None

    def postOptions(self) -> None:
        self["edge"] = self._edge()
        self["auth"] = self._auth()
        self["transactions"] = self._transactions()
        self["route-hook"] = self._route_hook()
        try:
            self["stream-limits"] = StreamLimits(
                max_connections=self["max-connections"],
                max_per_source=self["max-per-source"],
                first_message_timeout=self["first-message-timeout"],
            )
        except ValueError as e:
            raise usage.UsageError(
                f"--max-connections / --max-per-source / --first-message-timeout: {e}"
            ) from None
        if not 1 <= self["workers"] <= 64:
            raise usage.UsageError("--workers must be between 1 and 64")
        if self["max-forwards"] < 1 or self["max-forwards"] > 255:
            raise usage.UsageError("--max-forwards must be between 1 and 255")
        if self["max-bindings"] < 1:
            raise usage.UsageError("--max-bindings must be at least 1")
        self._tls_files_need_a_listener()
        outbound: str | None = self["outbound-proxy"]
        if outbound is not None:
            self["outbound-proxy"] = _sip_uri("--outbound-proxy", outbound)

    def _tls_files_need_a_listener(self) -> None:
        """
        C{--tls-cert}, C{--tls-key} and C{--tls-ca} serve a tls listener
        only: without one they would be ignored, so they are refused.
        """
        if any(spec.proto in TLS_LISTENERS for spec in self["listen"]):
            return
        given = [f"--{name}" for name in ("tls-cert", "tls-key", "tls-ca") if self[name] is not None]
        if given:
            raise usage.UsageError(
                f"{' / '.join(given)} without a tls listener (--listen tls:ADDR[:PORT], or wss:ADDR:PORT)"
            )

    def _edge(self) -> EdgePolicy:
        """
        The flood control and scanner options as an L{EdgePolicy}.
        """
        scanners = tuple(part.strip().lower() for part in self["scanners"].split(",") if part.strip())
        if self["no-flood-control"]:
            return EdgePolicy(flood=None, scanners=scanners)
        count, _, seconds = self["flood-limit"].partition("/")
        try:
            # A missing "/SECONDS" fails float("") as well.
            limits = FloodLimits(limit=int(count), window=float(seconds), ban=self["ban-time"])
        except ValueError:
            raise usage.UsageError(
                f"--flood-limit {self['flood-limit']!r} / --ban-time: expected N/SECONDS and positive numbers"
            ) from None
        return EdgePolicy(flood=limits, scanners=scanners)

    def _transactions(self) -> Any:
        """
        The transaction timers, or L{None} without C{--stateful}.
        """
        if not self["stateful"]:
            return None
        from sipleg.stateful import TransactionTimers

        try:
            return TransactionTimers(
                self["timer-t1"],
                self["timer-t2"],
                self["timer-t4"],
                self["timer-c"],
                self["max-transactions"],
            )
        except ValueError as e:
            raise usage.UsageError(
                f"--timer-t1 / --timer-t2 / --timer-t4 / --timer-c / --max-transactions: {e}"
            ) from None

    def _route_hook(self) -> Any:
        """
        The routing hook options as a L{sipleg.routehook.HookConfig}, or
        L{None} without C{--route-url}.
        """
        url: str | None = self["route-url"]
        if url is None:
            return None
        from sipleg.routehook import HookConfig

        try:
            return HookConfig(url, self["route-timeout"], self["route-failure"], self["route-max-pending"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def _auth(self) -> Any:
        """
        The authentication options as an L{sipleg.auth.AuthSettings}, or
        L{None} without C{--auth-file}.
        """
        path: str | None = self["auth-file"]
        if path is None:
            return None
        from sipleg.auth import AuthConfig, AuthSettings

        realm = self["auth-realm"] or (self["domain"][0] if self["domain"] else None)
        if realm is None:
            raise usage.UsageError("--auth-file needs --auth-realm or a --domain")
        count, _, seconds = self["auth-failures"].partition("/")
        names = self["auth-algorithms"].split(",")
        algorithms = tuple(part.strip().upper() for part in names if part.strip())
        try:
            config = AuthConfig(
                realm,
                algorithms,
                nonce_lifetime=self["nonce-lifetime"],
                max_failures=int(count),
                failure_window=float(seconds),
            )
        except ValueError as e:
            raise usage.UsageError(
                f"--auth-realm / --auth-algorithms / --nonce-lifetime / --auth-failures: {e}"
            ) from None
        return AuthSettings(path, config, self["auth-secret-file"])

    def config(self) -> ProxyConfig:
        """
        The L{ProxyConfig} these options describe.
        """
        config = ProxyConfig(
            tls_cert=self["tls-cert"],
            tls_key=self["tls-key"],
            tls_ca=self["tls-ca"],
            domains=list(self["domain"]),
            routes=dict(self["route"]),
            outbound_proxy=self["outbound-proxy"],
            allow=list(self["allow"]),
            trace=bool(self["trace"]),
            max_forwards=self["max-forwards"],
            registrar=bool(self["registrar"]),
            registrations=self["registrations"],
            min_expires=self["min-expires"],
            max_expires=self["max-expires"],
            max_bindings=self["max-bindings"],
            keepalive=self["keepalive"],
            reuse_port=bool(self["reuse-port"]) or self["workers"] > 1,
            status=self["status"],
            edge=self["edge"],
            stream_limits=self["stream-limits"],
            auth=self["auth"],
            transactions=self["transactions"],
            route_hook=self["route-hook"],
        )
        if self["listen"]:
            config.listen = list(self["listen"])
        return config


@cache
def option_kinds() -> dict[str, OptionKind]:
    """
    What each option takes, as a C{--config} file's key: flags, strings,
    numbers (from the option's coercion), lists and tables (the repeatable
    options, by the value they start with).
    """
    kinds = {str(flag[0]): OptionKind.FLAG for flag in Options.optFlags}
    parameters: list[Any] = Options.optParameters
    for parameter in parameters:
        coerce = parameter[4] if len(parameter) > 4 else None
        number = coerce.kind if isinstance(coerce, _Number) else coerce
        kinds[parameter[0]] = (
            OptionKind.INTEGER if number is int else OptionKind.NUMBER if number is float else OptionKind.TEXT
        )
    for name, start in Options().items():
        if isinstance(start, dict):
            kinds[name] = OptionKind.TABLE
        elif isinstance(start, list):
            kinds[name] = OptionKind.LIST
    del kinds["config"]
    return kinds


def load_config(argv: Sequence[str]) -> ProxyConfig:
    """
    The configuration a command line and its C{--config} file describe
    now (what a reload applies).

    @raise ConfigError: a bad option or file, in one line.
    """
    options = Options()
    options.parse(argv)
    return options.config()


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the proxy service; on a configuration error print one line and
    exit with status 1.
    """
    try:
        config = options.config()
        if options["workers"] == 1:
            # SIGHUP reads the same command line (and its file) again.
            argv = list(options.argv)
            return make_service(config, reactor=reactor, reload_with=lambda: load_config(argv))
        # Check here, once, what every worker will need, so a bad
        # configuration fails now instead of in N restarting children.
        if config.registrar and not (config.registrations or "").startswith("redis:"):
            raise ConfigError(
                "--registrar with --workers needs --registrations redis://HOST:PORT/DB"
                " (the workers must share the bindings)"
            )
        if config.auth is not None and config.auth.secret_file is None:
            raise ConfigError(
                "--auth-file with --workers needs --auth-secret-file"
                " (every worker must accept the others' nonces)"
            )
        for sock in (bind_socket(spec, reuse_port=True) for spec in config.listen):
            sock.close()
        from sipleg.workers import WorkerSupervisor, worker_arguments

        if config.status is not None:
            # The supervisor serves the sum of its workers' status.
            from sipleg.workerstatus import supervise_with_status

            return supervise_with_status(config.status, options.argv, options["workers"], reactor)
        return WorkerSupervisor(worker_arguments(options.argv), options["workers"], reactor)
    except ConfigError as e:
        sys.stderr.write(f"sipproxy: {e}\n")
        raise SystemExit(1) from None
