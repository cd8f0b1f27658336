"""
The SIP message model (RFC 3261 §7, §20, §25): requests and responses.

This module is part of the sans-IO core: bytes in, L{Request} / L{Response}
objects out, and back to bytes.  It never touches the network.

Parsing is lazy.  L{parse_message} finds the start line and the boundaries
of the header lines and checks only what every SIP element needs before it
can do anything with a message:

 - the start line (C{Method SP Request-URI SP SIP-Version} or
   C{SIP-Version SP Status-Code SP Reason-Phrase}; a SIP-Version other than
   C{SIP/2.0} is a 505);
 - the headers a transaction is made of (Via, From, To, Call-ID, CSeq) are
   present and well-formed, the once-only headers are not contradicted by a
   second occurrence, numeric headers are numeric;
 - the body length (Content-Length).

Every other header value stays raw bytes until someone asks for it; it is
then unfolded, decoded (UTF-8 with C{surrogateescape}, so that arbitrary
bytes survive a round trip) and, for list headers, split at top-level
commas.  A malformed list value is reported then, as L{SIPParseError}.

Serialising an untouched message returns the bytes it was parsed from.
Once a message is edited, header lines nobody touched are still written
back byte for byte (original name spelling, original folding); lines that
were added or changed are written in canonical form, C{Name: value}, with
the full canonical header name.  Content-Length is always right on output.

This module deliberately knows nothing about URIs (see L{sipleg.uri}): the
Request-URI is kept as text and only checked for the obvious.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable
from typing import TypeVar

from sipleg.errors import SIPParseError

__all__ = [
    "Message",
    "Request",
    "Response",
    "parse_message",
    "make_response",
    "answer_tag",
    "salvage_answer",
    "REASONS",
]

#: Default reason phrases (RFC 3261 §21 and the extensions registered in
#: the IANA "SIP Response Codes" registry).
REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

# ---------------------------------------------------------------------------
# Header names

#: Full canonical spelling of the header names we know, by lower-case name.
#: Added or modified header lines are written with these names; unknown
#: names are written as they were given.
_CANONICAL = {
    name.lower(): name
    for name in (
        # RFC 3261 §20
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Organization",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
        # extensions
        "Accept-Contact",
        "Allow-Events",
        "Event",
        "History-Info",
        "Identity",
        "Identity-Info",
        "Min-SE",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Privacy",
        "RAck",
        "Reason",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Replaces",
        "Request-Disposition",
        "RSeq",
        "Security-Client",
        "Security-Server",
        "Security-Verify",
        "Service-Route",
        "Session-Expires",
        "SIP-ETag",
        "SIP-If-Match",
        "Subscription-State",
    )
}

#: RFC 3261 §7.3.3 compact forms, plus those of RFC 3265 (o, u), RFC 3515
#: (r), RFC 3892 (b), RFC 4028 (x), RFC 3841 (a, j, d), RFC 4474 (y, n).
_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

#: Headers whose grammar is a comma-separated list (C{x *(COMMA x)}): their
#: values are split into elements.  Everything else, including every
#: unknown header and the authentication headers (whose commas separate
#: parameters, not values), is one value per line.
_LIST_HEADERS = frozenset(
    (
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "history-info",
        "in-reply-to",
        "p-asserted-identity",
        "p-preferred-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    )
)

#: Single name-addr headers: not split, but their quotes and angle
#: brackets must balance.
_ADDRESS_HEADERS = frozenset(("from", "to", "reply-to", "refer-to", "referred-by"))

#: RFC 3261 §20: at most one value; a second occurrence with a different
#: value makes the message unusable (RFC 4475 §3.3.8, §3.3.9).
_ONCE = frozenset(
    (
        "call-id",
        "cseq",
        "from",
        "to",
        "content-length",
        "content-type",
        "max-forwards",
    )
)

#: RFC 3261 §8.1.1 mandatory headers (Max-Forwards aside: RFC 2543 peers
#: omit it, RFC 4475 §3.4.1).
_REQUIRED = ("to", "from", "cseq", "call-id", "via")

#: The headers whose edits invalidate what a message keeps about them.
_DERIVED = frozenset(("content-length", "call-id", "cseq"))
_REQUIRED_SET = frozenset(_REQUIRED)

# RFC 3261 §25.1:
#   token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`"
#              / "'" / "~" )
_TOKEN_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
# The name of every header line (after a CRLF) with its colon; a line
# without a colon has none.  (The class has no ":", no backtracking.)
_HEADER_NAMES = re.compile(rb"\r\n([^:\r\n]*:)")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ),
# then ":" and anything but whitespace and controls.  (The scheme class has
# no ":", so the match cannot backtrack.)
_REQUEST_URI = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:[^\x00-\x20\x7f]*")
_SIP_VERSION = re.compile(rb"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
# Characters that matter when splitting a list value.  Single-character
# classes: searching with them is linear, no backtracking.
_LIST_SPECIALS = re.compile(r'[",<]')
_ADDRESS_SPECIALS = re.compile(r'["<]')

#: Caches from a header name as seen on the wire / as given to the API to
#: its key (the lower-case full name).  Bounded so that a peer inventing
#: names cannot grow them without limit.
_WIRE_KEYS: dict[bytes, str] = {}
_API_KEYS: dict[str, str] = {}
_CACHE_MAX = 2048

#: Header names (as written, colon included) longer than this are not
#: cached: the caches hold at most _CACHE_MAX short names.
_CACHED_NAME = 64

#: Above this many digits a number is certainly out of range; checked
#: before calling C{int()} so hostile input cannot make it work hard.
_MAX_DIGITS = 10


def _is_token(data: bytes) -> bool:
    return bool(data) and not data.translate(None, _TOKEN_BYTES)


def _wire_key(raw: bytes) -> str:
    """
    The key of a header name as it appears on a line, colon included.

    @raise SIPParseError: the name is not a token.
    """
    # message-header = header-name HCOLON header-value
    # HCOLON = *( SP / HTAB ) ":" SWS
    name = raw[:-1].rstrip(b" \t")
    if not _is_token(name):
        raise SIPParseError(f"bad header name {name[:40]!r}")
    lower = name.decode("ascii").lower()
    if len(raw) > _CACHED_NAME:
        # A name no real header has: neither cached nor interned, so a
        # peer sending huge invented names leaves nothing behind.
        return _COMPACT.get(lower, lower)
    key = sys.intern(_COMPACT.get(lower, lower))
    if len(_WIRE_KEYS) < _CACHE_MAX:
        _WIRE_KEYS[raw] = key
    return key


def _prime_wire_keys() -> None:
    # The usual spellings of the known names (canonical, lower, upper,
    # Net::SIP's "Record-route" and "Call-Id" styles, compact forms) start
    # in the cache, so a peer filling it with invented names cannot push
    # ordinary messages off the fast path.
    for name in _CANONICAL.values():
        for spelling in {name, name.lower(), name.upper(), name.capitalize(), name.title()}:
            _wire_key(spelling.encode("ascii") + b":")
    for name in _COMPACT:
        _wire_key(name.encode("ascii") + b":")
        _wire_key(name.upper().encode("ascii") + b":")


_prime_wire_keys()


def _api_key(name: str) -> str:
    """
    The key of a header name given by a caller.

    @raise ValueError: the name is not a token.
    """
    key = _API_KEYS.get(name)
    if key is None:
        if not (isinstance(name, str) and name.isascii() and _is_token(name.encode())):
            raise ValueError(f"not a header name: {name!r}")
        lower = name.lower()
        key = sys.intern(_COMPACT.get(lower, lower))
        if len(_API_KEYS) < _CACHE_MAX and len(name) < _CACHED_NAME:
            _API_KEYS[name] = key
    return key


# ---------------------------------------------------------------------------
# Header values


def _closing_quote(text: str, pos: int) -> int:
    """
    Find the end of a quoted-string whose content starts at C{pos}.

    RFC 3261 §25.1::

        quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
        quoted-pair   = "\\" (%x00-09 / %x0B-0C / %x0E-7F)

    @return: the index just after the closing quote.
    @raise SIPParseError: the quoted-string is not terminated.
    """
    while True:
        end = text.find('"', pos)
        if end < 0:
            raise SIPParseError("unterminated quoted string")
        # The quote is escaped when an odd run of backslashes precedes it.
        run = end
        while run > pos and text[run - 1] == "\\":
            run -= 1
        if not (end - run) & 1:
            return end + 1
        pos = end + 1


def _scan(text: str, commas: bool) -> list[str]:
    """
    Check the quotes and angle brackets of a header value and, if
    C{commas}, split it into its list elements at top-level commas (commas
    inside a quoted-string or inside C{<...>} do not count).

    @return: the elements, stripped; C{[]} for an empty list value.
    @raise SIPParseError: unterminated quoted string, unclosed C{<}, or an
        empty list element (RFC 4475 §3.1.2.1).
    """
    if '"' not in text and ("," not in text or "<" not in text):
        # No quotes, and no commas or no brackets: the common cases.
        if "<" in text and text.rfind("<") > text.rfind(">"):
            raise SIPParseError("unclosed '<' in header value")
        if not commas or "," not in text:
            return [text] if text or not commas else []
        parts = text.split(",")
    else:
        specials = _LIST_SPECIALS if commas else _ADDRESS_SPECIALS
        parts = []
        begin = pos = 0
        while True:
            match = specials.search(text, pos)
            if match is None:
                break
            at = match.start()
            char = text[at]
            if char == ",":
                parts.append(text[begin:at])
                begin = pos = at + 1
            elif char == "<":
                end = text.find(">", at + 1)
                if end < 0:
                    raise SIPParseError("unclosed '<' in header value")
                pos = end + 1
            else:
                pos = _closing_quote(text, at + 1)
        if not commas:
            return [text]
        parts.append(text[begin:])
    elements = [part.strip(" \t") for part in parts]
    if "" in elements:
        raise SIPParseError("empty element in a comma-separated header")
    return elements


def _unfold(raw: bytes) -> bytes:
    # RFC 3261 §7.3.1: a line fold (LWS = [*WSP CRLF] 1*WSP) is equivalent
    # to a single SP.
    return b" ".join([piece.strip(b" \t") for piece in raw.split(b"\r\n")])


def _raw_value(line: bytes) -> bytes:
    """
    The value of a raw header line: after the colon, unfolded, stripped.
    """
    # message-header = header-name HCOLON header-value CRLF
    # HCOLON = *( SP / HTAB ) ":" SWS
    value = line[line.find(b":") + 1 :]
    if value.find(b"\n") >= 0:
        value = _unfold(value)
    return value.strip(b" \t")


def _decode(key: str, line: bytes) -> list[str]:
    """
    The values of a raw header line, decoded and, for list headers, split.

    @raise SIPParseError: a malformed list or address value.
    """
    value = line[line.find(b":") + 1 :]
    if value.find(b"\n") >= 0:
        value = _unfold(value)
    text = value.strip(b" \t").decode("utf-8", "surrogateescape")
    try:
        if key in _LIST_HEADERS:
            if "," in text or '"' in text or not text:
                return _scan(text, True)
        elif key not in _ADDRESS_HEADERS:
            return [text]
        # One element, maybe with brackets: the quick form of _scan().
        if "<" in text and text.rfind("<") > text.rfind(">") or '"' in text:
            return _scan(text, False)
    except SIPParseError as e:
        raise _malformed(key, e) from None
    return [text]


def _malformed(key: str, error: SIPParseError) -> SIPParseError:
    """
    C{error}, found in a value of the header C{key}, with the header named
    (the reason phrase of the answer says which header is at fault).
    """
    return SIPParseError(f"malformed {_CANONICAL.get(key, key)}: {error.reason}", error.status)


def _new_values(name: str, value: str) -> tuple[str, str, list[str]]:
    """
    Check a header given to the API.

    @return: C{(key, name to write, values)}.
    @raise ValueError: bad name, a value with CR or LF (header injection),
        with characters that cannot be encoded, or a malformed list value.
    """
    key = _api_key(name)
    if not isinstance(value, str):
        raise TypeError(f"header value must be str, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"CR or LF in header value {value!r}")
    value.encode("utf-8", "surrogateescape")  # UnicodeEncodeError is a ValueError
    value = value.strip(" \t")
    try:
        if key in _LIST_HEADERS:
            values = _scan(value, True)
        elif key in _ADDRESS_HEADERS:
            values = _scan(value, False)
        else:
            values = [value]
    except SIPParseError as e:
        raise ValueError(f"malformed {name} value {value!r}: {e.reason}") from None
    return key, _CANONICAL.get(key, name), values


def _line(name: str, values: list[str]) -> bytes:
    """
    The canonical header line of C{values}.
    """
    return f"{name}: {', '.join(values)}".encode("utf-8", "surrogateescape")


def _number(value: bytes, what: str) -> int:
    """
    Parse a non-negative decimal number of at most L{_MAX_DIGITS}
    significant digits.

    @raise SIPParseError: not digits, or too many.
    """
    if not value.isdigit():  # bytes.isdigit: ASCII digits only
        raise SIPParseError(f"{what} is not a number: {value[:40]!r}")
    if len(value) > _MAX_DIGITS:
        value = value.lstrip(b"0")
        if len(value) > _MAX_DIGITS:
            raise SIPParseError(f"{what} out of range")
    return int(value or b"0")


def _parse_cseq(value: bytes) -> tuple[int, bytes]:
    """
    RFC 3261 §20.16::

        CSeq = "CSeq" HCOLON 1*DIGIT LWS Method

    "The sequence number MUST be expressible as a 32-bit unsigned integer
    and MUST be less than 2**31."

    @return: C{(number, method)}.
    @raise SIPParseError: anything else.
    """
    parts = value.split()
    if len(parts) != 2:
        raise SIPParseError(f"bad CSeq {value[:40]!r}")
    number = _number(parts[0], "CSeq number")
    if number >= 2**31:
        raise SIPParseError("CSeq number out of range")
    method = parts[1]
    if not _is_token(method):
        raise SIPParseError(f"bad CSeq method {method[:40]!r}")
    return number, method


def _check_uri(uri: bytes) -> None:
    """
    The minimal check of a Request-URI: a scheme (RFC 3261 §25.1:
    C{Request-URI = SIP-URI / SIPS-URI / absoluteURI}, all of which start
    with C{scheme ":"}) and no whitespace or control character.  The rest
    is L{sipleg.uri}'s business.
    """
    if _REQUEST_URI.fullmatch(uri) is None:
        raise SIPParseError(f"bad Request-URI {uri[:60]!r}")


def _bad_version(version: bytes) -> SIPParseError:
    # RFC 3261 §8.2.2 (and §21.5.6): a SIP-Version we do not speak is a 505.
    if _SIP_VERSION.match(version):
        return SIPParseError(f"unsupported SIP version {version[:20]!r}", 505)
    return SIPParseError(f"bad SIP version {version[:20]!r}")


def _header_params(value: str) -> str:
    """
    The header parameters of a From/To/Contact-like value: the text after
    C{>} in the name-addr form, after the first C{;} in the addr-spec form
    (RFC 3261 §20.10).
    """
    pos = 0
    while True:
        match = _ADDRESS_SPECIALS.search(value, pos)
        if match is None:
            semi = value.find(";", pos)
            return "" if semi < 0 else value[semi:]
        at = match.start()
        if value[at] == '"':
            pos = _closing_quote(value, at + 1)
        else:
            end = value.find(">", at)
            return "" if end < 0 else value[end + 1 :]


def _has_tag(value: str) -> bool:
    try:
        params = _header_params(value)
    except SIPParseError:
        return False
    return any(param.split("=", 1)[0].strip(" \t").lower() == "tag" for param in params.split(";"))


# ---------------------------------------------------------------------------
# Messages

_M = TypeVar("_M", bound="Message")


class Message:
    """
    What requests and responses have in common: headers and a body.

    Header names are case-insensitive and the compact forms (C{v}, C{f},
    C{i}, ...) are equivalent to the full names.  List headers (Via, Route,
    Record-Route, Contact, Allow, Supported, Require, ...) have one value
    per list element, whether the elements share a line or not.  Every
    accessor may raise L{SIPParseError} when it has to decode a malformed
    value for the first time.
    """

    # The header block is four parallel lists, one entry per header line:
    #  - _keys: the lower-case full name;
    #  - _raws: the line as it is written out, without its CRLF: the
    #    original line (folds kept) while it is untouched, the canonical
    #    line "Name: value, value" once added or modified;
    #  - _vals: the decoded values, None until asked for; a list is never
    #    changed in place once stored (copies share them);
    #  - _names: the name to write a canonical line with.
    # Parallel lists make the lookups list.index() calls, in C.
    __slots__ = ("_keys", "_raws", "_vals", "_names", "_body", "_orig", "_length_ok", "_tid")

    _keys: list[str]
    _raws: list[bytes]
    _vals: list[list[str] | None]
    _names: list[str | None]
    _body: bytes
    #: The bytes the message was parsed from, while they are still what it
    #: serialises to.
    _orig: bytes | None
    #: Whether the Content-Length lines are known to give the body's
    #: length (a parsed message whose body and Content-Length are
    #: untouched): then the lines serialise as they are.
    _length_ok: bool
    #: The transaction id, once known (reset when Call-ID or CSeq change).
    _tid: str | None

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        """
        @param headers: C{(name, value)} pairs, added in order.
        @param body: the body; Content-Length is computed on output.
        @raise ValueError: a bad header name or value.
        """
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        self._keys = []
        self._raws = []
        self._vals = []
        self._names = []
        self._body = body
        self._orig = None
        self._length_ok = False
        self._tid = None
        for name, value in headers:
            self.add_header(name, value)

    # -- start line (subclasses) ------------------------------------------

    def _start_line(self) -> bytes:
        raise NotImplementedError()

    def _copy_start(self, other: Message) -> None:
        raise NotImplementedError()

    # -- body ---------------------------------------------------------------

    @property
    def body(self) -> bytes:
        """
        The message body.  Content-Length follows it on output.
        """
        return self._body

    @body.setter
    def body(self, body: bytes) -> None:
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        self._body = body
        self._orig = None
        self._length_ok = False

    # -- header block internals ---------------------------------------------

    def _values(self, index: int) -> list[str]:
        values = self._vals[index]
        if values is None:
            values = self._vals[index] = _decode(self._keys[index], self._raws[index])
        return values

    def _name(self, index: int) -> str:
        name = self._names[index]
        if name is None:
            key = self._keys[index]
            name = _CANONICAL.get(key)
            if name is None:
                raw = self._raws[index]
                name = raw[: raw.find(b":")].rstrip(b" \t").decode("ascii")
            self._names[index] = name
        return name

    def _replace(self, index: int, values: list[str]) -> None:
        # Give a line new values: it is written canonically from now on.
        self._raws[index] = _line(self._name(index), values)
        self._vals[index] = values
        self._edited(self._keys[index])

    def _insert(self, index: int, key: str, name: str, values: list[str]) -> None:
        self._keys.insert(index, key)
        self._raws.insert(index, _line(name, values))
        self._vals.insert(index, values)
        self._names.insert(index, name)
        self._orig = None
        self._edited(key)

    def _delete(self, index: int) -> None:
        self._edited(self._keys[index])
        del self._keys[index]
        del self._raws[index]
        del self._vals[index]
        del self._names[index]
        self._orig = None

    def _edited(self, key: str) -> None:
        # What a changed header line invalidates.
        if key in _DERIVED:
            if key == "content-length":
                self._length_ok = False
            else:
                self._tid = None

    def _indexes(self, key: str) -> list[int]:
        keys = self._keys
        indexes: list[int] = []
        index = -1
        for _ in range(keys.count(key)):
            index = keys.index(key, index + 1)
            indexes.append(index)
        return indexes

    def _locate(self, key: str, number: int) -> tuple[int, int] | None:
        # (line index, position in its values) of value number `number`
        # (negative numbers count from the end).
        if number == 0 and key in self._keys:
            # The first value: usually on the first line.
            index = self._keys.index(key)
            if self._values(index):
                return index, 0
        lines = self._indexes(key)
        if number < 0:
            number += sum(len(self._values(index)) for index in lines)
            if number < 0:
                return None
        for index in lines:
            count = len(self._values(index))
            if number < count:
                return index, number
            number -= count
        return None

    # -- reading headers ---------------------------------------------------

    def get_header(self, name: str) -> str | None:
        """
        The first value of a header.

        @param name: any spelling of the header name (case, compact form).
        @return: the value (for a list header: its first element), or
            L{None} when the header is absent.
        """
        key = _API_KEYS.get(name) or _api_key(name)
        keys = self._keys
        if key not in keys:
            return None
        index = keys.index(key)
        values = self._vals[index]
        if values is None:
            values = self._values(index)
        if values:
            return values[0]
        # The first line is an empty list ("Supported:"): look further.
        values = self.get_headers(name)
        return values[0] if values else None

    def get_headers(self, name: str) -> list[str]:
        """
        Every value of a header, in order; list headers are split into
        their elements.
        """
        key = _API_KEYS.get(name) or _api_key(name)
        keys = self._keys
        lines = keys.count(key)
        if lines == 1:
            index = keys.index(key)
            values = self._vals[index]
            if values is None:
                values = self._vals[index] = _decode(key, self._raws[index])
            return values[:]
        result: list[str] = []
        index = -1
        for _ in range(lines):
            index = keys.index(key, index + 1)
            values = self._vals[index]
            if values is None:
                values = self._values(index)
            result.extend(values)
        return result

    def has_header(self, name: str) -> bool:
        """
        Whether at least one line of this header is present.
        """
        return (_API_KEYS.get(name) or _api_key(name)) in self._keys

    @property
    def headers(self) -> list[tuple[str, str]]:
        """
        Every header value in order, as C{(name, value)} pairs, one pair
        per value; C{name} is the canonical name for known headers, the
        name as written for others.  This is the shape the constructors
        take.
        """
        result = []
        for index in range(len(self._keys)):
            name = self._name(index)
            for value in self._values(index):
                result.append((name, value))
        return result

    # -- editing headers ---------------------------------------------------

    def add_header(self, name: str, value: str) -> None:
        """
        Append a header line at the end of the header block.

        @raise ValueError: bad name or value.
        """
        self._insert(len(self._keys), *_new_values(name, value))

    def insert_header(self, name: str, value: str) -> None:
        """
        Add a header line whose value becomes the first value of that
        header: before the first line of the same header, or at the top
        of the header block if there is none.

        @raise ValueError: bad name or value.
        """
        key, name, values = _new_values(name, value)
        keys = self._keys
        self._insert(keys.index(key) if key in keys else 0, key, name, values)

    def set_header(self, name: str, value: str, index: int | None = None) -> None:
        """
        Replace header values.

        @param index: L{None} to replace every value of the header by
            C{value}, written where the first one was (appended if the
            header is absent); an C{int} to replace only that value (the
            other elements of its line stay, and the line is rewritten).
        @raise IndexError: there is no value number C{index}.
        @raise ValueError: bad name or value.
        @raise SIPParseError: with an C{index}, the line holding it cannot
            be split.
        """
        key, name, values = _new_values(name, value)
        if index is None:
            keys = self._keys
            lines = [keys.index(key)] if keys.count(key) == 1 else self._indexes(key)
            if not lines:
                self._insert(len(self._keys), key, name, values)
                return
            for line in reversed(lines[1:]):
                self._delete(line)
            first = lines[0]
            self._raws[first] = _line(name, values)
            self._vals[first] = values
            self._names[first] = name
            self._edited(key)
        else:
            found = self._locate(key, index)
            if found is None:
                raise IndexError(f"no {name} value number {index}")
            line, position = found
            new = list(self._values(line))
            new[position : position + 1] = values
            self._replace(line, new)
        self._orig = None

    def remove_header(self, name: str, index: int | None = None) -> int:
        """
        Remove header values.

        @param index: L{None} to remove every value of the header, an
            C{int} to remove only that value (the remaining elements of
            its line are rewritten as a canonical line).
        @return: how many values were removed (a line whose value cannot be
            split counts as one).
        @raise SIPParseError: with an C{index}, the line holding it cannot
            be split.
        """
        key = _api_key(name)
        if index is None:
            removed = 0
            for line in reversed(self._indexes(key)):
                try:
                    removed += len(self._values(line))
                except SIPParseError:
                    removed += 1
                self._delete(line)
            return removed
        found = self._locate(key, index)
        if found is None:
            return 0
        line, position = found
        new = list(self._values(line))
        del new[position]
        if new:
            self._replace(line, new)
            self._orig = None
        else:
            self._delete(line)
        return 1

    # -- convenience -------------------------------------------------------

    @property
    def call_id(self) -> str:
        """
        The Call-ID.

        @raise SIPParseError: there is none.
        """
        value = self.get_header("call-id")
        if value is None:
            raise SIPParseError("missing Call-ID")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        """
        The CSeq as C{(number, method)}.

        @raise SIPParseError: missing or malformed.
        """
        value = self.get_header("cseq")
        if value is None:
            raise SIPParseError("missing CSeq")
        number, method = _parse_cseq(value.encode("utf-8", "surrogateescape"))
        return number, method.decode("ascii")

    @property
    def tid(self) -> str:
        """
        A transaction id, C{"<call-id> <cseq number>"}, as Net::SIP makes
        it: an INVITE, its CANCEL and its ACK share it, and responses have
        the tid of their request.
        """
        tid = self._tid
        if tid is None:
            tid = self._tid = f"{self.call_id} {self.cseq[0]}"
        return tid

    # -- copying and output -------------------------------------------------

    def copy(self: _M) -> _M:
        """
        An independent copy; cheap: the lists are copied, the bytes and
        decoded values shared (they are never changed in place).
        """
        other = self.__class__.__new__(self.__class__)
        self._copy_start(other)
        other._keys = self._keys[:]
        other._raws = self._raws[:]
        other._vals = self._vals[:]
        other._names = self._names[:]
        other._body = self._body
        other._orig = self._orig
        other._length_ok = self._length_ok
        other._tid = self._tid
        return other

    def __bytes__(self) -> bytes:
        orig = self._orig
        if orig is not None:
            return orig
        if self._length_ok:
            # An edited parsed message: every line as it stands.
            return b"\r\n".join([self._start_line(), *self._raws, b"", self._body])
        body = self._body
        length = len(body)
        parts = [self._start_line()]
        append = parts.append
        has_length = False
        for key, raw in zip(self._keys, self._raws, strict=True):
            if key == "content-length":
                # Content-Length is always right on output, and rewritten
                # only when it is wrong.
                has_length = True
                try:
                    right = _number(_raw_value(raw), "Content-Length") == length
                except (SIPParseError, UnicodeError):
                    right = False
                if not right:
                    append(b"Content-Length: %d" % length)
                    continue
            append(raw)
        if not has_length:
            append(b"Content-Length: %d" % length)
        append(b"")
        append(body)
        return b"\r\n".join(parts)


class Request(Message):
    """
    A SIP request.

    @ivar method: the method (case-sensitive, RFC 3261 §7.1).
    @ivar uri: the Request-URI as text.
    """

    __slots__ = ("_method", "_uri")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, method: str) -> None:
        if not (isinstance(method, str) and method.isascii() and _is_token(method.encode())):
            raise ValueError(f"not a SIP method: {method!r}")
        self._method = method
        self._orig = None

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, uri: str) -> None:
        try:
            _check_uri(uri.encode("utf-8", "surrogateescape"))
        except SIPParseError as e:
            raise ValueError(e.reason) from None
        self._uri = uri
        self._orig = None

    def _start_line(self) -> bytes:
        return f"{self._method} {self._uri} SIP/2.0".encode("utf-8", "surrogateescape")

    def _copy_start(self, other: Message) -> None:
        assert isinstance(other, Request)
        other._method = self._method
        other._uri = self._uri

    def __repr__(self) -> str:
        return f"<Request {self._method} {self._uri}>"


class Response(Message):
    """
    A SIP response.

    @ivar code: the status code.
    @ivar reason: the reason phrase.
    """

    __slots__ = ("_code", "_reason")

    def __init__(
        self,
        code: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.code = code
        self.reason = reason

    @property
    def code(self) -> int:
        return self._code

    @code.setter
    def code(self, code: int) -> None:
        if not (isinstance(code, int) and 100 <= code <= 699):
            raise ValueError(f"bad status code {code!r}")
        self._code = code
        self._orig = None

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, reason: str | None) -> None:
        # Setting None picks the default phrase of the code.
        if reason is None:
            code = self._code
            reason = REASONS.get(code) or REASONS.get(code - code % 100, "Unknown")
        elif "\r" in reason or "\n" in reason:
            raise ValueError(f"CR or LF in reason phrase {reason!r}")
        else:
            reason.encode("utf-8", "surrogateescape")
        self._reason = reason
        self._orig = None

    @property
    def method(self) -> str:
        """
        The method of the request this answers (from CSeq).
        """
        return self.cseq[1]

    def _start_line(self) -> bytes:
        return b"SIP/2.0 %d %s" % (self._code, self._reason.encode("utf-8", "surrogateescape"))

    def _copy_start(self, other: Message) -> None:
        assert isinstance(other, Response)
        other._code = self._code
        other._reason = self._reason

    def __repr__(self) -> str:
        return f"<Response {self._code} {self._reason}>"


# ---------------------------------------------------------------------------
# Parsing


def _parse_start(line: bytes) -> Request | Response:
    """
    Parse the start line into an empty message.
    """
    parts = line.split(b" ", 2)
    if parts[0].find(b"/") >= 0:  # a method is a token: no "/"
        # RFC 3261 §7.2:
        #   Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
        #   Status-Code = 3DIGIT (extension-code = 3DIGIT)
        # A missing " Reason-Phrase" is tolerated.
        version = parts[0]
        if version != b"SIP/2.0" and version.upper() != b"SIP/2.0":
            raise _bad_version(version)
        code = parts[1] if len(parts) > 1 else b""
        if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
            raise SIPParseError(f"bad Status-Code {code[:20]!r}")
        response = Response.__new__(Response)
        response._code = int(code)
        response._reason = parts[2].decode("utf-8", "surrogateescape") if len(parts) == 3 else ""
        return response
    # RFC 3261 §7.1:
    #   Request-Line = Method SP Request-URI SP SIP-Version CRLF
    # Exactly one SP between the fields and none at the end (RFC 4475
    # §3.1.2.8 - §3.1.2.10).
    if len(parts) != 3:
        raise SIPParseError("bad Request-Line")
    method, uri, version = parts
    if version != b"SIP/2.0" and version.upper() != b"SIP/2.0":
        if version.find(b" ") >= 0:
            raise SIPParseError("bad Request-Line")
        raise _bad_version(version)
    if not method or method.translate(None, _TOKEN_BYTES):
        raise SIPParseError(f"bad method {method[:40]!r}")
    if _REQUEST_URI.fullmatch(uri) is None:
        _check_uri(uri)
    request = Request.__new__(Request)
    request._method = method.decode("ascii")
    request._uri = uri.decode("utf-8", "surrogateescape")
    return request


def _split_head(data: bytes, start: int) -> tuple[list[bytes], int, bool]:
    """
    Split the header block of a message whose lines do not all end in
    CRLF (bare LF line ends are tolerated), or that has no empty line.

    @return: C{(lines, body_start, normalised)}.
    """
    size = len(data)
    # RFC 3261 §7: the header block ends at the first empty line.
    empty = data.find(b"\n\r\n", start)
    bare = data.find(b"\n\n", start, empty if empty >= 0 else size)
    if bare >= 0:
        head_end, body_start = bare, bare + 2
    elif empty >= 0:
        head_end, body_start = empty, empty + 3
    elif start == size:
        raise SIPParseError("empty message")
    else:
        raise SIPParseError("no empty line after the headers")
    if data[head_end - 1] == 13:  # the CR of the last line's CRLF
        head_end -= 1
    head = data[start:head_end]
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf:
        raise SIPParseError("bare CR in the header")
    if head.count(b"\n") != crlf:
        return head.replace(b"\r\n", b"\n").split(b"\n"), body_start, True
    return head.split(b"\r\n"), body_start, False


def _header_lines(lines: list[bytes]) -> tuple[list[bytes], list[str]]:
    """
    Join continuation lines and find the key of every header line, the
    slow way (the fast way is a cache hit for every line).

    @param lines: the lines after the start line.
    @return: C{(header lines, their keys)}.
    """
    # RFC 3261 §7.3.1: a line starting with whitespace continues the
    # previous header line.  The raw line keeps the fold.
    joined: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not joined:
                raise SIPParseError("continuation line after the start line")
            joined[-1] += b"\r\n" + line
        else:
            joined.append(line)
    keys = []
    for line in joined:
        colon = line.find(b":")
        if colon <= 0:
            raise SIPParseError(f"bad header line {line[:40]!r}")
        keys.append(_wire_key(line[: colon + 1]))
    return joined, keys


def _check_headers(
    message: Request | Response,
    keys: list[str],
    raws: list[bytes],
    vals: list[list[str] | None],
) -> int | None:
    """
    The checks every SIP element needs before it can use a message, made
    on the raw lines.  The values decoded on the way (Via, Max-Forwards,
    Call-ID: those a proxy reads anyway) are kept in C{vals}.

    This is the hot path of parsing: the common case is written out
    inline, the helpers are called for the unusual one (and to raise).

    @return: the Content-Length, or L{None} when there is none.
    @raise SIPParseError: a check failed.
    """
    present = set(keys)
    if len(present) < len(keys) and sum(map(keys.count, once := present & _ONCE)) > len(once):
        # (Repeated lines are usually Via, Route, Record-Route: lists.)
        # (In message order: the reason names the first.)
        for key in sorted(once, key=keys.index):
            if keys.count(key) > 1:
                # A repeated once-only header is tolerated only when it
                # repeats the same value.
                seen = {_raw_value(raws[i]) for i in range(len(keys)) if keys[i] == key}
                if len(seen) > 1:
                    raise SIPParseError(f"conflicting {_CANONICAL[key]} headers")
    if not _REQUIRED_SET <= present:
        for key in _REQUIRED:
            if key not in present:
                raise SIPParseError(f"missing {_CANONICAL[key]} header")
    index = keys.index

    # Via: no empty element (RFC 4475 §3.1.2.1).
    at = index("via")
    for _ in range(keys.count("via")):
        at = index("via", at)
        line = raws[at]
        value = line[line.find(b":") + 1 :].strip(b" \t")
        if value.find(b"\n") >= 0:
            value = _raw_value(line)
        text = value.decode("utf-8", "surrogateescape")
        if "," in text or '"' in text or "<" in text:
            try:
                values = vals[at] = _scan(text, True)
            except SIPParseError as e:
                raise _malformed("via", e) from None
            if not values:
                raise SIPParseError("empty Via")
        elif text:
            vals[at] = [text]
        else:
            raise SIPParseError("empty Via")
        at += 1

    # From, To: balanced quotes and angle brackets (RFC 4475 §3.1.2.6).
    # (A quoted display name takes the full scan; the From value, which
    # every proxy reads, is kept.)
    at = index("from")
    line = raws[at]
    if line.find(b'"') >= 0:
        vals[at] = _decode("from", line)
    elif line.rfind(b"<") > line.rfind(b">"):
        raise SIPParseError("unclosed '<' in From")
    else:
        value = line[line.find(b":") + 1 :].strip(b" \t")
        if value.find(b"\n") >= 0:
            value = _raw_value(line)
        vals[at] = [value.decode("utf-8", "surrogateescape")]
    at = index("to")
    line = raws[at]
    if line.find(b'"') >= 0:
        vals[at] = _decode("to", line)
    elif line.rfind(b"<") > line.rfind(b">"):
        raise SIPParseError("unclosed '<' in To")

    # CSeq = "CSeq" HCOLON 1*DIGIT LWS Method, the number below 2**31;
    # the method of a request's CSeq is its method (RFC 3261 §8.1.1.5,
    # RFC 4475 §3.1.2.17).  split() takes line folds for the whitespace
    # they are.
    line = raws[index("cseq")]
    parts = line[line.find(b":") + 1 :].split()
    # (Nine digits are always below 2**31.)
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 9:
        _parse_cseq(line[line.find(b":") + 1 :])
    number = int(parts[0])
    if type(message) is Request:
        if parts[1] != message._method.encode("ascii"):
            raise SIPParseError("CSeq method does not match the request method")
    elif not _is_token(parts[1]):
        raise SIPParseError(f"bad CSeq method {parts[1][:40]!r}")

    # callid = word [ "@" word ]: at least one word and no whitespace.
    at = index("call-id")
    line = raws[at]
    value = line[line.find(b":") + 1 :].strip(b" \t")
    if value.find(b"\n") >= 0:
        value = _raw_value(line)
    text = value.decode("utf-8", "surrogateescape")
    if not text or " " in text or "\t" in text:
        raise SIPParseError("bad Call-ID")
    vals[at] = [text]
    # The transaction id (see Message.tid), which every element needs.
    message._tid = f"{text} {number}"

    # Max-Forwards = "Max-Forwards" HCOLON 1*DIGIT
    if "max-forwards" in present:
        at = index("max-forwards")
        line = raws[at]
        value = line[line.find(b":") + 1 :].strip(b" \t")
        if value.find(b"\n") >= 0:
            value = _raw_value(line)
        if not value.isdigit() or len(value) > _MAX_DIGITS:
            _number(value, "Max-Forwards")
        vals[at] = [value.decode("ascii")]

    # Expires = "Expires" HCOLON delta-seconds (RFC 3261 §20.19); an
    # RFC 2543 SIP-date is left alone, and a large number is the
    # application's business ("treated as 2**32-1").
    if "expires" in present:
        value = _raw_value(raws[index("expires")])
        if value[:1].isdigit() and not value.isdigit():
            raise SIPParseError(f"bad Expires {value[:40]!r}")

    # Content-Length = ( "Content-Length" / "l" ) HCOLON 1*DIGIT
    if "content-length" not in present:
        return None
    line = raws[index("content-length")]
    value = line[line.find(b":") + 1 :].strip(b" \t")
    if value.isdigit() and len(value) <= _MAX_DIGITS:
        return int(value)
    value = _raw_value(line)
    return _number(value, "Content-Length")


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """
    Parse one SIP message.

    @param data: the bytes of the message.  CRLFs before the start line are
        skipped; bare LF line ends are tolerated.
    @param datagram: C{True} when C{data} is a whole datagram: a
        Content-Length shorter than the rest cuts the body (the extra bytes
        are dropped, RFC 3261 §18.3), a missing Content-Length means "the
        rest".  C{False} when a stream framer already cut the message:
        then the body must be exactly Content-Length bytes.
    @return: a L{Request} or a L{Response}.
    @raise SIPParseError: the bytes are not a usable SIP message; C{status}
        is the response code to answer a request with (400, or 505 for an
        unsupported SIP-Version).  Nothing else is ever raised.
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    start = 0
    if data.startswith((b"\r", b"\n")):
        start = size - len(data.lstrip(b"\r\n"))

    # The common case: CRLF everywhere; the header block ends at the first
    # CRLF CRLF.  Anything else takes the slow way.
    normalised = False
    head: bytes | None = None
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head = data[start:end]
        lines = head.split(b"\r\n")
        crlf = len(lines) - 1
        body_start = end + 4
        if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
            head = None
    if head is None:
        lines, body_start, normalised = _split_head(data, start)

    message = _parse_start(lines[0])

    # Header lines.  The cache is keyed by the name *with* its colon: a
    # continuation line (leading whitespace is never cached) or a name
    # seen for the first time misses it, a line without a colon has no
    # name: the slow way sorts them out.
    raws = lines[1:]
    try:
        if head is None:
            raise KeyError()
        keys = list(map(_WIRE_KEYS.__getitem__, _HEADER_NAMES.findall(head)))
        if len(keys) != len(raws):
            raise KeyError()
    except KeyError:
        raws, keys = _header_lines(raws)
    count = len(raws)
    vals: list[list[str] | None] = [None] * count
    length = _check_headers(message, keys, raws, vals)

    # RFC 3261 §18.3 (datagrams) / §7.5: the body is Content-Length bytes.
    orig: bytes | None
    if length is None:
        body_end = size
        orig = None  # Content-Length must be added on output
    else:
        available = size - body_start
        if length > available:
            raise SIPParseError("body shorter than Content-Length")
        if length < available and not datagram:
            raise SIPParseError("body longer than Content-Length")
        body_end = body_start + length
        if normalised:
            orig = None
        elif start == 0 and body_end == size:
            orig = data
        else:
            orig = data[start:body_end]
    message._keys = keys
    message._raws = raws
    message._vals = vals
    message._names = [None] * count
    message._body = data[body_start:body_end]
    message._orig = orig
    message._length_ok = length is not None
    return message


# ---------------------------------------------------------------------------
# Responses


def make_response(request: Request, code: int, reason: str | None = None) -> Response:
    """
    Build a stateless response to a request (RFC 3261 §8.2.6): the Via
    list, From, To, Call-ID and CSeq are copied (their lines byte for
    byte); a To tag is added when C{code > 100} and To has none.  The tag
    is derived from the request (Call-ID, From, CSeq, top Via), so a
    retransmitted request gets the same tag.  The body is empty
    (Content-Length 0).

    @param reason: the reason phrase; L{None} for the default (L{REASONS}).
    """
    response = Response(code, reason)
    lines = request._indexes("via")
    for key in ("from", "to", "call-id", "cseq"):
        if key in request._keys:
            lines.append(request._keys.index(key))
    for index in lines:
        key = request._keys[index]
        response._keys.append(key)
        response._raws.append(request._raws[index])
        response._vals.append(request._vals[index])
        response._names.append(request._names[index])
        if key == "to" and code > 100:
            to = request._values(index)[0]
            if not _has_tag(to):
                tag = answer_tag(
                    request.get_header("call-id"),
                    request.get_header("from"),
                    request.get_header("cseq"),
                    request.get_header("via"),
                )
                response._replace(len(response._keys) - 1, [f"{to};tag={tag}"])
    response._insert(len(response._keys), "content-length", "Content-Length", ["0"])
    return response


def answer_tag(*fields: str | None) -> str:
    """
    The To tag of a stateless response: a hash of the request's Call-ID,
    From, CSeq and top Via, so a retransmission gets the same tag (and
    the ACK of the answer can be told from the ACK of someone else's).
    """
    seed = "\0".join(field or "" for field in fields)
    return hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


#: The headers a stateless response copies from its request (§8.2.6),
#: as written in an answer, by key.
_ECHOED = {"via": b"Via", "from": b"From", "to": b"To", "call-id": b"Call-ID", "cseq": b"CSeq"}


def salvage_answer(data: bytes, code: int, reason: str | None = None) -> bytes | None:
    """
    Answer bytes that failed to parse as a request: RFC 3261 §16.3 and
    RFC 4475 §3.1.2 ask for an error response to a malformed request.

    The response copies the request's Via lines and its first From, To,
    Call-ID and CSeq from the raw header lines (compact forms included)
    I{verbatim}, as §8.2.6.2 asks, even where one of them is what is
    malformed: the requester matches the answer to its transaction by the
    top Via's branch and the CSeq method (§17.1.3), which are its own
    bytes, never ours.  A To without a tag gets one.  So an answer is
    never much larger than its request (no amplification).

    There is nobody to answer, and L{None} is returned, when the start
    line is not a request line or the request has no Via or no CSeq.
    Lines holding a bare CR are not copied.

    @param data: the raw bytes that did not parse.
    @param code: the status to answer with (C{SIPParseError.status}).
    @param reason: the reason phrase; replaced by the default phrase of
        C{code} when it cannot be written on the wire.
    @return: the answer's bytes.
    """
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.lstrip(b"\r\n").split(b"\n")
    start = lines[0].rstrip(b"\r")
    if not start or start.startswith(b"SIP/") or b" " not in start:
        return None
    found: dict[str, list[bytes]] = {key: [] for key in _ECHOED}
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            continue
        name, _, value = line.rstrip(b"\r").partition(b":")
        try:
            key = _api_key(name.strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            continue
        value = value.strip(b" \t")
        if key in found and value and b"\r" not in value:
            found[key].append(value)
    if not (found["via"] and found["cseq"]):
        return None
    if reason is None or "\r" in reason or "\n" in reason:
        reason = REASONS.get(code) or REASONS.get(code - code % 100, "Unknown")
    out = [b"SIP/2.0 %d %s" % (code, reason.encode("utf-8", "surrogateescape"))]
    out += [b"Via: " + value for value in found["via"]]
    for key, name in _ECHOED.items():
        values = found[key]
        if key == "via" or not values:
            continue
        value = values[0]
        if key == "to" and code > 100 and not _has_tag(value.decode("utf-8", "surrogateescape")):
            tag = answer_tag(
                *(
                    (found[k] or [b""])[0].decode("utf-8", "surrogateescape")
                    for k in ("call-id", "from", "cseq", "via")
                )
            )
            value += b";tag=" + tag.encode()
        out.append(name + b": " + value)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)
