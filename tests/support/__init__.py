"""Helpers shared by the tests of every wing (builders of archives, images, guests, keys)."""

from __future__ import annotations

import shutil

import pytest


def need_tool(*names: str) -> None:
    """Fail (not skip) when a tool scripts/setup should have installed is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing tools (run scripts/setup): {', '.join(missing)}")
