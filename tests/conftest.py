"""Shared pytest fixtures and markers."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.seed import LxcHost, lxc_bridge


def pytest_collection_modifyitems(config, items):
    """Skip root-marked tests clearly when not root (never silently pass)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory) -> dict:
    """A passphrase-less ed25519 signing key in its own GNUPGHOME, exported to a key file."""
    need_tool("gpg", "gpgv")
    home = Path(tempfile.mkdtemp(prefix="if-tk-", dir="/tmp"))  # short: gpg-agent socket paths are limited
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Test <t@example.invalid>",
                    "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    out = tmp_path_factory.mktemp("key")
    secret = out / "secret.asc"
    secret.write_bytes(subprocess.run(["gpg", "--batch", "--armor", "--export-secret-keys"], env=env,
                                      check=True, capture_output=True).stdout)
    public = out / "public.gpg"
    public.write_bytes(subprocess.run(["gpg", "--batch", "--export"], env=env, check=True,
                                      capture_output=True).stdout)
    yield {"home": home, "secret": secret, "public": public, "env": env}
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def other_key(tmp_path_factory) -> Path:
    """A second, unrelated secret key file (for wrong-key tests)."""
    home = Path(tempfile.mkdtemp(prefix="if-tk2-", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Other <o@example.invalid>",
                    "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    secret = tmp_path_factory.mktemp("otherkey") / "other.asc"
    secret.write_bytes(subprocess.run(["gpg", "--batch", "--armor", "--export-secret-keys"], env=env,
                                      check=True, capture_output=True).stdout)
    yield secret
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)



@pytest.fixture
def lxc_host(request, tmp_path) -> Iterator[LxcHost]:
    """Guests LXC really runs, under tmp_path, on a bridge of their own; all stopped afterwards.
    Only for tests marked root: the marker (pytest_collection_modifyitems) is what skips them elsewhere."""
    assert request.node.get_closest_marker("root") is not None, "a test using lxc_host must be marked root"
    need_tool("lxc-start", "lxc-execute", "lxc-attach", "lxc-stop", "lxc-info", "ip", "mkfs.ext4", "busybox")
    with lxc_bridge() as bridge:
        host = LxcHost(tmp_path, bridge)
        try:
            yield host
        finally:
            host.cleanup()
