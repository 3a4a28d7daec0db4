"""Helpers shared by the tests of every wing (builders of archives, images, guests, keys)."""

from __future__ import annotations

import os
import shutil

import pytest


def need_tool(*names: str) -> None:
    """Fail (not skip) when a tool scripts/setup should have installed is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.fail(f"missing tools (run scripts/setup): {', '.join(missing)}")


# Kernel builds and TCG boots take many minutes: the qemu proofs run only when asked for.
QEMU_OPT_IN = pytest.mark.skipif(os.environ.get("IMAGEFACTORY_QEMU_TESTS") != "1",
                                 reason="opt-in: IMAGEFACTORY_QEMU_TESTS=1 (builds a kernel, boots it under qemu)")
