"""The daemon's console and log writing, done by one writer thread behind a bounded buffer.

The event loop hands over lifecycle lines and captured output and never waits: a stalled
console (a pipe nobody reads, a terminal on Ctrl-S) fills the buffer, after which new items
are dropped and counted, never queued without bound, and signals and control requests go on
being served. Captured output is split into lines prefixed with the child's id (``|``
stdout, ``!`` stderr), or appended to the child's log file.

Every I/O error is handled here, where it happens, and reported once through ``report`` (an
event for the loop): a console that is gone (EPIPE) is dropped for good; a log that fails
(a missing directory, EACCES, ENOSPC) is reported once, its output is dropped and counted,
and writing resumes when the file works again. A log file is opened without following a
symlink, and refused unless it is a regular file of ours with one link; it is created 0640.

This module never blocks its caller and never raises an I/O error to it.

>>> import os
>>> reader, writer = os.pipe()
>>> output = Output(writer, report=print)
>>> output.line("hello")
>>> output.close()
>>> os.read(reader, 100)
b'hello\\n'
>>> os.close(reader), os.close(writer)
(None, None)
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CAPACITY_BYTES = 4 << 20
LOG_MODE = 0o640
LOG_RETRY_SECONDS = 2.0
STREAMS = ("stdout", "stderr", "pty_out")

Report = Callable[[str, str, str], None]
"""``report(child_id, kind, detail)``: one event for the daemon's loop (called from the writer)."""


@dataclass(frozen=True)
class _Line:
    text: str


@dataclass(frozen=True)
class _Captured:
    child_id: str
    stream: str
    data: bytes
    log: str | None


@dataclass(frozen=True)
class _EndOf:
    child_id: str


class LogRefused(OSError):
    """A log path that is not safe to append to (someone else's file, a hard link, not a file)."""


def open_log(path: str) -> int:
    """Open ``path`` for appending, creating it 0640: never through a symlink, and only a
    regular file owned by this uid with exactly one link. Raises ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, LOG_MODE)
    try:
        status = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(status.st_mode):
            problem = "is not a regular file"
        elif status.st_uid != os.geteuid():
            problem = f"belongs to uid {status.st_uid}, not to this daemon's uid {os.geteuid()}"
        elif status.st_nlink != 1:
            problem = f"has {status.st_nlink} hard links (a log must have exactly one)"
        if problem is not None:
            raise LogRefused(errno.EPERM, f"refusing to write to it: it {problem}", path)
        if stat.S_IMODE(status.st_mode) & ~LOG_MODE:
            os.fchmod(fd, LOG_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Log:
    """One child's log file: opened lazily, reported once per failure, resumed when it works."""

    def __init__(self, child_id: str, path: str, report: Report) -> None:
        self.child_id, self.path, self.report = child_id, path, report
        self.fd = -1
        self.failing = False
        self.lost_bytes = 0
        self.next_attempt = 0.0

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            if time.monotonic() < self.next_attempt:
                self.lost_bytes += len(data)
                return
            try:
                self.fd = open_log(self.path)
            except OSError as error:
                self.fail(error, data)
                return
        try:
            _write_all(self.fd, data)
        except OSError as error:
            self.fail(error, data)
            return
        if self.failing:
            self.failing = False
            self.report(self.child_id, "log_resumed", f"{self.path}: {self.lost_bytes} bytes of output were lost")
            self.lost_bytes = 0

    def fail(self, error: OSError, data: bytes) -> None:
        self.lost_bytes += len(data)
        self.next_attempt = time.monotonic() + LOG_RETRY_SECONDS
        if self.fd >= 0 and isinstance(error, LogRefused):
            self.close()
        if not self.failing:
            self.failing = True
            self.report(
                self.child_id,
                "log_failed",
                f"{self.path}: {error.strerror or error}; its output is dropped until the log works again",
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue


class Output:
    """Console and logs, written by the thread ``linx-otp-output``."""

    def __init__(self, console_fd: int, report: Report, capacity: int = CAPACITY_BYTES) -> None:
        self.console_fd = console_fd
        self.report = report
        self.capacity = capacity
        self.items: deque = deque()
        self.queued_bytes = 0
        self.dropped_lines = 0
        self.dropped_output: dict[str, int] = {}
        self.condition = threading.Condition()
        self.closing = False
        self.console_lost = False
        self.console_failing = False
        self.partial: dict[tuple[str, str], bytes] = {}
        self.logs: dict[str, _Log] = {}
        self.thread = threading.Thread(target=self._write_forever, name="linx-otp-output", daemon=True)
        self.thread.start()

    # -- the caller's side: never blocks ---------------------------------------------------------

    def line(self, text: str) -> None:
        """A lifecycle line for the console; dropped (and counted) if the buffer is full."""
        if not self._put(_Line(text), len(text) + 1):
            self.dropped_lines += 1

    def captured(self, child_id: str, stream: str, data: bytes, log: str | None) -> None:
        """Output a child produced: to its log, or to the console with its id as prefix."""
        if not self._put(_Captured(child_id, stream, data, log), len(data)):
            self.dropped_output[child_id] = self.dropped_output.get(child_id, 0) + len(data)

    def end_of(self, child_id: str) -> None:
        """At an incarnation's outcome: print what it left without a final newline."""
        self._put(_EndOf(child_id), 0, always=True)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the writer."""
        with self.condition:
            self.closing = True
            self.condition.notify()
        self.thread.join(timeout)

    def _put(self, item: object, size: int, always: bool = False) -> bool:
        with self.condition:
            if self.closing or (not always and self.queued_bytes + size > self.capacity):
                return False
            notes = self._drop_notes()
            for note in notes:
                self.items.append(note)
            self.items.append((item, size))
            self.queued_bytes += size
            self.condition.notify()
        return True

    def _drop_notes(self) -> list[tuple[_Line, int]]:
        """Once there is room again, a line saying what was dropped while there was none."""
        notes = []
        if self.dropped_lines:
            notes.append(
                (_Line(f"linx-otp: {self.dropped_lines} event lines dropped: the console was not keeping up"), 0)
            )
            self.dropped_lines = 0
        for child_id, count in self.dropped_output.items():
            notes.append(
                (_Line(f"linx-otp: {count} bytes of {child_id}'s output dropped: the console was not keeping up"), 0)
            )
        self.dropped_output.clear()
        return notes

    # -- the writer thread -------------------------------------------------------------------------

    def _write_forever(self) -> None:
        while True:
            with self.condition:
                while not self.items and not self.closing:
                    self.condition.wait()
                if not self.items:
                    break
                item, size = self.items.popleft()
            self._write(item)
            with self.condition:
                self.queued_bytes -= size
        for log in self.logs.values():
            log.close()

    def _write(self, item: object) -> None:
        match item:
            case _Line(text):
                self._console(text + "\n")
            case _Captured(child_id, stream, data, log) if log is not None:
                self._log(child_id, log).write(data)
            case _Captured(child_id, stream, data, None):
                key = (child_id, stream)
                complete, _, rest = (self.partial.pop(key, b"") + data).rpartition(b"\n")
                if rest:
                    self.partial[key] = rest
                if complete or data.endswith(b"\n"):
                    self._print(child_id, stream, complete)
            case _EndOf(child_id):
                for stream in STREAMS:
                    rest = self.partial.pop((child_id, stream), b"")
                    if rest:
                        self._print(child_id, stream, rest)

    def _log(self, child_id: str, path: str) -> _Log:
        log = self.logs.get(child_id)
        if log is None or log.path != path:
            if log is not None:
                log.close()
            log = self.logs[child_id] = _Log(child_id, path, self.report)
        return log

    def _print(self, child_id: str, stream: str, text: bytes) -> None:
        marker = "!" if stream == "stderr" else "|"
        lines = text.decode(errors="replace").replace("\r\n", "\n").split("\n")
        self._console("".join(f"{child_id:>12} {marker} {line}\n" for line in lines))

    def _console(self, text: str) -> None:
        if self.console_lost:
            return
        try:
            _write_all(self.console_fd, text.encode(errors="replace"))
        except OSError as error:
            if error.errno in (errno.EPIPE, errno.EBADF):
                self.console_lost = True
                self.report("daemon", "console_lost", f"{error.strerror}: console output is dropped from now on")
            elif not self.console_failing:
                self.console_failing = True
                self.report("daemon", "console_failed", f"{error.strerror}: console output is dropped while it lasts")
            return
        self.console_failing = False
