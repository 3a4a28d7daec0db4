"""rpm-md metadata against a real repository made by rpmbuild + createrepo_c + gpg."""

from __future__ import annotations

import bz2
import gzip
import io
import shutil
import subprocess
import tracemalloc

import pytest
import zstandard

from imagefactory.build.rpm import comps
from imagefactory.build.rpm.install import check_signatures, file_list
from imagefactory.build.rpm.primary import iter_packages, load_primary, open_decompressed
from imagefactory.build.rpm.repomd import parse_repomd, safe_href
from imagefactory.build.rpm.rpmvercmp import EVR, LESS
from imagefactory.core.errors import UnsafeInput, VerificationError
from imagefactory.core.gpgv import verify_detached
from tests.support import need_tool
from tests.support.rpmdata.makerepo import make_key, make_repo

ARCHES = frozenset({"x86_64", "noarch"})


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    need_tool("rpmbuild", "rpmsign", "createrepo_c", "gpg", "gpgv", "busybox")
    return make_repo(tmp_path_factory.mktemp("rpmrepo"))


def repomd(repo):
    return parse_repomd((repo.path / "repodata/repomd.xml").read_bytes())


def primary_xml(repo) -> bytes:
    f = repomd(repo).files["primary"]
    with open_decompressed(repo.path / f.href, f.href) as s:
        return s.read()


def test_repomd_lists_checksummed_metadata(repo):
    md = repomd(repo)
    assert {"primary", "filelists", "other", "group", "group_xz"} <= set(md.files)
    p = md.files["primary"]
    assert p.checksum_type == "sha256" and p.href.startswith("repodata/") and p.href.endswith("-primary.xml.xz")
    assert p.size == (repo.path / p.href).stat().st_size and md.timestamp > 0


def test_repomd_signature(repo, tmp_path):
    data = (repo.path / "repodata/repomd.xml").read_bytes()
    sig = (repo.path / "repodata/repomd.xml.asc").read_bytes()
    verify_detached(data, sig, repo.key, "repomd.xml")  # armored key file, as Fedora ships them
    with pytest.raises(VerificationError, match="BAD signature"):
        verify_detached(data.replace(b"<revision>", b"<revision>1"), sig, repo.key, "repomd.xml")
    make_key(tmp_path / "other")
    other = tmp_path / "other.asc"
    other.write_bytes(subprocess.run(["gpg", "--homedir", str(tmp_path / "other"), "--armor", "--export"],
                                     capture_output=True, check=True).stdout)
    with pytest.raises(VerificationError, match="signed by a key not in"):
        verify_detached(data, sig, other, "repomd.xml")
    with pytest.raises(VerificationError, match="no signature"):
        verify_detached(data, b"not a signature\n", repo.key, "repomd.xml")


@pytest.mark.parametrize("text,match", [
    (b"<repomd", "malformed XML"),
    (b"<html/>", "not an rpm-md index"),
    (b'<repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="primary"><location href="a"/></data></repomd>',
     "lacks a checksum"),
])
def test_malformed_repomd(text, match):
    with pytest.raises(VerificationError, match=match):
        parse_repomd(text)


@pytest.mark.parametrize("href", ["../../etc/passwd", "/etc/passwd", "http://evil.example/x.rpm", "a/../../b", ""])
def test_locations_must_stay_inside_the_repository(href):
    with pytest.raises(UnsafeInput):
        safe_href(href, "test")


def test_primary_is_parsed_with_deps_files_and_arch_filter(repo):
    f = repomd(repo).files["primary"]
    pkgs = {p.nevra: p for p in load_primary(repo.path / f.href, f.href, ARCHES)}
    assert "libtoy-2.0-1.tc1.i686" not in pkgs  # multilib i686 is not for an x86_64 guest
    assert {"libtoy-1.0-1.tc1.x86_64", "libtoy-1.0^git1-1.tc1.x86_64", "oldutils-1.0-1.tc1.noarch"} <= set(pkgs)
    tu = pkgs["toyutils-1:2.0-1.tc1.x86_64"]
    assert tu.evr == EVR("1", "2.0", "1.tc1") and tu.href == "Packages/x86_64/toyutils-2.0-1.tc1.x86_64.rpm"
    assert [(d.name, d.flags, d.evr) for d in tu.obsoletes] == [("oldutils", LESS, EVR("0", "2.0", ""))]
    assert any(d.name == "/bin/sh" and d.pre for d in tu.requires)
    assert "/etc/toyutils.conf" in tu.files
    assert "/bin/sh" in pkgs["toysh-1.35.0-1.tc1.x86_64"].files
    rich = [d.name for d in pkgs["basesystem-11-1.tc1.noarch"].requires if d.name.startswith("(")]
    assert rich == ["(toysh or mksh)"]
    assert (repo.path / (f.href + ".parsed")).is_file()  # memoized: a warm build skips the parse
    assert load_primary(repo.path / f.href, f.href, ARCHES) == list(pkgs.values())


@pytest.mark.parametrize("suffix,compress", [
    (".gz", gzip.compress), (".zst", zstandard.ZstdCompressor().compress), (".bz2", bz2.compress), ("", bytes),
])
def test_every_compression_gives_the_same_packages(repo, tmp_path, suffix, compress):
    xml = primary_xml(repo)
    path = tmp_path / ("primary.xml" + suffix)
    path.write_bytes(compress(xml))
    with open_decompressed(path, path.name) as s:
        got = list(iter_packages(s, ARCHES))
    assert got == list(iter_packages(io.BytesIO(xml), ARCHES)) and len(got) == 12


def test_malformed_primary(repo, tmp_path):
    xml = primary_xml(repo)
    with pytest.raises(VerificationError, match="malformed XML"):
        list(iter_packages(io.BytesIO(xml[: len(xml) // 2]), ARCHES))
    with pytest.raises(VerificationError, match="not rpm-md primary"):
        list(iter_packages(io.BytesIO(b"<metadata/>"), ARCHES))
    broken = xml.replace(b"<location href=", b"<nolocation href=", 1)
    with pytest.raises(VerificationError, match="lacks version, location"):
        list(iter_packages(io.BytesIO(broken), ARCHES))
    bad = tmp_path / "primary.xml.xz"
    bad.write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(VerificationError, match="corrupt compressed"):
        load_primary(bad, bad.name, ARCHES)


def test_primary_is_streamed_not_loaded_whole():
    """~20 MB of primary.xml is parsed in under 5 MB: each <package> is dropped once read."""
    pkg = ('<package type="rpm"><name>p{i}</name><arch>i686</arch><version epoch="0" ver="1" rel="1"/>'
           '<checksum type="sha256" pkgid="YES">{h}</checksum><summary>s</summary><description>{d}</description>'
           '<size package="1"/><location href="Packages/p{i}.rpm"/><format/></package>\n')
    body = "".join(pkg.format(i=i, h="0" * 64, d="x" * 2000) for i in range(10000)).encode()
    doc = (b'<?xml version="1.0"?><metadata xmlns="http://linux.duke.edu/metadata/common" '
           b'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="10000">' + body + b"</metadata>")
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(doc, 1)))
    tracemalloc.start()
    try:
        assert list(iter_packages(stream, ARCHES)) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(doc) > 20e6 and peak < 5e6


def test_comps_groups_give_the_variant(repo):
    md = repomd(repo)
    for kind in ("group", "group_xz"):
        f = md.files[kind]
        with open_decompressed(repo.path / f.href, f.href) as s:
            assert comps.group_packages(s, ("core",)) == ["basesystem", "toyutils"]
        with open_decompressed(repo.path / f.href, f.href) as s:
            assert comps.group_packages(s, ("core", "standard")) == ["basesystem", "toyutils", "oldutils"]
    with pytest.raises(VerificationError, match="no group minimal"):
        comps.group_packages(io.BytesIO(b"<comps><group><id>core</id></group></comps>"), ("minimal",))


def test_package_signatures_with_the_recipe_key_only(repo, tmp_path):
    rpms = {p.name.split("-")[0]: p for p in (repo.path / "Packages").rglob("*.rpm") if "i686" not in str(p)}
    check_signatures(rpms, repo.key)
    unsigned = tmp_path / "unsigned.rpm"
    shutil.copy(rpms["mksh"], unsigned)
    subprocess.run(["rpmsign", "--delsign", str(unsigned)], capture_output=True, check=True)
    with pytest.raises(VerificationError, match="package mksh: signature check against .* failed"):
        check_signatures({"setup": rpms["setup"], "mksh": unsigned}, repo.key)
    make_key(tmp_path / "other")
    other = tmp_path / "other.asc"
    other.write_bytes(subprocess.run(["gpg", "--homedir", str(tmp_path / "other"), "--armor", "--export"],
                                     capture_output=True, check=True).stdout)
    with pytest.raises(VerificationError, match="package .*: signature check against .*other.asc failed"):
        check_signatures(rpms, other)
    with pytest.raises(VerificationError, match="not found"):
        check_signatures(rpms, tmp_path / "missing.asc")


def test_file_lists_and_config_flags_from_the_header(repo):
    toyutils = next((repo.path / "Packages").rglob("toyutils-*.rpm"))
    assert file_list(toyutils) == [("/etc/toyutils.conf", 17), ("/usr/bin/toyutils", 0)]  # %config(noreplace)
    assert file_list(next((repo.path / "Packages").rglob("libtoy-1.0-*.rpm"))) == [("/usr/lib64/libtoy.so.1", 0)]
    assert file_list(next((repo.path / "Packages").rglob("wrapper-*.rpm"))) == []
