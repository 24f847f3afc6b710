"""Flow control of session output: the window of output bytes in flight, and the credit owners
give back as they take output events (README, "Using it"; ``native/PROTOCOL.md``, "Flow control").

The agent sends at most a window of output bytes that the owner has not taken; then it stops
reading, and the workload blocks in ``write(2)`` as on a full pipe. An output event (``pty_out``,
``stdout``, ``stderr``) reaches its owner as an ``OutputEvent``: a plain tuple to compare and
``match``, carrying a hidden claim on its session's window. ``consumed(event)`` gives the
claim back, once; ``Mailbox.receive``/``flush`` call it as they hand a message out, and a
``linx_otp.Actor`` once ``on_receive`` has handled it. Credit goes back to the agent in batches
of a quarter window. This module never blocks and does no I/O except sending a credit frame.

>>> sent = []
>>> window = OutputWindow(16, send=sent.append)  # credit goes back in batches of 16 // 4 bytes
>>> event = window.claim(("linx_process", "stdout", b"hello"))
>>> event == ("linx_process", "stdout", b"hello"), window.outstanding
(True, 5)
>>> consumed(event); consumed(event); window.outstanding, len(sent)  # given back once
(0, 1)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import protocol

CREDIT_BATCH_FRACTION = 4
"""Credit goes back to the agent once a quarter of the window has been taken: never one frame
per event, and never so late that the agent waits while the owner has taken everything."""

EVENT_TAG = "linx_process"
"""The first element of every event a session sends its owner."""

OUTPUT_CREDIT_POLICIES = ("on_tell", "explicit")
"""How an owner that is neither a ``Mailbox`` nor an actor returns credit, read from its
``output_credit`` attribute: ``"on_tell"`` (the default) when ``tell`` returns, ``"explicit"``
when it calls ``consumed(event)`` itself."""


class OutputEvent(tuple):
    """``("linx_process", "stdout" | "stderr" | "pty_out", data)`` as an owner receives it: equal
    to the plain tuple, matched as a sequence, pickled as a plain tuple. Its hidden claim on the
    session's window is given back by ``consumed``."""

    def __reduce__(self) -> tuple:
        return (tuple, (tuple(self),))


class OutputWindow:
    """One session's window: how many output bytes the owner holds, and the credit still to send.

    ``claim`` wraps an output event on its way to the owner; ``consumed`` gives it back.
    ``forgive`` gives back everything outstanding at once (the owner has stopped: what it held
    will never be taken), and makes the claims made before it worthless. Any thread may call
    any of them (the session claims from its own thread and from the I/O thread)."""

    def __init__(self, size: int, send: Callable[[bytes], bool]) -> None:
        self.size = size
        self._batch = max(1, size // CREDIT_BATCH_FRACTION)
        self._send = send
        self._lock = threading.Lock()
        self._outstanding = 0
        """Claimed and not yet credited to the agent (taken-but-unsent credit included)."""
        self._taken = 0
        """Taken by the owner, not yet sent as credit."""
        self._epoch = 0

    @property
    def outstanding(self) -> int:
        """Bytes the agent counts in flight (as far as this side knows)."""
        return self._outstanding

    @property
    def full(self) -> bool:
        return self._outstanding >= self.size

    def claim(self, event: tuple) -> OutputEvent:
        """``event`` (its last element is the data) as an ``OutputEvent`` holding its bytes."""
        wrapped = OutputEvent(event)
        nbytes = len(event[-1])
        with self._lock:
            self._outstanding += nbytes
            wrapped.__dict__["_claim"] = (self, self._epoch, nbytes)
        return wrapped

    def _give_back(self, epoch: int, nbytes: int) -> None:
        with self._lock:
            if epoch != self._epoch:
                return  # forgiven already
            self._taken += nbytes
            if self._taken < self._batch:
                return
            credit, self._taken = self._taken, 0
            self._outstanding -= credit
        self._send(protocol.encode_credit(credit))

    def forgive(self) -> None:
        """Give the agent back every outstanding byte; earlier claims no longer count."""
        self.give_credit(self.forgive_without_sending())

    def forgive_without_sending(self) -> int:
        """``forgive``, but return the credit instead of sending it: the caller sends it with
        ``give_credit`` once it has released a lock of its own."""
        with self._lock:
            credit, self._outstanding, self._taken = self._outstanding, 0, 0
            self._epoch += 1
        return credit

    def give_credit(self, credit: int) -> None:
        """Send the agent ``credit`` bytes of room (nothing for 0)."""
        if credit:
            self._send(protocol.encode_credit(credit))


def consumed(event: Any) -> None:
    """Give back the window an output event holds: call it once the event's data is out of the
    way (written, parsed, stored where it is bounded). Anything else, or an event given back
    already, is ignored, so calling it on every message is safe.

    A ``Mailbox`` (and a thread's own mailbox) does this as ``receive``/``flush`` hand a message
    out, and a ``linx_otp.Actor`` once ``on_receive`` has handled it; a plain pykka actor, or an
    owner whose ``output_credit`` is ``"explicit"``, calls it itself. Until it does, the session's
    workload may block (README, "Using it": at most a window of output is in flight).

    >>> consumed(("linx_process", "running"))  # not output: nothing to give back
    """
    if type(event) is OutputEvent:
        claim = event.__dict__.pop("_claim", None)
        if claim is not None:
            window, epoch, nbytes = claim
            window._give_back(epoch, nbytes)


__all__ = ["EVENT_TAG", "OUTPUT_CREDIT_POLICIES", "OutputEvent", "OutputWindow", "consumed"]
