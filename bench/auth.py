"""
CPU cost of digest authentication in the request pass, without sockets.

A real StatelessProxy (in-memory socket pools, a registrar for
example.test, 127.0.0.1 untrusted) with an Authenticator handles, per
round, in the same run:

 - C{plain}: an INVITE from a trusted source, forwarded unauthenticated
   (the baseline);
 - C{challenge}: an INVITE from a user of ours at an untrusted source
   without credentials: answered 407;
 - C{verified}: the same with valid credentials (a fresh nonce count each
   time): checked, our credentials removed, forwarded;
 - C{register}: a REGISTER with valid credentials: checked and answered 200
   by the registrar;
 - C{register-plain}: the same REGISTER at a proxy without authentication
   (the registrar's own cost).

Reports microseconds of CPU per request and the ratios to C{plain}.

    python3 bench/auth.py [--rounds 20000] [--algorithm MD5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402

from sipleg.address import Address  # noqa: E402
from sipleg.auth import AuthConfig, Authenticator  # noqa: E402
from sipleg.digest import digest_response, hash_a1, parse_credentials  # noqa: E402
from sipleg.dispatcher import Dispatcher  # noqa: E402
from sipleg.flood import EdgePolicy  # noqa: E402
from sipleg.leg import Leg  # noqa: E402
from sipleg.message import parse_message  # noqa: E402
from sipleg.passwd import set_password  # noqa: E402
from sipleg.proxy import StatelessProxy  # noqa: E402
from sipleg.registrar import Registrar  # noqa: E402
from sipleg.routing import NetworkAccessPolicy  # noqa: E402
from sipleg.transport.memory import MemorySocketPool  # noqa: E402
from sipleg.users import parse_users  # noqa: E402

STRANGER = Address("127.0.0.1", 5061)
TRUSTED = Address("127.0.0.2", 5061)


def request(method: str, uri: str, n: int, extra: str = "") -> bytes:
    to = "sip:alice@example.test" if method == "REGISTER" else uri
    contact = "Contact: <sip:alice@127.0.0.1:5061>\r\n" if method == "REGISTER" else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}\r\n"
        f"From: <sip:alice@example.test>;tag={n}\r\nTo: <{to}>\r\n"
        f"Call-ID: {n}@bench\r\nCSeq: {n} {method}\r\nMax-Forwards: 70\r\n"
        f"{contact}{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def proxy(access: NetworkAccessPolicy, clock: Clock, auth: Authenticator | None) -> MemorySocketPool:
    """
    A proxy with a registrar for example.test; its leg's pool.
    """
    pool = MemorySocketPool(Address("127.0.0.1", 5060))
    StatelessProxy(
        Dispatcher([Leg(socketpool=pool)]),
        access=access,
        registrar=Registrar(["example.test"], clock),
        edge=EdgePolicy(flood=None, scanners=()),
        clock=clock,
        auth=auth,
    )
    return pool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--algorithm", default="MD5")
    args = parser.parse_args()
    clock = Clock()
    clock.advance(1_000_000)
    users = parse_users(set_password("", "users", "example.test", "alice", "wonderland"), "users")
    access = NetworkAccessPolicy(["127.0.0.2/32"], ["example.test"])
    auth = Authenticator(
        AuthConfig("example.test", (args.algorithm,), max_failures=10**9),
        lambda: users,
        b"s" * 32,
        lambda uri: uri.host == "example.test",
        access.trusts,
        clock,
    )
    pool = proxy(access, clock, auth)
    open_pool = proxy(access, clock, None)
    # One challenge to answer, then a fresh nonce count per request.
    pool.deliver(request("INVITE", "sip:bob@127.0.0.1:5062", 0), STRANGER)
    offer = parse_credentials(parse_message(pool.sent[-1][0]).get_header("proxy-authenticate") or "")
    assert offer is not None
    ha1 = hash_a1(args.algorithm, "alice", "example.test", "wonderland")

    def proof(method: str, uri: str, nc: int) -> str:
        count = f"{nc:08x}"
        response = digest_response(args.algorithm, ha1, offer.nonce, count, "c", method, uri)
        return (
            f'Digest username="alice", realm="example.test", nonce="{offer.nonce}", uri="{uri}", '
            f'response="{response}", algorithm={args.algorithm}, cnonce="c", qop=auth, nc={count}'
        )

    def invite_proof(n: int) -> str:
        return f"Proxy-Authorization: {proof('INVITE', 'sip:bob@127.0.0.1:5062', n + 1)}\r\n"

    def register_proof(n: int) -> str:
        return f"Authorization: {proof('REGISTER', 'sip:example.test', n + 1)}\r\n"

    rounds = args.rounds
    kinds = {
        "plain": [(request("INVITE", "sip:bob@127.0.0.1:5062", n), TRUSTED) for n in range(rounds)],
        "challenge": [(request("INVITE", "sip:bob@127.0.0.1:5062", n), STRANGER) for n in range(rounds)],
        "verified": [
            (request("INVITE", "sip:bob@127.0.0.1:5062", n, invite_proof(n)), STRANGER) for n in range(rounds)
        ],
        "register": [
            (request("REGISTER", "sip:example.test", n, register_proof(rounds + n)), STRANGER)
            for n in range(rounds)
        ],
        "register-plain": [(request("REGISTER", "sip:example.test", n), TRUSTED) for n in range(rounds)],
    }
    expected = {
        "plain": b"INVITE",
        "challenge": b"SIP/2.0 407",
        "verified": b"INVITE",
        "register": b"SIP/2.0 200",
        "register-plain": b"SIP/2.0 200",
    }
    costs = {}
    for kind, packets in kinds.items():
        into = open_pool if kind == "register-plain" else pool
        into.sent.clear()
        start = time.process_time()
        for data, source in packets:
            into.deliver(data, source)
        costs[kind] = (time.process_time() - start) / rounds * 1e6
        got = sum(sent.startswith(expected[kind]) for sent, _ in into.sent)
        assert got == rounds, (kind, got, into.sent[-1][0][:80])
    print(f"{rounds} requests each, algorithm {args.algorithm}")
    for kind, cost in costs.items():
        print(f"{kind:14} {cost:7.1f} us/request  {cost / costs['plain']:.2f}x plain")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
