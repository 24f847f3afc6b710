"""Running a function inside another process's namespaces, without forking.

The Python process is multi-threaded, so it must never fork, and it must never change the
namespaces of a thread that pykka or the I/O thread uses. ``run_in(pid, kinds, function)``
starts a short-lived thread, joins that thread to the namespaces of ``pid`` (``setns`` is per
thread for net, uts, ipc and, after ``unshare(CLONE_FS)``, mount), runs ``function`` there and
returns its result; the thread then exits with its namespaces. User and pid namespaces cannot
be joined this way (the kernel refuses a multi-threaded joiner, and a pid namespace only
applies to children): those need the agent (``process.enter``).

>>> import os
>>> run_in(os.getpid(), ["uts"], lambda: "inside")
'inside'
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import LinxError, LinxOSError
from ..libc import libc
from ..protocol import NAMESPACE_KINDS, NamespaceKind

CLONE_FS = 0x00000200
NEEDS_A_SINGLE_THREADED_JOINER = ("user", "pid", "time")
"""The kernel refuses these to a thread of a multi-threaded process (pid only ever applies to
children): joining them is the agent's job."""
THREAD_JOINABLE = {kind.name: kind for kind in NAMESPACE_KINDS if kind.name not in NEEDS_A_SINGLE_THREADED_JOINER}


def check_call(result: int, operation: str, path: str | None = None) -> None:
    """Raise ``LinxOSError`` for a failed libc call (``result`` != 0)."""
    if result != 0:
        raise LinxOSError(operation, ctypes.get_errno(), path)


def _join(pid: int, kinds: list[NamespaceKind]) -> None:
    if any(kind.name == "mount" for kind in kinds):
        check_call(libc.unshare(CLONE_FS), "unshare")
    for kind in kinds:
        path = f"/proc/{pid}/ns/{kind.proc_name}"
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise LinxOSError.wrap("open_ns", error) from None
        try:
            check_call(libc.setns(descriptor, kind.clone_flag), "setns", path)
        finally:
            os.close(descriptor)


def run_in(pid: int | None, kinds: Iterable[str], function: Callable[[], Any]) -> Any:
    """Run ``function`` in a throwaway thread inside the ``kinds`` namespaces (``net``,
    ``mount``, ``uts``, ``ipc``, ``cgroup``) of ``pid``; ``pid=None`` runs it in this
    process's own. Returns what it returns; raises what it raises."""
    wanted = list(kinds)
    unknown = [kind for kind in wanted if kind not in THREAD_JOINABLE]
    if unknown:
        raise LinxError(
            ("bad_namespaces", unknown), f"a thread can join {sorted(THREAD_JOINABLE)} namespaces, not {unknown}"
        )
    if pid is None:
        return function()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            _join(pid, [THREAD_JOINABLE[name] for name in wanted])
            outcome["result"] = function()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=worker, name=f"linx-otp-setns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
