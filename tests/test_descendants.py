"""A workload's descendants die with it (issue 12 §2): the agent is their subreaper, ends the
whole remaining tree when the workload ends, is stopped, or is orphaned, and reaps it before
the terminal event; and the workload dies with its agent whatever ids it switched to.

Every workload here carries a marker in its environment, which its descendants inherit; the
owner of each session looks for marked processes at the very moment the terminal event is
delivered, so "none left" means none left when the event arrived, not some time later."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import needs_root, process_alive, wait_until

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp import user as U

TIMEOUT = 10
TERMINAL = ("exited", "signaled", "aborted", "error")
NAMESPACE_CASES = pytest.mark.parametrize("namespaces", [[], ["pid", "mount"]], ids=["host-pids", "pid-namespace"])


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark``."""
    needle = f"LINX_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        if needle in environment.split(b"\0") and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Witness:
    """An owner that notes the marked processes alive at the instant each terminal event is
    delivered, then passes every event on to its mailbox."""

    def __init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self.box = linx_otp.Mailbox()
        self.left_at_terminal: list[list[int]] = []
        self.terminal_at: list[float] = []

    def tell(self, message: tuple) -> None:
        if message[0] == "linx_process" and message[1] in TERMINAL:
            self.left_at_terminal.append(marked(self.mark))
            self.terminal_at.append(time.monotonic())
        self.box.tell(message)

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LINX_TEST_MARK": self.mark}

    def options(self, **more) -> dict:
        return {"env": self.env(), "owner": self, **more}

    def running(self) -> None:
        self.box.receive(("linx_process", "running"), timeout=TIMEOUT)

    def wait_for_marked(self, count: int) -> list[int]:
        assert wait_until(lambda: len(marked(self.mark)) >= count, TIMEOUT), marked(self.mark)
        return marked(self.mark)

    def kill_leftovers(self) -> None:
        for pid in marked(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def witness():
    made = Witness()
    yield made
    left = marked(made.mark)
    made.kill_leftovers()
    assert not left, f"marked processes outlived the test: {left}"


def run_to_end(witness: Witness, script: str, **options) -> tuple:
    session = P.spawn(argv=["sh", "-c", script], auto_proceed=True, **witness.options(**options))
    try:
        return P.wait(session, TIMEOUT)
    finally:
        session.stop()


# -- the workload ends by itself ------------------------------------------------------------------


@NAMESPACE_CASES
def test_a_background_job_is_ended_before_the_outcome_which_stays_the_workloads(witness, namespaces):
    outcome = run_to_end(witness, "sleep 1013 & sleep 1014 & exit 3", namespaces=namespaces)
    assert outcome == ("exited", 3)
    assert witness.left_at_terminal == [[]]


@NAMESPACE_CASES
def test_double_forked_and_setsid_daemons_are_ended(witness, namespaces):
    script = "setsid sh -c 'sleep 1013 &'; (sleep 1014 &); (setsid sleep 1015 &); sleep 0.1; exit 0"
    assert run_to_end(witness, script, namespaces=namespaces) == ("exited", 0)
    assert witness.left_at_terminal == [[]]


def test_a_signaled_workload_keeps_its_signal_as_the_outcome(witness):
    assert run_to_end(witness, "sleep 1013 & kill -USR1 $$") == ("signaled", signal.SIGUSR1)
    assert witness.left_at_terminal == [[]]


def test_a_term_ignoring_descendant_gets_sigkill_once_the_grace_is_over(witness, tmp_path):
    armed, go = tmp_path / "armed", tmp_path / "go"
    ignorer = f"trap '' TERM; touch {armed}; while :; do sleep 0.05; done"
    # The workload exits (starting the grace) only once told to, after armed_at is taken.
    script = f'sh -c "{ignorer}" & while [ ! -e {go} ]; do sleep 0.01; done; exit 4'
    session = P.spawn(argv=["sh", "-c", script], auto_proceed=True, **witness.options(orphan_policy=("kill", 0.5)))
    assert wait_until(armed.exists, TIMEOUT)
    armed_at = time.monotonic()
    go.touch()
    assert P.wait(session, TIMEOUT) == ("exited", 4)
    session.stop()
    assert witness.left_at_terminal == [[]]
    assert witness.terminal_at[0] - armed_at >= 0.45, "SIGKILL comes only after the grace"


def test_descendants_forking_while_being_killed_are_all_ended(witness):
    # A binary tree of TERM-ignoring shells, each forking two more down to depth 7 (255 in
    # all), still growing when the workload exits and the grace (0.1 s) runs out.
    spread = "spread() { trap '' TERM; if [ $1 -gt 0 ]; then spread $(($1-1)) & spread $(($1-1)) & fi; sleep 1013; }"
    outcome = run_to_end(witness, f"{spread}; spread 7 & sleep 0.05; exit 0", orphan_policy=("kill", 0.1))
    assert outcome == ("exited", 0)
    assert witness.left_at_terminal == [[]]


def test_a_stop_while_descendants_fork_leaves_nothing(witness):
    spawner = "trap '' TERM; i=0; while [ $i -lt 400 ]; do (trap '' TERM; sleep 1013) & i=$((i+1)); done; wait"
    argv = ["sh", "-c", 'sh -c "$1" & wait', "outer", spawner]
    session = P.spawn(argv=argv, auto_proceed=True, **witness.options())
    witness.wait_for_marked(20)
    session.stop()  # SIGKILL to the whole tree, mid-growth
    assert witness.left_at_terminal == [[]]


def test_orphans_are_reaped_while_the_workload_runs(witness):
    session = P.spawn(
        argv=["sh", "-c", "for i in 1 2 3 4 5; do (sleep 0 &); done; sleep 1000"],
        auto_proceed=True,
        **witness.options(),
    )
    witness.running()
    host = P.host_pid(session)
    agent = int(Path(f"/proc/{host}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def zombies_of_the_agent() -> list[int]:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        return [int(pid) for pid in children if int(pid) != host and not process_alive(int(pid))]

    assert wait_until(lambda: len(witness.wait_for_marked(2)) == 2, TIMEOUT), "the five orphans exit at once"
    assert wait_until(lambda: not zombies_of_the_agent(), TIMEOUT), "the agent reaps orphans as they exit"
    session.stop()
    assert witness.left_at_terminal == [[]]


def test_enter_mode_ends_the_workloads_descendants(witness):
    session = P.enter(
        os.getpid(),
        argv=["sh", "-c", "sleep 1013 & exit 2"],
        namespaces=["net"],
        auto_proceed=True,
        **witness.options(),
    )
    assert P.wait(session, TIMEOUT) == ("exited", 2)
    session.stop()
    assert witness.left_at_terminal == [[]]


@needs_root
def test_a_stop_in_an_entered_pid_namespace_ends_the_tree_below_the_workload(witness, box):
    # Orphans there go to the namespace's init, not to the agent (PROTOCOL.md, "Descendants"),
    # but what still hangs below the workload when it is stopped is frozen and killed with it.
    target = P.spawn(argv=["sleep", "1000"], namespaces=["pid"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    try:
        session = P.enter(
            P.host_pid(target),
            argv=["sh", "-c", "sleep 1013 & sleep 1014 & wait"],
            namespaces=["pid"],
            auto_proceed=True,
            **witness.options(),
        )
        witness.wait_for_marked(3)
        session.stop()
        assert witness.left_at_terminal == [[]]
    finally:
        target.stop()


# -- stops and restarts under a supervisor ----------------------------------------------------------


@NAMESPACE_CASES
def test_a_supervisor_stop_leaves_no_descendant(witness, namespaces):
    spec = P.child_spec(
        id="leaky",
        argv=["sh", "-c", "sleep 1013 & :; sleep 1000"],
        auto_proceed=True,
        namespaces=namespaces,
        **witness.options(),
    )
    tree = S.start([spec])
    witness.running()
    witness.wait_for_marked(3)  # sh, and its two sleeps
    S.stop(tree)
    assert witness.left_at_terminal == [[]]
    assert marked(witness.mark) == []


def test_a_supervisor_stop_ends_term_ignoring_descendants_within_the_shutdown(witness):
    ignorer = "sh -c \"trap '' TERM; while :; do sleep 0.05; done\""
    spec = P.child_spec(
        id="stubborn",
        argv=["sh", "-c", f"{ignorer} & sleep 1000"],
        auto_proceed=True,
        shutdown=2.0,
        orphan_policy=("kill", 0.3),
        **witness.options(),
    )
    tree = S.start([spec])
    witness.running()
    witness.wait_for_marked(3)
    S.stop(tree)
    assert witness.left_at_terminal == [[]]
    # SIGTERM ended the workload, and the descendant's SIGKILL came within the shutdown seconds
    assert witness.box.receive(("linx_process", "signaled"), timeout=0)[2] == signal.SIGTERM


def test_restarts_do_not_leak_the_old_incarnations_descendants(witness):
    spec = P.child_spec(
        id="restarted", argv=["sh", "-c", "sleep 1013 & sleep 1000"], auto_proceed=True, **witness.options()
    )
    tree = S.start([spec], max_restarts=10)
    for _ in range(3):
        witness.running()
        workload = P.host_pid(S.which_children(tree)[0][1])
        witness.wait_for_marked(3)
        os.kill(workload, signal.SIGKILL)
        witness.box.receive(("linx_process", "signaled"), timeout=TIMEOUT)
    witness.running()
    assert len(witness.wait_for_marked(3)) == 3, "only the live incarnation's sh and sleeps"
    S.stop(tree)
    assert witness.left_at_terminal == [[], [], [], []]


# -- the orphan policy --------------------------------------------------------------------------

HOST_SCRIPT = r"""
import json, sys, time
import linx_otp
from linx_otp import process as P

argv, env, namespaces, policy = json.loads(sys.argv[1])
policy = policy if policy == "linger" else tuple(policy)
session = P.spawn(argv=argv, env=env, namespaces=namespaces, auto_proceed=True, orphan_policy=policy)
linx_otp.receive(("linx_process", "running"), timeout=10)
print(P.host_pid(session), flush=True)
time.sleep(600)
"""


def orphan_descendants(witness: Witness, script: str, namespaces: list[str], policy) -> None:
    """Run ``script`` from a Python host process, then kill the host with SIGKILL."""
    request = json.dumps([["sh", "-c", script], witness.env(), namespaces, policy])
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, request], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout.readline(), "the host script failed to start its session"
        witness.wait_for_marked(3)
        host.kill()
        host.wait(TIMEOUT)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(TIMEOUT)
        host.stdout.close()


@NAMESPACE_CASES
def test_the_orphan_policy_ends_the_descendants_too(witness, namespaces):
    orphan_descendants(witness, "sleep 1013 & sleep 1000", namespaces, ["kill", 0.5])
    assert wait_until(lambda: not marked(witness.mark), TIMEOUT)


def test_a_lingering_workload_still_takes_its_descendants_when_it_ends(witness, tmp_path):
    release = tmp_path / "release"
    orphan_descendants(witness, f"sleep 1013 & while [ ! -e {release} ]; do sleep 0.02; done", [], "linger")
    assert len(marked(witness.mark)) >= 2, "linger: the orphaned workload and its job run on"
    release.touch()
    assert wait_until(lambda: not marked(witness.mark), TIMEOUT)


# -- the workload dies with its agent, whatever ids it took -------------------------------------------


def agent_of(host_pid: int) -> int:
    return int(Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@needs_root
@pytest.mark.parametrize(
    ("maps", "namespaces"),
    [
        ({"uid": True, "gid": True}, ["user"]),
        ({"uid": True, "gid": False}, ["user"]),
        ({"uid": False, "gid": True}, ["user"]),
        ({"uid": True, "gid": True}, ["user", "pid", "mount"]),
    ],
    ids=["uid-and-gid", "uid-only", "gid-only", "uid-and-gid-in-a-pid-namespace"],
)
def test_the_workload_dies_with_its_agent_after_switching_ids(witness, maps, namespaces):
    session = P.spawn(argv=["sleep", "1000"], namespaces=namespaces, **witness.options())
    host = witness.box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    if maps["uid"]:
        U.set_uid_map(host, [(0, 100000, 65536)])
    if maps["gid"]:
        U.deny_setgroups(host)
        U.set_gid_map(host, [(0, 100000, 65536)])
    P.proceed(session)
    witness.running()
    status = Path(f"/proc/{host}/status").read_text()
    if maps["uid"]:
        assert "Uid:\t100000\t100000\t100000\t100000" in status, "the workload took uid 0 inside"
    if maps["gid"]:
        assert "Gid:\t100000\t100000\t100000\t100000" in status, "the workload took gid 0 inside"
    os.kill(agent_of(host), signal.SIGKILL)
    assert wait_until(lambda: not process_alive(host), TIMEOUT), "the workload outlived its agent"
    assert P.wait(session, TIMEOUT)[::2] == ("error", "agent_died")
    session.stop()
