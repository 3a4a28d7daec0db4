"""File digests (streamed: hashlib.file_digest reads in the C layer without holding the file)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path | str) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read once."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size
