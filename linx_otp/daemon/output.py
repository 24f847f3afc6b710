"""The daemon's console and log writing, done by one writer thread off the event loop.

Captured output comes straight from each child's owner, as the session's ``OutputEvent``; the
writer gives its window back (``linx_otp.consumed``) only once the chunk is written. So a
console or log that can't keep up slows the child through its session's window (or makes it
drop, in ``output = "drop"`` mode), and what waits here is bounded by the windows, never by
the child's output. Lifecycle lines have a bounded buffer of their own: when it is full new
lines are dropped and counted, and a line says how many once there is room. The event loop
never waits on either: signals and control requests are served ahead of output.

Captured output is split into lines prefixed with the child's id (``|`` stdout, ``!``
stderr), or appended to the child's log file. The writer writes the console in pieces of at
most ``PIPE_BUF`` once ``poll`` says there is room, so once the tree is stopping (``hurry``,
``close``) it can give up on a console nobody reads instead of hanging in ``write(2)``: the
children's last output then never holds up their stop.

Every I/O error is handled here, where it happens, and reported once through ``report`` (an
event for the loop): a console that is gone (EPIPE) is dropped for good; a log that fails
(a missing directory, EACCES, ENOSPC) is reported once, its output is dropped and counted,
and writing resumes when the file works again. A log file is opened only in a directory no
other user can redirect (``trust.py``), without following a symlink, without waiting (a FIFO
someone planted there is refused, not waited on), and kept only if it is a regular file of ours
with one link; it is created 0640.

This module never blocks its caller and never raises an I/O error to it.

>>> import os
>>> reader, writer = os.pipe()
>>> output = Output(writer, report=print).start()
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
import select
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..flow import consumed
from ..tty import write_all
from .ring import Rings
from .state import iso_time
from .tree import LogFile
from .trust import why_untrusted

LINE_CAPACITY_BYTES = 4 << 20
"""Lifecycle lines waiting for the console; past this, new lines are dropped and counted."""
LOG_MODE = 0o640
LOG_RETRY_SECONDS = 2.0
POLL_SECONDS = 0.1
"""How often a writer waiting for room on the console looks whether ``close`` gave up on it."""
CLOSE_SECONDS = 1.0
HURRY_SECONDS = 0.3
"""Once the tree is stopping, how long the writer waits for room on the console."""
LONGEST_LINE = 64 << 10
"""A console line longer than this is shown in pieces of this size."""
LINES_AT_ONCE = 4096
"""Lines formatted together: a chunk of 262,144 short lines is formatted in pieces, so that the
strings it makes at once stay within a few MiB."""
STOPPING_LINES_SHOWN = 1000
"""Once the tree is stopping, a chunk of console output with more lines than this is counted,
not shown: a flood's last windows (up to 262,144 lines in a chunk) would otherwise hold up each
child's outcome, which waits for its window, for seconds while they are formatted."""
STREAMS = ("stdout", "stderr", "pty_out")

Report = Callable[[str, str, str], None]
"""``report(child_id, kind, detail)``: one event for the daemon's loop (called from the writer)."""


@dataclass(frozen=True)
class _Line:
    text: str


@dataclass(frozen=True)
class _Captured:
    child_id: str
    event: tuple
    """``("linx_process", stream, data)``: the session's ``OutputEvent``, holding its window."""
    log: LogFile | None


@dataclass(frozen=True)
class _EndOf:
    child_id: str


@dataclass(frozen=True)
class _Forget:
    child_id: str


class LogRefused(OSError):
    """A log path that is not safe to append to (someone else's file, a hard link, not a file)."""


def open_log(path: str) -> int:
    """Open ``path`` for appending, creating it 0640: only in a directory no other user can
    redirect, never through a symlink, never waiting (for a FIFO's reader), and only a regular
    file owned by this uid with exactly one link. Raises ``OSError``."""
    untrusted = why_untrusted(os.path.dirname(os.path.abspath(path)))
    if untrusted is not None:
        raise LogRefused(errno.EPERM, f"refusing to write there: {untrusted}, so another user could redirect it", path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    fd = os.open(path, flags, LOG_MODE)
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
    """One child's log file: opened lazily, rotated by renaming once it would pass
    ``max_bytes`` (``x.log`` → ``x.log.1`` → … → ``x.log.KEEP``, the oldest dropped), reported
    once per failure, resumed when it works."""

    def __init__(self, child_id: str, spec: LogFile, report: Report) -> None:
        self.child_id, self.spec, self.report = child_id, spec, report
        self.path = spec.path
        self.fd = -1
        self.size = 0
        self.failing = False
        self.lost_bytes = 0
        self.next_attempt = 0.0
        self.rotation_failing = False
        self.next_rotation = 0.0

    def write(self, data: bytes) -> None:
        """Append whole lines (``data`` ends with a newline); a batch that would pass
        ``max_bytes`` is split between lines across rotations, so no file passes it unless one
        line alone does (that line fills a file of its own) or rotation is failing."""
        try:
            self._close_if_replaced()
            while data:
                if self.fd >= 0 and self.size and self.size + len(data) > self.spec.max_bytes:
                    if time.monotonic() >= self.next_rotation:
                        self.rotate()
                if self.fd < 0:
                    if time.monotonic() < self.next_attempt:
                        self.lost_bytes += len(data)
                        return
                    self.fd = open_log(self.path)
                    self.size = os.fstat(self.fd).st_size
                piece = self._piece_that_fits(data)
                write_all(self.fd, piece)
                self.size += len(piece)
                data = data[len(piece) :]
        except OSError as error:
            self.fail(error, data)
            return
        if self.failing:
            self.failing = False
            self.report(self.child_id, "log_resumed", f"{self.path}: {self.lost_bytes} bytes of output were lost")
            self.lost_bytes = 0

    def _close_if_replaced(self) -> None:
        """The path no longer names the open file (renamed or deleted from outside: logrotate
        without ``copytruncate``, ``mv``, ``rm -r`` of its directory): close it, so the next
        write opens the path anew instead of filling a file nobody can see, as Python's
        ``WatchedFileHandler`` does."""
        if self.fd < 0:
            return
        try:
            named = os.lstat(self.path)
        except FileNotFoundError:
            self.close()
            return
        opened = os.fstat(self.fd)
        if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            self.close()

    def _piece_that_fits(self, data: bytes) -> bytes:
        """The lines at the start of ``data`` that fit in the open file: all of it while
        rotation fails (it grows instead), at least one line into an empty file."""
        if self.size + len(data) <= self.spec.max_bytes or self.rotation_failing:
            return data
        end = data.rfind(b"\n", 0, self.spec.max_bytes - self.size) + 1
        if end == 0 and self.size == 0:  # one line longer than max_bytes
            end = data.find(b"\n") + 1 or len(data)
        return data[:end]

    def rotate(self) -> None:
        """Rename the files one place down, as logrotate does; the next write opens a new one.
        A rotation that fails (something in the way of a rename) is reported once and tried
        again later; meanwhile the file grows past ``max_bytes`` rather than lose output."""
        try:
            if self.spec.keep == 0:
                os.unlink(self.path)
            else:
                for number in range(self.spec.keep - 1, 0, -1):
                    try:
                        os.rename(f"{self.path}.{number}", f"{self.path}.{number + 1}")
                    except FileNotFoundError:
                        pass
                os.rename(self.path, f"{self.path}.1")
        except OSError as error:
            self.next_rotation = time.monotonic() + LOG_RETRY_SECONDS
            if not self.rotation_failing:
                self.rotation_failing = True
                step = error.filename if error.filename2 is None else f"{error.filename} → {error.filename2}"
                self.report(
                    self.child_id,
                    "log_rotation_failed",
                    f"{step}: {error.strerror}; {self.path} grows past max_bytes until it can be rotated",
                )
            return
        if self.rotation_failing:
            self.rotation_failing = False
            self.report(self.child_id, "log_rotated", f"{self.path}: rotation works again")
        self.close()

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


class _ConsoleAbandoned(Exception):
    """Past the deadline (``hurry``, ``close``), the console had no room: this is not written."""


class Output:
    """Console and logs, written by the thread ``linx-otp-output``."""

    def __init__(
        self, console_fd: int, report: Report, line_capacity: int = LINE_CAPACITY_BYTES, rings: Rings | None = None
    ) -> None:
        self.console_fd = console_fd
        self.rings = rings if rings is not None else Rings()
        """The last lines of each child's output, for ``logs``."""
        self.report = report
        self.line_capacity = line_capacity
        self.items: deque = deque()
        self.line_bytes = 0
        """Bytes of lifecycle lines queued (captured output is bounded by the sessions' windows)."""
        self.dropped_lines = 0
        self.condition = threading.Condition()
        self.closing = False
        self.deadline = float("inf")
        self.stopping = False
        self.unshown: dict[str, int] = {}
        """Bytes of a child's console output not shown because the tree was stopping."""
        self.console_lost = False
        self.console_failing = False
        self.console_given_up = False
        self.partial: dict[tuple[str, str], bytes] = {}
        self.logs: dict[str, _Log] = {}
        self.log_of: dict[str, LogFile | None] = {}
        self.thread = threading.Thread(target=self._write_forever, name="linx-otp-output", daemon=True)

    def start(self) -> Output:
        """Start the writer thread; returns ``self``."""
        self.thread.start()
        return self

    # -- the callers' side: never blocks ---------------------------------------------------------

    def line(self, text: str) -> None:
        """A lifecycle line for the console; dropped (and counted) if the line buffer is full."""
        size = len(text) + 1
        with self.condition:
            if self.closing or self.line_bytes + size > self.line_capacity:
                self.dropped_lines += 1
                return
            if self.dropped_lines:
                note = f"linx-otp: {self.dropped_lines} event lines dropped: the console was not keeping up"
                self.dropped_lines = 0
                self._append(_Line(note), len(note) + 1)
            self._append(_Line(text), size)

    def captured(self, child_id: str, event: tuple, log: LogFile | None) -> None:
        """Output a child produced (its session's output event): to its log, or to the console
        with its id as prefix. The event's window is given back once it is written."""
        with self.condition:
            if not self.closing:
                self._append(_Captured(child_id, event, log), 0)
                return
        consumed(event)  # the daemon is going: nobody will write it

    def end_of(self, child_id: str) -> None:
        """At an incarnation's outcome: print what it left without a final newline."""
        with self.condition:
            if not self.closing:
                self._append(_EndOf(child_id), 0)

    def forget(self, child_id: str) -> None:
        """A reload removed the child: once what it wrote before is written, drop what is kept
        for it (its last lines for ``logs``, its log file's state)."""
        with self.condition:
            if not self.closing:
                self._append(_Forget(child_id), 0)

    def hurry(self, seconds: float = HURRY_SECONDS) -> None:
        """The tree is stopping: from ``seconds`` from now, a console without room is not waited
        for; its output is dropped, and the windows it held are given back, so a child's last
        output never holds up its stop."""
        with self.condition:
            self.deadline = min(self.deadline, time.monotonic() + seconds)
            self.stopping = True

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Write what is queued for at most ``timeout`` seconds (a console nobody reads is given
        up on then), then stop the writer."""
        self.hurry(timeout)
        with self.condition:
            self.closing = True
            self.condition.notify()
        if self.thread.is_alive():
            self.thread.join(timeout + POLL_SECONDS * 5)

    def _append(self, item: object, line_size: int) -> None:
        self.items.append((item, line_size))
        self.line_bytes += line_size
        self.condition.notify()

    # -- the writer thread -------------------------------------------------------------------------

    def _write_forever(self) -> None:
        while True:
            with self.condition:
                while not self.items and not self.closing:
                    self.condition.wait()
                if not self.items:
                    break
                item, line_size = self.items.popleft()
            try:
                self._write(item)
            finally:
                with self.condition:
                    self.line_bytes -= line_size
        for log in self.logs.values():
            log.close()

    def _give_up_on_console(self) -> None:
        """Past the deadline with no room: drop the captured output still queued, giving every
        window back (the children must not wait on a daemon that is going)."""
        self.console_given_up = True
        with self.condition:
            for_console = [entry for entry in self.items if isinstance(entry[0], _Captured) and entry[0].log is None]
            left = [entry for entry in self.items if entry not in for_console]
            dropped = [entry[0] for entry in for_console]
            self.items = deque(left)
        for item in dropped:
            consumed(item.event)

    def _write(self, item: object) -> None:
        match item:
            case _Line(text):
                self._console(text + "\n")
            case _Captured(child_id, event, log):
                try:
                    self._write_captured(child_id, event[1], event[-1], log)
                finally:
                    consumed(event)
            case _Forget(child_id):
                self.rings.forget(child_id)
                kept_log = self.logs.pop(child_id, None)
                if kept_log is not None:
                    kept_log.close()
                self.log_of.pop(child_id, None)
            case _EndOf(child_id):
                for stream in STREAMS:
                    rest = self.partial.pop((child_id, stream), None)
                    if rest is not None:
                        self._lines(child_id, stream, [rest], self.log_of.get(child_id))
                if child_id in self.logs:  # reopened by the next incarnation's output: a child removed
                    self.logs[child_id].close()  # by a reload, or never restarted, holds no fd
                unshown = self.unshown.pop(child_id, 0)
                if unshown:
                    self._console(f"{iso_time(time.time())} {child_id:>12} | ({unshown} bytes not shown: stopping)\n")

    def _write_captured(self, child_id: str, stream: str, data: bytes, log: LogFile | None) -> None:
        """Complete lines go out now; the rest waits for its newline (or the outcome)."""
        self.log_of[child_id] = log
        key = (child_id, stream)
        if log is None and self.stopping and data.count(b"\n") > STOPPING_LINES_SHOWN:
            self.unshown[child_id] = self.unshown.get(child_id, 0) + len(data) + len(self.partial.pop(key, b""))
            return
        complete, newline, rest = (self.partial.pop(key, b"") + data).rpartition(b"\n")
        if len(rest) > LONGEST_LINE:  # a line that never ends is shown in pieces, not held without bound
            complete, newline, rest = complete + newline + rest, b"\n", b""
        if rest:
            self.partial[key] = rest
        if newline:
            lines = complete.split(b"\n")
            for start in range(0, len(lines), LINES_AT_ONCE):  # what formatting holds at once stays small
                self._lines(child_id, stream, lines[start : start + LINES_AT_ONCE], log)

    def _lines(self, child_id: str, stream: str, lines: list[bytes], log: LogFile | None) -> None:
        """Each line with the time (ISO 8601, local) into the ring, and to the log or the console."""
        stamp = iso_time(time.time())
        marker = "!" if stream == "stderr" else "|"
        texts = [line.decode(errors="replace").removesuffix("\r") for line in lines]
        self.rings.add(child_id, stamp, stream, texts)
        if log is not None:
            prefix = f"{stamp} {marker} ".encode()
            self._log(child_id, log).write(b"".join(prefix + line + b"\n" for line in lines))
        else:
            self._console("".join(f"{stamp} {child_id:>12} {marker} {text}\n" for text in texts))

    def _log(self, child_id: str, spec: LogFile) -> _Log:
        log = self.logs.get(child_id)
        if log is None or log.spec != spec:
            if log is not None:
                log.close()
            log = self.logs[child_id] = _Log(child_id, spec, self.report)
        return log

    def _console(self, text: str) -> None:
        if self.console_lost:
            return
        try:
            self._write_console(text.encode(errors="replace"))
        except _ConsoleAbandoned:
            if not self.console_given_up:
                self._give_up_on_console()
            return
        except OSError as error:
            if error.errno in (errno.EPIPE, errno.EBADF):
                self.console_lost = True
                self.report("daemon", "console_lost", f"{error.strerror}: console output is dropped from now on")
            elif not self.console_failing:
                self.console_failing = True
                self.report("daemon", "console_failed", f"{error.strerror}: console output is dropped while it lasts")
            return
        self.console_failing = False

    def _write_console(self, data: bytes) -> None:
        """All of ``data``, in pieces the console has room for; raises ``_ConsoleAbandoned``
        if ``close`` gives up first."""
        waiter = select.poll()
        waiter.register(self.console_fd, select.POLLOUT)
        view = memoryview(data)
        while view:
            if not waiter.poll(0 if self.console_given_up else POLL_SECONDS * 1000):
                if self.console_given_up or time.monotonic() > self.deadline:
                    raise _ConsoleAbandoned
                continue
            try:
                view = view[os.write(self.console_fd, view[: select.PIPE_BUF]) :]
            except InterruptedError:
                continue
