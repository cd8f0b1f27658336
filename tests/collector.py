"""
Test support: a leg receiver that records what arrives and lets a test
wait for it, and builders for the requests the tests send.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from sipleg.address import Address
from sipleg.leg import BadMessage, Leg
from sipleg.message import Message, Request

__all__ = ["PacketCollector", "options"]


class PacketCollector:
    """
    Records C{(packet, source, leg)} for every packet a leg hands up.
    """

    def __init__(self) -> None:
        self.packets: list[tuple[Message | BadMessage, Address, Leg]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, packet: Message | BadMessage, source: Address, leg: Leg) -> None:
        self.packets.append((packet, source, leg))
        still = []
        for count, d in self._waiting:
            if len(self.packets) >= count:
                d.callback(None)
            else:
                still.append((count, d))
        self._waiting = still

    def wait(self, count: int = 1, timeout: float = 5) -> Deferred[None]:
        """
        Fire once C{count} packets have arrived in all; fail with
        C{TimeoutError} after C{timeout} seconds.
        """
        d: Deferred[None] = Deferred()
        if len(self.packets) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
            d.addTimeout(timeout, reactor)
        return d

    def messages(self) -> list[Message]:
        """
        The packets received so far that parsed.
        """
        return [p for p, _, _ in self.packets if isinstance(p, Message)]


def options(target: str, call_id: str = "opt-1@127.0.0.1", **headers: str) -> Request:
    """
    An OPTIONS request as a user agent would send it (its Via is added by
    the leg it leaves through).
    """
    fields = {
        "Max-Forwards": "70",
        "From": "<sip:a@127.0.0.1>;tag=1",
        "To": f"<{target}>",
        "Call-ID": call_id,
        "CSeq": "1 OPTIONS",
    }
    canonical = {name.lower(): name for name in fields}
    for name, value in headers.items():
        name = name.replace("_", "-")
        fields[canonical.get(name.lower(), name)] = value
    return Request("OPTIONS", target, list(fields.items()))
