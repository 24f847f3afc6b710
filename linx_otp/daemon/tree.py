"""Supervision trees declared in TOML: parsing and checking them, and building the plan.

A tree file has a ``[supervisor]`` table (strategy, max_restarts, max_seconds) and
``[[child]]`` tables: workloads (every spawn option, ``restart``, ``shutdown``, ``log``, a
``ready`` check and a ``[child.setup]`` table applied at the checkpoint) or nested supervisors (``type =
"supervisor"`` with their own ``[[child.child]]``). Every value is checked here, at load:
addresses with ``ipaddress``, interface names (at most 15 bytes), host names (RFC 1123),
finite durations, sizes (an int or ``"max"``). Every mistake is collected and reported at
once, each with the file and its key path (``child[2].setup.veth.address``) or, for TOML
syntax, the line. This module builds plans; it never starts a process itself.

String values may name the instance that runs the tree: ``${instance}`` (its name),
``${instance_tag}`` (at most 8 bytes, for link names) and ``${instance_net}`` (``10.78.N``, a
/24 of its own), so that two named instances of one file can run side by side.

>>> tree = parse_text('[[child]]\\nid = "hello"\\nargv = ["echo", "hi"]\\n', "inline.toml")
>>> tree.children[0].id, tree.children[0].options["argv"]
('hello', ['echo', 'hi'])
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import resource
import stat
import tomllib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from .. import options as session_options
from .. import readiness
from .. import supervisor as S
from ..actor import check_restart, check_shutdown
from ..backoff import check_backoff
from ..checkpoint import profiles
from ..checkpoint.cgroup import check_limit
from ..checkpoint.netlink import check_interface_name, check_ipv4_address, check_ipv4_prefixlen
from ..checkpoint.seccomp import Filter
from ..checkpoint.setup import (
    Limits,
    MountEntry,
    Setup,
    Veth,
    check_hostname,
    check_id_map,
    check_mounts,
    check_rootfs,
)
from ..errors import LinxValueError
from ..protocol import MODE_SPAWN
from ..readiness import Readiness

SUPERVISOR_KEYS = {"strategy", "max_restarts", "max_seconds"}
SESSION_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "argv": session_options.check_argv,
    "namespaces": session_options.check_namespaces,
    "env": session_options.check_env,
    "cwd": session_options.check_cwd,
    "no_new_privs": lambda value: session_options.check_bool("no_new_privs", value),
    "orphan_policy": session_options.check_orphan_policy,
    "user": session_options.check_user,
    "group": session_options.check_group,
    "extra_groups": lambda value: session_options.check_extra_groups(value, None),
    "umask": session_options.check_umask,
    "rlimits": lambda value: session_options.check_rlimits(_rlimits(value)),
    "capabilities": session_options.check_capabilities,
    "seccomp": lambda value: _seccomp(value),
    "output": session_options.check_output,
    "output_window": session_options.check_output_window,
}
BACKOFF_KEYS = ("restart_delay", "restart_backoff_max")
PROFILES = ("container",)
"""``profile = "container"``: ``linx_otp.profiles.container()`` merged into the child (its
namespaces added to the child's, its capabilities unless the child names its own, its seccomp
filter, no_new_privs, and a fresh masked /proc and read-only /sys in the child's set-up)."""
SECCOMP_KEYS = {"deny", "errno"}
WORKLOAD_KEYS = {"id", "type", "stdio", "restart", "shutdown", "log", "setup", "profile", "ready", *BACKOFF_KEYS} | set(
    SESSION_OPTION_CHECKS
)
NESTED_KEYS = {"id", "type", "restart", "shutdown", "child"} | SUPERVISOR_KEYS
SETUP_KEYS = {field.name for field in fields(Setup)}
SETUP_NAMESPACES = {
    "hostname": "uts",
    "veth": "net",
    "uid_map": "user",
    "gid_map": "user",
    "mounts": "mount",
    "proc": "mount",
    "sys": "mount",
    "masked": "mount",
    "rootfs": "mount",
}
"""The namespace each ``[child.setup]`` key needs the child to have (``proc`` needs pid too)."""
VETH_KEYS = {"host", "address", "prefixlen", "gateway", "host_address"}
CGROUP_LIMITS = {"memory_max": "memory", "pids_max": "pids", "cpu_max": "cpu"}
CAPTURE = "capture"
_CHILD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_INSTANCE = "default"
LOG_KEYS = {"path", "max_bytes", "keep"}
LOG_MAX_BYTES = 50 << 20
"""As supervisord's ``logfile_maxbytes``: a log is rotated once it would pass 50 MiB..."""
LOG_KEEP = 10
"""...and 10 rotated files are kept, as its ``logfile_backups``."""
LOG_KEEP_MAX = 1000
MAX_FILE_BYTES = 1 << 20
"""A tree file is read up to 1 MiB; a larger one is refused (``/dev/zero`` would never end)."""
FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
}


class TreeError(LinxValueError):
    """A tree file is wrong; ``reason`` is ``("bad_tree", file, ((where, what), ...))`` with
    every problem found, and the message has one ``file: where: what`` line for each."""

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file, self.problems = file, list(problems)
        super().__init__(("bad_tree", file, tuple(problems)), "\n".join(f"{file}: {w}: {what}" for w, what in problems))


@dataclass(frozen=True)
class LogFile:
    """Where a child's captured output is appended, and when it is rotated: once the file would
    pass ``max_bytes`` it is renamed ``PATH.1`` (``PATH.1`` to ``PATH.2``, …, up to ``PATH.KEEP``;
    the oldest goes)."""

    path: str
    max_bytes: int = LOG_MAX_BYTES
    keep: int = LOG_KEEP


@dataclass(frozen=True)
class Workload:
    id: str
    options: dict[str, Any]
    """Keyword arguments for ``process.child_spec`` except owner and auto_proceed."""
    capture: tuple[str, ...] = ()
    """Streams ("stdout", "stderr") captured as events, which the daemon prefixes with the id."""
    log: LogFile | None = None
    setup: Setup = field(default_factory=Setup)
    restart_delay: float = 0.0
    """Seconds its supervisor waits before restarting it after a crash (0: none, as in OTP)."""
    restart_backoff_max: float = 0.0
    """The delay doubles per consecutive crash up to this (at least ``restart_delay``)."""
    ready: Readiness | None = None
    """When it counts as started: its readiness check (``ready = { tcp = ... }``), if any."""


@dataclass(frozen=True)
class Group:
    id: str
    settings: dict[str, Any]
    children: list[Workload | Group]
    restart: str = "permanent"
    shutdown: Any = None


@dataclass(frozen=True)
class Tree:
    file: str
    settings: dict[str, Any]
    children: list[Workload | Group]

    def workloads(self) -> list[Workload]:
        return [child for child in self.walk() if isinstance(child, Workload)]

    def walk(self) -> list[Workload | Group]:
        """Every child, supervisors included, depth first in start order."""
        found: list = []

        def visit(children: list[Workload | Group]) -> None:
            for child in children:
                found.append(child)
                if isinstance(child, Group):
                    visit(child.children)

        visit(self.children)
        return found

    def parents(self) -> dict[str, str | None]:
        """child id → the id of the group holding it (None: the root supervisor)."""
        found: dict[str, str | None] = {}

        def visit(children: list[Workload | Group], parent: str | None) -> None:
            for child in children:
                found[child.id] = parent
                if isinstance(child, Group):
                    visit(child.children, child.id)

        visit(self.children, None)
        return found


def instance_values(instance: str) -> dict[str, str]:
    """What ``${instance}``, ``${instance_tag}`` and ``${instance_net}`` stand for.

    >>> instance_values("default")["instance_net"], instance_values("default")["instance_tag"]
    ('10.78.0', 'default')
    """
    checksum = zlib.crc32(instance.encode())
    tag = instance if len(instance.encode()) <= 8 else f"{instance[:3]}{checksum & 0xFFFFF:05x}"
    octet = 0 if instance == DEFAULT_INSTANCE else 1 + checksum % 254
    return {"instance": instance, "instance_tag": tag, "instance_net": f"10.78.{octet}"}


def _substitute(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in values.items():
            value = value.replace("${" + name + "}", text)
        return value
    if isinstance(value, list):
        return [_substitute(item, values) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, values) for key, item in value.items()}
    return value


def parse_file(path: str | Path, instance: str = DEFAULT_INSTANCE) -> Tree:
    """Read and check a tree file; raises ``TreeError`` naming every mistake. Never blocks: a
    FIFO, a device (``/dev/zero``) or a directory is refused, as is a file over ``MAX_FILE_BYTES``."""
    return parse_text(read_tree_file(path), str(path), instance)


def read_tree_file(path: str | Path) -> str:
    """A tree file's text, read without ever waiting: opened with O_NONBLOCK (a FIFO's open
    does not wait for a writer), refused unless it is a regular file, and at most
    ``MAX_FILE_BYTES`` read. Raises ``TreeError``.

    >>> read_tree_file("/dev/zero")
    Traceback (most recent call last):
    ...
    linx_otp.daemon.tree.TreeError: /dev/zero: file: is a character device, not a regular file; a tree file is a TOML file
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        raise TreeError(str(path), [("file", f"cannot read it: {error.strerror}")]) from None
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            what = FILE_KINDS.get(stat.S_IFMT(kind), "not a regular file")
            raise TreeError(str(path), [("file", f"is {what}, not a regular file; a tree file is a TOML file")])
        data = _read_at_most(fd, MAX_FILE_BYTES + 1)
    except OSError as error:
        raise TreeError(str(path), [("file", f"cannot read it: {error.strerror}")]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise TreeError(
            str(path), [("file", f"is larger than {MAX_FILE_BYTES >> 20} MiB, the most a tree file may be")]
        )
    try:
        return data.decode()
    except UnicodeDecodeError as error:
        raise TreeError(str(path), [("file", f"cannot read it: not UTF-8 ({error})")]) from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < limit:
        chunk = os.read(fd, limit - len(chunks))
        if not chunk:
            break
        chunks += chunk
    return bytes(chunks)


def parse_text(text: str, file: str, instance: str = DEFAULT_INSTANCE) -> Tree:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TreeError(file, [("syntax", str(error))]) from None  # tomllib names the line and column
    document = _substitute(document, instance_values(instance))
    checker = _Checker()
    checker.keys(document, {"supervisor", "child"}, "")
    settings = checker.supervisor_settings(document.get("supervisor", {}), "supervisor")
    children = checker.children(document.get("child"), "child")
    if checker.problems:
        raise TreeError(file, checker.problems)
    return Tree(file, settings, children)


class _SkipTable(Exception):
    """This table is too wrong to look further into; the checker goes on with the next."""


class _Checker:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.log_paths: dict[str, str] = {}
        """Each log file's resolved path → where in the tree it was given first."""
        self.problems: list[tuple[str, str]] = []

    def note(self, where: str, what: str) -> None:
        """Record a problem and go on checking."""
        self.problems.append((where or "top level", what))

    def skip(self, where: str, what: str) -> NoReturn:
        """Record a problem that makes the rest of the table meaningless."""
        self.note(where, what)
        raise _SkipTable

    def check(self, where: str, checker: Callable[[Any], Any], value: Any) -> Any:
        """``checker(value)``; a ``LinxValueError`` becomes a problem at ``where``."""
        try:
            return checker(value)
        except (LinxValueError, TypeError) as error:
            self.note(where, str(error))
            return None

    def keys(self, table: Any, allowed: set[str], where: str) -> bool:
        if not isinstance(table, dict):
            self.note(where, f"expected a table, got {table!r}")
            return False
        for unknown in sorted(set(table) - allowed):
            self.note(
                f"{where}.{unknown}" if where else unknown,
                f"unknown key; expected one of: {', '.join(sorted(allowed))}",
            )
        return True

    def supervisor_settings(self, table: Any, where: str) -> dict[str, Any]:
        if not self.keys(table, SUPERVISOR_KEYS, where):
            return {}
        settings = {key: table[key] for key in sorted(SUPERVISOR_KEYS) if key in table}
        for key, value in settings.items():
            self.check(f"{where}.{key}", functools.partial(_check_setting, key), value)
        return settings

    def children(self, tables: Any, where: str) -> list[Workload | Group]:
        if tables is None:
            self.note(where, "a tree needs at least one [[child]]")
            return []
        if not isinstance(tables, list):
            self.note(where, "expected [[child]] tables")
            return []
        found = []
        for index, table in enumerate(tables):
            try:
                found.append(self.child(table, f"{where}[{index}]"))
            except _SkipTable:
                pass
        return found

    def child_id(self, table: dict, where: str) -> str:
        child_id = table.get("id")
        if not isinstance(child_id, str) or not _CHILD_ID.match(child_id):
            self.skip(
                f"{where}.id", f"every child needs an id of 1 to 64 letters, digits, '-' and '_', not {child_id!r}"
            )
        if child_id in self.ids:
            self.note(f"{where}.id", f"duplicate id {child_id!r}: ids are unique across the whole tree")
        self.ids.add(child_id)
        return child_id

    def child(self, table: Any, where: str) -> Workload | Group:
        if not isinstance(table, dict):
            self.skip(where, "expected a table")
        kind = table.get("type", "worker")
        if kind == "supervisor":
            self.keys(table, NESTED_KEYS, where)
            child_id = self.child_id(table, where)
            settings = self.supervisor_settings({k: v for k, v in table.items() if k in SUPERVISOR_KEYS}, where)
            restart, shutdown = self.restart_and_shutdown(table, where, None)
            return Group(child_id, settings, self.children(table.get("child"), f"{where}.child"), restart, shutdown)
        if kind != "worker":
            self.skip(f"{where}.type", f"type is 'worker' or 'supervisor', not {kind!r}")
        self.keys(table, WORKLOAD_KEYS, where)
        child_id = self.child_id(table, where)
        if "argv" not in table:
            self.note(f"{where}.argv", "missing: every workload needs argv, a list of strings")
        restart, shutdown = self.restart_and_shutdown(table, where, 5.0)
        stdio, capture = self.stdio(table.get("stdio", "inherit"), f"{where}.stdio")
        options = {"argv": table.get("argv"), "stdio": stdio, "id": child_id, "restart": restart, "shutdown": shutdown}
        problems_before = len(self.problems)
        for key, checker in SESSION_OPTION_CHECKS.items():
            if key in table:
                value = tuple(table[key]) if key == "orphan_policy" and isinstance(table[key], list) else table[key]
                checked = self.check(f"{where}.{key}", checker, value)
                if key in ("rlimits", "seccomp"):
                    value = _rlimits(value) if key == "rlimits" else checked
                if key != "argv":
                    options[key] = value
        log = self.log(table.get("log"), f"{where}.log", capture)
        profile = self.profile(table, options, where)
        namespaces = options.get("namespaces", ())
        setup = self.setup(
            table.get("setup", {}), f"{where}.setup", set(namespaces if isinstance(namespaces, list) else ())
        )
        if profile is not None:
            setup = dataclasses.replace(setup, proc=profile.proc, sys=profile.sys, masked=profile.masked)
        if len(self.problems) == problems_before:  # each key is right: now how they go together
            session = {key: value for key, value in options.items() if key not in ("id", "restart", "shutdown")}
            self.check(where, lambda v: session_options.plan_session(mode=MODE_SPAWN, target=None, **v), session)
        delay, maximum = self.backoff(table, where)
        ready = self.ready(table["ready"], f"{where}.ready") if "ready" in table else None
        return Workload(child_id, options, capture, log, setup, delay, maximum, ready)

    def backoff(self, table: dict, where: str) -> tuple[float, float]:
        """``restart_delay`` and ``restart_backoff_max``, by the rule child specs use."""
        try:
            return check_backoff(table.get("restart_delay", 0.0), table.get("restart_backoff_max"))
        except LinxValueError as error:
            key = error.reason[0].removeprefix("bad_")
            self.note(f"{where}.{key}", str(error))
            return 0.0, 0.0

    def ready(self, table: Any, where: str) -> Readiness | None:
        """``ready = { tcp = "HOST:PORT" | file = "/PATH" | command = [...], timeout = S, interval = S }``:
        each key checked at its key path, then how they go together."""
        if not self.keys(table, set(readiness.KEYS), where):
            return None
        checked = {
            key: self.check(f"{where}.{key}", readiness.CHECKS[key], value)
            for key, value in table.items()
            if key in readiness.CHECKS
        }
        if None in checked.values() or len(checked) != len(table):
            return None  # the problems are noted already
        return self.check(where, lambda values: Readiness(**values), checked)

    def log(self, log: Any, where: str, capture: tuple[str, ...]) -> LogFile | None:
        """``log = "path"`` or ``log = { path = ..., max_bytes = ..., keep = ... }``."""
        if log is None:
            return None
        if not capture:
            self.note(where, 'a log needs stdio capturing a stream (stdio = "capture")')
        table: Any = {"path": log} if isinstance(log, str) else log
        if not self.keys(table, LOG_KEYS, where):
            return None
        path, max_bytes, keep = table.get("path"), table.get("max_bytes", LOG_MAX_BYTES), table.get("keep", LOG_KEEP)
        problems = len(self.problems)
        if not isinstance(path, str) or not path or "\0" in path:
            self.note(f"{where}.path" if isinstance(log, dict) else where, f"a log is a file path, not {path!r}")
        if not _is_int(max_bytes) or max_bytes < 1:
            self.note(f"{where}.max_bytes", f"max_bytes is a positive int number of bytes, not {max_bytes!r}")
        if not _is_int(keep) or not 0 <= keep <= LOG_KEEP_MAX:
            self.note(f"{where}.keep", f"keep is an int from 0 to {LOG_KEEP_MAX} (rotated files kept), not {keep!r}")
        if len(self.problems) != problems:
            return None
        first = self.log_paths.setdefault(os.path.realpath(path), where)  # one file, however it is named
        if first != where:
            self.note(where, f"{path!r} is also {first}: two children's logs would rotate each other's files")
            return None
        return LogFile(path, max_bytes, keep)

    def profile(self, table: dict, options: dict[str, Any], where: str) -> Setup | None:
        """Merge ``profile = "container"`` into ``options``; returns the profile's set-up."""
        if "profile" not in table:
            return None
        if table["profile"] not in PROFILES:
            self.note(
                f"{where}.profile", f"profile is one of {', '.join(map(repr, PROFILES))}, not {table['profile']!r}"
            )
            return None
        if "seccomp" in table:
            self.note(f"{where}.seccomp", "the container profile brings its own seccomp filter; leave seccomp out")
        hardening = profiles.container()
        own = options.get("namespaces", [])
        if isinstance(own, list):
            options["namespaces"] = own + [kind for kind in hardening["namespaces"] if kind not in own]
        options.setdefault("capabilities", hardening["capabilities"])
        options["seccomp"] = hardening["seccomp"]
        options["no_new_privs"] = True
        return hardening["setup"]

    def restart_and_shutdown(self, table: dict, where: str, default_shutdown: Any) -> tuple[str, Any]:
        restart = self.check(f"{where}.restart", check_restart, table.get("restart", "permanent"))
        shutdown = self.check(f"{where}.shutdown", check_shutdown, table.get("shutdown", default_shutdown))
        return restart, shutdown

    def stdio(self, stdio: Any, where: str) -> tuple[Any, tuple[str, ...]]:
        """The session's stdio ("capture" alone means stdout and stderr) and what it captures."""
        if stdio == CAPTURE:
            return {"stdout": CAPTURE, "stderr": CAPTURE}, ("stdout", "stderr")
        capture: tuple[str, ...] = ()
        if isinstance(stdio, dict):
            capture = tuple(stream for stream, directive in stdio.items() if directive == CAPTURE)
            stdio = dict(stdio)
        self.check(where, session_options.check_stdio, stdio)
        return stdio, capture

    def setup(self, table: Any, where: str, namespaces: set[str]) -> Setup:
        """``[child.setup]`` as a ``linx_otp.Setup``: each key checked at its key path by the
        check ``Setup`` itself uses, then the value built (which checks how keys go together)."""
        if not self.keys(table, SETUP_KEYS, where):
            return Setup()
        for key, namespace in SETUP_NAMESPACES.items():
            if key in table and namespace not in namespaces:
                self.note(f"{where}.{key}", f"needs the {namespace!r} namespace in this child's namespaces")
        if "proc" in table and "pid" not in namespaces:
            self.note(f"{where}.proc", "a fresh /proc needs the 'pid' namespace in this child's namespaces")
        if ("uid_map" in table) != ("gid_map" in table):
            missing = "gid_map" if "uid_map" in table else "uid_map"
            self.note(f"{where}.{missing}", "missing: uid_map and gid_map come together")
        values: dict[str, Any] = {}
        for key in ("uid_map", "gid_map"):
            if key in table:
                values[key] = self.check(f"{where}.{key}", functools.partial(check_id_map, key), table[key])
        if "hostname" in table:
            values["hostname"] = self.check(f"{where}.hostname", check_hostname, table["hostname"])
        if "veth" in table:
            values["veth"] = self.veth(table["veth"], f"{where}.veth")
        if "cgroup" in table:
            values["cgroup"] = self.cgroup(table["cgroup"], f"{where}.cgroup")
        if "mounts" in table:
            values["mounts"] = self.mounts(table["mounts"], f"{where}.mounts")
        for key in ("proc", "sys", "masked"):
            if key in table:
                values[key] = self.check(
                    f"{where}.{key}", functools.partial(session_options.check_bool, key), table[key]
                )
        if "rootfs" in table:
            values["rootfs"] = self.check(f"{where}.rootfs", check_rootfs, table["rootfs"])
        given = {key: value for key, value in values.items() if value is not None}
        if len(given) != len(values) or ("uid_map" in given) != ("gid_map" in given):
            return Setup()  # the problems are noted already
        return self.check(where, lambda v: Setup(**v), given) or Setup()

    def cgroup(self, cgroup: Any, where: str) -> Limits | None:
        if not self.keys(cgroup, set(CGROUP_LIMITS), where):
            return None
        limits = {key: (tuple(v) if isinstance(v, list) else v) for key, v in cgroup.items() if key in CGROUP_LIMITS}
        checked = [
            self.check(f"{where}.{key}", functools.partial(check_limit, CGROUP_LIMITS[key]), value)
            for key, value in limits.items()
        ]
        if None in checked or len(limits) != len(cgroup):
            return None
        return Limits(**limits)  # type: ignore[arg-type]  # each value checked above

    def mounts(self, entries: Any, where: str) -> tuple[MountEntry, ...] | None:
        if not isinstance(entries, list):
            self.note(where, "mounts is a list of tables: [{ target, source, type, readonly, options }, ...]")
            return None
        checked = [
            self.check(f"{where}[{index}]", lambda v: check_mounts([v])[0], entry)
            for index, entry in enumerate(entries)
        ]
        return None if None in checked else tuple(checked)

    def veth(self, veth: Any, where: str) -> Veth | None:
        if not self.keys(veth, VETH_KEYS, where):
            return None
        for key in ("host", "address", "prefixlen"):
            if key not in veth:
                self.note(f"{where}.{key}", "missing (host, address and prefixlen are required)")
        if "host" in veth:
            self.check(f"{where}.host", check_interface_name, veth["host"])
        for key in ("address", "gateway", "host_address"):
            if key in veth:
                self.check(f"{where}.{key}", check_ipv4_address, veth[key])
        if "prefixlen" in veth:
            self.check(f"{where}.prefixlen", check_ipv4_prefixlen, veth["prefixlen"])
        try:
            return Veth(**veth)
        except (LinxValueError, TypeError):
            return None  # each problem is noted above


def _rlimits(table: Any) -> Any:
    """TOML's view of rlimits: ``[soft, hard]`` arrays, and ``"infinity"`` for no limit."""
    if not isinstance(table, dict):
        return table

    def limit(value: Any) -> Any:
        return resource.RLIM_INFINITY if value == "infinity" else value

    return {name: tuple(map(limit, v)) if isinstance(v, list) else limit(v) for name, v in table.items()}


def _check_setting(key: str, value: Any) -> Any:
    return S.check_settings(**{key: value})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seccomp(table: Any) -> Filter:
    """``seccomp = { deny = ["name", ...], errno = N }``: a deny list (everything else allowed)."""
    if not isinstance(table, dict) or set(table) - SECCOMP_KEYS or not isinstance(table.get("deny"), list):
        raise LinxValueError(
            ("bad_seccomp", table), f"seccomp is {{ deny = [syscall names], errno = N (optional) }}, not {table!r}"
        )
    return Filter(deny=table["deny"], errno=table.get("errno", errno.EPERM))
