"""Supervision trees declared in TOML: parsing and checking them, and building child specs.

A tree file has a ``[supervisor]`` table (strategy, max_restarts, max_seconds) and
``[[child]]`` tables: workloads (every spawn option, ``restart``, ``shutdown``, and a
``[child.setup]`` table applied at the checkpoint) or nested supervisors (``type =
"supervisor"`` with their own ``[[child.child]]``). Every mistake is reported with the file
and the key path (``child[2].setup.veth.address``) or, for TOML syntax, the line, and nothing
is started. This module builds specs and plans; it never starts a process itself.

>>> tree = parse_text('[[child]]\\nid = "hello"\\nargv = ["echo", "hi"]\\n', "inline.toml")
>>> tree.children[0].id, tree.children[0].options["argv"]
('hello', ['echo', 'hi'])
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as session_options
from . import supervisor as S
from .actor import check_restart, check_shutdown
from .errors import LinxError, LinxValueError
from .protocol import MODE_SPAWN
from .user import render

SUPERVISOR_KEYS = {"strategy", "max_restarts", "max_seconds"}
WORKLOAD_KEYS = {
    "id",
    "type",
    "argv",
    "namespaces",
    "env",
    "cwd",
    "stdio",
    "restart",
    "shutdown",
    "no_new_privs",
    "orphan_policy",
    "log",
    "setup",
}
NESTED_KEYS = {"id", "type", "restart", "shutdown", "child"} | SUPERVISOR_KEYS
SETUP_KEYS = {"hostname", "veth", "uid_map", "gid_map", "cgroup"}
VETH_KEYS = {"host", "address", "prefixlen", "gateway", "host_address"}
CGROUP_KEYS = {"memory_max", "pids_max", "cpu_max"}
CAPTURE = "capture"


class TreeError(LinxValueError):
    """A tree file is wrong; ``reason`` is ``("bad_tree", file, where, what)``."""

    def __init__(self, file: str, where: str, what: str) -> None:
        super().__init__(("bad_tree", file, where, what), f"{file}: {where}: {what}")


@dataclass(frozen=True)
class Setup:
    """What the runner does at a child's checkpoint, in this order."""

    uid_map: list | None = None
    gid_map: list | None = None
    hostname: str | None = None
    veth: dict | None = None
    cgroup: dict | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in (self.uid_map, self.gid_map, self.hostname, self.veth, self.cgroup))


@dataclass(frozen=True)
class Workload:
    id: str
    options: dict[str, Any]
    """Keyword arguments for ``process.child_spec`` except owner and auto_proceed."""
    capture: tuple[str, ...] = ()
    """Streams ("stdout", "stderr") captured as events, which the daemon prefixes with the id."""
    log: str | None = None
    setup: Setup = field(default_factory=Setup)


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
        found: list[Workload] = []

        def walk(children: list[Workload | Group]) -> None:
            for child in children:
                if isinstance(child, Group):
                    walk(child.children)
                else:
                    found.append(child)

        walk(self.children)
        return found


def parse_file(path: str | Path) -> Tree:
    """Read and check a tree file; raises ``TreeError`` for any mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise TreeError(str(path), "file", f"cannot read it: {error.strerror}") from None
    return parse_text(text, str(path))


def parse_text(text: str, file: str) -> Tree:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TreeError(file, "syntax", str(error)) from None  # tomllib names the line and column
    checker = _Checker(file)
    checker.keys(document, {"supervisor", "child"}, "")
    settings = checker.supervisor_settings(document.get("supervisor", {}), "supervisor")
    children = checker.children(document.get("child"), "child")
    return Tree(file, settings, children)


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.ids: set[str] = set()

    def fail(self, where: str, what: str) -> None:
        raise TreeError(self.file, where or "top level", what)

    def keys(self, table: Any, allowed: set[str], where: str) -> None:
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, got {table!r}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            place = f"{where}.{unknown[0]}" if where else unknown[0]
            self.fail(place, f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def supervisor_settings(self, table: Any, where: str) -> dict[str, Any]:
        self.keys(table, SUPERVISOR_KEYS, where)
        settings = {key: table[key] for key in SUPERVISOR_KEYS if key in table}
        try:
            S.check_settings(**settings)
        except LinxValueError as error:
            self.fail(f"{where}.{error.reason[0].removeprefix('bad_')}", str(error))
        return settings

    def children(self, tables: Any, where: str) -> list[Workload | Group]:
        if tables is None:
            self.fail(where, "a tree needs at least one [[child]]")
        if not isinstance(tables, list):
            self.fail(where, "expected [[child]] tables")
        return [self.child(table, f"{where}[{index}]") for index, table in enumerate(tables)]

    def child_id(self, table: dict, where: str) -> str:
        child_id = table.get("id")
        if not isinstance(child_id, str) or not child_id or not child_id.replace("-", "").replace("_", "").isalnum():
            self.fail(f"{where}.id", f"every child needs an id of letters, digits, '-' and '_', not {child_id!r}")
        if child_id in self.ids:
            self.fail(f"{where}.id", f"duplicate id {child_id!r}: ids are unique across the whole tree")
        self.ids.add(child_id)
        return child_id

    def child(self, table: Any, where: str) -> Workload | Group:
        if not isinstance(table, dict):
            self.fail(where, "expected a table")
        kind = table.get("type", "worker")
        if kind == "supervisor":
            self.keys(table, NESTED_KEYS, where)
            child_id = self.child_id(table, where)
            settings = self.supervisor_settings({k: v for k, v in table.items() if k in SUPERVISOR_KEYS}, where)
            restart, shutdown = self.restart_and_shutdown(table, where, None)
            return Group(child_id, settings, self.children(table.get("child"), f"{where}.child"), restart, shutdown)
        if kind != "worker":
            self.fail(f"{where}.type", f"type is 'worker' or 'supervisor', not {kind!r}")
        self.keys(table, WORKLOAD_KEYS, where)
        child_id = self.child_id(table, where)
        if "argv" not in table:
            self.fail(f"{where}.argv", "missing: every workload needs argv, a list of strings")
        restart, shutdown = self.restart_and_shutdown(table, where, 5.0)
        stdio, capture = self.stdio(table.get("stdio", "inherit"), f"{where}.stdio")
        options = {"argv": table["argv"], "stdio": stdio, "id": child_id, "restart": restart, "shutdown": shutdown}
        for key in ("namespaces", "env", "cwd", "no_new_privs"):
            if key in table:
                options[key] = table[key]
        if "orphan_policy" in table:
            policy = table["orphan_policy"]
            options["orphan_policy"] = tuple(policy) if isinstance(policy, list) else policy
        self.session_options(options, where)
        log = table.get("log")
        if log is not None and (not isinstance(log, str) or not capture):
            self.fail(f"{where}.log", 'log is a file path, and needs stdio capturing a stream (stdio = "capture")')
        setup = self.setup(table.get("setup", {}), f"{where}.setup", set(options.get("namespaces", ())))
        return Workload(child_id, options, capture, log, setup)

    def restart_and_shutdown(self, table: dict, where: str, default_shutdown: Any) -> tuple[str, Any]:
        try:
            restart = check_restart(table.get("restart", "permanent"))
        except LinxValueError as error:
            self.fail(f"{where}.restart", str(error))
        try:
            shutdown = check_shutdown(table.get("shutdown", default_shutdown))
        except LinxValueError as error:
            self.fail(f"{where}.shutdown", str(error))
        return restart, shutdown

    def stdio(self, stdio: Any, where: str) -> tuple[Any, tuple[str, ...]]:
        """The session's stdio ("capture" alone means stdout and stderr) and what it captures."""
        if stdio == CAPTURE:
            return {"stdout": CAPTURE, "stderr": CAPTURE}, ("stdout", "stderr")
        if isinstance(stdio, dict):
            capture = tuple(stream for stream, directive in stdio.items() if directive == CAPTURE)
            return dict(stdio), capture
        return stdio, ()

    def session_options(self, options: dict, where: str) -> None:
        checked = {key: value for key, value in options.items() if key not in ("id", "restart", "shutdown")}
        try:
            session_options.plan_session(mode=MODE_SPAWN, target=None, **checked)
        except LinxError as error:
            key = str(error.reason[0] if isinstance(error.reason, tuple) else error.reason).removeprefix("bad_")
            key = {"argv_required": "argv"}.get(key, key)
            self.fail(f"{where}.{key}", str(error))

    def setup(self, table: Any, where: str, namespaces: set[str]) -> Setup:
        self.keys(table, SETUP_KEYS, where)
        requires = {"hostname": "uts", "veth": "net", "uid_map": "user", "gid_map": "user"}
        for key, namespace in requires.items():
            if key in table and namespace not in namespaces:
                self.fail(f"{where}.{key}", f"needs the {namespace!r} namespace in this child's namespaces")
        if "hostname" in table and not isinstance(table["hostname"], str):
            self.fail(f"{where}.hostname", "expected a string")
        veth = table.get("veth")
        if veth is not None:
            self.keys(veth, VETH_KEYS, f"{where}.veth")
            for key in ("host", "address", "prefixlen"):
                if key not in veth:
                    self.fail(f"{where}.veth.{key}", "missing (host, address and prefixlen are required)")
        if ("uid_map" in table) != ("gid_map" in table):
            missing = "gid_map" if "uid_map" in table else "uid_map"
            self.fail(f"{where}.{missing}", "missing: uid_map and gid_map come together")
        for key in ("uid_map", "gid_map"):
            if key in table:
                try:
                    render([tuple(entry) if isinstance(entry, list) else entry for entry in table[key]])
                except (LinxValueError, TypeError) as error:
                    self.fail(f"{where}.{key}", f"a map is a list of [inside, outside, length]: {error}")
        cgroup = table.get("cgroup")
        if cgroup is not None:
            self.keys(cgroup, CGROUP_KEYS, f"{where}.cgroup")
        return Setup(
            uid_map=[tuple(e) for e in table["uid_map"]] if "uid_map" in table else None,
            gid_map=[tuple(e) for e in table["gid_map"]] if "gid_map" in table else None,
            hostname=table.get("hostname"),
            veth=dict(veth) if veth is not None else None,
            cgroup={k: (tuple(v) if isinstance(v, list) else v) for k, v in cgroup.items()}
            if cgroup is not None
            else None,
        )
