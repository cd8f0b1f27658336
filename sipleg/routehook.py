"""
The HTTP routing hook (C{--route-url}), sans I/O: which requests ask the
web service, what they tell it, how its answer is read and what the
proxy then does.

For an initial request the proxy would route (L{asks_hook}), the proxy
POSTs L{hook_summary} as JSON and reads the answer with
L{parse_hook_answer}:

 - C{{"action": "route", "targets": ["sip:a@h", ...], "parallel": false}}:
   L{RouteTo}, the Request-URIs to try (in order; at once with
   C{"parallel": true} for the stateful proxy, which forks);
 - C{{"action": "reject", "code": 486, "reason": "Busy Here"}}:
   L{Reject}, the proxy answers that;
 - C{{"action": "continue"}}: L{Continue}, the proxy routes as it would
   have.

L{apply_hook_answer} turns the answer into the proxy's next step.  The
I/O shell is L{sipleg.hookclient}.  See C{docs/design.md}, "The routing
hook".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from sipleg.decision import (
    Answer,
    Drop,
    Edits,
    Forward,
    RequestView,
    Rules,
    forward_edits,
    in_dialog,
    next_hop,
)
from sipleg.errors import HookAnswerError, SIPParseError
from sipleg.message import Response
from sipleg.uri import URI, parse_uri

__all__ = [
    "BUSY",
    "MAX_ANSWER",
    "MAX_TARGETS",
    "Continue",
    "HookAnswer",
    "HookConfig",
    "Reject",
    "RouteTo",
    "apply_hook_answer",
    "asks_hook",
    "failure_answer",
    "hook_summary",
    "parse_hook_answer",
]

#: The largest answer body read (bytes); a longer one is a failure.
MAX_ANSWER = 64 * 1024

#: The most targets one answer may name.
MAX_TARGETS = 32

_ON_FAILURE = ("503", "fallback")


@dataclass(frozen=True, slots=True)
class HookConfig:
    """
    The routing hook's settings (C{--route-url}, C{--route-timeout},
    C{--route-failure}, C{--route-max-pending}).

    @ivar url: the C{http://} or C{https://} URL answers are POSTed to.
    @ivar timeout: seconds the web service has to answer in full.
    @ivar on_failure: what a timeout, an HTTP error or a bad answer
        does: C{"503"} (the caller gets 503) or C{"fallback"} (the proxy
        routes as it would without the hook).
    @ivar max_pending: calls waiting for an answer at most; a request
        beyond is answered 503 at once.
    @raise ValueError: a setting is out of range (the message names the
        twistd option).
    """

    url: str
    timeout: float = 1.0
    on_failure: str = "503"
    max_pending: int = 1000

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--route-url {self.url!r}: not an http:// or https:// URL with a host")
        if not self.timeout > 0:
            raise ValueError(f"--route-timeout {self.timeout!r}: must be positive")
        if self.on_failure not in _ON_FAILURE:
            raise ValueError(f"--route-failure {self.on_failure!r}: must be 503 or fallback")
        if self.max_pending < 1:
            raise ValueError(f"--route-max-pending {self.max_pending!r}: must be at least 1")


class RouteTo(NamedTuple):
    """
    Route to these Request-URIs.

    @ivar targets: the URIs, in order (at least one).
    @ivar parallel: fork to all at once (stateful proxy), rather than one
        after the other.
    """

    targets: tuple[URI, ...]
    parallel: bool = False


class Reject(NamedTuple):
    """
    Answer the request with C{code} and C{reason}.

    @ivar headers: extra C{(name, value)} header fields (only ours: a
        web service cannot set any).
    """

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


class Continue(NamedTuple):
    """
    Route as the proxy would without the hook.
    """


HookAnswer = RouteTo | Reject | Continue


def asks_hook(view: RequestView, forward: Forward) -> bool:
    """
    Whether the web service routes this forwarded request: an initial
    request (no To tag) the proxy routes itself (no Route value left
    after ours), other than ACK and REGISTER.  In-dialog requests and
    requests with a Route set follow their route; requests the proxy
    answers (403, 407, 404 ...) were decided before and never get here.
    """
    if view.method in ("ACK", "REGISTER"):
        return False
    routes = forward.edits.routes
    if routes if routes is not None else view.routes:
        return False
    return not in_dialog(view)


def hook_summary(view: RequestView, forward: Forward) -> dict[str, Any]:
    """
    What the web service is told of a request (the JSON object POSTed).
    """
    request = view.request
    source = view.source
    return {
        "method": view.method,
        "uri": request.uri,
        "from": view.from_value,
        "to": request.get_header("to") or "",
        "call_id": request.get_header("call-id") or "",
        "source": {"address": source.addr or source.host, "port": source.port, "transport": view.leg.proto},
        "user": forward.user,
    }


def parse_hook_answer(body: bytes) -> HookAnswer:
    """
    Read the web service's answer, strictly: a JSON object with an
    C{"action"} and the members of that action, nothing else.

    @raise HookAnswerError: what is wrong with it.
    """
    if len(body) > MAX_ANSWER:
        raise HookAnswerError(f"answer larger than {MAX_ANSWER} bytes")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise HookAnswerError(f"not JSON: {e}") from None
    if not isinstance(answer, dict):
        raise HookAnswerError("not a JSON object")
    action = answer.get("action")
    allowed = _MEMBERS.get(action) if isinstance(action, str) else None
    if allowed is None:
        raise HookAnswerError(f"action {action!r} is not route, reject or continue")
    unknown = sorted(set(answer) - allowed)
    if unknown:
        raise HookAnswerError(f"unknown member(s) for {action}: {', '.join(map(repr, unknown[:5]))}")
    if action == "route":
        return _route(answer)
    if action == "reject":
        return _reject(answer)
    return Continue()


_MEMBERS = {
    "route": {"action", "targets", "parallel"},
    "reject": {"action", "code", "reason"},
    "continue": {"action"},
}


def _route(answer: dict[str, Any]) -> RouteTo:
    targets = answer.get("targets")
    if not isinstance(targets, list) or not targets:
        raise HookAnswerError("route: targets must be a non-empty list")
    if len(targets) > MAX_TARGETS:
        raise HookAnswerError(f"route: more than {MAX_TARGETS} targets")
    parallel = answer.get("parallel", False)
    if not isinstance(parallel, bool):
        raise HookAnswerError("route: parallel must be true or false")
    uris = []
    for text in targets:
        if not isinstance(text, str):
            raise HookAnswerError(f"route: target {text!r} is not a string")
        try:
            uri = parse_uri(text)
        except SIPParseError as e:
            raise HookAnswerError(f"route: target {text[:80]!r}: {e.reason}") from None
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise HookAnswerError(f"route: target {text[:80]!r} is not a sip: or sips: URI")
        uris.append(uri)
    return RouteTo(tuple(uris), parallel)


def _reject(answer: dict[str, Any]) -> Reject:
    code = answer.get("code")
    if type(code) is not int or not 300 <= code <= 699:
        raise HookAnswerError(f"reject: code {code!r} is not an integer from 300 to 699")
    reason = answer.get("reason")
    if reason is None:
        return Reject(code, Response(code).reason)
    if not isinstance(reason, str) or not 0 < len(reason) <= 128 or not reason.isprintable():
        raise HookAnswerError("reject: reason must be 1 to 128 printable characters")
    return Reject(code, reason)


def failure_answer(config: HookConfig) -> Reject | Continue:
    """
    What a failed call (timeout, HTTP error, bad answer) stands for: 503,
    or the proxy's own routing with C{on_failure="fallback"}.  The 503
    has no Retry-After: one slow answer says nothing of the next, and a
    caller honouring it would shun the whole proxy for that long.
    """
    if config.on_failure == "fallback":
        return Continue()
    return Reject(503, "Service Unavailable (routing hook failed)")


#: The answer to a request beyond C{max_pending}: the proxy is
#: overloaded, as at its transaction cap, and says when to come back.
BUSY = Reject(503, "Service Unavailable (routing hook busy)", (("Retry-After", "5"),))


def apply_hook_answer(
    view: RequestView, forward: Forward, answer: HookAnswer, rules: Rules
) -> Forward | Answer | Drop:
    """
    The proxy's next step for a request the hook answered about:

     - L{Continue}: C{forward}, as decided;
     - L{Reject}: that L{Answer};
     - L{RouteTo}: C{forward} retargeted: its Request-URI is the first
       target and its next hops those of every target (static routes and
       the outbound proxy apply, L{next_hop}); its forks are one group of
       every target (C{parallel}) or one group per target, in order.
       The stateless proxy fails over along the targets.  The edits (loop
       check, branch) are made for the first target, as for a request the
       location service retargets (L{forward_edits}: 482 when the request
       was here before).
    """
    if isinstance(answer, Continue):
        return forward
    if isinstance(answer, Reject):
        return Answer(answer.code, answer.reason, answer.headers)
    uris = tuple(str(uri) for uri in answer.targets)
    edits = forward_edits(view, rules, uris[0], (), forward.edits.max_forwards)
    if not isinstance(edits, Edits):
        return edits
    forks = (uris,) if answer.parallel else tuple((uri,) for uri in uris)
    targets = tuple(next_hop(uri, rules) for uri in answer.targets)
    return Forward(targets, edits, forward.prefer, forks, forward.user, forward.flows, forward.paths)
