from imagefactory.build import sources

DEB822 = """Types: deb
# a comment
URIs: http://mirror.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.example.invalid/debian
Suites: sid
Components: main
Enabled: no
"""


def test_deb822():
    got = sources.parse_deb822(DEB822)
    assert [s.uri for s in got] == ["http://mirror.example.invalid/debian",
                                    "http://mirror.example.invalid/debian-security"]
    assert got[0].suites == ("bookworm", "bookworm-updates")


def test_one_line_with_options():
    got = sources.parse_one_line(
        "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example.invalid/debian sid main contrib\n"
        "deb-src http://m.example.invalid/debian sid main\n"
    )
    assert len(got) == 1 and got[0].signed_by == "/k.gpg" and got[0].components == ("main", "contrib")


def test_host_mirror_skips_security_and_prefers_debian_keyring(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text("deb http://other.example.invalid/repo stable main\n")
    (d / "debian.sources").write_text(DEB822)
    assert sources.host_debian_mirror(tmp_path) == "http://mirror.example.invalid/debian"


def test_no_mirror_is_a_clear_error(tmp_path):
    import pytest

    from imagefactory.core.errors import RecipeError

    with pytest.raises(RecipeError, match="--mirror"):
        sources.host_debian_mirror(tmp_path)
