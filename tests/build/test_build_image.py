import io
import os
import tarfile

import pytest
import zstandard

from imagefactory.build.debian.debfile import extract_data, member_path
from imagefactory.build.image import write_image
from imagefactory.core.errors import UnsafeInput
from imagefactory.core.hashing import sha256_file


def make_tree(root):
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("g1\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"x" * 5000)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool2")
    (root / "bin").symlink_to("usr/bin")
    (root / "escape").symlink_to("/etc/passwd")
    os.setxattr(root / "usr/bin/tool", "user.test", b"cap")


def members(path):
    data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
    return tarfile.open(fileobj=io.BytesIO(data)).getmembers()


def test_image_is_reproducible_and_clamped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    make_tree(b)
    os.utime(b / "etc/hostname", (2_000_000_000, 2_000_000_000))  # newer than the epoch: clamped
    epoch = 1_700_000_000
    sha_a, _, stats = write_image(a, tmp_path / "a.tar.zst", epoch)
    sha_b, _, _ = write_image(b, tmp_path / "b.tar.zst", epoch, threads=1)
    assert sha_a == sha_b == sha256_file(tmp_path / "a.tar.zst")[0]
    ms = {m.name: m for m in members(tmp_path / "a.tar.zst")}
    assert all(m.mtime <= epoch for m in ms.values())
    assert ms["./usr/bin/tool2"].islnk() and ms["./usr/bin/tool2"].linkname == "./usr/bin/tool"
    assert ms["./escape"].issym() and ms["./escape"].linkname == "/etc/passwd"  # stored, never followed
    assert ms["./usr/bin/tool"].pax_headers.get("SCHILY.xattr.user.test") == "cap"
    assert all(m.uname == "" and "atime" not in m.pax_headers for m in ms.values())
    assert stats.apparent_size == 5000 + 3  # the hard link counted once


def test_member_path_rejects_absolute_and_dotdot():
    assert member_path("./usr/bin/x", "t") == "usr/bin/x"
    with pytest.raises(UnsafeInput, match="absolute"):
        member_path("/etc/passwd", "t")
    with pytest.raises(UnsafeInput, match=r"'\.\.'"):
        member_path("./usr/../../etc/passwd", "t")


def make_deb(path, entries):
    """A .deb (ar) whose data.tar holds the given TarInfo/content pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ti, content in entries:
            tar.addfile(ti, io.BytesIO(content) if content is not None else None)
    data = buf.getvalue()

    def ar(name, blob):
        h = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n".encode()
        return h + blob + (b"\n" if len(blob) % 2 else b"")

    path.write_bytes(b"!<arch>\n" + ar("debian-binary", b"2.0\n") + ar("data.tar", data))


def ti(name, type_=tarfile.REGTYPE, size=0, linkname=""):
    t = tarfile.TarInfo(name)
    t.type, t.size, t.linkname = type_, size, linkname
    return t


def test_extract_refuses_hostile_members(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    ok = tmp_path / "ok.deb"
    make_deb(ok, [(ti("./bin/", tarfile.DIRTYPE), None), (ti("./bin/x", size=2), b"hi")])
    extract_data(ok, root)
    assert (root / "bin").is_symlink() and (root / "usr/bin/x").read_bytes() == b"hi"  # merged-/usr kept

    cases = {
        "abs": [(ti("/etc/evil", size=1), b"x")],
        "dotdot": [(ti("./../evil", size=1), b"x")],
        "dev": [(ti("./dev/sda", tarfile.CHRTYPE), None)],
        "via-symlink": [(ti("./lnk", tarfile.SYMTYPE, linkname=str(tmp_path / "outside")), None),
                        (ti("./lnk/evil", size=1), b"x")],
        # a symlink that first stays inside, then is replaced by one leading out
        "re-pointed": [(ti("./lnk2", tarfile.SYMTYPE, linkname="usr"), None),
                       (ti("./lnk2/ok", size=1), b"x"),
                       (ti("./lnk2", tarfile.SYMTYPE, linkname=str(tmp_path / "outside")), None),
                       (ti("./lnk2/evil", size=1), b"x")],
    }
    (tmp_path / "outside").mkdir()
    for name, entries in cases.items():
        deb = tmp_path / f"{name}.deb"
        make_deb(deb, entries)
        with pytest.raises(UnsafeInput):
            extract_data(deb, root)
    assert not (tmp_path / "outside/evil").exists() and not (tmp_path / "evil").exists()
