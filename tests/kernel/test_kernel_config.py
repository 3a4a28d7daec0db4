"""Kconfig fragment parsing, merging and the 'did every option stick' check."""

from __future__ import annotations

import pytest

from kernel.config import merge_requests, parse_config, render_fragment, unmet_options


def test_parse_set_unset_and_strings():
    cfg = parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\nCONFIG_D=0x10\n# comment\nCONFIG_E=n\n')
    assert cfg == {"CONFIG_A": "y", "CONFIG_B": None, "CONFIG_C": '"x y"', "CONFIG_D": "0x10", "CONFIG_E": None}


def test_bad_line_named():
    with pytest.raises(ValueError, match="frag:2"):
        parse_config("CONFIG_A=y\nEXT4=y\n", "frag")


def test_later_fragment_wins_and_render_is_canonical():
    merged = merge_requests([{"CONFIG_A": "y", "CONFIG_B": "y"}, {"CONFIG_A": None}])
    assert render_fragment(merged) == "# CONFIG_A is not set\nCONFIG_B=y\n"


def test_unmet_options_names_each_mismatch():
    request = {"CONFIG_A": "y", "CONFIG_B": None, "CONFIG_C": "y"}
    final = {"CONFIG_A": "y", "CONFIG_B": "y"}
    assert unmet_options(request, final) == ["CONFIG_B: asked not set, got y", "CONFIG_C: asked y, got not set"]
    assert unmet_options({"CONFIG_A": "y"}, {"CONFIG_A": "y"}) == []
