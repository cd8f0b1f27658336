"""
Parser micro-benchmark: sipleg.message against twisted.protocols.sip.

Both parse the same ~500-byte INVITE datagram in the same run:

 1. parse + serialise;
 2. parse + read Via, Route and Max-Forwards + serialise;
 3. (for information) parse + the edits a proxy makes (a new top Via,
    Max-Forwards decremented, the top Route removed) + serialise.

Run from the repository root::

    python bench/parse.py [--repeat 5]

and copy the table into bench/README.md ("## Parser").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
import warnings
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sipleg.message import parse_message  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from twisted.protocols import sip as tsip  # noqa: E402

_SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.atlanta.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(_SDP)
) + _SDP

_NEW_VIA = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1"


def sipleg_parse_serialise() -> bytes:
    return bytes(parse_message(INVITE))


def sipleg_parse_read_serialise() -> bytes:
    message = parse_message(INVITE)
    message.get_headers("via")
    message.get_headers("route")
    message.get_header("max-forwards")
    return bytes(message)


def sipleg_parse_edit_serialise() -> bytes:
    message = parse_message(INVITE)
    message.insert_header("via", _NEW_VIA)
    forwards = message.get_header("max-forwards")
    message.set_header("max-forwards", str(int(forwards or "70") - 1))
    message.remove_header("route", 0)
    return bytes(message)


def _twisted_parse() -> tsip.Message:
    messages: list[tsip.Message] = []
    parser = tsip.MessagesParser(messages.append)
    parser.dataReceived(INVITE)
    parser.dataDone()
    return messages[0]


def twisted_parse_serialise() -> bytes:
    return _twisted_parse().toString().encode("utf-8")


def twisted_parse_read_serialise() -> bytes:
    message = _twisted_parse()
    message.headers.get("via")
    message.headers.get("route")
    message.headers.get("max-forwards")
    return message.toString().encode("utf-8")


def twisted_parse_edit_serialise() -> bytes:
    message = _twisted_parse()
    message.headers["via"].insert(0, _NEW_VIA)
    forwards = message.headers["max-forwards"][0]
    message.headers["max-forwards"] = [str(int(forwards) - 1)]
    del message.headers["route"][0]
    return message.toString().encode("utf-8")


CASES: list[tuple[str, Callable[[], bytes], Callable[[], bytes]]] = [
    ("parse + serialise", sipleg_parse_serialise, twisted_parse_serialise),
    (
        "parse + read Via/Route/Max-Forwards + serialise",
        sipleg_parse_read_serialise,
        twisted_parse_read_serialise,
    ),
    ("parse + proxy edits + serialise (info)", sipleg_parse_edit_serialise, twisted_parse_edit_serialise),
]


def ops_per_second(function: Callable[[], bytes], repeat: int) -> float:
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=repeat, number=number))
    return number / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timing runs, best kept")
    args = parser.parse_args()

    # Both produce a parsable message from the same bytes.
    for _, ours, theirs in CASES:
        parse_message(ours())
        parse_message(theirs())

    print(
        f"{len(INVITE)}-byte INVITE, Python {platform.python_version()}, "
        f"{platform.machine()}, best of {args.repeat}"
    )
    print(f"| {'case':<48} | {'sipleg ops/s':>12} | {'Twisted ops/s':>13} | {'ratio':>6} |")
    print(f"|{'-' * 50}|{'-' * 13}:|{'-' * 14}:|{'-' * 7}:|")
    for name, ours, theirs in CASES:
        a = ops_per_second(ours, args.repeat)
        b = ops_per_second(theirs, args.repeat)
        print(f"| {name:<48} | {a:>12,.0f} | {b:>13,.0f} | {a / b:>5.1f}x |")


if __name__ == "__main__":
    main()
