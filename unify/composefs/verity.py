"""The fs-verity file digest in pure Python (what `fsverity digest` prints, what the kernel enforces).

fs-verity names a file by a Merkle tree over its content: SHA-256 of every 4 KiB block
(the last one zero-padded), then SHA-256 of every 4 KiB block of those hashes, level by
level, until one block remains; the root hash is that block's hash (for a file of at most
one block, the hash of that block; for an empty file, 32 zero bytes). The digest is the
SHA-256 of a 256-byte descriptor: version 1, hash algorithm 1 (SHA-256), log2 block size
12, salt size 0, 4 reserved bytes, the data size (le64), the root hash padded to 64 bytes,
a 32-byte salt (unused) and 144 reserved bytes.

composefs stores a file under this digest, and overlayfs with `verity=require` compares it
with the digest the kernel keeps for the backing file. Checked against fsverity-utils in
tests/unify/test_composefs_verity.py.
"""

from __future__ import annotations

import hashlib
import os
import struct

BLOCK = 4096
HASH_SIZE = 32
ALGORITHM_SHA256 = 1
_ZERO_BLOCK = bytes(BLOCK)


class VerityHasher:
    """Feed content in any chunk sizes; `hexdigest()` gives the fs-verity SHA-256 digest."""

    __slots__ = ("size", "_pending", "_leaves")

    def __init__(self) -> None:
        self.size = 0
        self._pending = bytearray()
        self._leaves: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.size += len(view)
        sha = hashlib.sha256
        if self._pending:
            need = BLOCK - len(self._pending)
            self._pending += view[:need]
            view = view[need:]
            if len(self._pending) < BLOCK:
                return
            self._leaves.append(sha(self._pending).digest())
            self._pending.clear()
        whole = len(view) - len(view) % BLOCK
        leaves = self._leaves
        for off in range(0, whole, BLOCK):
            leaves.append(sha(view[off:off + BLOCK]).digest())
        if whole < len(view):
            self._pending += view[whole:]

    def root_hash(self) -> bytes:
        level = list(self._leaves)
        if self._pending:
            level.append(hashlib.sha256(bytes(self._pending) + _ZERO_BLOCK[len(self._pending):]).digest())
        if not level:
            return bytes(HASH_SIZE)
        while len(level) > 1:
            blob = b"".join(level)
            level = []
            for off in range(0, len(blob), BLOCK):
                block = blob[off:off + BLOCK]
                level.append(hashlib.sha256(block + _ZERO_BLOCK[len(block):]).digest())
        return level[0]

    def digest(self) -> bytes:
        descriptor = struct.pack("<BBBBIQ", 1, ALGORITHM_SHA256, 12, 0, 0, self.size)
        descriptor += self.root_hash().ljust(64, b"\0") + bytes(32) + bytes(144)
        return hashlib.sha256(descriptor).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def digest_bytes(data: bytes) -> str:
    h = VerityHasher()
    h.update(data)
    return h.hexdigest()


def digest_fd(fd: int, chunk: int = 1 << 20) -> tuple[str, int]:
    """(fs-verity hex digest, length) of everything readable from fd, from offset 0."""
    h = VerityHasher()
    offset = 0
    while data := os.pread(fd, chunk, offset):
        h.update(data)
        offset += len(data)
    return h.hexdigest(), offset


def is_digest(text: str) -> bool:
    return len(text) == 2 * HASH_SIZE and all(c in "0123456789abcdef" for c in text)
