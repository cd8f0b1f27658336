"""
The sipleg exception hierarchy.

Everything sipleg raises on purpose derives from L{SIPError}.  Two families
matter to callers:

 - L{SIPParseError}: the I{peer} broke the protocol.  It carries C{status},
   the response code a server should answer a bad request with, and
   C{reason}, a short human-readable explanation.
 - L{DeliveryError}: a packet could not be handed to the network.  It
   carries C{errno} (an L{errno} constant) and/or C{reason}.

L{ConfigError} is the operator's: the proxy cannot start as configured.

Misuse of the API by the programmer is reported with the usual C{TypeError}
and C{ValueError}.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "SIPError",
    "SIPParseError",
    "MessageTooLarge",
    "FramingError",
    "DeliveryError",
    "ConfigError",
    "HookAnswerError",
]


class SIPError(Exception):
    """
    Root of every exception sipleg raises on purpose.
    """


class SIPParseError(SIPError):
    """
    The bytes a peer sent are not a valid SIP message.

    @ivar status: the SIP response code to answer a bad request with
        (400 unless the fault calls for a more precise one, such as 505
        for an unsupported SIP-Version or 416 for an unsupported URI scheme).
    @ivar reason: what is wrong, for logs and for the reason phrase.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status})"


class MessageTooLarge(SIPParseError):
    """
    A message exceeds a configured size limit (answered with 513).
    """

    def __init__(self, reason: str, status: int = 513) -> None:
        super().__init__(reason, status)


class FramingError(SIPParseError):
    """
    A byte stream (TCP or TLS) can no longer be split into messages; the
    connection carrying it must be closed.
    """


class DeliveryError(SIPError):
    """
    A packet could not be delivered.

    @ivar errno: an L{errno} constant (C{ECONNREFUSED}, C{ETIMEDOUT},
        C{EHOSTUNREACH}, C{EMSGSIZE}, ...) or L{None} when the failure has no
        errno (a TLS verification failure, for example).
    @ivar reason: a human-readable explanation.
    """

    def __init__(self, errno: int | None, reason: str | None = None) -> None:
        if reason is None:
            reason = os.strerror(errno) if errno is not None else "delivery failed"
        super().__init__(errno, reason)
        self.errno = errno
        self.reason = reason

    def __str__(self) -> str:
        if self.errno is None:
            return self.reason
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"[{name}] {self.reason}"


class ConfigError(SIPError):
    """
    The proxy cannot start as configured (bad option, port in use,
    unreadable certificate or user file ...).  The message is one line for
    the operator.
    """


class HookAnswerError(SIPError):
    """
    The routing hook's web service answered something that is not a valid
    answer (L{sipleg.routehook.parse_hook_answer}); the call counts as
    failed.

    @ivar reason: what is wrong with it, for the log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
