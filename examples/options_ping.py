"""
Ping a SIP server with OPTIONS over UDP and over TCP, using sipleg legs.

A "server" pair of legs (UDP and TCP on 127.0.0.1) answers every OPTIONS
with 200 OK; a "client" pair sends one OPTIONS through each transport and
prints the answer.  Run it with:  python examples/options_ping.py
"""

from __future__ import annotations

from twisted.internet import defer, task

from sipleg import Address, Leg, Request, Response
from sipleg.message import make_response
from sipleg.routing import response_target
from sipleg.uri import parse_via


def answer_options(packet, source, leg):
    """
    Server side: answer OPTIONS with 200, sent back where the Via says.
    """
    if isinstance(packet, Request) and packet.method == "OPTIONS":
        response = make_response(packet, 200)
        leg.deliver(response, response_target(parse_via(packet.get_header("via"))))


async def ping(client: Leg, server: Leg) -> Response:
    answered: defer.Deferred[Response] = defer.Deferred()
    client.receiver = lambda packet, source, leg: answered.callback(packet)
    target = f"sip:{server.local.hostport};transport={server.proto}"
    request = Request(
        "OPTIONS",
        target,
        [
            ("Max-Forwards", "70"),
            ("From", f"<sip:ping@{client.local.hostport}>;tag=1"),
            ("To", f"<{target}>"),
            ("Call-ID", f"ping-{client.proto}@127.0.0.1"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    await client.deliver(request, Address(server.local.host, server.local.port, server.proto))
    return await answered


async def main(reactor) -> None:
    legs = []
    for proto in ("udp", "tcp"):
        server = Leg(addr="127.0.0.1", port=0, proto=proto, receiver=answer_options)
        client = Leg(addr="127.0.0.1", port=0, proto=proto)
        for leg in (server, client):
            await leg.listen()
            legs.append(leg)
        response = await ping(client, server)
        print(f"{proto}: {response.code} {response.reason} from {server.local}")
    for leg in legs:
        await leg.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
