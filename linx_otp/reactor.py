"""The one I/O thread: an epoll loop over every agent's socket and pidfd.

Handlers run in this thread and must be quick and never block: they read what is ready and
hand decoded events on (``agent.py``). Nothing here knows about sessions. The thread is a
daemon, so it never keeps the interpreter alive, and it is started on first use.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reactor:
    """Calls ``handler()`` in the I/O thread whenever a registered fd is readable or hung up."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
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

    def _run(self) -> None:
        while True:
            try:
                ready = self._epoll.poll()
            except InterruptedError:
                continue
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
