"""Limits and errors at a session's edges (issue 12 §3): a stop that honours the child's
shutdown seconds when the agent is stuck, ``wait`` timeouts that are not durations, and spawns
the system refuses (out of fds, out of processes)."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from support import needs_root, process_alive, wait_until

from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.actor import actor_of
from linx_otp.errors import LinxValueError

TIMEOUT = 10


def agent_of(host_pid: int) -> int:
    return int(Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_stuck_agent_does_not_stretch_a_stop_past_the_shutdown_seconds(box):
    spec = P.child_spec(id="stuck", argv=["sleep", "1000"], auto_proceed=True, shutdown=1.0, owner=box)
    tree = S.start([spec])
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    host = P.host_pid(S.which_children(tree)[0][1])
    os.kill(agent_of(host), signal.SIGSTOP)
    started = time.monotonic()
    S.stop(tree)
    elapsed = time.monotonic() - started
    # 1 s of shutdown, then 0.5 s for the stuck agent before it is killed; the session's own
    # 10 s stop timeout used to come first.
    assert 1.0 <= elapsed < 5.0, elapsed
    assert wait_until(lambda: not process_alive(host), TIMEOUT), "the workload dies with its agent"
    assert box.receive(("linx_process", "error"), timeout=TIMEOUT)[3] == "agent_died"


@pytest.mark.parametrize("timeout", [math.nan, -1, -0.001, math.inf, 1e300, "1", True])
def test_wait_refuses_a_timeout_that_is_not_a_duration(timeout):
    session = P.spawn(argv=["/bin/true"])
    try:
        with pytest.raises(LinxValueError) as raised:
            P.wait(session, timeout)
        assert raised.value.reason == ("bad_timeout", timeout) or timeout != timeout
        assert isinstance(raised.value, ValueError)
        assert P.info(session).result is None, "the session is untouched"
    finally:
        session.stop()


def test_wait_with_a_zero_timeout_is_a_poll():
    session = P.spawn(argv=["/bin/true"])
    try:
        with pytest.raises(TimeoutError):
            P.wait(session, 0)
    finally:
        session.stop()


# -- spawns the system refuses: each in a Python process of its own, whose limits it lowers ----------

PRELUDE = r"""
import json, os, sys
from pathlib import Path
import linx_otp
from linx_otp import process as P

def children():
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            found += [int(pid) for pid in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that has just ended
            pass
    return found

def attempt():
    # the reason a spawn raises, or the session's outcome
    try:
        session = P.spawn(argv=["/bin/true"], auto_proceed=True)
    except linx_otp.LinxError as error:
        return list(error.reason)
    try:
        return ["outcome", *P.wait(session, 10)]
    finally:
        session.stop()

warm = P.spawn(argv=["/bin/true"], auto_proceed=True)  # the I/O and spare threads exist now
P.wait(warm, 10)
warm.stop()
"""

OUT_OF_FDS = r"""
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
fds_before = sorted(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in fds_before) + 3, hard))
filler = []
while True:
    try:
        filler.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        break
results = []
for _ in range(2):  # with no fd free, then with one
    results.append(attempt())
    os.close(filler.pop())
for fd in filler:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
fds_after = sorted(os.listdir("/proc/self/fd"))
print(json.dumps({"results": results, "children": children(), "fds_kept": fds_before == fds_after, "after": attempt()}))
"""

OUT_OF_PROCESSES = r"""
group = Path(sys.argv[1])
(group / "cgroup.procs").write_text(str(os.getpid()))
results = []
for room in (0, 1):  # no process left for the agent; one, which the agent takes
    (group / "pids.max").write_text(str(int((group / "pids.current").read_text()) + room))
    results.append(attempt())
(group / "pids.max").write_text("max")
print(json.dumps({"results": results, "children": children(), "after": attempt()}))
"""


def run_limited(script: str, *arguments: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, *arguments], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_running_out_of_fds_is_spawn_failed_and_leaves_nothing():
    report = run_limited(OUT_OF_FDS)
    assert report["results"] == [["spawn_failed", "emfile"], ["spawn_failed", "emfile"]]
    assert report["children"] == [] and report["fds_kept"], "no agent, no fd left behind"
    assert report["after"] == ["outcome", "exited", 0], "spawning works again once fds are free"


@needs_root
def test_running_out_of_processes_is_spawn_failed_and_leaves_nothing():
    pids_root = Path("/sys/fs/cgroup/pids")
    if not (pids_root / "cgroup.procs").exists():
        pytest.skip("no v1 pids controller at /sys/fs/cgroup/pids")
    group = pids_root / f"linx-test-{uuid.uuid4().hex[:12]}"
    group.mkdir()
    try:
        report = run_limited(OUT_OF_PROCESSES, str(group))
    finally:
        assert wait_until(lambda: not (group / "cgroup.procs").read_text().split(), TIMEOUT)
        group.rmdir()
    assert report["results"] == [
        ["spawn_failed", "eagain"],
        ["outcome", "error", errno.EAGAIN, "clone"],  # the agent ran, and could not clone
    ]
    assert report["children"] == []
    assert report["after"] == ["outcome", "exited", 0]


def test_a_signal_and_the_outcome_pass_a_session_thread_that_is_busy(box):
    """``signal`` sends straight to a running workload's agent, and a lingering session's outcome
    reaches its owner from the I/O thread: neither waits for the session's own thread (at 10,000
    sessions that round trip was most of the time it took to signal them all)."""
    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    actor = actor_of(session)
    answer_info, held, release = actor._info, threading.Event(), threading.Event()

    def info_held_up():
        held.set()
        release.wait(TIMEOUT)
        return answer_info()

    actor._info = info_held_up
    pending_info = session.ask(P.GetInfo(), block=False)
    try:
        assert held.wait(TIMEOUT), "the session's thread is busy answering info()"
        signaller = threading.Thread(target=P.signal, args=(session, signal.SIGTERM))
        signaller.start()
        signaller.join(TIMEOUT)
        assert not signaller.is_alive(), "signal() waited for the session's thread"
        event = box.receive(("linx_process", "signaled"), timeout=TIMEOUT)
        assert event == ("linx_process", "signaled", signal.SIGTERM)
    finally:
        release.set()
    assert pending_info.get(timeout=TIMEOUT).stage == "signaled"
    assert P.wait(session, TIMEOUT) == ("signaled", signal.SIGTERM)
    assert session.stop()
