"""Byte units: the one formatter every table, summary and report uses."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human(n: float | None) -> str:
    """Binary units with one decimal, like `du -h` but steadier: 1.5 MiB, 730.0 KiB, 12 B; None -> "-"."""
    if n is None:
        return "-"
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
