"""Sessions against the real kernel: the seed's Linx.Process examples, every verb in every
stage, what the workload gets, and namespaces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import (
    needs_root,
    parked_at_the_checkpoint,
    process_alive,
    read_all,
    reason_of,
    some_agent_blocked_connecting,
    thread_blocked_in,
    wait_until,
)

import linx_otp
from linx_otp import process as P
from linx_otp import protocol

TIMEOUT = 10


def next_event(match: tuple = ("linx_process",)) -> tuple:
    return linx_otp.receive(match, timeout=TIMEOUT)


def ready(session) -> int:
    return next_event(("linx_process", "ready"))[2]


def start_running(**options):
    session = P.spawn(**options)
    host = ready(session)
    P.proceed(session)
    assert next_event() == ("linx_process", "running")
    return session, host


def terminal_events(events: list[tuple]) -> list[tuple]:
    return [e for e in events if e[1] in ("exited", "signaled", "aborted", "error")]


# -- the seed's quick start and checkpoint ----------------------------------------------------


def test_quick_start_reports_ready_with_the_host_pid(capfd):
    session = P.spawn(argv=["/bin/echo", "hello"])
    event = next_event()
    assert event[:2] == ("linx_process", "ready") and isinstance(event[2], int) and event[2] > 0
    assert P.host_pid(session) == event[2]
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)
    assert linx_otp.flush() == [("linx_process", "running"), ("linx_process", "exited", 0)]
    assert "hello" in capfd.readouterr().out


def test_the_child_does_not_run_before_proceed(tmp_path):
    marker = tmp_path / "ran"
    session = P.spawn(argv=["/bin/sh", "-c", f"touch {marker}"])
    host = ready(session)
    assert wait_until(lambda: parked_at_the_checkpoint(host))  # asleep on its go pipe: nothing else wakes it
    assert not marker.exists()
    assert P.info(session).stage == "ready"
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)
    assert marker.exists()


def test_every_session_ends_with_exactly_one_terminal_event_last():
    session = P.spawn(argv=["/bin/sh", "-c", "exit 3"], auto_proceed=True)
    assert P.wait(session) == ("exited", 3)
    session.stop()
    events = linx_otp.flush()
    assert [e[1] for e in events] == ["ready", "running", "exited"]
    assert terminal_events(events) == [("linx_process", "exited", 3)]


# -- namespaces -------------------------------------------------------------------------------


def namespace_inode(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


@needs_root
def test_spawn_into_fresh_net_uts_ipc_namespaces():
    session = P.spawn(argv=["/bin/sleep", "30"], namespaces=["net", "uts", "ipc"])
    host = ready(session)
    for kind in ("net", "uts", "ipc"):
        assert namespace_inode(host, kind) != namespace_inode("self", kind)
    for kind in ("mnt", "pid", "user"):
        assert namespace_inode(host, kind) == namespace_inode("self", kind)
    session.stop()
    assert not process_alive(host)


@needs_root
@pytest.mark.parametrize("kind", ["net", "mount", "pid", "uts", "ipc", "cgroup", "time", "user"])
def test_each_namespace_alone_is_created(kind):
    proc_name = {"mount": "mnt"}.get(kind, kind)
    session = P.spawn(argv=["/bin/true"], namespaces=[kind])
    host = ready(session)
    assert namespace_inode(host, proc_name) != namespace_inode("self", proc_name)
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)


@needs_root
def test_all_namespaces_together():
    kinds = ["user", "mount", "uts", "ipc", "cgroup", "net", "time", "pid"]
    session = P.spawn(argv=["/bin/true"], namespaces=kinds)
    host = ready(session)
    for kind in kinds:
        proc_name = {"mount": "mnt"}.get(kind, kind)
        assert namespace_inode(host, proc_name) != namespace_inode("self", proc_name), kind
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)


@needs_root
def test_time_namespace_is_really_new_inside_the_workload(listener):
    """The original's clone() dropped CLONE_NEWTIME; clone3 must not."""
    session = P.spawn(
        argv=["/bin/readlink", "/proc/self/ns/time"],
        namespaces=["time"],
        stdio={"stdout": ("connect_unix", listener.path)},
    )
    ready(session)
    connection = listener.accept()
    P.proceed(session)
    inside = read_all(connection).decode().strip()
    assert P.wait(session) == ("exited", 0)
    assert inside.startswith("time:[") and inside != namespace_inode("self", "time")


@needs_root
def test_a_fresh_mount_namespace_does_not_propagate_mounts_to_the_host(tmp_path):
    shared = tmp_path / "shared"
    (shared).mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "shared", str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        (shared / "inner").mkdir()
        script = f"! grep -q shared: /proc/self/mountinfo && mount -t tmpfs inner {shared}/inner"
        session = P.spawn(argv=["sh", "-c", script], namespaces=["mount"], auto_proceed=True, stdio="devnull")
        assert P.wait(session, 5) == ("exited", 0)  # no shared mount inside, and the mount worked
        session.stop()
        host_mounts = Path("/proc/self/mountinfo").read_text()
        assert f" {shared} " in host_mounts and f" {shared}/inner " not in host_mounts
    finally:
        subprocess.run(["umount", "-R", str(shared)], check=True)


@needs_root
def test_child_pid_is_1_in_a_fresh_pid_namespace():
    session = P.spawn(argv=["/bin/true"], namespaces=["pid"])
    host = ready(session)
    info = P.info(session)
    assert info.child_pid == 1 and info.host_pid == host != 1
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)


def test_child_pid_equals_host_pid_without_a_pid_namespace():
    session = P.spawn(argv=["/bin/true"])
    host = ready(session)
    assert P.info(session).child_pid == host
    P.abort(session)


@needs_root
def test_a_fresh_net_namespace_holds_only_lo():
    session = P.spawn(argv=["/bin/sleep", "30"], namespaces=["net"])
    host = ready(session)
    lines = Path(f"/proc/{host}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in lines] == ["lo"]
    P.abort(session)


@needs_root
def test_host_pid_addresses_the_workload_with_user_and_pid_namespaces():
    session = P.spawn(argv=["/bin/sleep", "30"], namespaces=["user", "pid"])
    host = ready(session)
    assert P.host_pid(session) == host
    assert Path(f"/proc/{host}/status").exists()
    assert P.info(session).child_pid == 1
    P.abort(session)
    assert next_event() == ("linx_process", "aborted")
    assert P.host_pid(session) == host, "host_pid stays stable after the end"


# -- signals and waits ------------------------------------------------------------------------


def test_sigterm_to_a_running_workload():
    session, _ = start_running(argv=["/bin/sleep", "60"])
    P.signal(session, 15)
    assert next_event() == ("linx_process", "signaled", 15)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize(
    "buffered, stopped",
    [([signal.SIGSTOP, signal.SIGCONT], False), ([signal.SIGCONT, signal.SIGSTOP], True)],
    ids=["stop-then-cont", "cont-then-stop"],
)
def test_signals_before_running_are_buffered_and_flushed_in_order(buffered, stopped):
    """STOP and CONT cancel each other, so only the order they arrive in decides the end state,
    and no handler (which could be installed too late) is involved."""
    session = P.spawn(argv=["/bin/sleep", "60"])
    host = ready(session)
    for signum in buffered:
        P.signal(session, signum)
    assert wait_until(lambda: parked_at_the_checkpoint(host)), "a buffered signal must not touch the parked child"
    P.proceed(session)
    assert next_event() == ("linx_process", "running")
    assert wait_until(lambda: (process_state(host) == "T") == stopped, 2)
    time.sleep(0.1)
    assert (process_state(host) == "T") == stopped
    P.signal(session, signal.SIGKILL)
    assert next_event() == ("linx_process", "signaled", 9)


def test_buffered_sigterm_lands_at_running():
    session = P.spawn(argv=["/bin/sleep", "60"])
    ready(session)
    P.signal(session, 15)
    P.proceed(session)
    assert linx_otp.receive(timeout=TIMEOUT) == ("linx_process", "running")
    assert linx_otp.receive(timeout=TIMEOUT) == ("linx_process", "signaled", 15)


def test_sigkill_to_a_parked_session_is_only_buffered():
    session = P.spawn(argv=["/bin/sleep", "60"])
    host = ready(session)
    P.signal(session, 9)
    assert wait_until(lambda: parked_at_the_checkpoint(host)) and P.info(session).stage == "ready"
    P.abort(session)
    assert next_event() == ("linx_process", "aborted")


def test_wait_before_and_after_the_terminal_event():
    session = P.spawn(argv=["/bin/true"])
    ready(session)
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)
    assert P.wait(session) == ("exited", 0)
    assert linx_otp.flush()[-1] == ("linx_process", "exited", 0)
    assert P.wait(session, 0) == ("exited", 0)


def test_wait_timeout_leaves_the_session_unaffected():
    session, host = start_running(argv=["/bin/sleep", "60"])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        P.wait(session, 0.1)
    assert 0.09 <= time.monotonic() - started < 2
    assert P.info(session).stage == "running" and process_alive(host)
    P.signal(session, 9)
    assert P.wait(session) == ("signaled", 9)


def test_many_threads_can_wait_at_once():
    session, _ = start_running(argv=["/bin/sleep", "60"])
    results = []
    threads = [threading.Thread(target=lambda: results.append(P.wait(session))) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: all(thread_blocked_in(thread, P.wait) for thread in threads))
    P.signal(session, 9)
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == [("signaled", 9)] * 8


def test_signal_rejects_numbers_outside_1_to_64():
    session = P.spawn(argv=["/bin/true"])
    for bad in (0, 65, -1, "TERM", 1.5, True):
        with pytest.raises(linx_otp.LinxError) as caught:
            P.signal(session, bad)
        assert caught.value.reason == ("bad_signal", bad)
        assert isinstance(caught.value, ValueError)
    P.abort(session)


# -- abort and its state table ----------------------------------------------------------------


@needs_root
def test_abort_a_parked_session():
    session = P.spawn(argv=["/bin/sleep", "60"], namespaces=["net"])
    host = ready(session)
    P.abort(session)
    assert next_event() == ("linx_process", "aborted")
    assert P.wait(session) == ("aborted",)
    assert not process_alive(host)
    assert "running" not in [e[1] for e in linx_otp.flush()]


def test_abort_before_ready_is_buffered_and_fires_at_the_checkpoint(stalled_listener, tmp_path):
    marker = tmp_path / "ran"
    session = P.spawn(argv=["/bin/touch", str(marker)], stdio={"stdout": ("connect_unix", stalled_listener.path)})
    assert wait_until(some_agent_blocked_connecting)  # held there until the listener accepts
    assert P.info(session).stage == "starting"
    P.abort(session)
    stalled_listener.release()
    assert next_event()[1] == "ready"
    assert next_event() == ("linx_process", "aborted")
    assert P.wait(session) == ("aborted",) and not marker.exists()


def test_abort_wins_over_auto_proceed(stalled_listener, tmp_path):
    marker = tmp_path / "ran"
    session = P.spawn(
        argv=["/bin/touch", str(marker)],
        auto_proceed=True,
        stdio={"stdout": ("connect_unix", stalled_listener.path)},
    )
    P.abort(session)
    stalled_listener.release()
    assert P.wait(session) == ("aborted",) and not marker.exists()


def test_abort_once_running_raises_running():
    session, _ = start_running(argv=["/bin/sleep", "60"])
    with pytest.raises(linx_otp.LinxError) as caught:
        P.abort(session)
    assert caught.value.reason == "running"
    P.signal(session, 9)
    assert P.wait(session) == ("signaled", 9)


def test_abort_once_terminal_raises_no_process():
    session = P.spawn(argv=["/bin/true"], auto_proceed=True)
    P.wait(session)
    with pytest.raises(linx_otp.LinxError) as caught:
        P.abort(session)
    assert caught.value.reason == "no_process"


# -- every verb in every stage ----------------------------------------------------------------


def test_verbs_before_ready(stalled_listener):
    session = P.spawn(argv=["/bin/true"], stdio={"stdout": ("connect_unix", stalled_listener.path)})
    assert wait_until(some_agent_blocked_connecting)  # held there until the listener accepts
    assert P.info(session).stage == "starting"
    assert repr(P.info(session)) == "<Info spawn starting>"
    assert reason_of(P.proceed, session) == "not_ready"
    assert reason_of(P.host_pid, session) == "not_ready"
    assert reason_of(P.signal, session, 15) == "ok"
    assert reason_of(P.pty_write, session, b"x") == "no_pty"
    assert reason_of(P.pty_set_winsize, session, (24, 80, 0, 0)) == "no_pty"
    assert reason_of(P.set_owner, session, None) == "ok"
    with pytest.raises(TimeoutError):
        P.wait(session, 0.05)
    assert reason_of(P.abort, session) == "ok"
    stalled_listener.release()
    assert P.wait(session) == ("aborted",)


def test_verbs_at_the_checkpoint():
    session = P.spawn(argv=["/bin/sleep", "60"])
    host = ready(session)
    assert P.info(session).stage == "ready"
    assert repr(P.info(session)) == f"<Info spawn ready host={host}>"
    assert P.host_pid(session) == host
    assert reason_of(P.signal, session, 15) == "ok"
    assert reason_of(P.pty_write, session, b"x") == "no_pty"
    assert reason_of(P.set_owner, session, None) == "ok"
    assert reason_of(P.proceed, session) == "ok"
    # The buffered SIGTERM ends the workload as soon as it runs, so a second proceed may find it
    # still starting ("ok"), running, or already over; it never reaches the agent twice.
    assert reason_of(P.proceed, session) in ("ok", "running", "no_process")
    assert P.wait(session) == ("signaled", 15)


def test_verbs_while_running():
    session, host = start_running(argv=["/bin/sleep", "60"])
    assert repr(P.info(session)) == f"<Info spawn running host={host}>"
    assert reason_of(P.proceed, session) == "running"
    assert reason_of(P.abort, session) == "running"
    assert reason_of(P.pty_write, session, b"x") == "no_pty"
    assert reason_of(P.pty_set_winsize, session, (1, 2, 3, 4)) == "no_pty"
    assert P.host_pid(session) == host
    assert reason_of(P.signal, session, 9) == "ok"
    assert P.wait(session) == ("signaled", 9)


def test_verbs_once_terminal_and_once_gone():
    session = P.spawn(argv=["/bin/sh", "-c", "exit 4"], auto_proceed=True)
    host = ready(session)
    assert P.wait(session) == ("exited", 4)
    assert repr(P.info(session)) == f"<Info spawn exited(4) host={host}>"
    info = P.info(session)
    assert (info.mode, info.stage, info.result, info.pty) == ("spawn", "exited", ("exited", 4), False)
    for verb, args in [(P.proceed, ()), (P.abort, ()), (P.signal, (9,))]:
        assert reason_of(verb, session, *args) == "no_process"
    assert reason_of(P.set_owner, session, None) == "ok"
    assert P.host_pid(session) == host
    session.stop()
    for verb, args in [
        (P.proceed, ()),
        (P.abort, ()),
        (P.signal, (9,)),
        (P.info, ()),
        (P.host_pid, ()),
        (P.set_owner, (None,)),
        (P.wait, ()),
        (P.pty_write, (b"x",)),
        (P.pty_set_winsize, ((1, 1, 0, 0),)),
    ]:
        assert reason_of(verb, session, *args) == "no_process", verb.__name__


def test_info_repr_of_signaled_and_errored_sessions():
    session, host = start_running(argv=["/bin/sleep", "60"])
    P.signal(session, 9)
    P.wait(session)
    assert repr(P.info(session)) == f"<Info spawn signaled(9) host={host}>"
    failed = P.spawn(argv=["/this/does/not/exist"], auto_proceed=True)
    failed_host = ready(failed)
    assert P.wait(failed) == ("error", 2, "execve")
    assert repr(P.info(failed)) == f"<Info spawn errored(execve/2) host={failed_host}>"
    assert P.info(failed).stage == "errored"


# -- errors -----------------------------------------------------------------------------------


def test_missing_binary_fails_at_execve_after_proceed():
    session = P.spawn(argv=["/this/does/not/exist"])
    ready(session)
    P.proceed(session)
    assert next_event() == ("linx_process", "error", 2, "execve")
    assert linx_otp.flush() == []


def test_argv0_without_a_slash_is_looked_up_in_the_workloads_path():
    session = P.spawn(argv=["true"], env={"PATH": "/nonexistent:/usr/bin:/bin"}, auto_proceed=True)
    assert P.wait(session) == ("exited", 0)
    default_path = P.spawn(argv=["true"], env={}, auto_proceed=True)
    assert P.wait(default_path) == ("exited", 0)
    unknown = P.spawn(argv=["no-such-program-anywhere"], auto_proceed=True)
    assert P.wait(unknown) == ("error", 2, "execve")


def test_bad_cwd_fails_at_chdir():
    session = P.spawn(argv=["/bin/true"], cwd="/no/such/dir", auto_proceed=True)
    assert P.wait(session) == ("error", 2, "chdir")


def test_validation_errors_start_nothing():
    from support import child_pids

    before = (set(child_pids()), threading.active_count())
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=[])
    assert caught.value.reason == "argv_required"
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=["/bin/true"], namespaces=["typo"])
    assert caught.value.reason == ("bad_namespaces", ["typo"])
    assert (set(child_pids()), threading.active_count()) == before


# -- enter ------------------------------------------------------------------------------------


@needs_root
def test_enter_runs_a_probe_inside_a_containers_namespaces(listener):
    container, target = start_running(argv=["/bin/sleep", "60"], namespaces=["net"])
    probe = P.enter(
        target, argv=["/bin/sh", "-c", "ip -o link | wc -l"], stdio={"stdout": ("connect_unix", listener.path)}
    )
    ready(probe)
    connection = listener.accept()
    P.proceed(probe)
    assert P.wait(probe) == ("exited", 0)
    assert read_all(connection) == b"1\n", "only lo in there"
    assert P.info(probe).mode == "enter"
    P.signal(container, 9)
    assert P.wait(container) == ("signaled", 9)


@needs_root
def test_enter_joins_every_namespace_by_default_and_narrows_when_asked():
    kinds = ["net", "uts", "ipc", "pid", "mount"]
    container, target = start_running(argv=["/bin/sleep", "60"], namespaces=kinds)
    everything = P.enter(target, argv=["/bin/sleep", "60"])
    entered = ready(everything)
    for kind in ("net", "uts", "ipc", "mnt"):
        assert namespace_inode(entered, kind) == namespace_inode(target, kind), kind
    assert P.info(everything).child_pid not in (None, 1, entered), "an in-namespace pid"
    P.abort(everything)
    only_net = P.enter(target, argv=["/bin/true"], namespaces=["net"])
    entered = ready(only_net)
    assert namespace_inode(entered, "net") == namespace_inode(target, "net")
    assert namespace_inode(entered, "uts") == namespace_inode("self", "uts")
    assert P.info(only_net).child_pid == entered
    P.abort(only_net)
    container.stop()


def test_enter_a_bogus_target_fails_at_open_ns_proc_and_never_readies():
    session = P.enter(99999999, argv=["/bin/true"])
    assert next_event() == ("linx_process", "error", 2, "open_ns_proc")
    assert P.info(session).host_pid is None
    session.stop()  # waits for the agent to end: everything it sent has been handled
    assert linx_otp.flush() == []


@pytest.mark.parametrize("target", [0, -1, "1", 1.0, True, None])
def test_enter_rejects_a_bad_target(target):
    with pytest.raises(linx_otp.LinxError) as caught:
        P.enter(target, argv=["/bin/true"])
    assert caught.value.reason == ("bad_target", target)


# -- stdio ------------------------------------------------------------------------------------


def test_devnull_silences_the_workload(capfd):
    session = P.spawn(argv=["/bin/echo", "this won't be seen"], stdio="devnull")
    ready(session)
    P.proceed(session)
    assert P.wait(session) == ("exited", 0)
    assert "won't be seen" not in capfd.readouterr().out


def test_connect_unix_is_connected_at_spawn_and_carries_output_after_proceed(listener):
    session = P.spawn(argv=["/bin/echo", "hello from a workload"], stdio={"stdout": ("connect_unix", listener.path)})
    ready(session)
    connection = listener.accept(timeout=2)  # accepted while the child is still parked
    connection.settimeout(0.1)
    with pytest.raises(TimeoutError):
        connection.recv(100)
    connection.settimeout(5)
    P.proceed(session)
    assert connection.recv(100) == b"hello from a workload\n"
    assert P.wait(session) == ("exited", 0)
    assert connection.recv(100) == b"", "EOF once the workload has exited"


def test_connect_unix_without_a_listener_fails_before_ready(tmp_path):
    session = P.spawn(argv=["/bin/true"], stdio={"stderr": ("connect_unix", str(tmp_path / "nobody"))})
    assert next_event() == ("linx_process", "error", 2, "connect_unix")
    assert P.info(session).host_pid is None


def test_connect_unix_path_too_long_is_enametoolong():
    P.spawn(argv=["/bin/true"], stdio={"stdout": ("connect_unix", "/tmp/" + "x" * 120)})
    assert next_event() == ("linx_process", "error", 36, "connect_unix")


# -- what the workload gets -------------------------------------------------------------------


@pytest.mark.parametrize("stdio", ["inherit", "devnull", "pty", "connect_unix", "capture"])
def test_the_workload_gets_fds_0_1_2_and_nothing_else(stdio, listener):
    chosen = {"stdout": ("connect_unix", listener.path)} if stdio == "connect_unix" else stdio
    chosen = {"stdout": "capture", "stderr": "capture"} if stdio == "capture" else chosen
    session, host = start_running(argv=["/bin/sleep", "60"], stdio=chosen)
    # running is reported at execve; the new image's dynamic loader then briefly opens its
    # libraries, so give it a moment. An inherited fd would never go away.
    assert wait_until(lambda: sorted(os.listdir(f"/proc/{host}/fd")) == ["0", "1", "2"], 2), os.listdir(
        f"/proc/{host}/fd"
    )
    P.signal(session, 9)
    P.wait(session)


def test_fds_seen_from_inside_the_workload(listener):
    session = P.spawn(
        argv=["/bin/sh", "-c", "ls -l /proc/self/fd/ | tail -n +2"], stdio={"stdout": ("connect_unix", listener.path)}
    )
    ready(session)
    connection = listener.accept()
    P.proceed(session)
    lines = read_all(connection).decode().splitlines()
    assert P.wait(session) == ("exited", 0)
    fds = dict(line.split(" ", 8)[-1].split(" -> ", 1) for line in lines)
    extra = {fd: where for fd, where in fds.items() if fd not in ("0", "1", "2")}
    # ls itself holds the directory it is listing open; nothing else may be there
    assert all(where.startswith("/proc/") and where.endswith("/fd") for where in extra.values()), fds
    assert len(extra) <= 1, fds


def test_the_workload_starts_with_default_signals_and_an_empty_mask():
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN, "Python ignores SIGPIPE; the workload must not"
    session, host = start_running(argv=["/bin/sleep", "60"])
    status = dict(line.split(":\t") for line in Path(f"/proc/{host}/status").read_text().splitlines() if ":\t" in line)
    assert int(status["SigIgn"], 16) == 0
    assert int(status["SigBlk"], 16) == 0
    assert status["NoNewPrivs"] == "0"
    P.signal(session, 9)
    P.wait(session)


def test_no_new_privs_is_set_before_ready():
    session = P.spawn(argv=["/bin/sleep", "60"], no_new_privs=True)
    host = ready(session)
    assert "NoNewPrivs:\t1" in Path(f"/proc/{host}/status").read_text()
    P.abort(session)


def test_env_replaces_the_environment_and_cwd_is_applied(listener):
    session = P.spawn(
        argv=["/bin/sh", "-c", "env | grep -v '^PWD=' | sort; pwd"],
        env={"A": "1", "PATH": "/bin"},
        cwd="/tmp",
        stdio={"stdout": ("connect_unix", listener.path)},
        auto_proceed=True,
    )
    connection = listener.accept()
    assert P.wait(session) == ("exited", 0)
    assert read_all(connection).decode().split() == ["A=1", "PATH=/bin", "/tmp"]


def test_env_as_a_list_of_key_value_strings(listener):
    session = P.spawn(
        argv=["/usr/bin/env"],
        env=["X=1", "Y=two=2"],
        stdio={"stdout": ("connect_unix", listener.path)},
        auto_proceed=True,
    )
    connection = listener.accept()
    assert P.wait(session) == ("exited", 0)
    assert read_all(connection) == b"X=1\nY=two=2\n"


def test_default_env_is_the_hosts_at_spawn_time(listener, monkeypatch):
    monkeypatch.setenv("LINX_TEST_MARKER", "present")
    session = P.spawn(argv=["/usr/bin/env"], stdio={"stdout": ("connect_unix", listener.path)}, auto_proceed=True)
    connection = listener.accept()
    assert P.wait(session) == ("exited", 0)
    assert b"LINX_TEST_MARKER=present\n" in read_all(connection)


# -- owners, linger, auto_proceed -------------------------------------------------------------


def test_owner_receives_events_and_set_owner_hands_them_over(box):
    other = linx_otp.Mailbox()
    session = P.spawn(argv=["/bin/sleep", "60"], owner=box)
    assert box.receive(timeout=TIMEOUT)[1] == "ready"
    P.set_owner(session, other)
    P.proceed(session)
    assert other.receive(timeout=TIMEOUT) == ("linx_process", "running")
    P.set_owner(session, box)
    P.signal(session, 9)
    assert box.receive(timeout=TIMEOUT) == ("linx_process", "signaled", 9)
    assert len(other) == 0 and linx_otp.flush() == []


def test_an_actor_can_own_a_session():
    received = []
    done = threading.Event()

    class Owner(linx_otp.Actor):
        def on_receive(self, message):
            received.append(message)
            if message[1] == "exited":
                done.set()

    owner = Owner.start()
    P.spawn(argv=["/bin/true"], owner=owner, auto_proceed=True)
    assert done.wait(TIMEOUT)
    assert [m[1] for m in received] == ["ready", "running", "exited"]
    owner.stop()


def test_events_to_a_dead_owner_are_dropped_without_harm():
    class Owner(linx_otp.Actor):
        pass

    owner = Owner.start()
    owner.stop()
    session = P.spawn(argv=["/bin/true"], owner=owner, auto_proceed=True)
    assert P.wait(session) == ("exited", 0)


def test_linger_true_keeps_the_session_answering_after_the_end():
    session = P.spawn(argv=["/bin/true"], auto_proceed=True)
    P.wait(session)
    assert P.info(session).stage == "exited"  # answered after the end was handled: it did not exit then
    assert session.is_alive()


@pytest.mark.parametrize(
    "argv, action, reason",
    [
        (["/bin/true"], None, "normal"),
        (["/bin/sh", "-c", "exit 7"], None, ("exited", 7)),
        (["/bin/sleep", "60"], "kill", ("signaled", 9)),
        (["/bin/sleep", "60"], "abort", ("shutdown", "aborted")),
        (["/no/such/file"], None, ("error", 2, "execve")),
    ],
)
def test_linger_false_stops_with_the_exit_reason(box, argv, action, reason):
    session = P.spawn(argv=argv, linger=False, owner=box)
    watcher = linx_otp.Mailbox()
    linx_otp.monitor(session, watcher)  # before proceed, so the end cannot outrun the monitor
    box.receive(("linx_process", "ready"), timeout=TIMEOUT)
    if action != "abort":
        P.proceed(session)
    if action == "kill":
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
        P.signal(session, 9)
    elif action == "abort":
        P.abort(session)
    assert watcher.receive(timeout=TIMEOUT) == ("DOWN", session, reason)
    assert not session.is_alive()
    with pytest.raises(linx_otp.LinxError) as caught:
        P.wait(session)
    assert caught.value.reason == "no_process"
    assert P.exit_reason(box.flush()[-1][1:]) == reason


def test_a_graceful_stop_reaps_the_workload_in_every_stage(stalled_listener, box):
    starting = P.spawn(argv=["/bin/true"], stdio={"stdout": ("connect_unix", stalled_listener.path)}, owner=box)
    assert wait_until(some_agent_blocked_connecting)
    parked = P.spawn(argv=["/bin/sleep", "60"], owner=box)
    running, running_host = start_running(argv=["/bin/sleep", "60"])
    parked_host = P.host_pid(parked) if wait_until(lambda: P.info(parked).stage == "ready") else None
    stopper = threading.Thread(target=starting.stop)
    stopper.start()
    assert wait_until(lambda: thread_blocked_in(stopper, type(starting).stop))
    stalled_listener.release()
    stopper.join(TIMEOUT)
    assert parked.stop() and running.stop()
    assert not process_alive(parked_host) and not process_alive(running_host)
    assert next_event() == ("linx_process", "signaled", 9), "the owner still gets one terminal event"
    assert terminal_events(box.flush()) == [("linx_process", "aborted"), ("linx_process", "aborted")]


def test_a_stop_answers_blocked_waiters():
    session, _ = start_running(argv=["/bin/sleep", "60"])
    results = []
    waiter = threading.Thread(target=lambda: results.append(P.wait(session)))
    waiter.start()
    assert wait_until(lambda: thread_blocked_in(waiter, P.wait))
    session.stop()
    waiter.join(TIMEOUT)
    assert results == [("signaled", 9)]


def test_many_concurrent_sessions():
    sessions = [
        P.spawn(argv=["/bin/sh", "-c", f"exit {i % 5}"], auto_proceed=True, owner=linx_otp.Mailbox()) for i in range(60)
    ]
    assert [P.wait(s, TIMEOUT) for s in sessions] == [("exited", i % 5) for i in range(60)]


# -- when the agent dies ----------------------------------------------------------------------


def agent_of(host: int) -> int:
    return int(Path(f"/proc/{host}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("stage", ["ready", "running"])
def test_a_killed_agent_gives_agent_died_137_and_the_workload_dies(stage):
    session = P.spawn(argv=["/bin/sleep", "60"])
    host = ready(session)
    if stage == "running":
        P.proceed(session)
        assert next_event() == ("linx_process", "running")
    os.kill(agent_of(host), signal.SIGKILL)
    assert next_event() == ("linx_process", "error", 137, "agent_died")
    assert P.wait(session) == ("error", 137, "agent_died")
    assert wait_until(lambda: not process_alive(host), 3), "the workload must die with its agent"


def test_calls_queued_behind_a_stop_are_answered_never_dropped():
    """Asks and a second stop that queue up behind a stop must each get an answer (a result or
    no_process); none may be swallowed and leave its caller blocked."""
    import pykka

    for _ in range(30):
        session, _ = start_running(argv=["/bin/sleep", "60"])
        first_stop = session.stop(block=False)
        queued = [session.ask(P.GetInfo(), block=False) for _ in range(5)]
        second_stop = session.stop(block=False)
        waiter = threading.Thread(target=reason_of, args=(P.wait, session))
        waiter.start()
        assert first_stop.get(timeout=5) is True
        for future in queued:
            try:
                future.get(timeout=5)
            except pykka.ActorDeadError:
                pass
        assert second_stop.get(timeout=5) in (True, False)
        waiter.join(5)
        assert not waiter.is_alive()
        linx_otp.flush()


# -- capture: stdout and stderr as owner events ---------------------------------------------------


def test_captured_streams_arrive_as_events_before_the_outcome(box):
    script = "echo to-out; echo to-err >&2; head -c 200000 /dev/zero | tr '\\0' x; exit 4"
    session = P.spawn(
        argv=["/bin/sh", "-c", script], stdio={"stdout": "capture", "stderr": "capture"}, owner=box, auto_proceed=True
    )
    events = []
    while not events or events[-1][1] not in ("exited", "signaled", "error"):
        events.append(box.receive(timeout=TIMEOUT))
    assert events[-1] == ("linx_process", "exited", 4)
    out = b"".join(event[2] for event in events if event[1] == "stdout")
    err = b"".join(event[2] for event in events if event[1] == "stderr")
    assert out == b"to-out\n" + b"x" * 200000 and err == b"to-err\n"
    assert max(len(event[2]) for event in events if event[1] in ("stdout", "stderr")) <= protocol.OUTPUT_CHUNK
    assert [event[1] for event in events[:2]] == ["ready", "running"]
    session.stop()


def test_a_descendant_holding_a_captured_pipe_is_ended_before_the_outcome(box):
    script = "sleep 30 & echo $!; echo parent-done"
    session = P.spawn(argv=["/bin/sh", "-c", script], stdio={"stdout": "capture"}, owner=box, auto_proceed=True)
    assert P.wait(session, 5) == ("exited", 0)
    output = b"".join(event[2] for event in box.flush() if event[1] == "stdout").split()
    assert output[1] == b"parent-done"
    assert not process_alive(int(output[0])), "the orphaned sleep (which held the pipe) is ended and reaped"
    session.stop()


def test_stdin_cannot_be_captured():
    with pytest.raises(linx_otp.LinxValueError) as raised:
        P.spawn(argv=["/bin/true"], stdio={"stdin": "capture"})
    assert raised.value.reason == ("bad_stdio", ("capture_is_for_output", "stdin"))


FORKING_PROGRAM = """
import os, signal, sys
from linx_otp import agent, process as P
agent.SPAWN_SERVER_FROM = int(sys.argv[1])
before = P.spawn(argv=["/bin/true"], auto_proceed=True, stdio="devnull")
print("parent", P.wait(before, timeout=10), flush=True)
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a hang ends the child rather than the test's budget
    child = P.spawn(argv=["/bin/sh", "-c", "exit 5"], auto_proceed=True, stdio="devnull")
    print("child", P.wait(child, timeout=10), flush=True)
    child.stop()
    os._exit(0)
print("child status", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
after = P.spawn(argv=["/bin/sh", "-c", "exit 6"], auto_proceed=True, stdio="devnull")
print("parent again", P.wait(after, timeout=10), flush=True)
before.stop(); after.stop()
"""


@pytest.mark.parametrize("spawn_server_from", [0, 10**9], ids=["through_the_spawn_server", "direct"])
def test_a_child_made_by_os_fork_runs_sessions_of_its_own_and_the_parent_goes_on(spawn_server_from):
    """A user's program that forks: the child has none of the parent's threads, so it starts
    its own I/O thread, spare actor thread and spawn server; the parent's are untouched."""
    done = subprocess.run(
        [sys.executable, "-c", FORKING_PROGRAM, str(spawn_server_from)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == [
        "parent ('exited', 0)",
        "child ('exited', 5)",
        "child status 0",
        "parent again ('exited', 6)",
    ], (done.stdout, done.stderr)
