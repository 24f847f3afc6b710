"""Mailboxes: where lifecycle events land when the owner is not an actor.

``receive`` and ``flush`` work on the calling thread's own mailbox, like ``receive`` and
``flush()`` in iex; ``Mailbox()`` is an explicit one to pass as ``owner``. A mailbox only
queues and matches messages: it never starts a thread and never drops a message. Handing out
a session's output event gives its window back (``flow.consumed``), so a session whose owner
is a mailbox sends at most a window of output that nobody has taken.

>>> box = Mailbox()
>>> box.tell(("linx_process", "running"))
>>> box.receive(("linx_process",), timeout=1)
('linx_process', 'running')
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .flow import consumed

Match = tuple | Callable[[Any], bool] | None


def _matcher(match: Match) -> Callable[[Any], bool]:
    if match is None:
        return lambda message: True
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
        self._condition = threading.Condition()
        self._reader: threading.Thread | None = None
        """The thread that last took from it (a thread's own mailbox: that thread from the start)."""

    def tell(self, message: Any) -> None:
        """Queue a message (never blocks)."""
        with self._condition:
            self._messages.append(message)
            self._condition.notify_all()

    def receive(self, match: Match = None, timeout: float | None = None) -> Any:
        """Take the first queued message that matches, waiting up to ``timeout`` seconds for
        one; the others stay queued in order. Raises ``TimeoutError``."""
        accepts = _matcher(match)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while (message := self._take_first(accepts)) is _NOTHING:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message matching {match!r} within {timeout} s")
                self._condition.wait(remaining)
            self._reader = threading.current_thread()
        consumed(message)
        return message

    def _take_first(self, accepts: Callable[[Any], bool]) -> Any:
        """The first queued message that ``accepts`` takes, removed; ``_NOTHING`` if none. The
        caller holds the lock, which is reentrant: a signal handler that runs on this thread
        meanwhile may ``tell`` this mailbox (the daemon's does), appending to the queue. So the
        scan walks a copy (an append moves no earlier message), after a look at the first one,
        which is what a receive without a pattern takes, copying nothing."""
        if self._messages and accepts(first := self._messages[0]):
            self._messages.popleft()
            return first
        for index, message in enumerate(list(self._messages)):
            if accepts(message):
                del self._messages[index]
                return message
        return _NOTHING

    def flush(self) -> list[Any]:
        """Return and remove every queued message."""
        with self._condition:
            messages = []
            while self._messages:  # one at a time: what a signal handler tells meanwhile is taken too, not lost
                messages.append(self._messages.popleft())
            self._reader = threading.current_thread()
        for message in messages:
            consumed(message)
        return messages

    def reader_has_ended(self) -> bool:
        """Whether the thread that last took from this mailbox (for a thread's own mailbox, that
        thread from the start) has ended: then nobody is known to take from it any more, and a
        session it owns stops waiting for it (README, "Using it"). False while it has never been read."""
        reader = self._reader
        return reader is not None and not reader.is_alive()

    def __len__(self) -> int:
        with self._condition:
            return len(self._messages)

    def __repr__(self) -> str:
        return f"<Mailbox {len(self)} queued>"


_thread_local = threading.local()


def mailbox() -> Mailbox:
    """The calling thread's own mailbox (what ``self()`` is in Elixir)."""
    own = getattr(_thread_local, "mailbox", None)
    if own is None:
        own = _thread_local.mailbox = Mailbox()
        own._reader = threading.current_thread()
    return own


def receive(match: Match = None, timeout: float | None = None) -> Any:
    """``receive`` on the calling thread's mailbox."""
    return mailbox().receive(match, timeout)


def flush() -> list[Any]:
    """Return and remove every message in the calling thread's mailbox."""
    return mailbox().flush()
