"""The tree's state as data: supervisor reports and session events in, status rows out.

One ``Record`` per child of the tree file (workloads and nested supervisors), kept from the
reports themselves: each child's current ref comes from its supervisor's ``started`` and
``restarted`` reports, so finding a child's session or supervisor never walks the tree. Exit
reasons are kept as data and put into words for people by ``describe_exit``.

This module starts, stops and signals nothing; the loop reads it, the control thread reads it
under its lock.

>>> from linx_otp.daemon.tree import parse_text
>>> state = TreeState(parse_text('[[child]]\\nid = "a"\\nargv = ["true"]\\n', "t.toml"), clock=lambda: 100.0)
>>> state.supervisor_report("started", "a", "ref-1")
>>> state.child_event("a", "ready", [4242])
True
>>> state.child_event("a", "exited", [3])
True
>>> state.supervisor_report("exited", "a", ("exited", 3))
>>> [(row["id"], row["state"], row["last_exit"]) for row in state.status()]
[('a', 'exited', 'exited 3')]
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import LinxError
from .tree import Group, Tree, Workload

TERMINAL_EVENTS = ("exited", "signaled", "aborted", "error")
UP_STATES = ("running",)
"""The states in which a child counts as up (and ready: it has started, and passed its
readiness check if it has one)."""


@dataclass
class Record:
    """What the daemon knows of one child."""

    kind: str
    """``"worker"`` or ``"supervisor"``."""
    parent: str | None
    """The id of the nested supervisor holding it; None for the root's children."""
    state: str = "starting"
    host_pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit: Any = None
    ref: Any = None
    """The current incarnation (a session or a supervisor), from the supervisor's reports."""
    log: str | None = None
    """Where its captured output is appended, if it has a log file."""
    readiness: str | None = None
    """Its readiness check in words (``tcp 10.78.0.2:8080``), if it has one."""
    passed: bool = False
    """The current incarnation has passed its readiness check (the supervisor said ``ready``);
    False again once it has ended."""


class TreeState:
    """Every child's record. Which children it has changes on the loop alone (``learn``,
    ``forget``, ``arrange``, in the order a reload queued them); every write is under ``lock``,
    which the control threads take to read it (and ``count_restart`` to count a restart they
    asked for)."""

    def __init__(self, tree: Tree, clock: Callable[[], float] = time.time) -> None:
        self.records = _records(tree)
        self.root: Any = None
        self.clock = clock
        self.lock = threading.Lock()

    def learn(self, fragment: Tree, parent: str | None = None) -> None:
        """A reload added (or changed) these children under ``parent`` (None: the root): fresh
        records for them."""
        with self.lock:
            self.records.update(_records(fragment, parent))

    def arrange(self, tree: Tree) -> None:
        """After a reload: the records in the tree's start order (as ``status`` lists them)."""
        with self.lock:
            order = [child.id for child in tree.walk() if child.id in self.records]
            self.records = {child_id: self.records[child_id] for child_id in order} | self.records

    def forget(self, child_ids: list[str]) -> None:
        """A reload removed these children (or the old version of a changed one)."""
        with self.lock:
            for child_id in child_ids:
                self.records.pop(child_id, None)

    def has(self, child_id: Any) -> bool:
        return isinstance(child_id, str) and child_id in self.records

    # -- events in ---------------------------------------------------------------------------------

    def supervisor_report(self, kind: str, child_id: Any, detail: Any) -> None:
        """A ``("linx_supervisor", kind, _, child_id, detail)`` report."""
        with self.lock:
            record = self.records.get(child_id)
            if record is None:
                return
            if kind in ("started", "restarted"):
                record.ref = detail
                record.started_at = self.clock()
                record.restarts += kind == "restarted"
                record.passed = False
                if record.kind == "supervisor":
                    record.state = "running"
            elif kind in ("exited", "stopped"):
                record.state = "stopped" if kind == "stopped" else "exited"
                record.last_exit = detail
                record.host_pid = record.ref = None
                record.passed = False
            elif kind == "ready":
                record.passed = True
                if record.state == "starting" and record.host_pid is not None:  # it runs (and has not ended)
                    record.state = "running"
            elif kind in ("gave_up", "start_failed"):
                record.last_exit = detail
            elif kind == "backoff":
                record.state = "backoff"
            elif kind == "backoff_cancelled":
                record.state = "stopped"

    def child_event(self, child_id: str, kind: str, detail: list) -> bool:
        """A session's ``("linx_process", kind, *detail)`` event (output excepted); whether the
        child is known (an event about a child with no record changes nothing)."""
        with self.lock:
            record = self.records.get(child_id)
            if record is None:
                return False
            record.state = _state_after(kind, record)
            if kind == "ready":
                record.host_pid = detail[0]
            elif kind in TERMINAL_EVENTS:  # the next incarnation's events may come before its started report
                record.ref = None
                record.passed = False
            return True

    def count_restart(self, child_id: str) -> None:
        """A restart asked for over the control socket (its report says ``started``). A reload
        may have removed the child since the request found it: then there is nothing to count."""
        with self.lock:
            record = self.records.get(child_id)
            if record is not None:
                record.restarts += 1

    # -- what the control socket asks ---------------------------------------------------------------

    def locate(self, child_id: Any) -> tuple[Any, Any]:
        """The supervisor holding ``child_id`` and the child's current ref (None while it is
        down). Raises ``LinxError("not_found")`` or, if its supervisor is down, ``"not_running"``."""
        with self.lock:
            if not self.has(child_id):
                raise LinxError("not_found", f"no child {child_id!r} in the tree")
            record = self.records[child_id]
            supervisor = self.root if record.parent is None else self.records[record.parent].ref
            if supervisor is None:
                raise LinxError("not_running", f"{child_id}'s supervisor {record.parent!r} is not running")
            return supervisor, record.ref

    def sessions(self) -> list[Any]:
        """Every worker's current session (a supervisor's children are in the records too)."""
        with self.lock:
            return [
                record.ref for record in self.records.values() if record.kind == "worker" and record.ref is not None
            ]

    def unready(self, child_ids: list[str] | None = None) -> list[Any]:
        """The sessions that run (or are about to) but have not passed their readiness check yet
        (of ``child_ids``, or of every child)."""
        with self.lock:
            return [
                record.ref
                for child_id, record in self.records.items()
                if record.readiness is not None
                and record.ref is not None
                and not record.passed
                and (child_ids is None or child_id in child_ids)
            ]

    def status(self) -> list[dict[str, Any]]:
        """One row per child, in start order: the objects ``status --json`` prints (the README's
        "status --json" section is their schema)."""
        now = self.clock()
        with self.lock:
            return [self._row(child_id, record, now) for child_id, record in self.records.items()]

    def metric_rows(self) -> list[dict[str, Any]]:
        """What ``--metrics`` shows of each child: its id, kind, state, restarts, the unix time
        its running incarnation started and its last exit in words."""
        with self.lock:
            return [
                {
                    "id": child_id,
                    "kind": record.kind,
                    "state": record.state,
                    "restarts": record.restarts,
                    "started_at_unix": record.started_at if record.state in UP_STATES else None,
                    "last_exit": describe_exit(record.last_exit) if record.last_exit is not None else None,
                }
                for child_id, record in self.records.items()
            ]

    @staticmethod
    def _row(child_id: str, record: Record, now: float) -> dict[str, Any]:
        started = record.started_at if record.state in UP_STATES else None
        return {
            "id": child_id,
            "kind": record.kind,
            "parent": record.parent,
            "state": record.state,
            "ready": record.state in UP_STATES,
            "readiness": record.readiness,
            "host_pid": record.host_pid,
            "restarts": record.restarts,
            "started_at": iso_time(started) if started is not None else None,
            "uptime": round(now - started, 1) if started is not None else None,
            "last_exit": describe_exit(record.last_exit) if record.last_exit is not None else None,
            "log": record.log,
        }


def iso_time(seconds: float) -> str:
    """A wall-clock time as ISO 8601 in local time with its offset, to the millisecond.

    >>> len(iso_time(0.0)) == len("1970-01-01T00:00:00.000+00:00")
    True
    """
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="milliseconds")


def _state_after(kind: str, record: Record) -> str:
    """A child's state after its session's event ``kind``: parked at its checkpoint it is still
    ``starting``, and so it is once it runs until its readiness check (if any) has passed."""
    if kind == "ready" or (kind == "running" and record.readiness is not None and not record.passed):
        return "starting"
    return kind


def _records(tree: Tree, parent: str | None = None) -> dict[str, Record]:
    parents = tree.parents()
    return {
        child.id: Record(
            "supervisor" if isinstance(child, Group) else "worker",
            parents[child.id] or parent,
            log=child.log.path if isinstance(child, Workload) and child.log is not None else None,
            readiness=child.ready.describe() if isinstance(child, Workload) and child.ready is not None else None,
        )
        for child in tree.walk()
    }


def describe_errno(number: int) -> str:
    """``2`` → ``"ENOENT (No such file or directory)"``."""
    return f"{errno.errorcode.get(number, f'errno {number}')} ({os.strerror(number)})"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(reason: Any) -> str:
    """An exit reason or outcome in words.

    >>> describe_exit(("exited", 3)), describe_exit(("signaled", 9)), describe_exit("normal")
    ('exited 3', 'killed by SIGKILL', 'exited 0')
    >>> describe_exit(("error", 2, "execve"))
    'execve failed: ENOENT (No such file or directory)'
    >>> describe_exit(("spawn_failed", "emfile"))
    'spawn failed: EMFILE (Too many open files)'
    """
    match reason:
        case "normal":
            return "exited 0"
        case "shutdown":
            return "shut down"
        case ("exited", code):
            return f"exited {code}"
        case ("signaled", number):
            return f"killed by {signal_name(number)}"
        case ("aborted",) | ("shutdown", "aborted"):
            return "aborted at the checkpoint"
        case ("error", status, "agent_died"):
            return f"its agent died (status {status})"
        case ("error", number, stage) if isinstance(number, int):
            return f"{stage} failed: {describe_errno(number)}"
        case ("shutdown", inner):
            return f"shut down ({describe_exit(inner)})"
        case ("reached_max_restart_intensity", restarts, seconds):
            return f"more than {restarts} restarts in {seconds:g} s"
        case ("not_ready", check, why):
            return f"not ready: {check} {why}"
        case ("failed_to_start_child", child_id, inner):
            return f"{child_id} failed to start: {describe_exit(inner)}"
        case (str() as operation, str() as name) if isinstance(getattr(errno, name.upper(), None), int):
            return f"{operation.replace('_', ' ')}: {describe_errno(getattr(errno, name.upper()))}"  # LinxOSError's
    return str(reason)
