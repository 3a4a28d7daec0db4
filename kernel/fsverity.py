"""The fs-verity file digest, computed in user space (SHA-256, 4 KiB Merkle blocks, no salt).

What FS_IOC_MEASURE_VERITY returns for a file once fs-verity is enabled on it, and
what mkcomposefs names its objects by: the SHA-256 of the 256-byte fsverity_descriptor
(version 1, algorithm SHA-256, log2 block size 12, the file size and the Merkle tree's
root hash). The composefs qemu test uses it to find a guest file's object on the host
and to cross-check mkcomposefs and the kernel.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

BLOCK = 4096
_PER_BLOCK = BLOCK // 32  # SHA-256 hashes per Merkle tree block


def _block_hash(data: bytes) -> bytes:
    return hashlib.sha256(data.ljust(BLOCK, b"\0")).digest()


def fsverity_digest(path: Path) -> str:
    """Hex fs-verity digest of the file at path."""
    size = 0
    level = []
    with open(path, "rb") as handle:
        while chunk := handle.read(BLOCK):
            size += len(chunk)
            level.append(_block_hash(chunk))
    while len(level) > 1:
        level = [_block_hash(b"".join(level[i:i + _PER_BLOCK])) for i in range(0, len(level), _PER_BLOCK)]
    root = level[0] if level else bytes(32)
    descriptor = struct.pack("<BBBBIQ64s32s144s", 1, 1, 12, 0, 0, size, root, b"", b"")
    return hashlib.sha256(descriptor).hexdigest()
