"""docs/errors.md is checked against the code, so it cannot drift (issue 12)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

from imagefactory import cli
from imagefactory.core.errors import ImageFactoryError

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
ROW = re.compile(r"^\| `(\w+)` \| `([\w.]+)` \| (\d+) \| `(.+)` \|$")


def all_error_classes() -> set[tuple[str, str, int]]:
    for package in ("imagefactory", "unify", "repo", "kernel"):
        for mod in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            if not mod.name.endswith("__main__"):
                importlib.import_module(mod.name)
    found, todo = set(), [ImageFactoryError]
    while todo:
        cls = todo.pop()
        found.add((cls.__name__, cls.__module__, cls.exit_code))
        todo += cls.__subclasses__()
    return {c for c in found if not c[1].startswith("tests.")}


def documented() -> dict[tuple[str, str, int], str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, module, code, example = match.groups()
            rows[(name, module, int(code))] = example
    return rows


def test_every_error_class_is_documented_with_its_exit_code():
    rows = documented()
    code = all_error_classes()
    assert not code - set(rows), f"add to docs/errors.md: {sorted(code - set(rows))}"
    assert not set(rows) - code, f"docs/errors.md lists classes that do not exist so: {sorted(set(rows) - code)}"


def test_examples_are_one_error_line_each():
    for (name, _, _), example in documented().items():
        assert example.startswith("imagefactory: error: ") and "\n" not in example, name


def test_exit_code_table_matches_the_cli_help():
    help_codes = dict(re.findall(r"^\s+(\d+)\s+(.+)$", cli.EXIT_CODES, re.MULTILINE))
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", DOC.read_text(), re.MULTILINE))
    assert table == help_codes
    classes = {c for _, _, c in all_error_classes()}
    assert classes <= {int(c) for c in table}
