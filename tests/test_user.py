"""uid/gid maps at the checkpoint, and a rootless spawn by a real unprivileged user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import textwrap
from pathlib import Path

import pykka
import pyroute2
import pytest

from linx_otp import process as P
from linx_otp.checkpoint import user as U
from linx_otp.errors import LinxOSError, LinxValueError

TIMEOUT = 10
ROOT = Path(__file__).resolve().parent.parent


def parked_in_user_namespace(box, argv=("/bin/true",), namespaces=("user",)):
    session = P.spawn(argv=list(argv), namespaces=list(namespaces), owner=box, stdio="devnull")
    return session, box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]


def test_maps_are_written_and_read_back(box):
    session, pid = parked_in_user_namespace(box)
    assert U.read_uid_map(pid) == [] and U.read_gid_map(pid) == []
    U.setup_maps(pid, uid=[(0, 1000, 1), (1, 100000, 1000)], gid=[(0, 1000, 1)])
    assert U.read_uid_map(pid) == [U.MapEntry(0, 1000, 1), U.MapEntry(1, 100000, 1000)]
    assert U.read_gid_map(pid) == [U.MapEntry(0, 1000, 1)]
    assert Path(f"/proc/{pid}/setgroups").read_text().strip() == "deny"
    session.stop()


def test_the_kernel_allows_one_write_per_map(box):
    session, pid = parked_in_user_namespace(box)
    U.set_uid_map(pid, [(0, 0, 1)])
    with pytest.raises(LinxOSError) as raised:
        U.set_uid_map(pid, [(0, 0, 1)])
    assert raised.value.reason == ("set_uid_map", "eperm") and raised.value.errno == 1
    U.deny_setgroups(pid)
    U.deny_setgroups(pid)  # idempotent
    session.stop()


def test_overlapping_ranges_are_einval_and_a_gone_pid_is_enoent(box):
    session, pid = parked_in_user_namespace(box)
    with pytest.raises(LinxOSError) as raised:
        U.set_uid_map(pid, [(0, 1000, 10), (5, 2000, 10)])
    assert raised.value.reason == ("set_uid_map", "einval")
    session.stop()
    with pytest.raises(LinxOSError) as raised:
        U.set_uid_map(pid, [(0, 0, 1)])
    assert raised.value.reason == ("set_uid_map", "enoent")


@pytest.mark.parametrize(
    ("mappings", "reason"),
    [
        ([], ("bad_map", "empty")),
        ("0 0 1", ("bad_map", "not_a_list")),
        ([(0, 0, 0)], ("bad_map", ("bad_entry", (0, 0, 0)))),
        ([(-1, 0, 1)], ("bad_map", ("bad_entry", (-1, 0, 1)))),
        ([(0, 0)], ("bad_map", ("bad_entry", (0, 0)))),
    ],
)
def test_bad_maps_are_refused_before_any_write(box, mappings, reason):
    session, pid = parked_in_user_namespace(box)
    with pytest.raises(LinxValueError) as raised:
        U.setup_maps(pid, uid=[(0, 0, 1)], gid=mappings)
    assert raised.value.reason == reason
    assert U.read_uid_map(pid) == []  # the good uid map was not written either
    assert Path(f"/proc/{pid}/setgroups").read_text().strip() == "allow"
    with pytest.raises(LinxValueError) as raised:
        U.setup_maps(pid, uid=[(0, 0, 1)], gid=[(0, 0, 1)], setgroups="maybe")
    assert raised.value.reason == ("bad_setgroups", "maybe")
    session.stop()


# -- rootless: an ordinary user spawns with `user` and other namespaces ---------------------------


@pytest.fixture
def importable_copy(readable_directory):
    """linx_otp and pykka copied where the test user can read them (this Python's own
    installation may sit under a private home directory)."""
    tmp_path = readable_directory
    site = tmp_path / "site"
    shutil.copytree(ROOT / "linx_otp", site / "linx_otp", ignore=shutil.ignore_patterns("__pycache__"))
    for package in (pykka, pyroute2):
        shutil.copytree(
            Path(package.__file__).parent, site / package.__name__, ignore=shutil.ignore_patterns("__pycache__")
        )
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return site


ROOTLESS = textwrap.dedent("""
    import os, linx_otp
    from linx_otp import process as P, user as U, mount as M
    session = P.spawn(
        argv=["/bin/sh", "-c", "echo uid=$(id -u) gid=$(id -g) host=$(hostname) pid=$$ procs: /proc/[0-9]*"],
        namespaces=["user", "pid", "mount", "uts", "ipc", "net"],
    )
    _, _, host_pid = linx_otp.receive(("linx_process", "ready"), timeout=10)
    U.map_self(host_pid)
    print("outside", open(f"/proc/{host_pid}/status").read().split("Uid:")[1].split()[0])
    M.mount_proc(host_pid)
    M.hostname("rootless", in_pid=host_pid)
    P.proceed(session)
    print("outcome", P.wait(session, 10))
    session.stop()
""")


def run_as(user: pwd.struct_passwd, site: Path, directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The system Python 3.11 as ``user``, importing linx_otp from ``site``."""
    return subprocess.run(
        ["/usr/bin/python3.11", *arguments],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env={"PYTHONPATH": str(site), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_ordinary_user_spawns_rootless(test_user, importable_copy, readable_directory):
    result = run_as(test_user, importable_copy, readable_directory, "-c", ROOTLESS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"outside {test_user.pw_uid}" in lines
    assert "uid=0 gid=0 host=rootless pid=1 procs: /proc/1" in lines  # root inside; its own /proc
    assert "outcome ('exited', 0)" in lines


def test_a_workload_in_a_user_namespace_is_root_inside_once_mapped(box):
    session = P.spawn(argv=["/bin/sh", "-c", "echo $(id -u) $(id -g)"], namespaces=["user"], stdio="pty", owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    U.setup_maps(pid, uid=[(0, 100000, 65536)], gid=[(0, 100000, 65536)])
    P.proceed(session)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    output = b"".join(event[2] for event in box.flush() if event[1] == "pty_out")
    assert output == b"0 0\r\n"  # root inside, not the overflow uid 65534
    session.stop()


def test_an_unmapped_root_stays_as_it_is(box):
    session = P.spawn(argv=["/bin/sh", "-c", "id -u"], namespaces=["user"], stdio="pty", owner=box, auto_proceed=True)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    assert b"".join(event[2] for event in box.flush() if event[1] == "pty_out") == b"65534\r\n"
    session.stop()


def test_the_container_example_runs_unprivileged(test_user, importable_copy, readable_directory):
    example = readable_directory / "container.py"
    shutil.copy(ROOT / "examples" / "container.py", example)
    example.chmod(0o755)
    checks = "echo host=$(hostname) uid=$(id -u) pid=$$; echo root: $(ls /); echo procs: /proc/[0-9]*; echo x > /dev/null && echo devnull-ok"
    result = run_as(test_user, importable_copy, readable_directory, str(example), "--command", checks)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert "unprivileged: no cgroup and no veth (they need root on the host)" in lines
    assert "host=container uid=0 pid=1" in lines
    assert "root: bin dev etc proc root sys tmp" in lines
    assert "procs: /proc/1" in lines and "devnull-ok" in lines
    assert "container: ('exited', 0)" in lines


def test_linx_otp_spawn_map_root_user_as_an_ordinary_user(test_user, importable_copy, readable_directory):
    script = "echo uid=$(id -u) host=$(hostname) $$ /proc/[0-9]*"
    command = [
        "-m",
        "linx_otp",
        "spawn",
        "-r",
        "--ns",
        "pid,mount,net",
        "--hostname",
        "mine",
        "--mount-proc",
        "--",
        "sh",
        "-c",
        script,
    ]
    result = run_as(test_user, importable_copy, readable_directory, *command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "uid=0 host=mine 1 /proc/1"
