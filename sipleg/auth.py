"""
Who must prove who they are, and the proof: digest authentication of
requests (RFC 3261 §22, RFC 8760) for the request pass.

L{Authenticator} is the question the decision core asks
(L{sipleg.decision.Rules.auth}) once a request is known to be for us to
route.  It answers L{None} (nothing to prove), an
L{sipleg.decision.Authenticated} user, or an L{sipleg.decision.Answer}:
the challenge (401 / 407), or 403 when the user proved is not the user the
request speaks for.

Who is asked (docs/design.md, "Authentication"):

 - every REGISTER for our domains, from any source: 401 with
   WWW-Authenticate; the user proved must be the To user;
 - from sources outside the trusted networks, every request whose From is
   in our domains: 407 with Proxy-Authenticate; the user proved must be
   the From user.
 - Never ACK and CANCEL (§22.1), nor in-dialog requests that come through
   a Record-Route of ours (the decision does not ask for those).

Nothing here helps an attacker: an unknown user gets the challenge a
known one gets, a wrong password a new challenge (never another code),
and the work done for an unknown user is the work done for a known one.
Failed proofs are counted per untrusted source; too many in a window and
the proxy bans the source (C{on_ban}).
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from twisted.internet.interfaces import IReactorTime

from sipleg.address import Address
from sipleg.decision import Answer, Authenticated, RequestView
from sipleg.digest import (
    ALGORITHMS,
    Credentials,
    NonceState,
    challenge,
    check_nonce,
    digest_response,
    make_nonce,
    parse_credentials,
)
from sipleg.errors import SIPParseError
from sipleg.flood import FloodControl, FloodLimits, Verdict
from sipleg.message import Request
from sipleg.uri import URI, parse_name_addr
from sipleg.users import Users

__all__ = ["AuthConfig", "AuthSettings", "Authenticator"]


@dataclass(frozen=True)
class AuthConfig:
    """
    @ivar realm: our realm (C{--auth-realm}, by default the first domain).
    @ivar algorithms: the algorithms offered, preferred first (RFC 8760
        §2.4: one challenge each).  MD5 alone by default: many phones know
        no other, and some give up on a challenge naming one they do not.
    @ivar nonce_lifetime: seconds a nonce is good for; after that, correct
        credentials get a new challenge with C{stale=true}.
    @ivar max_failures: failed proofs an untrusted source may make per
        C{failure_window} seconds; one more bans it.
    @ivar failure_window: see C{max_failures}.
    """

    realm: str
    algorithms: tuple[str, ...] = ("MD5",)
    nonce_lifetime: float = 300.0
    max_failures: int = 10
    failure_window: float = 60.0

    def __post_init__(self) -> None:
        if not self.realm or '"' in self.realm or "\\" in self.realm:
            raise ValueError(f"bad realm {self.realm!r}")
        unknown = [name for name in self.algorithms if name not in ALGORITHMS]
        if unknown or not self.algorithms or len(set(self.algorithms)) != len(self.algorithms):
            given = ", ".join(self.algorithms)
            raise ValueError(f"algorithms {given!r}: expected some of {', '.join(ALGORITHMS)}, each once")
        if self.nonce_lifetime <= 0 or self.max_failures < 1 or self.failure_window <= 0:
            raise ValueError("nonce lifetime, failures and window must be positive")


@dataclass(frozen=True)
class AuthSettings:
    """
    Authentication as C{twistd sipproxy} is told to do it.

    @ivar users_file: the user file (L{sipleg.users}).
    @ivar config: the rules.
    @ivar secret_file: a file whose bytes key the nonces, shared by every
        process that must accept the others' nonces; L{None}: a random
        key per process.
    """

    users_file: str
    config: AuthConfig
    secret_file: str | None = None


class _Proof(Enum):
    VALID = "valid"
    STALE = "stale"
    FAILED = "failed"


#: How many nonces' counts are remembered (replay protection).
_COUNTS = 65536


class Authenticator:
    """
    Digest authentication against a user file, with stateless nonces.
    """

    def __init__(
        self,
        config: AuthConfig,
        users: Callable[[], Users],
        secret: bytes,
        is_ours: Callable[[URI], bool],
        trusts: Callable[[Address], bool],
        clock: IReactorTime,
        on_ban: Callable[[Address, str, int, float], None] | None = None,
    ) -> None:
        """
        @param users: the current users (re-read files change them).
        @param secret: the nonce key; processes sharing it accept each
            other's nonces.
        @param is_ours: whether a From / To URI is in our domains.
        @param trusts: whether a source is in the trusted networks.
        @param on_ban: see L{on_ban}.
        """
        self.config = config
        self._users = users
        self._secret = secret
        self._is_ours = is_ours
        self._trusts = trusts
        self._clock = clock
        #: Called with C{(source, user tried, failures, window)} when a
        #: source fails too often (the proxy sets it: it keeps the bans).
        self.on_ban = on_ban
        self._failures = _failure_control(config)
        # nonce -> the highest nonce count seen, oldest first.
        self._counts: OrderedDict[str, int] = OrderedDict()

    def reconfigure(
        self, config: AuthConfig, is_ours: Callable[[URI], bool], trusts: Callable[[Address], bool]
    ) -> None:
        """
        Take the rules, domains and trusted networks of a reload.  The
        nonces given out stay good (the key is the same) and their counts
        are kept (no replay); failure counts restart if their limits
        changed.
        """
        if (config.max_failures, config.failure_window) != (
            self.config.max_failures,
            self.config.failure_window,
        ):
            self._failures = _failure_control(config)
        self.config = config
        self._is_ours = is_ours
        self._trusts = trusts

    def __call__(self, view: RequestView, registers: bool) -> Answer | Authenticated | None:
        """
        The authentication step of the request pass.

        @param registers: whether the request is a REGISTER our registrar
            answers.
        """
        method = view.method
        if method == "ACK" or method == "CANCEL":
            return None
        request = view.request
        if registers:
            speaks_for = _uri_of(request.get_header("to"))
            header = "authorization"
        else:
            if self._trusts(view.source):
                return None
            speaks_for = _uri_of(view.from_value)
            if speaks_for is None or not self._is_ours(speaks_for):
                return None
            header = "proxy-authorization"
        realm = self.config.realm
        stale = False
        offered = [parse_credentials(value) for value in request.get_headers(header)]
        for credentials in offered:
            if credentials is None or credentials.realm != realm:
                continue
            proof = self._prove(credentials, method)
            if proof is _Proof.VALID:
                if speaks_for is None or credentials.username != speaks_for.user:
                    return Answer(403, "Forbidden: authenticated as another user")
                return Authenticated(credentials.username)
            if proof is _Proof.STALE:
                stale = True
            else:
                self._failed(view.source, credentials.username)
            # Only the first credentials for our realm count.
            break
        return self._challenge(registers, stale)

    def own_credentials(self, request: Request) -> tuple[int, ...]:
        """
        The indexes of C{request}'s Proxy-Authorization values for our
        realm: what the proxy removes before forwarding (RFC 3261 §22.3).
        """
        values = request.get_headers("proxy-authorization")
        if not values:
            return ()
        realm = self.config.realm
        return tuple(
            index
            for index, value in enumerate(values)
            if (credentials := parse_credentials(value)) is not None and credentials.realm == realm
        )

    def _challenge(self, registers: bool, stale: bool) -> Answer:
        config = self.config
        nonce = make_nonce(self._secret, config.realm, self._clock.seconds(), os.urandom(8))
        name = "WWW-Authenticate" if registers else "Proxy-Authenticate"
        headers = tuple(
            (name, challenge(config.realm, nonce, algorithm, stale)) for algorithm in config.algorithms
        )
        if registers:
            return Answer(401, "Unauthorized", headers)
        return Answer(407, "Proxy Authentication Required", headers)

    def _prove(self, credentials: Credentials, method: str) -> _Proof:
        """
        Check one set of credentials for our realm.
        """
        config = self.config
        algorithm = credentials.algorithm
        if algorithm not in config.algorithms or credentials.qop != "auth" or not credentials.cnonce:
            return _Proof.FAILED
        try:
            count = int(credentials.nc, 16)
        except ValueError:
            return _Proof.FAILED
        now = self._clock.seconds()
        state = check_nonce(self._secret, config.realm, credentials.nonce, now, config.nonce_lifetime)
        if state is NonceState.FORGED:
            return _Proof.FAILED
        ha1 = self._users().get((credentials.username, config.realm), {}).get(algorithm)
        # An unknown user costs what a known one costs.
        expected = digest_response(
            algorithm,
            ha1 if ha1 is not None else "0" * ALGORITHMS[algorithm],
            credentials.nonce,
            credentials.nc,
            credentials.cnonce,
            method,
            credentials.uri,
        )
        if ha1 is None or not hmac.compare_digest(expected, credentials.response):
            return _Proof.FAILED
        if state is NonceState.STALE:
            return _Proof.STALE
        counts = self._counts
        if count <= counts.get(credentials.nonce, 0):
            # A replay (RFC 7616 §3.4: nc must grow).
            return _Proof.FAILED
        counts[credentials.nonce] = count
        counts.move_to_end(credentials.nonce)
        if len(counts) > _COUNTS:
            counts.popitem(last=False)
        return _Proof.VALID

    def _failed(self, source: Address, user: str) -> None:
        """
        Count a failed proof from an untrusted source; ban it when it
        failed too often.
        """
        if source.addr is None or self._trusts(source):
            return
        verdict = self._failures.check(source.addr, self._clock.seconds())
        if verdict is Verdict.BANNED and self.on_ban is not None:
            config = self.config
            self.on_ban(source, user, config.max_failures + 1, config.failure_window)


def _failure_control(config: AuthConfig) -> FloodControl:
    """
    The counter of failed proofs per source C{config} asks for.
    """
    return FloodControl(
        FloodLimits(limit=config.max_failures, window=config.failure_window, ban=config.failure_window)
    )


def _uri_of(value: str | None) -> URI | None:
    """
    The URI of a From / To value, or L{None} when it has none.
    """
    if not value:
        return None
    try:
        return parse_name_addr(value).uri
    except SIPParseError:
        return None
