"""Seed inputs bounded to what the consumers accept (issue 12): limits, hostname, --vdir."""

from __future__ import annotations

import pytest

from imagefactory.seed.limits import MEMORY_CEILING, LimitError, Limits, parse_memory, parse_share, render
from tests.support.seed import run_cli, seed_args, tiny_image

INT64_MAX = (1 << 63) - 1


@pytest.mark.parametrize("value", ["9999999999999999999999T", "2049P", "8388608T", "1" * 5000, "1e30", "nan"])
def test_memory_beyond_what_systemd_and_lxc_take_is_refused(value):
    with pytest.raises(LimitError) as info:
        parse_memory(value)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("value", ["1e999999999", "1/3", "0x10", "1" * 5000, "inf", "50%%"])
def test_odd_cpu_shares_are_refused_quickly(value):
    with pytest.raises(LimitError):
        parse_share(value)


def test_every_rendered_figure_fits_a_signed_64_bit_value():
    rendered = render(Limits(MEMORY_CEILING, parse_share("100")), 4096)
    figures = [int(v) for v in (*rendered.systemd.values(), *rendered.vserver.values()) if v.strip().isdigit()]
    figures += [int(v) for _, v in rendered.lxc if v.isdigit()]  # (key, value) pairs in order
    assert figures and max(figures) <= INT64_MAX
    assert int(rendered.vserver["rlimits/as"]) * 4096 <= INT64_MAX + 1  # the kernel's rlimit is in bytes


@pytest.mark.parametrize("option,value,message", [
    ("--memory", "9999999999999999999999T", "above the ceiling"),
    ("--hostname", "web\nevil", "not a valid host name"),
    ("--hostname", "x" * 10_000, "not a valid host name"),
])
def test_cli_refuses_before_writing(tmp_path, capsys, option, value, message):
    code, _, err = run_cli(seed_args(tiny_image(tmp_path), "web1", tmp_path) + [option, value], capsys)
    assert code == 1 and message in err and err.count("\n") == 1 and len(err) < 400, err
    assert not (tmp_path / "vservers").exists() and not (tmp_path / "etc").exists()


def test_vdir_symlink_is_refused_by_name(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "vservers").symlink_to(real)
    code, _, err = run_cli(seed_args(tiny_image(tmp_path), "web1", tmp_path), capsys)
    assert code == 1, err
    assert "--vdir" in err and "is a symbolic link" in err and "refusing" in err and "Not a directory" not in err
    assert not any(real.iterdir()) and not (tmp_path / "etc").exists()
