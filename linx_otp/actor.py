"""The actor base every linx_otp actor is built on, and monitors.

pykka has no links or monitors; OTP supervision needs to know *how* an actor ended. An
``Actor`` records an exit reason (``"normal"``, ``"shutdown"``, ``("shutdown", x)`` or an
abnormal reason) and tells every monitor ``("DOWN", ref, reason)`` once it has stopped. It runs
on a daemon thread, so live actors never keep the interpreter from exiting.

>>> import linx_otp
>>> class Echo(Actor):
...     def on_receive(self, message):
...         return message
>>> ref = Echo.start()
>>> box = linx_otp.Mailbox()
>>> linx_otp.monitor(ref, box)
>>> ref.stop()
True
>>> box.receive(timeout=1)[2]
'normal'
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pykka

from .mailbox import mailbox

log = logging.getLogger(__name__)


class _AddMonitor:
    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher


class Actor(pykka.ThreadingActor):
    """A pykka actor that ends with an exit reason and reports it to its monitors.

    Subclasses put their cleanup in ``terminate(reason)`` (not ``on_stop``/``on_failure``)
    and end themselves with ``self.exit(reason)``.
    """

    use_daemon_thread = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exit_reason: Any = "normal"
        self._monitors: list[Any] = []
        self._monitors_lock = threading.Lock()

    def exit(self, reason: Any) -> None:
        """Stop after the current message, with ``reason``."""
        self._exit_reason = reason
        self.stop()

    def terminate(self, reason: Any) -> None:
        """Cleanup hook, run in the actor's thread once, however it ends."""

    # -- pykka hooks ---------------------------------------------------------------------

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, _AddMonitor):
            with self._monitors_lock:
                self._monitors.append(message.watcher)
            return None
        return super()._handle_receive(message)

    def on_stop(self) -> None:
        self._end(self._exit_reason)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._end(("exception", exception_value))

    def _end(self, reason: Any) -> None:
        self._exit_reason = reason
        try:
            self.terminate(reason)
        finally:
            with self._monitors_lock:
                monitors, self._monitors = self._monitors, []
            for watcher in monitors:
                _tell_quietly(watcher, ("DOWN", self.actor_ref, reason))


def _tell_quietly(destination: Any, message: Any) -> None:
    try:
        destination.tell(message)
    except pykka.ActorDeadError:
        pass
    except Exception:
        log.exception("delivering %r to %r failed", message, destination)


def monitor(ref: pykka.ActorRef, watcher: Any = None) -> None:
    """Deliver ``("DOWN", ref, reason)`` to ``watcher`` (a ref, a ``Mailbox``, or the calling
    thread's mailbox) once the actor has stopped; at once with ``"noproc"`` if it already has."""
    destination = mailbox() if watcher is None else watcher
    try:
        ref.ask(_AddMonitor(destination))
    except pykka.ActorDeadError:
        _tell_quietly(destination, ("DOWN", ref, "noproc"))
