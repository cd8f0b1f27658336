"""
pytest glue for the trial test cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _run_in_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # trial's TestCase.mktemp() makes paths relative to the working
    # directory; keep them out of the checkout.
    monkeypatch.chdir(tmp_path)


class _NoDNS:
    """
    A twisted.names resolver for which every name is unknown: tests never
    query the machine's DNS server (traffic stays on loopback).  Tests of
    DNS itself run their own server on 127.0.0.1.
    """

    def __getattr__(self, name: str) -> object:
        from twisted.internet import defer
        from twisted.names.error import DNSNameError

        if not name.startswith("lookup"):
            raise AttributeError(name)
        return lambda query, *args, **kwargs: defer.fail(DNSNameError(query))


@pytest.fixture(autouse=True)
def _no_system_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.names import client

    monkeypatch.setattr(client, "createResolver", lambda *args, **kwargs: _NoDNS())
