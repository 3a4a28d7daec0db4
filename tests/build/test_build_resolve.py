import pytest

from imagefactory.build.debian.packages import parse_packages
from imagefactory.build.debian.resolve import Universe, compare_versions, initial_set, install_rounds, resolve
from imagefactory.core.errors import ResolveError

INDEX = """\
Package: base-files
Version: 13
Architecture: amd64
Essential: yes
Priority: required
Filename: pool/b/base-files_13_amd64.deb
Size: 10
SHA256: 00

Package: dpkg
Version: 1.22
Architecture: amd64
Essential: yes
Priority: required
Pre-Depends: libc6 (>= 2.34)
Depends: tar (>= 1.28), libmd0
Filename: pool/d/dpkg.deb
Size: 10
SHA256: 01

Package: libc6
Version: 2.41-1
Architecture: amd64
Multi-Arch: same
Priority: optional
Filename: pool/l/libc6_2.41.deb
Size: 10
SHA256: 02

Package: libc6
Version: 2.40-1
Architecture: amd64
Priority: optional
Filename: pool/l/libc6_2.40.deb
Size: 10
SHA256: 03

Package: tar
Version: 1.35
Architecture: amd64
Essential: yes
Priority: required
Depends: libc6
Filename: pool/t/tar.deb
Size: 10
SHA256: 04

Package: libmd0
Version: 1.1
Architecture: amd64
Priority: optional
Filename: pool/l/libmd0.deb
Size: 10
SHA256: 05

Package: mawk
Version: 1.3
Architecture: amd64
Priority: required
Provides: awk
Filename: pool/m/mawk.deb
Size: 10
SHA256: 06

Package: gawk
Version: 5.2
Architecture: amd64
Priority: optional
Provides: awk
Filename: pool/g/gawk.deb
Size: 10
SHA256: 07

Package: apt
Version: 3.0
Architecture: amd64
Priority: important
Depends: libapt (>= 3.0) | libapt-compat, awk, debian-keyring:any, foo [!amd64], gpgv | gpgv2 | sqv
Filename: pool/a/apt.deb
Size: 10
SHA256: 08

Package: libapt-compat
Version: 1
Architecture: amd64
Priority: optional
Filename: pool/a/libapt-compat.deb
Size: 10
SHA256: 09

Package: debian-keyring
Version: 1
Architecture: all
Multi-Arch: foreign
Priority: optional
Filename: pool/d/keyring.deb
Size: 10
SHA256: 10

Package: sqv
Version: 1
Architecture: amd64
Priority: optional
Provides: gpgv (= 2.2)
Filename: pool/s/sqv.deb
Size: 10
SHA256: 11

Package: foreign-only
Version: 1
Architecture: arm64
Priority: required
Filename: pool/f/x.deb
Size: 10
SHA256: 12

Package: needs-new-gpgv
Version: 1
Architecture: amd64
Priority: optional
Depends: gpgv (>= 3)
Filename: pool/n/x.deb
Size: 10
SHA256: 13

Package: user
Version: 1
Architecture: amd64
Priority: optional
Depends: needs-new-gpgv
Filename: pool/u/x.deb
Size: 10
SHA256: 14
"""


@pytest.fixture
def universe():
    return Universe(parse_packages(INDEX), "amd64")


def test_version_comparison_like_dpkg():
    assert compare_versions("1.0~rc1", "1.0") < 0
    assert compare_versions("1:0.1", "2.0") > 0
    assert compare_versions("2.41-12+b1", "2.41-12") > 0
    assert compare_versions("3.1~", "3.1") < 0  # valid per dpkg, rejected by debian-inspector's Version
    assert compare_versions("1.0-1", "1.0-1") == 0
    assert compare_versions("1.0a", "1.0+") < 0


def test_highest_version_is_candidate_and_foreign_arch_ignored(universe):
    assert universe.candidates["libc6"].version == "2.41-1"
    assert "foreign-only" not in universe.candidates


def test_essential_closure(universe):
    got = {p.name for p in resolve(universe, initial_set(universe, "essential", ()))}
    assert got == {"base-files", "dpkg", "tar", "libc6", "libmd0"}


def test_minbase_alternatives_virtuals_and_qualifiers(universe):
    got = {p.name: p for p in resolve(universe, initial_set(universe, "minbase", ()))}
    # awk is virtual: mawk (required, already chosen) satisfies it, gawk is not pulled in.
    assert "mawk" in got and "gawk" not in got
    # libapt (>= 3.0) does not exist: the second alternative is taken.
    assert "libapt-compat" in got
    # debian-keyring:any resolves to the arch:all package; [!amd64] restrictions are dropped.
    assert "debian-keyring" in got and "foo" not in got
    # gpgv is provided (versioned) by sqv.
    assert "sqv" in got
    assert "apt" in got


def test_unknown_package(universe):
    with pytest.raises(ResolveError, match="unknown package 'nosuch'"):
        resolve(universe, ["nosuch"], "sid main amd64")


def test_unsatisfiable_names_the_chain(universe):
    with pytest.raises(ResolveError, match=r"gpgv \(>= 3\) of needs-new-gpgv <- user"):
        resolve(universe, ["user"])


def test_install_rounds_respect_pre_depends():
    pkgs = parse_packages(INDEX)
    u = Universe(pkgs, "amd64")
    rounds = install_rounds([u.candidates["dpkg"], u.candidates["libc6"]], [], "amd64")
    assert [[p.name for p in r] for r in rounds] == [["libc6"], ["dpkg"]]
    assert len(install_rounds([u.candidates["dpkg"]], [u.candidates["libc6"]], "amd64")) == 1


def test_install_rounds_pre_depends_alternatives_and_virtuals():
    # Debian's `init`: Pre-Depends: systemd-sysv | sysvinit-core; only systemd-sysv is in the plan,
    # and it pre-depends (virtually) on an awk that an installed package provides.
    pkgs = parse_packages(
        "Package: init\nVersion: 1\nArchitecture: amd64\nPre-Depends: systemd-sysv | sysvinit-core\n"
        "Filename: a\nSize: 1\nSHA256: 0\n\n"
        "Package: systemd-sysv\nVersion: 1\nArchitecture: amd64\nPre-Depends: awk\n"
        "Filename: b\nSize: 1\nSHA256: 0\n\n"
        "Package: mawk\nVersion: 1\nArchitecture: amd64\nProvides: awk\nFilename: c\nSize: 1\nSHA256: 0\n"
    )
    init, sysv, mawk = pkgs
    rounds = install_rounds([init, sysv], [mawk], "amd64")
    assert [[p.name for p in r] for r in rounds] == [["systemd-sysv"], ["init"]]


def test_malformed_stanza_is_an_error():
    from imagefactory.core.errors import VerificationError

    with pytest.raises(VerificationError, match="malformed stanza for package 'x'"):
        parse_packages("Package: x\nVersion: 1\n")


def test_unreadable_resolution_memo_is_ignored(tmp_path):
    import pickle

    from imagefactory.core import memo as memos

    memo = tmp_path / "plans" / "k"
    memos.save(memo, 2, ({"a"}, []))
    assert memos.load(memo, 2) == ({"a"}, [])
    assert memos.load(memo, 3) is None  # another record format: recomputed
    memo.write_bytes(b"garbage")
    assert memos.load(memo, 2) is None
    # a pickle of records that no longer construct (an older record layout)
    memo.write_bytes(pickle.dumps(ValueError("x"))[:-3])
    assert memos.load(memo, 2) is None
    assert memos.memoized(memo, 2, lambda: ({"b"}, [])) == (({"b"}, []), False)
    assert memos.memoized(memo, 2, lambda: ({"c"}, [])) == (({"b"}, []), True)


def test_install_rounds_keep_dependents_with_their_depends():
    # apt-listchanges Depends on python3, which must wait a round for its Pre-Depends:
    # dpkg could not configure apt-listchanges in the earlier round.
    pkgs = parse_packages(
        "Package: python3-minimal\nVersion: 1\nArchitecture: amd64\nFilename: a\nSize: 1\nSHA256: 0\n\n"
        "Package: python3\nVersion: 1\nArchitecture: amd64\nPre-Depends: python3-minimal\n"
        "Filename: b\nSize: 1\nSHA256: 0\n\n"
        "Package: apt-listchanges\nVersion: 1\nArchitecture: all\nDepends: python3:any\n"
        "Filename: c\nSize: 1\nSHA256: 0\n"
    )
    rounds = install_rounds(pkgs, [], "amd64")
    assert [[p.name for p in r] for r in rounds] == [["python3-minimal"], ["apt-listchanges", "python3"]]


CONFLICTS = """\
Package: exim4
Version: 4.97
Architecture: amd64
Priority: optional
Provides: mail-transport-agent
Conflicts: mail-transport-agent
Filename: pool/e/exim4.deb
Size: 10
SHA256: 20

Package: postfix
Version: 3.8
Architecture: amd64
Priority: optional
Provides: mail-transport-agent
Conflicts: mail-transport-agent
Filename: pool/p/postfix.deb
Size: 10
SHA256: 21

Package: mailer
Version: 1
Architecture: amd64
Priority: optional
Depends: exim4 | postfix
Filename: pool/m/mailer.deb
Size: 10
SHA256: 22

Package: oldlib
Version: 1.0
Architecture: amd64
Priority: optional
Filename: pool/o/oldlib.deb
Size: 10
SHA256: 23

Package: newtool
Version: 2
Architecture: amd64
Priority: optional
Breaks: oldlib (<< 2)
Filename: pool/n/newtool.deb
Size: 10
SHA256: 24

Package: uses-old
Version: 1
Architecture: amd64
Priority: optional
Depends: oldlib
Filename: pool/u/uses-old.deb
Size: 10
SHA256: 25

Package: no-exim
Version: 1
Architecture: amd64
Priority: optional
Conflicts: exim4
Filename: pool/n/no-exim.deb
Size: 10
SHA256: 26
"""


def conflict_universe() -> Universe:
    return Universe(parse_packages(INDEX + "\n" + CONFLICTS), "amd64")


def test_two_conflicting_requested_packages_are_named():
    u = conflict_universe()
    with pytest.raises(ResolveError) as exc:
        resolve(u, ["exim4", "postfix"])
    msg = str(exc.value)
    assert exc.value.exit_code == 5
    assert "exim4" in msg and "postfix" in msg and "Conflicts: mail-transport-agent" in msg


def test_breaks_is_versioned_and_names_both():
    u = conflict_universe()
    with pytest.raises(ResolveError) as exc:
        resolve(u, ["oldlib", "newtool"])
    assert "oldlib" in str(exc.value) and "newtool" in str(exc.value) and "Breaks: oldlib (<< 2)" in str(exc.value)
    # pulled in through a dependency: the chain names who wanted it
    with pytest.raises(ResolveError) as exc:
        resolve(u, ["newtool", "uses-old"])
    assert "uses-old" in str(exc.value) and "newtool" in str(exc.value)


def test_a_package_providing_what_it_conflicts_with_is_fine_and_alternatives_avoid_conflicts():
    u = conflict_universe()
    assert {p.name for p in resolve(u, ["exim4"])} == {"exim4"}
    # postfix requested first: mailer's 'exim4 | postfix' is already satisfied by postfix
    assert {p.name for p in resolve(u, ["postfix", "mailer"])} == {"postfix", "mailer"}
    # exim4, the first alternative, conflicts with a requested package: apt takes postfix
    assert {p.name for p in resolve(u, ["no-exim", "mailer"])} == {"no-exim", "mailer", "postfix"}
