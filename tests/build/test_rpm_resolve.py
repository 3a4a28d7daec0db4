"""The rpm resolver on small, hand-made package universes (pure, no tools)."""

from __future__ import annotations

import pytest

from imagefactory.build.rpm.primary import Dep, Package
from imagefactory.build.rpm.resolve import Rich, Universe, parse_rich, resolve
from imagefactory.build.rpm.rpmvercmp import EQUAL, EVR, GREATER, LESS, OPERATORS
from imagefactory.core.errors import ResolveError


def dep(text: str) -> Dep:
    parts = text.split()
    if len(parts) == 3 and not text.startswith("("):
        return Dep(parts[0], OPERATORS[parts[1]], EVR.parse(parts[2]))
    return Dep(text)


def pkg(name, ver="1.0-1", arch="x86_64", provides=(), requires=(), obsoletes=(), conflicts=(), files=()):
    evr = EVR.parse(ver)
    return Package(
        name=name, arch=arch, evr=evr, href=f"Packages/{name}-{ver}.{arch}.rpm", base="", checksum_type="sha256",
        checksum="0" * 64, size=1, provides=(Dep(name, EQUAL, evr), *map(dep, provides)),
        requires=tuple(map(dep, requires)), obsoletes=tuple(map(dep, obsoletes)),
        conflicts=tuple(map(dep, conflicts)), files=tuple(files),
    )


def names(pkgs) -> list[str]:
    return [p.nevra for p in pkgs]


BASE = [
    pkg("filesystem", "3.18-1", requires=["setup"]),
    pkg("setup", "2.15-1", arch="noarch", files=["/etc/passwd"]),
    pkg("glibc", "2.40-1", provides=["libc.so.6()(64bit)", "rtld(GNU_HASH)"], requires=["filesystem"]),
    pkg("bash", "5.2-1", provides=["/bin/sh"], files=["/usr/bin/bash"],
        requires=["libc.so.6()(64bit)", "rpmlib(CompressedFileNames) <= 3.0.4-1"]),
    pkg("coreutils", "9.5-1", requires=["/usr/bin/bash", "libc.so.6()(64bit)"]),
]


def test_closure_through_sonames_file_provides_and_rpmlib():
    got = resolve(Universe(BASE), ["coreutils"])
    assert names(got) == ["bash-5.2-1.x86_64", "coreutils-9.5-1.x86_64", "filesystem-3.18-1.x86_64",
                          "glibc-2.40-1.x86_64", "setup-2.15-1.noarch"]


def test_newest_version_and_versioned_requires():
    u = Universe([pkg("lib", "1.0-1"), pkg("lib", "1.0^git3-1"), pkg("lib", "1.0~rc1-9"), pkg("lib", "3.0-1", "i686"),
                  pkg("app", requires=["lib >= 1.0-2"])])
    assert names(resolve(u, ["app"])) == ["app-1.0-1.x86_64", "lib-1.0^git3-1.x86_64"]
    # a package that became noarch: the newer build wins whatever its arch; at equal EVR x86_64 does
    assert names(resolve(Universe([pkg("x", "1-1"), pkg("x", "2-1", "noarch")]), ["x"])) == ["x-2-1.noarch"]
    assert names(resolve(Universe([pkg("x", "2-1", "noarch"), pkg("x", "2-1")]), ["x"])) == ["x-2-1.x86_64"]
    u = Universe([pkg("lib", "1.0-1"), pkg("app", requires=["lib >= 2"])])
    with pytest.raises(ResolveError, match=r"recipe asks for 'app' -> app-1.0-1.x86_64 requires 'lib >= 2'"):
        resolve(u, ["app"])


def test_rich_or_takes_the_first_installable_alternative():
    u = Universe(BASE + [pkg("mksh", requires=["libnothing.so.1"]), pkg("dash"),
                         pkg("base", arch="noarch", requires=["(mksh or dash or bash)"])])
    got = {p.name for p in resolve(u, ["base"])}
    assert "dash" in got and "mksh" not in got and "bash" not in got
    # an alternative already in the set satisfies it without adding anything
    got = {p.name for p in resolve(u, ["bash", "base"])}
    assert "dash" not in got and "bash" in got


def test_rich_and_if_unless_with():
    u = Universe([
        pkg("a"), pkg("b"), pkg("c"), pkg("langpack-de"), pkg("gui"), pkg("tiny"),
        pkg("x", provides=["feat(a) = 2"]), pkg("y", provides=["feat(a) = 1", "feat(b)"]),
        pkg("app", requires=["(a and b)", "(langpack-de if gui)", "(c unless tiny)", "(feat(a) with feat(b))"]),
    ])
    assert [p.name for p in resolve(u, ["app"])] == ["a", "app", "b", "c", "y"]
    got = [p.name for p in resolve(u, ["app", "gui", "tiny"])]
    assert "langpack-de" in got and "c" not in got


def test_conditional_decided_on_the_final_set():
    """`(a if b)` where b arrives later, through another package, still pulls in a."""
    u = Universe([pkg("a"), pkg("b"), pkg("first", requires=["(a if b)"]), pkg("second", requires=["b"])])
    assert [p.name for p in resolve(u, ["first", "second"])] == ["a", "b", "first", "second"]


def test_obsoletes_replace_the_old_package():
    u = Universe([pkg("oldutils", "1.0-1"), pkg("user", requires=["oldutils"]),
                  pkg("newutils", "2.0-1", obsoletes=["oldutils < 2.0"], provides=["oldutils = 2.0"])])
    assert names(resolve(u, ["oldutils"])) == ["newutils-2.0-1.x86_64"]
    assert [p.name for p in resolve(u, ["user"])] == ["newutils", "user"]


def test_obsoletes_respect_their_version_range():
    u = Universe([pkg("oldutils", "3.0-1"), pkg("newutils", obsoletes=["oldutils < 2.0"])])
    assert [p.name for p in resolve(u, ["oldutils"])] == ["oldutils"]


def test_unknown_package_and_the_failure_chain():
    u = Universe(BASE + [pkg("broken", arch="noarch", requires=["libmissing.so.7()(64bit)"]),
                         pkg("wrapper", arch="noarch", requires=["glibc", "broken"])])
    with pytest.raises(ResolveError, match="unknown package 'nosuch'"):
        resolve(u, ["nosuch"])
    with pytest.raises(ResolveError) as exc:
        resolve(u, ["wrapper"])
    assert str(exc.value) == (
        "cannot resolve: recipe asks for 'wrapper' -> wrapper-1.0-1.noarch requires 'broken' -> "
        "broken-1.0-1.noarch requires 'libmissing.so.7()(64bit)', which nothing provides")


def test_virtual_provide_requested_by_name_and_provider_policy():
    u = Universe([pkg("sendmail", provides=["MTA"]), pkg("postfix", provides=["MTA"]), pkg("exim", provides=["MTA"])])
    assert [p.name for p in resolve(u, ["MTA"])] == ["exim"]  # shortest name, then alphabetical: deterministic
    assert [p.name for p in resolve(u, ["postfix", "MTA"])] == ["postfix"]  # an explicit choice wins


def test_conflicts_are_reported():
    u = Universe([pkg("a", conflicts=["b"]), pkg("b")])
    with pytest.raises(ResolveError, match="a-1.0-1.x86_64 conflicts with b-1.0-1.x86_64"):
        resolve(u, ["a", "b"])


def test_parse_rich():
    assert parse_rich("(libc.so.6()(64bit) or busybox >= 1.3-2)") == Rich(
        "or", (Dep("libc.so.6()(64bit)"), Dep("busybox", GREATER | EQUAL, EVR("", "1.3", "2"))))
    assert parse_rich("(a if (b and c) else d)") == Rich("if", (Dep("a"), Rich("and", (Dep("b"), Dep("c")))), Dep("d"))
    assert parse_rich("(x < 2)") == Dep("x", LESS, EVR("", "2", ""))
    for bad in ("(a or)", "(a or b", "(a xor b)", "(a or b and c)"):
        with pytest.raises(ValueError):
            parse_rich(bad)


def test_malformed_rich_dependency_is_one_clear_error():
    u = Universe([pkg("app", requires=["(a or"])])
    with pytest.raises(ResolveError, match=r"app-1.0-1.x86_64: malformed rich dependency '\(a or'"):
        resolve(u, ["app"])
