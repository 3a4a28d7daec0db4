import os
import subprocess
from datetime import UTC, datetime

import pytest

from imagefactory.build.debian.release import check_valid_until, parse_release
from imagefactory.core.errors import VerificationError
from imagefactory.core.gpgv import verify_clearsigned as verify_signed
from tests.support.debarchive import make_key

RELEASE = """Origin: Debian
Suite: unstable
Codename: sid
Date: Fri, 30 Oct 2026 08:08:01 UTC
Valid-Until: Fri, 06 Nov 2026 08:08:01 UTC
Acquire-By-Hash: yes
No-Support-for-Architecture-all: Packages
Architectures: all amd64
Components: main contrib
MD5Sum:
 58bc30204c16e9a8aa57f9362ecc0d03  2262389 contrib/Contents-all
SHA256:
 aa  123 main/binary-amd64/Packages.xz
 bb  456 main/binary-all/Packages.xz
"""


def test_parse_release():
    rel = parse_release(RELEASE)
    assert rel.codename == "sid" and rel.by_hash and rel.arch_all_separate
    assert rel.files["main/binary-amd64/Packages.xz"].size == 123
    assert "contrib/Contents-all" not in rel.files  # MD5 lines are not trusted
    assert rel.date == datetime(2026, 10, 30, 8, 8, 1, tzinfo=UTC)


def test_valid_until():
    rel = parse_release(RELEASE)
    later = datetime(2026, 11, 24, tzinfo=UTC)
    with pytest.raises(VerificationError, match=r"past its Valid-Until \(2026-11-06.*--allow-expired-release"):
        check_valid_until(rel, later, allow_expired=False)
    check_valid_until(rel, later, allow_expired=True)
    check_valid_until(rel, datetime(2026, 11, 1, tzinfo=UTC), allow_expired=False)


def test_release_without_checksums_is_rejected():
    with pytest.raises(VerificationError, match="no SHA256"):
        parse_release("Date: Fri, 30 Oct 2026 08:08:01 UTC\n")


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    keyring = make_key(home)
    other = tmp_path_factory.mktemp("gnupg-other")
    return home, keyring, make_key(other)


def clearsign(home, text: bytes) -> bytes:
    return subprocess.run(["gpg", "--batch", "--clearsign"], input=text, capture_output=True, check=True,
                          env=dict(os.environ, GNUPGHOME=str(home))).stdout


def test_signature_good_bad_and_unknown_key(signer):
    home, keyring, other_keyring = signer
    signed = clearsign(home, RELEASE.encode())
    assert verify_signed(signed, keyring, "InRelease") == RELEASE.encode()
    tampered = signed.replace(b"Codename: sid", b"Codename: xid")
    with pytest.raises(VerificationError, match="BAD signature"):
        verify_signed(tampered, keyring, "InRelease")
    with pytest.raises(VerificationError, match="signed by a key not in"):
        verify_signed(signed, other_keyring, "InRelease")
    with pytest.raises(VerificationError, match="not signed"):
        verify_signed(RELEASE.encode(), keyring, "InRelease")


def test_unsigned_text_around_the_signature_is_ignored(signer):
    home, keyring, _ = signer
    signed = clearsign(home, RELEASE.encode())
    smuggled = b"Suite: evil\n" + signed + b"\nSHA256:\n ff 1 main/evil\n"
    assert b"evil" not in verify_signed(smuggled, keyring, "InRelease")
