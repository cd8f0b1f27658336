"""
Load-test subject: Twisted's own C{twisted.protocols.sip.Proxy} on UDP.

    python bench/twisted_proxy.py --port PORT [--host 127.0.0.1]

Prints C{READY} once listening; runs until SIGTERM/SIGINT.

C{sip.Proxy} cannot forward anything out of the box; this runner adds the
least it needs to carry SIPp's calls (C{bench/load.py}), and no more:

 1. C{Proxy.locator} is L{None}: every request fails with an
    C{AttributeError} and is answered 500.  The proxy does not route by
    Request-URI or Route either, it asks the locator for the address of
    the B{To} URI (a registry lookup).  L{ToIsPhysical} answers with the
    To URI itself, which is right for SIPp's calls, whose To names the UAS
    by IP address and port.
 2. Its parser keeps a header line with several comma-separated Via
    values (RFC 3261 §7.3.1; SIPp's C{[last_Via:]} writes the Vias of a
    response that way) as one value, which C{parseViaHeader} then fails
    on: every response is lost in an unhandled C{ValueError}.
    L{ViaSplittingProxy} splits them, as any SIP parser must.
 3. C{Proxy(host=None)} puts C{socket.getfqdn()} in its Via, and
    C{handle_response} drops every response whose top Via is not exactly
    C{(host, port)}.  The runner passes the IP address and port it
    listens on.

Left as they are: the Via it adds has no branch parameter (RFC 3261
§8.1.1.7 requires one; SIPp copies Vias and does not care), Max-Forwards
is not decremented, no Record-Route is added, and only UDP exists.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

with warnings.catch_warnings():
    # twisted.protocols.sip is deprecated in favour of nothing yet.
    warnings.simplefilter("ignore")
    from twisted.protocols import sip


@implementer(sip.ILocator)
class ToIsPhysical:
    """
    An C{ILocator} for which every logical URI is already physical.
    """

    def getAddress(self, logicalURL: sip.URL) -> defer.Deferred[sip.URL]:
        """
        @param logicalURL: the To URI of a request.
        @return: a fired Deferred with C{logicalURL} itself.
        """
        return defer.succeed(logicalURL)


class ViaSplittingProxy(sip.Proxy):
    """
    C{sip.Proxy} that sees each Via value as a header of its own.
    """

    def addMessage(self, msg: sip.Message) -> None:
        """
        Split comma-separated Via values (a Via value holds no comma: no
        quoted string or comment in RFC 3261 §20.42 / §25.1 C{via-parm}),
        then queue the message as C{sip.Base} does.
        """
        vias = msg.headers.get("via")
        if vias:
            msg.headers["via"] = [part.strip() for value in vias for part in value.split(",")]
        super().addMessage(msg)


def main(argv: list[str] | None = None) -> None:
    """
    Listen on UDP C{--host}:C{--port} with a L{ViaSplittingProxy} and run the
    reactor.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    proxy = ViaSplittingProxy(host=args.host, port=args.port)
    proxy.locator = ToIsPhysical()  # type: ignore[assignment]
    r: Any = reactor
    r.listenUDP(args.port, proxy, interface=args.host)
    r.callWhenRunning(lambda: print("READY", flush=True))
    r.run()


if __name__ == "__main__":
    main(sys.argv[1:])
