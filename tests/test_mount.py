"""Mounts and hostnames inside a parked workload's namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import needs_root

from linx_otp import process as P
from linx_otp.checkpoint import mount as M
from linx_otp.errors import LinxError, LinxOSError, LinxValueError

pytestmark = needs_root
TIMEOUT = 10


def run_parked(box, script: str, namespaces=("mount",), configure=lambda pid: None) -> str:
    """Spawn ``sh -c script`` parked, configure it by host pid, proceed, return its output."""
    session = P.spawn(argv=["/bin/sh", "-c", script], namespaces=list(namespaces), stdio="pty", owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    try:
        configure(pid)
        P.proceed(session)
        outcome = P.wait(session, TIMEOUT)
    finally:
        session.stop()
    output = b"".join(event[2] for event in box.flush() if event[1] == "pty_out").decode()
    assert outcome == ("exited", 0), output
    return output.replace("\r\n", "\n")


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_a_tmpfs_mounted_at_the_checkpoint_is_seen_inside_and_not_on_the_host(box, tmp_path):
    target = tmp_path / "scratch"
    target.mkdir()
    output = run_parked(
        box,
        f"grep ' {target} ' /proc/self/mountinfo | grep -c tmpfs",
        configure=lambda pid: M.mount("linx", target, "tmpfs", data="size=1m", in_pid=pid),
    )
    assert output.strip() == "1"
    assert f" {target} " not in host_mounts()


def test_a_read_only_bind(box, tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir(), target.mkdir()
    (source / "file").write_text("from the host")

    def configure(pid):
        M.bind(source, target, readonly=True, in_pid=pid)

    output = run_parked(
        box, f"cat {target}/file; echo; touch {target}/new 2>/dev/null || echo read-only", configure=configure
    )
    assert output.splitlines() == ["from the host", "read-only"]


def test_remount_read_only_in_the_workloads_namespace(box, tmp_path):
    def configure(pid):
        M.mount("linx", tmp_path, "tmpfs", in_pid=pid)
        M.remount(tmp_path, M.MS_RDONLY, in_pid=pid)

    output = run_parked(box, f"touch {tmp_path}/new 2>/dev/null || echo read-only", configure=configure)
    assert output.strip() == "read-only" and f" {tmp_path} " not in host_mounts()


def test_mkdir_and_umount_in_the_workloads_namespace(box, tmp_path):
    target = tmp_path / "made-inside"

    def configure(pid):
        M.mount("linx", tmp_path, "tmpfs", in_pid=pid)  # hides the host's tmp_path inside
        M.mkdir(target, in_pid=pid)
        M.umount(tmp_path, in_pid=pid)  # and back: target was made on the tmpfs only

    output = run_parked(box, f"test -d {target} && echo present || echo absent", configure=configure)
    assert output.strip() == "absent" and not target.exists()


def test_pivot_root_leaves_the_workload_seeing_only_the_rootfs(box, tmp_path):
    rootfs = tmp_path / "rootfs"
    for name in ("bin", "data"):
        (rootfs / name).mkdir(parents=True)
    (rootfs / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (rootfs / "bin" / "busybox").chmod(0o755)
    (rootfs / "bin" / "sh").symlink_to("busybox")
    (rootfs / "bin" / "ls").symlink_to("busybox")
    (rootfs / "data" / "marker").write_text("inside")
    output = run_parked(box, "ls /; ls /data", configure=lambda pid: M.pivot_root(rootfs, in_pid=pid))
    assert output.split() == ["bin", "data", "marker"]


def test_a_fresh_proc_shows_only_the_pid_namespace(box):
    before = host_mounts()
    output = run_parked(box, "echo /proc/[0-9]*", namespaces=("pid", "mount"), configure=lambda pid: M.mount_proc(pid))
    assert output.strip() == "/proc/1"
    assert host_mounts() == before


def test_the_hostname_of_a_uts_namespace(box):
    import socket

    output = run_parked(
        box, "hostname", namespaces=("uts",), configure=lambda pid: M.hostname("inside-uts", in_pid=pid)
    )
    assert output.strip() == "inside-uts" and socket.gethostname() != "inside-uts"


def test_errors_name_the_operation(box, tmp_path):
    session = P.spawn(argv=["/bin/true"], namespaces=["mount"], owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    with pytest.raises(LinxOSError) as raised:
        M.mount("linx", tmp_path / "missing", "tmpfs", in_pid=pid)
    assert raised.value.reason == ("mount", "enoent")
    with pytest.raises(LinxOSError) as raised:
        M.umount(tmp_path, in_pid=pid)
    assert raised.value.reason == ("umount", "einval")
    with pytest.raises(LinxError) as raised:
        M.mount_proc(pid, str(tmp_path / "missing"))
    assert raised.value.reason[0] == "mount_proc"
    session.stop()
    with pytest.raises(LinxOSError) as raised:
        M.mkdir(tmp_path / "x", in_pid=pid)
    assert raised.value.reason == ("open_ns", "enoent")


def test_mount_of_proc_in_a_workloads_namespace_shows_its_pid_namespace(box):
    before = host_mounts()
    output = run_parked(
        box,
        "echo /proc/[0-9]*; grep ' /proc ' /proc/self/mountinfo | grep -c nosuid",
        namespaces=("pid", "mount"),
        configure=lambda pid: M.mount("proc", "/proc", "proc", M.MS_NOSUID | M.MS_NODEV, in_pid=pid),
    )
    assert output.split() == ["/proc/1", "1"], "the workload's own pids, with the flags asked for"
    assert host_mounts() == before


def test_mount_of_sysfs_shows_the_workloads_net_namespace(box, tmp_path):
    target = tmp_path / "sys"
    target.mkdir()
    output = run_parked(
        box,
        f"ls {target}/class/net",
        namespaces=("net", "mount"),
        configure=lambda pid: M.mount("sysfs", target, "sysfs", in_pid=pid),
    )
    assert output.split() == ["lo"], "only the fresh net namespace's links"


def test_mount_through_the_agent_refuses_flags_mount_cannot_express(box, tmp_path):
    session = P.spawn(argv=["/bin/true"], namespaces=["pid", "mount"], owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    try:
        with pytest.raises(LinxValueError) as raised:
            M.mount("proc", "/proc", "proc", M.MS_BIND, in_pid=pid)
        assert raised.value.reason == ("unsupported", "flags") and "MS_NOSUID" in str(raised.value)
        with pytest.raises(LinxError) as raised:
            M.mount("proc", tmp_path / "missing", "proc", in_pid=pid)
        assert raised.value.reason[0] == "mount"
    finally:
        session.stop()
