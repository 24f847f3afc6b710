"""``linx_otp.Setup`` (docs/hardening.md, "One checkpoint set-up"): one checkpoint set-up for the daemon, ``linx-otp spawn`` and
``P.spawn(setup=)``; and the checkpoint package's old import paths."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import test_user as rootless
from support import cgroup_roots, needs_root, parked_at_the_checkpoint, run_scoped_name

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.checkpoint.setup import Limits, MountEntry, Setup, Veth, open_in_root
from linx_otp.daemon.tree import SETUP_KEYS, TreeError, parse_text
from linx_otp.errors import LinxOSError, LinxValueError

TIMEOUT = 20
BUSYBOX = Path("/bin/busybox")

CHECKPOINT_MODULES = ("netlink", "user", "cgroup", "mount", "namespaces", "seccomp", "profiles")


@pytest.mark.parametrize("name", CHECKPOINT_MODULES)
def test_the_old_import_path_is_the_same_module(name):
    old = importlib.import_module(f"linx_otp.{name}")
    new = importlib.import_module(f"linx_otp.checkpoint.{name}")
    assert old is new
    assert new.__name__ == f"linx_otp.checkpoint.{name}"
    from_import = getattr(importlib.import_module("linx_otp"), name)
    assert from_import is new


# -- the value ------------------------------------------------------------------------------------


def test_a_setup_is_a_frozen_value_with_the_tree_files_keys():
    setup = Setup(
        uid_map=[[0, 1000, 1]],
        gid_map=[(0, 1000, 1)],
        hostname="box",
        veth={"host": "lxh0", "address": "10.9.0.2", "prefixlen": 30, "gateway": "10.9.0.1"},
        cgroup={"pids_max": 8, "cpu_max": [50000, 100000]},
        mounts=[{"target": "/data", "type": "tmpfs", "options": "size=1m"}],
        proc=True,
        sys=True,
        masked=True,
        rootfs="/srv/rootfs/",
    )
    assert setup.uid_map == ((0, 1000, 1),) and setup.veth == Veth("lxh0", "10.9.0.2", 30, gateway="10.9.0.1")
    assert setup.cgroup == Limits(pids_max=8, cpu_max=(50000, 100000))
    assert setup.mounts == (MountEntry(target="/data", type="tmpfs", options="size=1m"),)
    assert setup.rootfs == "/srv/rootfs"
    assert {field.name for field in dataclasses.fields(Setup)} == SETUP_KEYS
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.hostname = "other"  # type: ignore[misc]
    assert bool(setup) and not Setup()
    assert linx_otp.Setup is Setup


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"hostname": "-bad-"}, "bad_hostname"),
        ({"uid_map": [(0, 0, 1)]}, "bad_map"),
        ({"uid_map": [(0, 0, 0)], "gid_map": [(0, 0, 1)]}, "bad_map"),
        ({"veth": {"host": "h", "address": "10.0.0.256", "prefixlen": 30}}, "bad_ipv4_address"),
        ({"veth": "lxh0"}, "bad_veth"),
        ({"veth": {"host": "lxh0", "address": "10.0.0.2"}}, "bad_veth"),
        ({"cgroup": {"pids": 3}}, "bad_cgroup"),
        ({"cgroup": {"pids_max": -1}}, "bad_pids_max"),
        ({"mounts": [{"target": "relative", "type": "tmpfs"}]}, "bad_mount"),
        ({"mounts": [{"target": "/x"}]}, "bad_mount"),
        ({"mounts": [{"target": "/x", "type": "tmpfs", "surprise": 1}]}, "bad_mount"),
        ({"mounts": "/x"}, "bad_mounts"),
        ({"proc": "yes"}, "bad_proc"),
        ({"rootfs": "relative/dir"}, "bad_rootfs"),
    ],
)
def test_bad_values_are_refused_when_the_value_is_made(fields, reason):
    with pytest.raises(LinxValueError) as caught:
        Setup(**fields)
    found = caught.value.reason
    assert (found[0] if isinstance(found, tuple) else found) == reason, caught.value


def test_spawn_refuses_a_setup_that_is_not_callable():
    with pytest.raises(LinxValueError, match="setup is a linx_otp.Setup or a callable"):
        P.spawn(argv=["/bin/true"], setup="hostname=x")


# -- tree files -------------------------------------------------------------------------------------


TREE = """
[[child]]
id = "web"
argv = ["true"]
namespaces = ["net", "uts", "mount", "pid", "user"]
[child.setup]
hostname = "web"
uid_map = [[0, 1000, 1]]
gid_map = [[0, 1000, 1]]
veth = { host = "lxw0", address = "10.9.0.2", prefixlen = 30 }
cgroup = { pids_max = 32 }
mounts = [{ target = "/data", type = "tmpfs", readonly = true }]
proc = true
sys = true
masked = true
rootfs = "/srv/web"
"""


def test_a_tree_files_setup_table_is_parsed_into_a_setup():
    workload = parse_text(TREE, "t.toml").children[0]
    assert workload.setup == Setup(
        hostname="web",
        uid_map=[(0, 1000, 1)],
        gid_map=[(0, 1000, 1)],
        veth=Veth("lxw0", "10.9.0.2", 30),
        cgroup=Limits(pids_max=32),
        mounts=[MountEntry(target="/data", type="tmpfs", readonly=True)],
        proc=True,
        sys=True,
        masked=True,
        rootfs="/srv/web",
    )


@pytest.mark.parametrize(
    ("table", "where", "what"),
    [
        ('mounts = [{ target = "data", type = "tmpfs" }]', "mounts[0]", "absolute path"),
        ("mounts = { target = 1 }", "mounts", "list of tables"),
        ('rootfs = "srv"', "rootfs", "absolute path"),
        ('proc = "yes"', "proc", "proc"),
    ],
)
def test_bad_setup_keys_are_named_by_key_path(table, where, what):
    with pytest.raises(TreeError) as caught:
        parse_text('[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["mount", "pid"]\n[child.setup]\n' + table, "t")
    problems = dict(caught.value.problems)
    assert what in problems[f"child[0].setup.{where}"], problems


def test_setup_keys_need_their_namespaces():
    with pytest.raises(TreeError) as caught:
        parse_text('[[child]]\nid = "a"\nargv = ["true"]\n[child.setup]\nproc = true\nrootfs = "/srv"\n', "t")
    problems = dict(caught.value.problems)
    assert "'mount'" in problems["child[0].setup.rootfs"] and "'pid'" in problems["child[0].setup.proc"]


# -- running it -------------------------------------------------------------------------------------


def run(setup, argv, namespaces=(), **options):
    """Spawn with ``setup``; the outcome, the events and the captured stdout."""
    box = linx_otp.Mailbox()
    session = P.spawn(
        argv=argv, namespaces=list(namespaces), setup=setup, owner=box, stdio={"stdout": "capture"}, **options
    )
    try:
        outcome = P.wait(session, TIMEOUT)
    finally:
        session.stop()
    events = box.flush()
    output = b"".join(event[2] for event in events if event[1] == "stdout").decode()
    return outcome, [event[1] for event in events if event[1] != "stdout"], output


@needs_root
def test_a_setup_runs_at_ready_and_the_session_proceeds_by_itself():
    link = run_scoped_name("s0")
    setup = Setup(
        hostname="set-up",
        veth=Veth(link, "10.233.0.2", 30, host_address="10.233.0.1"),
        cgroup=Limits(pids_max=16),
    )
    script = "hostname; cat /sys/class/net/eth0/operstate; cat /proc/self/cgroup | grep -c linx-otp-setup-"
    outcome, kinds, output = run(setup, ["sh", "-c", script], ["uts", "net", "mount"])
    assert outcome == ("exited", 0) and kinds == ["ready", "running", "exited"]
    assert output.split() == ["set-up", "up", str(output.split()[2])] and int(output.split()[2]) >= 1
    assert link not in os.listdir("/sys/class/net"), "the veth's host end outlived its incarnation"
    assert not [path for root in cgroup_roots() for path in root.glob(f"linx-otp-setup-{os.getpid()}-*")]


def test_a_callable_setup_gets_the_host_pid_and_its_release_runs_when_the_incarnation_ends():
    seen: list = []

    def setup(host_pid: int):
        seen.append(("setup", host_pid, parked_at_the_checkpoint(host_pid)))
        return lambda: seen.append(("release", host_pid))

    box = linx_otp.Mailbox()
    session = P.spawn(argv=["/bin/sh", "-c", "exit 4"], setup=setup, owner=box)
    try:
        assert P.wait(session, TIMEOUT) == ("exited", 4)
        host_pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    finally:
        session.stop()
    assert seen == [("setup", host_pid, True), ("release", host_pid)]


@pytest.mark.parametrize(
    ("error", "expected"),
    [(OSError(errno.EACCES, "refused"), ("error", errno.EACCES, "setup")), (RuntimeError("no"), ("error", 0, "setup"))],
)
def test_a_failing_setup_aborts_the_child_unrun(tmp_path, caplog, error, expected):
    marker = tmp_path / "ran"

    def setup(host_pid: int):
        raise error

    with caplog.at_level(logging.ERROR, logger="linx_otp"):
        outcome, kinds, _ = run(setup, ["/bin/sh", "-c", f"touch {marker}"])
    assert outcome == expected and kinds == ["ready", "error"]
    assert not marker.exists(), "the workload ran although its set-up failed"
    assert any(record.exc_info and record.exc_info[1] is error for record in caplog.records), caplog.text


@needs_root
def test_a_setup_that_fails_half_way_releases_what_it_made():
    setup = Setup(cgroup=Limits(pids_max=8), mounts=[MountEntry(target="/no/such/place", type="tmpfs")])
    outcome, kinds, _ = run(setup, ["/bin/true"], ["mount"])
    assert outcome == ("error", errno.ENOENT, "setup") and kinds == ["ready", "error"]
    assert not [path for root in cgroup_roots() for path in root.glob(f"linx-otp-setup-{os.getpid()}-*")]


def test_a_supervised_child_runs_its_setup_for_every_incarnation():
    seen: list = []
    incarnations = threading.Semaphore(0)

    def setup(host_pid: int):
        seen.append(("setup", host_pid))
        incarnations.release()
        return lambda: seen.append(("release", host_pid))

    spec = P.child_spec(id="flaky", argv=["/bin/sh", "-c", "exit 1"], setup=setup, owner=linx_otp.Mailbox())
    tree = S.start([spec], max_restarts=10, max_seconds=60)
    try:
        for _ in range(3):
            assert incarnations.acquire(timeout=TIMEOUT)
    finally:
        S.stop(tree)
    pids = [pid for kind, pid in seen if kind == "setup"]
    assert len(set(pids)) == len(pids) >= 3
    assert all(("release", pid) in seen for pid in pids), seen


# -- CVE-2021-30465: a planted link in a reused rootfs --------------------------------------------


def test_open_in_root_resolves_every_link_and_dotdot_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text("inside")
    (root / "absolute").symlink_to("/etc")
    (root / "climb").symlink_to("../../../../etc")
    for path in ("/absolute/marker", "/climb/marker", "/../../etc/marker"):
        descriptor = open_in_root(str(root), path)
        try:
            assert os.readlink(f"/proc/self/fd/{descriptor}") == str(root / "etc" / "marker"), path
        finally:
            os.close(descriptor)
    (root / "magic").symlink_to(f"/proc/{os.getpid()}/root/etc")
    with pytest.raises(LinxOSError) as caught:
        open_in_root(str(root), "/magic/passwd")
    assert caught.value.errno == errno.ENOENT  # /proc inside the root: there is none


@needs_root
def test_a_link_planted_by_a_previous_incarnation_cannot_send_a_mount_outside_the_rootfs(tmp_path):
    """runc's CVE-2021-30465: the workload of a reused rootfs replaces a mount target with a link
    to a host path; the next incarnation's set-up must mount inside the rootfs all the same."""
    if not BUSYBOX.exists():
        pytest.skip("needs busybox-static (scripts/system-deps.sh)")
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    for name in ("bin", "proc", "data", "outside-copy"):
        (rootfs / name).mkdir(parents=True)
    outside.mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    setup = Setup(mounts=[MountEntry(target="/data", type="tmpfs")], proc=True, rootfs=str(rootfs))
    write = "echo planted > /data/file && grep -c ' tmpfs ' /proc/self/mountinfo"
    first = run(setup, ["/bin/sh", "-c", write], ["mount", "pid"], env={"PATH": "/bin"}, cwd="/")
    assert first[0] == ("exited", 0), first
    # what the first incarnation's workload could do in its rootfs: the target becomes a link to the host
    (rootfs / "data").rmdir()
    (rootfs / "data").symlink_to(outside)
    second = run(setup, ["/bin/sh", "-c", write], ["mount", "pid"], env={"PATH": "/bin"}, cwd="/")
    assert second[0] == ("error", errno.ENOENT, "setup"), second  # rootfs/<outside> does not exist
    assert list(outside.iterdir()) == []
    # where the link's target exists inside the rootfs too, the mount lands there, inside
    (rootfs / str(outside).lstrip("/")).mkdir(parents=True)
    third = run(
        setup,
        ["/bin/sh", "-c", write + f" && grep -c ' {outside} .* tmpfs ' /proc/self/mountinfo"],
        ["mount", "pid"],
        env={"PATH": "/bin"},
        cwd="/",
    )
    assert third[0] == ("exited", 0), third
    assert third[2].split()[-1] == "1"
    assert list(outside.iterdir()) == [] and list((rootfs / str(outside).lstrip("/")).iterdir()) == []


# -- rootless: the same Setup from an ordinary user, each step through the agent -------------------

importable_copy = rootless.importable_copy  # the fixture: linx_otp where the ordinary user can read it

ROOTLESS = textwrap.dedent("""
    import os, linx_otp
    from linx_otp import process as P
    setup = linx_otp.Setup(
        uid_map=[(0, os.geteuid(), 1)],
        gid_map=[(0, os.getegid(), 1)],
        hostname="rootless",
        mounts=[{"target": "/mnt", "type": "tmpfs"}],
        proc=True,
    )
    script = "echo uid=$(id -u) host=$(hostname) procs: /proc/[0-9]*; grep -c ' /mnt tmpfs ' /proc/self/mounts"
    session = P.spawn(
        argv=["/bin/sh", "-c", script], namespaces=["user", "pid", "mount", "uts"], setup=setup, auto_proceed=True
    )
    print("outcome", P.wait(session, 20))
    session.stop()
""")


@needs_root  # to become the ordinary user
def test_an_ordinary_user_sets_up_rootless_with_the_same_setup(test_user, importable_copy, readable_directory):
    result = rootless.run_as(test_user, importable_copy, readable_directory, "-c", ROOTLESS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["uid=0 host=rootless procs: /proc/1", "1", "outcome ('exited', 0)"]


@needs_root
def test_linx_otp_spawn_says_why_its_setup_failed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "linx_otp", "spawn", "--ns", "mount,pid", "--mount-proc", "--rootfs", str(tmp_path)]
        + ["--", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 127, result
    assert f"linx-otp: setup {tmp_path}/proc: ENOENT" in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith("linx-otp: setup failed: ENOENT (No such file or directory)")
