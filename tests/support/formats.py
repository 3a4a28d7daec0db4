"""A small real guest tree (static busybox) written in every format, plus tree comparison.

The tree has what trips format writers: hard links, a setuid binary, a sticky dir, a device node,
an xattr, a symlink, non-root owners, a file newer than the snapshot epoch.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from imagefactory.build.formats import Target, write_all
from imagefactory.build.image import walk_sorted, write_image
from tests.support import need_tool

EPOCH = 1793347681  # 2026-10-30 08:08:01 UTC
ALL = ("squashfs", "incus", "incus-unified", "lxc", "oci")


def busybox_tree(root: Path) -> Path:
    need_tool("busybox")
    for d in ("bin", "etc", "dev", "tmp", "root", "home/u", "usr/bin", "var/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "cat", "ls", "echo", "hostname", "id", "stat"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc/debian_version").write_text("forky/sid\n")
    (root / "etc/hostname").write_text("guest\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nu:x:1000:\n")
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    (root / "home/u/notes").write_text("mine\n")
    os.link(root / "home/u/notes", root / "home/u/notes.link")
    os.chown(root / "home/u", 1000, 1000)
    os.chown(root / "home/u/notes", 1000, 1000)
    (root / "usr/bin/su-ish").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr/bin/su-ish", 0o4755)
    os.setxattr(root / "usr/bin/su-ish", "user.imagefactory", b"x")
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.utime(root / "var/lib", (EPOCH + 86400, EPOCH + 86400))  # newer than the snapshot: clamped
    return root


def target(rootfs: Path, out: Path, name: str = "debian-sid", epoch: int = EPOCH) -> Target:
    return Target(rootfs=rootfs, out_dir=out, name=name, epoch=epoch, distro="debian", suite="sid",
                  architecture="amd64", variant="minbase")


def formats_image(rootfs: Path, out: Path, name: str = "debian-sid", epoch: int = EPOCH,
                  formats: tuple[str, ...] = ALL) -> Path:
    """<name>.tar.zst + every format + a manifest listing them, as `imagefactory build` writes them."""
    out.mkdir(parents=True, exist_ok=True)
    image = out / f"{name}.tar.zst"
    sha, size, stats = write_image(rootfs, image, epoch)
    records = write_all(target(rootfs, out, name, epoch), formats)
    manifest = {"schema": 1, "name": name, "family": "debian", "distro": "debian", "suite": "sid",
                "architecture": "amd64", "variant": "minbase",
                "snapshot": {"date": "", "epoch": epoch, "mirror": "http://mirror.invalid/debian"},
                "packages": [], "files": stats.files, "apparent_size": stats.apparent_size,
                "disk_usage": stats.disk_usage, "image": {"file": image.name, "sha256": sha, "size": size},
                "artifacts": records, "build_seconds": 0.1, "imagefactory": "0.1.0"}
    (out / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=1))
    return image


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content or link target or rdev, hard-link group) for comparison."""
    out: dict[str, tuple] = {}
    inodes: dict[tuple[int, int], str] = {}
    for rel, st in walk_sorted(root):
        path = os.path.join(os.fsencode(root), rel)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                detail: object = f.read()
            link = inodes.setdefault((st.st_dev, st.st_ino), os.fsdecode(rel)) if st.st_nlink > 1 else ""
        elif stat.S_ISLNK(st.st_mode):
            detail, link = os.readlink(path), ""
        else:
            detail, link = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None, ""
        out[os.fsdecode(rel)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, link)
    return out


def throwaway_ca(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, made with openssl; trusted by no one
    but the test that passes the CA to its client."""
    need_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def ossl(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", ca_key,
         "-out", ca, "-days", "2", "-subj", "/CN=imagefactory test CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1")
    ossl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext)
    return ca, cert, key


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_https(directory: Path, cert: Path, key: Path) -> Iterator[str]:
    """Serve directory over HTTPS on 127.0.0.1 (a free port); yields `127.0.0.1:PORT`."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def distrobuilder(tools_root: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    """Run distrobuilder from the tools root with `work` at /work (its cwd).

    distrobuilder wants `/` to be a mount point and bind-mounts the tools root's /etc/resolv.conf;
    an overlay over the (shared, cached) tools root gives both without changing it, and pivot_root
    makes the overlay `/`. All mounts live in a private namespace and vanish with it.
    """
    scratch = work.parent / f".{work.name}.overlay"
    for d in ("u", "w", "m"):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    m = scratch / "m"
    script = "\n".join([
        "set -e",
        f"mount -t overlay overlay -o lowerdir={tools_root},upperdir={scratch / 'u'},workdir={scratch / 'w'} {m}",
        f"touch {m}/etc/resolv.conf && mkdir -p {m}/work {m}/oldroot && mount --bind {work} {m}/work",
        f"cd {m} && pivot_root . oldroot && mount -t proc proc /proc && umount -l /oldroot",
        "cd /work && exec distrobuilder \"$@\"",
    ])
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args],
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
