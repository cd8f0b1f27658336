"""
A socket pool without sockets, for tests and benchmarks.

L{MemorySocketPool} provides L{ISocketPool}: what is sent is kept in
L{MemorySocketPool.sent}, and L{MemorySocketPool.deliver} hands bytes to
the receiver as if they had arrived.  A L{sipleg.leg.Leg} built with
C{socketpool=MemorySocketPool(...)} does all its header work and parsing
for real, with no reactor I/O, much as Twisted's C{StringTransport} stands
in for a connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from sipleg.address import Address
from sipleg.transport.base import ISocketPool, Receiver

__all__ = ["MemorySocketPool"]


@implementer(ISocketPool)
class MemorySocketPool:
    """
    A socket pool that keeps what is sent instead of sending it.

    @ivar sent: C{(data, destination)} of every send, in order.
    """

    def __init__(self, local: Address, receiver: Receiver | None = None) -> None:
        """
        @param local: the address the pool pretends to listen on.
        @param receiver: where L{deliver}ed bytes go (a leg built on the
            pool sets it).
        """
        self.local = local
        self.peer: Address | None = None
        self.receiver: Any = receiver
        self.sent: list[tuple[bytes, Address]] = []

    def listen(self) -> Deferred[Address]:
        return succeed(self.local)

    def send(self, data: bytes, dst: Address, conn: object | None = None) -> Deferred[None]:
        self.sent.append((data, dst))
        return succeed(None)

    def send_now(self, data: bytes, dst: Address, conn: object | None = None, failed: object = None) -> None:
        self.sent.append((data, dst))

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def connections(self) -> list[object]:
        return []

    def flow_connection(self, peer: Address) -> object | None:
        return None

    def deliver(self, data: bytes, source: Address, conn: object | None = None) -> None:
        """
        Hand C{data} to the receiver as if it had arrived from C{source}
        (on the stream connection C{conn}, if given).
        """
        self.receiver(data, source, conn)
