"""The orphan policy, with a real Python host process killed (or exiting) under its sessions.

Each test runs a small host script as a subprocess, learns the workload's host pid from it,
then kills the host with SIGKILL (or lets it exit) and watches the workload from here."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from support import ends_within, pipe_inode, process_alive, wait_until

HOST_SCRIPT = r"""
import json, sys, time
import linx_otp
from linx_otp import process as P

argv, policy, proceed, then, stdio = json.loads(sys.argv[1])
options = {} if policy is None else {"orphan_policy": tuple(policy) if isinstance(policy, list) else policy}
if stdio is not None:
    options["stdio"] = stdio
session = P.spawn(argv=argv, auto_proceed=proceed, **options)
linx_otp.receive(("linx_process", "ready"), timeout=10)
if proceed:
    linx_otp.receive(("linx_process", "running"), timeout=10)
print(P.host_pid(session), flush=True)
if then == "sleep":
    time.sleep(600)
# otherwise: fall off the end of the script with the session still live
"""


class Host:
    """A Python process owning one session; the workload's host pid is read from it."""

    def __init__(self, argv, policy=None, proceed=True, then="sleep", stdio=None):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT, json.dumps([argv, policy, proceed, then, stdio])],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        assert line, "the host script failed to start its session"
        self.workload = int(line)

    def kill(self):
        self.process.kill()
        self.process.wait(10)

    def cleanup(self):
        if self.process.poll() is None:
            self.kill()
        self.process.stdout.close()
        try:
            os.kill(self.workload, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def hosts():
    started = []

    def start(*args, **kwargs):
        host = Host(*args, **kwargs)
        started.append(host)
        return host

    yield start
    for host in started:
        host.cleanup()


def test_default_policy_terminates_a_running_workload(hosts):
    host = hosts(["/bin/sleep", "60"])
    assert process_alive(host.workload)
    host.kill()
    assert wait_until(lambda: not process_alive(host.workload), 3), "SIGTERM should end sleep at once"


def test_kill_policy_escalates_to_sigkill_after_the_grace(hosts, tmp_path):
    armed, termed = tmp_path / "armed", tmp_path / "termed"
    script = f'trap "touch {termed}" TERM; touch {armed}; while :; do sleep 0.05; done'  # notes TERM, goes on
    host = hosts(["/bin/sh", "-c", script], policy=["kill", 1.0])
    assert wait_until(armed.exists), "the workload never set its trap"
    killed_at = time.monotonic()  # before: the grace counts from the agent seeing its host gone
    host.kill()
    # The SIGKILL comes 1 s after the agent's SIGTERM, which is after killed_at: the workload lives past
    # killed_at + 0.8 whatever the load (0.2 s left for this thread to wake). Not counted from seeing `termed`:
    # a loaded machine runs the trap and shows its file late, and 0.8 s from then went past the SIGKILL.
    assert not ends_within(host.workload, max(0.0, killed_at + 0.8 - time.monotonic())), (
        "SIGKILL must wait for the grace"
    )
    assert wait_until(termed.exists), "the orphan policy asks with SIGTERM first"
    assert ends_within(host.workload, 4), "SIGKILL after the grace"
    assert time.monotonic() - killed_at >= 1.0


def test_kill_policy_with_zero_grace_kills_at_once(hosts):
    host = hosts(["/bin/sh", "-c", 'trap "" TERM; while :; do sleep 0.05; done'], policy=["kill", 0])
    host.kill()
    assert wait_until(lambda: not process_alive(host.workload), 2)


def test_linger_policy_leaves_the_workload_running(hosts, tmp_path):
    armed, termed = tmp_path / "armed", tmp_path / "termed"
    script = f'trap "touch {termed}" TERM; touch {armed}; while :; do sleep 0.05; done'  # notes TERM, goes on
    host = hosts(["/bin/sh", "-c", script], policy="linger")
    assert wait_until(armed.exists), "the workload never set its trap"
    host.kill()
    # Nothing marks "the agent has applied linger": wait for what the other policies do at once
    # instead (an end stops the wait as it happens; a SIGTERM leaves `termed`).
    assert not ends_within(host.workload, 0.5) and not termed.exists()
    assert process_alive(host.workload)


def test_a_workload_blocked_on_an_unread_held_pipe_finishes_after_its_host_is_killed(hosts, tmp_path):
    """The host's own mailbox owns the session, so the host reads the capture pipe itself (held
    output) and, never reading, leaves the workload blocked in write(2). After kill -9 of the host
    the agent takes the pipe over at its socket's hang-up and drops what comes: with linger, the
    workload runs to its end instead of blocking for good."""
    marker = tmp_path / "finished"
    script = f"head -c {8 * 1024 * 1024} /dev/zero; touch {marker}"  # 8 windows: blocks while unread
    host = hosts(["/bin/sh", "-c", script], policy="linger", stdio={"stdout": "capture"})
    children = pathlib.Path(f"/proc/{host.workload}/task/{host.workload}/children")
    assert wait_until(lambda: children.read_text().split(), 10)
    writer = int(children.read_text().split()[0])  # head, the shell's child
    assert wait_until(lambda: "pipe_write" in pathlib.Path(f"/proc/{writer}/wchan").read_text(), 10)
    held = {pipe_inode(f"/proc/{host.process.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{host.process.pid}/fd")}
    assert pipe_inode(f"/proc/{writer}/fd/1") in held, "the host holds the pipe's read end: held, not relayed"
    host.kill()
    assert wait_until(marker.exists, 10), "the workload stayed blocked after its host died"
    assert wait_until(lambda: not process_alive(host.workload), 5)


def test_a_parked_child_never_runs_when_the_host_dies(hosts, tmp_path):
    marker = tmp_path / "ran"
    host = hosts(["/bin/touch", str(marker)], proceed=False)
    assert process_alive(host.workload)
    host.kill()
    assert wait_until(lambda: not process_alive(host.workload), 3)
    assert not marker.exists()  # final: it can run nothing more once it has ended


def test_a_script_that_never_stops_its_sessions_still_exits(hosts, tmp_path):
    running = hosts(["/bin/sleep", "60"], then="exit")
    assert running.process.wait(10) == 0, "live sessions must not keep the interpreter alive"
    assert wait_until(lambda: not process_alive(running.workload), 3), "the orphan policy applies"

    marker = tmp_path / "ran"
    parked = hosts(["/bin/touch", str(marker)], proceed=False, then="exit")
    assert parked.process.wait(10) == 0
    assert wait_until(lambda: not process_alive(parked.workload), 3)
    assert not marker.exists(), "a parked child never runs"
