"""
HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), as
pure functions and frozen values: the hashes, the credentials a request
carries, the challenge we send, and stateless nonces.

Nothing here reads a clock, a file or a socket: time (C{now}) and the
nonce secret are arguments.  L{sipleg.auth} holds the state around them
(the user file, nonce counts, failures).

Nonces are stateless (RFC 7616 §5.5 leaves their form to the server): the
base64url of an 8-byte timestamp, 8 random bytes (each challenge its own
nonce, so nonce counts never collide) and 14 bytes of HMAC-SHA-256 over
them and the realm with a secret, so every process that shares the secret
accepts the others' nonces, and a nonce tells its own age.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from enum import Enum
from typing import NamedTuple

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "NonceState",
    "challenge",
    "check_nonce",
    "digest_response",
    "hash_a1",
    "make_nonce",
    "parse_credentials",
]

#: The algorithms we know (RFC 8760 §2.2), by their name on the wire, and
#: the length of their hex digest.
ALGORITHMS: dict[str, int] = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}

_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


def _hex(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm], text.encode("utf-8")).hexdigest()


def hash_a1(algorithm: str, user: str, realm: str, password: str) -> str:
    """
    H(A1) = H(username ":" realm ":" password) (RFC 7616 §3.4.2): what a
    user file keeps instead of the password.

    @raise KeyError: an unknown algorithm.
    """
    return _hex(algorithm, f"{user}:{realm}:{password}")


def digest_response(algorithm: str, ha1: str, nonce: str, nc: str, cnonce: str, method: str, uri: str) -> str:
    """
    The C{response} of credentials with C{qop=auth} (RFC 7616 §3.4.1):
    H(H(A1) ":" nonce ":" nc ":" cnonce ":" "auth" ":" H(method ":" uri)).
    """
    ha2 = _hex(algorithm, f"{method}:{uri}")
    return _hex(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


class Credentials(NamedTuple):
    """
    The Digest credentials of one Authorization or Proxy-Authorization
    value (RFC 3261 §25.1 C{digest-response}); absent parameters are
    empty strings.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    cnonce: str
    qop: str
    nc: str


#: The most auth-params one value may carry (more is not a phone).
_MAX_PARAMS = 32


def parse_credentials(value: str) -> Credentials | None:
    """
    Parse C{Digest name=value, ...}: values are tokens or quoted strings
    (with backslash escapes).  Linear in the length of the value.

    @return: the credentials, or L{None} when the scheme is not Digest or
        the value is malformed.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    at, end = 0, len(rest)
    while at < end:
        while at < end and rest[at] in " \t,":
            at += 1
        if at >= end:
            break
        eq = rest.find("=", at)
        if eq < 0 or len(params) >= _MAX_PARAMS:
            return None
        name = rest[at:eq].strip(" \t").lower()
        at = eq + 1
        while at < end and rest[at] in " \t":
            at += 1
        if at < end and rest[at] == '"':
            close = rest.find('"', at + 1)
            if close < 0:
                return None
            param = rest[at + 1 : close]
            if "\\" in param:
                param, close = _unescape(rest, at + 1)
                if close < 0:
                    return None
            at = close + 1
        else:
            comma = rest.find(",", at)
            comma = end if comma < 0 else comma
            param = rest[at:comma].strip(" \t")
            at = comma
        params[name] = param
    return Credentials(
        params.get("username", ""),
        params.get("realm", ""),
        params.get("nonce", ""),
        params.get("uri", ""),
        params.get("response", "").lower(),
        params.get("algorithm", "MD5").upper(),
        params.get("cnonce", ""),
        params.get("qop", "").lower(),
        params.get("nc", ""),
    )


def _unescape(text: str, at: int) -> tuple[str, int]:
    """
    The quoted string starting at C{at} (after its quote) with its
    backslash escapes resolved, and the index of its closing quote (-1
    when unterminated).
    """
    chars = []
    end = len(text)
    while at < end and text[at] != '"':
        if text[at] == "\\" and at + 1 < end:
            at += 1
        chars.append(text[at])
        at += 1
    return "".join(chars), (at if at < end else -1)


def challenge(realm: str, nonce: str, algorithm: str, stale: bool = False) -> str:
    """
    One WWW-Authenticate / Proxy-Authenticate value (RFC 3261 §22.1,
    RFC 8760 §2.4: one per algorithm offered).
    """
    value = f'Digest realm="{_quote(realm)}", nonce="{nonce}", qop="auth", algorithm={algorithm}'
    return value + ", stale=true" if stale else value


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


_STAMP = struct.Struct(">Q")
_NONCE_LENGTH = 40  # base64url of 8 + 8 + 14 bytes, no padding


def _mac(secret: bytes, head: bytes, realm: str) -> bytes:
    return hmac.new(secret, head + realm.encode("utf-8"), hashlib.sha256).digest()[:14]


def make_nonce(secret: bytes, realm: str, now: float, salt: bytes) -> str:
    """
    A nonce for C{realm} issued at C{now}.

    @param salt: 8 random bytes.
    """
    head = _STAMP.pack(int(now)) + salt
    return base64.urlsafe_b64encode(head + _mac(secret, head, realm)).decode("ascii")


class NonceState(Enum):
    """
    What a nonce is worth.
    """

    #: Ours and within its lifetime.
    FRESH = "fresh"
    #: Ours but too old: challenge again with C{stale=true}.
    STALE = "stale"
    #: Not one of ours.
    FORGED = "forged"


def check_nonce(secret: bytes, realm: str, nonce: str, now: float, lifetime: float) -> NonceState:
    """
    Whether C{nonce} was made by L{make_nonce} with C{secret} for
    C{realm}, and whether it is older than C{lifetime} seconds.
    """
    if len(nonce) != _NONCE_LENGTH:
        return NonceState.FORGED
    try:
        raw = base64.urlsafe_b64decode(nonce)
    except (ValueError, TypeError):
        return NonceState.FORGED
    head, mac = raw[:16], raw[16:]
    if not hmac.compare_digest(mac, _mac(secret, head, realm)):
        return NonceState.FORGED
    age = now - _STAMP.unpack(head[:8])[0]
    # (A nonce from a little in the future: a peer process's clock.)
    return NonceState.FRESH if -5 <= age <= lifetime else NonceState.STALE
