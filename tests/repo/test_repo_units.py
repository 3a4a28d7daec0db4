"""Pure parts of the repo area: readers, index text, planning, retention."""

from __future__ import annotations

import subprocess

import pytest

from imagefactory.build.debian.debfile import ar_members
from imagefactory.core.errors import UnsafeInput, VerificationError
from imagefactory.core.gpgv import dearmor
from repo import apt, streams
from repo.artifacts import read_deb, read_image, read_rpm
from repo.layout import retained
from repo.publish import ConflictError, plan_changes
from tests.support.repo import make_deb, make_image, make_rpm


def test_read_deb_matches_dpkg_deb(tmp_path):
    deb = make_deb(tmp_path, name="pkg-a", version="2:1.5-3", arch="amd64")
    record = read_deb(deb)
    assert (record.package, record.version, record.architecture) == ("pkg-a", "2:1.5-3", "amd64")
    expected = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert record.control + "\n" == expected
    assert set(ar_members(deb.read_bytes(), deb.name)) >= {"debian-binary", "control.tar.xz", "data.tar.xz"}
    assert apt.pool_path("main", "pkg-a", "2:1.5-3", "amd64") == "pool/main/pkg-a/pkg-a_1.5-3_amd64.deb"


def test_read_rpm_identity(tmp_path):
    record = read_rpm(make_rpm(tmp_path, name="kern-if", version="6.1.0", release="2"))
    assert record.key == "kern-if-6.1.0-2.noarch" and record.epoch is None


def test_image_manifest_must_match_and_names_must_be_safe(tmp_path):
    image = make_image(tmp_path)
    assert read_image(image).version == "20261030_080801"
    assert read_image(image, version="v2").key == "testimg@v2"
    with pytest.raises(UnsafeInput):
        read_image(image, version="../../etc")
    image.write_bytes(image.read_bytes() + b"x")
    with pytest.raises(VerificationError, match="does not match its manifest"):
        read_image(image)


def test_release_round_trip():
    files = [apt.IndexFile("main/binary-amd64/Packages", b"Package: a\n"), apt.IndexFile("main/binary-amd64/Packages.xz", b"\xfd7zXZ")]
    text = apt.release_text(origin="o", label="l", suite="stable", codename="stable", architectures=["amd64"],
                            components=["main"], files=files, date=0)
    fields, sums = apt.parse_release(text)
    assert fields["Acquire-By-Hash"] == "yes" and fields["Date"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert sums["main/binary-amd64/Packages"] == (files[0].sha256, 11)


def test_packages_text_puts_arch_all_everywhere():
    entries = [apt.PackageEntry("Package: a\nVersion: 1", "pool/a.deb", 1, "m", "s", "all"),
               apt.PackageEntry("Package: b\nVersion: 1", "pool/b.deb", 1, "m", "s", "arm64")]
    assert "Package: a" in apt.packages_text(entries, "amd64") and "Package: b" not in apt.packages_text(entries, "amd64")
    parsed = apt.parse_packages(apt.packages_text(entries, "arm64"))
    assert [p["package"] for p in parsed] == ["a", "b"] and parsed[0]["filename"] == "pool/a.deb"


def test_sha256sums_parsing_rejects_escapes():
    text = streams.sha256sums_text({"images/x/1/x.tar.zst": "a" * 64, "images/x/2/x.tar.zst": "b" * 64})
    sums = streams.parse_sha256sums(text)
    assert streams.latest_version(sums, "x") == "2" and streams.latest_version(sums, "y") is None
    for bad in (f"{'a' * 64}  ../etc/passwd\n", f"{'a' * 64}  /etc/passwd\n", "abc  x\n"):
        with pytest.raises(ValueError):
            streams.parse_sha256sums(bad)


def test_retention_keeps_newest_and_recent():
    published = {1: 0.0, 2: 100.0, 3: 200.0, 4: 1000.0}
    assert retained(published, keep=2, grace=50, now=1010) == {3, 4}
    assert retained(published, keep=1, grace=50, now=1010) == {3, 4}  # 3 superseded 10 s ago
    assert retained(published, keep=1, grace=3600, now=1010) == {1, 2, 3, 4}
    assert retained(published, keep=1, grace=0, now=1010) == {4}


def test_plan_changes(tmp_path):
    one = read_deb(make_deb(tmp_path / "1", payload=b"one"))
    same = read_deb(make_deb(tmp_path / "1b", payload=b"one"))
    other = read_deb(make_deb(tmp_path / "2", payload=b"two"))
    new = read_deb(make_deb(tmp_path / "3", name="new-pkg"))
    state = {"debs": {one.key: {"source_sha256": one.sha256}}, "rpms": {}, "images": {}, "extras": {}}
    plan = plan_changes(state, [same, new], replace=False)
    assert plan.unchanged == [same] and plan.add == [new] and plan.replace == []
    with pytest.raises(ConflictError, match="--replace"):
        plan_changes(state, [other], replace=False)
    assert plan_changes(state, [other], replace=True).replace == [other]
    with pytest.raises(ConflictError, match="twice"):
        plan_changes({"debs": {}, "rpms": {}, "images": {}, "extras": {}}, [one, other], replace=True)


def test_dearmor_matches_gpg_binary_export(gpg_key):
    armored = subprocess.run(["gpg", "--batch", "--armor", "--export"], env=gpg_key["env"], capture_output=True,
                             check=True).stdout
    assert dearmor(armored) == gpg_key["public"].read_bytes()
    assert dearmor(gpg_key["public"].read_bytes()) == gpg_key["public"].read_bytes()
