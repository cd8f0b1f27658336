"""
The response context of a forking proxy (RFC 3261 §16.7), as time-free
rules: which responses go upstream, which branches are cancelled, when the
next group of targets is tried, and which final response wins.

L{ResponseContext} takes events (a branch answered, timed out or could not
be reached; the caller cancelled) and returns a L{Step} for the shell
(L{sipleg.stateful}) to carry out.  It holds no messages of its own beyond
the responses it may have to choose from, and no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

__all__ = ["BranchState", "ResponseContext", "Step", "best_response"]

#: A response as the shell keeps it (the rules only read its code).
R = TypeVar("R")

#: 4xx responses that tell the caller how to try again: preferred among
#: 4xx (§16.7 step 6).
_INFORMATIVE = (401, 407, 415, 420, 484)


def best_response(codes: Sequence[int]) -> int:
    """
    The index of the response a proxy sends upstream when every branch is
    done without a 2xx (RFC 3261 §16.7 step 6): any 6xx; else the lowest
    class, within 4xx preferring those that help a resubmission (401,
    407, 415, 420, 484), then the first received.
    """
    if not codes:
        raise ValueError("no response to choose from")

    def rank(index: int) -> tuple[int, int, int]:
        code = codes[index]
        klass = code // 100
        order = 0 if klass == 6 else klass
        return order, 0 if code in _INFORMATIVE else 1, index

    return min(range(len(codes)), key=rank)


class BranchState(Enum):
    """
    Where one branch (client transaction) is.
    """

    #: Sent, nothing heard yet.
    CALLING = "calling"
    #: A provisional response came (it may be cancelled now).
    PROCEEDING = "proceeding"
    #: A final response, a timeout or a transport error ended it.
    DONE = "done"


class Step(NamedTuple, Generic[R]):
    """
    What the shell does after an event.

    @ivar upstream: responses to send to the caller now, in order.
    @ivar cancel: branches to send CANCEL to.
    @ivar start: targets of new branches to create (the next group).
    @ivar done: whether the context is finished (a final response went
        upstream, or all branches ended after one did).
    """

    upstream: list[R]
    cancel: list[str]
    start: list[str]
    done: bool


@dataclass
class _Branch(Generic[R]):
    state: BranchState = BranchState.CALLING
    final: R | None = None
    code: int = 0
    #: Cancel when the first provisional comes (§9.1).
    cancel_wanted: bool = False
    #: A CANCEL went.
    cancelled: bool = False


@dataclass
class ResponseContext(Generic[R]):
    """
    The branches of one forwarded request and what came back on them.

    @ivar groups: the targets not tried yet, one group (same q) per entry.
    @ivar answered: whether a final response went upstream.
    """

    groups: list[list[str]]
    answered: bool = False
    _branches: dict[str, _Branch[R]] = field(default_factory=dict)
    _stopped: bool = False
    _results: list[tuple[int, R]] = field(default_factory=list)

    def first(self) -> list[str]:
        """
        The targets of the first group (to start at once).
        """
        return self.groups.pop(0) if self.groups else []

    def started(self, key: str) -> None:
        """
        A branch was created (C{key}: its branch id).
        """
        self._branches[key] = _Branch()

    def provisional(self, key: str, code: int, response: R) -> Step[R]:
        """
        A 1xx on a branch: forwarded upstream (not 100, which is hop by
        hop), unless a final went already; a branch whose cancel waited
        for it is cancelled now (§9.1).
        """
        branch = self._branches.get(key)
        if branch is None or branch.state is BranchState.DONE:
            return Step([], [], [], False)
        cancel = [key] if branch.cancel_wanted and not branch.cancelled else []
        if cancel:
            branch.cancelled = True
        branch.state = BranchState.PROCEEDING
        branch.cancel_wanted = False
        upstream = [response] if code > 100 and not self.answered else []
        return Step(upstream, cancel, [], False)

    def final(self, key: str, code: int, response: R) -> Step[R]:
        """
        A branch ended with a final response: received, or made by the
        shell for a branch that timed out (408) or could not be reached
        (503), as §16.7 counts them.
        """
        branch = self._branches.get(key)
        if branch is None:
            return Step([], [], [], False)
        if branch.state is BranchState.DONE:
            # A 2xx retransmission, or another 2xx: every 2xx goes on.
            return Step([response] if 200 <= code < 300 else [], [], [], False)
        branch.state = BranchState.DONE
        branch.code = code
        if 200 <= code < 300:
            self.answered = True
            self._stopped = True
            return Step([response], self._cancel_pending(), [], self._all_done())
        if code >= 600:
            self._stopped = True
            cancel = self._cancel_pending()
        else:
            cancel = []
        self._results.append((code, response))
        if not self._all_done():
            return Step([], cancel, [], False)
        if not self._stopped and self.groups and not self.answered:
            return Step([], cancel, self.groups.pop(0), False)
        return Step(self._choose(), cancel, [], True)

    def cancel(self) -> Step[R]:
        """
        The caller cancelled (§16.10): every pending branch gets CANCEL,
        no new branch is created.
        """
        self._stopped = True
        self.groups = []
        return Step([], self._cancel_pending(), [], False)

    def pending(self) -> list[str]:
        """
        The branches that have not ended.
        """
        return [key for key, branch in self._branches.items() if branch.state is not BranchState.DONE]

    def _cancel_pending(self) -> list[str]:
        """
        Branches to cancel now: those proceeding; those still calling are
        cancelled when their first provisional comes (a CANCEL must not
        overtake the INVITE, §9.1).
        """
        cancel = []
        for key, branch in self._branches.items():
            if branch.state is BranchState.PROCEEDING and not branch.cancelled:
                branch.cancelled = True
                cancel.append(key)
            elif branch.state is BranchState.CALLING:
                branch.cancel_wanted = True
        return cancel

    def _all_done(self) -> bool:
        return all(branch.state is BranchState.DONE for branch in self._branches.values())

    def _choose(self) -> list[R]:
        """
        The best final response, once, if none went upstream yet.
        """
        if self.answered or not self._results:
            return []
        self.answered = True
        index = best_response([code for code, _ in self._results])
        return [self._results[index][1]]

    def finals(self) -> list[R]:
        """
        Every final response received so far (to merge the challenges of
        401/407 branches, §16.7 step 7).
        """
        return [response for _, response in self._results]
