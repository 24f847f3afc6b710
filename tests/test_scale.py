"""Many live sessions in one Python process (issue 15): a live session holds one fd here, an
agent is reaped however its socket's end and its exit interleave, and 10,000 sessions run and
end under the default fd limits with nothing left."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading

import pytest
from support import (
    IS_ROOT,
    PID_MAX,
    child_pids,
    orphaned_agent_pids,
    pid_max_at_least,
    threads_added_since,
    wait_until,
)

import linx_otp
from linx_otp import agent, futex_hash, spawn_server
from linx_otp import process as P
from linx_otp.actor import Actor
from linx_otp.agent import AgentConnection
from linx_otp.reactor import reactor

TIMEOUT = 30


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def receive_all(box: linx_otp.Mailbox, kind: str, count: int, timeout: float = TIMEOUT) -> None:
    """Take events in order until ``count`` of ``kind`` have come (the others are dropped)."""
    seen = 0
    while seen < count:
        event = box.receive(timeout=timeout)
        if event[1] == kind:
            seen += 1


def test_a_live_session_holds_at_most_one_fd_in_this_process(box):
    warm = P.spawn(argv=["/bin/true"], auto_proceed=True, owner=box)  # the reactor and agent image exist now
    P.wait(warm, TIMEOUT)
    warm.stop()
    box.flush()
    count = 100
    before = open_fds()
    sessions = [P.spawn(argv=["/bin/sleep", "60"], auto_proceed=True, owner=box) for _ in range(count)]
    receive_all(box, "running", count)
    grown = len(open_fds() - before)
    for session in sessions:
        P.signal(session, signal.SIGTERM)
    receive_all(box, "signaled", count)
    for session in sessions:
        session.stop()
    assert grown <= count, f"{count} live sessions hold {grown} fds in this process"
    assert wait_until(lambda: open_fds() <= before, 5), f"fds left: {open_fds() - before}"


def connection_to_a_process_that_closed_its_end(argv: list[str], lowest_fd: int = 0) -> AgentConnection:
    """A connection whose socket reads end-of-file while its process lives on: the order an
    agent's exit can be seen in (its files are closed a moment before it can be reaped). Its
    socket's fd is ``lowest_fd`` or above."""
    ours, theirs = socket.socketpair()
    pid = os.posix_spawn(argv[0], argv, {})  # theirs is close-on-exec: the process never holds it
    theirs.close()
    moved = socket.socket(fileno=fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD_CLOEXEC, lowest_fd))
    ours.close()
    connection = AgentConnection(moved, pid)
    connection.listen(lambda: None)
    return connection


def test_an_agent_whose_socket_ends_before_it_exits_is_reaped_when_it_exits():
    reactor()  # its epoll and wakeup fds are there before the count, whichever test ran first
    before, live_agents = open_fds(), agent._live_agents
    connection = connection_to_a_process_that_closed_its_end(["/bin/sleep", "60"])
    connection.watch()
    # the socket is closed at its end-of-file; one pidfd waits for the exit instead
    assert wait_until(lambda: len(open_fds() - before) == 1 and connection.pid in child_pids(), 5)
    assert not connection.finished.wait(0.2), "the process lives: no agent_exit yet"
    connection.kill()
    assert connection.finished.wait(5)
    assert connection.take_events() == [("agent_exit", 128 + signal.SIGKILL)]
    assert connection.pid not in child_pids()
    assert wait_until(lambda: open_fds() <= before, 5), f"fds left: {open_fds() - before}"
    connection.kill()  # reaped: a no-op, never a signal to whoever has the pid now
    assert agent._live_agents == live_agents, "the count of live agent sockets (spawn server threshold) drifted"


OUT_OF_FDS_WHILE_AN_AGENT_EXITS = r"""
import json, os, resource, signal, sys, time
sys.path[:0] = sys.argv[1:3]
from test_scale import connection_to_a_process_that_closed_its_end
from linx_otp.reactor import reactor
reactor()
SOCKET_FD = 900
connection = connection_to_a_process_that_closed_its_end(["/bin/sleep", "60"], SOCKET_FD)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (SOCKET_FD - 100, hard))
filler = []
while True:  # every fd under the limit taken; the socket's, above it, never counts as free
    try:
        filler.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        break
def socket_open():
    try:
        os.fstat(SOCKET_FD)
        return True
    except OSError:
        return False
connection.watch()
while socket_open():  # its end-of-file read and the socket closed, with the process alive
    time.sleep(0.01)
alive_after_the_socket = not connection.finished.wait(0.2)
os.kill(connection.pid, signal.SIGKILL)
finished = connection.finished.wait(5)  # no pidfd could be opened: only looking again reaps it
for fd in filler:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(json.dumps({"waited": alive_after_the_socket, "finished": finished, "events": connection.take_events()}))
"""


def test_an_exiting_agent_is_reaped_even_with_no_fd_free_for_a_pidfd():
    tests = os.path.dirname(__file__)
    done = subprocess.run(
        [sys.executable, "-c", OUT_OF_FDS_WHILE_AN_AGENT_EXITS, tests, os.path.dirname(tests)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "waited": True,
        "finished": True,
        "events": [["agent_exit", 128 + signal.SIGKILL]],
    }


SESSIONS = 10_000
TASKS_PER_SESSION = 3
"""An actor thread, an agent and a workload."""
PID_ROOM = 32768 + (TASKS_PER_SESSION + 1) * SESSIONS
"""``kernel.pid_max`` for the test: this machine's default for everybody else, and room for ours."""
FDS_NEEDED = SESSIONS + 1000
"""One fd per session, and room for the test process's own."""


@pytest.fixture
def room_for_ten_thousand_sessions():
    """The fd soft limit at least ``FDS_NEEDED`` (raised up to the hard limit if lower: any
    process may) and ``kernel.pid_max`` at least ``PID_ROOM`` (raised as root), both put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        pytest.skip(f"{SESSIONS} sessions need {FDS_NEEDED} fds; the hard fd limit here is {hard}")
    if int(PID_MAX.read_text()) < PID_ROOM and not IS_ROOT:
        pytest.skip(f"{SESSIONS} sessions need kernel.pid_max >= {PID_ROOM}; raising it needs root")
    if soft != resource.RLIM_INFINITY and soft < FDS_NEEDED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_NEEDED, hard))
    try:
        with pid_max_at_least(PID_ROOM):
            yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.scale
@pytest.mark.timeout(300)
def test_ten_thousand_sessions_all_run_and_all_end_with_nothing_left(room_for_ten_thousand_sessions, box):
    """Issue 15: 10,000 live sessions in one Python process, within the default fd limits."""
    warm = P.spawn(argv=["/bin/true"], auto_proceed=True, owner=box)
    P.wait(warm, TIMEOUT)
    warm.stop()
    box.flush()
    fds_before, threads_before = open_fds(), set(threading.enumerate())
    sessions = []
    try:
        for _ in range(SESSIONS):
            sessions.append(P.spawn(argv=["/bin/sleep", "600"], auto_proceed=True, owner=box))
        receive_all(box, "running", SESSIONS)
        assert len(open_fds() - fds_before - spawn_server.held_fds()) <= SESSIONS
        assert len(child_pids()) == SESSIONS, "one agent per session"
        for session in sessions:
            P.signal(session, signal.SIGTERM)
        receive_all(box, "signaled", SESSIONS)
    finally:
        stops = [session.stop(block=False) for session in sessions]
        assert all(stop.get(timeout=TIMEOUT) for stop in stops)
    assert wait_until(lambda: not child_pids(), 30), f"{len(child_pids())} agents left"
    assert wait_until(lambda: not orphaned_agent_pids(), 10)
    spawn_server.stop()  # started past agent.SPAWN_SERVER_FROM live sessions: its fds are no session's
    assert wait_until(lambda: open_fds() <= fds_before, 10), f"{len(open_fds() - fds_before)} fds left"
    assert wait_until(lambda: not threads_added_since(threads_before), 30), "session threads left"


def test_the_futex_hash_grows_to_a_bucket_per_actor_thread():
    """Linux 6.16+ sizes a process's private futex hash by its CPUs; with thousands of actor
    threads asleep on their inboxes every wake-up would walk a long bucket (futex_hash.py)."""

    class Idle(Actor):
        pass

    actors = [Idle.start() for _ in range(2 * futex_hash.FIRST_GROWTH)]
    try:
        try:
            slots = futex_hash.slots()
        except OSError:
            pytest.skip("this kernel has no PR_FUTEX_HASH (private futex hashes came in Linux 6.16)")
        if slots == 0:
            pytest.skip("this process uses the global futex hash, which fit() leaves alone")
        threads = threading.active_count()
        assert slots * futex_hash.WAITERS_PER_SLOT >= threads, f"{slots} futex buckets for {threads} threads"
        assert slots > 16, "the kernel's own size for 2 to 4 CPUs"
    finally:
        for actor in actors:
            actor.stop()
