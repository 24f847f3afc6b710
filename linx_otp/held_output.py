"""Held capture pipes: a session's stdout or stderr read by its owner's own thread.

A captured stream normally flows pipe → agent → socket → I/O thread → owner, and on this
machine every design in which the owner is not the thread that reads the pipe loses half of
``subprocess.Popen``'s throughput or more (README, "Benchmarks": the hand-over between threads).
So when the owner is a plain ``Mailbox``, this process makes the capture pipe itself, the agent
gives its write end to the workload, and the mailbox reads the read end in ``receive`` and
``flush``, in the thread that takes the output (``Mailbox.hold``). The agent keeps a copy of
the read end and relays the pipe as usual once told ``relay`` (another owner, or one that
stopped reading) or once nobody else will read it (its socket's hang-up, ``stop``).

The session moves a pipe through ``waiting`` (before ``running``: output may not overtake it),
``held`` (its mailbox reads it), ``relayed`` (the agent does), and ``closed``. At the terminal
event what the pipe holds goes ahead of the outcome, as the agent does for the pipes it relays:
a held pipe stays ``draining`` (``Mailbox.finish``) until its mailbox has queued that much,
within the window as the owner takes output, and the outcome waits until then; a relayed one
is read here (``drain``: the agent has exited). This module reads and never blocks; it never
sends to the agent.

>>> import os
>>> from linx_otp import Mailbox
>>> (pipe,) = open_held_pipes(("stdout",), window_size=4096, holder=Mailbox())
>>> os.write(pipe.write_end, b"hello"); pipe.close_write_end()
5
>>> pipe.read(pipe.read_size())
b'hello'
>>> pipe.close()
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import termios
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import protocol

if TYPE_CHECKING:
    from .mailbox import Mailbox

log = logging.getLogger(__name__)

READ_SIZE = 120 * 1024
"""The most one read, and one event, takes: as large as it may be, since each event costs the
owner a few microseconds of Python, and no larger, since a ``bytes`` object past glibc's mmap
threshold (128 KiB, the object's header included) is a fresh mapping, faulted in a page at a
time and unmapped again when the owner drops it (248 KiB events took 6,900-8,800 page faults a
200 MiB capture where 120 KiB ones took a handful, and lost a fifth: README, "Benchmarks")."""
STREAMS = {name: number for number, name in protocol.OUTPUT_STREAMS.items() if number != protocol.OUTPUT_STREAM_PTY}
"""The streams a pipe may hold, by name, and their numbers (which are also their fds)."""

WAITING, HELD, DRAINING, RELAYED, CLOSED = "waiting", "held", "draining", "relayed", "closed"


class HeldWindow:
    """The output a session's held pipes have put in their mailbox and nobody has taken yet, in
    bytes, against the session's window: a pipe is read only while there is room, so the
    workload blocks in ``write(2)`` once a window is queued, as on a full pipe. Changed only
    with the holding mailbox's lock held (it reads and takes), so it needs no lock of its own:
    a claim per event, with a lock, cost a third of the throughput (README, "Benchmarks")."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.room = size
        """What may still be read: the window less what is queued and not taken (an attribute,
        not computed: it is looked at on every read and every take)."""

    @property
    def queued(self) -> int:
        return self.size - self.room


def open_held_pipes(streams: Sequence[str], window_size: int, holder: Mailbox) -> tuple[HeldPipe, ...]:
    """A pipe for each of ``streams`` (``"stdout"``, ``"stderr"``), to be read by ``holder``,
    sharing one window of ``window_size`` bytes; raises ``OSError`` (none is left open), and
    then the agent relays the streams."""
    window = HeldWindow(window_size)
    pipes: list[HeldPipe] = []
    try:
        for stream in streams:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            try:
                os.set_blocking(read_end, False)
                pipe = HeldPipe(stream, read_end, write_end, window, holder)
            except BaseException:
                os.close(read_end)
                os.close(write_end)
                raise
            pipes.append(pipe)
            deepen(read_end, window_size)
    except BaseException:
        for pipe in pipes:
            pipe.close()
        raise
    return tuple(pipes)


DEPTH_MAX = 16 * 1024 * 1024
"""The deepest pipe made (``depth``): a larger window is relayed by the agent."""


def depth(window_size: int) -> int:
    """How deep a held pipe must be: a window, and at least a relayed pipe's depth. A held
    workload's output waits in the pipe until its owner reads, so the pipe is its window: an
    owner that waits for the outcome before it reads (``wait``, then ``flush``) gets a window
    through before the workload blocks (a relayed one also gets the agent's pipe, 256 KiB, on
    top: a window past ``pipe-max-size`` less that could be held is relayed instead)."""
    return max(window_size, protocol.OUTPUT_CHUNK)


def deepen(read_end: int, window_size: int) -> None:
    """Make the pipe ``depth(window_size)`` deep; raises ``OSError`` if the kernel will not (past
    ``pipe-max-size`` only a privileged user may go; it rounds up to a power of two pages)."""
    needed = depth(window_size)
    if needed > DEPTH_MAX:
        raise OSError(errno.EFBIG, f"a held pipe would be {needed} bytes deep; at most {DEPTH_MAX}")
    if fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, needed) < needed:
        raise OSError(errno.EFBIG, f"the pipe could not be made {needed} bytes deep")


class HeldPipe:
    """One held capture pipe: its read end, its state, and the window it shares with its
    session's other held pipe (the agent's window counts only what the agent sends)."""

    def __init__(self, stream: str, read_end: int, write_end: int, window: HeldWindow, holder: Mailbox) -> None:
        self.stream = stream
        self.stream_number = STREAMS[stream]
        self.read_end = read_end
        self._reader = io.BufferedReader(io.FileIO(read_end, closefd=False), buffer_size=1)
        """Reads in C until a read's worth or the pipe is empty (``read``); it keeps nothing back."""
        self.write_end = write_end
        """Ours until the request that carries it has been sent; -1 after."""
        self.window = window
        self.holder = holder
        """The mailbox that reads it while it is ``held``: the session's first owner."""
        self.state = WAITING
        self.ended = False
        """End-of-file: every writer has closed it."""
        self.left: int | None = None
        """Draining: the bytes still to be read of what it held at the workload's end."""
        self.on_drained: Callable[[HeldPipe], None] | None = None
        """Draining: called (with the holder's lock held) once ``left`` is read."""

    def queued_in_pipe(self) -> int:
        """What the pipe holds now (0 if that cannot be told)."""
        if self.read_end < 0:
            return 0
        try:
            return int.from_bytes(fcntl.ioctl(self.read_end, termios.FIONREAD, b"\0\0\0\0"), "little")
        except OSError:
            return 0

    def read_size(self) -> int:
        """How much the next read may take: a read's worth, within the window's room and, draining,
        what is left; 0 when it is not worth polling (closed, at end-of-file, no room, nothing left)."""
        if self.read_end < 0 or self.ended:
            return 0
        size = min(READ_SIZE, self.window.room)
        return size if self.left is None else min(size, self.left)

    def drain(self) -> list[bytes]:
        """Everything the pipe holds at this moment, window or not, in chunks: the workload has
        ended (its descendants may write on; that is not waited for, as the agent does not)."""
        chunks: list[bytes] = []
        queued = self.queued_in_pipe()
        while queued > 0 and (data := self.read(min(READ_SIZE, queued))):
            queued -= len(data)
            chunks.append(data)
        return chunks

    def read(self, size: int) -> bytes:
        """At most ``size`` bytes: what the pipe holds, and what the workload writes while they
        are read, up to ``size``; empty if there is nothing now (or at end-of-file). The holder
        queues it and counts it in at once, its lock held: read ahead into a list, an exception
        from a signal handler in between would lose what was read.

        The reads are gathered in C, by a ``BufferedReader`` one byte "buffered", so that it
        never keeps bytes back: a workload writing 8 KiB at a time then costs one event per
        several writes, not one per write (a Python loop of ``os.read`` costs a call per write;
        README, "Benchmarks")."""
        try:
            data = self._reader.read(size)
        except OSError as error:
            log.error("reading a captured %s: %s; the rest of it is lost", self.stream, error)
            self.ended = True
            return b""
        if data is None:  # the pipe is empty
            return b""
        if not data:
            self.ended = True
        return data

    def close_write_end(self) -> None:
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1

    def close(self) -> None:
        """Close both ends we hold (idempotent)."""
        self.close_write_end()
        if self.read_end >= 0:
            self._reader.close()  # a read after this raises, rather than read whatever reuses the fd
            os.close(self.read_end)
            self.read_end = -1
        self.state = CLOSED


__all__ = ["CLOSED", "DRAINING", "HELD", "READ_SIZE", "RELAYED", "WAITING", "HeldPipe", "HeldWindow", "open_held_pipes"]
