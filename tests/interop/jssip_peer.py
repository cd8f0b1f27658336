"""
JsSIP in Node as an interop peer over WebSocket (RFC 7118): C{jssip/ua.js}
registers an address of record through the proxy, sends a MESSAGE if asked,
and answers MESSAGEs and INVITEs, reporting each event as a JSON line.

Node comes from Debian (C{nodejs}, C{npm}); the npm packages are pinned by
C{jssip/package-lock.json} and installed with C{npm ci} in C{jssip/} (CI's
C{.ci/run} does it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import defer

from tests.interop.peers import PEER_TIMEOUT, _PeerProcess, _reactor, _spawn, insist

__all__ = ["JSSIP_DIR", "JsSIPPeer", "require_jssip", "start_jssip"]

#: The Node project: package.json, package-lock.json, ua.js.
JSSIP_DIR = Path(__file__).resolve().parent / "jssip"


def require_jssip() -> None:
    """
    Make sure Node and the pinned npm packages are there; call it in
    C{setUp}.

    @raise SkipTest: something is missing and C{SIPLEG_REQUIRE_PEERS} is
        not C{1}.
    @raise PeerError: something is missing and C{SIPLEG_REQUIRE_PEERS=1}.
    """
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Debian packages nodejs and npm)")
    for package in ("jssip", "jssip-node-websocket"):
        if not (JSSIP_DIR / "node_modules" / package / "package.json").exists():
            missing.append(f"npm package {package} (run `npm ci` in {JSSIP_DIR})")
    insist(missing, "JsSIP peer missing")


class JsSIPPeer:
    """
    A running C{ua.js}: its events, which can be waited for.

    @ivar events: every event reported so far, in order.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.process: _PeerProcess | None = None
        self._waiting: list[tuple[str, defer.Deferred[dict[str, Any]]]] = []

    def line(self, text: str) -> None:
        """
        One line of C{ua.js}'s output.
        """
        try:
            event = json.loads(text)
        except ValueError:
            return
        self.events.append(event)
        for name, waiter in list(self._waiting):
            if name == event.get("event"):
                self._waiting.remove((name, waiter))
                waiter.callback(event)

    def wait(
        self, name: str, timeout: float = PEER_TIMEOUT, reactor: Any = None
    ) -> defer.Deferred[dict[str, Any]]:
        """
        @return: a L{Deferred} firing with the first event C{name}, or
            failing with C{TimeoutError} (naming what was seen) after
            C{timeout} seconds.
        """
        for event in self.events:
            if event.get("event") == name:
                return defer.succeed(event)
        waiter: defer.Deferred[dict[str, Any]] = defer.Deferred(lambda d: self._waiting.remove((name, d)))
        self._waiting.append((name, waiter))

        def expired(result: object, seconds: float) -> None:
            stderr = bytes(self.process.stderr[-2000:]).decode("utf-8", "replace") if self.process else ""
            raise TimeoutError(f"JsSIP: no {name!r} in {seconds} s; events {self.events}; {stderr}")

        return waiter.addTimeout(timeout, _reactor(reactor), onTimeoutCancel=expired)

    def stop(self) -> defer.Deferred[int | None]:
        """
        Terminate C{ua.js}.
        """
        if self.process is None:
            return defer.succeed(None)
        self.process.stop()
        return self.process.ended


def start_jssip(
    url: str,
    uri: str,
    message: dict[str, str] | None = None,
    ca_file: str | None = None,
    reactor: Any = None,
) -> JsSIPPeer:
    """
    Start C{ua.js}: it connects to C{url} and registers C{uri}.

    @param message: C{{"to": URI, "body": text}}: a MESSAGE sent once
        registered.
    @param ca_file: a PEM CA file Node trusts (C{NODE_EXTRA_CA_CERTS}) for
        C{wss}.
    """
    peer = JsSIPPeer()
    config: dict[str, Any] = {"url": url, "uri": uri}
    if message is not None:
        config["message"] = message
    env = {"NODE_EXTRA_CA_CERTS": ca_file} if ca_file is not None else None
    peer.process = _spawn(
        _reactor(reactor),
        ["node", str(JSSIP_DIR / "ua.js"), json.dumps(config)],
        PEER_TIMEOUT * 2,
        cwd=str(JSSIP_DIR),
        on_line=peer.line,
        env=env,
    )
    return peer
