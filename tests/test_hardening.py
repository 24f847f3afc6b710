"""Hardening options (docs/hardening.md) against the real kernel: users, groups, rlimits, umask and
capabilities as the workload sees them, each kernel refusal with its stage, bad options refused
before anything starts, and a hardened workload that still dies with its agent."""

from __future__ import annotations

import errno
import os
import resource
import signal
import struct
from pathlib import Path

import pytest
from support import child_pids, needs_root, process_alive, wait_until

import linx_otp
from linx_otp import options, seccomp
from linx_otp import process as P

pytestmark = needs_root
TIMEOUT = 10
NET_BIND_SERVICE = 1 << 10
SYSTEM_PYTHON = "/usr/bin/python3"
"""Readable by any user (the test run's own interpreter may sit under /root)."""


def status_lines(pid: int | str, *prefixes: str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines) if key.startswith(prefixes)}


def run_captured(argv: list[str], **options) -> tuple[tuple, bytes]:
    """Runs a workload to its end; returns its outcome and everything it wrote to stdout."""
    box = linx_otp.Mailbox()
    session = P.spawn(argv=argv, owner=box, stdio={"stdout": "capture"}, auto_proceed=True, **options)
    try:
        outcome = P.wait(session, TIMEOUT)
    finally:
        session.stop()
    output = b"".join(event[2] for event in box.flush() if event[1] == "stdout")
    return outcome, output


def outcome_of(**options) -> tuple:
    box = linx_otp.Mailbox()
    session = P.spawn(owner=box, auto_proceed=True, stdio="devnull", **options)
    try:
        return P.wait(session, TIMEOUT)
    finally:
        session.stop()


def python(script: str) -> list[str]:
    return [SYSTEM_PYTHON, "-c", script]


# -- what the workload gets ---------------------------------------------------------------------

BIND_PORT_80 = """
import signal, socket, sys
server = socket.socket()
try:
    server.bind(("0.0.0.0", 80))
except PermissionError as error:
    print("refused", error.errno, flush=True)
    sys.exit(3)
server.listen()
print("listening", flush=True)
signal.pause()
"""
"""Binds port 80, says so, and stays until stopped (not until its stdin ends: it inherits the test run's, which
is /dev/null under CI, and a workload that ended at once raced the test reading its /proc/PID/status)."""


def test_an_ordinary_user_with_net_bind_service_binds_port_80_and_has_nothing_else(test_user):
    box = linx_otp.Mailbox()
    session = P.spawn(
        argv=python(BIND_PORT_80),
        namespaces=["net"],
        user=test_user.pw_uid,
        capabilities=["net_bind_service"],
        stdio={"stdout": "capture"},
        owner=box,
        auto_proceed=True,
    )
    try:
        pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
        assert box.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2].startswith(b"listening")
        status = status_lines(pid, "Cap", "Uid", "Gid", "Groups")
        assert status["Uid"].split() == [str(test_user.pw_uid)] * 4
        assert status["Groups"] == ""  # extra_groups default to none when user is given
        for line in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[line], 16) == NET_BIND_SERVICE, (line, status)
    finally:
        session.stop()


def test_without_the_capability_the_same_user_is_refused_port_80(test_user):
    outcome, output = run_captured(python(BIND_PORT_80), namespaces=["net"], user=test_user.pw_uid)
    assert (outcome, output) == (("exited", 3), f"refused {errno.EACCES}\n".encode())


def test_a_non_root_user_without_capabilities_given_has_none(test_user):
    outcome, output = run_captured(["/bin/grep", "^Cap", "/proc/self/status"], user=test_user.pw_uid)
    assert outcome == ("exited", 0)
    caps = dict(line.split(":\t") for line in output.decode().splitlines())
    assert all(int(caps[name], 16) == 0 for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"))
    assert int(caps["CapBnd"], 16) == int(status_lines("self", "CapBnd")["CapBnd"], 16)  # the kernel's rule


def test_root_with_a_capability_list_keeps_exactly_those():
    outcome, output = run_captured(["/bin/grep", "^Cap", "/proc/self/status"], capabilities=["CAP_CHOWN", "Kill"])
    assert outcome == ("exited", 0)
    expected = (1 << options.CAPABILITIES["chown"]) | (1 << options.CAPABILITIES["kill"])
    for line in output.decode().splitlines():
        assert int(line.split(":\t")[1], 16) == expected, line


def test_user_group_extra_groups_and_umask_by_name(test_user):
    outcome, output = run_captured(
        ["/bin/sh", "-c", "id -u; id -g; id -G; umask"],
        user=test_user.pw_name,
        group="nogroup",
        extra_groups=["daemon", 100],
        umask=0o027,
    )
    assert outcome == ("exited", 0)
    uid, gid, groups, umask = output.decode().split("\n")[:4]
    assert (int(uid), int(gid), umask) == (test_user.pw_uid, 65534, "0027")
    assert set(map(int, groups.split())) == {65534, 1, 100}


def test_rlimits_nofile_16_gives_emfile_once_16_fds_are_open():
    script = """
import errno, os, resource
opened = []
try:
    while True:
        opened.append(os.open("/dev/null", os.O_RDONLY))
except OSError as error:
    print(resource.getrlimit(resource.RLIMIT_NOFILE), max(opened), errno.errorcode[error.errno])
"""
    outcome, output = run_captured(python(script), rlimits={"nofile": 16})
    assert (outcome, output) == (("exited", 0), b"(16, 16) 15 EMFILE\n")


def test_rlimits_soft_and_hard_separately_and_unlimited():
    script = (
        "import resource as r; print(r.getrlimit(r.RLIMIT_CORE), r.getrlimit(r.RLIMIT_STACK)[1] == r.RLIM_INFINITY)"
    )
    outcome, output = run_captured(
        python(script), rlimits={"core": (0, 1024 * 1024), "stack": (8 * 1024 * 1024, resource.RLIM_INFINITY)}
    )
    assert (outcome, output) == (("exited", 0), b"(0, 1048576) True\n")


def test_enter_applies_the_same_options(test_user):
    box = linx_otp.Mailbox()
    host = P.spawn(argv=["/bin/sleep", "30"], namespaces=["pid", "mount"], auto_proceed=True, owner=box)
    try:
        pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
        outcome, output = _enter_captured(pid, ["/bin/sh", "-c", "id -u; grep CapEff /proc/self/status"], test_user)
        assert outcome == ("exited", 0)
        assert output.decode().split("\n")[:2] == [str(test_user.pw_uid), f"CapEff:\t{NET_BIND_SERVICE:016x}"]
    finally:
        host.stop()


def _enter_captured(pid, argv, test_user):
    box = linx_otp.Mailbox()
    session = P.enter(
        pid,
        argv=argv,
        user=test_user.pw_uid,
        capabilities=["net_bind_service"],
        stdio={"stdout": "capture"},
        auto_proceed=True,
        owner=box,
    )
    try:
        outcome = P.wait(session, TIMEOUT)
    finally:
        session.stop()
    return outcome, b"".join(event[2] for event in box.flush() if event[1] == "stdout")


# -- each kernel refusal is a terminal error with its stage -------------------------------------


def missing_capability() -> str:
    bounding = int(status_lines("self", "CapBnd")["CapBnd"], 16)
    for name, number in options.CAPABILITIES.items():
        if not bounding & (1 << number):
            return name
    pytest.skip("every capability is in this host's bounding set: none can be refused")


INVALID_BPF = struct.pack("=HBBI", 0xFFFF, 0, 0, 0)


@pytest.mark.parametrize(
    "extra, expected",
    [
        pytest.param(dict(namespaces=["user"], extra_groups=[1]), (errno.EPERM, "setgroups"), id="setgroups"),
        pytest.param(dict(rlimits={"nofile": 2**40}), (errno.EPERM, "rlimit"), id="rlimit"),
        pytest.param(dict(seccomp=INVALID_BPF), (errno.EINVAL, "seccomp"), id="seccomp"),
    ],
)
def test_a_kernel_refusal_is_an_error_with_its_stage_and_nothing_runs(tmp_path, extra, expected):
    marker = tmp_path / "ran"
    outcome = outcome_of(argv=["/bin/touch", str(marker)], **extra)
    assert outcome == ("error", *expected)
    assert not marker.exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        pytest.param(dict(group=5), (errno.EINVAL, "setgid"), id="setgid"),
        pytest.param(dict(user=5), (errno.EINVAL, "setuid"), id="setuid"),
    ],
)
def test_an_id_the_user_namespace_does_not_map_is_refused_with_its_stage(tmp_path, extra, expected):
    from linx_otp import user as User

    marker = tmp_path / "ran"
    box = linx_otp.Mailbox()
    session = P.spawn(argv=["/bin/touch", str(marker)], namespaces=["user"], owner=box, stdio="devnull", **extra)
    try:
        pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
        User.setup_maps(pid, uid=[(0, 0, 1)], gid=[(0, 0, 1)])
        P.proceed(session)
        assert P.wait(session, TIMEOUT) == ("error", *expected)
    finally:
        session.stop()
    assert not marker.exists()


def test_a_capability_outside_the_bounding_set_is_refused_at_the_capabilities_stage(tmp_path):
    marker = tmp_path / "ran"
    outcome = outcome_of(argv=["/bin/touch", str(marker)], capabilities=[missing_capability()])
    assert outcome == ("error", errno.EPERM, "capabilities")
    assert not marker.exists()


def test_an_empty_extra_groups_list_is_skipped_where_setgroups_is_denied():
    from linx_otp import user as User

    box = linx_otp.Mailbox()
    session = P.spawn(argv=["/bin/true"], namespaces=["user"], extra_groups=[], owner=box, stdio="devnull")
    try:
        pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
        User.setup_maps(pid, uid=[(0, 0, 1)], gid=[(0, 0, 1)], setgroups="deny")
        P.proceed(session)
        assert P.wait(session, TIMEOUT) == ("exited", 0)
    finally:
        session.stop()


# -- bad options: a clear error, nothing started -----------------------------------------------


@pytest.mark.parametrize(
    "extra, reason",
    [
        (dict(user="no-such-user-here"), ("bad_user", "no-such-user-here")),
        (dict(user=-1), ("bad_user", -1)),
        (dict(user="root\0"), ("bad_user", "root\0")),
        (dict(user=2**32 - 1), ("bad_user", 2**32 - 1)),
        (dict(user=True), ("bad_user", True)),
        (dict(group="no-such-group-here"), ("bad_group", "no-such-group-here")),
        (dict(extra_groups=["no-such-group-here"]), ("bad_group", "no-such-group-here")),
        (dict(extra_groups="wheel"), ("bad_extra_groups", "wheel")),
        (dict(umask=0o1000), ("bad_umask", 0o1000)),
        (dict(umask="022"), ("bad_umask", "022")),
        (dict(rlimits={"nofiles": 1}), ("bad_rlimit", "nofiles")),
        (dict(rlimits={"nofile": (2, 1)}), ("bad_rlimit", ("nofile", (2, 1)))),
        (dict(rlimits={"nofile": -5}), ("bad_rlimit", ("nofile", -5))),
        (dict(rlimits={"nofile": 1.5}), ("bad_rlimit", ("nofile", 1.5))),
        (dict(rlimits=[("nofile", 1)]), ("bad_rlimits", [("nofile", 1)])),
        (dict(capabilities=["net_bind_servic"]), ("bad_capability", "net_bind_servic")),
        (dict(capabilities="net_bind_service"), ("bad_capabilities", "net_bind_service")),
        (dict(seccomp=b"1234567"), ("bad_seccomp", ("not_a_program", 7))),
        (dict(seccomp=["mount"]), ("bad_seccomp", ["mount"])),
        (dict(seccomp=INVALID_BPF, capabilities=[]), ("bad_seccomp", "needs_no_new_privs")),
        (dict(seccomp=INVALID_BPF, user=1000), ("bad_seccomp", "needs_no_new_privs")),
    ],
)
def test_bad_hardening_options_are_refused_before_anything_starts(extra, reason):
    with pytest.raises(linx_otp.LinxError) as raised:
        P.spawn(argv=["/bin/true"], **extra)
    assert raised.value.reason == reason
    assert isinstance(raised.value, ValueError)
    assert child_pids() == []


def test_seccomp_with_no_new_privs_or_sys_admin_is_accepted():
    allow_all = seccomp.Filter(deny=())
    assert outcome_of(argv=["/bin/true"], seccomp=allow_all, capabilities=[], no_new_privs=True) == ("exited", 0)
    assert outcome_of(argv=["/bin/true"], seccomp=allow_all, capabilities=["sys_admin"]) == ("exited", 0)


# -- a hardened workload still dies with its agent ----------------------------------------------


@pytest.mark.parametrize("namespaces", [[], ["pid"]], ids=["host pid namespace", "own pid namespace"])
def test_a_hardened_workload_dies_when_its_agent_is_killed(test_user, namespaces):
    box = linx_otp.Mailbox()
    session = P.spawn(
        argv=["/bin/sleep", "60"],
        namespaces=namespaces,
        user=test_user.pw_uid,
        group=test_user.pw_gid,
        capabilities=["net_bind_service"],
        owner=box,
        auto_proceed=True,
    )
    try:
        pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
        assert status_lines(pid, "Uid")["Uid"].split()[0] == str(test_user.pw_uid)
        agent = int(status_lines(pid, "PPid")["PPid"])
        os.kill(agent, signal.SIGKILL)
        assert wait_until(lambda: not process_alive(pid), TIMEOUT), "the workload outlived its agent"
        assert box.receive(("linx_process", "error"), timeout=TIMEOUT)[2:] == (128 + signal.SIGKILL, "agent_died")
    finally:
        session.stop()


# -- tree files and `linx-otp spawn` (issue 13 item 5) ------------------------------------------------

HARDENED_TREE = """
[[child]]
id = "locked"
argv = ["/bin/sh", "-c", "grep -E '^(Uid|CapEff|CapAmb)' /proc/self/status; ulimit -n; mkdir /tmp/linx-no-$$ 2>&1 || echo refused"]
user = {uid}
group = {gid}
rlimits = {{ nofile = 16, core = [0, "infinity"] }}
capabilities = ["net_bind_service"]
seccomp = {{ deny = ["mkdir", "mkdirat"], errno = 13 }}
no_new_privs = true
"""


def test_a_tree_files_hardening_keys_reach_the_workload(test_user):
    from linx_otp.daemon.tree import parse_text

    text = HARDENED_TREE.format(uid=f'"{test_user.pw_name}"', gid=test_user.pw_gid)
    workload = parse_text(text, "hardened.toml").children[0]
    spawn_options = {k: v for k, v in workload.options.items() if k not in ("id", "restart", "shutdown", "stdio")}
    outcome, output = run_captured(**spawn_options)
    assert outcome == ("exited", 0), output
    lines = dict(line.split(":", 1) for line in output.decode().splitlines() if ":" in line)
    assert lines["Uid"].split()[0] == str(test_user.pw_uid)
    assert int(lines["CapEff"], 16) == int(lines["CapAmb"], 16) == NET_BIND_SERVICE
    *_, limit, refusal, refused = output.decode().splitlines()
    assert (limit, refused) == ("16", "refused") and refusal.endswith(os.strerror(errno.EACCES))  # the tree's errno


@pytest.mark.parametrize(
    ("line", "where", "what"),
    [
        ('user = "no-such-user-here"', "user", "name of a user"),
        ('group = "no-such-group-here"', "group", "name of a group"),
        ("rlimits = { nofiles = 16 }", "rlimits", "unknown rlimit"),
        ("rlimits = { nofile = [16, 8] }", "rlimits", "soft <= hard"),
        ('capabilities = ["net_bind_servic"]', "capabilities", "unknown capability"),
        ('seccomp = { deny = ["no_such_call"] }\nno_new_privs = true', "seccomp", "no_such_call"),
        ('seccomp = { allow = ["read"] }', "seccomp", "deny = [syscall names]"),
        ('profile = "fortress"', "profile", "'container'"),
        ('profile = "container"\nseccomp = { deny = ["mkdir"] }', "seccomp", "its own seccomp"),
    ],
)
def test_bad_hardening_keys_in_a_tree_file_are_named_by_key_path(line, where, what):
    from linx_otp.daemon.tree import TreeError, parse_text

    with pytest.raises(TreeError) as caught:
        parse_text(f'[[child]]\nid = "a"\nargv = ["true"]\n{line}\n', "t.toml")
    problems = dict(caught.value.problems)
    assert what in problems.get(f"child[0].{where}", ""), problems


def test_a_seccomp_filter_without_no_new_privs_is_refused_at_load():
    from linx_otp.daemon.tree import TreeError, parse_text

    with pytest.raises(TreeError) as caught:
        parse_text('[[child]]\nid = "a"\nargv = ["true"]\nuser = 65534\nseccomp = { deny = ["mkdir"] }\n', "t")
    assert "no_new_privs" in dict(caught.value.problems)["child[0]"]


def test_profile_container_in_a_tree_file_merges_the_profile():
    from linx_otp import profiles
    from linx_otp.daemon.tree import parse_text

    text = '[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["net"]\nprofile = "container"\nuser = 65534\n'
    text += 'capabilities = ["net_bind_service"]\n[child.setup]\nhostname = "boxed"\n'
    workload = parse_text(text, "t.toml").children[0]
    assert workload.options["namespaces"] == ["net", *(kind for kind in profiles.NAMESPACES if kind != "net")]
    assert workload.options["capabilities"] == ["net_bind_service"]  # the child's own, narrower
    assert workload.options["seccomp"] is profiles.container_filter() and workload.options["no_new_privs"] is True
    assert (workload.setup.hostname, workload.setup.proc, workload.setup.sys, workload.setup.masked) == (
        "boxed",
        True,
        True,
        True,
    )


def test_linx_otp_spawn_with_user_cap_and_the_container_profile(test_user):
    import subprocess
    import sys

    script = "grep -E '^(Uid|CapEff|Seccomp):' /proc/self/status; wc -c < /proc/keys; ls /proc | grep -c '^[0-9]'"
    result = subprocess.run(
        [sys.executable, "-m", "linx_otp", "spawn", "--profile", "container", "--user", test_user.pw_name]
        + ["--cap", "net_bind_service", "--", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    fields = [line.split(":", 1)[-1].strip() for line in result.stdout.splitlines()]
    assert fields[0].split()[0] == str(test_user.pw_uid)
    assert int(fields[1], 16) == NET_BIND_SERVICE and fields[2] == "2"  # seccomp mode 2: a filter
    assert fields[3:] == ["0", "3"]  # /proc/keys masked; its own pid namespace: sh, ls and grep
