from pathlib import Path

import pytest

from imagefactory.build import recipe
from imagefactory.core.errors import RecipeError


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def test_shipped_recipes_load():
    names = {r.name: r for r in recipe.list_recipes()}
    for suite in ("sid", "trixie", "bookworm"):
        r = names[f"debian-{suite}"]
        assert (r.family, r.suite, r.variant, r.architecture) == ("debian", suite, "minbase", "amd64")
        assert r.mirror == ""  # taken from the host's apt sources, never written into the repo
    web = names["debian-sid-web"]
    assert web.suite == "sid" and "curl" in web.packages and web.customize


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "bad", 'family = "debian"\nsuite = "sid"\npackagez = ["x"]\n')
    with pytest.raises(RecipeError, match=r"bad\.toml: unknown key 'packagez'"):
        recipe.load(str(p))


def test_wrong_type(tmp_path):
    p = write(tmp_path, "bad", 'family = "debian"\nsuite = "sid"\npackages = "curl"\n')
    with pytest.raises(RecipeError, match="key 'packages' must be a list"):
        recipe.load(str(p))


def test_unknown_recipe_name(tmp_path):
    write(tmp_path, "one", 'family = "debian"\nsuite = "sid"\n')
    with pytest.raises(RecipeError, match="unknown recipe 'nope' \\(known: .*debian-sid.*one"):
        recipe.load("nope", tmp_path)


def test_a_recipe_file_elsewhere_can_extend_a_shipped_one(tmp_path):
    p = write(tmp_path, "mine", 'extends = "debian-sid"\npackages = ["curl"]\n')
    r = recipe.load(str(p))
    assert r.suite == "sid" and r.packages == ("curl",) and r.name == "mine"


def test_bad_variant_and_family(tmp_path):
    p = write(tmp_path, "v", 'family = "debian"\nsuite = "sid"\nvariant = "huge"\n')
    with pytest.raises(RecipeError, match="key 'variant'"):
        recipe.load(str(p))
    p = write(tmp_path, "f", 'family = "arch"\nsuite = "x"\n')
    with pytest.raises(RecipeError, match="key 'family'"):
        recipe.load(str(p))


def test_extends_concatenates_lists_and_overrides_scalars(tmp_path):
    write(tmp_path, "base", 'family = "debian"\nsuite = "sid"\npackages = ["a"]\nhostname = "b"\n')
    write(tmp_path, "child", 'extends = "base"\npackages = ["c"]\nhostname = "c"\n')
    r = recipe.load("child", tmp_path)
    assert r.packages == ("a", "c") and r.hostname == "c" and r.suite == "sid" and r.name == "child"


def test_extends_cycle(tmp_path):
    write(tmp_path, "a", 'extends = "b"\n')
    write(tmp_path, "b", 'extends = "a"\n')
    with pytest.raises(RecipeError, match="cycle"):
        recipe.load("a", tmp_path)


def test_customize_validation(tmp_path):
    p = write(tmp_path, "c", 'family = "debian"\nsuite = "sid"\n[[customize]]\nwrite = "etc/x"\n')
    with pytest.raises(RecipeError, match="absolute guest path"):
        recipe.load(str(p))
    p = write(tmp_path, "d", 'family = "debian"\nsuite = "sid"\n[[customize]]\nwrite = "/x"\nrun = "y"\n')
    with pytest.raises(RecipeError, match="exactly one of"):
        recipe.load(str(p))
    p = write(tmp_path, "e", 'family = "debian"\nsuite = "sid"\n[[customize]]\nwrite = "/x"\nmode = "9x"\n')
    with pytest.raises(RecipeError, match="octal"):
        recipe.load(str(p))


def test_invalid_toml(tmp_path):
    p = write(tmp_path, "t", 'family = "debian\n')
    with pytest.raises(RecipeError, match="invalid TOML"):
        recipe.load(str(p))


def test_digest_changes_with_content(tmp_path):
    a = recipe.load(str(write(tmp_path, "a", 'family = "debian"\nsuite = "sid"\n')))
    b = recipe.load(str(write(tmp_path, "b", 'family = "debian"\nsuite = "sid"\npackages = ["x"]\n')))
    assert a.digest != b.digest and len(a.digest) == 64


def test_schema_is_derived_from_the_recipe_fields():
    """One source: every TOML key is a Recipe field with kind and help (plus `extends`), and the
    `recipes --keys` listing prints exactly those."""
    import dataclasses
    import json
    import subprocess
    import sys

    fields = {f.name for f in dataclasses.fields(recipe.Recipe) if "kind" in f.metadata}
    assert set(recipe.SCHEMA) == fields | {"extends"}
    assert recipe.MERGED == {"packages", "exclude_paths", "customize"}
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "recipes", "--keys", "--json"],
                          capture_output=True, text=True, check=True)
    listed = json.loads(proc.stdout)
    assert set(listed) == set(recipe.SCHEMA) and listed["packages"]["kind"] == "a list of strings"


def test_wrong_kind_names_the_key_and_both_kinds(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('family = "debian"\nsuite = "sid"\nrepo_gpgcheck = "yes"\n')
    with pytest.raises(RecipeError, match="key 'repo_gpgcheck' must be a boolean, not a string"):
        recipe.load(str(bad))
    bad.write_text('family = "debian"\nsuite = "sid"\npackages = ["a", 1]\n')
    with pytest.raises(RecipeError, match="must be a list of strings, not a list holding a string, an integer"):
        recipe.load(str(bad))
    bad.write_text('family = "debian"\nsuite = "sid"\n[[customize]]\nrun = 1\n')
    with pytest.raises(RecipeError, match=r"customize\[0\]: key 'run' must be a string"):
        recipe.load(str(bad))


def test_kinds_are_exact():
    from imagefactory.core.tomlcheck import Kind

    for kind, good, bad in [(Kind.STRING, "x", True), (Kind.BOOL, False, "false"), (Kind.STRINGS, ["a"], "a"),
                            (Kind.TABLES, [{}], {}), (Kind.TABLE, {"a": 1}, [{}])]:
        kind.check(good, "f.toml", "k")
        with pytest.raises(RecipeError, match=f"key 'k' must be {kind.value}"):
            kind.check(bad, "f.toml", "k")
