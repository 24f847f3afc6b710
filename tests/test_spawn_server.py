"""The spawn server (``linx_otp.spawn_server``) with real processes: agents it forks run their
sessions, end, and are reaped by this process; a thread whose state the server does not share
gets a directly spawned agent instead; a dead server takes no session with it and is replaced;
and the server never outlives the Python process.

The server is used only once this process holds ``agent.SPAWN_SERVER_FROM`` agent sockets;
the ``through_the_server`` fixture lowers that to 0, so every spawn in these tests asks it, and
records which agents it forked (the real ``start_agent``, called through)."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from support import child_pids, ends_within, needs_root, process_alive, wait_until
from test_agent_start import captured_stdout

import linx_otp
from linx_otp import agent, spawn_server
from linx_otp import process as P
from linx_otp.checkpoint.namespaces import THREAD_JOINABLE, check_call, libc, run_in

TIMEOUT = 10


@pytest.fixture
def through_the_server(monkeypatch) -> list[int]:
    """Every spawn asks the server; the list fills with the pids of the agents it forked."""
    forked: list[int] = []
    real_start_agent = spawn_server.start_agent

    def start_and_record(agent_socket, path):
        pid = real_start_agent(agent_socket, path)
        if pid is not None:
            forked.append(pid)
        return pid

    monkeypatch.setattr(agent, "SPAWN_SERVER_FROM", 0)
    monkeypatch.setattr(spawn_server, "start_agent", start_and_record)
    yield forked
    server = spawn_server.server_pid()
    spawn_server.stop()
    assert server is None or not process_alive(server), "the stopped server is still there"


def run_to_the_end(argv: list[str]) -> tuple[int, bytes]:
    """Run ``argv`` as a session with its stdout captured: (its agent's pid, the output)."""
    box = linx_otp.Mailbox()
    session = P.spawn(argv=argv, stdio={"stdout": "capture"}, owner=box)
    host_pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    agent_pid = parent_of(host_pid)  # parked at the checkpoint until proceeded
    P.proceed(session)
    output = captured_stdout(box)
    session.stop()
    return agent_pid, output


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def test_a_session_through_the_server_runs_ends_and_is_reaped(through_the_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the caller's cwd travels with the request
    agent_pid, output = run_to_the_end(["/bin/sh", "-c", "pwd; ls /proc/self/fd; echo $PPID"])
    assert through_the_server == [agent_pid], "the agent was not forked by the server"
    cwd, fds, workload_parent = output.decode().split("\n", 2)[0], output.split(b"\n")[1:-2], output.split(b"\n")[-2]
    assert cwd == str(tmp_path)
    assert fds == [b"0", b"1", b"2", b"3"], f"fds leaked into the workload: {fds}"  # 3: ls's own listing
    assert int(workload_parent) == agent_pid
    server = spawn_server.server_pid()
    assert server is not None and process_alive(server)
    assert wait_until(lambda: not process_alive(agent_pid), TIMEOUT), "the agent is left (a zombie or alive)"
    assert child_pids() == [], "something besides the server is still a child of this process"


def test_agents_forked_by_the_server_are_this_processs_children(through_the_server):
    session = P.spawn(argv=["/bin/sleep", "60"], auto_proceed=True)
    host_pid = linx_otp.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    agent_pid = parent_of(host_pid)
    assert through_the_server == [agent_pid]
    assert parent_of(agent_pid) == os.getpid()  # CLONE_PARENT: not the server's
    assert Path(f"/proc/{agent_pid}/comm").read_text().strip() == "linx-agent"
    assert b"--spawn-server" not in Path(f"/proc/{agent_pid}/cmdline").read_bytes()  # ps shows an agent
    assert Path(f"/proc/{spawn_server.server_pid()}/comm").read_text().strip() == "linx-spawner"
    P.signal(session, signal.SIGTERM)
    assert P.wait(session, timeout=TIMEOUT) == ("signaled", signal.SIGTERM)
    session.stop()
    assert wait_until(lambda: not process_alive(agent_pid), TIMEOUT)


def test_a_session_keeps_the_callers_stdio(through_the_server, capfd):
    session = P.spawn(argv=["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2"], stdio="inherit", auto_proceed=True)
    assert P.wait(session, timeout=TIMEOUT) == ("exited", 0)
    session.stop()
    linx_otp.flush()
    captured = capfd.readouterr()
    assert "to-stdout" in captured.out and "to-stderr" in captured.err
    assert len(through_the_server) == 1


@needs_root
def test_a_thread_in_another_net_namespace_gets_a_direct_spawn_in_its_own(through_the_server, box):
    holder = P.spawn(argv=["/bin/sleep", "60"], namespaces=["net"], auto_proceed=True, owner=box)
    holder_pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    forked_before = list(through_the_server)
    theirs = os.readlink(f"/proc/{holder_pid}/ns/net")
    assert theirs != os.readlink("/proc/self/ns/net")
    _agent_pid, output = run_in(holder_pid, ["net"], lambda: run_to_the_end(["readlink", "/proc/self/ns/net"]))
    assert output.decode().strip() == theirs  # the direct spawn from the thread in that namespace
    assert through_the_server == forked_before, "the server forked an agent for a thread it does not match"
    _agent_pid, output = run_to_the_end(["readlink", "/proc/self/ns/net"])  # this thread: the server again
    assert output.decode().strip() == os.readlink("/proc/self/ns/net")
    assert len(through_the_server) == len(forked_before) + 1
    holder.stop()


def test_a_changed_limit_replaces_the_server_and_the_workload_gets_it(through_the_server):
    run_to_the_end(["/bin/true"])
    first_server = spawn_server.server_pid()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 1000) - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        agent_pid, output = run_to_the_end(["/bin/sh", "-c", "ulimit -n"])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert int(output) == lowered
    assert through_the_server[-1] == agent_pid, "the agent was not forked by a server"
    assert spawn_server.server_pid() != first_server, "the stale server was kept"
    assert first_server is not None and wait_until(lambda: not process_alive(first_server), TIMEOUT)


def test_a_killed_server_takes_no_session_with_it_and_the_next_spawn_gets_a_new_one(through_the_server, box):
    script = 'trap "echo got TERM; exit 3" TERM; echo waiting; while :; do sleep 0.05; done'
    session = P.spawn(argv=["/bin/sh", "-c", script], stdio={"stdout": "capture"}, auto_proceed=True, owner=box)
    assert box.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2] == b"waiting\n"
    server = spawn_server.server_pid()
    assert server is not None
    os.kill(server, signal.SIGKILL)
    assert wait_until(lambda: not process_alive(server) and spawn_server.server_pid() is None, TIMEOUT), (
        "the dead server was not reaped"
    )
    P.signal(session, signal.SIGTERM)
    assert box.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2] == b"got TERM\n"
    assert P.wait(session, timeout=TIMEOUT) == ("exited", 3)
    session.stop()
    agent_pid, output = run_to_the_end(["/bin/echo", "again"])
    assert output == b"again\n"
    assert through_the_server[-1] == agent_pid
    assert spawn_server.server_pid() not in (None, server)


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_the_server_ends_with_the_python_process(ending):
    """Whether Python exits or is killed with SIGKILL (no handler runs), the server sees its
    socket's end-of-file and ends: it never outlives the process it serves."""
    script = textwrap.dedent(
        """
        import sys, time
        import linx_otp
        from linx_otp import agent, spawn_server, process as P
        agent.SPAWN_SERVER_FROM = 0
        session = P.spawn(argv=["/bin/true"], auto_proceed=True)
        assert P.wait(session, timeout=10) == ("exited", 0)
        print(spawn_server.server_pid(), flush=True)
        session.stop()
        if sys.argv[1] == "sigkill":
            time.sleep(60)  # killed meanwhile
        """
    )
    python = subprocess.Popen(
        [sys.executable, "-c", script, ending],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    server = int(python.stdout.readline())
    if ending == "sigkill":
        python.kill()
    python.communicate(timeout=60)
    assert python.returncode == (-signal.SIGKILL if ending == "sigkill" else 0)
    assert ends_within(server, TIMEOUT) and wait_until(lambda: not process_alive(server), TIMEOUT)


def test_a_forked_child_does_not_share_the_parents_server():
    script = textwrap.dedent(
        """
        import os
        from linx_otp import agent, spawn_server, process as P
        agent.SPAWN_SERVER_FROM = 0
        session = P.spawn(argv=["/bin/true"], auto_proceed=True)
        assert P.wait(session, timeout=10) == ("exited", 0)
        session.stop()
        parent_server = spawn_server.server_pid()
        child = os.fork()
        if child == 0:
            os._exit(0 if spawn_server.server_pid() is None else 1)
        assert os.waitpid(child, 0)[1] == 0, "the forked child kept the parent's server"
        session = P.spawn(argv=["/bin/true"], auto_proceed=True)  # the parent's still serves it
        assert P.wait(session, timeout=10) == ("exited", 0)
        session.stop()
        assert spawn_server.server_pid() == parent_server
        print("ok", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@needs_root
def test_a_server_stale_for_every_spawn_is_replaced_from_the_asking_thread(through_the_server, box):
    run_to_the_end(["/bin/true"])  # a server started from this thread
    first_server = spawn_server.server_pid()
    holder = P.spawn(argv=["/bin/sleep", "60"], namespaces=["net"], auto_proceed=True, owner=box)
    holder_pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    theirs = os.readlink(f"/proc/{holder_pid}/ns/net")
    forked_before = len(through_the_server)
    spawns = spawn_server.STALE_IN_A_ROW_MAX

    def spawn_in_their_namespace_until_replaced() -> list[str]:
        return [run_to_the_end(["readlink", "/proc/self/ns/net"])[1].decode().strip() for _ in range(spawns)]

    namespaces = run_in(holder_pid, ["net"], spawn_in_their_namespace_until_replaced)
    assert namespaces == [theirs] * spawns  # direct spawns, then the replacement's fork: all theirs
    assert len(through_the_server) == forked_before + 1, "the last one was not forked by a new server"
    assert spawn_server.server_pid() not in (None, first_server)
    holder.stop()


def test_a_closed_or_close_on_exec_stdio_fd_of_the_caller_never_reaches_the_workload():
    script = textwrap.dedent(
        """
        import os
        import linx_otp
        from linx_otp import agent, process as P
        agent.SPAWN_SERVER_FROM = 0
        os.close(0)  # the reactor's epoll fd (close-on-exec) lands there: it must not reach the agent
        box = linx_otp.Mailbox()
        session = P.spawn(argv=["/bin/sh", "-c", "readlink /proc/self/fd/0; echo on-stderr >&2"],
                          stdio={"stdout": "capture", "stderr": "inherit", "stdin": "inherit"},
                          auto_proceed=True, owner=box)
        output = b""
        while (event := box.receive(("linx_process",), timeout=10))[1] not in P.TERMINAL_EVENTS:
            output += event[2] if event[1] == "stdout" else b""
        assert event[1:] == ("exited", 0), event
        session.stop()
        from linx_otp import spawn_server
        assert spawn_server.server_pid() is not None
        print(output.decode().strip(), flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "/dev/null\n"  # what an agent puts in place of a closed fd, as when spawned directly
    assert "on-stderr" in done.stderr


def test_a_stuck_server_is_replaced_and_the_spawn_it_held_goes_direct(through_the_server, monkeypatch):
    monkeypatch.setattr(spawn_server, "REPLY_TIMEOUT", 0.5)
    spawn_server.stop()  # the next one is started with the short timeout
    run_to_the_end(["/bin/true"])
    stuck = spawn_server.server_pid()
    assert stuck is not None
    forked_before = len(through_the_server)
    os.kill(stuck, signal.SIGSTOP)  # it reads no request: the caller's wait times out
    _agent_pid, output = run_to_the_end(["/bin/echo", "direct"])
    assert output == b"direct\n"
    assert len(through_the_server) == forked_before, "the held spawn was not started directly"
    assert wait_until(lambda: not process_alive(stuck), TIMEOUT), "the stuck server was left"
    assert spawn_server.server_pid() is None  # the next spawn that needs one starts a new one
    assert run_to_the_end(["/bin/true"])[0] == through_the_server[-1]


@needs_root
def test_a_thread_that_unshared_its_uts_namespace_gets_a_direct_spawn_in_it(through_the_server):
    run_to_the_end(["/bin/true"])  # a server started from this thread
    forked_before = len(through_the_server)
    outcome: dict[str, object] = {}

    def unshare_rename_and_spawn() -> None:
        try:
            check_call(libc.unshare(THREAD_JOINABLE["uts"].clone_flag), "unshare")
            check_call(libc.sethostname(b"linx-stale-uts", len(b"linx-stale-uts")), "sethostname")
            outcome["hostname"] = run_to_the_end(["uname", "-n"])[1]
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=unshare_rename_and_spawn)  # ends with its namespace
    thread.start()
    thread.join(TIMEOUT)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["hostname"] == b"linx-stale-uts\n"
    assert len(through_the_server) == forked_before, "the server forked an agent for a thread it does not match"
    assert run_to_the_end(["uname", "-n"])[1] == (os.uname().nodename + "\n").encode()
    assert len(through_the_server) == forked_before + 1


def spawned_in_a_thread(prepare, argv: list[str]) -> bytes:
    """In a new thread: ``prepare()`` (changes that thread's state), then run ``argv`` to the end;
    its output. The thread ends with whatever it changed."""
    outcome: dict[str, object] = {}

    def prepare_and_spawn() -> None:
        try:
            prepare()
            outcome["output"] = run_to_the_end(argv)[1]
        except BaseException as error:  # handed to the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=prepare_and_spawn)
    thread.start()
    thread.join(TIMEOUT * 2)
    assert "error" not in outcome, outcome.get("error")
    return outcome["output"]


def status_line(name: str, text: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":"))


@needs_root
def test_a_status_past_4_kib_is_compared_whole(through_the_server):
    """700 supplementary groups put Cpus_allowed_list past the first 4 KiB of status."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin a thread to one")
    groups = os.getgroups()
    os.setgroups(list(range(1_000_000, 1_000_700)))  # every thread's (glibc broadcasts it)
    try:
        assert len(Path("/proc/thread-self/status").read_bytes()) > 4096
        run_to_the_end(["/bin/true"])  # a server started from this thread, with these groups
        forked_before = len(through_the_server)
        output = spawned_in_a_thread(lambda: os.sched_setaffinity(0, {0}), ["/bin/cat", "/proc/self/status"])
    finally:
        os.setgroups(groups)
    assert status_line("Cpus_allowed_list", output.decode()) == "0"
    assert len(through_the_server) == forked_before, "the server forked an agent for a thread it does not match"


def install_seccomp_denying(syscall_number: int) -> None:
    """This thread: ``syscall_number`` fails with EPERM, every other call is allowed (x86_64)."""

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * 4)(
        SockFilter(0x20, 0, 0, 0),  # load the syscall number
        SockFilter(0x15, 0, 1, syscall_number),  # equal: next; else skip one
        SockFilter(0x06, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
        SockFilter(0x06, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
    )
    check_call(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    check_call(libc.prctl(22, 2, ctypes.byref(SockFprog(4, program)), 0, 0), "prctl(PR_SET_SECCOMP)")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the test's filter uses x86_64 syscall numbers")
def test_a_thread_under_another_seccomp_filter_of_the_same_count_gets_its_own(through_the_server):
    uname, getpriority = 63, 140
    script = (
        "import os\n"
        "for name, call in (('uname', os.uname), ('getpriority', lambda: os.getpriority(0, 0))):\n"
        "    try: call(); print(name, 'ok')\n"
        "    except OSError as error: print(name, error.strerror)\n"
    )
    argv = [sys.executable, "-c", script]
    spawned_in_a_thread(lambda: install_seccomp_denying(uname), ["/bin/true"])  # the server: its filter
    forked_before = len(through_the_server)
    output = spawned_in_a_thread(lambda: install_seccomp_denying(getpriority), argv)
    assert output == b"uname ok\ngetpriority Operation not permitted\n"
    assert len(through_the_server) == forked_before, "the server forked an agent for a thread under a filter"


@needs_root
def test_state_changed_on_the_server_by_another_process_never_reaches_a_workload(through_the_server):
    run_to_the_end(["/bin/true"])
    server = spawn_server.server_pid()
    resource.prlimit(server, resource.RLIMIT_NOFILE, (64, 64))
    os.setpriority(os.PRIO_PROCESS, server, 10)
    Path(f"/proc/{server}/oom_score_adj").write_text("900")
    script = "ulimit -n; cut -d' ' -f19 /proc/self/stat; cat /proc/self/oom_score_adj"
    output = run_to_the_end(["/bin/sh", "-c", script])[1].decode().split()
    ours = [str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]), str(os.getpriority(os.PRIO_PROCESS, 0))]
    assert output == [*ours, Path("/proc/self/oom_score_adj").read_text().strip()]


IOPRIO_BEST_EFFORT_7 = 2 << 13 | 7
PR_SET_TIMERSLACK = 29
SYS_IOPRIO = {"x86_64": (251, 252), "aarch64": (30, 31)}[os.uname().machine]
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]


@pytest.mark.parametrize(
    ("change_this_thread", "workload_reads", "expected"),
    [
        (
            lambda: check_call(libc.syscall(SYS_IOPRIO[0], 1, 0, IOPRIO_BEST_EFFORT_7), "ioprio_set"),
            f"import ctypes; print(ctypes.CDLL(None).syscall({SYS_IOPRIO[1]}, 1, 0))",
            str(IOPRIO_BEST_EFFORT_7),
        ),
        (
            lambda: libc.personality(0x0040000),  # ADDR_NO_RANDOMIZE
            "print(open('/proc/self/personality').read().strip())",
            "00040000",
        ),
        (
            lambda: check_call(libc.prctl(PR_SET_TIMERSLACK, 123457, 0, 0, 0), "prctl(PR_SET_TIMERSLACK)"),
            "print(open('/proc/self/timerslack_ns').read().strip())",
            "123457",
        ),
        (
            lambda: check_call(libc.syscall(SYS_KEYCTL, 1, b"linx-test-keyring") < 0, "keyctl(JOIN)"),
            f"import ctypes; print(ctypes.CDLL(None).syscall({SYS_KEYCTL}, 0, -3, 0))",
            None,  # this thread's session keyring, read there
        ),
    ],
    ids=["io_priority", "personality", "timer_slack", "session_keyring"],
)
@needs_root
def test_a_thread_with_its_own_inherited_state_gets_a_direct_spawn_with_it(
    through_the_server, change_this_thread, workload_reads, expected
):
    run_to_the_end(["/bin/true"])  # a server started from this thread
    forked_before = len(through_the_server)
    seen: list[str] = []

    def change_and_remember() -> None:
        change_this_thread()
        seen.append(str(libc.syscall(SYS_KEYCTL, 0, -3, 0)))

    output = spawned_in_a_thread(change_and_remember, [sys.executable, "-c", workload_reads])
    assert output.decode().strip() == (expected if expected is not None else seen[0])
    assert len(through_the_server) == forked_before, "the server forked an agent for a thread it does not match"


def process_on_pid(pid: int, attempts: int = 50) -> subprocess.Popen | None:
    """A ``sleep`` started on ``pid`` (free, as root, through ``ns_last_pid``), or None if other
    processes kept taking it."""
    for _ in range(attempts):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        sleeper = subprocess.Popen(["/bin/sleep", "60"])
        if sleeper.pid == pid:
            return sleeper
        sleeper.kill()
        sleeper.wait()
    return None


@needs_root
def test_discarding_a_server_reaped_elsewhere_never_signals_the_process_that_took_its_pid(through_the_server):
    run_to_the_end(["/bin/true"])
    server = spawn_server.server_pid()
    assert server is not None
    with spawn_server._lock:  # the I/O thread must not reap it first: another wait() of this process does
        os.kill(server, signal.SIGKILL)
        assert os.waitpid(server, 0)[0] == server
        sleeper = process_on_pid(server)
    if sleeper is None:
        pytest.skip("other processes kept taking the freed pid")
    try:
        spawn_server.stop()  # or the I/O thread's reap, whichever comes first: both discard it
        assert spawn_server.server_pid() is None
        assert sleeper.poll() is None, "the discard killed the process that took the server's pid"
    finally:
        sleeper.kill()
        sleeper.wait()
