"""
The routing hook's I/O shell: L{RouteHookClient} POSTs a request's
summary to the web service with C{treq}, over a pool of persistent
connections, and hands the proxy its decision (L{sipleg.routehook}
decides everything from the answer).

Imported only with C{--route-url} (it imports C{treq} and
C{twisted.web.client}).
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from treq.content import collect
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from sipleg.decision import Answer, Drop, Forward, RequestView, Rules
from sipleg.errors import HookAnswerError
from sipleg.routehook import (
    BUSY,
    MAX_ANSWER,
    HookAnswer,
    HookConfig,
    apply_hook_answer,
    asks_hook,
    failure_answer,
    hook_summary,
    parse_hook_answer,
)

__all__ = ["PERSISTENT_PER_HOST", "RouteHookClient"]

log = Logger()

#: Idle connections kept open to the web service: enough for a few
#: thousand calls a second at a few milliseconds each; the calls beyond
#: (a burst) open connections that close once answered.
PERSISTENT_PER_HOST = 32


class RouteHookClient:
    """
    Asks the web service of a L{HookConfig} how to route requests.

    @ivar config: the settings.
    @ivar calls: calls made; C{failures}: those that failed (timeout,
        connection, HTTP status, bad answer); C{busy}: requests refused
        503 at C{max_pending}.
    """

    def __init__(self, config: HookConfig, reactor: Any) -> None:
        """
        @param reactor: the reactor to connect with, and the clock of
            the deadlines (L{IReactorTime}).
        """
        self.config = config
        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = PERSISTENT_PER_HOST
        self._http = HTTPClient(Agent(reactor, connectTimeout=config.timeout, pool=self._pool))
        self._failed = failure_answer(config)
        #: The calls waiting for an answer, by the transaction they are
        #: for: a retransmission meanwhile is absorbed.
        self._pending: dict[tuple[str, str | None, str], Deferred[HookAnswer]] = {}
        self.calls = self.failures = self.busy = 0

    #: Whether a forwarded request is one to ask about (L{asks_hook}).
    asks = staticmethod(asks_hook)

    @property
    def pending(self) -> int:
        """
        How many calls wait for an answer.
        """
        return len(self._pending)

    def route(
        self, view: RequestView, forward: Forward, rules: Rules
    ) -> Deferred[Forward | Answer | Drop] | None:
        """
        Ask how to route C{view}'s request, decided as C{forward}.

        @return: a L{Deferred} firing with the proxy's next step (never
            failing: a failed call stands for 503 or C{forward}, as
            configured), or L{None} when a call for the same transaction
            is pending already (a retransmission: nothing to do).
        """
        key = (view.tid, view.via.branch, view.method)
        if key in self._pending:
            return None
        if len(self._pending) >= self.config.max_pending:
            self.busy += 1
            return succeed(apply_hook_answer(view, forward, BUSY, rules))
        self.calls += 1
        asked = self._ask(hook_summary(view, forward))
        self._pending[key] = asked
        asked.addBoth(self._done, key)
        return asked.addCallback(lambda answer: apply_hook_answer(view, forward, answer, rules))

    def _ask(self, summary: dict[str, Any]) -> Deferred[HookAnswer]:
        """
        POST C{summary}; read the answer within the deadline.
        """
        config = self.config
        posted: Deferred[Any] = self._http.post(
            config.url, json=summary, unbuffered=True, allow_redirects=False, reactor=self._reactor
        )
        posted.addCallback(self._read)
        posted.addTimeout(config.timeout, self._reactor)
        return posted.addErrback(self._failure)

    def _read(self, response: Any) -> Deferred[HookAnswer]:
        """
        Read a bounded body; a non-2xx status is a failure once the body
        is read (so the connection can serve the next call).
        """
        parts: list[bytes] = []
        size = [0]

        def keep(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_ANSWER:
                raise HookAnswerError(f"answer larger than {MAX_ANSWER} bytes")
            parts.append(data)

        def parse(_: None) -> HookAnswer:
            if not 200 <= response.code < 300:
                raise HookAnswerError(f"HTTP status {response.code}")
            return parse_hook_answer(b"".join(parts))

        return collect(response, keep).addCallback(parse)

    def _failure(self, reason: Failure) -> HookAnswer:
        """
        A failed call: logged with why, and standing for 503 or the
        proxy's own routing.
        """
        self.failures += 1
        error = reason.value
        # (twisted.web's ResponseFailed and kin wrap the failures that
        # caused them.)
        wrapped = getattr(error, "reasons", None)
        if wrapped:
            error = wrapped[0].value
        if isinstance(error, TimeoutError | CancelledError):
            # (Only the deadline cancels a call.)
            why = f"no answer within {self.config.timeout:g} s"
        elif isinstance(error, HookAnswerError):
            why = error.reason
        else:
            why = f"{type(error).__name__}: {error}"
        log.warn(
            "routing hook {url} failed: {why}; {outcome}",
            url=self.config.url,
            why=why,
            outcome="routing as without it" if self.config.on_failure == "fallback" else "answering 503",
        )
        return self._failed

    def _done(self, result: Any, key: tuple[str, str | None, str]) -> Any:
        self._pending.pop(key, None)
        return result

    def close(self) -> Deferred[None]:
        """
        Close the idle connections (the service stops).
        """
        return self._pool.closeCachedConnections()
