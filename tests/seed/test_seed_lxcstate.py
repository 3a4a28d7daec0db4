"""LXC's state of many guests from one read of /proc/net/unix (runtime.lxc_states).

The unit tests run on lines captured from this host's /proc/net/unix (Linux 6.x, LXC 5.0.2): real
LXC command sockets, the hashed name LXC gives a long lxcpath, and the sockets that must not count
(an accepted connection left after its listener closed, a bound socket that does not listen, a
datagram socket, a path socket). Stand-in monitors (listeners on the names LXC would use) show
when lxc-info is still run. The root test runs real containers and compares with lxc-info.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imagefactory.seed import runtime
from tests.support import need_tool
from tests.support.seed import LxcHost

CAPTURED = b"""\
Num       RefCount Protocol Flags    Type St Inode Path
00000000ca1801bf: 00000002 00000000 00010000 0001 01 2466191 /tmp/lxs/a path.sock
0000000067ce93fe: 00000003 00000000 00000000 0001 03   115
00000000d10116ac: 00000003 00000000 00000000 0001 03 2466189 @/etc/vservers/web 1/lxc/web 1/command
0000000086c872ae: 00000002 00000000 00010000 0001 01 2466187 @/etc/vservers/web 1/lxc/web 1/command
00000000c0cce95e: 00000002 00000000 00010000 0001 01 2464318 @lxc/b3deaae732c7b559/command
00000000401fb5f4: 00000002 00000000 00010000 0001 01 2429768 @/tmp/lxs/etc/g0100/lxc/g0100/command
000000006d898c6b: 00000003 00000000 00000000 0001 03 2471300 @/etc/vservers/gone/lxc/gone/command
000000005b423071: 00000002 00000000 00000000 0001 01 2466192 @/etc/vservers/bound/lxc/bound/command
0000000046ffc7a2: 00000002 00000000 00000000 0002 01 2466190 @/etc/vservers/dgram/lxc/dgram/command
"""
# LXC 5.0.2 bound @lxc/b3deaae732c7b559/command for `lxc-execute -P DEEP -n longname` (captured above).
DEEP = "/tmp/lxs/" + "deep" * 20 + "/etc/longname/lxc"


def test_listening_command_sockets_are_read_from_the_table():
    assert runtime.listening_sockets(CAPTURED) == {
        b"/etc/vservers/web 1/lxc/web 1/command",  # a space stays in the name
        b"lxc/b3deaae732c7b559/command",
        b"/tmp/lxs/etc/g0100/lxc/g0100/command",
    }
    assert runtime.listening_sockets(CAPTURED.split(b"\n")[0]) == frozenset()  # header only


def test_command_socket_names_as_lxc_makes_them():
    assert runtime.command_socket("/etc/vservers/web1/lxc", "web1") == b"/etc/vservers/web1/lxc/web1/command"
    assert runtime.command_socket("/etc/vservers/web1/lxc//", "web1") == b"/etc/vservers/web1/lxc/web1/command"
    assert runtime.command_socket(DEEP, "longname") == b"lxc/b3deaae732c7b559/command"  # LXC's own
    # sun_path is 108 bytes: a leading NUL, the name, and room for a trailing NUL; longer is hashed
    fits = "/" + "x" * (105 - len("/g/command") - 1)
    assert len(runtime.command_socket(fits, "g")) == 105
    hashed = runtime.command_socket(fits + "x", "g")
    assert hashed.startswith(b"lxc/") and hashed.endswith(b"/command") and len(hashed) == 28


def _guest(tmp: Path, name: str, config: bool = True) -> tuple[Path, str]:
    lxcpath = tmp / name / "lxc"
    (lxcpath / name).mkdir(parents=True)
    if config:
        (lxcpath / name / "config").write_text("lxc.uts.name = x\n")
    return lxcpath, name


@contextmanager
def _monitor(lxcpath: Path, name: str, answer: bytes) -> Iterator[list[bytes]]:
    """A listener where LXC's monitor of lxcpath/name would listen, answering each request with
    `answer`; yields the requests it got."""
    requests: list[bytes] = []
    done = threading.Event()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(b"\0" + runtime.command_socket(str(lxcpath), name))
    server.listen()
    server.settimeout(0.05)

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                requests.append(conn.recv(64))
                conn.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield requests
    finally:
        done.set()
        thread.join()
        server.close()


def test_monitors_are_asked_and_lxc_info_only_when_they_do_not_answer_as_lxc(tmp_path, monkeypatch):
    frozen, denied, garbled = (_guest(tmp_path, n) for n in ("frozen", "denied", "garbled"))
    down, bare = _guest(tmp_path, "down"), _guest(tmp_path, "bare", config=False)
    asked: list[str] = []
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(runtime, "_lxc_info_state", lambda lxcpath, name: asked.append(name) or "RUNNING")
    with _monitor(*frozen, runtime.LXC_CMD.pack(0, 0, 6)) as requests, \
            _monitor(*denied, runtime.LXC_CMD.pack(-1, 0, 0)), _monitor(*garbled, b"\x02"):
        guests = [frozen, denied, garbled, down, bare]
        assert runtime.lxc_states(guests) == ["FROZEN", "RUNNING", "RUNNING", "STOPPED", None]
        assert sorted(asked) == ["denied", "garbled"]  # the others needed no lxc-info
        assert requests == [runtime.LXC_CMD.pack(runtime.LXC_CMD_GET_STATE, 0, 0)]
        assert runtime.lxc_state(*frozen) == "FROZEN" and runtime.lxc_state(*down) == "STOPPED"

        monkeypatch.setattr(runtime, "UNIX_SOCKETS", tmp_path / "no-such-table")
        asked.clear()
        assert runtime.lxc_states(guests) == ["FROZEN", "RUNNING", "RUNNING", "STOPPED", None]
        assert sorted(asked) == ["denied", "garbled"]  # without the table every monitor is tried

    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert runtime.lxc_states([frozen, down]) == [None, None]  # no LXC installed


def _lxc(tool: str, lxcpath: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-P", str(lxcpath), "-n", name, *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.root
def test_states_of_real_containers_agree_with_lxc_info(lxc_host):
    """Two real containers, one whose command socket name LXC hashes (a long lxcpath): STOPPED,
    RUNNING, FROZEN and STOPPED again, as lxc-info says each time."""
    need_tool("lxc-freeze", "lxc-unfreeze")
    deep = LxcHost(lxc_host.tmp / ("deep" * 20), lxc_host.bridge)
    try:
        lxc_host.seed("plain")
        deep.seed("hashed")
        pairs = [(lxc_host.confdir / "plain/lxc", "plain"), (deep.confdir / "hashed/lxc", "hashed")]
        names = [runtime.command_socket(str(p), n) for p, n in pairs]
        assert not names[0].startswith(b"lxc/") and names[1].startswith(b"lxc/")

        def agreed() -> list[str | None]:
            ours = runtime.lxc_states(pairs)
            assert ours == [_lxc("lxc-info", p, n, "-sH").stdout.strip() for p, n in pairs]
            return ours

        assert agreed() == ["STOPPED", "STOPPED"]
        lxc_host.start("plain")
        deep.start("hashed")
        assert agreed() == ["RUNNING", "RUNNING"]
        assert set(names) <= runtime.listening_sockets(runtime.UNIX_SOCKETS.read_bytes())
        assert lxc_host.guests()["plain"]["state"] == "RUNNING"

        assert _lxc("lxc-freeze", *pairs[1]).returncode == 0
        assert agreed() == ["RUNNING", "FROZEN"]
        assert [runtime.ask_monitor(n) for n in names] == ["RUNNING", "FROZEN"]  # no lxc-info needed
        assert deep.guests()["hashed"]["state"] == "FROZEN"
        assert _lxc("lxc-unfreeze", *pairs[1]).returncode == 0

        for lxcpath, name in pairs:
            assert _lxc("lxc-stop", lxcpath, name, "-k").returncode == 0
        assert agreed() == ["STOPPED", "STOPPED"]
        assert not set(names) & runtime.listening_sockets(runtime.UNIX_SOCKETS.read_bytes())
        assert lxc_host.guests()["plain"]["state"] == "STOPPED"
    finally:
        deep.cleanup()
