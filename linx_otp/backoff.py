"""Restart back-off for one child, as systemd's ``RestartSec`` and Kubernetes' CrashLoopBackOff:
a supervisor waits before it restarts a crashed child that has ``restart_delay`` in its spec.

The delay is ``restart_delay`` after the first crash and doubles with each consecutive crash up
to ``restart_backoff_max``; a child that ran ``restart_delay * 10`` seconds before it ended
starts again from ``restart_delay``. The supervisor's restart intensity is untouched: a restart
is counted when it happens, after its delay. ``check_backoff`` is the one rule for the two
keywords (child specs and tree files both use it). This module keeps the arithmetic; it starts,
waits for and signals nothing.

>>> backoff = BackOff(*check_backoff(0.1, 0.4))
>>> [backoff.crashed(ran=0.0) for _ in range(5)]
[0.1, 0.2, 0.4, 0.4, 0.4]
>>> backoff.crashed(ran=1.0)  # it ran restart_delay * 10: the count starts again
0.1
"""

from __future__ import annotations

import math
from typing import Any

from .errors import LinxValueError

RESET_FACTOR = 10
"""A child that ran this many times its ``restart_delay`` is no longer crash-looping."""
SECONDS_MAX = 86400.0
"""The longest delay: a day."""


def check_backoff(restart_delay: Any, restart_backoff_max: Any = None) -> tuple[float, float]:
    """``(delay, maximum)`` checked: seconds from 0 to a day, the maximum (``None``: no
    doubling) at least the delay. Raises ``LinxValueError(("bad_restart_delay", value))`` or
    ``("bad_restart_backoff_max", value)``.

    >>> check_backoff(0.5), check_backoff(0.5, 30)
    ((0.5, 0.5), (0.5, 30.0))
    >>> check_backoff(2, 1)
    Traceback (most recent call last):
    linx_otp.errors.LinxValueError: restart_backoff_max must be at least restart_delay (2), not 1
    """
    delay = _seconds("restart_delay", restart_delay)
    if restart_backoff_max is None:
        return delay, delay
    maximum = _seconds("restart_backoff_max", restart_backoff_max)
    if maximum < delay:
        raise LinxValueError(
            ("bad_restart_backoff_max", restart_backoff_max),
            f"restart_backoff_max must be at least restart_delay ({delay:g}), not {maximum:g}",
        )
    return delay, maximum


def _seconds(name: str, value: Any) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= SECONDS_MAX
    ):
        return float(value)
    raise LinxValueError(
        (f"bad_{name}", value), f"{name} is a number of seconds from 0 to {SECONDS_MAX:g}, not {value!r}"
    )


class BackOff:
    """The delays of one child (``check_backoff``'s delay and maximum), crash after crash."""

    def __init__(self, delay: float, maximum: float) -> None:
        self.delay, self.maximum = delay, max(delay, maximum)
        self.consecutive = 0

    def crashed(self, ran: float) -> float:
        """It ended after running ``ran`` seconds: the delay before its next run."""
        if ran >= self.delay * RESET_FACTOR:
            self.consecutive = 0
        delay = min(self.delay * 2**self.consecutive, self.maximum)
        if delay < self.maximum:  # once at the maximum it stays there (and the power stays small)
            self.consecutive += 1
        return delay
