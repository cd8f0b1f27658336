"""
Cutting a SIP byte stream (TCP or TLS) into messages.

Over a stream transport the only thing that separates one SIP message from
the next is the Content-Length header (RFC 3261 §18.3), so a stream reader
has to look into the header block before it can pass a message on.  That
is all this module does: it finds the end of the header block, reads the
Content-Length value(s) and cuts header plus body.  It does not parse the
message; L{sipleg.message.parse_message} does that afterwards.

It also recognises the RFC 5626 §3.5.1 keep-alive exchange: a double CRLF
between messages is a I{ping} (reported as L{KEEPALIVE_PING}, to be answered
with a single CRLF), a lone CRLF between messages is a I{pong} or plain
padding that RFC 3261 §7.5 says to ignore.

This module is part of the sans-IO core: it never touches the network.
"""

from __future__ import annotations

import re
from typing import Final

from sipleg.errors import FramingError, MessageTooLarge, SIPParseError

__all__ = ["KEEPALIVE_PING", "FramingEvent", "StreamFramer"]


class _KeepalivePing:
    """
    Type of the L{KEEPALIVE_PING} sentinel.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEPALIVE_PING"


#: Event returned by L{StreamFramer.feed} for an RFC 5626 double-CRLF ping.
#: The connection owner answers it with a single CRLF ("pong").
KEEPALIVE_PING: Final = _KeepalivePing()

#: What L{StreamFramer.feed} returns items of: a complete message or
#: L{KEEPALIVE_PING}.
FramingEvent = bytes | _KeepalivePing

_CRLF = b"\r\n"
_PING = b"\r\n\r\n"
# The header block ends with the empty line (RFC 3261 §7):
#   generic-message = start-line *message-header CRLF [ message-body ]
_END_OF_HEADERS = b"\r\n\r\n"

# RFC 3261 §20.14 / §25.1:
#   Content-Length  =  ( "Content-Length" / "l" ) HCOLON 1*DIGIT
#   HCOLON          =  *( SP / HTAB ) ":" SWS
#   SWS             =  [LWS]
#   LWS             =  [*WSP CRLF] 1*WSP   ; linear whitespace (folding)
# Every header line follows a CRLF (the start line comes first), so the
# pattern is anchored on it.  The value runs to the end of the line plus any
# folded continuation lines (lines starting with SP / HTAB).  Each part of
# the pattern begins with a character the preceding part cannot match, so
# matching is linear: no backtracking blow-up on hostile input.  A match
# stops before the CRLF that ends its line, so two adjacent Content-Length
# lines are both seen.
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
# The value once the surrounding whitespace is gone: 1*DIGIT.
_DIGITS = re.compile(rb"[0-9]+")
_WHITESPACE = b" \t\r\n"


class StreamFramer:
    """
    Split a SIP byte stream into messages.

    Feed it whatever the connection delivers; it returns each complete
    message (header block plus exactly Content-Length bytes of body) and
    L{KEEPALIVE_PING} events, and keeps any incomplete rest for the next
    call.  The work per call is proportional to the new data: the search
    for the end of the header block resumes where it stopped, and once the
    header block is known the framer only waits for the body to fill up.

    Once the stream turned out to be broken (L{FramingError}) or too large
    (L{MessageTooLarge}) the framer is dead: the error is kept in L{error}
    and every later L{feed} raises it again.  The connection carrying such
    a stream must be closed, since there is no way to find the start of the
    next message.

    @ivar max_header: the largest header block accepted, in bytes, counting
        the start line and the empty line that ends the block.
    @ivar max_body: the largest Content-Length accepted.
    @ivar error: L{None} while the stream is fine, else the error that
        killed it.  When a call to L{feed} frames some messages and then
        runs into an error, it returns those messages and sets C{error}
        without raising; the next call raises.  Check this attribute after
        processing what L{feed} returned.
    """

    def __init__(self, max_header: int = 16384, max_body: int = 65536) -> None:
        """
        @param max_header: see L{max_header}.
        @param max_body: see L{max_body}.
        """
        if max_header < 4 or max_body < 0:
            raise ValueError("limits out of range")
        self.max_header = max_header
        self.max_body = max_body
        self.error: SIPParseError | None = None
        #: The complete header block of a message refused for its
        #: Content-Length (too large: 513; missing, malformed or
        #: conflicting: 400), so the caller can still answer a request.
        self.refused_head: bytes | None = None
        self._buffer = bytearray()
        # Offset up to which the buffer was searched for the end of the
        # header block without finding it.
        self._scanned = 0
        # Total length (header + body) of the message at the head of the
        # buffer once its header block is known, else None.
        self._needed: int | None = None

    def feed(self, data: bytes) -> list[FramingEvent]:
        """
        Add bytes received from the stream.

        @param data: the next bytes of the stream (may be empty).
        @return: the complete messages (C{bytes}) and L{KEEPALIVE_PING}
            events found so far, in stream order.
        @raise FramingError: the stream cannot be split into messages (no
            Content-Length, a malformed value, conflicting values).
        @raise MessageTooLarge: the header block or the body exceeds a
            limit.
        """
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        buffer += data
        events: list[FramingEvent] = []
        try:
            while buffer:
                if self._needed is None:
                    if not self._skip_keepalives(events):
                        break
                    needed = self._find_message_length()
                    if needed is None:
                        break
                    self._needed = needed
                if len(buffer) < self._needed:
                    break
                events.append(bytes(buffer[: self._needed]))
                # Deleting from the front of a bytearray is cheap in
                # CPython (the start pointer moves).
                del buffer[: self._needed]
                self._needed = None
                self._scanned = 0
        except SIPParseError as error:
            self.error = error
            self._buffer = bytearray()
            if not events:
                raise
        return events

    def _skip_keepalives(self, events: list[FramingEvent]) -> bool:
        """
        Consume pings and single CRLFs at a message boundary.

        RFC 3261 §7.5: CRLFs before the start line are ignored.  RFC 5626
        §3.5.1: a client pings with CRLF CRLF and the server answers with
        CRLF.  A lone CRLF can only be told apart from the start of a ping
        once the next bytes are here, so the framer waits for them.

        @param events: where a L{KEEPALIVE_PING} is appended.
        @return: whether a message starts at the head of the buffer (else
            more data is needed).
        """
        buffer = self._buffer
        while buffer[:1] == b"\r":
            if buffer[:4] == _PING:
                events.append(KEEPALIVE_PING)
                del buffer[:4]
            elif len(buffer) < 4 and _PING.startswith(bytes(buffer)):
                # "\r", "\r\n" or "\r\n\r": a ping or a pong, not known yet.
                return False
            elif buffer[:2] == _CRLF:
                del buffer[:2]
            else:
                # A bare CR: the start of a (broken) message; the parser
                # will reject it.
                return True
        return bool(buffer)

    def _find_message_length(self) -> int | None:
        """
        Locate the end of the header block at the head of the buffer and
        work out the total length of the message.

        @return: header length plus Content-Length, or L{None} when the
            header block is not complete yet.
        @raise FramingError: Content-Length missing, malformed or
            conflicting.
        @raise MessageTooLarge: a limit is exceeded.
        """
        buffer = self._buffer
        # Resume the search a few bytes early: the terminator may straddle
        # the previous end of the buffer.  Never look beyond max_header.
        start = max(0, self._scanned - 3)
        end = buffer.find(_END_OF_HEADERS, start, self.max_header)
        if end < 0:
            if len(buffer) >= self.max_header:
                raise MessageTooLarge(f"SIP header block exceeds {self.max_header} bytes")
            self._scanned = len(buffer)
            return None
        header_length = end + len(_END_OF_HEADERS)
        try:
            body_length = self._content_length(end + len(_CRLF))
        except SIPParseError:
            self.refused_head = bytes(buffer[:header_length])
            raise
        return header_length + body_length

    def _content_length(self, header_end: int) -> int:
        """
        Read the Content-Length of the header block C{buffer[:header_end]}.

        @param header_end: offset just after the CRLF of the last header line.
        @return: the body length.
        @raise FramingError: no value, a malformed value, or two values that
            differ (RFC 3261 §18.3: mandatory on streams).
        @raise MessageTooLarge: the value exceeds L{max_body}.
        """
        found: int | None = None
        for match in _CONTENT_LENGTH.finditer(self._buffer, 0, header_end):
            value = match.group(1).strip(_WHITESPACE)
            if b"\r\n" in value:
                # Folded value: LWS between the colon and the digits.
                value = value.replace(b"\r\n", b"").strip(_WHITESPACE)
            if _DIGITS.fullmatch(value) is None:
                raise FramingError(f"bad Content-Length {value[:32]!r}")
            value = value.lstrip(b"0") or b"0"
            if len(value) > len(str(self.max_body)):
                raise MessageTooLarge(f"SIP body exceeds {self.max_body} bytes")
            length = int(value)
            if found is not None and found != length:
                raise FramingError("conflicting Content-Length values")
            found = length
        if found is None:
            raise FramingError("missing Content-Length on a stream transport")
        if found > self.max_body:
            raise MessageTooLarge(f"SIP body exceeds {self.max_body} bytes")
        return found
