"""The generated LXC and systemd-nspawn files, checked by the real tools' own parsers.

Each check has a negative control (a deliberately broken copy must be
rejected) so a tool that silently ignored its input could not pass the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagefactory.seed import caps, cgroups, limits, lxc, nspawn
from imagefactory.seed.guest import Guest, Interface
from tests.support import need_tool
from tests.support.seed import run_cli, seed_args, tiny_image


@pytest.fixture
def conf(tmp_path, capsys) -> Path:
    image = tiny_image(tmp_path)
    code, _, err = run_cli(seed_args(image, "web1", tmp_path, "--hostname", "web1.example.net"), capsys)
    assert code == 0, err
    return tmp_path / "etc/web1"


def _lxc_info(lxcpath: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["lxc-info", "-P", str(lxcpath), "-n", "web1", *args],
                          capture_output=True, text=True, timeout=30)


def _our_keys(config: Path) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in config.read_text().splitlines()
                if " = " in line and not line.startswith("#"))


def test_lxc_parses_the_config_and_reads_back_our_values(conf):
    need_tool("lxc-info")
    lxcpath = conf / "lxc"
    assert _lxc_info(lxcpath).returncode == 0
    ours = _our_keys(lxcpath / "web1/config")
    layout = cgroups.detect()
    memory_key = {1: "lxc.cgroup.memory.limit_in_bytes", 2: "lxc.cgroup2.memory.max"}.get(layout.version_of("memory"))
    assert memory_key in ours  # the key this host's hierarchy for memory takes
    for key in ("lxc.uts.name", "lxc.net.0.link", "lxc.net.0.ipv4.address",
                *(k for k in ours if k.startswith(("lxc.cgroup.", "lxc.cgroup2.")))):
        result = _lxc_info(lxcpath, "-c", key)
        assert result.returncode == 0 and result.stdout.strip() == f"{key} = {ours[key]}"
    assert _lxc_info(lxcpath, "-c", "lxc.rootfs.path").stdout.strip() == \
        f"lxc.rootfs.path = {ours['lxc.rootfs.path'].removeprefix('dir:')}"
    # The bounding set: LXC reads back exactly our list (common.conf's was cleared first).
    drop = _lxc_info(lxcpath, "-c", "lxc.cap.drop").stdout.split("=", 1)[1].split()
    assert {c.upper() for c in drop} == caps.DEFAULT_DROP


@pytest.mark.parametrize("layout", [limits.UNIFIED, cgroups.Layout.legacy(("cpu", "memory"))], ids=["v2", "v1"])
def test_lxc_accepts_the_keys_of_either_layout(layout, tmp_path):
    """Configs for a cgroup v2 host (and a v1 one) parse with liblxc and read back equal."""
    need_tool("lxc-info")
    guest = Guest("web1", "web1.example.net", Interface.parse("10.0.0.11/24", "eth0"),
                  limits.Limits.parse("512M", "25%", disk="1G", cap_add=("net_admin",)), tmp_path / "v", tmp_path / "e")
    files = lxc.render(guest, limits.render(guest.limits, 4096, layout))
    config = tmp_path / "lxc" / lxc.config_path("web1").removeprefix("lxc/")
    config.parent.mkdir(parents=True)
    config.write_text(files[lxc.config_path("web1")])
    ours = _our_keys(config)
    cgroup_keys = [k for k in ours if k.startswith(("lxc.cgroup.", "lxc.cgroup2."))]
    assert cgroup_keys and all(k.startswith("lxc.cgroup2." if layout is limits.UNIFIED else "lxc.cgroup.")
                               for k in cgroup_keys)
    for key in cgroup_keys:
        result = _lxc_info(tmp_path / "lxc", "-c", key)
        assert result.returncode == 0 and result.stdout.strip() == f"{key} = {ours[key]}"
    rootfs = _lxc_info(tmp_path / "lxc", "-c", "lxc.rootfs.path").stdout.strip()
    assert rootfs == f"lxc.rootfs.path = {guest.root}:{tmp_path}/v/.own/web1/upper"  # lxc-info drops "overlay:"


def test_lxc_rejects_a_broken_copy(conf, tmp_path):
    need_tool("lxc-info")
    broken = tmp_path / "broken"
    shutil.copytree(conf / "lxc", broken)
    config = broken / "web1/config"
    config.write_text(config.read_text().replace("ipv4.address = 10.0.0.11/24", "ipv4.address = 10.0.0.300/24"))
    assert _lxc_info(broken).returncode != 0


def _verify_unit(units: Path) -> str:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "systemd-nspawn@web1.service")],
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def _units_dir(tmp_path: Path, dropin: Path) -> Path:
    """The stock systemd-nspawn@.service plus our drop-in, as systemd would combine them."""
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(Path("/lib/systemd/system/systemd-nspawn@.service"), units)
    shutil.copytree(dropin.parent, units / dropin.parent.name)
    return units


def test_systemd_accepts_the_limits_dropin(conf, tmp_path):
    need_tool("systemd-analyze", "systemd-nspawn")
    dropin = conf / nspawn.dropin_path("web1")
    units = _units_dir(tmp_path, dropin)
    assert nspawn.DROPIN not in _verify_unit(units)

    bad = units / dropin.parent.name / nspawn.DROPIN
    bad.write_text(bad.read_text().replace("CPUQuota=25%", "CPUQuota=lots").replace("MemoryMax=", "MemoryMaxx="))
    complaints = _verify_unit(units)
    assert "Invalid CPU quota" in complaints and "MemoryMaxx" in complaints


def _nspawn_settings_complaints(machines: Path, settings: str) -> str:
    """Let systemd-nspawn parse NAME.nspawn beside a root without /usr: it refuses to start after parsing."""
    (machines / "web1").mkdir(exist_ok=True)
    (machines / "web1.nspawn").write_text(settings)
    result = subprocess.run(["systemd-nspawn", "-q", "--register=no", "--settings=trusted",
                             "-D", str(machines / "web1"), "/bin/true"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0  # never actually started
    return "\n".join(line for line in result.stderr.splitlines() if "web1.nspawn" in line)


@pytest.mark.root
def test_systemd_nspawn_accepts_the_settings_file(conf, tmp_path):
    need_tool("systemd-nspawn")
    settings = (conf / nspawn.settings_path("web1")).read_text()
    assert _nspawn_settings_complaints(tmp_path, settings) == ""
    broken = settings.replace("PrivateUsersOwnership=map", "PrivateUsersOwnership=sideways")
    complaints = _nspawn_settings_complaints(tmp_path, broken + "Bogus=1\n")
    assert "user namespace ownership" in complaints and "Bogus" in complaints


def test_paths_match_the_tools_conventions():
    assert lxc.config_path("web1") == "lxc/web1/config"  # lxc-start -P CONF/lxc -n web1
    assert nspawn.dropin_path("web1").startswith("nspawn/systemd-nspawn@web1.service.d/")


def test_systemd_accepts_the_v2_dropin_and_capabilities(tmp_path):
    """For a cgroup v2 host the drop-in also carries MemoryHigh=; systemd's own parser takes it."""
    need_tool("systemd-analyze", "systemd-nspawn")
    guest = Guest("web1", "web1.example.net", Interface.parse("10.0.0.11/24", "eth0"),
                  limits.Limits.parse("512M", "25%", cap_add=("sys_time",)), tmp_path / "v", tmp_path / "e")
    files = nspawn.render(guest, limits.render(guest.limits, 4096, limits.UNIFIED), boot=False)
    dropin = tmp_path / "conf" / nspawn.dropin_path("web1")
    dropin.parent.mkdir(parents=True)
    dropin.write_text(files[nspawn.dropin_path("web1")])
    assert "MemoryHigh=" in dropin.read_text()
    units = _units_dir(tmp_path, dropin)
    assert nspawn.DROPIN not in _verify_unit(units)
    settings = files[nspawn.settings_path("web1")]
    lines = dict(line.split("=", 1) for line in settings.splitlines() if "Capability=" in line)
    assert lines["Capability"] == "CAP_SYS_TIME" and "CAP_SYS_TIME" not in lines["DropCapability"].split()
