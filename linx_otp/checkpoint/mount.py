"""Mounts and hostnames inside a workload's namespaces (README, "The checkpoint, composed").

Every verb takes ``in_pid=``: None acts in the caller's own mount namespace, a host pid acts
in that process's (a parked child, usually). The work happens in a throwaway thread that
unshares its fs struct and joins the mount namespace (``namespaces.run_in``), so the Python
process never forks and none of its long-lived threads changes namespace.

An unprivileged caller cannot join a mount namespace that its workload's user namespace owns:
then each verb runs util-linux's command (``mount``, ``umount``, ``pivot_root``...) through
the agent (``process.enter``), inside the workload's user and mount namespaces, where the
workload's root has the capabilities.

procfs is the other exception: a proc mount shows the pid namespace of the process that mounts
it, and a thread cannot join a pid namespace. ``mount_proc`` (and ``mount`` of a ``proc``,
``sysfs`` or ``mqueue`` filesystem, each of which shows the mounter's pid, net or ipc namespace)
therefore runs ``mount -t`` through the agent (``process.enter`` into every namespace of the
target), found by the target's view of ``PATH``: mount /proc before ``pivot_root`` into a
rootfs without ``mount``.

>>> MS_BIND == 4096
True
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from .. import process as P
from ..errors import LinxError, LinxOSError, LinxValueError
from ..libc import libc
from ..mailbox import Mailbox
from . import namespaces

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64

NAMESPACED_FSTYPES = ("proc", "sysfs", "mqueue")
"""Filesystems that show the namespace (pid, net, ipc) of the process that mounts them: in a
workload's namespaces they are mounted by a process the agent starts there, never by a thread."""
FLAG_OPTIONS = {MS_RDONLY: "ro", MS_NOSUID: "nosuid", MS_NODEV: "nodev", MS_NOEXEC: "noexec"}
"""The mount flags that a mount run through the agent (util-linux's ``mount -o``) can express."""

_libc = libc
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _bytes(value: Any) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _in_mount_namespace(in_pid: int | None, action: Any, command: list[str], operation: str) -> Any:
    """Run ``action`` in a thread joined to the mount namespace of ``in_pid``; an unprivileged
    caller cannot join a namespace its workload's user namespace owns, so it runs ``command``
    (util-linux's, found on the host) through the agent inside the workload's namespaces."""
    if in_pid is not None and os.geteuid() != 0:
        return _run_through_agent(in_pid, command, operation)
    return namespaces.run_in(in_pid, ["mount"], action)


def _mount_call(source: Any, target: Any, fstype: Any, flags: int, data: Any) -> None:
    namespaces.check_call(
        _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)), "mount", str(target)
    )


def _text(value: Any) -> str:
    return os.fsdecode(os.fspath(value))


def mount(
    source: Any,
    target: Any,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
    *,
    in_pid: int | None = None,
) -> None:
    """mount(2) in the mount namespace of ``in_pid``. A ``proc``, ``sysfs`` or ``mqueue``
    filesystem there (or any mount by an unprivileged caller) is mounted by ``mount`` run
    through the agent, whose ``flags`` can be only ``MS_RDONLY``, ``MS_NOSUID``, ``MS_NODEV``
    and ``MS_NOEXEC``."""
    through_agent = in_pid is not None and (fstype in NAMESPACED_FSTYPES or os.geteuid() != 0)
    options = _mount_options(flags, data) if through_agent else data
    command = [
        "mount",
        *(["-t", fstype] if fstype else []),
        *(["-o", options] if options else []),
        _text(source),
        _text(target),
    ]
    if in_pid is not None and fstype in NAMESPACED_FSTYPES:
        _run_through_agent(in_pid, command, "mount")
        return
    _in_mount_namespace(in_pid, lambda: _mount_call(source, target, fstype, flags, data), command, "mount")


def _mount_options(flags: int, data: str | None) -> str:
    """``flags`` and ``data`` as one ``mount -o`` argument; refuses flags it cannot express."""
    unsupported = flags & ~sum(FLAG_OPTIONS)
    if unsupported:
        raise LinxValueError(
            ("unsupported", "flags"),
            f"a mount run through the agent takes only MS_RDONLY, MS_NOSUID, MS_NODEV and MS_NOEXEC, "
            f"not flags {unsupported:#x}",
        )
    names = [name for flag, name in FLAG_OPTIONS.items() if flags & flag]
    return ",".join([*names, *([data] if data else [])])


def bind(
    source: Any, target: Any, *, recursive: bool = True, readonly: bool = False, in_pid: int | None = None
) -> None:
    """Bind ``source`` onto ``target`` (recursively by default); ``readonly`` remounts it so."""

    def bind_here() -> None:
        _mount_call(source, target, None, MS_BIND | (MS_REC if recursive else 0), None)
        if readonly:
            _mount_call(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)

    script = 'mount "$1" "$2" "$3" && { [ "$4" = rw ] || mount -o remount,bind,ro "$3"; }'
    command = [
        "sh",
        "-c",
        script,
        "bind",
        "--rbind" if recursive else "--bind",
        _text(source),
        _text(target),
        "ro" if readonly else "rw",
    ]
    _in_mount_namespace(in_pid, bind_here, command, "bind")


def remount(target: Any, flags: int = 0, data: str | None = None, *, in_pid: int | None = None) -> None:
    """Change the flags of the mount at ``target`` (``MS_REMOUNT`` is added)."""
    command = [
        "mount",
        "-o",
        ",".join(["remount", *([data] if data else []), *(["ro"] if flags & MS_RDONLY else [])]),
        _text(target),
    ]
    _in_mount_namespace(in_pid, lambda: _mount_call(None, target, None, flags | MS_REMOUNT, data), command, "remount")


def umount(target: Any, *, lazy: bool = False, in_pid: int | None = None) -> None:
    """Unmount ``target`` (``lazy``: MNT_DETACH)."""

    def unmount() -> None:
        namespaces.check_call(_libc.umount2(_bytes(target), MNT_DETACH if lazy else 0), "umount", str(target))

    _in_mount_namespace(in_pid, unmount, ["umount", *(["-l"] if lazy else []), _text(target)], "umount")


def mkdir(path: Any, mode: int = 0o755, *, in_pid: int | None = None) -> None:
    """Make a directory (and its parents) as seen from the mount namespace of ``in_pid``."""

    def make() -> None:
        try:
            os.makedirs(path, mode, exist_ok=True)
        except OSError as error:
            raise LinxOSError.wrap("mkdir", error) from None

    _in_mount_namespace(in_pid, make, ["mkdir", "-p", "-m", oct(mode)[2:], _text(path)], "mkdir")


def pivot_root(new_root: Any, *, in_pid: int | None = None) -> None:
    """Make ``new_root`` the root of the mount namespace of ``in_pid`` and detach the old
    root, the way container runtimes do (``pivot_root(".", ".")`` then a lazy unmount). The
    workload starts in the new root once it proceeds (its cwd there is ``/``)."""

    def pivot() -> None:
        root = os.fsencode(new_root)
        _mount_call(root, root, None, MS_BIND | MS_REC, None)  # pivot_root needs a mount point
        descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(descriptor)
            namespaces.check_call(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root", str(new_root))
            namespaces.check_call(_libc.umount2(b".", MNT_DETACH), "umount", "old root")
            os.chdir("/")
        finally:
            os.close(descriptor)

    script = 'mount --rbind "$1" "$1" && cd "$1" && pivot_root . . && umount -l .'
    _in_mount_namespace(in_pid, pivot, ["sh", "-c", script, "pivot_root", _text(new_root)], "pivot_root")


def hostname(name: str, *, in_pid: int | None = None) -> None:
    """Set the hostname in the uts namespace of ``in_pid``. A root caller does it from a
    throwaway thread; an unprivileged one (whose workload owns its own user namespace, which a
    thread cannot join) runs ``hostname`` through the agent instead."""
    encoded = name.encode()
    if in_pid is not None and os.geteuid() != 0:
        _run_through_agent(in_pid, ["hostname", name], "hostname")
        return

    def set_name() -> None:
        namespaces.check_call(_libc.sethostname(encoded, len(encoded)), "sethostname", name)

    namespaces.run_in(in_pid, ["uts"], set_name)


def mount_proc(in_pid: int, target: str = "/proc") -> None:
    """A fresh procfs at ``target`` for the pid namespace of ``in_pid``, mounted by a process
    the agent starts inside that pid (and mount, and user) namespace. The same as
    ``mount("proc", target, "proc", in_pid=in_pid)``, with errors named ``mount_proc``."""
    _run_through_agent(in_pid, ["mount", "-t", "proc", "proc", target], "mount_proc")


def _run_through_agent(in_pid: int, argv: list[str], operation: str, timeout: float = 10.0) -> None:
    """Run a small command inside every namespace of ``in_pid`` (``process.enter``)."""
    session = P.enter(
        in_pid,
        argv=argv,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdio={"stdin": "devnull", "stdout": "devnull", "stderr": "inherit"},
        auto_proceed=True,
        owner=Mailbox(),
    )
    try:
        outcome = P.wait(session, timeout)
    finally:
        session.stop()
    if outcome != ("exited", 0):
        raise LinxError((operation, outcome), f"{' '.join(argv)} in the namespaces of pid {in_pid} failed: {outcome}")


__all__ = ["bind", "hostname", "mkdir", "mount", "mount_proc", "pivot_root", "remount", "umount"]
