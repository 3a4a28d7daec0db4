"""A real, signed, local Debian-style archive for tests.

Packages are real .debs built with dpkg-deb from real binaries: a static
busybox as the base userland, the host's dpkg (with the shared libraries it
links) as the guest's package manager, and small packages that exercise
the resolver (alternatives, virtual packages, versioned Provides, several
versions) and maintainer scripts. The Release is signed with a throwaway
key, indices are offered by-hash, and the whole tree can be served over
HTTP from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import lzma
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

ARCH = "amd64"
BUSYBOX_APPLETS = ("sh", "rm", "cat", "ls", "mkdir", "ln", "echo", "cp", "mv", "diff", "sed", "grep",
                   "chmod", "touch", "test", "true", "false", "env", "id", "readlink", "dirname", "head")


@dataclass
class Deb:
    name: str
    version: str = "1.0"
    arch: str = ARCH
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes | Path] = field(default_factory=dict)  # guest path -> content or host file
    links: dict[str, str] = field(default_factory=dict)  # guest path -> symlink target
    scripts: dict[str, str] = field(default_factory=dict)  # postinst, preinst, ...
    conffiles: tuple[str, ...] = ()
    compress: str = "gzip"


def build_deb(deb: Deb, outdir: Path) -> Path:
    """dpkg-deb --build a package tree; returns the .deb path."""
    tree = outdir / f".tree-{deb.name}-{deb.version}"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    for path, content in deb.files.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, target)
        else:
            target.write_bytes(content)
            target.chmod(0o755 if "/bin/" in path else 0o644)
    for path, dest in deb.links.items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(dest)
    control = {"Package": deb.name, "Version": deb.version, "Architecture": deb.arch,
               "Maintainer": "Test <t@example.invalid>", "Description": f"test package {deb.name}"}
    control.update(deb.fields)
    (tree / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for name, body in deb.scripts.items():
        p = tree / "DEBIAN" / name
        p.write_text(body)
        p.chmod(0o755)
    if deb.conffiles:
        (tree / "DEBIAN/conffiles").write_text("".join(c + "\n" for c in deb.conffiles))
    out = outdir / f"{deb.name}_{deb.version}_{deb.arch}.deb"
    subprocess.run(["dpkg-deb", f"-Z{deb.compress}", "--root-owner-group", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


def _host_libs(binaries: list[str]) -> dict[str, Path]:
    """The shared libraries (and loader) the given host binaries need, at merged-/usr guest paths."""
    out = subprocess.run(["ldd", *binaries], capture_output=True, text=True).stdout  # scripts: "not a dynamic executable"
    files: dict[str, Path] = {}
    for line in out.splitlines():
        for tok in line.split():
            if tok.startswith("/") and os.path.exists(tok):
                real = Path(os.path.realpath(tok))
                name = Path(tok).name
                guest = "/usr/lib64/" + name if "ld-linux" in name else "/usr/lib/x86_64-linux-gnu/" + name
                files[guest] = real
    return files


def base_packages() -> list[Deb]:
    """The essential set: busybox userland, a libc-like package, the host's dpkg."""
    busybox = Path("/bin/busybox")
    dpkg_bins = ["/usr/bin/dpkg", "/usr/bin/dpkg-deb", "/usr/bin/dpkg-query", "/usr/bin/dpkg-split",
                 "/usr/bin/dpkg-divert", "/usr/bin/dpkg-trigger", "/usr/bin/update-alternatives",
                 "/usr/bin/dpkg-statoverride", "/usr/bin/dpkg-maintscript-helper",
                 "/usr/bin/tar"]  # dpkg-deb runs GNU tar to unpack control areas
    dpkg_files: dict[str, bytes | Path] = {b: Path(b) for b in dpkg_bins if os.path.exists(b)}
    dpkg_files["/usr/sbin/start-stop-daemon"] = Path(os.path.realpath("/sbin/start-stop-daemon"))
    dpkg_files["/etc/dpkg/dpkg.cfg"] = b"# test dpkg.cfg\n"
    return [
        Deb("base-files", "13", fields={"Essential": "yes", "Priority": "required"},
            files={"/etc/debian_version": b"test\n", "/etc/os-release": b"ID=testdeb\n"}),
        Deb("busybox-base", "1.36", fields={"Essential": "yes", "Priority": "required", "Provides": "awk"},
            files={"/usr/bin/busybox": busybox, "/usr/sbin/ldconfig": Path(os.path.realpath("/sbin/ldconfig"))},
            links={f"/usr/bin/{a}": "busybox" for a in BUSYBOX_APPLETS + ("awk",)}),
        Deb("libc-test", "2.36-1", fields={"Priority": "required", "Multi-Arch": "same"},
            files=dict(_host_libs(dpkg_bins))),
        Deb("dpkg", "1.22.0", fields={"Essential": "yes", "Priority": "required",
                                     "Pre-Depends": "libc-test (>= 2.30)", "Depends": "busybox-base"},
            files=dpkg_files),
    ]


def extra_packages() -> list[Deb]:
    """Packages that exercise the resolver and maintainer scripts."""
    return [
        # Two versions: the resolver must take 2.0; hello needs >= 1.5.
        Deb("libgreet1", "1.0-1", fields={"Priority": "optional"}, files={"/usr/lib/greet/v": b"1.0\n"}),
        Deb("libgreet1", "2.0-1", fields={"Priority": "optional", "Provides": "libgreet-abi (= 2)"},
            files={"/usr/lib/greet/v": b"2.0\n"}),
        # Virtual: hello needs 'greeting-data', provided by two packages; the required one wins.
        Deb("greeting-data-en", "1", fields={"Priority": "optional", "Provides": "greeting-data"},
            files={"/usr/share/greet/en": b"hello\n"}),
        Deb("greeting-data-fr", "1", fields={"Priority": "required", "Provides": "greeting-data"},
            files={"/usr/share/greet/fr": b"bonjour\n"}),
        Deb("hello", "2.10-3", fields={
            "Priority": "optional",
            "Depends": "libgreet1 (>= 1.5), libgreet-abi (= 2), nonexistent-pkg | greeting-data, awk",
        }, files={"/usr/bin/hello": b"#!/bin/sh\necho hello from the guest\n",
                  "/etc/hello.conf": b"greeting=hi\n"},
            conffiles=("/etc/hello.conf",),
            scripts={"postinst": "#!/bin/sh\nset -e\necho configured > /var/lib/hello-configured\n"}),
        Deb("broken", "1", fields={"Priority": "optional", "Depends": "hello, missing-lib (>= 3)"}),
    ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Archive:
    root: Path
    keyring: Path
    gnupghome: Path
    suite: str = "testing"

    def resign(self, valid_until: datetime | None = None, key_home: Path | None = None) -> None:
        write_release(self, valid_until, key_home)


def make_key(home: Path) -> Path:
    """A throwaway signing key; returns the exported public keyring."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Test Archive <a@example.invalid>",
                    "ed25519", "sign", "never"], check=True, capture_output=True, env=env)
    keyring = home / "archive-keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--export"], check=True, capture_output=True, env=env).stdout)
    return keyring


def write_release(archive: Archive, valid_until: datetime | None = None, key_home: Path | None = None,
                  fields: tuple[str, ...] = ()) -> None:
    dists = archive.root / "dists" / archive.suite
    files = sorted(p for p in dists.rglob("*") if p.is_file() and "by-hash" not in p.parts
                   and p.name not in ("Release", "InRelease"))
    date = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
    lines = ["Origin: Test", "Label: Test", f"Suite: {archive.suite}", f"Codename: {archive.suite}",
             f"Date: {format_datetime(date, usegmt=True).replace('GMT', 'UTC')}"]
    if valid_until:
        lines.append(f"Valid-Until: {format_datetime(valid_until, usegmt=True).replace('GMT', 'UTC')}")
    lines += ["Acquire-By-Hash: yes", f"Architectures: {ARCH}", "Components: main", *fields, "SHA256:"]
    for p in files:
        lines.append(f" {_sha256(p)} {p.stat().st_size:>8} {p.relative_to(dists)}")
        byhash = p.parent / "by-hash" / "SHA256" / _sha256(p)
        byhash.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, byhash)
    (dists / "Release").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, GNUPGHOME=str(key_home or archive.gnupghome))
    (dists / "InRelease").unlink(missing_ok=True)
    subprocess.run(["gpg", "--batch", "--yes", "--clearsign", "-o", str(dists / "InRelease"), str(dists / "Release")],
                   check=True, capture_output=True, env=env)


def write_packages(archive: Archive, split_all: bool = False) -> None:
    """binary-amd64 indices of the whole pool; with split_all also binary-all ones holding just the
    Architecture: all stanzas (as Debian does: No-Support-for-Architecture-all: Packages)."""
    text = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=archive.root,
                          check=True, capture_output=True).stdout
    arch_all = b"".join(s + b"\n\n" for s in text.split(b"\n\n") if b"\nArchitecture: all\n" in s + b"\n")
    for arch, body in ((ARCH, text), ("all", arch_all)):
        binary = archive.root / "dists" / archive.suite / "main" / f"binary-{arch}"
        if binary.exists():
            shutil.rmtree(binary)
        if arch == "all" and not split_all:
            continue
        binary.mkdir(parents=True)
        (binary / "Packages.xz").write_bytes(lzma.compress(body))
        (binary / "Packages.gz").write_bytes(gzip.compress(body, mtime=0))


def make_archive(root: Path, debs: list[Deb] | None = None) -> Archive:
    """Build the archive tree under root: pool/, dists/testing/, signed InRelease."""
    pool = root / "pool" / "main"
    pool.mkdir(parents=True)
    for deb in debs if debs is not None else base_packages() + extra_packages():
        build_deb(deb, pool)
    gnupghome = root.parent / (root.name + "-gnupg")
    archive = Archive(root, make_key(gnupghome), gnupghome)
    write_packages(archive)
    write_release(archive)
    return archive


def make_suite(root: Path, suite: str, debs: list[Deb], signer: Archive) -> Archive:
    """Another suite (e.g. testing-security) under root, signed by signer's key (one keyring for all)."""
    pool = root / "pool" / "main"
    pool.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        build_deb(deb, pool)
    archive = Archive(root, signer.keyring, signer.gnupghome, suite)
    write_packages(archive)
    write_release(archive)
    return archive


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve directory on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
