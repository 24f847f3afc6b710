"""The agent's executable as this process runs it: a sealed in-memory copy, not the file.

A workload sees a copy of the agent while it is parked in its namespaces (``enter`` clones
the child there before ``execve``), and ``/proc/PID/exe`` of that copy would otherwise be the
host's ``linx-agent`` file: a workload could reopen it for writing once no agent runs it, and
every later agent, run by root, would run what it wrote (runc's CVE-2019-5736). Instead the
file is copied once per process into a ``memfd`` sealed against writing, growing, shrinking
and unsealing, and agents are started from ``/proc/self/fd/N``; ``/proc/PID/exe`` of every
agent is then that memfd, which nobody can write, and the file on disk is never executed.

The copy is made on first use and kept open (close-on-exec: no agent or workload inherits it).
This module never writes to the file it copies.

>>> path = sealed_executable("/bin/true")
>>> path.startswith("/proc/self/fd/"), sealed_executable("/bin/true") == path
(True, True)
"""

from __future__ import annotations

import fcntl
import os
import threading

MFD_EXEC = 0x0010
"""memfd_create's flag for an executable memfd (Linux 6.3; refused as EINVAL before it, where
every memfd is executable)."""
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_copies: dict[str, int] = {}
_lock = threading.Lock()


def sealed_executable(path: str) -> str:
    """``/proc/self/fd/N`` of a sealed memfd holding the file at ``path`` (made once per
    path). Raises ``OSError`` if the copy cannot be made."""
    with _lock:
        if path not in _copies:
            _copies[path] = _sealed_copy(path)
        return f"/proc/self/fd/{_copies[path]}"


def is_sealed(path: str) -> bool:
    """Whether this process already holds its sealed copy of ``path`` (what it runs from then
    on, whatever becomes of the file)."""
    return path in _copies


def _sealed_copy(path: str) -> int:
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            copy = os.memfd_create(os.path.basename(path), flags | MFD_EXEC)
        except OSError:
            copy = os.memfd_create(os.path.basename(path), flags)
        try:
            size = os.fstat(source).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(copy, source, offset, size - offset)
                if sent == 0:
                    raise OSError(f"{path} shrank while it was copied")
                offset += sent
            fcntl.fcntl(copy, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(copy)
            raise
    finally:
        os.close(source)
    return copy
