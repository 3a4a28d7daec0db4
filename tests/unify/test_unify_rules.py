"""Pure parts of unify: VCI decoding, the auto-mode policy, exclude lists, conffiles, store names."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefactory.core.errors import RecipeError
from unify import probe
from unify.exclude import DEFAULT_LIST, Matcher, Rule, Verdict, parse_rules
from unify.ownership import parse_conffiles
from unify.store import Meta, entry_name, parse_entry_name

VS_INFO = "VCIVersion:\t0002:0308\nVCISyscall:\t236\nVCIKernel:\t00011d11\n"


def test_parse_vci_decodes_version_syscall_and_feature_bits():
    vci = probe.parse_vci(VS_INFO)
    assert vci["version"] == "2.3.8"
    assert vci["syscall"] == 236
    assert vci["kernel_bits"] == 0x11D11
    assert vci["features"] == ["NO_DYNAMIC", "PROC_SECURE", "COWBL", "SPACES", "NETV2", "MEMCG", "DEBUG"]


def test_parse_vci_of_nothing_is_empty():
    assert probe.parse_vci("") == {}
    assert probe.parse_vci("garbage\nVCIKernel: zz\n") == {}


def test_auto_mode_policy():
    assert probe.decide_auto(True, True, True, True, "ext4")[0] == "vserver"
    # the project's own 6.1 IXUNLINK patch: no /proc/virtual/info, but the flag sticks
    assert probe.decide_auto(False, True, True, False, "ext4") == (
        "vserver", "kernel with the IXUNLINK patch: IMMUTABLE+IXUNLINK protect shared inodes and still allow updates")
    assert probe.decide_auto(False, False, True, True, "xfs")[0] == "reflink"
    assert probe.decide_auto(True, False, True, True, "xfs")[0] == "reflink"
    mode, reason = probe.decide_auto(False, False, True, False, "ext4")
    assert mode is None and "--mode immutable" in reason and "ext4" in reason


def test_filesystem_type_takes_the_longest_mount_prefix():
    mountinfo = (
        "22 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "30 22 7:0 / /mnt/x rw - xfs /dev/loop0 rw\n"
        "31 22 7:1 / /mnt/xy rw - btrfs /dev/loop1 rw\n"
    )
    assert probe.filesystem_type("/mnt/x/store", mountinfo) == "xfs"
    assert probe.filesystem_type("/mnt/xyz", mountinfo) == "ext4"
    assert probe.filesystem_type("/mnt/xy", mountinfo) == "btrfs"


def test_vhashify_matchlist_semantics():
    """util-vserver's own matchlist test: '/bin' then '+/bin/a'."""
    m = Matcher(parse_rules("/bin\n+/bin/a\n"))
    assert m.verdict("/bin", False) is Verdict.EXCLUDE
    assert m.verdict("/bin/a", True) is Verdict.INCLUDE
    assert m.verdict("/bin/b", True) is Verdict.EXCLUDE
    assert m.verdict("/sbin", False) is Verdict.INCLUDE
    assert m.verdict("/usr/lib/a", False) is Verdict.INCLUDE
    assert m.may_include_below("/bin") and not m.may_include_below("/sbin")


def test_default_list_matches_util_vserver_intent():
    m = Matcher(parse_rules(DEFAULT_LIST.read_text()))
    assert m.verdict("/etc/passwd", False) is Verdict.SKIP
    assert m.verdict("/etc/termcap", False) is Verdict.INCLUDE
    assert m.verdict("/etc/ssh/sshd_config", False) is Verdict.EXCLUDE
    assert m.verdict("/root/.ssh/id_rsa", False) is Verdict.SKIP
    assert m.verdict("/usr/share/texmf/ls-R", False) is Verdict.EXCLUDE
    assert m.verdict("/usr/bin/ls", False) is Verdict.INCLUDE
    assert not m.may_include_below("/var")  # /var is pruned, not walked
    assert m.may_include_below("/root")


def test_exclude_list_errors_name_the_line():
    with pytest.raises(RecipeError, match=r"x:2: pattern must be guest-absolute"):
        parse_rules("/ok\n+relative\n", "x")
    assert parse_rules("# c\n\n~/tmp/*\n") == [Rule(Verdict.SKIP, "/tmp/*")]


def test_conffiles_parsing():
    assert parse_conffiles("/etc/a\n/etc/b remove-on-upgrade\n\nrelative\n") == {"/etc/a", "/etc/b"}


def test_entry_names_round_trip_and_metadata_keys_differ():
    base = Meta(0o100644, 0, 0, 10)
    keys = {m.key() for m in (base, Meta(0o100600, 0, 0, 10), Meta(0o100644, 1, 0, 10),
                              Meta(0o100644, 0, 1, 10), Meta(0o100644, 0, 0, 11),
                              Meta(0o100644, 0, 0, 10, (("security.capability", b"\x01"),)))}
    assert len(keys) == 6
    name = entry_name("a" * 32, base.key(), 1234)
    assert parse_entry_name(name) == ("a" * 32, base.key(), 1234)
    assert parse_entry_name("README") is None


def test_rpm_config_files_are_read_from_the_guest_database(tmp_path):
    """A real RPM with a %config file, recorded in the guest's rpm database, is never unified."""
    import subprocess

    from tests.support import need_tool
    from tests.support.unify import write
    from unify.engine import unify

    need_tool("rpmbuild", "rpm")
    spec = tmp_path / "cfgtoy.spec"
    spec.write_text("Name: cfgtoy\nVersion: 1.0\nRelease: 1\nSummary: t\nLicense: MIT\nBuildArch: noarch\n"
                    "%description\nt\n%install\nmkdir -p %{buildroot}/usr/share/cfgtoy\n"
                    "echo 'shared config value for the test' > %{buildroot}/usr/share/cfgtoy/app.cfg\n"
                    "%files\n%config(noreplace) /usr/share/cfgtoy/app.cfg\n")
    subprocess.run(["rpmbuild", "--quiet", "-bb", "--define", f"_topdir {tmp_path / 'top'}", str(spec)],
                   check=True, capture_output=True)
    rpm = next((tmp_path / "top/RPMS/noarch").glob("*.rpm"))
    guests = []
    for name in ("g1", "g2"):
        g = tmp_path / name
        write(g / "usr/share/cfgtoy/app.cfg", b"shared config value for the test\n")
        write(g / "usr/share/cfgtoy/other", b"shared config value for the test\n")
        subprocess.run(["rpm", "--root", str(g), "--dbpath", "/var/lib/rpm", "--justdb", "--nodeps", "-i", str(rpm)],
                       check=True, capture_output=True)
        guests.append(g)
    s = unify(guests, tmp_path / "store", mode="hardlink")
    assert s.conffiles == 2 and s.linked == 2
    assert (guests[0] / "usr/share/cfgtoy/app.cfg").stat().st_nlink == 1
    assert (guests[0] / "usr/share/cfgtoy/other").stat().st_nlink == 3


_PATH_PARTS = ["etc", "usr", "share", "doc", "ls-R", "gconf", "schemas", "root", ".ssh", "id_rsa", "var", "tmp",
               "a", "b.c", "x*y", "[q]"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(_PATH_PARTS), min_size=1, max_size=6), inside_excluded=st.booleans(),
       extra=st.lists(st.sampled_from(["/usr/*/b.c", "+/usr/share/doc/a", "~/var/?mp/*", "/etc/[ab]*",
                                       "-/x*y/*", "/usr/share"]), max_size=3))
def test_file_matcher_gives_the_same_verdict_as_verdict(parts, inside_excluded, extra):
    """The walk's per-directory subset of rules must decide every file as the full list does."""
    rules = parse_rules(DEFAULT_LIST.read_text() + "\n" + "\n".join(extra))
    matcher = Matcher(rules)
    path = "/" + "/".join(parts)
    prefix = path.rpartition("/")[0] + "/"
    rules = matcher.every_rule
    for depth in range(1, len(parts) + 1):  # narrowed directory by directory, as the walk does
        rules = matcher.below("/" + "".join(p + "/" for p in parts[:depth - 1]), rules)
    m = matcher.file_matcher(prefix, rules)(path)
    fast_excluded = inside_excluded if m is None else matcher.verdict_of(m) is not Verdict.INCLUDE
    assert fast_excluded == (matcher.verdict(path, inside_excluded) is not Verdict.INCLUDE)
