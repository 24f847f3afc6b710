"""cgroups for workloads (README, "The checkpoint, composed"): create one, put a parked workload in it by
host pid (so its first instruction already runs under the limits), set memory/pids/cpu
limits, freeze, thaw, kill everything in it, destroy it.

cgroup v2 is the handle's home (``cgroup.procs``, ``cgroup.freeze``, ``cgroup.kill``,
``cgroup.events``), at whatever mount point the host has. On hybrid hosts, where the resource
controllers are bound to v1 hierarchies (like this project's CI machines: v2 at
``/sys/fs/cgroup/unified`` with only hugetlb), a limit is applied through the v1 controller
of the same name, in a directory of the same relative name, and ``add_process`` writes the pid
to every directory of the handle. The layout is read from ``/proc/self/mountinfo``.

This module only writes cgroupfs files; it never starts a process.

>>> layout = detect()
>>> layout.v2_root is not None
True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LinxOSError, LinxValueError

CONTROLLERS = ("memory", "pids", "cpu")
V1_FILES = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}


@dataclass(frozen=True)
class Layout:
    """Where cgroup v2 is mounted and which v1 hierarchies exist (controller → mount point)."""

    v2_root: str | None
    v1_roots: dict[str, str]

    def v2_controllers(self) -> set[str]:
        if self.v2_root is None:
            return set()
        return set(Path(self.v2_root, "cgroup.controllers").read_text().split())


def detect() -> Layout:
    """Read the host's cgroup mounts from ``/proc/self/mountinfo``."""
    v2_root: str | None = None
    v1_roots: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _, options = after.split()[:3]
        mount_point = before.split()[4]
        if fstype == "cgroup2" and v2_root is None:
            v2_root = mount_point
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in CONTROLLERS or option == "freezer":
                    v1_roots.setdefault(option, mount_point)
    return Layout(v2_root, v1_roots)


@dataclass(frozen=True)
class Cgroup:
    """A cgroup: its v2 directory ``path``, and for each controller used through v1, that
    hierarchy's directory of the same name."""

    name: str
    path: str
    v1_paths: dict[str, str] = field(default_factory=dict)

    def directories(self) -> list[str]:
        return [self.path, *self.v1_paths.values()]


def _write(path: str | Path, text: str, operation: str) -> None:
    try:
        with open(path, "w") as target:
            target.write(text)
    except OSError as error:
        raise LinxOSError(operation, error.errno or 0, str(path)) from None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name.split("/"):
        raise LinxValueError(
            ("bad_cgroup_name", name), f"a cgroup name is a relative path like 'linx/web', not {name!r}"
        )
    return name


def check_limit(controller: str, value: Any) -> str:
    """A limit checked and rendered as cgroupfs text: ``memory``/``pids`` take an int >= 0 or
    ``"max"``, ``cpu`` takes ``(quota_us, period_us)`` or ``"max"``. Raises ``LinxValueError``.

    >>> check_limit("pids", 32), check_limit("cpu", (20000, 100000))
    ('32', '20000 100000')
    """
    if controller == "cpu":
        if value == "max":
            return "max"
        if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
            return f"{value[0]} {value[1]}"
        raise LinxValueError(("bad_cpu_max", value), f"cpu_max is (quota_us, period_us) or 'max', not {value!r}")
    if value == "max" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return str(value)
    raise LinxValueError((f"bad_{controller}_max", value), f"{controller}_max is an int >= 0 or 'max', not {value!r}")


def _plan_controllers(layout: Layout, limits: dict[str, Any]) -> dict[str, str]:
    """controller → "v2" or "v1" for each limit asked for; refuses before anything is made."""
    if layout.v2_root is None:
        raise LinxValueError("no_cgroup2", "no cgroup2 filesystem is mounted on this host")
    available = layout.v2_controllers()
    plan = {}
    for controller, value in limits.items():
        check_limit(controller, value)
        if controller in available:
            plan[controller] = "v2"
        elif controller in layout.v1_roots:
            plan[controller] = "v1"
        else:
            raise LinxValueError(
                ("no_controller", controller), f"the {controller} controller is in neither cgroup v2 nor v1 here"
            )
    return plan


def _enable_v2(root: Path, name: str, controller: str) -> None:
    directory = root
    for part in name.split("/")[:-1] + [None]:
        subtree = directory / "cgroup.subtree_control"
        if controller not in subtree.read_text().split():
            _write(subtree, f"+{controller}", "enable_controller")
        if part is None:
            break
        directory = directory / part


def create(
    name: str,
    *,
    memory_max: int | str | None = None,
    pids_max: int | str | None = None,
    cpu_max: tuple[int, int] | str | None = None,
    layout: Layout | None = None,
) -> Cgroup:
    """Make cgroup ``name`` (a relative path; existing directories are reused) with the limits
    given. A limit the host cannot enforce is refused before anything is created."""
    name = _check_name(name)
    layout = layout or detect()
    limits = {c: v for c, v in (("memory", memory_max), ("pids", pids_max), ("cpu", cpu_max)) if v is not None}
    plan = _plan_controllers(layout, limits)
    assert layout.v2_root is not None  # _plan_controllers refused a host without one
    root = Path(layout.v2_root)
    for controller, where in plan.items():
        if where == "v2":
            _enable_v2(root, name, controller)
    v1_paths = {c: str(Path(layout.v1_roots[c], name)) for c, where in plan.items() if where == "v1"}
    cgroup = Cgroup(name, str(root / name), v1_paths)
    for directory in cgroup.directories():
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise LinxOSError.wrap("create", error) from None
    for controller, value in limits.items():
        set_limit(cgroup, controller, value)
    return cgroup


def set_limit(cgroup: Cgroup, controller: str, value: Any) -> None:
    """Set ``memory`` (bytes), ``pids`` (count) or ``cpu`` ((quota_us, period_us)) to a value
    or ``"max"``, through v2 or, for a controller the handle uses through v1, v1."""
    text = check_limit(controller, value)
    if controller in cgroup.v1_paths:
        directory = Path(cgroup.v1_paths[controller])
        if controller == "cpu":
            quota, _, period = text.partition(" ")
            if period:
                _write(directory / "cpu.cfs_period_us", period, "set_cpu_max")
            _write(directory / "cpu.cfs_quota_us", "-1" if quota == "max" else quota, "set_cpu_max")
        else:
            _write(
                directory / V1_FILES[controller],
                "-1" if text == "max" and controller == "memory" else text,
                f"set_{controller}_max",
            )
        return
    _write(Path(cgroup.path, f"{controller}.max"), text, f"set_{controller}_max")


def set_memory_max(cgroup: Cgroup, value: int | str) -> None:
    set_limit(cgroup, "memory", value)


def set_pids_max(cgroup: Cgroup, value: int | str) -> None:
    set_limit(cgroup, "pids", value)


def set_cpu_max(cgroup: Cgroup, value: tuple[int, int] | str) -> None:
    set_limit(cgroup, "cpu", value)


def add_process(cgroup: Cgroup, pid: int) -> None:
    """Move ``pid`` (a host pid; a parked child is the usual one) and its future children in."""
    for directory in cgroup.directories():
        _write(Path(directory, "cgroup.procs"), str(pid), "add_process")


def processes(cgroup: Cgroup) -> list[int]:
    """The pids in the cgroup (v2 view)."""
    return [int(pid) for pid in Path(cgroup.path, "cgroup.procs").read_text().split()]


def events(cgroup: Cgroup) -> dict[str, int]:
    """``cgroup.events``: ``{"populated": 0|1, "frozen": 0|1}``."""
    return {
        key: int(value)
        for key, value in (line.split() for line in Path(cgroup.path, "cgroup.events").read_text().splitlines())
    }


def _set_frozen(cgroup: Cgroup, frozen: int, timeout: float) -> None:
    _write(Path(cgroup.path, "cgroup.freeze"), str(frozen), "freeze" if frozen else "thaw")
    deadline = time.monotonic() + timeout
    while events(cgroup).get("frozen") != frozen and time.monotonic() < deadline:
        time.sleep(0.001)


def freeze(cgroup: Cgroup, timeout: float = 1.0) -> None:
    """Freeze every process in it; returns once the kernel reports it frozen (or after timeout)."""
    _set_frozen(cgroup, 1, timeout)


def thaw(cgroup: Cgroup, timeout: float = 1.0) -> None:
    _set_frozen(cgroup, 0, timeout)


def kill(cgroup: Cgroup) -> None:
    """SIGKILL every process in it and its descendants (``cgroup.kill``)."""
    _write(Path(cgroup.path, "cgroup.kill"), "1", "kill")


def remove_empty(layout: Layout, name: str) -> None:
    """Remove directory ``name`` (relative, like ``linx-otp/web``) from every hierarchy, if it
    is there and empty; a parent a caller made for its own children, not something populated."""
    for root in [layout.v2_root, *layout.v1_roots.values()]:
        if root is None:
            continue
        try:
            os.rmdir(Path(root, _check_name(name)))
        except OSError:
            pass  # absent, or still holding children or processes: not ours to force


def destroy(cgroup: Cgroup, *, kill_first: bool = False, timeout: float = 5.0) -> None:
    """Remove the cgroup's directories (not parents it may have created). With ``kill_first``
    its processes are killed and awaited first; otherwise a populated cgroup raises EBUSY."""
    if kill_first and os.path.isdir(cgroup.path):
        kill(cgroup)
        deadline = time.monotonic() + timeout
        while events(cgroup).get("populated") and time.monotonic() < deadline:
            time.sleep(0.001)
    for directory in reversed(cgroup.directories()):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise LinxOSError.wrap("destroy", error) from None


__all__ = [
    "Cgroup",
    "Layout",
    "add_process",
    "check_limit",
    "create",
    "destroy",
    "detect",
    "events",
    "freeze",
    "kill",
    "processes",
    "remove_empty",
    "set_cpu_max",
    "set_limit",
    "set_memory_max",
    "set_pids_max",
    "thaw",
]
