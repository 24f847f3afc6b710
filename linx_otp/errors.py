"""The library's exceptions. Every error linx_otp raises is a ``LinxError`` whose ``.reason``
is the contract (README, "Using it"): the original's reason, atoms as strings, tuples as tuples.

This module only defines and describes errors; it never decides when one happens.
"""

from __future__ import annotations

import errno as errno_module
import os
from typing import Any


class LinxError(Exception):
    """An error from linx_otp. ``reason`` is machine-readable and stable; the message is for
    people.

    >>> try:
    ...     raise LinxError("not_ready", "proceed: the child has not reached the checkpoint")
    ... except LinxError as error:
    ...     error.reason
    'not_ready'
    """

    def __init__(self, reason: Any, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message if message is not None else f"linx_otp: {reason!r}")


class LinxValueError(LinxError, ValueError):
    """Bad input, refused before anything was started or changed."""


def errno_name(number: int) -> str:
    """``2`` → ``"enoent"``; ``"unknown"`` for a number with no name."""
    return errno_module.errorcode.get(number, "UNKNOWN").lower()


def describe_outcome(outcome: tuple) -> str:
    """A sentence for a workload outcome such as ``("error", 2, "execve")``."""
    match outcome:
        case ("exited", code):
            return f"the workload exited with status {code}"
        case ("signaled", signum):
            return f"the workload was killed by signal {signum}"
        case ("aborted",):
            return "the workload was aborted at the checkpoint and never ran"
        case ("error", code, "agent_died"):
            return f"process agent died without reporting a terminal status (exit code {code})"
        case ("error", number, stage):
            name = errno_name(number)
            if name == "unknown":
                return f"process {stage} failed: errno {number}"
            return f"process {stage} failed: {name} (errno {number})"
    return repr(outcome)


class LinxOSError(LinxError, OSError):
    """A kernel call failed: ``reason`` is ``(operation, errno_name)``, e.g.
    ``("set_uid_map", "eperm")``; ``errno``, ``strerror`` and ``filename`` are OSError's.

    >>> error = LinxOSError("set_uid_map", 1, "/proc/7/uid_map")
    >>> error.reason, error.errno, isinstance(error, OSError)
    (('set_uid_map', 'eperm'), 1, True)
    """

    def __init__(self, operation: str, number: int, filename: str | None = None) -> None:
        where = f" {filename}" if filename else ""
        self.message = f"{operation}{where}: {errno_module.errorcode.get(number, number)} ({os.strerror(number)})"
        super().__init__((operation, errno_name(number)), self.message)
        self.operation = operation
        self.errno = number
        self.strerror = os.strerror(number)
        self.filename = filename

    def __str__(self) -> str:
        return self.message

    @classmethod
    def wrap(cls, operation: str, error: OSError) -> LinxOSError:
        return cls(operation, error.errno or 0, error.filename)
