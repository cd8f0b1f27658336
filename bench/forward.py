"""
CPU cost of the proxy's forward path, without sockets or a load generator.

One SIP call as SIPp makes it (INVITE, 180, 200, ACK, BYE, 200: the six
messages a stateless proxy forwards) is pushed through a real
StatelessProxy whose legs have in-memory socket pools: parse, routing
decisions, header surgery and serialisation are all real; only the
kernel is left out.  Reports microseconds of CPU per forwarded message,
and with --profile the functions that take it.

    python bench/forward.py [--calls 20000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from sipleg.address import Address  # noqa: E402
from sipleg.dispatcher import Dispatcher  # noqa: E402
from sipleg.leg import Leg  # noqa: E402
from sipleg.proxy import StatelessProxy  # noqa: E402
from sipleg.transport.memory import MemorySocketPool  # noqa: E402

UAC = Address("127.0.0.1", 5061)
UAS = Address("127.0.0.1", 5062)


INVITE = (
    b"INVITE sip:service@127.0.0.1:5062 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=1\r\n"
    b"To: service <sip:service@127.0.0.1:5062>\r\n"
    b"Call-ID: 1-1234@127.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\n"
    b"Max-Forwards: 70\r\n"
    b"Subject: Performance Test\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n\r\n"
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def response(request: bytes, code: int, reason: str, extra: str = "") -> bytes:
    """
    The UAS's answer to a forwarded request: its Via, Record-Route, From,
    To (with a tag), Call-ID and CSeq lines copied.
    """
    head = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    keep = [
        line + (";tag=2" if line.startswith("To:") else "")
        for line in head
        if line.split(":", 1)[0] in ("Via", "Record-Route", "From", "To", "Call-ID", "CSeq")
    ]
    lines = [f"SIP/2.0 {code} {reason}", *keep, *([extra] if extra else []), "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def in_dialog(method: str, cseq: int) -> bytes:
    return (
        f"{method} sip:service@127.0.0.1:5062 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-{cseq}\r\n"
        "Route: <sip:127.0.0.1:5060;lr>\r\n"
        "From: sipp <sip:sipp@127.0.0.1:5061>;tag=1\r\n"
        "To: service <sip:service@127.0.0.1:5062>;tag=2\r\n"
        "Call-ID: 1-1234@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def build() -> tuple[Leg, MemorySocketPool, list[tuple[bytes, Address]]]:
    """
    A one-leg proxy on 127.0.0.1:5060 and the six messages of a call, each
    with where it comes from.
    """
    pool = MemorySocketPool(Address("127.0.0.1", 5060))
    leg = Leg(socketpool=pool)
    StatelessProxy(Dispatcher([leg]))
    leg._pool_received(INVITE, UAC, None)
    invite_out = pool.sent[-1][0]
    ack = in_dialog("ACK", 1)
    bye = in_dialog("BYE", 2)
    leg._pool_received(bye, UAC, None)
    bye_out = pool.sent[-1][0]
    messages = [
        (INVITE, UAC),
        (response(invite_out, 180, "Ringing"), UAS),
        (response(invite_out, 200, "OK", "Contact: <sip:service@127.0.0.1:5062>"), UAS),
        (ack, UAC),
        (bye, UAC),
        (response(bye_out, 200, "OK"), UAS),
    ]
    pool.sent.clear()
    return leg, pool, messages


def run(calls: int, leg: Leg, pool: MemorySocketPool, messages: list[tuple[bytes, Address]]) -> float:
    """
    Forward C{calls} calls; return CPU seconds.
    """
    receive = leg._pool_received
    start = time.process_time()
    for _ in range(calls):
        for data, source in messages:
            receive(data, source, None)
        pool.sent.clear()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one run, top 25 by self time")
    args = parser.parse_args()
    leg, pool, messages = build()
    # Every message must really be forwarded.
    run(1, leg, pool, [])
    for data, source in messages:
        leg._pool_received(data, source, None)
    assert len(pool.sent) == len(messages), f"forwarded {len(pool.sent)} of {len(messages)}"
    pool.sent.clear()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(args.calls, leg, pool, messages)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    best = min(run(args.calls, leg, pool, messages) for _ in range(args.repeat))
    per_message = best / (args.calls * len(messages)) * 1e6
    print(f"{per_message:.1f} us CPU per forwarded message ({args.calls} calls, best of {args.repeat})")


if __name__ == "__main__":
    main()
