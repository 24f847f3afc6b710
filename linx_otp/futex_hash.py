"""Growing the kernel's futex hash with the threads of a process that has thousands of them.

Since Linux 6.16 a multi-threaded process gets a private futex hash sized by its CPUs (16
buckets on 2 cores), not by its threads. Every thread blocked on a lock waits in one of those
buckets, and every wake-up walks its bucket: an actor is a thread blocked on its inbox, so with
10,000 sessions each wake-up walks some 600 waiters, and a round trip between two threads
costs ten times what it does with none (``benchmarks/spawn.py``, the scaling rows). ``fit``
grows the private hash to a bucket per thread before the chains get long.

It never shrinks the hash, leaves a process on the global hash alone (0 slots: the program
chose it, or the kernel has no private hashes) and does nothing on kernels without
``PR_FUTEX_HASH`` (the prctl refuses). It changes nothing but the hash's size, which no
program can observe except in time.

>>> fit(1)  # a handful of threads: nothing to do
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading

from .libc import libc

log = logging.getLogger(__name__)

PR_FUTEX_HASH = 78
PR_FUTEX_HASH_SET_SLOTS = 1
PR_FUTEX_HASH_GET_SLOTS = 2
FIRST_GROWTH = 256
"""Below this many threads the kernel's own sizing is left as it is."""
WAITERS_PER_SLOT = 4
"""Grow once there are this many threads per bucket (each growth makes one bucket per thread)."""

_lock = threading.Lock()
_grow_at: float = FIRST_GROWTH
"""The thread count at which ``fit`` looks again; infinite once it has nothing to do for good."""


def _prctl(command: int, slots: int = 0) -> int:
    result = libc.prctl(PR_FUTEX_HASH, command, ctypes.c_ulong(slots), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if result < 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_FUTEX_HASH)")
    return result


def fit(threads: int) -> None:
    """Make the private futex hash at least one bucket per thread for ``threads`` threads, if
    it has fewer than a quarter of that (cheap when there is nothing to do: one comparison)."""
    global _grow_at
    if threads < _grow_at:
        return
    with _lock:
        if threads < _grow_at:
            return
        try:
            slots = _prctl(PR_FUTEX_HASH_GET_SLOTS)
            if slots == 0:  # the global hash: the program's choice, or no private hashes here
                _grow_at = math.inf
                return
            wanted = 1 << (threads - 1).bit_length()
            if slots < wanted:
                _prctl(PR_FUTEX_HASH_SET_SLOTS, wanted)
                slots = wanted
        except OSError as error:  # an older kernel, or no memory for a bigger hash
            log.debug("leaving the futex hash as it is: %s", error)
            _grow_at = math.inf
            return
        _grow_at = WAITERS_PER_SLOT * slots


def slots() -> int:
    """The private futex hash's buckets now (0: the global hash); raises ``OSError`` on kernels
    without ``PR_FUTEX_HASH``."""
    return _prctl(PR_FUTEX_HASH_GET_SLOTS)
