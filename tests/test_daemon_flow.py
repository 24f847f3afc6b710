"""The daemon never queues without bound (issue 11): a child's output waits in its session's
window until the writer has written it, so a console nobody reads or a log slows the child
(or, with ``output = "drop"``, drops and says how much), lifecycle lines have a bounded buffer
of their own, and signals and control requests are served ahead of output."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import wait_until
from test_cli import COMMAND, TIMEOUT, logged_text, write_tree
from test_daemon_robustness import status_rows

from linx_otp import protocol
from linx_otp.daemon.output import Output
from linx_otp.daemon.tree import LogFile
from linx_otp.flow import OutputWindow

MIB = 1 << 20
RSS_ALLOWANCE = 32 * MIB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tail(path: Path, size: int = 100) -> bytes:
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - size))
        return file.read()


def start_daemon(tmp_path: Path, tree: str, stdout: int = subprocess.PIPE) -> tuple[subprocess.Popen, Path]:
    control = tmp_path / "c.sock"
    daemon = subprocess.Popen(
        [*COMMAND, "run", write_tree(tmp_path, tree), "--control", str(control)],
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )
    assert wait_until(lambda: control.exists(), TIMEOUT)
    return daemon, control


def timed_status(control: Path) -> tuple[dict, float]:
    began = time.monotonic()
    rows = status_rows(control)
    return rows, time.monotonic() - began


def stop_within(daemon: subprocess.Popen, seconds: float) -> float:
    began = time.monotonic()
    daemon.terminate()
    code = daemon.wait(TIMEOUT)
    took = time.monotonic() - began
    assert code == 0, code
    assert took < seconds, f"SIGTERM took {took:.2f} s"
    return took


YES = """
    [[child]]
    id = "yes"
    argv = ["yes", "a line of output that a console nobody reads will never take"]
    stdio = "capture"
"""


@pytest.mark.timeout(150)
def test_a_flood_into_a_console_nobody_reads_stays_bounded_and_obeys(tmp_path):
    daemon, control = start_daemon(tmp_path, YES)  # its stdout is a pipe this test never reads
    try:
        assert wait_until(lambda: status_rows(control)["yes"]["state"] == "running", TIMEOUT)
        pid = status_rows(control)["yes"]["host_pid"]
        assert wait_until(lambda: "pipe_write" in Path(f"/proc/{pid}/wchan").read_text(), TIMEOUT)
        baseline = rss(daemon.pid)
        highest, slowest = baseline, 0.0
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            rows, took = timed_status(control)
            assert rows["yes"]["state"] == "running" and rows["yes"]["host_pid"] == pid
            slowest = max(slowest, took)
            highest = max(highest, rss(daemon.pid))
            time.sleep(1)
        assert "pipe_write" in Path(f"/proc/{pid}/wchan").read_text()  # slowed through its window
        print(f"daemon RSS {baseline / MIB:.1f} MiB -> at most {highest / MIB:.1f} MiB; slowest status {slowest:.3f} s")
        assert highest - baseline <= RSS_ALLOWANCE
        assert slowest < 1.0
        print(f"SIGTERM under the flood: stopped in {stop_within(daemon, 2.0):.2f} s")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


EMPTY_LINES = "".join(
    f"""
    [[child]]
    id = "empty{number}"
    argv = ["yes", ""]
    stdio = "capture"
    """
    for number in range(8)
)
"""Eight children flooding with empty lines: each chunk of a window is 262,144 lines to format."""


@pytest.mark.parametrize("console", ["devnull", "unread pipe"])
def test_sigterm_under_a_flood_of_short_lines_from_many_children_is_prompt(tmp_path, console):
    """The outcome of a child stopped gracefully waits for its window; the windows in flight once
    the tree stops are counted, not formatted line by line (that took 18-25 s here)."""
    with open(os.devnull, "wb") as devnull:
        daemon, control = start_daemon(
            tmp_path, EMPTY_LINES, stdout=devnull.fileno() if console == "devnull" else subprocess.PIPE
        )
    try:
        assert wait_until(lambda: all(row["state"] == "running" for row in status_rows(control).values()), TIMEOUT)
        time.sleep(1)  # every window full, or being written
        print(f"SIGTERM under 8 floods of empty lines: stopped in {stop_within(daemon, 2.0):.2f} s")
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


LOGGED = """
    [[child]]
    id = "counter"
    argv = ["seq", "1", "3000000"]
    stdio = "capture"
    restart = "temporary"
    log = {{ path = "{log}", max_bytes = 1_000_000_000 }}
"""


def test_a_log_gets_every_byte_in_order_while_the_daemon_stays_bounded(tmp_path):
    log = tmp_path / "counter.log"
    daemon, control = start_daemon(tmp_path, LOGGED.format(log=log), stdout=subprocess.DEVNULL)
    try:
        baseline, highest = rss(daemon.pid), 0
        while status_rows(control)["counter"]["last_exit"] is None:
            highest = max(highest, rss(daemon.pid))
            time.sleep(0.05)
        assert status_rows(control)["counter"]["last_exit"] == "exited 0"
        expected = "".join(f"{n}\n" for n in range(1, 3000001)).encode()
        assert wait_until(lambda: tail(log).endswith(b" | 3000000\n"), TIMEOUT)
        assert logged_text(log) == expected.decode()
        print(f"{len(expected) / MIB:.1f} MiB logged; daemon RSS {baseline / MIB:.1f} -> at most {highest / MIB:.1f}")
        assert highest - baseline <= RSS_ALLOWANCE
        stop_within(daemon, 2.0)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


DROPPING = """
    [[child]]
    id = "flood"
    argv = ["sh", "-c", "yes xxxxxxx | head -c {total}"]
    stdio = "capture"
    restart = "temporary"
    output = "drop"
    output_window = 65536
"""


def test_drop_mode_never_blocks_the_child_and_accounts_for_every_byte(tmp_path):
    total = 40 * MIB
    daemon, control = start_daemon(tmp_path, DROPPING.format(total=total))
    lines: list[bytes] = []
    try:  # nobody reads the console while the child writes 40 MiB: in drop mode it finishes anyway
        assert wait_until(lambda: status_rows(control)["flood"]["last_exit"] == "exited 0", TIMEOUT)
        reader = threading.Thread(target=lambda: lines.extend(daemon.stdout), daemon=True)
        reader.start()
        assert wait_until(lambda: any(b"flood | exited" in line for line in lines), TIMEOUT)
        stop_within(daemon, 2.0)
        reader.join(TIMEOUT)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    shown = [m.group(1) for line in lines if (m := re.fullmatch(rb"\S+ +flood \| (x*\n)", line))]
    printed = sum(map(len, shown))
    dropped = [int(m.group(1)) for line in lines if (m := re.search(rb"output_dropped (\d+) bytes of stdout", line))]
    print(f"{printed} bytes shown, {sum(dropped)} dropped in {len(dropped)} gaps")
    assert dropped and all(count > 0 for count in dropped)
    assert printed + sum(dropped) == total


def test_a_bad_output_setting_names_its_key_path(tmp_path):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "a"
        argv = ["true"]
        output = "spill"
        output_window = 12
        """,
    )
    result = subprocess.run([*COMMAND, "run", tree], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "child[0].output: output must be 'block'" in result.stderr
    assert "child[0].output_window: output_window must be an int number of bytes" in result.stderr


# -- the writer itself, on a real pipe and a real thread ------------------------------------------


def test_lifecycle_lines_are_bounded_and_the_drop_is_counted():
    reader, writer = os.pipe()
    output = Output(writer, report=lambda *event: None, line_capacity=4096).start()
    try:
        for number in range(20000):  # far more than the pipe (64 KiB) and the buffer (4 KiB) hold
            output.line(f"event {number:05d}")
            assert output.line_bytes <= 4096 + 100
        received = b""
        os.set_blocking(reader, False)
        last_sent = False
        ends = time.monotonic() + TIMEOUT
        while not received.endswith(b"last\n") and time.monotonic() < ends:
            if not last_sent and not output.items:  # room again: the next line brings the note
                output.line("last")
                last_sent = True
            try:
                received += os.read(reader, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
    finally:
        output.close()
        os.close(reader)
        os.close(writer)
    shown = re.findall(rb"^event \d+$", received, re.MULTILINE)
    notes = [int(n) for n in re.findall(rb"^linx-otp: (\d+) event lines dropped", received, re.MULTILINE)]
    assert notes and all(count > 0 for count in notes)  # one note per episode of dropping
    assert len(shown) + sum(notes) == 20000


def test_a_window_is_given_back_only_once_its_output_is_written():
    reader, writer = os.pipe()
    credit: list[int] = []
    window = OutputWindow(4096, send=lambda frame: credit.append(len(frame)) or True)
    output = Output(writer, report=lambda *event: None).start()
    try:
        chunk = b"y" * 1023 + b"\n"
        for _ in range(80):  # 80 KiB: more than the pipe holds, so the writer stalls
            output.captured("w", window.claim(("linx_process", "stdout", chunk)), None)
        assert wait_until(lambda: window.outstanding < 80 * 1024)  # the pipe took some...
        time.sleep(0.3)
        stalled = window.outstanding
        assert stalled > 0  # ...and what it could not take still holds its window
        received = 0
        os.set_blocking(reader, False)
        while window.outstanding:
            try:
                received += len(os.read(reader, 1 << 16))
            except BlockingIOError:
                time.sleep(0.01)
        assert received > 0 and credit
    finally:
        output.close()
        os.close(reader)
        os.close(writer)


def test_close_gives_up_on_a_console_nobody_reads_and_gives_every_window_back():
    reader, writer = os.pipe()
    window = OutputWindow(protocol.OUTPUT_WINDOW_MIN, send=lambda frame: True)
    output = Output(writer, report=lambda *event: None).start()
    try:
        for _ in range(200):
            output.captured("w", window.claim(("linx_process", "stdout", b"z" * 1023 + b"\n")), None)
        assert wait_until(lambda: not output.items or window.outstanding > 0)
        began = time.monotonic()
        output.close(timeout=0.3)
        took = time.monotonic() - began
        assert not output.thread.is_alive() and took < 1.0
        assert window.outstanding == 0
    finally:
        os.close(reader)
        os.close(writer)


def test_a_batch_bigger_than_a_log_s_room_is_split_between_lines_across_rotations(tmp_path):
    """No log file passes max_bytes: a batch of lines that would is split at line ends, the rest
    going to the file after the rotation; a line longer than max_bytes fills a file alone."""
    log = LogFile(path=str(tmp_path / "child.log"), max_bytes=200, keep=20)
    reader, writer = os.pipe()
    output = Output(writer, report=lambda *event: None).start()
    lines = [f"line {number}".encode() for number in range(60)] + [b"x" * 500, b"after the long one"]
    try:
        output.captured("child", ("linx_process", "stdout", b"".join(line + b"\n" for line in lines)), log)
        output.end_of("child")
        newest = Path(log.path)
        assert wait_until(lambda: newest.exists() and b"after the long one" in newest.read_bytes(), TIMEOUT)
    finally:
        output.close()
        os.close(reader)
        os.close(writer)
    files = [tmp_path / f"child.log.{n}" for n in range(20, 0, -1) if (tmp_path / f"child.log.{n}").exists()]
    files.append(tmp_path / "child.log")
    for path in files:  # within max_bytes, or one line alone
        contents = path.read_bytes()
        assert len(contents) <= 200 or contents.count(b"\n") == 1, (path.name, len(contents))
    written = "".join(logged_text(path) for path in files)
    assert written == "".join(line.decode() + "\n" for line in lines)  # every line, in order, each whole


def test_a_log_renamed_or_deleted_from_outside_is_opened_anew(tmp_path):
    """logrotate without copytruncate, ``mv``, ``rm -r`` of the log's directory: the next write
    goes to a new file at the path, not on into the renamed or deleted one (which grew past
    max_bytes, or took disk space nobody could see)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    log = LogFile(path=str(directory / "child.log"), max_bytes=1 << 20, keep=2)
    reports: list[tuple] = []
    reader, writer = os.pipe()
    output = Output(writer, report=lambda *event: reports.append(event)).start()
    path = Path(log.path)

    def write(line: str) -> None:
        output.captured("child", ("linx_process", "stdout", f"{line}\n".encode()), log)

    try:
        write("first")
        assert wait_until(lambda: path.exists() and "first" in logged_text(path), TIMEOUT)
        path.rename(directory / "child.log.rotated-by-logrotate")
        write("second")
        assert wait_until(lambda: path.exists() and "second" in logged_text(path), TIMEOUT)
        assert "second" not in logged_text(directory / "child.log.rotated-by-logrotate")
        assert "first" not in logged_text(path)

        (directory / "child.log.rotated-by-logrotate").unlink()
        path.unlink()
        directory.rmdir()
        write("into a missing directory")
        assert wait_until(lambda: [event for event in reports if event[1] == "log_failed"], TIMEOUT), reports
        directory.mkdir()
        assert wait_until(lambda: write("third") or (path.exists() and "third" in logged_text(path)), TIMEOUT)
        assert [event[1] for event in reports] == ["log_failed", "log_resumed"], reports
        held = [_link(fd) for fd in os.listdir("/proc/self/fd")]
        assert [link for link in held if link.startswith(str(directory))] == [str(path)]  # nothing deleted held open
    finally:
        output.close()
        os.close(reader)
        os.close(writer)


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
