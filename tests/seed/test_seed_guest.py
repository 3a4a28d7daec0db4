"""Guest arguments are validated before anything is written."""

from __future__ import annotations

import pytest

from imagefactory.seed.guest import GuestError, Interface, check_hostname, check_name
from tests.support.seed import run_cli, seed_args, tiny_image


@pytest.mark.parametrize("address,dev,ip,prefix", [
    ("10.0.0.11/24", "eth0", "10.0.0.11", 24),
    ("192.168.1.5/32", "br0", "192.168.1.5", 32),
    ("2001:db8::11/64", "eth0.42", "2001:db8::11", 64),
    ("10.1.2.3/255.255.0.0", "bond0", "10.1.2.3", 16),
])
def test_interface_parse(address, dev, ip, prefix):
    iface = Interface.parse(address, dev)
    assert (str(iface.ip), iface.prefix, iface.dev) == (ip, prefix, dev)


@pytest.mark.parametrize("address", ["10.0.0.300/24", "10.0.0.11/33", "10.0.0.11", "web1/24", "10.0.0.0/24",
                                     "10.0.0.255/24", "127.0.0.1/8", "0.0.0.0/0", "2001:db8::1/129"])
def test_bad_addresses(address):
    with pytest.raises(GuestError):
        Interface.parse(address, "eth0")


@pytest.mark.parametrize("dev", ["", "eth 0", "eth0/1", "a" * 16, "eth0:1", "-eth0", ".", "..", "eth0\n"])
def test_bad_device_names(dev):
    with pytest.raises(GuestError, match="device name"):
        Interface.parse("10.0.0.11/24", dev)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "x" * 65, "web 1", "-web"])
def test_bad_guest_names(name):
    with pytest.raises(GuestError):
        check_name(name)


@pytest.mark.parametrize("hostname", ["-web.example", "web_1.example", "a..b", "x" * 64 + ".example"])
def test_bad_hostnames(hostname):
    with pytest.raises(GuestError):
        check_hostname(hostname)


@pytest.mark.parametrize("option,value,message", [
    ("--ip", "10.0.0.300/24", "invalid IP/prefix"),
    ("--ip", "10.0.0.11/40", "invalid IP/prefix"),
    ("--dev", "eth0/evil", "device name"),
    ("--memory", "16M", "below the floor"),
    ("--cpu", "0%", "CPU share"),
    ("--cpu", "150%", "CPU share"),
])
def test_cli_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, option, value, message):
    image = tiny_image(tmp_path)
    code, out, err = run_cli(seed_args(image, "web1", tmp_path) + [option, value], capsys)
    assert code == 1
    assert err.startswith("imagefactory: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "vservers").exists() and not (tmp_path / "etc").exists()
