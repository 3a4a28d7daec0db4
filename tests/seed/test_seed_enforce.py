"""`seed check` knows which limits this host would not enforce; `limits NAME` rewrites them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imagefactory.seed import cgroups, check, disk, lxc
from imagefactory.seed.guest import Guest, Interface
from imagefactory.seed.limits import UNIFIED, Limits, render
from tests.support.seed import run_cli, seed_args, tiny_image

LEGACY = cgroups.Layout.legacy(("cpu", "cpuacct", "memory"))


def _config(limits: Limits, layout: cgroups.Layout) -> str:
    guest = Guest("web1", "web1", Interface.parse("10.0.0.11/24", "eth0"), limits, Path("/v"), Path("/e"))
    return lxc.render(guest, render(limits, 4096, layout))[lxc.config_path("web1")]


def test_a_config_for_v2_is_not_enforced_on_v1():
    limits = Limits.parse("512M", "25%")
    assert check.enforcement("web1", _config(limits, UNIFIED), limits, UNIFIED, 4096, None) == []
    findings = check.enforcement("web1", _config(limits, UNIFIED), limits, LEGACY, 4096, None)
    assert [f.code for f in findings] == ["not-enforced", "not-enforced"]  # memory and cpu
    assert "lxc.cgroup.memory.limit_in_bytes" in findings[0].message
    assert "imagefactory limits web1" in findings[0].message


def test_missing_controller_and_bounding_set():
    limits = Limits.parse("512M", "25%", disk="1G")
    no_cpu = cgroups.Layout.legacy(("memory",))
    codes = [f.code for f in check.enforcement("web1", _config(limits, no_cpu), limits, no_cpu, 4096, None)]
    assert codes == ["no-controller", "no-disk-layer"]
    stock = "lxc.include = /usr/share/lxc/config/common.conf\n"  # common.conf's own drops only
    codes = [f.code for f in check.enforcement("web1", stock, limits, LEGACY, 4096, "image")]
    assert "capabilities" in codes and "not-enforced" in codes


def test_check_flags_a_hand_edited_guest_and_limits_rewrites_it(tmp_path, capsys):
    image = tiny_image(tmp_path)
    code, _, err = run_cli(seed_args(image, "web1", tmp_path), capsys)
    assert code == 0, err
    config = tmp_path / "etc/web1" / lxc.config_path("web1")
    layout = cgroups.detect()
    if layout.version_of("memory") is None:  # nothing to enforce it with: check must say so, not stay quiet
        code, out, _ = run_cli(["seed", "check", "--confdir", str(tmp_path / "etc")], capsys)
        assert code == 1 and "no memory controller on this host" in out
        return
    # What an older seed wrote on every host: cgroup v2 keys only. Make it the other version's keys.
    other = LEGACY if layout.version_of("memory") == cgroups.V2 else UNIFIED
    text = config.read_text()
    keys = [line for line in text.splitlines() if line.startswith("lxc.cgroup")]
    wrong = render(Limits.parse("512M", "25%"), os.sysconf("SC_PAGE_SIZE"), other).lxc
    config.write_text("\n".join(line for line in text.splitlines() if line not in keys) + "\n"
                      + "".join(f"{k} = {v}\n" for k, v in wrong if k.startswith("lxc.cgroup")))
    code, out, _ = run_cli(["seed", "check", "--confdir", str(tmp_path / "etc")], capsys)
    assert code == 1 and "memory limit not enforced here" in out
    code, out, err = run_cli(["limits", "web1", "--confdir", str(tmp_path / "etc")], capsys)
    assert code == 0, err
    code, out, _ = run_cli(["seed", "check", "--confdir", str(tmp_path / "etc")], capsys)
    assert code == 0 and "not enforced" not in out
    assert config.read_text() == text  # the same file seeding wrote


def test_quota_mode_is_refused_where_the_kernel_has_no_quotas(tmp_path, capsys):
    ok, why = disk.quota_available(tmp_path)
    image = tiny_image(tmp_path)
    if ok:  # a host with project quotas takes the quota way (the refusal is proven where there are none)
        code, _, err = run_cli(seed_args(image, "web1", tmp_path, "--disk", "50M", "--disk-mode", "quota"), capsys)
        assert code == 0, err
        return
    code, _, err = run_cli(seed_args(image, "web1", tmp_path, "--disk", "50M", "--disk-mode", "quota"), capsys)
    assert code == 6 and "no project quota" in err and "--disk-mode image" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "vservers/web1").exists() and not (tmp_path / "etc/web1").exists()
    own = tmp_path / "vservers/.own"
    assert not own.exists() or not any(own.iterdir())


def test_a_killed_seeds_own_layer_is_removed_by_the_next_seed(tmp_path, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    own = tmp_path / "vservers/.own"
    stale = disk.Layer(tmp_path / f"vservers/.web1.partial-{gone.pid}")
    own.mkdir(parents=True)
    stale.image.write_bytes(b"\0" * 4096)
    stale.record.write_text("{}")
    stale.upper.mkdir(parents=True)
    code, _, err = run_cli(seed_args(tiny_image(tmp_path), "web1", tmp_path), capsys)
    assert code == 0, err
    assert list(own.iterdir()) == []


def test_limits_reads_an_older_guest_without_a_limits_record(tmp_path, capsys):
    code, _, err = run_cli(seed_args(tiny_image(tmp_path), "web1", tmp_path), capsys)
    assert code == 0, err
    record = tmp_path / "etc/web1/apps/imagefactory/limits.json"
    record.unlink()  # as seeded before limits.json existed: rlimits/ and sched/ only
    code, out, err = run_cli(["limits", "web1", "--confdir", str(tmp_path / "etc"), "--cap-add", "sys_time",
                              "--json"], capsys)
    assert code == 0, err
    assert Limits.from_json(record.read_text()) == Limits.parse("512M", "25%", cap_add=("SYS_TIME",))
    assert "sys_time" not in (tmp_path / "etc/web1" / lxc.config_path("web1")).read_text().split("lxc.cap.drop =")[-1]
