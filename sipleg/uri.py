"""
SIP and SIPS URIs, name-addr values and Via values.

This module parses and writes the three structured values a proxy touches on
every packet:

 - L{URI}: a SIP or SIPS URI (RFC 3261 §19.1, ABNF in §25.1, IPv6 references
   per RFC 5118), or any other URI kept opaque (C{tel:}, C{urn:} ...);
 - L{NameAddr}: a From, To, Contact, Route or Record-Route value (RFC 3261
   §20.10): optional display name, the URI, header parameters;
 - L{Via}: one via-parm (RFC 3261 §20.42, RFC 3581 C{rport}, RFC 5923
   C{alias}).

Parsers raise L{SIPParseError} (status 400) on any malformed input and
nothing else.  They are hand-written scanners over C{str.find} plus simple
anchored regular expressions whose alternatives are disjoint, so their cost
stays linear in the input, whatever a peer sends.

Parsed text round-trips: C{str(parse_uri(s)) == s} for well-formed input,
except that the scheme, the host and parameter names are written in lower
case.

This module is part of the sans-IO core: it never touches the network.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sipleg.address import bracket, ip_family
from sipleg.errors import SIPParseError

__all__ = [
    "URI",
    "NameAddr",
    "Via",
    "check_host",
    "header_tag",
    "normalise_escapes",
    "parse_name_addr",
    "parse_params",
    "parse_uri",
    "parse_via",
    "route_uri",
    "same_hop",
    "uri_equal",
    "via_branch",
]

# --- character classes (RFC 3261 §25.1) -------------------------------------
#
# alphanum  =  ALPHA / DIGIT
# unreserved  =  alphanum / mark
# mark        =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
# escaped     =  "%" HEXDIG HEXDIG
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"


def _escaped_run(extra: str) -> re.Pattern[str]:
    # 1*( unreserved / escaped / <extra> ): the alternatives are disjoint
    # ("%" is in none of the classes), so matching is linear.
    return re.compile(f"(?:[{_UNRESERVED}{extra}]|{_ESCAPED})+")


# user             =  1*( unreserved / escaped / user-unreserved )
# user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
# The user part may also be a telephone-subscriber (RFC 2806), whose
# visual separators, "+" and dtmf digits add "#" to the set above; its
# quoted-string form of future-extension is not supported.
_USER = _escaped_run(r"&=+$,;?/#")
# password         =  *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD = re.compile(f"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
# pname            =  1*paramchar
# pvalue           =  1*paramchar
# paramchar        =  param-unreserved / unreserved / escaped
# param-unreserved =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
_PARAMCHARS = _escaped_run(r"\[\]/:&+$")
# hname            =  1*( hnv-unreserved / unreserved / escaped )
# hvalue           =  *( hnv-unreserved / unreserved / escaped )
# hnv-unreserved   =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HNAME = _escaped_run(r"\[\]/?:+$")
_HVALUE = re.compile(f"(?:[{_UNRESERVED}\\[\\]/?:+$]|{_ESCAPED})*")

# hostname         =  *( domainlabel "." ) toplabel [ "." ]
# domainlabel      =  alphanum / alphanum *( alphanum / "-" ) alphanum
# toplabel         =  ALPHA / ALPHA *( alphanum / "-" ) alphanum
# Like most SIP stacks we also accept "_" and a toplabel starting with a
# digit (a host of digits and dots only must still be a valid IPv4address).
# A label cannot contain ".", so each label's extent is fixed: linear.
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\.?"
)
_DIGITS_DOTS = re.compile(r"[0-9.]+")
# Characters that may appear in a host name or an IPv4address.
_HOST_RUN = re.compile(r"[A-Za-z0-9._-]+")
# port  =  1*DIGIT  (ASCII only: str.isdigit() accepts other scripts)
_PORT = re.compile(r"[0-9]{1,5}")
_DIGITS = re.compile(r"[0-9]+")

# scheme  =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# The opaque part of a non-SIP URI: any visible ASCII except the characters
# that delimit a URI inside a header ('"', "<", ">").
_OPAQUE = re.compile(r"[!#-;=?-~]+")

# token  =  1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value  =  token / host / quoted-string
# (host adds "[", "]" and ":" for IPv6; RFC 5118 §4.5 lets the Via
# received parameter carry an IPv6 address with or without brackets.)
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\[\]:]+")
# quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair    =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
_QUOTED = re.compile(r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

# LWS / SWS, once a message parser has unfolded continuation lines.
_WS = " \t\r\n"

# reserved  =  ";" / "/" / "?" / ":" / "@" / "&" / "=" / "+" / "$" / ","
_RESERVED = frozenset(";/?:@&=+$,")
_HEX = frozenset("0123456789abcdefABCDEF")

# RFC 3261 §19.1.4: these uri-parameters must match when present in either
# URI; any other parameter only matters when both URIs carry it.
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WS:
        pos += 1
    return pos


def _check_host(host: str) -> str:
    """
    Validate a host without brackets and return it lower-cased.

    @param host: a host name, an IPv4address or (already unbracketed) an
        IPv6address.
    @raise SIPParseError: C{host} is none of these.
    """
    if ":" in host:
        # IPv6reference  =  "[" IPv6address "]"   (RFC 5118 §4.10: the
        # RFC 3261 IPv6address rule is buggy; inet_pton is the reference.)
        if ip_family(host) != socket.AF_INET6:
            # The buggy rule let a third colon in before an embedded IPv4
            # address ("2001:db8:::192.0.2.1"); RFC 5118 §4.10 asks
            # elements to accept it as the address it means.
            fixed = host.replace(":::", "::", 1)
            if fixed == host or "." not in host or ip_family(fixed) != socket.AF_INET6:
                raise SIPParseError(f"bad IPv6 address {_show(host)}")
            host = fixed
        return host.lower()
    if host[-1:].isdigit() and ip_family(host) == socket.AF_INET:
        # The usual IPv4 literal: inet_pton is the whole check.
        return host
    if _HOSTNAME.fullmatch(host) is None:
        raise SIPParseError(f"bad host {_show(host)}")
    # IPv4address  =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
    if _DIGITS_DOTS.fullmatch(host) is not None and ip_family(host) != socket.AF_INET:
        raise SIPParseError(f"bad IPv4 address {_show(host)}")
    return host.lower()


def check_host(text: str) -> str:
    """
    Validate a host as a SIP URI writes it: a host name, an IPv4 address
    or an IPv6 address (with or without brackets).

    @return: the host lower-cased, without brackets.
    @raise SIPParseError: C{text} is none of these.
    """
    if not text:
        raise SIPParseError("empty host")
    return _check_host(_unbracket(text))


def _show(text: str) -> str:
    """
    Quote peer-supplied text for an error reason: escaped by C{repr} (no
    CR or LF can reach a reason phrase) and cut short.
    """
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."


def _unbracket(value: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        return value[1:-1]
    return value


def _check_port(text: str) -> int:
    # port  =  1*DIGIT   (and a port number fits in 16 bits)
    if _PORT.fullmatch(text) is None or int(text) > 65535:
        raise SIPParseError(f"bad port {_show(text)}")
    return int(text)


def _format_params(params: Mapping[str, str | None]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


# --- URI ----------------------------------------------------------------------


@dataclass(frozen=True)
class URI:
    """
    A SIP or SIPS URI, or an opaque URI of any other scheme.

    URIs are values: frozen, their parameters a read-only mapping and their
    headers a tuple, so a parsed URI can be cached and shared (use
    L{dataclasses.replace} for a changed copy).

    @ivar scheme: the scheme, lower-cased: C{"sip"}, C{"sips"} or another
        scheme whose rest is kept in C{opaque}.
    @ivar user: the user part as written (escapes kept), or L{None}.
    @ivar password: the password as written, or L{None}.
    @ivar host: the host, lower-cased; IPv6 literals without brackets.
    @ivar port: the explicit port, or L{None}.
    @ivar params: uri-parameters in order, lower-cased name to value as
        written (L{None} for a parameter without value, such as C{lr}).
    @ivar headers: the C{?h=v&...} headers as C{(name, value)} pairs, as
        written.
    @ivar opaque: for a non-SIP scheme, the text after C{scheme:}; else
        L{None}.
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    def __post_init__(self) -> None:
        if type(self.params) is not MappingProxyType:
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        if type(self.headers) is not tuple:
            object.__setattr__(self, "headers", tuple(self.headers))

    @property
    def is_sip(self) -> bool:
        """
        Whether this is a C{sip:} or C{sips:} URI.
        """
        return self.scheme in ("sip", "sips")

    @property
    def is_secure(self) -> bool:
        """
        Whether this is a C{sips:} URI.
        """
        return self.scheme == "sips"

    @property
    def effective_port(self) -> int:
        """
        The explicit port, else the default (RFC 3263 §4.2): 5061 for
        C{sips} or C{;transport=tls}, 5060 otherwise.
        """
        if self.port is not None:
            return self.port
        return 5061 if self.scheme == "sips" or self.transport == "tls" else 5060

    @property
    def hostport(self) -> str:
        """
        C{host[:port]}, with IPv6 literals in brackets.
        """
        if self.port is None:
            return bracket(self.host)
        return f"{bracket(self.host)}:{self.port}"

    @property
    def transport(self) -> str | None:
        """
        The C{transport} parameter, lower-cased, or L{None} when absent.
        """
        value = self.params.get("transport")
        return None if value is None else value.lower()

    @property
    def maddr(self) -> str | None:
        """
        The C{maddr} parameter, lower-cased and without IPv6 brackets, or
        L{None} when absent.
        """
        value = self.params.get("maddr")
        return None if value is None else _unbracket(value).lower()

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque or ''}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(self.hostport)
        if self.params:
            parts.append(_format_params(self.params))
        if self.headers:
            parts += ["?", "&".join(f"{name}={value}" for name, value in self.headers)]
        return "".join(parts)


#: Texts longer than this are parsed every time instead of cached, so the
#: caches stay small whatever peers send (4096 entries of at most this).
_CACHED_TEXT = 256


def parse_uri(text: str) -> URI:
    """
    Parse a URI.  URIs are frozen values, so the results for the last few
    thousand short texts are cached and shared.

    C{sip:} and C{sips:} URIs are parsed in full; a URI of any other
    scheme is accepted as C{scheme} plus C{opaque} (the proxy, not the
    parser, decides to answer 416).

    @param text: the URI, without angle brackets or surrounding blanks.
    @return: the parsed URI.
    @raise SIPParseError: C{text} has no C{scheme:} or is a malformed SIP
        or SIPS URI.
    """
    if len(text) <= _CACHED_TEXT:
        return _parse_uri_cached(text)
    return _parse_uri(text)


def _parse_uri(text: str) -> URI:
    colon = text.find(":")
    if colon <= 0 or _SCHEME.fullmatch(text, 0, colon) is None:
        raise SIPParseError(f"no URI scheme in {_show(text)}")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme not in ("sip", "sips"):
        # absoluteURI  =  scheme ":" ( hier-part / opaque-part )
        if _OPAQUE.fullmatch(rest) is None:
            raise SIPParseError(f"malformed {scheme} URI: {_show(text)}")
        return URI(scheme=scheme, opaque=rest)
    return _parse_sip_uri(scheme, rest, text)


_parse_uri_cached = functools.lru_cache(maxsize=4096)(_parse_uri)


def _parse_sip_uri(scheme: str, rest: str, text: str) -> URI:
    # SIP-URI   =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    # SIPS-URI  =  "sips:" [ userinfo ] hostport uri-parameters [ headers ]
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        # userinfo  =  ( user / telephone-subscriber ) [ ":" password ] "@"
        # No "@" may appear unescaped anywhere else, and the user part
        # cannot contain ":", so both splits are unambiguous.
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if _USER.fullmatch(user) is None:
            raise SIPParseError(f"bad user part in {_show(text)}")
        if sep:
            if _PASSWORD.fullmatch(pw) is None:
                raise SIPParseError(f"bad password in {_show(text)}")
            password = pw
    # hostport  =  host [ ":" port ]
    # host      =  hostname / IPv4address / IPv6reference
    # Neither ";" nor "?" can occur in hostport: the first one ends it.
    end = len(rest)
    semi = rest.find(";")
    if semi >= 0:
        end = semi
    qmark = rest.find("?", 0, end)
    if qmark >= 0:
        end = qmark
    host, port = _parse_hostport(rest[:end], text)
    params: dict[str, str | None] = {}
    headers: tuple[tuple[str, str], ...] = ()
    if end < len(rest):
        tail = rest[end:]
        qmark = tail.find("?")
        if qmark < 0:
            param_text, header_text = tail, None
        else:
            param_text, header_text = tail[:qmark], tail[qmark + 1 :]
        if param_text:
            params = _parse_uri_params(param_text)
        if header_text is not None:
            headers = tuple(_parse_uri_headers(header_text))
    return URI(scheme, user, password, host, port, params, headers)


def _parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """
    Parse the hostport of a URI: C{host[:port]} or C{[v6][:port]}; a bare
    IPv6 literal is malformed (RFC 5118 §4.2).
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SIPParseError(f"unbalanced '[' in {_show(what)}")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise SIPParseError(f"bad IPv6 reference in {_show(what)}")
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    if not host:
        raise SIPParseError(f"no host in {_show(what)}")
    if rest and not rest.startswith(":"):
        raise SIPParseError(f"junk after host in {_show(what)}")
    port = _check_port(rest[1:]) if rest else None
    return _check_host(host), port


def _parse_uri_params(text: str) -> dict[str, str | None]:
    # uri-parameters  =  *( ";" uri-parameter)
    # uri-parameter   =  transport-param / user-param / method-param
    #                    / ttl-param / maddr-param / lr-param / other-param
    # other-param     =  pname [ "=" pvalue ]
    # (Every specific form is an other-param with a narrower value;
    # maddr and ttl are checked because routing depends on them.)
    params: dict[str, str | None] = {}
    for item in text.split(";")[1:]:
        name, sep, value = item.partition("=")
        if _PARAMCHARS.fullmatch(name) is None or (sep and _PARAMCHARS.fullmatch(value) is None):
            raise SIPParseError(f"bad URI parameter {_show(item)}")
        params[name.lower()] = value if sep else None
    maddr = params.get("maddr")
    if maddr is not None:
        # maddr-param  =  "maddr=" host
        _check_host(_unbracket(maddr))
    ttl = params.get("ttl")
    if ttl is not None:
        _check_ttl(ttl)
    return params


def _check_ttl(value: str) -> None:
    # ttl  =  1*3DIGIT ; 0 to 255
    if _DIGITS.fullmatch(value) is None or len(value) > 3 or int(value) > 255:
        raise SIPParseError(f"bad ttl {_show(value)}")


def _parse_uri_headers(text: str) -> list[tuple[str, str]]:
    # headers  =  "?" header *( "&" header )
    # header   =  hname "=" hvalue
    headers = []
    for item in text.split("&"):
        name, sep, value = item.partition("=")
        if not sep or _HNAME.fullmatch(name) is None or _HVALUE.fullmatch(value) is None:
            raise SIPParseError(f"bad URI header {_show(item)}")
        headers.append((name, value))
    return headers


# --- comparison -------------------------------------------------------------


def normalise_escapes(text: str) -> str:
    """
    Put a URI component in a form where equivalent spellings are equal
    (RFC 3261 §19.1.4): an escape of a character outside the reserved set
    is decoded, an escape of a reserved character is kept with upper-case
    hex digits.
    """
    if "%" not in text:
        return text
    pieces = text.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX and piece[1] in _HEX:
            char = chr(int(piece[:2], 16))
            out.append(f"%{piece[:2].upper()}" if char in _RESERVED else char)
            out.append(piece[2:])
        else:
            out.append("%" + piece)
    return "".join(out)


def _same_optional(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or normalise_escapes(a) == normalise_escapes(b)


def _same_host(a: str, b: str) -> bool:
    a, b = _unbracket(a).lower(), _unbracket(b).lower()
    if a == b:
        return True
    if ":" in a and ":" in b:
        # Two spellings of one IPv6 address ("::1" and "0:0::1").
        try:
            return socket.inet_pton(socket.AF_INET6, a) == socket.inet_pton(socket.AF_INET6, b)
        except (OSError, ValueError):
            return False
    return False


def _as_uri(uri: URI | str) -> URI:
    return parse_uri(uri) if isinstance(uri, str) else uri


def _comparable_params(params: Mapping[str, str | None]) -> dict[str, str | None]:
    return {
        name.lower(): None if value is None else normalise_escapes(value).lower()
        for name, value in params.items()
    }


def uri_equal(a: URI | str, b: URI | str) -> bool:
    """
    Compare two URIs by the rules of RFC 3261 §19.1.4.

    User and password compare case-sensitively, everything else
    case-insensitively, after decoding C{%XX} escapes of unreserved
    characters.  An explicit port never equals an absent one.  The
    C{user}, C{ttl}, C{method}, C{maddr} and C{transport} parameters must
    match when either URI has them; other parameters only when both have
    them.  Headers must match as a set (names case-insensitive, values
    case-sensitive: the per-header rules of §20 are not modelled).  Two
    non-SIP URIs are equal when scheme and opaque text are identical.

    @param a: a L{URI} or URI text.
    @param b: a L{URI} or URI text.
    @raise SIPParseError: a text argument is not a URI.
    """
    a, b = _as_uri(a), _as_uri(b)
    if a.scheme.lower() != b.scheme.lower():
        # A SIP and a SIPS URI are never equivalent.
        return False
    if not a.is_sip:
        return a.opaque == b.opaque
    if not (
        _same_optional(a.user, b.user)
        and _same_optional(a.password, b.password)
        and a.port == b.port
        and _same_host(a.host, b.host)
    ):
        return False
    pa, pb = _comparable_params(a.params), _comparable_params(b.params)
    for name, value in pa.items():
        if name in pb:
            if pb[name] != value:
                return False
        elif name in _SIGNIFICANT_PARAMS:
            return False
    for name in pb:
        if name not in pa and name in _SIGNIFICANT_PARAMS:
            return False
    ha = sorted((normalise_escapes(n).lower(), normalise_escapes(v)) for n, v in a.headers)
    hb = sorted((normalise_escapes(n).lower(), normalise_escapes(v)) for n, v in b.headers)
    return ha == hb


def same_hop(a: URI | str, b: URI | str) -> bool:
    """
    Tell whether two URIs name the same hop, leniently: scheme, user, host
    (case-insensitive) and L{URI.effective_port} equal, parameters ignored.

    This is how a proxy recognises its own Route and Record-Route entries,
    so C{sip:p.example.com;lr} matches C{sip:P.example.com:5060}.  Two
    non-SIP URIs are the same hop when scheme and opaque text are identical.

    @param a: a L{URI} or URI text.
    @param b: a L{URI} or URI text.
    @raise SIPParseError: a text argument is not a URI.
    """
    a, b = _as_uri(a), _as_uri(b)
    if a.scheme.lower() != b.scheme.lower():
        return False
    if not a.is_sip:
        return a.opaque == b.opaque
    return (
        a.effective_port == b.effective_port and _same_host(a.host, b.host) and _same_optional(a.user, b.user)
    )


# --- header parameters --------------------------------------------------------


def parse_params(text: str) -> dict[str, str | None]:
    """
    Parse header parameters such as C{;tag=a6c85cf;lr;q="0.5"}.

    Parameter names are lower-cased; values are kept as written (a quoted
    value keeps its quotes, so it can be written back unchanged); a
    parameter without C{=} maps to L{None}.  When a name repeats, the last
    value wins.

    @param text: the parameters, each one introduced by C{;}, with optional
        blanks around C{;} and C{=}; an empty or blank text is no parameter.
    @return: the parameters in order.
    @raise SIPParseError: malformed parameters.
    """
    return _parse_params(text, 0)


def _parse_params(text: str, pos: int) -> dict[str, str | None]:
    # *( SEMI generic-param )
    # generic-param  =  token [ EQUAL gen-value ]
    # gen-value      =  token / host / quoted-string
    # SEMI = SWS ";" SWS      EQUAL = SWS "=" SWS
    params: dict[str, str | None] = {}
    n = len(text)
    pos = _skip_ws(text, pos)
    while pos < n:
        if text[pos] != ";":
            raise SIPParseError(f"expected ';' at {pos} in {_show(text)}")
        pos = _skip_ws(text, pos + 1)
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SIPParseError(f"bad parameter name at {pos} in {_show(text)}")
        name = match.group().lower()
        pos = _skip_ws(text, match.end())
        value: str | None = None
        if pos < n and text[pos] == "=":
            pos = _skip_ws(text, pos + 1)
            if pos < n and text[pos] == '"':
                match = _QUOTED.match(text, pos)
            else:
                match = _GEN_VALUE.match(text, pos)
            if match is None:
                raise SIPParseError(f"bad value of parameter {_show(name)}")
            value = match.group()
            pos = _skip_ws(text, match.end())
        params[name] = value
    return params


# --- name-addr ----------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class NameAddr:
    """
    A From, To, Contact, Route or Record-Route value.

    @ivar uri: the URI.
    @ivar display: the display name, unquoted and unescaped, or L{None}.
    @ivar params: the header parameters (C{tag}, C{expires}, C{lr} of a
        Route is I{not} one: that is inside the URI), as by L{parse_params}.
    @ivar bracketed: whether the URI was written in angle brackets.  A
        value with a display name, or whose URI has parameters or headers,
        is always written with brackets.
    """

    uri: URI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        """
        The C{tag} parameter (RFC 3261 §19.3), or L{None}.
        """
        return self.params.get("tag")

    def __str__(self) -> str:
        uri = str(self.uri)
        if (
            self.bracketed
            or self.display is not None
            or self.uri.params
            or self.uri.headers
            # RFC 3261 §20.10: a URI with a comma, question mark or
            # semicolon must be enclosed in angle brackets.
            or any(c in uri for c in ",;?")
        ):
            uri = f"<{uri}>" if self.display is None else f"{_quote(self.display)} <{uri}>"
        return uri + _format_params(self.params)


def parse_name_addr(text: str) -> NameAddr:
    """
    Parse one From, To, Contact, Route or Record-Route value.

    Both forms are accepted: C{"Name" <uri>;p=v} (or C{Name Words <uri>})
    and the bare addr-spec C{uri;p=v}, where the C{;p=v} are header
    parameters, not URI parameters (RFC 3261 §20.10).

    The wildcard Contact C{*} (RFC 3261 §20.10) is not a name-addr: this
    function rejects it, and a registrar must check for it first.

    @param text: one value (the message parser splits lists at top-level
        commas).
    @return: the parsed value.
    @raise SIPParseError: C{text} is malformed (or C{*}).
    """
    # name-addr     =  [ display-name ] LAQUOT addr-spec RAQUOT
    # addr-spec     =  SIP-URI / SIPS-URI / absoluteURI
    # display-name  =  *(token LWS)/ quoted-string
    # LAQUOT = SWS "<"      RAQUOT = ">" SWS
    text = text.strip(_WS)
    if text == "*":
        raise SIPParseError("the wildcard Contact '*' is not a name-addr")
    if not text:
        raise SIPParseError("empty name-addr")
    display: str | None = None
    n = len(text)
    if text[0] == '"':
        match = _QUOTED.match(text)
        if match is None:
            raise SIPParseError(f"bad quoted display name in {_show(text)}")
        display = _QUOTED_PAIR.sub(r"\1", match.group()[1:-1])
        pos = _skip_ws(text, match.end())
    elif text[0] == "<":
        pos = 0
    else:
        match = _TOKEN.match(text)
        if match is None:
            raise SIPParseError(f"malformed name-addr {_show(text)}")
        if match.end() < n and text[match.end()] == ":":
            # A scheme: the bare addr-spec form.  Its URI cannot contain
            # ";" (it would have to be bracketed), so the first ";" starts
            # the header parameters.
            semi = text.find(";")
            if semi < 0:
                return NameAddr(parse_uri(text), bracketed=False)
            return NameAddr(
                parse_uri(text[:semi].rstrip(_WS)),
                params=_parse_params(text, semi),
                bracketed=False,
            )
        words = [match.group()]
        pos = _skip_ws(text, match.end())
        while pos < n and text[pos] != "<":
            # A token match is maximal: when no blank follows it, the next
            # character cannot start another token and this fails.
            match = _TOKEN.match(text, pos)
            if match is None:
                raise SIPParseError(f"bad display name in {_show(text)}")
            words.append(match.group())
            pos = _skip_ws(text, match.end())
        display = " ".join(words)
    if pos >= n or text[pos] != "<":
        raise SIPParseError(f"expected '<' in {_show(text)}")
    close = text.find(">", pos)
    if close < 0:
        raise SIPParseError(f"unbalanced '<' in {_show(text)}")
    uri = parse_uri(text[pos + 1 : close])
    return NameAddr(uri, display, _parse_params(text, close + 1))


# --- Via --------------------------------------------------------------------


@dataclass
class Via:
    """
    One Via value (a via-parm, RFC 3261 §20.42).

    Parameter edits through the properties keep the order of existing
    parameters and append new ones.

    @ivar protocol: protocol name and version, C{"SIP/2.0"}.
    @ivar transport: the transport, upper-cased: C{"UDP"}, C{"TCP"},
        C{"TLS"}, or another token.
    @ivar host: the sent-by host, lower-cased, IPv6 without brackets.
    @ivar port: the sent-by port, or L{None}.
    @ivar params: the via-params in order, lower-cased name to value as
        written, L{None} for a parameter without value.
    """

    protocol: str = "SIP/2.0"
    transport: str = "UDP"
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def sent_by(self) -> str:
        """
        The sent-by as text, C{host[:port]} with IPv6 in brackets.
        """
        if self.port is None:
            return bracket(self.host)
        return f"{bracket(self.host)}:{self.port}"

    @property
    def branch(self) -> str | None:
        """
        The C{branch} parameter, or L{None}; settable (L{None} removes it).
        """
        return self.params.get("branch")

    @branch.setter
    def branch(self, value: str | None) -> None:
        self._set("branch", value)

    @property
    def received(self) -> str | None:
        """
        The C{received} IP address without brackets (RFC 5118 §4.5 allows
        both spellings), or L{None}; settable (L{None} removes it).
        """
        value = self.params.get("received")
        return None if value is None else _unbracket(value)

    @received.setter
    def received(self, value: str | None) -> None:
        self._set("received", value)

    @property
    def rport(self) -> str | None:
        """
        The RFC 3581 C{rport} parameter: L{None} when absent, C{""} when
        present without a value (a request asking for it), else the
        digits; settable the same way.
        """
        if "rport" not in self.params:
            return None
        return self.params["rport"] or ""

    @rport.setter
    def rport(self, value: str | None) -> None:
        if value is None:
            self.params.pop("rport", None)
        else:
            self.params["rport"] = value or None

    @property
    def maddr(self) -> str | None:
        """
        The C{maddr} parameter, lower-cased and without IPv6 brackets, or
        L{None}.
        """
        value = self.params.get("maddr")
        return None if value is None else _unbracket(value).lower()

    @property
    def ttl(self) -> int | None:
        """
        The C{ttl} parameter as a number, or L{None}.
        """
        value = self.params.get("ttl")
        return None if value is None else int(value)

    @property
    def alias(self) -> bool:
        """
        Whether the RFC 5923 C{alias} parameter is present.
        """
        return "alias" in self.params

    def _set(self, name: str, value: str | None) -> None:
        if value is None:
            self.params.pop(name, None)
        else:
            self.params[name] = value

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_format_params(self.params)}"


# The plain form nearly every Via on the wire has: upper-case transport, a
# host name or IPv4 sent-by, unquoted parameters, no blanks.  Anchored and
# unambiguous (";" and "=" are not in the character classes), so matching
# is linear.
_VIA_PLAIN = re.compile(
    r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9._-]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]+)?)*)"
)


def parse_via(text: str) -> Via:
    """
    Parse one Via value, such as C{SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport}.

    @param text: one via-parm (the message parser splits a Via list at
        top-level commas).
    @return: the parsed value.
    @raise SIPParseError: C{text} is malformed, including a malformed
        C{branch}, C{received}, C{rport}, C{maddr} or C{ttl} value.
    """
    plain = _VIA_PLAIN.fullmatch(text)
    if plain is None:
        return _parse_via(text)
    transport, host, port_text, param_text = plain.groups()
    params: dict[str, str | None] = {}
    for param in param_text.split(";")[1:]:
        name, equal, value = param.partition("=")
        params[name.lower()] = value if equal else None
    _check_via_params(params, text)
    port = None if port_text is None else _check_port(port_text)
    return Via("SIP/2.0", transport, _check_host(host), port, params)


def _parse_via(text: str) -> Via:
    """
    L{parse_via} for any form the grammar allows.
    """
    # via-parm       =  sent-protocol LWS sent-by *( SEMI via-params )
    # sent-protocol  =  protocol-name SLASH protocol-version SLASH transport
    # protocol-name  =  "SIP" / token
    # protocol-version = token
    # transport      =  "UDP" / "TCP" / "TLS" / "SCTP" / other-transport
    # SLASH = SWS "/" SWS
    n = len(text)
    pos = _skip_ws(text, 0)
    words = []
    for index in range(3):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SIPParseError(f"bad sent-protocol in Via {_show(text)}")
        words.append(match.group())
        pos = _skip_ws(text, match.end())
        if index < 2:
            if pos >= n or text[pos] != "/":
                raise SIPParseError(f"bad sent-protocol in Via {_show(text)}")
            pos = _skip_ws(text, pos + 1)
        elif pos == match.end():
            raise SIPParseError(f"no blank before sent-by in Via {_show(text)}")
    # sent-by  =  host [ COLON port ]      COLON = SWS ":" SWS
    if pos < n and text[pos] == "[":
        close = text.find("]", pos)
        if close < 0:
            raise SIPParseError(f"unbalanced '[' in Via {_show(text)}")
        host = text[pos + 1 : close]
        if ":" not in host:
            raise SIPParseError(f"bad IPv6 reference in Via {_show(text)}")
        pos = close + 1
    else:
        match = _HOST_RUN.match(text, pos)
        if match is None:
            raise SIPParseError(f"no sent-by host in Via {_show(text)}")
        host = match.group()
        pos = match.end()
    host = _check_host(host)
    pos = _skip_ws(text, pos)
    port = None
    if pos < n and text[pos] == ":":
        pos = _skip_ws(text, pos + 1)
        match = _DIGITS.match(text, pos)
        if match is None:
            raise SIPParseError(f"bad sent-by port in Via {_show(text)}")
        port = _check_port(match.group())
        pos = match.end()
    params = _parse_params(text, pos)
    _check_via_params(params, text)
    protocol = f"{words[0].upper()}/{words[1]}"
    return Via(protocol, words[2].upper(), host, port, params)


def _check_via_params(params: dict[str, str | None], text: str) -> None:
    # via-branch    =  "branch" EQUAL token
    # via-received  =  "received" EQUAL (IPv4address / IPv6address)
    # via-maddr     =  "maddr" EQUAL host
    # via-ttl       =  "ttl" EQUAL ttl
    # response-port =  "rport" [EQUAL 1*DIGIT]            (RFC 3581)
    if "branch" in params and (params["branch"] is None or _TOKEN.fullmatch(params["branch"] or "") is None):
        raise SIPParseError(f"bad branch in Via {_show(text)}")
    if "received" in params:
        received = params["received"]
        if received is None or ip_family(_unbracket(received)) is None:
            raise SIPParseError(f"bad received in Via {_show(text)}")
    if "maddr" in params:
        maddr = params["maddr"]
        if maddr is None:
            raise SIPParseError(f"bad maddr in Via {_show(text)}")
        _check_host(_unbracket(maddr))
    if "ttl" in params:
        _check_ttl(params["ttl"] or "")
    rport = params.get("rport")
    if rport is not None:
        _check_port(rport)


# --- fast reads for the forwarding hot path ---------------------------------
#
# A proxy asks of most Via and From/To values one thing only (the branch,
# the tag).  These find it without building the whole value when the value
# is in its plain form (no quoted string, the parameter written as
# ";name="), and otherwise fall back to the full parser.  On a value the
# parser accepts they answer what it would; the fast path does not check
# the rest of the value, so a malformed one may still yield its parameter.

_BRANCH_END = re.compile(r"[;,\s]")


def _plain_param(text: str, lower: str, marker: str) -> str | None:
    index = lower.find(marker)
    if index < 0:
        return None
    start = index + len(marker)
    end = _BRANCH_END.search(text, start)
    return text[start : end.start() if end else len(text)]


def via_branch(text: str) -> str | None:
    """
    The C{branch} parameter of one Via value, or L{None} when it has none.

    @raise SIPParseError: the value is malformed (only detected when the
        fast path does not apply).
    """
    lower = text.lower()
    if '"' not in text and lower.count("branch") == 1:
        found = _plain_param(text, lower, ";branch=")
        if found:
            return found
    return parse_via(text).branch


def header_tag(text: str) -> str | None:
    """
    The C{tag} parameter of a From or To value, or L{None}.

    @raise SIPParseError: the value is malformed (only detected when the
        fast path does not apply).
    """
    if '"' not in text:
        close = text.rfind(">")
        if close >= 0:
            rest = text[close + 1 :]
            lower = rest.lower()
            if lower.count(";tag=") == 1:
                found = _plain_param(rest, lower, ";tag=")
                if found:
                    return found
            elif "tag" not in lower:
                return None
    return parse_name_addr(text).tag


def route_uri(text: str) -> URI:
    """
    The URI of a Route or Record-Route value (or any name-addr).

    In-dialog requests carry the same Route values over and over, so the
    results for short values are cached.

    @raise SIPParseError: the value is malformed.
    """
    if len(text) <= _CACHED_TEXT:
        return _route_uri_cached(text)
    return parse_name_addr(text).uri


@functools.lru_cache(maxsize=4096)
def _route_uri_cached(text: str) -> URI:
    return parse_name_addr(text).uri
