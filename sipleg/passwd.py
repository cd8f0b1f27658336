"""
C{sipleg-passwd FILE REALM USER}: add a user to a user file, or change
their password, like Apache's C{htdigest} does, with a line for every
digest algorithm (L{sipleg.users}), so the proxy can offer any of them
without asking users for their password again.

The password is asked twice at a terminal, or read as one line from
standard input when that is not a terminal (for scripts).  The file is
created when missing (readable by its owner only) and replaced atomically.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile

from sipleg.digest import ALGORITHMS, hash_a1
from sipleg.users import UserFileError, format_user, parse_users

__all__ = ["main", "set_password"]


def set_password(text: str, path: str, realm: str, user: str, password: str) -> str:
    """
    The user file C{text} with C{user}'s lines for C{realm} replaced by
    new ones for C{password}, one per algorithm; other lines (comments
    included) are kept as they are.

    @raise UserFileError: C{text} is malformed, or the user or realm
        contains a colon or a line break.
    """
    for name, value in (("user", user), ("realm", realm)):
        if not value or ":" in value or "\n" in value or "\r" in value:
            raise UserFileError(f"the {name} must be non-empty and contain no colon or line break")
    parse_users(text, path)
    lines = [
        line
        for line in text.splitlines()
        if line.strip().startswith("#") or line.strip().split(":")[:2] != [user, realm]
    ]
    hashes = {algorithm: hash_a1(algorithm, user, realm, password) for algorithm in ALGORITHMS}
    lines += format_user(user, realm, hashes)
    return "\n".join(lines) + "\n"


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Re-type new password: ") != first:
        raise SystemExit("sipleg-passwd: the passwords differ")
    return first


def main(argv: list[str] | None = None) -> int:
    """
    The command.
    """
    parser = argparse.ArgumentParser(
        prog="sipleg-passwd",
        description="Add a user to a sipleg user file (htdigest format) or change their password.",
    )
    parser.add_argument("file")
    parser.add_argument("realm")
    parser.add_argument("user")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise SystemExit(f"sipleg-passwd: {e}") from None
    password = _password()
    if not password:
        raise SystemExit("sipleg-passwd: empty password")
    try:
        text = set_password(text, args.file, args.realm, args.user, password)
    except UserFileError as e:
        raise SystemExit(f"sipleg-passwd: {e}") from None
    directory = os.path.dirname(os.path.abspath(args.file))
    fd, temporary = tempfile.mkstemp(prefix=".sipleg-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.exists(args.file):
            os.chmod(temporary, os.stat(args.file).st_mode & 0o7777)
        os.replace(temporary, args.file)
    except OSError as e:
        os.unlink(temporary)
        raise SystemExit(f"sipleg-passwd: {e}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
