"""The C library, for the few calls Python's standard library does not wrap (``prctl``,
``setns``, ``unshare``, ``keyctl`` through ``syscall``): one handle for the whole package,
with ``errno`` kept for ``ctypes.get_errno()``. It must never hold state of its own.

>>> libc.getpid() == __import__("os").getpid()
True
"""

from __future__ import annotations

import ctypes

libc = ctypes.CDLL(None, use_errno=True)
