"""Shared pytest fixtures and markers."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Skip root-marked tests clearly when not root (never silently pass)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def need_tool(*names: str) -> None:
    """Fail (not skip) when a tool scripts/setup should have installed is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing tools (run scripts/setup): {', '.join(missing)}")
