"""pty sessions (stdio="pty"): output events, input buffering, window sizes, the state rules."""

from __future__ import annotations

import pytest
from support import reason_of

import linx_otp
from linx_otp import process as P
from linx_otp import protocol

TIMEOUT = 10


def pty_session(argv: list[str], box: linx_otp.Mailbox, proceed: bool = True):
    session = P.spawn(argv=argv, stdio="pty", owner=box)
    box.receive(("linx_process", "ready"), timeout=TIMEOUT)
    if proceed:
        P.proceed(session)
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
    return session


def output_until(box: linx_otp.Mailbox, done) -> bytes:
    """Collect pty output until ``done(output)`` holds."""
    output = b""
    while not done(output):
        output += box.receive(("linx_process", "pty_out"), timeout=TIMEOUT)[2]
    return output


def output_and_outcome(box: linx_otp.Mailbox) -> tuple[bytes, tuple, list[int]]:
    """Every pty_out up to the terminal event, which must come last."""
    chunks = []
    while True:
        event = box.receive(lambda message: message[:2] != ("linx_process", "running"), timeout=TIMEOUT)
        if event[1] != "pty_out":
            return b"".join(chunks), event[1:], [len(chunk) for chunk in chunks]
        chunks.append(event[2])


def test_echo_hi_gives_hi_crlf(box):
    session = pty_session(["/bin/echo", "hi"], box)
    assert output_and_outcome(box)[:2] == (b"hi\r\n", ("exited", 0))
    session.stop()


def test_cat_echoes_what_is_typed(box):
    session = pty_session(["/bin/cat"], box)
    P.pty_write(session, "hello\n")
    assert output_until(box, lambda out: out.count(b"hello\r\n") == 2) == b"hello\r\nhello\r\n"  # tty echo, then cat
    P.pty_write(session, b"\x04")  # Ctrl-D: end of file for cat
    assert output_and_outcome(box)[1] == ("exited", 0)
    session.stop()


def test_every_byte_arrives_before_the_terminal_event_in_chunks_of_at_most_one_output_chunk(box):
    session = pty_session(["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; exit 3"], box)
    output, outcome, sizes = output_and_outcome(box)
    assert outcome == ("exited", 3)
    assert output == b"a" * 300000
    assert max(sizes) <= protocol.OUTPUT_CHUNK
    session.stop()


def test_64_kib_written_to_cat_comes_back_whole(box):
    session = pty_session(["/bin/sh", "-c", "stty raw -echo; echo READY; exec cat"], box)
    output_until(box, lambda out: b"READY" in out)
    data = bytes(range(256)) * 256
    P.pty_write(session, data)
    assert output_until(box, lambda out: len(out) >= len(data)) == data
    P.signal(session, 9)
    assert output_and_outcome(box)[1] == ("signaled", 9)
    session.stop()


def test_input_past_1_mib_is_dropped_and_reported_and_the_session_lives_on(box):
    # In raw mode the tty's input queue fills and pushes back (canonical mode would discard
    # the overlong line instead); sleep never reads it.
    session = pty_session(["/bin/sh", "-c", "stty raw -echo; echo READY; exec sleep 60"], box)
    output_until(box, lambda out: b"READY" in out)
    P.pty_write(session, b"x" * (3 * 1024 * 1024))
    dropped = 0
    while dropped < 1024 * 1024:  # at least 3 MiB - 1 MiB buffer - the tty's own queue
        dropped += box.receive(("linx_process", "pty_in_dropped"), timeout=TIMEOUT)[2]
    assert P.info(session).stage == "running"
    P.pty_set_winsize(session, (10, 20, 0, 0))
    P.signal(session, 15)
    assert P.wait(session, TIMEOUT) == ("signaled", 15)
    session.stop()


def test_a_window_size_set_at_the_checkpoint_is_seen_from_the_first_instruction(box):
    session = pty_session(["/bin/sh", "-c", "stty size"], box, proceed=False)
    P.pty_set_winsize(session, {"rows": 42, "cols": 132, "xpixel": 0, "ypixel": 0})
    P.proceed(session)
    assert output_and_outcome(box)[:2] == (b"42 132\r\n", ("exited", 0))
    session.stop()


def test_a_resize_while_running_sends_sigwinch_and_is_seen(box):
    script = "trap 'echo WINCH; stty size' WINCH; echo ARMED; while :; do sleep 0.02; done"
    session = pty_session(["/bin/sh", "-c", script], box, proceed=False)
    P.pty_set_winsize(session, linx_otp.tty.WindowSize(rows=24, cols=80))
    P.proceed(session)
    output_until(box, lambda out: b"ARMED" in out)
    P.pty_set_winsize(session, linx_otp.tty.WindowSize(rows=50, cols=160))
    assert b"WINCH\r\n50 160\r\n" in output_until(box, lambda out: b"50 160\r\n" in out)
    P.signal(session, 9)
    P.wait(session, TIMEOUT)
    session.stop()


# -- the state rules ------------------------------------------------------------------------------


def test_pty_rules_at_the_checkpoint(box):
    session = pty_session(["/bin/true"], box, proceed=False)
    assert P.info(session).pty is True
    assert reason_of(P.pty_write, session, b"x") == "not_running"
    assert reason_of(P.pty_set_winsize, session, (0, 0, 0, 0)) == "ok"
    assert reason_of(P.pty_set_winsize, session, (65535, 65535, 65535, 65535)) == "ok"
    P.abort(session)
    assert P.wait(session, TIMEOUT) == ("aborted",)
    session.stop()


@pytest.mark.parametrize(
    "size", [(-1, 80, 0, 0), (24, 65536, 0, 0), (24, 80, 0), ("24", 80, 0, 0), {"rows": 24}, 24, (True, 80, 0, 0)]
)
def test_bad_window_sizes_are_refused(box, size):
    session = pty_session(["/bin/sleep", "60"], box)
    assert reason_of(P.pty_set_winsize, session, size) == ("bad_winsize", size)
    session.stop()


def test_pty_rules_once_ended_and_once_gone(box):
    session = pty_session(["/bin/true"], box)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    assert reason_of(P.pty_write, session, b"x") == "no_process"
    assert reason_of(P.pty_set_winsize, session, (1, 1, 0, 0)) == "no_process"
    session.stop()
    assert reason_of(P.pty_write, session, b"x") == "no_process"
    assert reason_of(P.pty_set_winsize, session, (1, 1, 0, 0)) == "no_process"


def test_pty_verbs_on_a_session_without_a_pty(box):
    session = P.spawn(argv=["/bin/sleep", "60"], owner=box, auto_proceed=True)
    box.receive(("linx_process", "running"), timeout=TIMEOUT)
    assert reason_of(P.pty_write, session, b"x") == "no_pty"
    assert reason_of(P.pty_set_winsize, session, (1, 1, 0, 0)) == "no_pty"
    session.stop()


def test_pty_write_takes_str_or_bytes_only(box):
    session = pty_session(["/bin/sleep", "60"], box)
    assert reason_of(P.pty_write, session, 42) == ("bad_data", 42)
    session.stop()
