"""Mailboxes: where lifecycle events land when the owner is not an actor.

``receive`` and ``flush`` work on the calling thread's own mailbox, like ``receive`` and
``flush()`` in iex; ``Mailbox()`` is an explicit one to pass as ``owner``. A mailbox queues
and matches messages: it never starts a thread and never drops a message. Handing out
a session's output event gives its window back (``flow.consumed``), so a session whose owner
is a mailbox sends at most a window of output that nobody has taken.

A mailbox may also hold sessions' capture pipes (``hold``, ``held_output``): then ``receive``,
while nothing it wants is queued, waits in ``poll`` on those pipes (and an eventfd that ``tell``
writes to) instead of on its condition, and reads them itself, so captured output reaches the
thread that takes it with no hand-over between threads. Only one thread polls at a time; the
others wait on the condition as before.

>>> box = Mailbox()
>>> box.tell(("linx_process", "running"))
>>> box.receive(("linx_process",), timeout=1)
('linx_process', 'running')
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import LinxValueError
from .flow import EVENT_TAG, OutputEvent, consumed

if TYPE_CHECKING:
    from .held_output import HeldPipe

Match = tuple | Callable[[Any], bool] | None

READS_PER_WAKE = 4
"""Reads of one held pipe per look at it (``_read_pipe``), at most ``READ_SIZE`` each: a busy
pipe does not keep the owner, or the other pipes, waiting."""


LONGEST_WAIT = 86400.0
"""The longest a receive waits at once, in seconds: a longer timeout is waited in these slices
(``poll`` refuses one past 2**31 ms, 24.8 days)."""


def check_timeout(timeout: Any) -> float | None:
    """A ``timeout``: None (wait forever) or seconds, finite, from 0 to ``threading.TIMEOUT_MAX``;
    raises ``LinxValueError(("bad_timeout", value))``.

    >>> check_timeout(None), check_timeout(2)
    (None, 2.0)
    """
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 <= timeout <= threading.TIMEOUT_MAX:
        return float(timeout)  # (NaN and infinity fail the range)
    raise LinxValueError(
        ("bad_timeout", timeout), f"timeout must be None (wait forever) or finite seconds >= 0, not {timeout!r}"
    )


def _matcher(match: tuple | Callable[[Any], bool]) -> Callable[[Any], bool]:
    """What ``receive`` takes, as a predicate (for no match at all, ``_take_first`` takes None)."""
    if callable(match):
        return match
    if isinstance(match, tuple):
        size = len(match)
        return lambda message: isinstance(message, tuple) and message[:size] == match
    raise TypeError(f"match must be a tuple prefix, a predicate or None, not {match!r}")


_NOTHING = object()


class Mailbox:
    """A thread-safe queue with selective receive. Anything with ``.tell`` can be an owner;
    this is the one to use from plain threads."""

    def __init__(self) -> None:
        self._messages: deque[Any] = deque()
        self._lock = threading.RLock()
        """Guards everything here; entered directly, not through the condition (a Python-level
        ``__enter__``: two calls more on every message taken)."""
        self._condition = threading.Condition(self._lock)
        self._reader: threading.Thread | None = None
        """The thread that last took from it (a thread's own mailbox: that thread from the start)."""
        self._takers: set[threading.Thread] = set()
        """The threads inside ``receive`` or ``flush`` (``_taker``)."""
        self._held: list[HeldPipe] = []
        """Capture pipes this mailbox reads itself (``hold``)."""
        self._from_pipe: dict[int, HeldPipe] = {}
        """The pipe each queued output event read from a held pipe came from, by the event's
        id (it is queued, so alive): taking it gives its bytes back to that pipe's window."""
        self._polling = False
        """A receiving thread waits in ``poll`` on the held pipes (and ``_wake_fd``), not on the condition."""
        self._wake_fd = -1
        """An eventfd that wakes the polling thread: made when the first pipe is held, closed
        when the mailbox is collected (never earlier: a poll may still be watching it)."""

    def tell(self, message: Any) -> None:
        """Queue a message (never blocks)."""
        with self._lock:
            self._messages.append(message)
            self._condition.notify_all()
            self._wake_poller()

    def receive(self, match: Match = None, timeout: float | None = None) -> Any:
        """Take the first queued message that matches, waiting up to ``timeout`` seconds for
        one (None: for ever); the others stay queued in order. Raises ``TimeoutError``, and
        ``LinxValueError(("bad_timeout", timeout))`` before taking anything (``check_timeout``)."""
        accepts = None if match is None else _matcher(match)  # None: the first message
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        taker = self._taker()
        try:
            self._takers.add(taker)
            while True:
                with self._lock:
                    message = self._take_first(accepts)
                    # A read before any poll: while output flows, a poll per read cost a third.
                    while message is _NOTHING and self._held and not self._polling and self._read_held():
                        message = self._take_first(accepts)
                    if message is not _NOTHING:
                        self._reader = taker
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None:
                        if remaining <= 0:
                            raise TimeoutError(f"no message matching {match!r} within {timeout} s")
                        remaining = min(remaining, LONGEST_WAIT)
                    if not self._held or self._polling:
                        self._condition.wait(remaining)
                        continue
                self._poll_held(remaining)
        finally:
            self._takers.discard(taker)
        if type(message) is OutputEvent:  # a relayed event's claim (a held one gave its room back when taken)
            consumed(message)
        return message

    # -- held capture pipes (held_output) -----------------------------------------------------

    def prepare_to_hold(self) -> None:
        """Make what ``hold`` needs (an eventfd, once); raises ``OSError``, and then pipes are
        not held (the agent relays them)."""
        with self._lock:
            if self._wake_fd < 0:
                self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                weakref.finalize(self, os.close, self._wake_fd)

    def hold(self, pipe: HeldPipe) -> None:
        """Read ``pipe`` from now on, in ``receive`` and ``flush`` (after ``prepare_to_hold``)."""
        with self._lock:
            self._held.append(pipe)
            self._condition.notify_all()  # a receiver waiting on the condition may poll now
            self._wake_poller()

    def adopt_output(self, pipes: list[HeldPipe], claim: Callable[[tuple], Any]) -> int:
        """``pipes``, released, are relayed by the agent from now on: what this mailbox read from
        them and still holds becomes ``claim(event)`` in place (an ``OutputEvent`` holding its
        bytes of the session's window, which taking it gives back to the agent). Returns those
        bytes."""
        adopted = 0
        with self._lock:
            for index in range(len(self._messages)):  # by index: a signal handler may tell meanwhile
                message = self._messages[index]
                pipe = self._from_pipe.get(id(message))
                if pipe is not None and pipe in pipes:
                    del self._from_pipe[id(message)]
                    pipe.window.room += len(message[2])
                    self._messages[index] = claim(message)
                    adopted += len(message[2])
        return adopted

    def release(self, pipe: HeldPipe) -> None:
        """Stop reading ``pipe``: what this mailbox has read from it stays queued, in order;
        nothing more is read once this returns."""
        with self._lock:
            if pipe in self._held:
                self._held.remove(pipe)
                pipe.on_drained = None
                self._condition.notify_all()
                self._wake_poller()

    def finish(self, pipe: HeldPipe, on_drained: Callable[[HeldPipe], None]) -> bool:
        """``pipe``'s workload has ended: queue what it holds now, its last output, within its
        window as output is taken, and then let it go. True if that is done already; else
        ``on_drained(pipe)`` is called once it is (with this mailbox's lock held), and until
        then the pipe is read as before (but for what is written to it later)."""
        with self._lock:
            if pipe not in self._held:
                return True
            pipe.left = pipe.queued_in_pipe()
            self._read_pipe(pipe)
            if pipe.left == 0 or pipe.ended:
                self._held.remove(pipe)
                return True
            pipe.on_drained = on_drained
            self._wake_poller()
            return False

    def _read_held(self) -> bool:
        """Queue what the held pipes give now, within their windows; whether they gave any.
        Called with the lock held."""
        before = len(self._messages)
        for pipe in list(self._held):  # a drained one leaves
            self._read_pipe(pipe)
        return len(self._messages) > before

    def _read_pipe(self, pipe: HeldPipe) -> None:
        """Queue what ``pipe`` holds now, within its window, as its output events, each as it is
        read (its bytes counted out of the window, and out of what is ``left`` of a draining
        pipe); a draining pipe whose last output is all queued is let go. Called with the lock held."""
        window = pipe.window
        for _ in range(READS_PER_WAKE):
            size = pipe.read_size()
            if size <= 0:
                break
            data = pipe.read(size)
            if data:
                event = (EVENT_TAG, pipe.stream, data)
                self._messages.append(event)
                self._from_pipe[id(event)] = pipe
                window.room -= len(data)
                if pipe.left is not None:
                    pipe.left -= len(data)
            if len(data) < size:
                break  # it is empty now
        on_drained = pipe.on_drained
        if on_drained is not None and (pipe.left == 0 or pipe.ended):
            self._held.remove(pipe)
            pipe.on_drained = None
            on_drained(pipe)

    def _wake_poller(self) -> None:
        """Called with the lock held: a thread polling the held pipes returns from ``poll``."""
        if self._polling:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass  # the counter is full: the poller is woken already

    def _poll_held(self, timeout: float | None) -> None:
        """Become the polling thread, unless another is; wait (without the lock) until a held
        pipe that has room (by its fd when it was chosen) is readable, a message is told, or
        the timeout; then, with the lock, queue what the ready pipes that are still held give.
        A pipe released meanwhile is not read: its fd may have been closed, and even reused.
        ``_polling`` is cleared whatever is raised meanwhile (a signal handler's exception)."""
        polling = False
        ready: list[tuple[int, int]] = []
        polled: dict[int, HeldPipe] = {}
        try:
            with self._lock:
                if self._polling or not self._held:
                    return
                self._polling = polling = True
                polled = {pipe.read_end: pipe for pipe in self._held if pipe.read_size() > 0}
            poller = select.poll()
            poller.register(self._wake_fd, select.POLLIN)
            for fd in polled:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        finally:
            with self._lock:
                if polling:
                    self._polling = False
                for fd, _ in ready:
                    pipe = polled.get(fd)
                    if pipe is None:
                        try:
                            os.eventfd_read(self._wake_fd)
                        except BlockingIOError:
                            pass
                    elif pipe in self._held:
                        self._read_pipe(pipe)
                self._condition.notify_all()

    def _take_first(self, accepts: Callable[[Any], bool] | None) -> Any:
        """The first queued message that ``accepts`` takes (None: the first one), removed;
        ``_NOTHING`` if none. If it was read from a held pipe, its bytes are room in that pipe's
        window again, and a poll that left the pipe out (its window was full) takes it in again.

        The caller holds the lock, which is reentrant: a signal handler that runs on this thread
        meanwhile may ``tell`` this mailbox (the daemon's does), appending to the queue. So the
        scan walks a copy (an append moves no earlier message), after a look at the first one,
        which is all a receive without a pattern looks at, and which the scan skips: a predicate
        sees each message once a scan."""
        messages = self._messages
        if messages and (accepts is None or accepts(messages[0])):
            message = messages.popleft()
        elif accepts is None:
            return _NOTHING
        else:
            for index, message in enumerate(itertools.islice(list(messages), 1, None), start=1):
                if accepts(message):
                    del messages[index]
                    break
            else:
                return _NOTHING
        pipe = self._from_pipe.pop(id(message), None)
        if pipe is not None:
            window = pipe.window
            full = window.room <= 0
            window.room += len(message[2])
            if full and self._polling:
                self._wake_poller()
        return message

    def flush(self) -> list[Any]:
        """Return and remove every queued message."""
        taker = self._taker()
        try:
            self._takers.add(taker)
            with self._lock:
                self._read_held()
                messages = []
                # one at a time: what a signal handler tells meanwhile is taken too, not lost
                while (message := self._take_first(None)) is not _NOTHING:
                    messages.append(message)
                self._reader = taker
        finally:
            self._takers.discard(taker)
        for message in messages:
            consumed(message)
        return messages

    def _taker(self) -> threading.Thread:
        """This thread, for ``_takers``, unless it is taking already: then this is a
        signal handler that interrupted its ``receive`` or ``flush``, and taking now could queue
        output behind newer output or take from under the interrupted scan, so it is refused
        (a handler may ``tell``). The caller counts it in inside its ``try``: an exception in
        between (a handler's, again) must not leave it counted for good."""
        taker = _this_thread.thread
        if taker in self._takers:
            raise RuntimeError(
                "receive or flush of a Mailbox from a signal handler that interrupted a receive or flush "
                "of the same mailbox: a signal handler may only tell it"
            )
        return taker

    def reader_has_ended(self) -> bool:
        """Whether the thread that last took from this mailbox (for a thread's own mailbox, that
        thread from the start) has ended: then nobody is known to take from it any more, and a
        session it owns stops waiting for it (README, "Using it"). False while it has never been read."""
        reader = self._reader
        return reader is not None and not reader.is_alive()

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __repr__(self) -> str:
        return f"<Mailbox {len(self)} queued>"


class _ThisThread(threading.local):
    """What each thread keeps for itself: its ``Thread``, found once (``current_thread`` is a
    Python call, and each ``receive`` records its taker), and its own mailbox, once asked for."""

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.mailbox: Mailbox | None = None


_this_thread = _ThisThread()


def mailbox() -> Mailbox:
    """The calling thread's own mailbox (what ``self()`` is in Elixir)."""
    own = _this_thread.mailbox
    if own is None:
        own = _this_thread.mailbox = Mailbox()
        own._reader = _this_thread.thread
    return own


def receive(match: Match = None, timeout: float | None = None) -> Any:
    """``receive`` on the calling thread's mailbox."""
    return mailbox().receive(match, timeout)


def flush() -> list[Any]:
    """Return and remove every message in the calling thread's mailbox."""
    return mailbox().flush()
