"""The one I/O thread: an epoll loop over every agent's socket (and an exiting agent's pidfd), and a few timers.

Handlers and timer callbacks run in this thread and must be quick and never block: they read
what is ready and hand decoded events on (``agent.py``), or check a condition and tell an
actor. Nothing here knows about sessions. The thread is a daemon, so it never keeps the
interpreter alive, and it is started on first use.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reactor:
    """Calls ``handler()`` in the I/O thread whenever a registered fd is readable or hung up."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        """A heap of (deadline, sequence number, callback)."""
        self._timer_numbers = itertools.count()
        self._timers_lock = threading.Lock()
        self._wakeup = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.register(self._wakeup, self._clear_wakeup)
        self._thread = threading.Thread(target=self._run, name="linx-otp-io", daemon=True)
        self._thread.start()

    def register(self, fd: int, handler: Callable[[], None]) -> None:
        """Watch ``fd`` (any thread may call this; epoll_ctl is safe against a waiting poll)."""
        self._handlers[fd] = handler
        self._epoll.register(fd, select.EPOLLIN)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``. Call it before closing the fd."""
        self._handlers.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def close_fds(self) -> None:
        """Close its epoll and wakeup fds (a forked child's copies: the thread that used them
        is not there)."""
        self._epoll.close()
        os.close(self._wakeup)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` in the I/O thread after ``delay`` seconds (any thread may call this)."""
        with self._timers_lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_numbers), callback))
        os.eventfd_write(self._wakeup, 1)  # the poll recomputes its timeout

    def _clear_wakeup(self) -> None:
        try:
            os.eventfd_read(self._wakeup)
        except BlockingIOError:
            pass

    def _poll_timeout(self) -> float:
        with self._timers_lock:
            if not self._timers:
                return -1
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        if not self._timers:  # the common case, read without the lock: a new timer wakes the poll
            return
        now = time.monotonic()
        due = []
        with self._timers_lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for callback in due:
            try:
                callback()
            except Exception:
                log.exception("linx_otp timer callback %r failed", callback)

    def _run(self) -> None:
        while True:
            try:
                ready = self._epoll.poll(self._poll_timeout())
            except InterruptedError:
                continue
            self._run_due_timers()
            for fd, _events in ready:
                handler = self._handlers.get(fd)
                if handler is None:
                    continue
                try:
                    handler()
                except Exception:
                    log.exception("linx_otp I/O handler for fd %d failed", fd)
                    self.unregister(fd)


_reactor: Reactor | None = None
_reactor_lock = threading.Lock()


def reactor() -> Reactor:
    """The process's reactor, started on first use."""
    global _reactor
    if _reactor is None:
        with _reactor_lock:
            if _reactor is None:
                _reactor = Reactor()
    return _reactor


def _forget_in_child() -> None:
    """A child made by ``os.fork()`` has none of its parent's threads, so no I/O thread: its
    first use starts its own reactor. The parent's epoll is shared with the parent (a fork
    copies the fd, not the instance): registering in it would hand the child's fds to the
    parent's I/O thread, so the child closes its copies and makes its own."""
    global _reactor, _reactor_lock
    inherited, _reactor, _reactor_lock = _reactor, None, threading.Lock()
    if inherited is not None:
        inherited.close_fds()


os.register_at_fork(after_in_child=_forget_in_child)
