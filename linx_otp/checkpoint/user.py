"""User-namespace maps for a parked workload (README, "The checkpoint, composed"): plain procfs writes
against its host pid. The kernel accepts one write per map per namespace; unprivileged
writers must deny setgroups before writing a gid map, and may map only their own ids.

This module validates a map completely before writing anything, writes each map in one
``write``, and never rolls back a step that succeeded.

>>> render([(0, 1000, 1), (1, 100000, 65536)])
'0 1000 1\\n1 100000 65536\\n'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import LinxOSError, LinxValueError

Mapping = tuple[int, int, int]


@dataclass(frozen=True)
class MapEntry:
    """One line of a uid or gid map: ``length`` ids from ``inside`` map to ``outside``."""

    inside: int
    outside: int
    length: int


def _check_map(mappings: Any) -> list[Mapping]:
    if isinstance(mappings, (str, bytes)) or not isinstance(mappings, Iterable):
        raise LinxValueError(
            ("bad_map", "not_a_list"), f"a map is a list of (inside, outside, length), not {mappings!r}"
        )
    entries = list(mappings)
    if not entries:
        raise LinxValueError(("bad_map", "empty"), "a map needs at least one (inside, outside, length) entry")
    checked = []
    for entry in entries:
        fields = (entry.inside, entry.outside, entry.length) if isinstance(entry, MapEntry) else entry
        if not (
            isinstance(fields, (tuple, list))
            and len(fields) == 3
            and all(isinstance(value, int) and not isinstance(value, bool) for value in fields)
            and fields[0] >= 0
            and fields[1] >= 0
            and fields[2] > 0
        ):
            raise LinxValueError(
                ("bad_map", ("bad_entry", entry)),
                f"a map entry is (inside >= 0, outside >= 0, length > 0), not {entry!r}",
            )
        checked.append(tuple(fields))
    return checked


def render(mappings: Iterable[Mapping]) -> str:
    """The text the kernel expects: ``"inside outside length\\n"`` per entry."""
    return "".join(f"{inside} {outside} {length}\n" for inside, outside, length in _check_map(mappings))


def _write(pid: int, name: str, text: str, operation: str) -> None:
    path = f"/proc/{pid}/{name}"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as error:
        raise LinxOSError.wrap(operation, error) from None
    try:
        os.write(descriptor, text.encode())  # one write: the kernel takes a map whole or not at all
    except OSError as error:
        raise LinxOSError(operation, error.errno or 0, path) from None  # os.write's errors always carry one
    finally:
        os.close(descriptor)


def deny_setgroups(pid: int) -> None:
    """Write ``deny`` to ``/proc/<pid>/setgroups`` (needed before an unprivileged gid map)."""
    _write(pid, "setgroups", "deny", "deny_setgroups")


def set_uid_map(pid: int, mappings: Iterable[Mapping]) -> None:
    """Write the uid map of the user namespace of ``pid``: ``[(inside, outside, length), ...]``."""
    _write(pid, "uid_map", render(mappings), "set_uid_map")


def set_gid_map(pid: int, mappings: Iterable[Mapping]) -> None:
    """Write the gid map of the user namespace of ``pid``."""
    _write(pid, "gid_map", render(mappings), "set_gid_map")


def setup_maps(pid: int, *, uid: Iterable[Mapping], gid: Iterable[Mapping], setgroups: str = "deny") -> None:
    """``deny_setgroups`` (unless ``setgroups="skip"``), the uid map, then the gid map,
    stopping at the first error. Both maps are checked before anything is written."""
    if setgroups not in ("deny", "skip"):
        raise LinxValueError(("bad_setgroups", setgroups), f"setgroups must be 'deny' or 'skip', not {setgroups!r}")
    uid_text, gid_text = render(uid), render(gid)
    if setgroups == "deny":
        deny_setgroups(pid)
    _write(pid, "uid_map", uid_text, "set_uid_map")
    _write(pid, "gid_map", gid_text, "set_gid_map")


def _read(pid: int, name: str, operation: str) -> list[MapEntry]:
    path = f"/proc/{pid}/{name}"
    try:
        with open(path) as source:
            lines = source.read().splitlines()
    except OSError as error:
        raise LinxOSError.wrap(operation, error) from None
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3 and all(field.isdigit() for field in fields):
            entries.append(MapEntry(*map(int, fields)))
    return entries


def read_uid_map(pid: int) -> list[MapEntry]:
    """The uid map of ``pid``'s user namespace; ``[]`` while unwritten."""
    return _read(pid, "uid_map", "read_uid_map")


def read_gid_map(pid: int) -> list[MapEntry]:
    """The gid map of ``pid``'s user namespace; ``[]`` while unwritten."""
    return _read(pid, "gid_map", "read_gid_map")


def map_self(pid: int) -> None:
    """The canonical rootless mapping: root inside is the caller's uid and gid outside."""
    setup_maps(pid, uid=[(0, os.geteuid(), 1)], gid=[(0, os.getegid(), 1)])


__all__ = [
    "MapEntry",
    "deny_setgroups",
    "map_self",
    "read_gid_map",
    "read_uid_map",
    "render",
    "set_gid_map",
    "set_uid_map",
    "setup_maps",
]
