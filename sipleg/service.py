"""
Build a running forwarding proxy from a L{ProxyConfig}: sockets, legs,
dispatcher, proxy, all under one C{MultiService}.

Sockets are bound here, synchronously, so that a port already in use or an
unreadable certificate is reported before the reactor starts (twistd
then exits with a one-line reason instead of running without a leg).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred

from sipleg.address import PROTOCOLS, WEBSOCKET, Address, default_port, ip_family, split_hostport
from sipleg.dispatcher import Dispatcher
from sipleg.errors import ConfigError, SIPError
from sipleg.flood import EdgePolicy
from sipleg.leg import DEFAULT_MAX_FORWARDS, Leg
from sipleg.proxy import StatelessProxy
from sipleg.registrar import DEFAULT_MAX_BINDINGS, Registrar, RegistrationFileError, domain_key
from sipleg.routing import LOOPBACK_NETWORKS, IRoutePolicy, NetworkAccessPolicy, StaticRoutes
from sipleg.transport.base import StreamLimits
from sipleg.uri import URI

if TYPE_CHECKING:
    from sipleg.auth import Authenticator, AuthSettings
    from sipleg.hookclient import RouteHookClient
    from sipleg.routehook import HookConfig
    from sipleg.stateful import TransactionTimers
    from sipleg.store import ILocationStore
    from sipleg.transport.tls import TLSConfig
    from sipleg.users import UserFile

__all__ = ["ConfigError", "ListenSpec", "ProxyConfig", "TLS_LISTENERS", "parse_listen", "make_service"]

#: The listeners that take the TLS options.
TLS_LISTENERS = ("tls", "wss")


@dataclass(frozen=True)
class ListenSpec:
    """
    One C{--listen PROTO:ADDR:PORT} option.
    """

    proto: str
    address: Address


def parse_listen(text: str) -> ListenSpec:
    """
    Parse C{udp:127.0.0.1:5060}, C{tcp:[::1]:5060}, C{tls:127.0.0.1},
    C{wss:0.0.0.0:8443} ...

    @raise ConfigError: not of that form, not an IP address, a bad port,
        or a WebSocket listener without a port (RFC 7118 gives SIP over
        WebSocket no port of its own: 80 and 443 are the web server's).
    """
    proto, sep, rest = text.partition(":")
    proto = proto.lower()
    if not sep or proto not in PROTOCOLS:
        raise ConfigError(
            f"--listen {text!r}: expected PROTO:ADDR[:PORT] with PROTO udp, tcp, tls, ws or wss"
        )
    try:
        host, port = split_hostport(rest)
        if port is None and proto in WEBSOCKET:
            raise ValueError(f"a {proto} listener needs a port ({proto}:ADDR:PORT)")
        address = Address(host, default_port(proto) if port is None else port, proto)
    except ValueError as e:
        raise ConfigError(f"--listen {text!r}: {e}") from None
    if not address.is_ip:
        raise ConfigError(f"--listen {text!r}: the address must be an IP address{_bracket_hint(proto, rest)}")
    return ListenSpec(proto, address)


def _bracket_hint(proto: str, rest: str) -> str:
    """
    For an unbracketed IPv6 address in C{--listen} (C{tcp::1:5060}): how
    to write it, else nothing.
    """
    if rest.startswith("[") or rest.count(":") < 2:
        return ""
    host, _, port = rest.rpartition(":")
    if ip_family(host) != socket.AF_INET6 or not port.isdigit():
        host, port = "::1", "5060"
    return f" (IPv6 addresses go in brackets: {proto}:[{host}]:{port})"


#: The environment variable holding the workers' shared secret (hex) for
#: flow tokens and flow relays (L{sipleg.flowrelay}), set by
#: L{sipleg.workers.WorkerSupervisor}.
RELAY_SECRET_VARIABLE = "SIPLEG_RELAY_SECRET"

#: The environment variable telling a worker of C{--workers} which it is
#: (C{"2/4"}), set by L{sipleg.workers.WorkerSupervisor}.
WORKER_VARIABLE = "SIPLEG_WORKER"


DEFAULT_LISTEN = (
    ListenSpec("udp", Address("127.0.0.1", 5060, "udp")),
    ListenSpec("tcp", Address("127.0.0.1", 5060, "tcp")),
)


@dataclass
class ProxyConfig:
    """
    Everything C{twistd sipproxy} can be told.
    """

    listen: list[ListenSpec] = field(default_factory=lambda: list(DEFAULT_LISTEN))
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    domains: list[str] = field(default_factory=list)
    routes: dict[str, URI] = field(default_factory=dict)
    outbound_proxy: URI | None = None
    allow: list[str] = field(default_factory=list)
    trace: bool = False
    max_forwards: int = DEFAULT_MAX_FORWARDS
    registrar: bool = False
    reuse_port: bool = False
    status: str | None = None
    registrations: str | None = None
    min_expires: int = 60
    max_expires: int = 3600
    max_bindings: int = DEFAULT_MAX_BINDINGS
    #: Seconds between keep-alives to NAT'ed UDP phones (0: none).
    keepalive: float = 30
    edge: EdgePolicy = field(default_factory=EdgePolicy)
    stream_limits: StreamLimits = field(default_factory=StreamLimits)
    auth: AuthSettings | None = None
    #: With C{--stateful}: the transaction timers (L{None}: stateless).
    transactions: TransactionTimers | None = None
    #: With C{--route-url}: the routing hook (L{None}: none).
    route_hook: HookConfig | None = None


def worker_share(label: str | None) -> tuple[int, int]:
    """
    C{(k, n)} for worker C{"k+1/n"} of C{--workers} (C{(0, 1)} alone):
    which part of the shared work (L{sipleg.keepalive}) is this one's.
    """
    if not label:
        return (0, 1)
    number, _, count = label.partition("/")
    return (int(number) - 1, int(count))


def bind_socket(spec: ListenSpec, reuse_port: bool = False) -> socket.socket:
    """
    Create and bind the socket of one listen spec (listening, for streams).

    UDP sockets do not set C{SO_REUSEADDR}: a second process binding the
    same port must fail rather than share it, as in Net::SIP (design item 16).

    @param reuse_port: set C{SO_REUSEPORT}, so that the workers of
        C{--workers N} share the port.
    @raise ConfigError: the address cannot be bound.
    """
    address = spec.address
    assert address.family is not None
    kind = socket.SOCK_DGRAM if spec.proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(address.family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {spec.proto}:{address}: {e.strerror}") from None
    return sock


def make_service(
    config: ProxyConfig, reactor: Any = None, reload_with: Callable[[], ProxyConfig] | None = None
) -> MultiService:
    """
    Bind every leg and assemble the proxy.

    @param reload_with: reads the configuration again; given, SIGHUP
        reloads the proxy with it (L{sipleg.reload}).
    @raise ConfigError: with a one-line reason.
    """
    tls = make_tls(config) if any(spec.proto in TLS_LISTENERS for spec in config.listen) else None
    require_websocket(config)
    access = make_access(config)
    require_domains(config)
    registrar = make_registrar(config, reactor)
    top = MultiService()
    authentication = make_authenticator(config, access, reactor, top)
    auth = authentication[0] if authentication is not None else None
    legs = []
    sockets = [bind_socket(spec, config.reuse_port) for spec in config.listen]
    # The supervisor of --workers numbers its workers (sipleg.workers).
    worker = os.environ.get(WORKER_VARIABLE)
    for spec, sock in zip(config.listen, sockets, strict=False):
        leg = Leg(
            sock=sock,
            proto=spec.proto,
            tls=tls if spec.proto in TLS_LISTENERS else None,
            reactor=reactor,
            max_forwards=config.max_forwards,
            trace=config.trace,
            stream_limits=config.stream_limits,
        )
        if worker:
            leg.log_prefix = f"worker {worker}: "
        leg.setServiceParent(top)
        legs.append(leg)
    dispatcher = Dispatcher(legs, reactor=reactor)
    arguments: dict[str, Any] = dict(
        access=access,
        routes=make_routes(config),
        registrar=registrar,
        edge=config.edge,
        clock=reactor,
        auth=auth,
    )
    if config.route_hook is not None:
        arguments["route_hook"] = make_route_hook(config.route_hook, reactor)
    if config.transactions is not None:
        # The stateful proxy is imported only with --stateful.
        from sipleg.stateful import StatefulProxy

        stateful = StatefulProxy(dispatcher, timers=config.transactions, **arguments)
        _Running(lambda: None, stateful.stop).setServiceParent(top)
        proxy: StatelessProxy = stateful
    else:
        proxy = StatelessProxy(dispatcher, **arguments)
    secret = os.environ.get(RELAY_SECRET_VARIABLE)
    if worker_share(worker)[1] > 1 and secret:
        # The workers share the flow tokens' secret; without --stateful,
        # each relays requests over flows to the worker holding them.
        proxy.flow_secret = secret.encode()
        if config.transactions is None:
            from sipleg.flowrelay import FlowRelay

            if reactor is None:
                from twisted.internet import reactor
            relay = proxy.flow_relay = FlowRelay(lambda: dispatcher.legs, secret, reactor)
            owner = relay.listen()
            if registrar is not None:
                registrar.flow_owner = owner
            _Running(lambda: None, relay.stop).setServiceParent(top)
    if registrar is not None:
        proxy.stats.registrar = registrar.status
        _Running(lambda: None, registrar.stop).setServiceParent(top)
        if config.keepalive:
            # (RFC 5626 §4.4: outbound phones are told the interval too.)
            registrar.table.flow_timer = int(config.keepalive)
            from sipleg.keepalive import KeepAlive

            keepalive = KeepAlive(
                registrar, lambda: dispatcher.legs, config.keepalive, registrar.clock, worker_share(worker)
            )
            _Running(keepalive.start, keepalive.stop).setServiceParent(top)
    if config.status is not None:
        # twisted.web and prometheus_client are imported only with --status.
        from sipleg.status import proxy_status, status_site
        from sipleg.statusport import StatusServer, bind_status, parse_status

        sock = bind_status(parse_status(config.status))
        site = status_site(lambda: proxy_status(proxy, legs), reactor)
        StatusServer(sock, site, reactor).setServiceParent(top)
    if config.route_hook is not None or reload_with is not None:
        # (The hook of the moment: a reload may replace it.)
        _Running(lambda: None, lambda: close_route_hook(proxy.route_hook)).setServiceParent(top)
    if reload_with is not None:
        from sipleg.reload import ReloadOnSignal, RunningProxy

        running = RunningProxy(
            config,
            proxy,
            registrar,
            authentication[1] if authentication is not None else None,
            [leg.socketpool for leg in legs if leg.proto in TLS_LISTENERS],
            tls,
            reactor,
        )
        ReloadOnSignal(running, reload_with, reactor).setServiceParent(top)
    return top


def require_websocket(config: ProxyConfig) -> None:
    """
    @raise ConfigError: a C{ws} or C{wss} listener without autobahn
        installed (the C{websocket} extra).
    """
    if any(spec.proto in WEBSOCKET for spec in config.listen):
        try:
            import autobahn  # noqa: F401 - only whether it is there
        except ImportError:
            raise ConfigError("ws and wss listeners need autobahn: pip install 'sipleg[websocket]'") from None


def make_route_hook(config: HookConfig, reactor: Any) -> RouteHookClient:
    """
    The client of the routing hook's web service (C{--route-url}).
    """
    # treq and twisted.web are imported only with --route-url.
    from sipleg.hookclient import RouteHookClient

    if reactor is None:
        from twisted.internet import reactor
    return RouteHookClient(config, reactor)


def close_route_hook(hook: RouteHookClient | None) -> Deferred[None] | None:
    """
    Close the idle connections of a routing hook's client, if any.
    """
    return None if hook is None else hook.close()


def make_tls(config: ProxyConfig) -> TLSConfig:
    """
    The certificate, key and CAs of the TLS listeners, read and checked
    (the key must be the certificate's).

    @raise ConfigError: missing, unreadable or malformed files, or a key
        that does not match: one line naming the files.
    """
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("a tls or wss listener needs --tls-cert and --tls-key")
    # TLS (pyOpenSSL, service_identity) is imported only by a
    # configuration with a TLS listener.
    from sipleg.transport.tls import TLSConfig

    try:
        tls = TLSConfig(config.tls_cert, config.tls_key, config.tls_ca)
        tls.server_options().getContext()
    except (OSError, ValueError, SIPError) as e:
        raise ConfigError(f"TLS: {e}") from None
    except Exception as e:  # pyOpenSSL raises its own error types
        raise ConfigError(f"TLS: {e}") from None
    return tls


def make_access(config: ProxyConfig) -> NetworkAccessPolicy:
    """
    Who may use the proxy: C{--allow} (default loopback) anywhere, anybody
    our C{--domain}s.

    @raise ConfigError: a malformed network.
    """
    try:
        return NetworkAccessPolicy(config.allow or LOOPBACK_NETWORKS, config.domains)
    except ValueError as e:
        raise ConfigError(f"--allow: {e}") from None


def make_routes(config: ProxyConfig) -> IRoutePolicy:
    """
    Where requests without a Route set go: C{--route}, C{--outbound-proxy}.
    """
    return StaticRoutes(config.routes, config.outbound_proxy, config.domains)


def require_domains(config: ProxyConfig) -> None:
    """
    @raise ConfigError: a registrar or authentication without a domain.
    """
    if config.registrar and not config.domains:
        raise ConfigError("--registrar needs at least one --domain to serve")
    if config.auth is not None and not config.domains:
        raise ConfigError("--auth-file needs at least one --domain (whose users authenticate)")


def domain_test(domains: Iterable[str]) -> Callable[[URI], bool]:
    """
    Whether a URI is a SIP URI of one of C{domains}.
    """
    keys = frozenset(domain_key(domain) for domain in domains)
    return lambda uri: uri.is_sip and domain_key(uri.host) in keys


class _Running(Service):
    """
    Starts and stops something with timers (a watched file, the
    registrar's expiry) with the proxy; twistd waits for a stop that
    returns a L{Deferred} (a store finishing its writes).
    """

    def __init__(self, start: Callable[[], None], stop: Callable[[], Deferred[None] | None]) -> None:
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        Service.startService(self)
        self._start()

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        return self._stop()


def make_authenticator(
    config: ProxyConfig, access: NetworkAccessPolicy, reactor: Any, parent: MultiService
) -> tuple[Authenticator, UserFile] | None:
    """
    The authentication C{config} asks for, and its user file, read (and
    then watched by a service under C{parent}).

    @raise ConfigError: an unreadable or malformed user file, an unusable
        secret file.
    """
    settings = config.auth
    if settings is None:
        return None
    # Imported only by a configuration that authenticates.
    from sipleg.auth import Authenticator
    from sipleg.users import UserFile

    if reactor is None:
        from twisted.internet import reactor
    users = UserFile(settings.users_file, reactor)
    if settings.secret_file is None:
        secret = os.urandom(32)
    else:
        try:
            with open(settings.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError(f"--auth-secret-file: {e}") from None
        if len(secret) < 16:
            raise ConfigError(f"--auth-secret-file {settings.secret_file}: needs at least 16 bytes")
    _Running(users.start, users.stop).setServiceParent(parent)
    authenticator = Authenticator(
        settings.config,
        lambda: users.users,
        secret,
        domain_test(config.domains),
        access.trusts,
        reactor,
    )
    return authenticator, users


def make_registrar(config: ProxyConfig, reactor: Any) -> Registrar | None:
    """
    The registrar C{config} asks for, with its bindings loaded.

    @raise ConfigError: bad expiry bounds, or an
        unreadable or corrupt registrations file.
    """
    if not config.registrar:
        if config.registrations:
            raise ConfigError("--registrations needs --registrar")
        return None
    if config.keepalive < 0:
        raise ConfigError("--keepalive must be 0 (none) or a number of seconds")
    if not 0 < config.min_expires <= config.max_expires:
        raise ConfigError("need 0 < --min-expires <= --max-expires")
    if reactor is None:
        from twisted.internet import reactor
    store: ILocationStore | None = None
    try:
        if config.registrations is not None and config.registrations.startswith("redis:"):
            # txredisapi is imported only by a configuration with Redis.
            from sipleg.redisstore import RedisStore

            store = RedisStore(config.registrations, reactor)
        elif config.registrations is not None:
            # sqlite3 is imported only by a configuration that stores.
            from sipleg.store import SQLiteStore

            store = SQLiteStore(config.registrations, reactor)
        return Registrar(
            config.domains,
            reactor,
            store,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            max_bindings=config.max_bindings,
        )
    except RegistrationFileError as e:
        raise ConfigError(str(e)) from None
