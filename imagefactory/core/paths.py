"""Containment checks for paths inside a guest root (guests and images are hostile input)."""

from __future__ import annotations


def is_inside(path: str, root: str) -> bool:
    """True if the (already resolved) path is root or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")
