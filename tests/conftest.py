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
