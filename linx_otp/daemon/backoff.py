"""Restart back-off for one child, as systemd's ``RestartSec`` and Kubernetes' CrashLoopBackOff:
the daemon holds a restarted child at its checkpoint for a delay before letting it run.

The delay is ``restart_delay`` after the first crash and doubles with each consecutive crash up
to ``restart_backoff_max``; a child that ran ``restart_delay * 10`` seconds before it ended
starts again from ``restart_delay``. The supervisor's restart intensity is untouched: the
restart (a new session, parked) happens at once and is counted then; only the ``execve`` waits.
This module keeps the arithmetic; it starts, waits for and signals nothing.

>>> backoff = BackOff(delay=0.1, maximum=0.4)
>>> [backoff.crashed(ran=0.0) for _ in range(5)]
[0.1, 0.2, 0.4, 0.4, 0.4]
>>> backoff.crashed(ran=1.0)  # it ran restart_delay * 10: the count starts again
0.1
"""

from __future__ import annotations

RESET_FACTOR = 10
"""A child that ran this many times its ``restart_delay`` is no longer crash-looping."""


class BackOff:
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
