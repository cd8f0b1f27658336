"""
sipleg: a SIP transport layer and stateless forwarding proxy for Twisted.

The names below are the public API.  The sans-IO core (messages, URIs,
addresses, errors) is imported eagerly and never pulls in the reactor; the
I/O parts (L{Leg}, L{Dispatcher}, L{StatelessProxy}) are imported on first
use, so C{import sipleg.message} stays free of C{twisted.internet}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipleg.address import Address
from sipleg.errors import DeliveryError, SIPError, SIPParseError
from sipleg.lazy import lazy_names

__version__ = "0.1.0"

__all__ = [
    "Address",
    "DeliveryError",
    "Dispatcher",
    "Leg",
    "Request",
    "Response",
    "SIPError",
    "SIPParseError",
    "StatelessProxy",
    "parse_message",
]

_LAZY = {
    "Request": "sipleg.message",
    "Response": "sipleg.message",
    "parse_message": "sipleg.message",
    "Leg": "sipleg.leg",
    "Dispatcher": "sipleg.dispatcher",
    "StatelessProxy": "sipleg.proxy",
}

if TYPE_CHECKING:
    from sipleg.dispatcher import Dispatcher
    from sipleg.leg import Leg
    from sipleg.message import Request, Response, parse_message
    from sipleg.proxy import StatelessProxy


__getattr__ = lazy_names("sipleg", _LAZY, globals())
