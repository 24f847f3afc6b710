"""Flow control (README, "Using it", issue 11): at most a window of output is in flight to an owner. A
workload that outpaces its owner blocks in write(2) and resumes, losing nothing, when the owner
takes output; drop mode discards past the window and says exactly how much."""

from __future__ import annotations

import pickle
import queue
import threading
import time
from pathlib import Path

import pykka
import pytest
from support import child_pids, process_alive, reason_of, wait_until

import linx_otp
from linx_otp import process as P
from linx_otp import protocol
from linx_otp.actor import actor_of
from linx_otp.flow import OutputEvent, OutputWindow

TIMEOUT = 20
SMALL_WINDOW = 64 * 1024
LINES = 300_000
"""``seq 1 LINES`` writes about 2 MB: many small windows' worth, a known sequence to check."""


def numbers(count: int) -> bytes:
    return b"".join(b"%d\n" % number for number in range(1, count + 1))


def kernel_stack(pid: int) -> str:
    """Where the process sleeps: /proc/PID/stack (root), else its wchan."""
    try:
        return Path(f"/proc/{pid}/stack").read_text()
    except OSError:
        return Path(f"/proc/{pid}/wchan").read_text()


def blocked_in(pid: int, function: str) -> bool:
    return function in Path(f"/proc/{pid}/wchan").read_text() or function in kernel_stack(pid)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_until_outcome(box: linx_otp.Mailbox, streams=("stdout",)) -> tuple[bytes, tuple]:
    chunks = []
    while True:
        event = box.receive(timeout=TIMEOUT)
        match event:
            case ("linx_process", stream, data) if stream in streams:
                chunks.append(data)
            case ("linx_process", kind, *detail) if kind in P.TERMINAL_EVENTS:
                return b"".join(chunks), (kind, *detail)


class Collector:
    """What an owner in these tests does once its gate opens: keep every output byte in order
    and note the outcome."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.chunks: list[bytes] = []
        self.outcome: tuple | None = None
        self.finished = threading.Event()

    def take(self, message: tuple) -> None:
        self.gate.wait()
        match message:
            case ("linx_process", "stdout" | "pty_out", data):
                self.chunks.append(data)
            case ("linx_process", kind, *detail) if kind in P.TERMINAL_EVENTS:
                self.outcome = (kind, *detail)
                self.finished.set()


class LinxActorOwner(linx_otp.Actor):
    """A linx_otp.Actor gives the window back when on_receive returns: no call needed."""

    def __init__(self, collector: Collector) -> None:
        super().__init__()
        self.collector = collector

    def on_receive(self, message):
        self.collector.take(message)


class PykkaActorOwner(pykka.ThreadingActor):
    """A plain pykka actor gives the window back itself, with linx_otp.consumed."""

    def __init__(self, collector: Collector) -> None:
        super().__init__()
        self.collector = collector

    def on_receive(self, message):
        self.collector.take(message)
        linx_otp.consumed(message)


class Hoarder(pykka.ThreadingActor):
    """Takes output and never gives the window back."""

    def on_receive(self, message):
        pass


class RelayedMailbox(linx_otp.Mailbox):
    """A Mailbox subclass: its sessions' output is relayed by the agent into it whether it reads
    or not (only a plain Mailbox reads capture pipes itself: tests/test_held_output.py)."""


def spawn_counting(owner, *, pty: bool = False, lines: int = LINES, **options) -> pykka.ActorRef:
    stdio = "pty" if pty else {"stdout": "capture"}
    return P.spawn(argv=["seq", "1", str(lines)], stdio=stdio, owner=owner, auto_proceed=True, **options)


def spawned_pid(session: pykka.ActorRef) -> int:
    assert wait_until(lambda: reason_of(P.host_pid, session) == "ok", TIMEOUT)
    return P.host_pid(session)


def wait_blocked(session: pykka.ActorRef, pty: bool = False) -> int:
    pid = spawned_pid(session)
    function = "n_tty_write" if pty else "pipe_write"
    assert wait_until(lambda: blocked_in(pid, function), TIMEOUT), kernel_stack(pid)
    return pid


def wait_holding_the_window(session: pykka.ActorRef) -> int:
    """``wait_blocked``, and until the owner has been given the whole window: a workload blocked in
    write(2) does not prove it (a loaded machine may fill the pipe before the agent reads, or
    deliver the agent's last frames after), and these tests need the old owner to hold it all.
    Reads the session's own window, which has no public view."""
    pid = wait_blocked(session)
    assert wait_until(lambda: actor_of(session)._window.full, TIMEOUT)
    return pid


# -- block mode: the workload waits, memory stays bounded, nothing is lost ------------------------


def test_an_owner_that_does_not_read_for_10_s_holds_its_workloads_in_write_with_bounded_memory():
    """Three owners at once, each with the default 1 MiB window: a Mailbox of a capture session,
    a Mailbox of a pty session, a linx_otp.Actor of a capture session. For 10 s none takes
    anything: the workloads sleep in write(2), this process grows by at most the three windows
    plus 16 MiB; then every byte arrives, in order."""
    lines = 3_000_000  # about 23 MB each: twenty windows
    expected = numbers(lines)
    pipe_box, pty_box, collector = linx_otp.Mailbox(), linx_otp.Mailbox(), Collector()
    actor = LinxActorOwner.start(collector)
    before = rss_bytes()
    sessions = [
        spawn_counting(pipe_box, lines=lines),
        spawn_counting(pty_box, pty=True, lines=lines),
        spawn_counting(actor, lines=lines),
    ]
    for session, pty in zip(sessions, (False, True, False), strict=True):
        wait_blocked(session, pty)
    peak = before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        peak = max(peak, rss_bytes())
        time.sleep(0.25)
    assert peak - before <= 3 * protocol.OUTPUT_WINDOW_DEFAULT + 16 * 1024 * 1024, (before, peak)
    for session, pty in zip(sessions, (False, True, False), strict=True):
        assert blocked_in(P.host_pid(session), "n_tty_write" if pty else "pipe_write")  # still, after 10 s

    output, outcome = read_until_outcome(pipe_box)
    assert outcome == ("exited", 0) and output == expected
    output, outcome = read_until_outcome(pty_box, ("pty_out",))
    assert outcome == ("exited", 0) and output.replace(b"\r\n", b"\n") == expected
    collector.gate.set()
    assert collector.finished.wait(TIMEOUT)
    assert collector.outcome == ("exited", 0) and b"".join(collector.chunks) == expected
    for session in sessions:
        session.stop()
    actor.stop()


@pytest.mark.parametrize("kind", ["mailbox", "own_mailbox", "pty", "linx_actor", "pykka_actor"])
def test_a_blocked_workload_resumes_when_its_owner_takes_output_and_loses_nothing(kind):
    collector = Collector()
    owner = {
        "mailbox": linx_otp.Mailbox(),
        "own_mailbox": None,
        "pty": linx_otp.Mailbox(),
        "linx_actor": LinxActorOwner.start(collector) if kind == "linx_actor" else None,
        "pykka_actor": PykkaActorOwner.start(collector) if kind == "pykka_actor" else None,
    }[kind]
    session = spawn_counting(owner, pty=kind == "pty", output_window=SMALL_WINDOW)
    wait_blocked(session, kind == "pty")
    if kind.endswith("actor"):
        collector.gate.set()
        assert collector.finished.wait(TIMEOUT)
        output, outcome = b"".join(collector.chunks), collector.outcome
        owner.stop()
    else:
        output, outcome = read_until_outcome(owner or linx_otp.mailbox(), ("stdout", "pty_out"))
    assert outcome == ("exited", 0)
    assert output.replace(b"\r\n", b"\n") == numbers(LINES)
    session.stop()


@pytest.mark.parametrize("relayed", [False, True], ids=["held by a Mailbox", "relayed"])
def test_the_terminal_event_waits_for_the_output_the_pipe_still_holds(relayed):
    """96 KiB into a 64 KiB window: the workload exits with output left in the pipe; its outcome
    comes only once the owner has taken enough to let those bytes through, and after them. A
    plain Mailbox reads the pipe itself (the outcome waits in the session), any other owner's
    output is relayed (it waits in the agent)."""
    box = RelayedMailbox() if relayed else linx_otp.Mailbox()
    size = SMALL_WINDOW + 32 * 1024
    session = P.spawn(
        argv=["head", "-c", str(size), "/dev/zero"],
        stdio={"stdout": "capture"},
        owner=box,
        auto_proceed=True,
        output_window=SMALL_WINDOW,
    )
    pid = spawned_pid(session)
    assert wait_until(lambda: not process_alive(pid), TIMEOUT)
    with pytest.raises(TimeoutError):
        P.wait(session, 0.5)
    output, outcome = read_until_outcome(box)
    assert outcome == ("exited", 0) and output == bytes(size)
    session.stop()


def test_stopping_a_session_whose_owner_does_not_read_is_prompt(box):
    """The graceful stop never waits for an owner to make room: stop drops what is left."""
    session = spawn_counting(box, output_window=SMALL_WINDOW)
    pid = wait_blocked(session)
    started = time.monotonic()
    assert session.stop() is True
    assert time.monotonic() - started < 5 and not process_alive(pid)
    assert box.flush()[-1] == ("linx_process", "signaled", 9)


def test_keystrokes_reach_a_pty_workload_whose_output_is_unread(box, tmp_path):
    marker = tmp_path / "typed"
    script = f'yes flood & read line; echo "$line" > {marker}; kill $!'
    session = P.spawn(
        argv=["/bin/sh", "-c", script], stdio="pty", owner=box, auto_proceed=True, output_window=SMALL_WINDOW
    )
    shell = spawned_pid(session)
    assert wait_until(lambda: child_pids(shell), TIMEOUT)
    flood = child_pids(shell)[0]
    assert wait_until(lambda: blocked_in(flood, "n_tty_write"), TIMEOUT), kernel_stack(flood)
    P.pty_write(session, b"typed while flooded\n")
    assert wait_until(lambda: marker.exists() and marker.read_text() == "typed while flooded\n", TIMEOUT)
    _, outcome = read_until_outcome(box, ("pty_out",))
    assert outcome[0] in ("exited", "signaled")
    session.stop()


def test_set_owner_carries_the_window_over():
    """The first owner holds the whole window; the second gets nothing until the first takes
    what it holds. Between them, every byte once, in order."""
    box, second = RelayedMailbox(), linx_otp.Mailbox()
    session = spawn_counting(box, output_window=SMALL_WINDOW)
    pid = wait_holding_the_window(session)
    P.set_owner(session, second)
    assert blocked_in(pid, "pipe_write") and len(second) == 0
    held = b"".join(event[2] for event in box.flush() if event[1] == "stdout")
    assert 0 < len(held) <= SMALL_WINDOW
    output, outcome = read_until_outcome(second)
    assert outcome == ("exited", 0) and held + output == numbers(LINES)
    session.stop()


class Retiring(linx_otp.Mailbox):
    """A mailbox that notes every message told to it once it is retired."""

    def __init__(self) -> None:
        super().__init__()
        self.retired = False
        self.late: list = []

    def tell(self, message) -> None:
        if self.retired:
            self.late.append(message)
        super().tell(message)


FLOOD_LINES = 2_000_000
"""``seq 1 FLOOD_LINES`` writes about 15 MB: long enough to still be flowing after a few reads."""


def test_a_flood_reaches_its_owner_in_order_with_one_terminal_event_last(box):
    """Output goes from the I/O thread straight to a Mailbox owner; the session actor handles
    the other events: ready and running come first, every byte once and in order, then exactly
    one terminal event."""
    session = spawn_counting(box, lines=FLOOD_LINES)
    events = []
    while not events or events[-1][1] not in P.TERMINAL_EVENTS:
        events.append(box.receive(timeout=TIMEOUT))
    kinds = [event[1] for event in events]
    assert kinds[:2] == ["ready", "running"] and set(kinds[2:-1]) == {"stdout"} and kinds[-1] == "exited"
    assert b"".join(event[2] for event in events[2:-1]) == numbers(FLOOD_LINES)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    session.stop()
    assert box.flush() == []


def test_set_owner_in_a_flood_takes_effect_when_it_returns():
    """set_owner while output flows: no output reaches the old owner once it has returned, and
    between the two owners every byte arrives once, in order."""
    first, second = Retiring(), linx_otp.Mailbox()
    session = spawn_counting(first, lines=FLOOD_LINES)
    chunks = []
    while len(chunks) < 5:
        event = first.receive(timeout=TIMEOUT)
        if event[1] == "stdout":
            chunks.append(event[2])
    P.set_owner(session, second)
    first.retired = True
    chunks += [event[2] for event in first.flush() if event[1] == "stdout"]
    output, outcome = read_until_outcome(second)
    assert first.late == [] and len(first) == 0
    assert outcome == ("exited", 0) and output and b"".join(chunks) + output == numbers(FLOOD_LINES)
    session.stop()


# -- other owners ------------------------------------------------------------------------------------


class Keeper:
    """An owner that says it gives the window back itself."""

    output_credit = "explicit"

    def __init__(self) -> None:
        self.messages: queue.SimpleQueue = queue.SimpleQueue()

    def tell(self, message) -> None:
        self.messages.put(message)


class Recorder:
    """A plain object with tell: the window goes back when tell returns (what it keeps is its
    own business)."""

    def __init__(self) -> None:
        self.messages: list = []

    def tell(self, message) -> None:
        self.messages.append(message)


def test_an_explicit_owner_blocks_its_workload_until_it_calls_consumed():
    keeper = Keeper()
    session = spawn_counting(keeper, output_window=SMALL_WINDOW)
    wait_blocked(session)
    chunks = []
    while True:
        message = keeper.messages.get(timeout=TIMEOUT)
        linx_otp.consumed(message)
        if message[1] == "stdout":
            chunks.append(message[2])
        if message[1] in P.TERMINAL_EVENTS:
            break
    assert message == ("linx_process", "exited", 0) and b"".join(chunks) == numbers(LINES)
    session.stop()


def test_a_plain_tell_owner_gets_the_window_back_as_tell_returns():
    recorder = Recorder()
    session = spawn_counting(recorder, output_window=SMALL_WINDOW)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    assert b"".join(m[2] for m in recorder.messages if m[1] == "stdout") == numbers(LINES)
    session.stop()


@pytest.mark.parametrize("when", ["while_holding_the_window", "before_any_output"])
def test_an_owner_actor_that_stopped_switches_its_session_to_drop_mode_and_says_so_once(when, caplog):
    hoarder = Hoarder.start()
    if when == "before_any_output":
        hoarder.stop()
    session = spawn_counting(hoarder, output_window=SMALL_WINDOW)
    if when == "while_holding_the_window":
        wait_blocked(session)
        hoarder.stop()
    assert P.wait(session, TIMEOUT) == ("exited", 0)  # not blocked forever
    warnings = [record for record in caplog.records if "has stopped" in record.getMessage()]
    assert len(warnings) == 1, warnings
    session.stop()


def test_a_new_owner_after_a_stopped_one_gets_the_session_back_to_blocking(box, caplog):
    hoarder = Hoarder.start()
    hoarder.stop()
    session = P.spawn(
        argv=["/bin/sh", "-c", "seq 1 300000; read go; exec seq 1 300000"],
        stdio="pty",
        owner=hoarder,
        auto_proceed=True,
        output_window=SMALL_WINDOW,
    )
    assert wait_until(lambda: any("has stopped" in record.getMessage() for record in caplog.records), TIMEOUT)
    shell = spawned_pid(session)
    assert wait_until(lambda: blocked_in(shell, "n_tty_read"), TIMEOUT)  # all of the first seq was dropped
    P.set_owner(session, box)
    P.pty_write(session, b"go\n")
    wait_blocked(session, pty=True)  # blocking again: the session's own mode
    output, outcome = read_until_outcome(box, ("pty_out",))
    assert outcome == ("exited", 0) and output.replace(b"\r\n", b"\n").endswith(numbers(LINES))
    session.stop()


def test_a_previous_owner_that_stops_holding_the_window_gives_it_back_to_the_new_one(box, caplog):
    """set_owner away from an actor that holds the whole window: the new owner gets nothing until
    the old one takes its part, and if the old one stops instead, what it held is given back."""
    hoarder = Hoarder.start()
    session = spawn_counting(hoarder, output_window=SMALL_WINDOW)
    wait_holding_the_window(session)
    P.set_owner(session, box)
    hoarder.stop()  # it never took the window's worth it was told
    output, outcome = read_until_outcome(box)
    assert outcome == ("exited", 0)
    assert numbers(LINES).endswith(output) and len(output) >= len(numbers(LINES)) - SMALL_WINDOW  # the rest, in order
    assert [record for record in caplog.records if "previous owner" in record.getMessage()]
    assert not [record for record in caplog.records if "has stopped" in record.getMessage()]  # no drop mode
    session.stop()


# -- drop mode ---------------------------------------------------------------------------------------


def replay(events: list, stream: str, written: bytes) -> tuple[int, int, int]:
    """Checks every delivered byte against its place in what was written, skipping the gaps
    that output_dropped reports; returns (delivered, dropped, gaps)."""
    offset = delivered = dropped = gaps = 0
    for event in events:
        match event:
            case ("linx_process", kind, data) if kind == stream:
                assert data == written[offset : offset + len(data)], offset
                offset += len(data)
                delivered += len(data)
            case ("linx_process", "output_dropped", kind, nbytes) if kind == stream:
                offset += nbytes
                dropped += nbytes
                gaps += 1
    assert offset == len(written)
    return delivered, dropped, gaps


def test_drop_mode_never_blocks_and_reports_exactly_what_it_discarded(box):
    """Nobody reads: the first window's worth is delivered, the rest of each stream is one gap,
    reported once, before the outcome; delivered + dropped == written, byte for byte."""
    script = "seq 1 300000; seq 1 100000 >&2"
    session = P.spawn(
        argv=["/bin/sh", "-c", script],
        stdio={"stdout": "capture", "stderr": "capture"},
        owner=box,
        auto_proceed=True,
        output="drop",
        output_window=SMALL_WINDOW,
    )
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    events = box.flush()
    assert events[-1] == ("linx_process", "exited", 0)
    out = replay(events, "stdout", numbers(300_000))
    err = replay(events, "stderr", numbers(100_000))
    assert out[0] + err[0] == SMALL_WINDOW  # exactly the window, as nothing was taken
    assert out[2] == 1 and err[2] == 1  # one gap each, one report each
    session.stop()


def test_drop_mode_with_a_slow_reader_reports_every_gap_in_place(box):
    session = spawn_counting(box, lines=1_000_000, output="drop", output_window=SMALL_WINDOW)
    events = []
    while not events or events[-1][1] not in P.TERMINAL_EVENTS:
        events.append(box.receive(timeout=TIMEOUT))
        time.sleep(0.0005)  # slower than seq: gaps open and close
    assert events[-1] == ("linx_process", "exited", 0)
    delivered, dropped, gaps = replay(events, "stdout", numbers(1_000_000))
    assert delivered > SMALL_WINDOW and dropped > 0 and gaps >= 1
    session.stop()


def test_drop_mode_on_a_pty(box):
    session = spawn_counting(box, pty=True, output="drop", output_window=SMALL_WINDOW)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    events = box.flush()
    delivered = sum(len(event[2]) for event in events if event[1] == "pty_out")
    dropped = [event for event in events if event[1] == "output_dropped"]
    assert delivered == SMALL_WINDOW and len(dropped) == 1 and dropped[0][2] == "pty"
    assert delivered + dropped[0][3] == len(numbers(LINES).replace(b"\n", b"\r\n"))
    session.stop()


# -- options and events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"output": "fast"}, ("bad_output", "fast")),
        ({"output": None}, ("bad_output", None)),
        ({"output_window": 0}, ("bad_output_window", 0)),
        ({"output_window": protocol.OUTPUT_WINDOW_MIN - 1}, ("bad_output_window", protocol.OUTPUT_WINDOW_MIN - 1)),
        ({"output_window": protocol.OUTPUT_WINDOW_MAX + 1}, ("bad_output_window", protocol.OUTPUT_WINDOW_MAX + 1)),
        ({"output_window": 65536.0}, ("bad_output_window", 65536.0)),
        ({"output_window": True}, ("bad_output_window", True)),
        ({"output_window": "1M"}, ("bad_output_window", "1M")),
    ],
)
def test_bad_output_options_are_refused_before_anything_starts(options, reason):
    threads = threading.active_count()
    with pytest.raises(linx_otp.LinxValueError) as raised:
        P.spawn(argv=["/bin/true"], stdio={"stdout": "capture"}, **options)
    assert raised.value.reason == reason
    assert threading.active_count() == threads


def test_an_owner_with_an_unknown_credit_policy_is_refused():
    class Odd(Recorder):
        output_credit = "sometimes"

    with pytest.raises(linx_otp.LinxValueError) as raised:
        P.spawn(argv=["/bin/true"], owner=Odd())
    assert raised.value.reason[0] == "bad_owner"


def test_an_output_event_is_a_plain_tuple_to_its_owner():
    sent = []
    window = OutputWindow(4096, send=lambda frame: sent.append(frame) or True)
    event = window.claim(("linx_process", "stdout", b"x" * 1024))
    assert isinstance(event, OutputEvent) and event == ("linx_process", "stdout", b"x" * 1024)
    match event:
        case ("linx_process", "stdout", data):
            assert data == b"x" * 1024
    assert repr(event) == repr(tuple(event))
    assert type(pickle.loads(pickle.dumps(event))) is tuple
    assert window.outstanding == 1024 and not sent
    linx_otp.consumed(event)  # a quarter window: the credit goes out
    linx_otp.consumed(event)  # and only once
    assert sent == [protocol.encode_credit(1024)] and window.outstanding == 0


def test_credit_is_batched_and_a_forgiven_claim_counts_no_more():
    sent = []
    window = OutputWindow(65536, send=lambda frame: sent.append(frame) or True)
    events = [window.claim(("linx_process", "stdout", b"x" * 1000)) for _ in range(40)]
    for event in events[:16]:
        linx_otp.consumed(event)
    assert sent == []  # 16000 bytes: under a quarter window
    linx_otp.consumed(events[16])
    assert sent == [protocol.encode_credit(17000)]
    window.forgive()
    assert sent[-1] == protocol.encode_credit(40000 - 17000) and window.outstanding == 0
    for event in events[17:]:
        linx_otp.consumed(event)
    assert len(sent) == 2 and window.outstanding == 0


def test_reactor_timers_fire_in_order_after_their_delay():
    """The I/O thread's timers, which check on an actor owner holding a full window."""
    from linx_otp.reactor import reactor

    fired: queue.SimpleQueue = queue.SimpleQueue()
    started = time.monotonic()
    reactor().call_later(0.2, lambda: fired.put(("late", time.monotonic() - started)))
    reactor().call_later(0.05, lambda: fired.put(("early", time.monotonic() - started)))
    first, second = fired.get(timeout=5), fired.get(timeout=5)
    assert [first[0], second[0]] == ["early", "late"]
    assert first[1] >= 0.05 and second[1] >= 0.2


def test_a_thread_whose_own_mailbox_owns_a_session_and_ends_unread_does_not_block_it_forever(caplog):
    """A thread's own mailbox as the owner, and the thread ends without reading: nobody will
    ever take that window back, so the session switches to drop mode, as for a stopped actor."""
    started: list = []

    def start_and_leave() -> None:
        started.append(spawn_counting(linx_otp.mailbox(), output_window=SMALL_WINDOW))

    thread = threading.Thread(target=start_and_leave)
    thread.start()
    thread.join(TIMEOUT)
    (session,) = started
    assert P.wait(session, TIMEOUT) == ("exited", 0)  # not blocked forever
    warnings = [record for record in caplog.records if "has stopped taking output" in record.getMessage()]
    assert len(warnings) == 1, warnings
    session.stop()


def test_a_thread_s_own_mailbox_read_by_another_thread_keeps_its_session_blocking(caplog):
    """The mailbox's reader is the thread that last took from it: a thread's own mailbox that
    another thread reads is not given up on when the thread it belongs to ends."""
    handed_over: list = []
    taken = threading.Event()

    def start_and_hand_over() -> None:
        own = linx_otp.mailbox()
        handed_over.append((own, spawn_counting(own, output_window=SMALL_WINDOW)))
        taken.wait(TIMEOUT)

    thread = threading.Thread(target=start_and_hand_over)
    thread.start()
    assert wait_until(lambda: handed_over, TIMEOUT)
    ((own, session),) = handed_over
    assert own.receive(("linx_process", "ready"), timeout=TIMEOUT)  # this thread reads it now
    taken.set()
    thread.join(TIMEOUT)
    wait_blocked(session)
    time.sleep(3 * P.OWNER_CHECK_SECONDS)  # checks have run since the first thread ended
    output, outcome = read_until_outcome(own)
    assert outcome == ("exited", 0) and output == numbers(LINES)  # blocked, never dropped
    assert not [record for record in caplog.records if "has stopped taking output" in record.getMessage()]
    session.stop()
