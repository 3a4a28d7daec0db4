"""OpenPGP signing with gpg and verification with gpgv.

Signing uses either a key the user's gpg already holds (--key KEYID) or an
exported secret key file (--key-file), imported into a throwaway GNUPGHOME for
each run so the repository never stores secret material. Verification always
goes through gpgv against one explicit keyring, exactly like apt does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core import gpgv
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError

DIGEST = "SHA512"  # apt refuses SHA1 signatures; SHA512 is what Debian uses.


class SigningKeyError(ImageFactoryError):
    """The signing key is missing or unusable."""

    exit_code = 1


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise EnvironmentProblem(f"{tool} not found; install the package providing it")
    return path


def _run(args: list[str], env: dict[str, str], what: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(args, input=stdin if stdin is not None else b"", capture_output=True, env=env)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SigningKeyError(f"{what} failed: {detail[-1] if detail else 'gpg exit ' + str(proc.returncode)}")
    return proc.stdout


@contextlib.contextmanager
def temp_gnupghome() -> Iterator[Path]:
    """A private GNUPGHOME (short path: gpg-agent sockets must fit in 108 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="if-gpg-", dir="/tmp"))
    home.chmod(0o700)
    try:
        yield home
    finally:
        if shutil.which("gpgconf"):
            subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
                           capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _secret_fingerprint(env: dict[str, str], key: str | None) -> str:
    """The fingerprint of the (single, or named) secret signing key."""
    args = [_need("gpg"), "--batch", "--with-colons", "--list-secret-keys"]
    if key:
        args.append(key)
    proc = subprocess.run(args, capture_output=True, env=env)
    fprs: list[str] = []
    last = ""
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            last = "sec"
        elif fields[0] == "ssb":
            last = "ssb"
        elif fields[0] == "fpr" and last == "sec":
            fprs.append(fields[9])
            last = ""
    if proc.returncode != 0 or not fprs:
        where = f"key {key!r}" if key else "the key file"
        raise SigningKeyError(f"no secret signing key found for {where} (gpg has no such secret key)")
    if len(fprs) > 1:
        raise SigningKeyError(f"{key or 'the key file'} matches {len(fprs)} secret keys; give a full fingerprint")
    return fprs[0]


@dataclass
class Signer:
    """Signs files with one key; use as a context manager (key files need a temp home)."""

    key_id: str | None = None
    key_file: Path | None = None
    _home: Path | None = None
    _stack: contextlib.ExitStack | None = None
    fingerprint: str = ""

    def __enter__(self) -> Signer:
        _need("gpg")
        self._stack = contextlib.ExitStack()
        if self.key_file is not None:
            if not self.key_file.is_file():
                raise SigningKeyError(f"key file {self.key_file} does not exist")
            self._home = self._stack.enter_context(temp_gnupghome())
            _run([_need("gpg"), "--batch", "--import", str(self.key_file)], self.env, f"importing {self.key_file}")
            self.fingerprint = _secret_fingerprint(self.env, None)
        elif self.key_id:
            self.fingerprint = _secret_fingerprint(self.env, self.key_id)
        else:
            raise SigningKeyError("no signing key configured; "
                                  "run `imagefactory repo init --key KEYID | --key-file FILE`")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._home is not None:
            env["GNUPGHOME"] = str(self._home)
        return env

    @property
    def gnupghome(self) -> str | None:
        return str(self._home) if self._home else os.environ.get("GNUPGHOME")

    def _sign(self, mode: str, data: bytes) -> bytes:
        args = [_need("gpg"), "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                "--digest-algo", DIGEST, "--local-user", self.fingerprint + "!", "--armor", mode]
        return _run(args, self.env, "signing", stdin=data)

    def clearsign(self, data: bytes) -> bytes:
        return self._sign("--clearsign", data)

    def detach_sign(self, data: bytes) -> bytes:
        return self._sign("--detach-sign", data)

    def public_key(self, armor: bool = False) -> bytes:
        """The public key; the binary form is usable directly as a gpgv/apt signed-by keyring."""
        args = [_need("gpg"), "--batch", "--export", *(["--armor"] if armor else []), self.fingerprint]
        return _run(args, self.env, "exporting the public key")

    def sign_rpms(self, paths: list[Path]) -> None:
        """Add OpenPGP header signatures in place (dnf gpgcheck, rpmkeys --checksig); one rpmsign run."""
        if not paths:
            return
        # rpm's default %__gpg is gpg2, which Debian does not ship: name the gpg we use.
        args = [_need("rpmsign"), "--define", f"__gpg {_need('gpg')}", "--define", f"_gpg_name {self.fingerprint}",
                "--define", "_gpg_sign_cmd_extra_args --batch --pinentry-mode loopback --passphrase ''"]
        if self.gnupghome:
            args += ["--define", f"_gpg_path {self.gnupghome}"]
        _run(args + ["--addsign", *map(str, paths)], self.env, f"signing {len(paths)} RPM(s)")


def verify_detached(keyring: Path, signature: Path, data: Path) -> None:
    """Raise VerificationError unless signature is a good signature of data by keyring."""
    gpgv.verify_detached(data.read_bytes(), signature.read_bytes(), keyring,
                         f"bad signature {signature.name} for {data.name}")


def verify_clearsigned(keyring: Path, signed: Path) -> bytes:
    """Return only the signed text of a clearsigned file (never trust text around it)."""
    return gpgv.verify_clearsigned(signed.read_bytes(), keyring, f"bad signature on {signed.name}")
