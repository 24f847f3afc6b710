"""tty.attach with real pseudo-terminals standing in for the user's terminal.

The test holds the master side of a pty pair, as a terminal emulator would, and gives attach
the slave (``terminal=``); a helper thread plays the user: it reads what the terminal shows
and types keys. The real controlling-terminal path is driven through tmux in test_tty_tmux.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import textwrap
import threading

import pytest
from support import child_pids, process_alive, wait_until, window_size
from test_flow import blocked_in as sleeps_in

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp import tty
from linx_otp.errors import LinxError

TIMEOUT = 10


class Terminal:
    """A pty pair: ``slave`` is the terminal handed to attach; the ``master`` side is the
    screen and keyboard, read by a background thread."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        tty.set_window_size(self.slave, tty.WindowSize(rows, cols))
        self.settings = termios.tcgetattr(self.slave)
        self.screen = b""
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.screen += data
                self._lock.notify_all()

    def shows(self, text: bytes, timeout: float = TIMEOUT) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: text in self.screen, timeout)

    def type(self, keys: bytes | str) -> None:
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    def resize(self, rows: int, cols: int) -> None:
        tty.set_window_size(self.master, tty.WindowSize(rows, cols))

    def is_raw(self) -> bool:
        return not termios.tcgetattr(self.slave)[3] & termios.ICANON

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)
        self._reader.join(5)


@pytest.fixture
def terminal():
    created = Terminal()
    yield created
    created.close()


def running_shell(owner, argv=("/bin/sh",)):
    session = P.spawn(
        argv=list(argv), stdio="pty", auto_proceed=True, owner=owner, env={"PS1": "$ ", "PATH": os.environ["PATH"]}
    )
    owner.receive(("linx_process", "running"), timeout=TIMEOUT)
    return session


def as_user(terminal: Terminal, *steps):
    """Run the user's steps in a thread (attach blocks the main thread). If a step fails, the
    user detaches, so the attach under test returns and the failure is reported."""
    failures = []

    def run():
        try:
            for step in steps:
                step()
        except BaseException as error:  # reported by finish()
            failures.append(error)
            terminal.type(b"\x10\x11")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish():
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the user's steps hung"
        if failures:
            raise failures[0]

    return finish


def wait_raw(terminal: Terminal):
    return lambda: wait_until(terminal.is_raw, TIMEOUT) or pytest.fail("attach never set raw mode")


# -- the detach scanner and window sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reads", "forwarded", "detached"),
    [
        ([b"ls\r"], [b"ls\r"], [False]),
        ([b"ab\x10\x11cd"], [b"ab"], [True]),
        ([b"ab\x10", b"\x11"], [b"ab", b""], [False, True]),
        ([b"a\x10", b"b"], [b"a", b"\x10b"], [False, False]),  # a broken match is flushed ahead
        ([b"\x10", b"\x10", b"\x11"], [b"", b"\x10", b""], [False, False, True]),
    ],
)
def test_the_detach_key_is_found_across_reads(reads, forwarded, detached):
    scanner = tty.DetachScanner(b"\x10\x11")
    assert [scanner.feed(data) for data in reads] == list(zip(forwarded, detached, strict=False))


def test_an_empty_detach_key_forwards_everything():
    assert tty.DetachScanner(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
    assert tty.DetachScanner(None).feed(b"\x10") == (b"\x10", False)


def test_window_size_round_trip(terminal):
    tty.set_window_size(terminal.slave, tty.WindowSize(33, 99, 1, 2))
    assert tty.window_size(terminal.master) == tty.WindowSize(33, 99, 1, 2)
    with pytest.raises(linx_otp.LinxValueError):
        tty.set_window_size(terminal.slave, tty.WindowSize(70000, 1))


# -- attach, end to end on a pty pair ------------------------------------------------------------------


def test_attach_pumps_both_ways_and_returns_the_outcome(terminal, box):
    session = running_shell(box)
    finish = as_user(
        terminal,
        wait_raw(terminal),
        lambda: terminal.type("echo hi-there\r"),
        lambda: terminal.shows(b"hi-there\r\n") or pytest.fail("no output"),
        lambda: terminal.type("exit 7\r"),
    )
    assert tty.attach(session, terminal=terminal.slave) == ("exited", 7)
    finish()
    assert termios.tcgetattr(terminal.slave) == terminal.settings
    leaked = [
        event for event in box.flush() if event[1] == "exited" or (event[1] == "pty_out" and b"hi-there" in event[2])
    ]
    assert not leaked, "the previous owner got what attach borrowed"
    session.stop()


def test_the_window_size_is_seeded_at_entry_and_follows_sigwinch(terminal, box):
    terminal.resize(33, 99)
    session = running_shell(box)

    def resize():
        terminal.resize(40, 120)
        os.kill(os.getpid(), signal.SIGWINCH)  # what the kernel sends a controlling terminal's owner
        assert wait_until(lambda: window_size(P.host_pid(session)) == (40, 120), TIMEOUT), "not forwarded"

    finish = as_user(
        terminal,
        wait_raw(terminal),
        lambda: terminal.type("stty size\r"),
        lambda: terminal.shows(b"33 99\r\n") or pytest.fail("not seeded"),
        resize,
        lambda: terminal.type("stty size\r"),
        lambda: terminal.shows(b"40 120\r\n") or pytest.fail("not forwarded"),
        lambda: terminal.type("exit\r"),
    )
    assert tty.attach(session, terminal=terminal.slave) == ("exited", 0)
    finish()
    session.stop()


def test_off_the_main_thread_the_window_size_is_polled(terminal, box):
    session = running_shell(box)
    outcome = []
    attacher = threading.Thread(target=lambda: outcome.append(tty.attach(session, terminal=terminal.slave)))
    attacher.start()
    assert wait_until(terminal.is_raw, TIMEOUT)
    terminal.resize(41, 101)  # no SIGWINCH reaches this process: polling must see it
    assert wait_until(lambda: window_size(P.host_pid(session)) == (41, 101), TIMEOUT)  # the workload's own pty
    terminal.type("stty size\r")
    assert terminal.shows(b"41 101\r\n")
    terminal.type("exit 2\r")
    attacher.join(TIMEOUT)
    assert outcome == [("exited", 2)]
    session.stop()


def test_detaching_returns_and_hands_the_session_back(terminal, box):
    session = running_shell(box)
    finish = as_user(
        terminal,
        wait_raw(terminal),
        lambda: terminal.type("echo before\r"),
        lambda: terminal.shows(b"before\r\n"),
        lambda: terminal.type(b"\x10\x11"),
    )
    assert tty.attach(session, terminal=terminal.slave) == "detached"
    finish()
    assert termios.tcgetattr(terminal.slave) == terminal.settings
    assert P.info(session).stage == "running"
    box.flush()
    P.pty_write(session, "exit 5\n")
    assert P.wait(session, TIMEOUT) == ("exited", 5)
    assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 5)  # the owner again
    session.stop()


def test_ctrl_c_goes_to_the_workload_not_to_python(terminal, box):
    script = "trap 'echo got-INT' INT; read line; echo ARMED; while :; do sleep 0.02; done"
    session = running_shell(box, argv=("/bin/sh", "-c", script))
    finish = as_user(
        terminal,
        wait_raw(terminal),
        lambda: terminal.type("go\r"),
        lambda: terminal.shows(b"ARMED") or pytest.fail("not armed"),
        lambda: terminal.type(b"\x03"),
        lambda: terminal.shows(b"got-INT") or pytest.fail("no SIGINT in the workload"),
        lambda: terminal.type(b"\x10\x11"),
    )
    assert tty.attach(session, terminal=terminal.slave) == "detached"
    finish()
    session.stop()


def test_the_terminal_is_restored_after_a_keyboard_interrupt(terminal, box):
    session = running_shell(box)
    main_thread = threading.main_thread().ident
    finish = as_user(terminal, wait_raw(terminal), lambda: signal.pthread_kill(main_thread, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        tty.attach(session, terminal=terminal.slave)
    finish()
    assert termios.tcgetattr(terminal.slave) == terminal.settings
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    P.pty_write(session, "exit 4\n")
    assert box.receive(("linx_process", "exited"), timeout=TIMEOUT)[2] == 4  # handed back
    session.stop()


def test_the_terminal_is_restored_when_sigterm_kills_the_python_process(tmp_path):
    master, slave = os.openpty()
    settings = termios.tcgetattr(slave)
    pid_file = tmp_path / "workload"
    script = textwrap.dedent(f"""
        import linx_otp
        from linx_otp import process as P, tty
        session = P.spawn(argv=["/bin/cat"], stdio="pty", auto_proceed=True, orphan_policy=("kill", 0.0))
        linx_otp.receive(("linx_process", "running"), timeout=10)
        open({str(pid_file)!r}, "w").write(str(P.host_pid(session)))
        tty.attach(session, terminal={slave})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], pass_fds=[slave])
    try:
        assert wait_until(
            lambda: pid_file.exists() and pid_file.read_text() and not termios.tcgetattr(slave)[3] & termios.ICANON,
            TIMEOUT,
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == -signal.SIGTERM  # it still dies of the signal...
        assert termios.tcgetattr(slave) == settings  # ...with the terminal put back first
        assert wait_until(lambda: not process_alive(int(pid_file.read_text())), TIMEOUT)
    finally:
        process.kill()
        process.wait()
        os.close(master)
        os.close(slave)


# -- the errors -------------------------------------------------------------------------------------


def test_attach_without_a_terminal_is_no_local_tty(tmp_path):
    script = textwrap.dedent("""
        import linx_otp
        from linx_otp import process as P, tty
        session = P.spawn(argv=["/bin/cat"], stdio="pty", auto_proceed=True)
        linx_otp.receive(("linx_process", "running"), timeout=10)
        try:
            tty.attach(session)
        except linx_otp.LinxError as error:
            print(error.reason)
        session.stop()
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, start_new_session=True
    )
    assert result.stdout.strip() == "no_local_tty", result.stderr


def reason_of(action):
    with pytest.raises(LinxError) as raised:
        action()
    return raised.value.reason


def test_attach_refuses_what_it_cannot_attach(terminal, box):
    plain = P.spawn(argv=["/bin/sleep", "60"], auto_proceed=True, owner=box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    box.flush()
    assert reason_of(lambda: tty.attach(plain, terminal=terminal.slave)) == "no_pty"
    parked = P.spawn(argv=["/bin/cat"], stdio="pty", owner=box)
    box.receive(("linx_process", "ready"), timeout=TIMEOUT)
    assert reason_of(lambda: tty.attach(parked, terminal=terminal.slave)) == ("not_running", "ready")
    ended = P.spawn(argv=["/bin/true"], stdio="pty", auto_proceed=True, owner=box)
    P.wait(ended, TIMEOUT)
    box.flush()
    assert reason_of(lambda: tty.attach(ended, terminal=terminal.slave)) == "no_process"
    ended.stop()
    assert reason_of(lambda: tty.attach(ended, terminal=terminal.slave)) == "no_process"
    read_end, write_end = os.pipe()
    assert reason_of(lambda: tty.attach(parked, terminal=read_end)) == ("not_running", "ready")
    P.proceed(parked)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert reason_of(lambda: tty.attach(parked, terminal=read_end)) == "no_local_tty"
    os.close(read_end), os.close(write_end)
    assert termios.tcgetattr(terminal.slave) == terminal.settings
    for session in (plain, parked):
        session.stop()


def test_a_session_stopped_by_someone_else_ends_the_attachment(terminal, box):
    session = running_shell(box)
    finish = as_user(terminal, wait_raw(terminal), session.stop)
    assert tty.attach(session, terminal=terminal.slave) == ("signaled", 9)
    finish()
    assert termios.tcgetattr(terminal.slave) == terminal.settings


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_terminal_that_hangs_up_ends_the_attach_and_hands_the_session_back(box):
    """A dropped ssh session: the terminal's other end closes while attached. Its modes can't be
    restored (EIO), and that must not keep the session from going back to its owner, nor leave
    the attach's own fds open."""
    session = running_shell(box)
    master, slave = os.openpty()  # no reader thread: a read in progress would keep the master open
    fds_before = open_fds()
    ended = []

    def attach():
        try:
            ended.append(tty.attach(session, terminal=slave))
        except LinxError as error:
            ended.append(error.reason)

    attacher = threading.Thread(target=attach)
    attacher.start()
    assert wait_until(lambda: not termios.tcgetattr(slave)[3] & termios.ICANON, TIMEOUT)
    os.close(master)  # hang up
    attacher.join(TIMEOUT)
    assert ended == ["terminal_gone"]
    assert open_fds() <= fds_before  # the attach's wake-up pipe is closed
    box.flush()
    P.pty_write(session, "echo back-with-its-owner; exit 5\n")  # the window is the owner's again: it drains
    assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 5)
    os.close(slave)
    session.stop()


def test_a_second_attach_takes_over_and_the_session_goes_back_to_its_owner(box):
    """Attach from two terminals: the newer takes the session over (the older returns
    "detached"), and when it ends the session is its original owner's again, not the older
    attach's, which has gone."""
    session = running_shell(box)
    first, second = Terminal(), Terminal()
    outcomes: dict[str, object] = {}

    def attach(name, terminal):
        thread = threading.Thread(target=lambda: outcomes.update({name: tty.attach(session, terminal=terminal.slave)}))
        thread.start()
        return thread

    try:
        first_attach = attach("first", first)
        assert wait_until(first.is_raw, TIMEOUT)
        first.type("echo one\r")
        assert first.shows(b"one\r\n")
        second_attach = attach("second", second)
        first_attach.join(TIMEOUT)
        assert outcomes == {"first": "detached"}
        assert termios.tcgetattr(first.slave) == first.settings  # restored
        assert wait_until(second.is_raw, TIMEOUT)
        second.type("echo two\r")
        assert second.shows(b"two\r\n") and b"two" not in first.screen
        second.type(b"\x10\x11")
        second_attach.join(TIMEOUT)
        assert outcomes == {"first": "detached", "second": "detached"}
        box.flush()
        P.pty_write(session, "exit 6\n")
        assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 6)
    finally:
        first.close()
        second.close()
        session.stop()


def test_an_attach_stuck_on_a_terminal_nobody_reads_does_not_starve_the_one_that_takes_over(box):
    """A frozen ssh session: the first attach's terminal is never read, so it blocks writing a
    flood of output, holding the session's window. A second attach takes over and gets output
    all the same; the stuck one ends when its terminal goes, and the session is its owner's again."""
    session = running_shell(box)
    frozen_master, frozen_slave = os.openpty()  # nobody reads this terminal's screen
    fresh = Terminal()
    outcomes: dict[str, object] = {}

    def attach(name, terminal_fd):
        def run():
            try:
                outcomes[name] = tty.attach(session, terminal=terminal_fd)
            except LinxError as error:
                outcomes[name] = error.reason

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        first = attach("frozen", frozen_slave)
        assert wait_until(lambda: not termios.tcgetattr(frozen_slave)[3] & termios.ICANON, TIMEOUT)
        os.write(frozen_master, b"yes flood\r")  # typed; what it prints is never read
        # the frozen terminal is full, the attach stuck writing to it, the window full: `yes` waits on its pty
        assert wait_until(
            lambda: any(sleeps_in(pid, "n_tty_write") for pid in child_pids(P.host_pid(session))), TIMEOUT
        )
        second = attach("fresh", fresh.slave)
        assert fresh.shows(b"flood\r\nflood"), "the newer attach got no output"
        fresh.type(b"\x03")  # Ctrl-C: the flood stops
        fresh.type(b"\x10\x11")
        second.join(TIMEOUT)
        assert outcomes.get("fresh") == "detached"
        os.close(frozen_master)  # the frozen session's connection finally goes
        frozen_master = -1
        first.join(TIMEOUT)
        assert outcomes.get("frozen") in ("detached", "terminal_gone"), outcomes
        box.flush()
        P.pty_write(session, "exit 7\n")
        assert box.receive(("linx_process", "exited"), timeout=TIMEOUT) == ("linx_process", "exited", 7)
    finally:
        if frozen_master >= 0:
            os.close(frozen_master)
        os.close(frozen_slave)
        fresh.close()
        session.stop()


# -- the seed's "Handing off the owner": borrow a supervised session and return it ----------------


def test_a_supervised_session_is_borrowed_and_returned(terminal, box):
    tree = S.start([P.child_spec(id="cat", argv=["/bin/cat"], stdio="pty", auto_proceed=True, owner=box)])
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    session = S.which_children(tree)[0][1]
    finish = as_user(
        terminal,
        wait_raw(terminal),
        lambda: terminal.type("ping\r"),
        lambda: terminal.shows(b"ping\r\nping\r\n"),
        lambda: terminal.type(b"\x10\x11"),
    )
    assert tty.attach(session, terminal=terminal.slave) == "detached"
    finish()
    assert not [event for event in box.flush() if event[1] == "pty_out"]
    P.pty_write(session, "pong\n")
    assert box.receive(("linx_process", "pty_out"), timeout=TIMEOUT)[2].startswith(b"pong")
    S.stop(tree)


def test_output_queued_in_the_callers_mailbox_before_attach_is_shown_first(terminal):
    session = P.spawn(argv=["/bin/sh", "-c", "echo early; read line; echo late"], stdio="pty", auto_proceed=True)
    linx_otp.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert wait_until(lambda: len(linx_otp.mailbox()) >= 2, TIMEOUT)  # "ready", then "early": queued for attach
    finish = as_user(
        terminal, lambda: terminal.shows(b"early\r\n") or pytest.fail("early output lost"), lambda: terminal.type("x\r")
    )
    assert tty.attach(session, terminal=terminal.slave) == ("exited", 0)
    finish()
    assert terminal.shows(b"late")
    assert terminal.screen.index(b"early") < terminal.screen.index(b"late")
    assert [event[1] for event in linx_otp.flush()] == ["ready"]  # only what came before running
    session.stop()
