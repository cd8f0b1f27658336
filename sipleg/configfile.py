"""
The C{--config FILE} of C{twistd sipproxy}: a TOML file whose keys are the
long option names, turned into command-line arguments.

The file's values go through the same option parser as the command line
(L{sipleg.tap.Options}), so each value is checked once, in one place.
Here only the file's shape is checked: known keys, and values of the type
the option takes::

    listen = ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]   # repeatable: a list
    domain = ["example.test"]
    route = { "example.org" = "sip:10.0.0.7", "*" = "sip:10.0.0.1" }  # a table
    allow = ["10.0.0.0/8"]
    tls-cert = "/etc/sipleg/cert.pem"                       # a string
    max-forwards = 20                                       # a number
    registrar = true                                        # a flag

An option given on the command line replaces the file's value of that
option, the whole list for a repeatable one.

The pure part (L{file_arguments}) takes the parsed table; L{read_config}
reads and parses the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from sipleg.errors import ConfigError

__all__ = ["OptionKind", "file_arguments", "read_config"]


class OptionKind(Enum):
    """
    What a key of the file holds.
    """

    FLAG = "true or false"
    TEXT = "a string"
    INTEGER = "an integer"
    NUMBER = "a number"
    LIST = "a list of strings"
    TABLE = "a table of strings"


def read_config(path: str) -> dict[str, Any]:
    """
    Read and parse the TOML file C{path}.

    @raise ConfigError: no TOML parser (Python 3.10 without C{tomli}), the
        file cannot be read, or it is not TOML; the message names the file.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("--config needs Python 3.11 or the tomli package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not TOML: {e}") from None


def _valid(kind: OptionKind, value: object) -> bool:
    if kind is OptionKind.FLAG:
        return isinstance(value, bool)
    if kind is OptionKind.TEXT:
        return isinstance(value, str)
    if kind is OptionKind.INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is OptionKind.NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is OptionKind.LIST:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def file_arguments(
    table: Mapping[str, Any], path: str, kinds: Mapping[str, OptionKind], given: Iterable[str] = ()
) -> list[str]:
    """
    The command-line arguments a parsed config file stands for.

    @param table: the parsed file.
    @param path: the file's name, for the error messages.
    @param kinds: every option the file may set, by long name.
    @param given: the options given on the command line: the file's values
        of these are left out (the command line replaces them).
    @return: C{--name value} pairs (C{--name} alone for a true flag; a
        list's items and a table's C{KEY=VALUE} entries one option each).
    @raise ConfigError: an unknown key or a value of the wrong type, named
        with the file.
    """
    skip = set(given)
    arguments: list[str] = []
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"--config {path}: unknown option {key!r}")
        if not _valid(kind, value):
            raise ConfigError(f"--config {path}: {key!r} must be {kind.value}")
        if key in skip:
            continue
        option = "--" + key
        if kind is OptionKind.FLAG:
            if value:
                arguments.append(option)
        elif kind is OptionKind.LIST:
            for item in value:
                arguments += [option, item]
        elif kind is OptionKind.TABLE:
            for name, item in value.items():
                arguments += [option, f"{name}={item}"]
        else:
            arguments += [option, str(value)]
    return arguments
