"""The one checkpoint set-up (docs/hardening.md, "One checkpoint set-up"): ``Setup``, a frozen value whose fields are the keys of a
tree file's ``[child.setup]``, and its ``apply``, the only place a parked child is configured
from the host. The daemon, ``linx-otp spawn`` and ``P.spawn(setup=)`` all run it.

Order of ``apply``: uid/gid maps, hostname, veth, cgroup, then the mounts in the child's mount
namespace (``mounts``, a fresh ``/proc``, a read-only ``/sys``, Docker's masks) and last
``pivot_root`` into ``rootfs``. What it created on the host (the cgroup, the veth's host end) is
released by the callable ``apply`` returns, which the session calls when the incarnation ends;
a failing ``apply`` releases what it had made before raising.

Mount targets are resolved inside the rootfs with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS)`` and mounted on through the resolved descriptor, so a symbolic link a
previous incarnation planted in a reused rootfs cannot send a mount outside it (runc's
CVE-2021-30465). This module never touches the host's own mount namespace.

>>> setup = Setup(hostname="box", cgroup={"pids_max": 16})
>>> setup.hostname, setup.cgroup.pids_max, bool(Setup())
('box', 16, False)
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import LinxError, LinxOSError, LinxValueError
from ..libc import libc
from . import cgroup as Cgroup
from . import mount as Mount
from . import namespaces as Namespaces
from . import netlink as Netlink
from . import user as User

HOSTNAME_MAX_BYTES = 64
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
"""Docker's masked paths (moby ``daemon/pkg/oci/defaults.go``): a file gets /dev/null bound
over it, a directory an empty read-only tmpfs. Docker also masks each CPU's
``thermal_throttle`` directory; so does ``masked`` (``_thermal_throttle``)."""

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
"""Docker's read-only paths: bound onto themselves, read-only."""

NOSUID_NODEV_NOEXEC = Mount.MS_NOSUID | Mount.MS_NODEV | Mount.MS_NOEXEC
READ_ONLY_NOSUID_NODEV_NOEXEC = Mount.MS_RDONLY | NOSUID_NODEV_NOEXEC

SYS_OPENAT2 = 437  # x86_64 and i386 alike
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_OPEN_HOW = struct.Struct("QQQ")  # struct open_how: flags, mode, resolve


# ---- the values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Veth:
    """A veth pair: ``host`` on the host (with ``host_address`` if given), its peer ``eth0`` in
    the child's netns with ``address/prefixlen`` and a default route via ``gateway``."""

    host: str
    address: str
    prefixlen: int
    gateway: str | None = None
    host_address: str | None = None

    def __post_init__(self) -> None:
        Netlink.check_interface_name(self.host)
        for value in (self.address, self.gateway, self.host_address):
            if value is not None:
                Netlink.check_ipv4_address(value)
        Netlink.check_ipv4_prefixlen(self.prefixlen)


@dataclass(frozen=True)
class Limits:
    """cgroup limits: ``memory_max`` and ``pids_max`` an int or ``"max"``, ``cpu_max``
    ``(quota_us, period_us)`` or ``"max"``."""

    memory_max: int | str | None = None
    pids_max: int | str | None = None
    cpu_max: tuple[int, int] | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpu_max, list):
            object.__setattr__(self, "cpu_max", tuple(self.cpu_max))
        for key, value in self.given().items():
            Cgroup.check_limit(key.removesuffix("_max"), value)

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class MountEntry:
    """One mount in the child: ``type="bind"`` binds ``source`` (a host path) onto ``target``;
    any other type mounts a fresh filesystem of that type (``source`` defaults to the type).
    ``target`` is a path inside the rootfs (or the child's ``/``), resolved there without
    leaving it; it must exist."""

    target: str
    source: str | None = None
    type: str = "bind"
    readonly: bool = False
    options: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target.startswith("/") or "\0" in self.target:
            raise LinxValueError(("bad_mount", self.target), f"a mount target is an absolute path, not {self.target!r}")
        if not isinstance(self.type, str) or not self.type or "\0" in self.type:
            raise LinxValueError(("bad_mount", self.type), f"a mount type is 'bind' or a filesystem, not {self.type!r}")
        if self.type == "bind" and not (isinstance(self.source, str) and self.source.startswith("/")):
            raise LinxValueError(("bad_mount", self.source), f"a bind needs an absolute source, not {self.source!r}")
        if self.source is not None and (not isinstance(self.source, str) or "\0" in self.source):
            raise LinxValueError(("bad_mount", self.source), f"a mount source is a string, not {self.source!r}")
        if not isinstance(self.readonly, bool):
            raise LinxValueError(("bad_mount", self.readonly), f"readonly is true or false, not {self.readonly!r}")
        if self.options is not None and (not isinstance(self.options, str) or "\0" in self.options):
            raise LinxValueError(("bad_mount", self.options), f"options is a string, not {self.options!r}")


Release = Callable[[], None]
"""What ``apply`` returns: releases what it created on the host (idempotent)."""


@dataclass(frozen=True)
class Setup:
    """Checkpoint set-up for one child, applied from the host while it is parked. Every field
    is a key of a tree file's ``[child.setup]``; each is checked when the value is made.

    ``uid_map``/``gid_map`` (together; needs a user namespace), ``hostname`` (uts), ``veth``
    (net; a ``Veth`` or its fields as a mapping), ``cgroup`` (a ``Limits`` or a mapping),
    ``mounts`` (``MountEntry`` values or mappings; needs mount), ``proc`` (a fresh /proc for the
    child's pid namespace), ``sys`` (a fresh read-only /sys), ``masked`` (Docker's masked and
    read-only paths over them), ``rootfs`` (``pivot_root`` into it, last).

    Callable: ``setup(host_pid)`` is ``setup.apply(host_pid)``.

    >>> Setup(uid_map=[(0, 1000, 1)])
    Traceback (most recent call last):
    ...
    linx_otp.errors.LinxValueError: uid_map and gid_map come together
    """

    uid_map: tuple[tuple[int, int, int], ...] | None = None
    gid_map: tuple[tuple[int, int, int], ...] | None = None
    hostname: str | None = None
    veth: Veth | None = None
    cgroup: Limits | None = None
    mounts: tuple[MountEntry, ...] = ()
    proc: bool = False
    sys: bool = False
    masked: bool = False
    rootfs: str | None = None

    def __post_init__(self) -> None:
        convert = {
            "uid_map": lambda value: check_id_map("uid_map", value),
            "gid_map": lambda value: check_id_map("gid_map", value),
            "hostname": check_hostname,
            "veth": lambda value: _table(Veth, "veth", value),
            "cgroup": lambda value: _table(Limits, "cgroup", value),
            "rootfs": check_rootfs,
        }
        for name, check in convert.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(value))
        object.__setattr__(self, "mounts", check_mounts(self.mounts))
        for name in ("proc", "sys", "masked"):
            if not isinstance(getattr(self, name), bool):
                raise LinxValueError((f"bad_{name}", getattr(self, name)), f"{name} is true or false")
        if (self.uid_map is None) != (self.gid_map is None):
            raise LinxValueError("bad_map", "uid_map and gid_map come together")

    def __bool__(self) -> bool:
        return self != Setup()

    def __call__(self, host_pid: int) -> Release:
        return self.apply(host_pid)

    def apply(
        self,
        host_pid: int,
        *,
        cgroup_name: str | None = None,
        link_alias: str | None = None,
        claim_link: Callable[[Any, str, str | None], None] | None = None,
    ) -> Release:
        """Configure the parked child ``host_pid``; returns the release of what was created.

        ``cgroup_name`` (default ``linx-otp-setup-<pid>-<host_pid>``, scoped to this process),
        ``link_alias`` (marks the veth's host end as its owner's) and ``claim_link(host, name,
        host_address)`` (refuses a link or address another owner holds) are how the daemon
        scopes what it creates to its instance. Raises what a step raised (an ``OSError`` for
        the kernel's refusals), after releasing what earlier steps made."""
        created = _Created()
        try:
            if self.uid_map is not None and self.gid_map is not None:
                User.setup_maps(host_pid, uid=self.uid_map, gid=self.gid_map)
            if self.hostname is not None:
                Mount.hostname(self.hostname, in_pid=host_pid)
            if self.veth is not None:
                created.link = _veth(self.veth, host_pid, link_alias, claim_link)
            if self.cgroup is not None:
                name = cgroup_name or f"linx-otp-setup-{os.getpid()}-{host_pid}"
                created.cgroup = Cgroup.create(name, **self.cgroup.given())
                Cgroup.add_process(created.cgroup, host_pid)
            if self.mounts or self.proc or self.sys or self.masked or self.rootfs:
                _mounts(self, host_pid)
        except BaseException:
            created.release()
            raise
        return created.release


@dataclass
class _Created:
    """What one ``apply`` made on the host."""

    link: str | None = None
    cgroup: Cgroup.Cgroup | None = None

    def release(self) -> None:
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            Cgroup.destroy(cgroup, kill_first=True)
        if self.link is not None:
            link, self.link = self.link, None
            with Netlink.open() as host:  # gone with the child's netns, usually
                Netlink.delete_link(host, link, missing_ok=True)


# ---- checks (one per field; the tree file's checker calls them with its key paths) -----------


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise LinxValueError((f"bad_{name}", value), f"{name} is a table (mapping), not {value!r}")
    return dict(value)


def _table(kind: type, name: str, value: Any) -> Any:
    """A ``Veth`` or ``Limits`` given as itself or as a mapping of its fields."""
    if isinstance(value, kind):
        return value
    table = _mapping(name, value)
    unknown = set(table) - {f.name for f in fields(kind)}
    if unknown:
        expected = ", ".join(f.name for f in fields(kind))
        raise LinxValueError((f"bad_{name}", sorted(unknown)), f"{name} has the keys {expected}, not {sorted(unknown)}")
    try:
        return kind(**table)
    except TypeError as error:  # a required field missing
        raise LinxValueError((f"bad_{name}", table), f"{name}: {error}") from None


def check_id_map(name: str, entries: Any) -> tuple[tuple[int, int, int], ...]:
    """A uid or gid map: a list of ``(inside, outside, length)``."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
        raise LinxValueError("bad_map", f"{name} is a list of [inside, outside, length], not {entries!r}")
    mapped = tuple(tuple(entry) if isinstance(entry, list) else entry for entry in entries)
    try:
        User.render(mapped)
    except LinxError as error:
        raise LinxValueError("bad_map", f"{name} is a list of [inside, outside, length]: {error}") from None
    return mapped


def check_hostname(name: Any) -> str:
    """A host name (RFC 1123): labels of letters, digits and '-', at most 64 bytes in all.

    >>> check_hostname("web-1.example")
    'web-1.example'
    """
    if (
        not isinstance(name, str)
        or not 1 <= len(name.encode()) <= HOSTNAME_MAX_BYTES
        or not all(_HOSTNAME_LABEL.match(label) for label in name.split("."))
    ):
        raise LinxValueError(
            ("bad_hostname", name),
            f"a host name is at most {HOSTNAME_MAX_BYTES} bytes of dot-separated labels "
            f"(letters, digits, '-', not at either end), not {name!r}",
        )
    return name


def check_rootfs(rootfs: Any) -> str:
    """An absolute path (a directory checked when applied, in the child's mount namespace)."""
    if isinstance(rootfs, os.PathLike):
        rootfs = os.fspath(rootfs)
    if not isinstance(rootfs, str) or not rootfs.startswith("/") or "\0" in rootfs or rootfs.rstrip("/") == "":
        raise LinxValueError(("bad_rootfs", rootfs), f"rootfs is an absolute path to a directory, not {rootfs!r}")
    return rootfs.rstrip("/")


def check_mounts(mounts: Any) -> tuple[MountEntry, ...]:
    if isinstance(mounts, (str, bytes, Mapping)) or not isinstance(mounts, Iterable):
        raise LinxValueError(("bad_mounts", mounts), f"mounts is a list of mount tables, not {mounts!r}")
    checked = []
    for entry in mounts:
        if isinstance(entry, MountEntry):
            checked.append(entry)
            continue
        table = _mapping("mount", entry)
        unknown = set(table) - {f.name for f in fields(MountEntry)}
        if unknown or "target" not in table:
            raise LinxValueError(
                ("bad_mount", entry), f"a mount has target and optionally source, type, readonly, options: {entry!r}"
            )
        checked.append(MountEntry(**table))
    return tuple(checked)


# ---- applying ----------------------------------------------------------------------------------


def _veth(veth: Veth, pid: int, alias: str | None, claim: Callable[[Any, str, str | None], None] | None) -> str:
    with Netlink.open() as host:
        if claim is not None:
            claim(host, veth.host, veth.host_address)
        Netlink.setup_veth(
            pid,
            host_name=veth.host,
            address=veth.address,
            prefixlen=veth.prefixlen,
            gateway=veth.gateway,
            host_address=veth.host_address,
            host=host,
        )
        if alias is not None:
            Netlink.set_alias(host, veth.host, alias)
    return veth.host


def _mounts(setup: Setup, host_pid: int) -> None:
    """Everything of ``setup`` in the child's mount namespace, from one thread there (root), or
    step by step through the agent (an unprivileged caller, who cannot join it)."""
    root = setup.rootfs or ""
    if root:
        for directory in [name for name in ("proc", "sys") if getattr(setup, name)]:
            _require_directory(host_pid, root, f"/{directory}")
    if os.geteuid() != 0:
        _mounts_through_agent(setup, host_pid)
        return

    def in_the_childs_namespaces() -> bool:
        _work_from_the_hosts_proc()
        for entry in setup.mounts:
            _mount_entry(root, entry)
        if setup.proc and not _mount_proc_for(host_pid, root):
            return False
        _finish_mounts(setup, root)
        return True

    # One thread in the child's mount and net namespaces does it all where the kernel can mount
    # a proc for another pid namespace (procfs's pidns=); elsewhere the proc goes through the agent.
    if not Namespaces.run_in(host_pid, ["net", "mount"], in_the_childs_namespaces):
        Mount.mount_proc(host_pid, f"{root}/proc")
        Namespaces.run_in(host_pid, ["net", "mount"], lambda: _finish_mounts(setup, root, from_the_hosts_proc=True))


def _work_from_the_hosts_proc() -> None:
    """Make this thread's working directory the host's /proc as this mount namespace has it
    now: descriptors are then named ``thread-self/fd/N`` relative to it, which still works once
    a fresh proc of the child's pid namespace (where this thread has no pid) covers ``/proc``.
    The thread has its own fs struct (``namespaces.run_in`` unshares it), so only it moves."""
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fchdir(proc)
    finally:
        os.close(proc)
    if not os.path.isdir("thread-self/fd"):
        raise LinxOSError("setup", errno.ENOENT, "/proc/thread-self/fd (no proc of this thread's pid namespace)")


def _finish_mounts(setup: Setup, root: str, *, from_the_hosts_proc: bool = False) -> None:
    """/sys, the masks and ``pivot_root``, from a thread in the child's mount and net namespaces."""
    if from_the_hosts_proc:
        _work_from_the_hosts_proc()
    if setup.sys:
        with _resolved(root, "/sys") as target:  # a sysfs shows the netns of its mounter
            Mount.mount("sysfs", target, "sysfs", READ_ONLY_NOSUID_NODEV_NOEXEC)
    if setup.masked:
        _mask(root)
    if root:
        Mount.pivot_root(root)


def _mounts_through_agent(setup: Setup, host_pid: int) -> None:
    """An unprivileged caller's path: each mount is ``mount`` run by the agent inside the child's
    user and mount namespaces (where nothing of the host is writable to plant links into)."""
    root = setup.rootfs or ""
    for entry in setup.mounts:
        if entry.type == "bind":
            Mount.bind(entry.source, root + entry.target, readonly=entry.readonly, in_pid=host_pid)
        else:
            flags = Mount.MS_RDONLY if entry.readonly else 0
            source = entry.source or entry.type
            Mount.mount(source, root + entry.target, entry.type, flags, entry.options, in_pid=host_pid)
    if setup.proc:
        Mount.mount_proc(host_pid, f"{root}/proc")
    if setup.sys:
        Mount.mount("sysfs", f"{root}/sys", "sysfs", data="ro,nosuid,nodev,noexec", in_pid=host_pid)
    if setup.masked:
        _mask_through_agent(root, host_pid)
    if root:
        Mount.pivot_root(root, in_pid=host_pid)


def _require_directory(host_pid: int, root: str, path: str) -> None:
    seen = f"/proc/{host_pid}/root{root}{path}"
    try:
        mode = os.lstat(seen).st_mode
    except OSError as error:
        raise LinxOSError("setup", error.errno or errno.ENOENT, f"{root}{path}") from None
    if not stat.S_ISDIR(mode):
        raise LinxOSError("setup", errno.ENOTDIR, f"{root}{path} (the rootfs needs this directory)")


_libc = libc


def open_in_root(root: str, path: str) -> int:
    """An ``O_PATH`` descriptor of ``path`` resolved inside ``root`` as if it were ``/``:
    ``..`` stops at ``root`` and every symbolic link (absolute ones too) is resolved inside it;
    ``/proc/*/fd`` style magic links are refused. Raises ``LinxOSError``."""
    directory = os.open(root or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return open_beneath(directory, path, f"{root}{path}")
    finally:
        os.close(directory)


def open_beneath(directory: int, path: str, shown: str) -> int:
    """``open_in_root`` for a root given as a descriptor (``shown`` names the path in errors)."""
    how = _OPEN_HOW.pack(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    result = _libc.syscall(
        SYS_OPENAT2, ctypes.c_int(directory), os.fsencode(path.lstrip("/") or "."), how, ctypes.c_size_t(len(how))
    )
    if result < 0:
        raise LinxOSError("openat2", ctypes.get_errno(), shown)
    return result


@contextmanager
def _resolved(root: str, path: str):
    """``path`` inside ``root`` as a ``thread-self/fd/N`` name (relative to the host's /proc,
    this thread's working directory) to mount on: the kernel mounts on what the descriptor is,
    whatever the path's components have become since."""
    descriptor = open_in_root(root, path)
    try:
        yield f"thread-self/fd/{descriptor}"
    finally:
        os.close(descriptor)


def _kind_in_root(root: str, path: str) -> str | None:
    """ "file", "directory" or None (absent)."""
    try:
        descriptor = open_in_root(root, path)
    except LinxOSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
    finally:
        os.close(descriptor)
    return "directory" if stat.S_ISDIR(mode) else "file"


def _mount_entry(root: str, entry: MountEntry) -> None:
    if entry.type == "bind":
        _bind(entry.source, root, entry.target, readonly=entry.readonly)
        return
    with _resolved(root, entry.target) as target:
        flags = Mount.MS_RDONLY if entry.readonly else 0
        Mount.mount(entry.source or entry.type, target, entry.type, flags, entry.options)


def _bind(source: str | None, root: str, path: str, *, readonly: bool = False, recursive: bool = True) -> None:
    """Bind ``source`` (None: ``path`` itself, resolved in ``root``) onto ``path`` in ``root``;
    ``readonly`` remounts the new mount, found by resolving ``path`` again (the first
    descriptor still names what is now underneath)."""
    with _resolved(root, path) as target:
        Mount.bind(target if source is None else source, target, recursive=recursive)
    if readonly:
        with _resolved(root, path) as target:
            Mount.remount(target, Mount.MS_BIND | Mount.MS_RDONLY)


def _mount_proc_for(host_pid: int, root: str) -> bool:
    """A proc for the pid namespace of ``host_pid`` at ``root/proc``, from a thread in its
    mount namespace, with procfs's ``pidns=`` option; False where the kernel does not have it."""
    with _resolved(root, "/proc") as target:
        try:
            Mount.mount("proc", target, "proc", NOSUID_NODEV_NOEXEC, f"pidns=/proc/{host_pid}/ns/pid")
        except LinxOSError as error:
            if error.errno == errno.EINVAL:
                return False
            raise
    return True


def _mask(root: str) -> None:
    """Docker's masks and read-only paths, from a thread in the child's mount namespace."""
    for path in (*MASKED_PATHS, *_thermal_throttle(f"{root}/sys/devices/system/cpu")):
        match _kind_in_root(root, path):
            case "directory":
                with _resolved(root, path) as target:
                    Mount.mount("tmpfs", target, "tmpfs", READ_ONLY_NOSUID_NODEV_NOEXEC)
            case "file":
                _bind("/dev/null", root, path, recursive=False)
    for path in READONLY_PATHS:
        if _kind_in_root(root, path) is not None:
            _bind(None, root, path, readonly=True)


def _mask_through_agent(root: str, host_pid: int) -> None:
    seen = f"/proc/{host_pid}/root"
    for path in (*MASKED_PATHS, *_thermal_throttle(f"{seen}{root}/sys/devices/system/cpu")):
        match _kind(f"{seen}{root}{path}"):
            case "directory":
                Mount.mount("tmpfs", root + path, "tmpfs", data="ro,nosuid,nodev,noexec", in_pid=host_pid)
            case "file":
                Mount.bind("/dev/null", root + path, recursive=False, in_pid=host_pid)
    for path in READONLY_PATHS:
        if _kind(f"{seen}{root}{path}") is not None:
            Mount.bind(root + path, root + path, readonly=True, in_pid=host_pid)


def _kind(path: str) -> str | None:
    """ "file", "directory" or None (absent, or a symbolic link, which is never followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return "directory"
    return None if stat.S_ISLNK(mode) else "file"


def _thermal_throttle(cpus: str) -> list[str]:
    return [f"/sys/devices/system/cpu/{cpu.name}/thermal_throttle" for cpu in sorted(Path(cpus).glob("cpu[0-9]*"))]


__all__ = [
    "Limits",
    "MountEntry",
    "Release",
    "Setup",
    "Veth",
    "check_hostname",
    "check_id_map",
    "open_beneath",
    "open_in_root",
]
