"""The composefs object store: every distinct file content once, named by its fs-verity digest.

    S/.imagefactory-store   JSON {"format": 1, "hash": "fsverity-sha256", "mode": "composefs"}
    S/.lock                 flock: shared while a seed or conversion adds objects and commits
                            its guest, exclusive for --gc (so gc never sees objects a guest is
                            about to reference)
    S/objects/ab/cdef...    objects (mkcomposefs --digest-store layout); the data-only lower
                            layer of every guest's overlay; dirs 0700, files 0644, root-owned
    S/tmp/                  objects being written; emptied by the next exclusive holder
    S/guests/ID.json        one per composefs guest: {"root": ..., "state": ...} (ID = XXH3-64
                            of the guest root's absolute path)
    S/images/SHA256.dump    the listing of an image seeded before: the next guest of that image
                            is made from it without reading the image's content again
    S/images/SHA256.cfs     the EROFS metadata image made from that listing (guests of the image
                            hard-link it: it is mounted read-only)

An object is written to tmp/, flushed, and renamed to its name only if that name is still
free, so an object either does not exist or holds exactly the content its name says.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import xxhash

from imagefactory.core.atomic import syncfs, write_text
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from unify.composefs.dump import object_path
from unify.composefs.verity import digest_fd, is_digest

FORMAT = 1
HASH_NAME = "fsverity-sha256"
MODE = "composefs"
MARKER = ".imagefactory-store"
CHUNK = 1 << 20


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.guests = self.root / "guests"
        self.images = self.root / "images"
        self.written = 0  # objects this process added
        self.written_bytes = 0
        self._verity: bool | None = None

    # -- identity -----------------------------------------------------------------------------
    def info(self) -> dict:
        try:
            return json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError):
            return {}

    def is_composefs(self) -> bool:
        return self.info().get("mode") == MODE

    def create(self) -> None:
        """Make the store (idempotent); refuse a store of another unify mode."""
        info = self.info()
        if info and info.get("mode") not in (None, MODE):
            raise ImageFactoryError(
                f"store {self.root} was created in {info.get('mode')} mode; a composefs store must be "
                "a store of its own (give another --store)")
        for d in (self.root, self.objects, self.tmp, self.guests, self.images):
            d.mkdir(mode=0o700, parents=d == self.root, exist_ok=True)
        if info.get("mode") != MODE:
            from unify.composefs.support import try_verity

            verity = os.geteuid() == 0 and try_verity(self.tmp)
            write_text(self.root / MARKER, json.dumps({"format": FORMAT, "hash": HASH_NAME, "mode": MODE,
                                                       "verity": verity}) + "\n")

    @property
    def verity(self) -> bool:
        """Objects get fs-verity and guests mount with verity=require (decided when the store was
        made, by trying FS_IOC_ENABLE_VERITY on its filesystem)."""
        return bool(self.info().get("verity"))

    def open_existing(self) -> ObjectStore:
        if not self.is_composefs():
            raise ImageFactoryError(f"{self.root} is not a composefs store (no {MARKER} with mode composefs)")
        return self

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Iterator[None]:
        """Shared for adders (seed, convert), exclusive for gc; waits for the other kind."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- objects ------------------------------------------------------------------------------
    def path_of(self, digest: str) -> Path:
        return self.objects / object_path(digest)

    def has(self, digest: str) -> bool:
        return os.path.lexists(self.path_of(digest))

    def new_tmp(self) -> tuple[int, Path]:
        path = self.tmp / f"obj-{os.getpid()}-{secrets.token_hex(6)}"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), path

    def publish(self, tmp: Path, digest: str) -> None:
        final = self.path_of(digest)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        if self._verity is None:
            self._verity = self.verity
        if self._verity and not self.has(digest):
            from unify.composefs.support import enable_verity

            try:
                enable_verity(tmp)
            except OSError as exc:
                os.unlink(tmp)
                raise EnvironmentProblem(f"enabling fs-verity on a new object in {self.root}: {exc.strerror}") from None
        try:
            os.link(tmp, final)  # never replaces an object another writer published first
            self.written += 1
            self.written_bytes += os.stat(final).st_size
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    def add_bytes(self, data: bytes | memoryview, digest: str) -> None:
        """Store content whose digest the caller computed from these very bytes."""
        if self.has(digest):
            return
        fd, tmp = self.new_tmp()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.publish(tmp, digest)

    def add_fd(self, src: int) -> tuple[str, int]:
        """Store an open file's content unless the store has it: hash it, and only if the digest is
        new copy it (a reflink where the filesystem can) and hash the copy again, so an object
        always holds the bytes its name says even if the source changed meanwhile."""
        digest, size = digest_fd(src)
        if self.has(digest):
            return digest, size
        fd, tmp = self.new_tmp()
        try:
            copied = 0
            with contextlib.suppress(OSError):
                while copied < size and (n := os.copy_file_range(src, fd, size - copied, copied, copied)):
                    copied += n
            if copied < size:  # copy_file_range refused (e.g. across some filesystems): plain copy
                os.ftruncate(fd, 0)
                copied = 0
                while data := os.pread(src, CHUNK, copied):
                    os.pwrite(fd, data, copied)
                    copied += len(data)
            rfd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                again, _ = digest_fd(rfd)
            finally:
                os.close(rfd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if again != digest:
            os.unlink(tmp)
            raise ImageFactoryError("a file changed while it was copied into the store; stop the guest first")
        self.publish(tmp, digest)
        return digest, size

    def digests(self) -> Iterator[str]:
        if not self.objects.is_dir():
            return
        for sub in sorted(os.scandir(self.objects), key=lambda e: e.name):
            if len(sub.name) == 2 and sub.is_dir(follow_symlinks=False):
                for e in sorted(os.scandir(sub.path), key=lambda e: e.name):
                    if is_digest(sub.name + e.name):
                        yield sub.name + e.name

    def clean_tmp(self) -> int:
        removed = 0
        if self.tmp.is_dir():
            for e in os.scandir(self.tmp):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)
                    removed += 1
        return removed

    def clean_tmp_of_dead(self) -> int:
        """Remove half-written objects of writers that are gone (others may be writing now)."""
        removed = 0
        if self.tmp.is_dir():
            for e in os.scandir(self.tmp):
                pid = e.name.split("-")[1] if e.name.count("-") >= 2 else ""
                if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                        removed += 1
        return removed

    def sync(self) -> None:
        """Objects on disk before any guest depends on them (one syncfs, not one fsync per file)."""
        syncfs(self.objects)

    # -- guests and image listings --------------------------------------------------------------
    @staticmethod
    def guest_id(root: Path) -> str:
        return xxhash.xxh3_64_hexdigest(os.fsencode(os.path.abspath(root)))

    def register(self, root: Path, state: Path) -> None:
        doc = {"format": FORMAT, "root": os.path.abspath(root), "state": os.path.abspath(state)}
        write_text(self.guests / f"{self.guest_id(root)}.json", json.dumps(doc) + "\n", mode=0o600)

    def unregister(self, root: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.guests / f"{self.guest_id(root)}.json").unlink()

    def registered(self) -> list[dict]:
        out = []
        if self.guests.is_dir():
            for p in sorted(self.guests.glob("*.json")):
                with contextlib.suppress(OSError, ValueError):
                    doc = json.loads(p.read_text())
                    if doc.get("format") == FORMAT and "state" in doc:
                        out.append({**doc, "file": str(p)})
        return out

    def image_listing(self, image_sha256: str) -> Path:
        return self.images / f"{image_sha256}.dump"
