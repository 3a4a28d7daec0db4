"""Hostile recipes (issue 12): every one is exit 1 naming the file and key, before any work starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build import recipe
from imagefactory.build.configure import write_in_root
from imagefactory.core.errors import RecipeError, UnsafeInput
from imagefactory.core.hostname import check_hostname

BASE = 'family = "debian"\nsuite = "sid"\n'


def build(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagefactory", "build", str(path), "-o", str(out), *extra],
                          capture_output=True, text=True)


def refused(tmp_path: Path, name: str, text: str | bytes, *needles: str, extra: tuple[str, ...] = (),
            named: bool = True) -> str:
    """Write the recipe, build it, and check: exit 1, one line naming the file and the key, nothing created."""
    path = tmp_path / f"{name}.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    out = tmp_path / "out" / "nested"
    proc = build(path, out, *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("imagefactory: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for needle in (f"{name}.toml", *needles) if named else needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "out").exists()  # refused before any work
    return lines[0]


def test_extends_cycle_written_as_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.toml").write_text('extends = "sub/../a.toml"\n')
    line = refused(tmp_path, "a", 'extends = "./b.toml"\n', "key 'extends' forms a cycle")
    assert "b.toml" in line
    # through a symlink too: the real path is what counts
    (tmp_path / "c.toml").symlink_to(tmp_path / "d.toml")
    refused(tmp_path, "d", f'extends = "{tmp_path}/c.toml"\n', "cycle")


def test_extends_chain_depth_is_bounded(tmp_path):
    for i in range(40):
        (tmp_path / f"r{i}.toml").write_text(f'extends = "r{i + 1}"\n')
    (tmp_path / "r40.toml").write_text(BASE)
    refused(tmp_path, "r0", 'extends = "r1"\n', "key 'extends' nests more than")


def test_extends_naming_a_missing_recipe_names_file_and_key(tmp_path):
    refused(tmp_path, "child", 'extends = "no-such-base"\n', "key 'extends'", "unknown recipe 'no-such-base'")
    refused(tmp_path, "child2", 'extends = "missing/x.toml"\n', "key 'extends'", "no such recipe file")


def test_non_utf8_recipe(tmp_path):
    refused(tmp_path, "bytes", BASE.encode() + b'hostname = "\xff\xfe"\n', "not UTF-8")


@pytest.mark.parametrize("mirror", ["http://[::1", "http://host:99999/", "ftp://host/debian", "http:///debian",
                                    "http://host/debian\nInjected: yes", "http://host/?q=1"])
def test_bad_mirror_url(tmp_path, mirror):
    refused(tmp_path, "mirror", BASE + f"mirror = {json.dumps(mirror)}\n", "key 'mirror'")


def test_bad_mirror_option(tmp_path):
    refused(tmp_path, "fine", BASE, "--mirror", "'http://[::1'", extra=("--mirror", "http://[::1"), named=False)


@pytest.mark.parametrize("mode", ["77777777777777777777777", "10000", "0o644", "-1", "", "６４４", "0_644"])
def test_oversized_or_odd_mode(tmp_path, mode):
    refused(tmp_path, "mode", BASE + f'[[customize]]\nwrite = "/etc/x"\nmode = "{mode}"\n', "customize[0]",
            "key 'mode'")


@pytest.mark.parametrize("key,value", [("suite", "../../.."), ("suite", "sid/../../x"), ("architecture", "../.."),
                                       ("architecture", "amd64/"), ("name", "../escape"), ("name", ".hidden")])
def test_words_that_become_url_segments_or_file_names(tmp_path, key, value):
    text = 'family = "debian"\n' + "".join(f'{k} = "{v}"\n' for k, v in {"suite": "sid", key: value}.items())
    refused(tmp_path, "word", text, f"key {key!r}")


def test_components_are_checked(tmp_path):
    refused(tmp_path, "comp", BASE + 'components = ["main", "../../x"]\n', "key 'components'")
    refused(tmp_path, "comp2", BASE + "components = []\n", "key 'components'")


@pytest.mark.parametrize("hostname", ["a\\nb", "-x", "x" * 64, "a..b", "web_1"])
def test_build_validates_hostname(tmp_path, hostname):
    refused(tmp_path, "host", BASE + f'hostname = "{hostname}"\n', "key 'hostname'")


def test_huge_hostname_gives_a_short_line(tmp_path):
    line = refused(tmp_path, "big", BASE + f'hostname = "{"a" * 500_000}"\n', "key 'hostname'")
    assert len(line) < 400


def test_oversized_recipe_file(tmp_path):
    refused(tmp_path, "huge", BASE + f'description = "{"a" * (2 << 20)}"\n', "larger than")


def test_default_hostname_comes_from_a_valid_name(tmp_path):
    path = tmp_path / "my_guest.toml"
    path.write_text(BASE)
    with pytest.raises(RecipeError, match="key 'hostname' \\(defaults to the name; set it\\)"):
        recipe.load(str(path))
    path.write_text(BASE + 'hostname = "guest"\n')
    assert recipe.load(str(path)).hostname == "guest"


@pytest.mark.parametrize("path", ["/../../../../x-escape/x", "/../../etc/passwd", "/etc/", "/etc/.", "etc/x"])
def test_write_paths_with_dotdot_are_refused_at_load(tmp_path, path):
    refused(tmp_path, "w", BASE + f'[[customize]]\nwrite = "{path}"\ncontent = "x"\n', "customize[0]", "'write'")


def test_nul_in_a_string_is_refused(tmp_path):
    refused(tmp_path, "nul", BASE + '[[customize]]\nrun = "echo \\u0000"\n', "customize[0]", "NUL")
    refused(tmp_path, "nul2", BASE + 'keyring = "/x\\u0000y"\n', "key 'keyring'", "NUL")


def test_one_hostname_validator_for_build_and_seed():
    from imagefactory.seed.guest import GuestError
    from imagefactory.seed.guest import check_hostname as seed_check

    for good in ("web", "web1.example.net", "web."):
        assert seed_check(good) == check_hostname(good)
    for bad in ("a\nb", "x" * 254, "-a"):
        with pytest.raises(GuestError):
            seed_check(bad)
        with pytest.raises(RecipeError):
            check_hostname(bad, RecipeError)


# customize `write` itself (defence in depth: the recipe check above runs first)


def guest_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "out" / "guest" / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")  # merged /usr, as in every current Debian
    host = tmp_path / "host"
    host.mkdir()
    return root, host


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_write_never_creates_outside_the_root(tmp_path):
    root, host = guest_root(tmp_path)
    before = tree(tmp_path)
    for path in ("/../../../../x-escape/x", "/../../etc/passwd"):
        with pytest.raises(UnsafeInput):
            write_in_root(root, path, b"x", 0o644)
    assert tree(tmp_path) == before  # no x-escape/, no out/etc/


def test_write_through_a_guest_symlink_stays_in_the_guest(tmp_path):
    root, host = guest_root(tmp_path)
    os.symlink(str(host), root / "victim")  # absolute: means <root><host> to the guest
    os.symlink("../../../../../../..", root / "up")  # relative, climbing: stops at the guest's /
    write_in_root(root, "/victim/newdir/sub/pwned", b"1", 0o600)
    write_in_root(root, "/up/tmp/x", b"2", 0o644)
    assert not any(host.iterdir())  # nothing created on the host
    inner = root / str(host).lstrip("/") / "newdir/sub/pwned"
    assert inner.read_bytes() == b"1" and (inner.stat().st_mode & 0o777) == 0o600
    assert (root / "tmp/x").read_bytes() == b"2"
    assert not (tmp_path / "tmp").exists()


def test_write_replaces_a_final_symlink_instead_of_following_it(tmp_path):
    root, host = guest_root(tmp_path)
    target = host / "passwd"
    target.write_text("host secret\n")
    os.symlink(str(target), root / "etc/motd")
    write_in_root(root, "/etc/motd", b"hi\n", 0o644)
    assert target.read_text() == "host secret\n"
    assert not (root / "etc/motd").is_symlink() and (root / "etc/motd").read_bytes() == b"hi\n"


def test_write_follows_merged_usr_inside_the_guest(tmp_path):
    root, _ = guest_root(tmp_path)
    write_in_root(root, "/lib/systemd/system/x.service", b"[Unit]\n", 0o644)
    assert (root / "usr/lib/systemd/system/x.service").read_bytes() == b"[Unit]\n"


def test_write_refuses_loops_files_and_directories(tmp_path):
    root, _ = guest_root(tmp_path)
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    (root / "etc/file").write_text("x")
    (root / "etc/dir").mkdir()
    with pytest.raises(UnsafeInput, match="too many levels"):
        write_in_root(root, "/loop1/x", b"", 0o644)
    with pytest.raises(UnsafeInput, match="not a directory"):
        write_in_root(root, "/etc/file/x", b"", 0o644)
    with pytest.raises(UnsafeInput, match="is a directory"):
        write_in_root(root, "/etc/dir", b"", 0o644)
    assert not [p for p in (root / "etc").iterdir() if "imagefactory-tmp" in p.name]
