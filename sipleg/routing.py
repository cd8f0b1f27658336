"""
Pure routing decisions of the forwarding proxy: who may use it, and where
a request goes next.

Nothing here does I/O; L{sipleg.proxy.StatelessProxy} asks these objects
and acts on the answers.  Both policies are pluggable through
C{zope.interface} interfaces.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from zope.interface import Interface, implementer

from sipleg.address import PROTOCOLS, WEBSOCKET, Address, address, default_port, ip_family
from sipleg.message import Request
from sipleg.uri import URI, Via

__all__ = [
    "IAccessPolicy",
    "NetworkAccessPolicy",
    "IRoutePolicy",
    "StaticRoutes",
    "LOOPBACK_NETWORKS",
    "response_fallback",
    "response_target",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The sources allowed by default: this machine only.
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


#: How many source addresses a policy remembers its verdict for.
_TRUST_MEMORY = 4096


class IAccessPolicy(Interface):
    """
    Decides whether the proxy forwards a request for its sender.
    """

    def allows(request: Request, target: URI, source: Address) -> bool:
        """
        @param request: the request, as received.
        @param target: where it is going (its Request-URI).
        @param source: where it came from.
        @return: whether to forward it; a refused request gets 403.
        """

    def trusts(source: Address) -> bool:
        """
        @return: whether C{source} is one of ours (trusted networks): flood
            control and the scanner rule leave it alone.
        """


@implementer(IAccessPolicy)
class NetworkAccessPolicy:
    """
    Trusted networks may send anywhere; everybody else may only reach our
    own domains.  With the defaults (loopback only, no domains) the proxy
    is never an open relay.

    @ivar networks: the trusted source networks.
    @ivar domains: our own domains (lower-case host names or IPs).
    """

    def __init__(
        self,
        networks: Iterable[str | Network] = LOOPBACK_NETWORKS,
        domains: Iterable[str] = (),
    ) -> None:
        """
        @param networks: CIDR strings or network objects.
        @param domains: domains requests from anywhere may reach.
        @raise ValueError: a malformed CIDR.
        """
        self.networks: tuple[Network, ...] = tuple(
            n if not isinstance(n, str) else ipaddress.ip_network(n, strict=False) for n in networks
        )
        self.domains = frozenset(d.lower().strip("[]") for d in domains)
        self._trusted: dict[str, bool] = {}

    def trusts(self, source: Address) -> bool:
        """
        Whether C{source} is inside one of the trusted networks.
        """
        if source.addr is None:
            return False
        known = self._trusted.get(source.addr)
        if known is None:
            ip = ipaddress.ip_address(source.addr)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            known = any(ip in network for network in self.networks)
            if len(self._trusted) >= _TRUST_MEMORY:
                self._trusted.clear()
            self._trusted[source.addr] = known
        return known

    def allows(self, request: Request, target: URI, source: Address) -> bool:
        return target.host in self.domains or self.trusts(source)


class IRoutePolicy(Interface):
    """
    Chooses the next hop of a request that carries no Route set.
    """

    def next_hop(target: URI) -> URI | None:
        """
        @param target: the Request-URI.
        @return: the URI to send the request to (the Request-URI stays as
            it is), or L{None} to route by the Request-URI itself.
        """


@implementer(IRoutePolicy)
class StaticRoutes:
    """
    Per-domain next hops and an outbound proxy, as an operator configures
    them (C{--route DOMAIN=SIPURI}, C{--outbound-proxy SIPURI}).

    Lookup order: the exact domain, then C{*.parent} for each parent domain,
    then C{*}, then the outbound proxy; requests for our own domains never
    go to the outbound proxy.
    """

    def __init__(
        self,
        routes: Mapping[str, URI] = {},
        outbound_proxy: URI | None = None,
        domains: Iterable[str] = (),
    ) -> None:
        """
        @param routes: domain (or C{*.domain}, or C{*}) to next-hop URI.
        @param outbound_proxy: where everything else goes, if anywhere.
        @param domains: our own domains.
        """
        self.routes = {name.lower(): uri for name, uri in routes.items()}
        self.outbound_proxy = outbound_proxy
        self.domains = frozenset(d.lower() for d in domains)

    def next_hop(self, target: URI) -> URI | None:
        host = target.host
        if not self.routes:
            return None if host in self.domains else self.outbound_proxy
        found = self.routes.get(host)
        if found is not None:
            return found
        labels = host.split(".")
        for i in range(1, len(labels)):
            found = self.routes.get("*." + ".".join(labels[i:]))
            if found is not None:
                return found
        found = self.routes.get("*")
        if found is not None:
            return found
        if host in self.domains:
            return None
        return self.outbound_proxy


def response_target(via: Via) -> Address | None:
    """
    Where a response goes, from the Via it is addressed to (RFC 3261
    §18.2.2, RFC 3581 §4): the transport of the Via; the C{received}
    address, else C{maddr}, else the sent-by host; the C{rport} port when
    it has a value, else the sent-by port, else the transport's default.

    @return: the address (its host may be a name still to resolve), or
        L{None} for a transport we do not speak, and for a WebSocket Via
        without an address: RFC 7118 §5 clients write a C{.invalid}
        sent-by, so their responses go over their connection, never
        through DNS.
    """
    proto = via.transport.lower()
    if proto not in PROTOCOLS:
        return None
    host = via.received or via.maddr or via.host
    if proto in WEBSOCKET and ip_family(host) is None:
        return None
    rport = via.rport
    if rport:
        port: int | None = int(rport)
    else:
        port = via.port
    if port is None:
        port = default_port(proto)
    try:
        return address(host, port, proto)
    except ValueError:
        return None


def response_fallback(via: Via) -> Address | None:
    """
    Where a response over a stream transport goes when the connection its
    request came on is gone (RFC 3261 §18.2.2): the C{received} address (or
    the sent-by host) at the sent-by port, else the default port.

    @return: that address when it differs from L{response_target}'s (that
        is, when an C{rport} value pointed at the old connection's port),
        else L{None}.
    """
    if via.transport.upper() == "UDP" or not via.rport:
        return None
    try:
        fallback = address(
            via.received or via.host, via.port or default_port(via.transport.lower()), via.transport.lower()
        )
    except ValueError:
        return None
    return None if fallback == response_target(via) else fallback
