"""Limits and errors at a session's edges (issue 12 §3): a stop that honours the child's
shutdown seconds when the agent is stuck, ``wait`` timeouts that are not durations, and spawns
the system refuses (out of fds, out of processes)."""

from __future__ import annotations

import concurrent.futures
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

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.actor import actor_of, request_shutdown
from linx_otp.errors import LinxError, LinxValueError

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
from linx_otp import agent, spawn_server, process as P
agent.SPAWN_SERVER_FROM = int(os.environ["SPAWN_SERVER_FROM"])

def children():
    # this process's children but the spawn server (which is its own, not a session's)
    found = []
    for task in Path("/proc/self/task").iterdir():
        try:
            found += [int(pid) for pid in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that has just ended
            pass
    return [pid for pid in found if pid != spawn_server.server_pid()]

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


def run_limited(script: str, *arguments: str, spawn_server_from: int = 10**9) -> dict:
    """``script`` in a Python process of its own; ``spawn_server_from`` 0 starts every agent
    through the spawn server (the default: directly)."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SPAWN_SERVER_FROM": str(spawn_server_from)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("spawn_server_from", [10**9, 0], ids=["direct", "through_the_spawn_server"])
def test_running_out_of_fds_is_spawn_failed_and_leaves_nothing(spawn_server_from):
    report = run_limited(OUT_OF_FDS, spawn_server_from=spawn_server_from)
    assert report["results"] == [["spawn_failed", "emfile"], ["spawn_failed", "emfile"]]
    assert report["children"] == [] and report["fds_kept"], "no agent, no fd left behind"
    assert report["after"] == ["outcome", "exited", 0], "spawning works again once fds are free"


@needs_root
@pytest.mark.parametrize("spawn_server_from", [10**9, 0], ids=["direct", "through_the_spawn_server"])
def test_running_out_of_processes_is_spawn_failed_and_leaves_nothing(spawn_server_from):
    pids_root = Path("/sys/fs/cgroup/pids")
    if not (pids_root / "cgroup.procs").exists():
        pytest.skip("no v1 pids controller at /sys/fs/cgroup/pids")
    group = pids_root / f"linx-test-{uuid.uuid4().hex[:12]}"
    group.mkdir()
    try:
        report = run_limited(OUT_OF_PROCESSES, str(group), spawn_server_from=spawn_server_from)
    finally:
        assert wait_until(lambda: not (group / "cgroup.procs").read_text().split(), TIMEOUT)
        group.rmdir()
    assert report["results"] == [
        ["spawn_failed", "eagain"],
        ["outcome", "error", errno.EAGAIN, "clone"],  # the agent ran, and could not clone
    ]
    assert report["children"] == []
    assert report["after"] == ["outcome", "exited", 0]


def hold_up(session):
    """Keep the session's thread busy answering an ``info()`` until the returned event is set."""
    actor = actor_of(session)
    answer_info, held, release = actor._info, threading.Event(), threading.Event()

    def info_held_up():
        held.set()
        release.wait(TIMEOUT)
        return answer_info()

    actor._info = info_held_up
    pending_info = session.ask(P.GetInfo(), block=False)
    assert held.wait(TIMEOUT), "the session's thread is busy answering info()"
    return pending_info, release


def signal_logger(log: Path) -> list[str]:
    """A workload that writes each USR1 and TERM it gets to ``log``, in order of arrival."""
    script = f'trap "echo USR1 >> {log}" USR1; trap "echo TERM >> {log}; exit 3" TERM; echo up >> {log}; '
    return ["sh", "-c", script + "while :; do sleep 0.01; done"]


def logged(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_signal_never_overtakes_a_message_sent_to_the_session_before_it(box, tmp_path):
    """The fast path is taken only when everything sent to the session has been handled: a
    ``Signal`` asked without blocking, then ``signal()``, reach the workload in that order,
    and ``signal()`` after ``stop(block=False)`` is refused as the stop's, not sent."""
    log = tmp_path / "signals"
    session = P.spawn(argv=signal_logger(log), auto_proceed=True, owner=box, stdio="devnull")
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert wait_until(lambda: logged(log) == ["up"], TIMEOUT)
    pending_info, release = hold_up(session)
    first = session.ask(P.Signal(signal.SIGUSR1), block=False)
    second = threading.Thread(target=P.signal, args=(session, signal.SIGTERM))
    second.start()
    time.sleep(0.2)  # had it taken the fast path, the workload would have its TERM by now
    assert logged(log) == ["up"]
    release.set()
    second.join(TIMEOUT)
    assert first.get(timeout=TIMEOUT) is None
    assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 3)
    assert logged(log) == ["up", "USR1", "TERM"]
    pending_info.get(timeout=TIMEOUT)
    session.stop()

    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    pending_info, release = hold_up(session)
    stopping = session.stop(block=False)
    release.set()
    with pytest.raises(LinxError) as raised:
        P.signal(session, signal.SIGTERM)
    assert raised.value.reason == "no_process"
    assert stopping.get(timeout=TIMEOUT)


def test_a_wait_future_s_callbacks_never_run_on_the_thread_that_reads_every_agent(box):
    """A ``Wait`` future is the caller's: its callbacks may block (here, until another session
    ends), so the outcome it waits for is handed over by the session's thread, and the other
    sessions' events keep flowing meanwhile."""
    waited = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    bystander = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    for _ in range(2):
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
    future: concurrent.futures.Future = concurrent.futures.Future()
    release = threading.Event()
    future.add_done_callback(lambda _: release.wait(TIMEOUT))
    waited.tell(P.Wait(future))
    P.signal(waited, signal.SIGKILL)
    assert wait_until(future.done, TIMEOUT)
    try:
        P.signal(bystander, signal.SIGTERM)
        assert box.receive(("linx_process", "signaled", signal.SIGTERM), timeout=5)
    finally:
        release.set()
    assert future.result() == ("signaled", signal.SIGKILL)
    waited.stop()
    bystander.stop()


def test_a_supervisor_s_shutdown_that_finds_the_agent_gone_ends_the_session_with_shutdown(box):
    """The shutdown's SIGTERM finds the agent's socket closed (the workload ended and its agent
    exited while the session was busy): the session ends with "shutdown" once it takes the
    queued end, not with the failed send as a crash."""
    session = S.start_child(
        tree := S.start([]), P.child_spec(id="w", argv=["sleep", "1000"], auto_proceed=True, owner=box)
    )
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    monitor_box = linx_otp.Mailbox()
    linx_otp.monitor(session, monitor_box)
    agent = agent_of(P.host_pid(session))
    pending_info, release = hold_up(session)
    request_shutdown(session)
    os.kill(agent, signal.SIGKILL)
    assert wait_until(actor_of(session)._connection.finished.is_set, TIMEOUT)
    release.set()
    assert monitor_box.receive(("DOWN",), timeout=TIMEOUT)[2] == "shutdown"
    S.stop(tree)


def test_a_signal_to_an_idle_session_goes_straight_to_its_agent(box):
    """``signal`` to a running workload whose session has nothing else to do is sent from the
    caller's thread: the session's own thread never handles it (at 10,000 sessions that round
    trip was most of the time it took to signal them all)."""
    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    actor, handled = actor_of(session), []
    through_the_actor = actor._signal
    actor._signal = lambda signum: handled.append(signum) or through_the_actor(signum)
    P.signal(session, signal.SIGTERM)
    assert box.receive(("linx_process", "signaled"), timeout=TIMEOUT) == ("linx_process", "signaled", signal.SIGTERM)
    assert handled == []
    assert session.stop()


def test_a_lingering_session_s_outcome_reaches_its_owner_while_its_thread_is_busy(box):
    """The I/O thread hands a lingering session's outcome to its owner itself: it does not wait
    for the session's thread, which answers with the outcome once free, and the agent's exit
    after it wakes that thread for nothing."""
    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    workload, actor, drained = P.host_pid(session), actor_of(session), []
    drain_events = actor._drain_events
    actor._drain_events = lambda: drained.append(True) or drain_events()
    pending_info, release = hold_up(session)
    try:
        os.kill(workload, signal.SIGTERM)
        event = box.receive(("linx_process", "signaled"), timeout=TIMEOUT)
        assert event == ("linx_process", "signaled", signal.SIGTERM)
        assert wait_until(actor._connection.finished.is_set, TIMEOUT)  # the agent has exited too
    finally:
        release.set()
    assert pending_info.get(timeout=TIMEOUT).stage == "signaled"
    assert drained == []
    assert P.wait(session, TIMEOUT) == ("signaled", signal.SIGTERM)
    assert session.stop()


def session_thread(session: P.SessionRef) -> threading.Thread:
    """The thread a session's actor runs on: the one that answers ``info``."""
    actor, seen = actor_of(session), []
    on_receive = actor.on_receive
    actor.on_receive = lambda message: seen.append(threading.current_thread()) or on_receive(message)
    P.info(session)
    actor.on_receive = on_receive
    return seen[0]


def test_stopping_an_idle_session_is_done_in_the_callers_thread_and_leaves_nothing(box):
    """``stop()`` of a session with nothing in hand runs its stop in the caller's thread (two
    hand-overs between threads fewer: benchmarks/spawn.py, the full cycle). When it returns,
    the workload and the agent are reaped and the owner has the outcome; the session's own
    thread, which never handled the stop, ends by itself. Both for an ended session and for a
    running one (whose stop ends the workload)."""
    ended = P.spawn(argv=["/bin/true"], auto_proceed=True, owner=box)
    assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 0)
    box.flush()
    running = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    workload = P.host_pid(running)
    for session in (ended, running):
        actor, thread, terminated_on = actor_of(session), session_thread(session), []
        terminate = actor.terminate
        actor.terminate = lambda reason, terminate=terminate, on=terminated_on: (
            on.append(threading.current_thread()) or terminate(reason)
        )
        assert session.stop() is True
        assert terminated_on == [threading.current_thread()]
        assert actor._connection.finished.is_set(), "the agent is reaped before stop() returns"
        with pytest.raises(ChildProcessError):
            os.waitpid(actor._connection.pid, os.WNOHANG)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert not process_alive(workload)
    assert box.receive(("linx_process", "signaled"), timeout=0) == ("linx_process", "signaled", signal.SIGKILL)


def test_a_wait_told_while_a_caller_stops_the_session_is_answered(box, monkeypatch):
    """A ``Wait`` told just as ``stop()`` begins in the caller's thread (it passes pykka's
    alive check before the stop marks the session stopped, so the session's own thread takes
    it and waits for its turn) is answered, not dropped with pykka's teardown, which answers
    only asks. The window is widened by a slow registry removal, the stop's first step."""
    import pykka

    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    unregister, in_window = pykka.ActorRegistry.unregister, threading.Event()

    def slow_unregister(ref):
        in_window.set()
        time.sleep(0.3)
        unregister(ref)

    monkeypatch.setattr(pykka.ActorRegistry, "unregister", slow_unregister)
    answers: list = []

    def wait_for_it() -> None:
        in_window.wait(TIMEOUT)
        try:
            answers.append(P.wait(session))
        except LinxError as error:
            answers.append(error.reason)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert session.stop() is True
    waiter.join(TIMEOUT)
    assert not waiter.is_alive(), "the Wait was dropped: wait() blocks forever"
    assert answers in ([("signaled", signal.SIGKILL)], ["no_process"])


class Interrupted(BaseException):
    """What Ctrl-C is to the thread it lands in."""


def test_an_interrupted_stop_kills_the_agent_and_still_ends_the_session(box):
    """Ctrl-C in the thread that stops a session (the stop runs there) while the agent is slow
    to end the workload: the interruption reaches the caller, and the session still ends
    whole: the agent is killed and reaped, the owner gets one terminal event, a waiter its
    answer, and the session's thread ends."""
    session = P.spawn(argv=["sleep", "1000"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    actor, thread, workload = actor_of(session), session_thread(session), P.host_pid(session)
    waiter: concurrent.futures.Future = concurrent.futures.Future()
    session.tell(P.Wait(waiter))
    P.info(session)  # handled after the Wait: the session is idle again
    os.kill(actor._connection.pid, signal.SIGSTOP)  # slow to act on the stop

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            session.stop()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert actor._connection.finished.wait(TIMEOUT), "the agent is killed and reaped"
    assert wait_until(lambda: not process_alive(workload), TIMEOUT)
    assert box.receive(("linx_process", "error"), timeout=TIMEOUT)[3] == "agent_died"
    assert waiter.result(TIMEOUT)[2] == "agent_died"
    thread.join(TIMEOUT)
    assert not thread.is_alive() and not session.is_alive()


def test_a_wait_racing_a_stop_from_another_thread_always_returns(box):
    """``wait()`` called over and over from four threads while another stops the session: every
    call returns, with the outcome or ``no_process``, never left blocked. A ``Wait`` told as
    the session stopped could pass pykka's alive check and land after the teardown, which never
    answered it (8 to 23 of 300 rounds at this switch interval); ``wait`` now registers its
    waiter with the session directly."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(300):
            session = P.spawn(argv=["/bin/true"], auto_proceed=True, owner=box)
            box.receive(("linx_process", "exited"), timeout=TIMEOUT)
            box.flush()
            answers: list[list] = [[] for _ in range(4)]

            def wait_until_gone(answers: list, session=session) -> None:
                while True:
                    try:
                        answers.append(P.wait(session))
                    except LinxError as error:
                        answers.append(error.reason)
                        return

            waiters = [threading.Thread(target=wait_until_gone, args=(each,)) for each in answers]
            for waiter in waiters:
                waiter.start()
            session.stop()
            for waiter in waiters:
                waiter.join(TIMEOUT)
                assert not waiter.is_alive(), "a wait() racing the stop never returned"
            for each in answers:
                assert each[-1] == "no_process" and set(each[:-1]) <= {("exited", 0)}
    finally:
        sys.setswitchinterval(interval)
