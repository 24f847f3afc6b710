"""Held capture pipes (linx_otp/held_output.py): a plain Mailbox owner reads its sessions'
capture pipes itself, in the thread that takes the output; the agent relays them once the owner
changes or stops reading. Every byte once and in order, the outcome last, flow control as for
relayed output, and nothing left open."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

import pytest
from agent_driver import run_agent
from support import pipe_inode, process_alive, wait_until

import linx_otp
from linx_otp import agent, protocol
from linx_otp import process as P
from linx_otp.held_output import DEPTH_MAX, READ_SIZE, open_held_pipes

TIMEOUT = 20
SMALL_WINDOW = 64 * 1024
LINES = 300_000


def numbers(count: int) -> bytes:
    return b"".join(b"%d\n" % number for number in range(1, count + 1))


def held_by_this_process(workload_pid: int, fd: int = 1) -> bool:
    """Whether the workload's ``fd`` is a pipe whose other end this process holds."""
    inode = pipe_inode(f"/proc/{workload_pid}/fd/{fd}")
    if inode is None:
        return False
    return any(pipe_inode(f"/proc/self/fd/{ours}") == inode for ours in os.listdir("/proc/self/fd"))


def our_pipe_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd") if pipe_inode(f"/proc/self/fd/{fd}") is not None}


def spawn_counting(owner, lines: int = LINES, **options):
    return P.spawn(
        argv=["seq", "1", str(lines)], stdio={"stdout": "capture"}, owner=owner, auto_proceed=True, **options
    )


def spawn_parked_writer(owner, **options):
    """A workload that writes one line and then waits for stdin's end (so it is alive to look at)."""
    return P.spawn(
        argv=["sh", "-c", "echo started; exec sleep 30"],
        stdio={"stdout": "capture"},
        owner=owner,
        auto_proceed=True,
        **options,
    )


def workload_pid(session) -> int:
    assert wait_until(lambda: P.info(session).host_pid is not None, TIMEOUT)
    return P.host_pid(session)


def read_until_outcome(box: linx_otp.Mailbox, streams=("stdout",)) -> tuple[dict[str, bytes], list, tuple]:
    chunks: dict[str, list[bytes]] = {stream: [] for stream in streams}
    kinds = []
    while True:
        event = box.receive(timeout=TIMEOUT)
        kinds.append(event[1])
        if event[1] in streams:
            chunks[event[1]].append(event[2])
        elif event[1] in P.TERMINAL_EVENTS:
            return {stream: b"".join(parts) for stream, parts in chunks.items()}, kinds, tuple(event[1:])


def test_a_plain_mailbox_reads_the_workload_s_pipe_itself(box):
    session = spawn_parked_writer(box)
    assert box.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2] == b"started\n"
    assert held_by_this_process(workload_pid(session))
    session.stop()


@pytest.mark.parametrize(
    "owner_kind",
    ["mailbox_subclass", "drop_mode", "many_live_agents"],
)
def test_other_owners_and_modes_are_relayed_by_the_agent(owner_kind, monkeypatch):
    """Only a plain Mailbox in block mode, while this process holds few sessions, reads the pipe
    itself: a subclass may do anything in tell, drop mode needs a reader that drops, and past
    the spawn server's threshold a session holds no fd but its socket."""
    owner: linx_otp.Mailbox = (
        type("Subclass", (linx_otp.Mailbox,), {})() if owner_kind == "mailbox_subclass" else linx_otp.Mailbox()
    )
    options = {"output": "drop"} if owner_kind == "drop_mode" else {}
    if owner_kind == "many_live_agents":
        monkeypatch.setattr(agent, "SPAWN_SERVER_FROM", 0)
    session = spawn_parked_writer(owner, **options)
    assert owner.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2] == b"started\n"
    assert not held_by_this_process(workload_pid(session))
    session.stop()


@pytest.mark.parametrize("timeout", [30 * 86400, threading.TIMEOUT_MAX])
def test_a_receive_with_no_end_in_sight_polls_the_pipe(box, timeout):
    """A timeout past what ``poll`` takes (2**31 ms: 24.8 days) is waited in slices."""
    session = P.spawn(
        argv=["sh", "-c", "sleep 0.3; echo late; exec sleep 30"],
        stdio={"stdout": "capture"},
        owner=box,
        auto_proceed=True,
    )
    assert box.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert held_by_this_process(workload_pid(session))
    assert box.receive(("linx_process", "stdout"), timeout=timeout)[2] == b"late\n"
    session.stop()


def test_output_is_whole_in_order_between_running_and_the_outcome(box):
    session = spawn_counting(box)
    output, kinds, outcome = read_until_outcome(box)
    assert kinds[:2] == ["ready", "running"] and set(kinds[2:-1]) == {"stdout"}
    assert outcome == ("exited", 0) and output["stdout"] == numbers(LINES)
    session.stop()
    assert box.flush() == []


def test_stdout_and_stderr_both_held_each_whole(box):
    script = "seq 1 50000; seq 1 50000 >&2"
    session = P.spawn(
        argv=["sh", "-c", script], stdio={"stdout": "capture", "stderr": "capture"}, owner=box, auto_proceed=True
    )
    output, _, outcome = read_until_outcome(box, streams=("stdout", "stderr"))
    assert outcome == ("exited", 0)
    assert output["stdout"] == numbers(50000) and output["stderr"] == numbers(50000)
    session.stop()


def test_events_are_at_most_one_read_each(box):
    """Held output comes in events of at most READ_SIZE (larger ones cost page faults)."""
    session = spawn_counting(box, lines=1_000_000)
    sizes = []
    while (event := box.receive(timeout=TIMEOUT))[1] not in P.TERMINAL_EVENTS:
        if event[1] == "stdout":
            sizes.append(len(event[2]))
    assert sum(sizes) == len(numbers(1_000_000)) and max(sizes) <= READ_SIZE
    session.stop()


def test_a_read_takes_what_many_writes_left_and_keeps_nothing_back(box):
    """A read gathers (in C) across the workload's writes, and what it does not return stays in
    the pipe: bytes kept back in a buffer would be lost when the agent takes the pipe over."""
    (pipe,) = open_held_pipes(("stdout",), window_size=SMALL_WINDOW, holder=box)
    try:
        written = b"".join(bytes([65 + index]) * 1000 for index in range(10))
        for index in range(10):
            os.write(pipe.write_end, written[index * 1000 : (index + 1) * 1000])
        assert pipe.read(3500) == written[:3500]
        assert pipe.queued_in_pipe() == 6500
        pipe.close_write_end()
        assert pipe.read(READ_SIZE) == written[3500:]  # up to the end of the file, not the size
        assert pipe.read(READ_SIZE) == b"" and pipe.ended
    finally:
        pipe.close()


def test_one_mailbox_holds_several_sessions_each_in_order(box):
    sessions = [spawn_counting(box, lines=100_000 + index) for index in range(3)]
    hosts = {workload_pid(session): session for session in sessions}
    assert len(hosts) == 3
    # the events do not say which session they came from: tell them apart by length at the end
    chunks: list[bytes] = []
    outcomes = 0
    while outcomes < 3:
        event = box.receive(timeout=TIMEOUT)
        if event[1] == "stdout":
            chunks.append(event[2])
        elif event[1] in P.TERMINAL_EVENTS:
            assert event[1:] == ("exited", 0)
            outcomes += 1
    assert sum(map(len, chunks)) == sum(len(numbers(100_000 + index)) for index in range(3))
    for session in sessions:
        session.stop()


def test_an_owner_that_waits_for_another_message_holds_at_most_a_window(box):
    """receive() of something else reads output meanwhile, but no more than the window: then
    the workload blocks in write(2) and the pipe keeps the rest."""
    session = spawn_counting(box, output_window=SMALL_WINDOW)
    pid = workload_pid(session)
    with pytest.raises(TimeoutError):
        box.receive(("never",), timeout=1.5)
    queued = sum(len(message[2]) for message in list(box._messages) if message[1] == "stdout")
    assert 0 < queued <= SMALL_WINDOW
    assert process_alive(pid) and "pipe_write" in open(f"/proc/{pid}/wchan").read()
    output, _, outcome = read_until_outcome(box)
    assert outcome == ("exited", 0) and output["stdout"] == numbers(LINES)
    session.stop()


def test_flush_reads_the_held_pipes(box):
    session = spawn_parked_writer(box)
    assert wait_until(lambda: "stdout" in [message[1] for message in box.flush()], TIMEOUT)
    session.stop()


def test_set_owner_hands_the_pipe_to_the_agent_every_byte_once(box):
    """The first owner has read part; set_owner has the agent relay the rest to the second:
    between them, every byte once and in order, and nothing more reaches the first once
    set_owner has returned."""
    second = linx_otp.Mailbox()
    session = spawn_counting(box, output_window=SMALL_WINDOW)
    first = [box.receive(timeout=TIMEOUT) for _ in range(4)]
    assert [event[1] for event in first[:2]] == ["ready", "running"]
    P.set_owner(session, second)
    held = b"".join(event[2] for event in first[2:] + box.flush() if event[1] == "stdout")
    output, kinds, outcome = read_until_outcome(second)
    assert outcome == ("exited", 0) and held + output["stdout"] == numbers(LINES)
    assert box.flush() == []
    session.stop()


def test_set_owner_before_running_has_the_agent_relay_from_the_start(box):
    second = linx_otp.Mailbox()
    session = P.spawn(argv=["seq", "1", str(LINES)], stdio={"stdout": "capture"}, owner=box)
    box.receive(("linx_process", "ready"), timeout=TIMEOUT)
    P.set_owner(session, second)
    P.proceed(session)
    output, _, outcome = read_until_outcome(second)
    assert outcome == ("exited", 0) and output["stdout"] == numbers(LINES)
    assert [message[1] for message in box.flush()] == []
    session.stop()


def test_stopping_a_session_whose_outcome_waits_for_its_owner_is_prompt(box):
    session = P.spawn(
        argv=["head", "-c", str(SMALL_WINDOW + 32 * 1024), "/dev/zero"],
        stdio={"stdout": "capture"},
        owner=box,
        auto_proceed=True,
        output_window=SMALL_WINDOW,
    )
    pid = workload_pid(session)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert wait_until(lambda: not process_alive(pid), TIMEOUT)
    started = time.monotonic()
    assert session.stop() is True
    assert time.monotonic() - started < 2
    messages = box.flush()
    assert messages[-1] == ("linx_process", "exited", 0)
    assert sum(len(message[2]) for message in messages if message[1] == "stdout") <= SMALL_WINDOW + 32 * 1024


def test_a_reading_thread_that_ends_has_the_agent_drop_the_rest(caplog):
    """The thread that reads a mailbox holding a pipe ends: nobody will read the pipe, so the
    agent takes it over in drop mode, reports what it drops, and the workload finishes."""
    started: list = []

    def read_a_little_and_leave() -> None:
        own = linx_otp.mailbox()
        started.append(spawn_counting(own, output_window=SMALL_WINDOW))
        own.receive(("linx_process", "stdout"), timeout=TIMEOUT)

    thread = threading.Thread(target=read_a_little_and_leave)
    thread.start()
    thread.join(TIMEOUT)
    (session,) = started
    assert P.wait(session, TIMEOUT) == ("exited", 0)  # not blocked forever
    assert len([record for record in caplog.records if "has stopped taking output" in record.getMessage()]) == 1
    session.stop()


def test_two_threads_receiving_from_one_mailbox_lose_nothing(box):
    session = spawn_counting(box, lines=1_000_000)
    taken: list[list[tuple]] = [[], []]

    def take(into: list) -> None:
        while True:
            try:
                event = box.receive(timeout=2)
            except TimeoutError:
                return
            into.append(event)
            if event[1] in P.TERMINAL_EVENTS:
                box.tell(event)  # the other thread ends too
                return

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    total = sum(len(event[2]) for into in taken for event in into if event[1] == "stdout")
    assert total == len(numbers(1_000_000))
    session.stop()


def test_nothing_is_left_open_and_the_workload_gets_only_its_stdio(box):
    before = our_pipe_fds()
    session = spawn_parked_writer(box)
    box.receive(("linx_process", "stdout"), timeout=TIMEOUT)
    pid = workload_pid(session)
    # sleep's own loader may still hold a file it opens while it starts: wait for it to settle
    assert wait_until(lambda: sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2], TIMEOUT)
    assert len(our_pipe_fds() - before) == 1  # the read end
    session.stop()
    assert our_pipe_fds() == before


def test_a_window_too_large_to_hold_is_relayed(box):
    session = spawn_parked_writer(box, output_window=DEPTH_MAX * 2)
    assert box.receive(("linx_process", "stdout"), timeout=TIMEOUT)[2] == b"started\n"
    assert not held_by_this_process(workload_pid(session))
    session.stop()


# -- the agent's side of the protocol ------------------------------------------------------------


def held_request() -> bytes:
    stdio = (protocol.StdioDirective(), protocol.StdioDirective(protocol.STDIO_CAPTURE_HELD), protocol.StdioDirective())
    return protocol.encode_request(
        protocol.Request(mode=protocol.MODE_SPAWN, argv=(b"/bin/echo", b"hi"), env=(), stdio=stdio)
    )


def test_the_agent_refuses_a_held_pipe_without_its_ends():
    run = run_agent(held_request() + protocol.encode_command(protocol.CMD_PROCEED))
    assert run.events == [("error", 22, "malformed_request")] and run.exit_status == 2


def test_the_agent_refuses_ends_that_are_not_one_pipe():
    first, second = os.pipe()
    third, fourth = os.pipe()
    try:
        run = run_agent(held_request() + protocol.encode_command(protocol.CMD_PROCEED), fds=[first, fourth])
    finally:
        for fd in (first, second, third, fourth):
            os.close(fd)
    assert run.events == [("error", 22, "capture")]


def test_the_agent_leaves_a_held_pipe_to_python_and_relays_it_once_told():
    """The socket stays open (a hang-up would have the agent relay it: nobody else will read)."""
    read_end, write_end = os.pipe()
    try:
        run = run_agent(
            held_request() + protocol.encode_command(protocol.CMD_PROCEED), fds=[read_end, write_end], close_after=False
        )
        os.close(write_end)
        assert [event[0] for event in run.events] == ["spawned", "ready", "running", "exited"]
        assert os.read(read_end, 100) == b"hi\n"  # left in the pipe for this side
    finally:
        os.close(read_end)
    read_end, write_end = os.pipe()
    try:
        relay = protocol.encode_relay(protocol.OUTPUT_STREAM_STDOUT)
        run = run_agent(
            held_request() + relay + protocol.encode_command(protocol.CMD_PROCEED),
            fds=[read_end, write_end],
            close_after=False,
        )
        os.close(write_end)
        assert ("stdout", b"hi\n") in run.events and run.events[-1] == ("exited", 0)
    finally:
        os.close(read_end)


def test_at_a_hang_up_the_agent_drops_a_held_pipe_so_the_workload_never_blocks():
    """The Python process is gone (kill -9: its end of the socket closes) with the held pipe
    unread: the agent takes the pipe over and drops it, so a workload writing far more than the
    pipe holds finishes, and the drop is reported to the byte."""
    size = 4 * 1024 * 1024
    request = protocol.encode_request(
        protocol.Request(
            mode=protocol.MODE_SPAWN,
            argv=(b"/usr/bin/head", b"-c", str(size).encode(), b"/dev/zero"),
            env=(),
            stdio=(
                protocol.StdioDirective(),
                protocol.StdioDirective(protocol.STDIO_CAPTURE_HELD),
                protocol.StdioDirective(),
            ),
            orphan_policy=(protocol.ORPHAN_LINGER, 0),
        )
    )
    read_end, write_end = os.pipe()
    try:
        run = run_agent(
            request + protocol.encode_command(protocol.CMD_PROCEED), fds=[read_end, write_end], timeout=TIMEOUT
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    assert run.events[-1] == ("exited", 0)
    dropped = sum(event[2] for event in run.events if event[0] == "output_dropped")
    delivered = sum(len(event[1]) for event in run.events if event[0] == "stdout")
    assert dropped + delivered == size and dropped > 0


@pytest.mark.parametrize("stream", [0, 3])
def test_a_relay_of_another_stream_is_malformed(stream):
    request = protocol.encode_request(protocol.Request(mode=protocol.MODE_SPAWN, argv=(b"/bin/sleep", b"5"), env=()))
    bad_relay = protocol.encode_command(protocol.CMD_RELAY, bytes((stream,)))
    run = run_agent(request + protocol.encode_command(protocol.CMD_PROCEED) + bad_relay, close_after=False)
    assert run.events[-1] == ("error", 71, "malformed_command")


# -- what a hostile review found (each failed before its fix) ------------------------------------


def test_stop_while_another_thread_receives_keeps_the_order(box):
    """stop() hands the pipe to the agent before the stop (which has it drop the rest): with the
    mailbox still reading too, the agent's relayed bytes could land behind later ones."""
    expected = numbers(LINES)
    for _ in range(30):
        mailbox = linx_otp.Mailbox()
        session = spawn_counting(mailbox, output_window=4096)
        events: list = []

        def take(into=events, source=mailbox) -> None:
            while (event := source.receive(timeout=TIMEOUT))[1] not in P.TERMINAL_EVENTS:
                into.append(event)
            into.append(event)

        reader = threading.Thread(target=take)
        reader.start()
        time.sleep(0.01)
        session.stop()
        reader.join(TIMEOUT)
        output = b"".join(event[2] for event in events if event[1] == "stdout")
        assert expected.startswith(output), "output out of order"
        assert events[-1][1] in P.TERMINAL_EVENTS and mailbox.flush() == []


def test_polling_with_a_zero_timeout_reads_the_held_pipes(box):
    """receive(timeout=0) in a loop gets everything: it reads the pipes before it gives up."""
    session = spawn_counting(box)
    output = []
    while True:
        try:
            event = box.receive(timeout=0)
        except TimeoutError:
            time.sleep(0.001)
            continue
        if event[1] == "stdout":
            output.append(event[2])
        elif event[1] in P.TERMINAL_EVENTS:
            break
    assert b"".join(output) == numbers(LINES)
    session.stop()


def test_an_exception_raised_in_the_poll_leaves_the_mailbox_working(box, monkeypatch):
    """A signal handler's exception (Ctrl-C) raised while the owner polls: the mailbox is not
    left believing that somebody polls, so the next receive reads on."""
    session = spawn_counting(box)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    real_poll = select.poll

    class InterruptedPoll:
        def __init__(self) -> None:
            self.poll_object = real_poll()

        def register(self, *arguments) -> None:
            self.poll_object.register(*arguments)

        def poll(self, timeout) -> list:
            monkeypatch.setattr(select, "poll", real_poll)  # once
            raise KeyboardInterrupt

    monkeypatch.setattr(select, "poll", InterruptedPoll)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            box.receive(("never",), timeout=TIMEOUT)
    assert not box._polling
    output, _, outcome = read_until_outcome(box)
    assert outcome == ("exited", 0) and len(output["stdout"]) > 0
    session.stop()


def test_set_owner_carries_a_held_window_over(box):
    """The first owner has read a window and not taken it; after set_owner the agent counts it
    as in flight, so the second owner gets nothing more until the first takes its part."""
    second = type("Relayed", (linx_otp.Mailbox,), {})()  # relayed into whether it reads or not
    session = spawn_counting(box, output_window=SMALL_WINDOW)
    with pytest.raises(TimeoutError):
        box.receive(("never",), timeout=1)
    held = sum(len(message[2]) for message in list(box._messages) if message[1] == "stdout")
    assert held == SMALL_WINDOW
    P.set_owner(session, second)
    time.sleep(1)
    assert sum(len(message[2]) for message in list(second._messages) if message[1] == "stdout") == 0
    first = b"".join(event[2] for event in box.flush() if event[1] == "stdout")  # taking it gives the window back
    output, _, outcome = read_until_outcome(second)
    assert outcome == ("exited", 0) and first + output["stdout"] == numbers(LINES)
    session.stop()


def test_the_holder_is_checked_on_while_another_thread_takes_over(monkeypatch):
    """Thread A reads and ends; before the session has looked, thread B takes a message (B is now
    the reader) and ends too: the checks go on, so the session still finds nobody reading."""
    real_check_owner = P.Session._check_owner
    checking = threading.Event()
    checked = threading.Event()

    def busy_check_owner(self, owner) -> None:
        checking.set()
        time.sleep(0.3)  # a busy session actor
        real_check_owner(self, owner)
        checked.set()

    monkeypatch.setattr(P.Session, "_check_owner", busy_check_owner)
    box = linx_otp.Mailbox()
    session = spawn_counting(box, lines=2_000_000, output_window=SMALL_WINDOW)
    first = threading.Thread(target=lambda: box.receive(("linx_process", "stdout"), timeout=TIMEOUT))
    first.start()
    first.join()
    assert checking.wait(TIMEOUT)
    second = threading.Thread(target=lambda: (box.receive(timeout=TIMEOUT), checked.wait(TIMEOUT)))
    second.start()
    second.join()
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    session.stop()


def test_the_agent_refuses_more_fds_than_a_request_carries():
    ends = [end for _ in range(3) for end in os.pipe()]
    try:
        run = run_agent(held_request() + protocol.encode_command(protocol.CMD_PROCEED), fds=ends)
    finally:
        for fd in ends:
            os.close(fd)
    assert run.events == [("error", 22, "malformed_request")] and run.exit_status == 2
