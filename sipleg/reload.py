"""
Reloading a running proxy without a restart: on SIGHUP, the command line
and its C{--config} file are read again and what can change in a running
proxy is applied without closing a socket or dropping a call in progress.

A reload applies (L{RELOADED}): the routes and the outbound proxy, the
trusted networks, the domains (access policy, routes, registrar,
authentication), the authentication's user file and rules, and the TLS
certificate, key and CAs (new connections use them; connections already
made keep theirs).  The user file and the TLS files are read again even
when their names did not change (a renewed certificate).

Everything else (the listeners, C{--workers}, C{--stateful}, the
registrar and its store, flood control, the stream limits, turning
authentication on or off, the nonce secret) needs a restart: a reload that
changes it applies the rest and logs one line naming what waits for the
restart.  A configuration that cannot be used (a bad option, file,
certificate or user file) changes nothing: the proxy keeps the running
configuration and logs one line saying why.

L{diff_config} is pure; L{RunningProxy} prepares a reload (blocking: it
reads files, so in a thread) and applies it (on the reactor thread, by
swapping objects the request path reads); L{ReloadOnSignal} is the SIGHUP
shell.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipleg.errors import ConfigError
from sipleg.registrar import domain_key
from sipleg.routing import IAccessPolicy, IRoutePolicy
from sipleg.service import (
    ProxyConfig,
    close_route_hook,
    domain_test,
    make_access,
    make_route_hook,
    make_routes,
    make_tls,
    require_domains,
)

if TYPE_CHECKING:
    from sipleg.proxy import StatelessProxy
    from sipleg.registrar import Registrar
    from sipleg.transport.base import ISocketPool
    from sipleg.transport.tls import TLSConfig
    from sipleg.users import Loaded, UserFile

__all__ = ["RELOADED", "ReloadOnSignal", "Reload", "RunningProxy", "diff_config", "on_sighup"]

log = Logger()

#: The fields of L{ProxyConfig} a reload applies, with the option setting
#: each.  A field not named here needs a restart.
RELOADED = {
    "routes": "route",
    "outbound_proxy": "outbound-proxy",
    "allow": "allow",
    "domains": "domain",
    "auth": "auth-file",
    "tls_cert": "tls-cert",
    "tls_key": "tls-key",
    "tls_ca": "tls-ca",
    "route_hook": "route-url",
}

#: The options of the fields that need a restart, where the field's name
#: is not the option's.
_RESTART_OPTIONS = {
    "reuse_port": "workers",
    "edge": "flood control",
    "stream_limits": "max-connections/max-per-source/first-message-timeout",
    "transactions": "stateful",
    "auth": "auth-file/auth-secret-file",
}


def option_name(field: str, reloaded: bool = True) -> str:
    """
    The option (or options) a field of L{ProxyConfig} comes from.
    """
    if reloaded and field in RELOADED:
        return RELOADED[field]
    return _RESTART_OPTIONS.get(field, field.replace("_", "-"))


def diff_config(old: ProxyConfig, new: ProxyConfig) -> tuple[list[str], list[str]]:
    """
    What differs between two configurations.

    @return: the fields that differ and a reload applies, and those that
        differ and need a restart (authentication turned on or off, or
        another nonce secret, among them).
    """
    changed: list[str] = []
    restart: list[str] = []
    for field in fields(ProxyConfig):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        if field.name == "auth" and (
            before is None or after is None or before.secret_file != after.secret_file
        ):
            restart.append(field.name)
        elif field.name in RELOADED:
            changed.append(field.name)
        else:
            restart.append(field.name)
    return changed, restart


@dataclass(frozen=True)
class Reload:
    """
    A reload, prepared: everything read and checked, ready to swap in.

    @ivar config: the configuration running once applied (the new one,
        with the old values of what needs a restart).
    @ivar access: the new access policy.
    @ivar routes: the new route policy.
    @ivar tls: the TLS listeners' new configuration (L{None}: no TLS
        listener).
    @ivar users: the user file, read (L{None}: no authentication).
    @ivar changed: the options whose change is applied.
    @ivar restart: the options whose change waits for a restart.
    """

    config: ProxyConfig
    access: IAccessPolicy
    routes: IRoutePolicy
    tls: TLSConfig | None
    users: Loaded | None
    changed: tuple[str, ...]
    restart: tuple[str, ...]


class RunningProxy:
    """
    The parts of a running proxy a reload changes.

    @ivar config: the configuration running.
    @ivar proxy: the proxy, whose policies a reload replaces.
    @ivar registrar: its registrar, whose domains a reload replaces.
    @ivar users: the authentication's user file, if any.
    @ivar tls: the TLS listeners' configuration now, if any.
    """

    def __init__(
        self,
        config: ProxyConfig,
        proxy: StatelessProxy,
        registrar: Registrar | None,
        users: UserFile | None,
        tls_pools: Sequence[ISocketPool],
        tls: TLSConfig | None,
        reactor: Any = None,
    ) -> None:
        """
        @param users: the authentication's user file, if any.
        @param tls_pools: the socket pools of the TLS listeners.
        @param tls: their configuration.
        @param reactor: the reactor a new routing hook client uses.
        """
        self._reactor = reactor
        self.config = config
        self.proxy = proxy
        self.registrar = registrar
        self.users = users
        self._tls_pools = list(tls_pools)
        self.tls = tls

    def prepare(self, new: ProxyConfig) -> Reload:
        """
        Read and check what C{new} needs (blocking: run it in a thread).

        @raise ConfigError: C{new} cannot be used; nothing changed.
        """
        changed, restart = diff_config(self.config, new)
        config = replace(new, **{name: getattr(self.config, name) for name in restart})
        require_domains(config)
        tls = None
        if self._tls_pools:
            tls = make_tls(config)
            if self.tls is not None and tls.certificate != self.tls.certificate:
                changed.append("tls_cert")
        users = None
        if config.auth is not None and self.users is not None:
            from sipleg.users import load_users

            users = load_users(config.auth.users_file)
            if users[1] != self.users.users:
                changed.append("auth")
        return Reload(
            config,
            make_access(config),
            make_routes(config),
            tls,
            users,
            tuple(dict.fromkeys(option_name(name) for name in changed)),
            tuple(option_name(name, reloaded=False) for name in restart),
        )

    def apply(self, reload: Reload) -> Reload:
        """
        Swap the prepared objects in (on the reactor thread).  Requests
        being decided keep the rules they started with; connections and
        transactions stay as they are.

        @return: C{reload}.
        """
        config = reload.config
        proxy = self.proxy
        proxy.access = reload.access
        proxy.routes = reload.routes
        if self.registrar is not None:
            self.registrar.table.domains = frozenset(domain_key(domain) for domain in config.domains)
        if reload.users is not None and config.auth is not None and self.users is not None:
            self.users.replace(config.auth.users_file, reload.users)
            assert proxy.auth is not None
            proxy.auth.reconfigure(config.auth.config, domain_test(config.domains), reload.access.trusts)
        if config.route_hook != self.config.route_hook:
            self._replace_route_hook(config)
        if reload.tls is not None:
            self.tls = reload.tls
            for pool in self._tls_pools:
                pool.tls = reload.tls  # type: ignore[attr-defined]
        self.config = config
        return reload

    def _replace_route_hook(self, config: ProxyConfig) -> None:
        """
        The routing hook's new URL, timeout or failure mode: new requests
        ask a new client.  The old one's idle connections close now; a
        call still pending finishes on its own (its connection then idles
        out of the old pool).
        """
        proxy = self.proxy
        old = proxy.route_hook
        proxy.route_hook = (
            None if config.route_hook is None else make_route_hook(config.route_hook, self._reactor)
        )
        close_route_hook(old)


def on_sighup(callback: Callable[[], object], reactor: Any) -> Callable[[], None]:
    """
    Call C{callback} on the reactor thread at every SIGHUP (the handler
    only schedules it: a signal may arrive in the middle of anything).

    @return: a function putting the previous handler back.
    """
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(callback))

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore


class ReloadOnSignal(Service):
    """
    Reloads a L{RunningProxy} at every SIGHUP.

    The configuration is read and the files it names (user file, TLS
    certificate) are read and checked in a thread; only the swap runs on
    the reactor thread.  A SIGHUP arriving during a reload starts another
    one once it is done.
    """

    def __init__(
        self,
        running: RunningProxy,
        load: Callable[[], ProxyConfig],
        reactor: Any = None,
        to_thread: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        """
        @param running: the proxy to reload (L{live}).
        @param load: reads the configuration again (the command line and
            its C{--config} file); raises L{ConfigError}.
        @param to_thread: runs a blocking call off the reactor thread
            (default: L{twisted.internet.threads.deferToThread}).
        """
        if reactor is None:
            from twisted.internet import reactor
        if to_thread is None:
            from twisted.internet.threads import deferToThread

            to_thread = deferToThread
        self.live = running
        self._load = load
        self._reactor = reactor
        self._to_thread = to_thread
        self._restore: Callable[[], None] | None = None
        self._busy = False
        self._again = False

    def startService(self) -> None:
        Service.startService(self)
        self._restore = on_sighup(self.reload, self._reactor)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._restore is not None:
            self._restore()
            self._restore = None

    def reload(self) -> Deferred[Reload | None] | None:
        """
        Read the configuration again and apply it; log one line with the
        outcome (and one more naming what needs a restart).

        @return: a L{Deferred} firing with the L{Reload} applied (L{None}
            when refused) once done, or L{None} when a reload is already
            running (this one follows it).
        """
        if self._busy:
            self._again = True
            return None
        self._busy = True
        d: Deferred[Any] = self._to_thread(lambda: self.live.prepare(self._load()))
        d.addCallback(self.live.apply)
        d.addCallbacks(self._applied, self._refused)
        d.addBoth(self._done)
        return d

    def _applied(self, reload: Reload) -> Reload:
        changed = ", ".join(reload.changed) or "nothing"
        log.info("reloaded the configuration; changed: {changed}", changed=changed)
        if reload.restart:
            log.warn(
                "not applied until a restart: {options}",
                options=", ".join(reload.restart),
            )
        return reload

    def _refused(self, failure: Failure) -> None:
        if failure.check(ConfigError):
            log.error(
                "reload refused, keeping the running configuration: {reason}",
                reason=str(failure.value),
            )
        else:
            log.failure("reload failed, keeping the running configuration", failure)

    def _done(self, result: Reload | None) -> Reload | None:
        self._busy = False
        if self._again:
            self._again = False
            self.reload()
        return result
