"""
L{ProxyStats}: what the proxy has done, as plain counters with no I/O (the
status page of L{sipleg.status} renders them).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["ProxyStats"]


#: The methods counted under their own name (RFC 3261 and its extensions).
_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)


class ProxyStats:
    """
    Counters kept by a L{sipleg.proxy.StatelessProxy}.

    @ivar requests: requests received, by method.
    @ivar forwarded: requests handed to the next hop, by method.
    @ivar responses: responses forwarded, by status class (C{"2xx"} ...).
    @ivar answered: requests answered by the proxy itself, by status code.
    @ivar dropped: packets dropped without an answer, by reason.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.started = clock()
        self._clock = clock
        self.requests: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.answered: Counter[int] = Counter()
        self.dropped: Counter[str] = Counter()
        #: The registrar's figures (L{sipleg.registrar.Registrar.status}),
        #: when there is one.
        self.registrar: Callable[[], dict[str, float]] | None = None
        #: The stateful proxy's live transactions and kept branches
        #: (L{sipleg.stateful.StatefulProxy.status}), with C{--stateful}.
        self.transactions: Callable[[], dict[str, int]] | None = None

    @staticmethod
    def method(name: str) -> str:
        """
        The counter key of a request method: the method itself when it is
        one of the standard ones, else C{"other"}, so that peers sending
        invented methods cannot grow the counters without bound.
        """
        return name if name in _METHODS else "other"

    def snapshot(self) -> dict[str, Any]:
        """
        Every counter, as plain JSON-able data.
        """
        return {
            "uptime": round(self._clock() - self.started, 3),
            "requests": dict(self.requests),
            "forwarded": dict(self.forwarded),
            "responses": dict(self.responses),
            "answered": {str(code): n for code, n in self.answered.items()},
            "dropped": dict(self.dropped),
            **({"registrar": self.registrar()} if self.registrar is not None else {}),
            **({"stateful": self.transactions()} if self.transactions is not None else {}),
        }
