"""Recipe fuzzing: any document gives a valid Recipe or a RecipeError naming the file, never another exception.

Hypothesis generates recipe documents: known and unknown keys with right and
wrong types, odd strings (control characters, NUL, '..', huge), deep and
cyclic `extends` chains written as names and as paths, and raw or corrupted
bytes (non-UTF-8, broken TOML).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagefactory.build import recipe
from imagefactory.core.errors import RecipeError

KEYS = [*recipe.SCHEMA, "packagez", "Family", ""]
odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["debian", "ubuntu", "fedora", "sid", "trixie", "amd64", "minbase", "main", "/etc/x",
                     "../../..", "/../x", "http://[::1", "http://127.0.0.1:0/", "file:///nonexistent", "0644",
                     "77777777777777777777", "\x00", "a\nb", "x" * 300, "web.example", "-", ".", ""]),
)
scalar = st.one_of(odd_text, st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=True), st.none())


def toml_value(value) -> str:
    """A TOML literal for a (JSON-like) value; JSON string escapes are valid TOML basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


values = st.recursive(
    scalar.filter(lambda v: v is not None),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=3)),
    max_leaves=8,
)
customize_step = st.dictionaries(st.sampled_from(["write", "content", "mode", "run", "other"]), values, max_size=4)
documents = st.dictionaries(
    st.sampled_from(KEYS),
    st.one_of(values, odd_text, st.lists(odd_text, max_size=3), st.lists(customize_step, max_size=3)),
    max_size=8,
)


def render(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


def check(directory: Path, entry: Path) -> None:
    try:
        loaded = recipe.load(str(entry))
    except RecipeError as exc:
        message = str(exc)
        assert str(directory) in message or "--mirror" in message, message  # names the file
        assert "\n" not in message and len(message) < 2000, message  # one short line
        return
    assert isinstance(loaded, recipe.Recipe) and loaded.family in recipe.FAMILIES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, mutate=st.sampled_from(["none", "non-utf8", "truncate", "nul-byte"]),
       cut=st.integers(min_value=0, max_value=200))
def test_any_document_loads_or_is_a_recipe_error(doc, mutate, cut):
    data = render(doc).encode()
    if mutate == "non-utf8":
        data = data[:cut] + b"\xff\xfe\xc3" + data[cut:]
    elif mutate == "truncate":
        data = data[:cut]
    elif mutate == "nul-byte":
        data = data[:cut] + b"\x00" + data[cut:]
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "fuzz.toml"
        entry.write_bytes(data)
        check(Path(tmp), entry)


@settings(max_examples=150, deadline=None)
@given(chain=st.lists(st.tuples(st.integers(min_value=0, max_value=30), st.sampled_from(["name", "path", "abs"]),
                                documents), min_size=1, max_size=30),
       valid_base=st.booleans())
def test_extends_chains_and_cycles(chain, valid_base):
    """Each recipe r<i> extends r<target> (by name, relative path or absolute path): cycles, long chains."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i, (target, how, doc) in enumerate(chain):
            doc = {k: v for k, v in doc.items() if k != "extends"}
            ref = {"name": f"r{target}", "path": f"./r{target}.toml", "abs": f"{d}/r{target}.toml"}[how]
            (d / f"r{i}.toml").write_text(render({**doc, "extends": ref}))
        if valid_base:  # the chain may end in a good recipe (targets beyond the chain)
            for j in range(len(chain), 31):
                (d / f"r{j}.toml").write_text('family = "debian"\nsuite = "sid"\n')
        check(d, d / "r0.toml")
