"""
The branch of a stateless proxy (RFC 3261 §16.11) and the loop hash of
§16.3 item 4, as pure functions of the fields they hash.

A branch this proxy writes is C{prefix + tid hash + transaction hash +
loop hash}:

 - C{prefix}: the magic cookie plus a hash of the leg's address, port and
   transport (L{leg_prefix}), byte-identical to Net::SIP's, so a response
   names the leg it belongs to;
 - the transaction id hash (15 hex digits): responses match a leg's
   request by C{prefix + tid hash} (L{sipleg.leg.Leg.check_via});
 - the transaction hash (15 hex digits) of what tells transactions apart:
   the same for a retransmission, for the CANCEL of an INVITE and for the
   ACK of a non-2xx final response, different for anything else;
 - the loop hash (10 hex digits, L{loop_hash}).

Nothing here reads a message: the callers hand over the parsed fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import md5

__all__ = ["MAGIC_COOKIE", "auth_constants", "leg_prefix", "loop_hash", "transaction_hash"]

#: RFC 3261 §8.1.1.7: every branch we make starts with this.
MAGIC_COOKIE = "z9hG4bK"


def _hash15(*parts: str) -> str:
    data = "\0".join(parts).encode("utf-8", "surrogateescape")
    return md5(data, usedforsecurity=False).hexdigest()[:15]


def leg_prefix(addr: str, port: int, proto: str) -> str:
    """
    The branch prefix of a leg: the magic cookie plus the MD5 of its
    address, port and transport (as Net::SIP makes it).
    """
    return MAGIC_COOKIE + md5(f"{addr}{port}{proto}".encode(), usedforsecurity=False).hexdigest()


def tid_hash(tid: str) -> str:
    """
    The hash of a transaction id (C{"<call-id> <cseq number>"}).
    """
    return _hash15(tid)


def loop_hash(uri: str, from_tag: str, tid: str, routes: Iterable[str], proxy_require: Iterable[str]) -> str:
    """
    The part of the branch used for loop detection (RFC 3261 §16.3 item 4):
    a hash of the fields that stay the same when a request comes back to us
    unchanged (Request-URI, From tag, Call-ID, CSeq number, Route,
    Proxy-Require), and no Via.  The To tag RFC 3261 §16.6 item 8 lists is
    left out, as it is from the whole branch, so that the ACK of an error
    response keeps the INVITE's branch.  A request that returns with the
    same loop hash as one of our Vias is looping; one that returns with
    another hash is spiralling.

    @param uri: the Request-URI the request leaves with.
    @param routes: the Route values it leaves with.
    """
    return _hash15(uri, from_tag, tid, *routes, "|", *sorted(proxy_require))[:10]


def transaction_hash(
    tid: str,
    top_branch: str,
    authorization: Iterable[str],
    proxy_require: Iterable[str],
    routes: Iterable[str],
    from_value: str,
    uri: str,
    loop: str,
) -> str:
    """
    Everything of a branch after the leg's prefix: the tid hash, the
    transaction hash and the loop hash.

    @param top_branch: the branch of the received top Via (the whole Via
        value when it has none).
    @param authorization: the Proxy-Authorization values (only their
        constant parts count, L{auth_constants}).
    @param from_value: the From value.
    @param uri: the Request-URI the request leaves with.
    @param routes: the Route values it leaves with.
    @param loop: its L{loop_hash}.
    """
    auth = sorted(auth_constants(value) for value in authorization)
    parts = [top_branch, *auth, "|", *sorted(proxy_require), "|", *routes, "|", from_value, uri]
    return _hash15(tid) + _hash15(*parts) + loop


def auth_constants(value: str) -> str:
    """
    The parts of a Proxy-Authorization value that stay the same between an
    INVITE and its CANCEL: the scheme and the realm, username, domain, qop
    and algorithm parameters (not nonce counts or responses).
    """
    scheme, _, rest = value.strip().partition(" ")
    wanted = {"realm", "username", "domain", "qop", "algorithm"}
    kept = [scheme]
    for item in rest.split(","):
        name, _, val = item.strip().partition("=")
        if name.strip().lower() in wanted:
            kept.append(f"{name.strip().lower()}={val.strip()}")
    return " ".join(kept)
