"""Shared builders for the repo tests: a throwaway gpg key and real .deb/.rpm/image inputs.

Named test_repo_* so it lives in the repo area; it holds fixtures, not tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import zstandard

from imagefactory.cli import main
from tests.support import need_tool

DEB_EPOCH = 1767225600  # 2026-01-01: every test .deb carries this timestamp


def make_deb(directory: Path, name: str = "hello-if", version: str = "1.0-1", arch: str = "all",
             payload: bytes = b"hi\n") -> Path:
    """A real .deb built by dpkg-deb (payload varies the content for conflict tests)."""
    need_tool("dpkg-deb")
    root = directory / f"build-{name}-{version}-{hashlib.sha256(payload).hexdigest()[:8]}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "data").write_bytes(payload)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: T <t@example.invalid>\n"
        f"Description: imagefactory test package\n A longer description.\n .\n Second paragraph.\n")
    out = directory / f"{name}_{version}_{arch}.deb"
    # Reproducible: the same arguments give the same bytes whenever they are built (dpkg-deb stamps the
    # ar members and clamps the tar mtimes with SOURCE_DATE_EPOCH; the tree's own mtimes are fixed here),
    # so tests comparing two builds of one package never depend on crossing a second boundary.
    for path in (root, *root.rglob("*")):
        os.utime(path, (DEB_EPOCH, DEB_EPOCH), follow_symlinks=False)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)], check=True,
                   capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(DEB_EPOCH)})
    return out


def make_rpm(directory: Path, name: str = "hello-if", version: str = "1.0", release: str = "1") -> Path:
    """A real noarch RPM built by rpmbuild."""
    need_tool("rpmbuild")
    top = directory / f"rpmtop-{name}-{version}"
    spec = directory / f"{name}.spec"
    spec.write_text(f"""Name: {name}
Version: {version}
Release: {release}
Summary: imagefactory test package
License: MIT
BuildArch: noarch
%description
test
%install
mkdir -p %{{buildroot}}/usr/share/{name}
echo {version} > %{{buildroot}}/usr/share/{name}/data
%files
/usr/share/{name}/data
""")
    subprocess.run(["rpmbuild", "--quiet", "-bb", "--define", f"_topdir {top}", str(spec)], check=True,
                   capture_output=True)
    return next((top / "RPMS" / "noarch").glob(f"{name}-{version}-{release}.noarch.rpm"))


def make_image(directory: Path, name: str = "testimg", epoch: int = 1793347681, content: bytes = b"guest\n") -> Path:
    """A small tar.zst guest image and a schema-1 manifest whose image hash matches it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    blob = zstandard.ZstdCompressor().compress(buf.getvalue())
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / f"{name}.tar.zst"
    image.write_bytes(blob)
    manifest = {"schema": 1, "name": name, "family": "debian", "distro": "debian", "suite": "sid",
                "architecture": "amd64", "variant": "minbase",
                "snapshot": {"date": "", "epoch": epoch, "mirror": "http://mirror.invalid/debian"},
                "packages": [], "files": 1, "apparent_size": len(content), "disk_usage": 4096,
                "image": {"file": image.name, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)},
                "build_seconds": 0.1, "imagefactory": "0.1.0"}
    (directory / f"{name}.manifest.json").write_text(json.dumps(manifest))
    return image


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the imagefactory CLI in-process; return (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def init_repo(capsys, gpg_key: dict, path: Path, *extra: str) -> Path:
    code, out, err = run(capsys, "repo", "init", path, "--key-file", gpg_key["secret"], *extra)
    assert code == 0, err
    return path


def snapshot(repo: Path) -> dict[str, str]:
    """Every file under the repository with its hash: proves 'repository unchanged'."""
    result = {}
    for path in sorted(repo.rglob("*")):
        rel = str(path.relative_to(repo))
        if path.is_symlink():
            result[rel] = "-> " + os.readlink(path)
        elif path.is_file() and rel != ".imagefactory/lock":
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def stop_gpg_agents(directory: Path) -> None:
    """Stop agents that clients (dnf) started in GNUPGHOMEs under directory: leave no processes."""
    for keybox in directory.rglob("pubring.kbx"):  # sockets may live in /run/user, so find the homes
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(keybox.parent)},
                       capture_output=True)


def apt_root(tmp_path: Path, repo: Path) -> list[str]:
    """An apt-get command line bound to a private root whose only source is the repository."""
    need_tool("apt-get", "dpkg")
    root = tmp_path / "aptroot"
    for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d", "etc/apt/sources.list.d",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "var/lib/dpkg/info",
              "var/lib/dpkg/updates", "var/log/apt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by={repo}/current/key.gpg] file:{repo}/current stable main\n")
    return ["apt-get", "-q", "-y", f"-o=Dir={root}", f"-o=Dir::State::status={root}/var/lib/dpkg/status",
            "-o=Debug::NoLocking=1", "-o=APT::Architecture=amd64", "-o=APT::Architectures=amd64",
            f"-o=DPkg::Options::=--root={root}", f"-o=DPkg::Options::=--admindir={root}/var/lib/dpkg",
            f"-o=DPkg::Options::=--log={root}/var/log/dpkg.log", "-o=DPkg::Use-Pty=0",
            "-o=Acquire::Languages=none", "-o=APT::Sandbox::User=root"]


def apt(cmd: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)

