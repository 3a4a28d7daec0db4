"""Build a small signed rpm-md repository with the real tools, for the rpm tests.

rpmbuild makes the packages from the spec files here (the shell is a static
busybox, so scriptlets and `chroot ROOT /bin/sh` really run), rpmsign signs
them with a throwaway key, createrepo_c writes repodata with comps, and gpg
signs repomd.xml the way Fedora does (repomd.xml.asc).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY_UID = "imagefactory rpm test <rpm-test@example.invalid>"


@dataclass(frozen=True)
class TestRepo:
    path: Path  # repository base (holds repodata/)
    key: Path  # armored public key, as /etc/pki/rpm-gpg/RPM-GPG-KEY-*
    gnupghome: Path  # the secret key, to sign altered copies

    @property
    def url(self) -> str:
        return self.path.as_uri() + "/"


def _run(*argv: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")


def make_key(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True)
    _run("gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key", KEY_UID,
         "rsa2048", "sign", "never")


def sign_repomd(repo: Path, home: Path) -> None:
    asc = repo / "repodata/repomd.xml.asc"
    asc.unlink(missing_ok=True)
    _run("gpg", "--homedir", str(home), "--batch", "--yes", "--local-user", KEY_UID, "--armor",
         "--detach-sign", "-o", str(asc), str(repo / "repodata/repomd.xml"))


def build_rpms(work: Path, out: Path, home: Path, builds: list[tuple[str, list[str]]] | None = None) -> None:
    defines = {
        "_topdir": str(work / "rpmbuild"),
        "_rpmdir": str(out),
        "_build_id_links": "none",
        "debug_package": "%{nil}",
        "_binary_payload": "w19.zstdio",  # as Fedora
        "busybox": shutil.which("busybox") or "/bin/busybox",
        "__gpg": shutil.which("gpg") or "/usr/bin/gpg",
        "_gpg_path": str(home),
        "_gpg_name": KEY_UID,
    }
    base = [x for k, v in defines.items() for x in ("--define", f"{k} {v}")]
    builds = builds if builds is not None else [
        ("base.spec", []),
        ("libtoy.spec", ["--define", "ver 1.0"]),
        ("libtoy.spec", ["--define", "ver 1.0^git1"]),
        ("libtoy.spec", ["--define", "ver 2.0", "--target", "i686"]),
        ("oldutils.spec", []),
    ]
    for spec, extra in builds:
        _run("rpmbuild", "-bb", "--quiet", *base, *extra, str(HERE / spec))
    rpms = sorted(str(p) for p in out.rglob("*.rpm"))
    _run("rpmsign", "--addsign", *base, *rpms)


def make_repo(dest: Path, compress: str = "xz") -> TestRepo:
    """Everything under dest: dest/repo (the repository), dest/RPM-GPG-KEY-test, dest/gnupg."""
    home = dest / "gnupg"
    make_key(home)
    repo = dest / "repo"
    build_rpms(dest, repo / "Packages", home)
    _run("createrepo_c", "--quiet", "--general-compress-type", compress, "--groupfile", str(HERE / "comps.xml"),
         str(repo))
    sign_repomd(repo, home)
    key = dest / "RPM-GPG-KEY-test"
    with key.open("w") as f:
        subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", KEY_UID], stdout=f, check=True)
    return TestRepo(repo, key, home)


def make_updates_repo(dest: Path, signer: TestRepo, builds: list[tuple[str, list[str]]]) -> TestRepo:
    """A second repository (like Fedora's `updates`) with the given rebuilds, signed by signer's key."""
    repo = dest / "repo"
    build_rpms(dest, repo / "Packages", signer.gnupghome, builds)
    _run("createrepo_c", "--quiet", str(repo))
    sign_repomd(repo, signer.gnupghome)
    return TestRepo(repo, signer.key, signer.gnupghome)


if __name__ == "__main__":  # build one by hand: python tests/support/rpmdata/makerepo.py DIR
    import sys

    print(make_repo(Path(sys.argv[1])))
    os.sync()
