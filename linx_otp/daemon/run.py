"""The ``linx-otp run`` event loop: runs a declared tree in the foreground until told to stop.

Order of a start, so that a refused start changes nothing: claim the instance (its lock; a
second daemon for the name stops here), bind the control socket, remove a killed
predecessor's leftovers, and only then start the tree's supervisors, on a thread of their own
(a child with a readiness check holds up the next one, and the loop goes on meanwhile); the
tree is up, and systemd hears ``READY=1``, once every child is ready. Supervisor reports and
session events land in one mailbox that this loop works through: it keeps the ``TreeState``
and hands lines and captured output to ``Output``, which writes them on its own thread. SIGINT or
SIGTERM stops the tree gracefully and exits 0; a tree that gives up exits 1; whatever raises in
the loop (a bug) is reported and stops the tree the same way (exit 70, ``EX_SOFTWARE``). Each child's
session runs its ``Setup`` at ``ready`` through ``apply_setup``, which scopes it to the
instance (a cgroup under ``linx-otp/NAME/``, a veth host end marked as this instance's).

This loop never writes to the console or a log itself, and never waits on a client.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from .. import process as P
from .. import supervisor as S
from .. import tty
from ..actor import monitor, request_shutdown
from ..checkpoint import netlink as Netlink
from ..checkpoint.setup import Release
from ..errors import LinxError
from ..flow import OutputEvent
from ..mailbox import Mailbox
from . import metrics
from .control import ControlServer, Request
from .instance import Instance
from .notify import Notifier
from .output import Output
from .ring import Rings
from .state import TreeState, describe_exit, iso_time, signal_name
from .tree import Group, LogFile, Tree, TreeError, Workload, parse_file

ROOT_ID = "root"
LOOP_SECONDS = 0.5
"""The longest the loop waits for a message before it looks at its timers again."""
REFUSALS = ("link_taken", "address_taken")
"""Set-up failures that mean: another instance (or someone) owns what this child asks for."""
QUIET_SUPERVISOR_REPORTS = ("started", "exited", "stopped")
"""A worker's own events already say these; a nested supervisor's are shown."""
EVENT_NAMES = {"ready": "checkpoint"}
"""Session events logged under another name: a session's ``ready`` (parked at its checkpoint,
with its host pid) is ``checkpoint``, since ``ready`` is a readiness check that passed."""


class _ChildOwner:
    """The owner of one child's sessions (every incarnation). Output goes straight to the
    writer, which gives its window back once it is written (so a console or log that can't
    keep up slows the child, and the loop never holds output); every other event goes to the
    loop's inbox, tagged with the child's id."""

    output_credit = "explicit"
    """``Output`` calls ``linx_otp.consumed(event)`` once it has written the event's data."""

    def __init__(self, child_id: str, inbox: Mailbox, output: Output, log: LogFile | None) -> None:
        self.child_id, self.inbox, self.output, self.log = child_id, inbox, output, log

    def tell(self, message: Any) -> None:
        if type(message) is OutputEvent:
            self.output.captured(self.child_id, message, self.log)
        else:
            self.inbox.tell(("child", self.child_id, message))


class _WarningsAsEvents(logging.Handler):
    """The library's warnings and errors, as the daemon's events (a supervisor's own reports
    arrive as events already)."""

    def __init__(self, report: Any) -> None:
        super().__init__(logging.WARNING)
        self.report = report

    def emit(self, record: logging.LogRecord) -> None:
        """One line each: the message and the exception's own words (no traceback)."""
        if record.name != S.__name__:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text}: {record.exc_info[1]}"
            self.report("daemon", logging.getLevelName(record.levelno).lower(), text)


class Daemon:
    """One instance running one tree.

    >>> from linx_otp.daemon.tree import parse_text
    >>> tree = parse_text('[[child]]\\nid = "a"\\nargv = ["true"]\\n', "t.toml")
    >>> Daemon(tree, Instance("doc", "/nonexistent/doc.sock")).state.status()[0]["state"]
    'starting'
    """

    def __init__(
        self,
        tree: Tree,
        instance: Instance,
        *,
        json_output: bool = False,
        console_fd: int = 1,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self.tree = tree
        self.instance = instance
        self.json_output = json_output
        self.console_fd = console_fd
        self.inbox = Mailbox()
        self.workloads = {workload.id: workload for workload in tree.workloads()}
        self.state = TreeState(tree)
        self.root: pykka.ActorRef | None = None
        self.stopping = False
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        """``(monotonic deadline, order, action)``: what the loop does later (a heap)."""
        self.timer_order = itertools.count()
        self.rings = Rings()
        """Each child's last output, for ``logs``."""
        self.output = Output(console_fd, self.report_from_thread, rings=self.rings)
        """The writer (its thread starts with ``run``)."""
        self.control: ControlServer | None = None
        self.metrics_address = metrics
        self.metrics_server: Any = None
        self.gave_up: dict[str, int] = {}
        """Supervisor id → times it reached its restart intensity (for ``--metrics``)."""
        self.reload_lock = threading.Lock()
        """Reloads one at a time (the control socket's and SIGHUP's), and none during the start-up."""
        self.killing = False
        """A second SIGINT or SIGTERM came during the stop: every workload, and any started meanwhile, gets SIGKILL."""
        self.child_locks: dict[str, threading.Lock] = {}
        """Per child id: its start and restart requests, one at a time (a stop waits for neither)."""
        self.hangups_lock = threading.Lock()
        self.hangup_pending = False
        """A SIGHUP not yet acted on: the thread reloading for SIGHUP reloads once more."""
        self.hangup_reloader: threading.Thread | None = None
        self.notifier: Notifier | None = None
        """systemd's notify socket, when the daemon runs as a ``Type=notify`` service."""
        self.status_sent = ""
        self.up_pending = False
        """The tree has started; "up" (and ``READY=1``) waits until no workload is still starting."""
        self.cutting_short: set[str] = set()
        """Children a ``stop`` or ``restart`` is stopping: an incarnation that starts meanwhile is
        not waited for (guarded by the state's lock: the control threads and the loop share it)."""
        self.strays: set[str] = set()
        """Ids an event came for that the tree has no workload or record of (each reported once,
        until a reload adds it again)."""
        self.failed = False
        """Something in the loop raised: the tree is stopped and the daemon exits ``EX_SOFTWARE``."""

    # -- start and stop ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until a signal (exit 0) or until the tree gives up (exit 1). Raises ``LinxError``
        before anything is started if the instance is taken or its socket place is unsafe."""
        self.instance.claim()
        try:
            listener = self.instance.listen()
            if self.metrics_address is not None:
                self.metrics_server = metrics.serve(self.metrics_address, self.state.metric_rows, self.gave_up.copy)
        except LinxError:
            self.instance.release()
            raise
        self.output.start()
        self.notifier = Notifier.from_environment(os.environ, self.report_from_thread)
        self.control = control = ControlServer(listener, self.answer, self.report_from_thread)
        previous = {
            number: signal.signal(number, self._on_signal) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        warnings = _WarningsAsEvents(self.report_from_thread)
        logging.getLogger("linx_otp").addHandler(warnings)
        try:
            return self._run(control)
        finally:
            if self.root is not None and self.root.is_alive():  # _run raised: the tree must not outlive it
                S.stop(self.root)
            self.cleanup()
            logging.getLogger("linx_otp").removeHandler(warnings)
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _run(self, control: ControlServer) -> int:
        self.report("tree", "starting", f"{self.tree.file} as instance {self.instance.name!r}")
        try:
            for leftover in self.instance.clean_leftovers():
                self.report("daemon", "cleaned", f"a killed predecessor's {leftover}")
        except (LinxError, OSError) as error:
            self.report("daemon", "cleanup_failed", str(error))
        # The start-up holds the reload lock from before the control socket serves until the loop
        # hears how the start ended (``start_ended``): a reload asked for meanwhile waits for it.
        self.reload_lock.acquire()
        control.start()
        if self.metrics_server is not None:
            host, port = self.metrics_server.server_address[:2]
            self.report("daemon", "metrics", f"http://{host}:{port}/metrics")
        threading.Thread(target=self.start_tree, name="linx-otp-start", daemon=True).start()
        code = None
        while code is None:
            try:
                message = self.inbox.receive(timeout=self.next_timeout())
            except TimeoutError:
                message = None
            code = self.step(message)
        return os.EX_SOFTWARE if self.failed else code

    def step(self, message: Any) -> int | None:
        """One turn of the loop: ``message`` (None: the wait timed out), the timers that are due,
        and systemd's status. Whatever raises here is a bug: it is reported, and the tree is
        stopped gracefully (the loop goes on until it is down), so the daemon never leaves its
        tree running without a loop, a control socket or its signal handlers."""
        try:
            code = None if message is None else self.handle(message)
            self.run_timers()
            self.announce_up()
            self.notify()
        except Exception as error:
            return self.record_internal_error(error)
        return code

    def record_internal_error(self, error: Exception) -> int | None:
        """Report ``error`` (one line: what and where) and stop the tree, unless it is stopping."""
        where = traceback.extract_tb(error.__traceback__)[-1]
        self.report(
            "daemon",
            "internal_error",
            f"{type(error).__name__}: {error} at {where.filename}:{where.lineno} in {where.name}; stopping the tree",
        )
        self.failed = True
        return None if self.stopping else self.stop_tree("after an internal error")

    def start_tree(self) -> None:
        """Start the root supervisor and, in order, every child: on a thread of its own, so that
        the loop goes on meanwhile (events, status, a stop) while children wait for their
        readiness checks. The loop hears ``("tree_started", root)`` or ``("tree_failed", why)``."""
        try:
            root = S.start(
                [self._spec(child) for child in self.tree.children], id=ROOT_ID, events=self.inbox, **self.tree.settings
            )
        except LinxError as error:
            self.inbox.tell(("tree_failed", error))
            return
        self.inbox.tell(("tree_started", root))

    def start_ended(self) -> None:
        """The start-up is over (the tree is up, or failed): reloads may go ahead."""
        self.reload_lock.release()

    def tree_started(self, root: pykka.ActorRef) -> int | None:
        """Every child has started and passed its readiness check: the tree is up (and systemd
        hears ``READY=1``) once no workload is still on its way to running (``announce_up``)."""
        monitor(root, self.inbox)
        if self.stopping:  # a stop came while it started
            return self.finish_stop()
        self.up_pending = True
        self.announce_up()
        return None

    def announce_up(self) -> None:
        """Once the tree has started, and every workload runs (or has ended, or waits out a
        back-off): "up", and ``READY=1``. A supervisor counts a child started once its session
        is; its workload may still be at its checkpoint then, so dependents would start early."""
        if not self.up_pending or self.stopping:
            return
        if any(row["kind"] == "worker" and row["state"] == "starting" for row in self.state.status()):
            return
        self.up_pending = False
        self.report("tree", "up", f"{len(self.workloads)} workloads; control socket {self.instance.control_path}")
        self.notify("READY=1")
        if self.notifier is not None and self.notifier.watchdog_seconds:  # systemd watches from READY=1 on
            self.ping_watchdog(self.notifier.watchdog_seconds)

    # -- systemd -------------------------------------------------------------------------------

    def notify(self, *fields: str) -> None:
        """Tell systemd ``fields``, with a ``STATUS=`` line whenever it has changed (from the
        ``READY=1`` on: the tree is up once every child is ready)."""
        if self.notifier is None or ((self.root is None or self.up_pending) and not fields):
            return
        rows = [row for row in self.state.status() if row["kind"] == "worker"]
        status = f"STATUS={sum(row['state'] == 'running' for row in rows)} of {len(rows)} workloads running"
        if status != self.status_sent:
            self.status_sent = status
            fields = (*fields, status)
        if fields:
            self.notifier.send(*fields)

    def ping_watchdog(self, seconds: float) -> None:
        """``WATCHDOG=1`` now and every ``seconds``, from the loop itself: a hung loop stops it."""
        if self.notifier is not None and not self.stopping:
            self.notifier.send("WATCHDOG=1")
            self.after(seconds, lambda: self.ping_watchdog(seconds))

    # -- timers: what the loop does later ----------------------------------------------------------

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self.timer_order), action))

    def next_timeout(self) -> float:
        if not self.timers:
            return LOOP_SECONDS
        return min(LOOP_SECONDS, max(0.0, self.timers[0][0] - time.monotonic()))

    def run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, action = heapq.heappop(self.timers)
            action()

    def _spec(self, child: Workload | Group) -> Any:
        if isinstance(child, Group):
            return S.child_spec(
                [self._spec(grandchild) for grandchild in child.children],
                id=child.id,
                restart=child.restart,
                shutdown=child.shutdown,
                events=self.inbox,
                **child.settings,
            )
        owner = _ChildOwner(child.id, self.inbox, self.output, child.log)
        # The session runs the set-up at ready and then proceeds by itself.
        setup = functools.partial(self.apply_setup, child) if child.setup else None
        spec = P.child_spec(
            owner=owner,
            auto_proceed=True,
            setup=setup,
            ready=child.ready,
            restart_delay=child.restart_delay,
            restart_backoff_max=child.restart_backoff_max,
            **child.options,
        )
        return dataclasses.replace(spec, start=functools.partial(self.start_unless_stopping, spec.start))

    def start_unless_stopping(self, start: Callable[[], pykka.ActorRef]) -> pykka.ActorRef:
        """A workload's start, refused if the tree is stopping during its start-up: a SIGTERM
        then ends the start there (the supervisor's start fails, and it stops what it had
        started) instead of starting the rest of the tree only to stop it. Once the tree is up,
        a nested supervisor's restarts go on while the stop reaches it (refused, they would be
        retried at once, over and over); a second signal kills what they start."""
        if self.stopping and self.root is None:
            raise LinxError("stopping", "not started: the tree is stopping")
        return start()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.inbox.tell(("signal", signum))

    def stop_tree(self, why: str) -> int | None:
        """Stop the tree; returns the exit code, or None while its start is still under way (a
        child waiting for its readiness check is stopped, which ends the start: then
        ``tree_started`` or ``tree_failed`` finishes the stop)."""
        self.report("tree", "stopping", why)
        self.stopping = True
        self.notify("STOPPING=1")
        self.output.hurry()  # a child's last output must not wait for a console nobody reads
        self.shut_down_unready()
        return None if self.root is None else self.finish_stop()

    def finish_stop(self) -> int:
        """Stop the root, taking the stop's events as they come (the log, the cgroups, and a
        child that starts meanwhile, to cut its readiness wait short) until the root is down."""
        root = self.root
        assert root is not None
        root.stop(block=False)  # queued before any retry of a start the stop ends
        self.shut_down_unready()
        down = False
        while True:
            try:
                message = self.inbox.receive(timeout=0 if down else LOOP_SECONDS)
            except TimeoutError:
                if down:
                    break
                continue
            match message:
                case ("DOWN", ref, _) if ref == root:
                    down = True
                case ("child" | "linx_supervisor" | "report", *_):
                    self.step(message)
                case ("signal", signum) if signum != signal.SIGHUP:
                    self.kill_workloads_now(f"signal {signal_name(signum)} again")
        self.report("tree", "stopped", "")
        return 0

    def kill_workloads_now(self, why: str) -> None:
        """A second SIGINT or SIGTERM while the tree stops (an operator's second Ctrl-C, as
        Docker and systemd take it): the children's shutdown seconds are not waited out, every
        workload gets SIGKILL now, and the stop goes on with their outcomes."""
        self.report("tree", "killing", f"{why}: SIGKILL to every workload")
        self.killing = True
        for session in self.state.sessions():
            self.kill_now(session)

    @staticmethod
    def kill_now(session: pykka.ActorRef) -> None:
        try:
            P.signal(session, signal.SIGKILL)
        except LinxError:
            pass  # it has ended already

    def is_cut_short(self, child_id: str) -> bool:
        with self.state.lock:
            return child_id in self.cutting_short

    def shut_down_unready(self, child_ids: list[str] | None = None) -> None:
        """Stopping (the tree, or ``child_ids``): a child still waiting for its readiness check is
        asked to stop now (its supervisor, busy waiting, would stop it only once the check's
        time-out is over)."""
        for session in self.state.unready(child_ids):
            request_shutdown(session)

    def cleanup(self) -> None:
        try:
            self.instance.remove_cgroup_parents()
            with Netlink.open() as host:
                for link in self.instance.own_links(Netlink.link_aliases(host)):
                    Netlink.delete_link(host, link, missing_ok=True)
        except (LinxError, OSError) as error:
            self.report("daemon", "cleanup_failed", str(error))
        if self.control is not None:
            self.control.close()
        self.output.close()
        if self.notifier is not None:
            self.notifier.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.instance.release()

    # -- the loop ------------------------------------------------------------------------------

    def handle(self, message: Any) -> int | None:
        match message:
            case ("signal", signal.SIGHUP):
                self.reload_for_hangup()
            case ("learn", Tree() as fragment, parent):
                self.learn(fragment, parent)
            case ("arrange", Tree() as tree):
                self.state.arrange(tree)
            case ("forget", Tree() as fragment):
                self.forget(fragment)
            case ("forget_output", child_ids):
                for child_id in child_ids:  # nested ones too: nothing is kept for an id the tree has lost
                    self.output.forget(child_id)
            case ("signal", signum) if self.stopping:
                self.kill_workloads_now(f"signal {signal_name(signum)} again")
            case ("signal", signum):
                return self.stop_tree(f"signal {signal_name(signum)}")
            case ("shutdown",):
                return self.stop_tree("shutdown requested over the control socket")
            case ("tree_started", root):
                self.root = self.state.root = root
                self.start_ended()
                return self.tree_started(root)
            case ("tree_failed", error):
                self.start_ended()
                if self.stopping:  # the stop ended the start
                    self.report("tree", "stopped", "")
                    return 0
                self.report("tree", "failed_to_start", str(error))
                return 1
            case ("DOWN", ref, reason) if ref == self.root:
                if self.stopping:
                    return 0
                self.report("tree", "gave_up", describe_exit(reason))
                return 1
            case ("linx_supervisor", kind, supervisor_id, child_id, detail):
                if kind == "gave_up":
                    self.gave_up[supervisor_id] = self.gave_up.get(supervisor_id, 0) + 1
                self.supervisor_event(kind, child_id, detail)
            case ("child", child_id, ("linx_process", kind, *detail)):
                self.child_event(child_id, kind, detail)
            case ("report", child_id, kind, detail):
                self.report(child_id, kind, detail)
        return None

    def supervisor_event(self, kind: str, child_id: str, detail: Any) -> None:
        self.state.supervisor_report(kind, child_id, detail)
        worker = child_id in self.workloads
        if kind not in QUIET_SUPERVISOR_REPORTS or not worker:
            match kind:
                case "started" | "restarted":
                    shown = ""
                case "backoff":
                    shown = f"runs in {detail:g} s"
                case _:
                    shown = describe_exit(detail)
            self.report(child_id, kind, shown)
        if kind in ("started", "restarted") and (self.stopping or self.is_cut_short(child_id)):
            self.shut_down_unready([child_id])
        if kind in ("started", "restarted") and self.killing and worker:
            self.kill_now(detail)  # a nested supervisor not yet stopping restarted it: it goes too

    def child_event(self, child_id: str, kind: str, detail: list) -> None:
        if child_id not in self.workloads:  # a reload removed it: its last incarnation, on its way out
            self.ignore_stray(child_id, kind)
            return
        match kind, detail:
            case "output_dropped", [stream, count]:
                self.report(
                    child_id, kind, f"{count} bytes of {stream}: output = 'drop' and the console or log was behind"
                )
                return
            case "stdout" | "stderr" | "pty_out" | "pty_in_dropped", _:
                return  # output reaches the writer directly; a dropped keystroke is the typist's to see
        if not self.state.child_event(child_id, kind, detail):
            self.ignore_stray(child_id, kind)
            return
        self.report(child_id, EVENT_NAMES.get(kind, kind), _describe_event(kind, detail))
        if kind in P.TERMINAL_EVENTS:
            self.output.end_of(child_id)

    def ignore_stray(self, child_id: str, kind: str) -> None:
        """An event about a child the tree (no longer) has: reported the first time, then ignored."""
        if child_id not in self.strays:
            self.strays.add(child_id)
            self.report(child_id, "ignored", f"its {EVENT_NAMES.get(kind, kind)} event: it is not in the tree (now)")

    # -- reload: the tree file again, the difference applied (as supervisorctl update) ------------

    def reload(self) -> dict[str, Any]:
        """Re-read the tree file and apply the difference, supervisor by supervisor: stop removed
        children, restart changed ones in their place (stop the old, start the new), start added
        ones in their place in the start order, leave the unchanged running, and compare a
        nested supervisor present in both child by child, its new settings applied in place
        (OTP's ``code_change``). The root's new settings apply in place too. A file with errors
        changes nothing (raises ``LinxError``). Reloads are serialized with each other and with
        the start-up; the stops and starts are the supervisors' ``terminate_child``,
        ``delete_child`` and ``start_child``, which OTP does not count as restarts."""
        with self.reload_lock:
            root = self.root
            if self.stopping or root is None:
                raise LinxError("not_running", "the tree is not running (it failed to start or is stopping)")
            try:
                new = parse_file(self.tree.file, instance=self.instance.name)
            except TreeError as error:
                raise LinxError(error.reason, f"the tree file has errors; nothing was changed:\n{error}") from None
            self.notify_now("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            outcome = ReloadOutcome()
            try:
                children = self.reload_children(root, None, self.tree.children, new.children, outcome)
                if new.settings != self.tree.settings:
                    S.change_settings(root, **new.settings)
                    outcome.reconfigured.append(ROOT_ID)
                lost = {child.id for child in self.tree.walk()} - {child.id for child in new.walk()}
                # through the loop, behind the ("forget", ...) its removals queued: after each child's end_of
                self.inbox.tell(("forget_output", sorted(lost)))
                self.tree = Tree(self.tree.file, new.settings, children)
                self.inbox.tell(("arrange", self.tree))
            finally:
                self.notify_now("READY=1")
            return outcome.result()

    def reload_children(
        self,
        supervisor: pykka.ActorRef,
        parent: str | None,
        old_children: list[Workload | Group],
        new_children: list[Workload | Group],
        outcome: ReloadOutcome,
    ) -> list[Workload | Group]:
        """Apply one supervisor's difference (``parent`` its id, None for the root); returns its
        children as they now are (a child that failed to start is left out, so that the next
        reload tries it again)."""
        old = {child.id: child for child in old_children}
        new_ids = {child.id for child in new_children}
        compared = {
            child.id for child in new_children if isinstance(child, Group) and isinstance(old.get(child.id), Group)
        }
        replaced = {child.id for child in new_children if child.id in old and child.id not in compared} - {
            child.id for child in new_children if old.get(child.id) == child
        }
        for child in reversed(old_children):  # stopped in reverse start order, as a supervisor stops
            if child.id not in new_ids or child.id in replaced:
                self.remove_child(supervisor, child)
                if child.id not in new_ids:
                    outcome.removed.append(child.id)
        staying = {child.id for child in new_children if child.id in old and child.id not in replaced}
        now: list[Workload | Group] = []
        for index, child in enumerate(new_children):
            before = next((later.id for later in new_children[index + 1 :] if later.id in staying), None)
            previous = old.get(child.id)
            if previous == child:
                outcome.unchanged.append(child.id)
                now.append(child)
            elif isinstance(previous, Group) and isinstance(child, Group):
                now.extend(self.reload_group(supervisor, parent, previous, child, before, outcome))
            elif self.start_in_place(supervisor, parent, child, before, outcome):
                (outcome.changed if previous is not None else outcome.added).append(child.id)
                now.append(child)
        return now

    def reload_group(
        self,
        supervisor: pykka.ActorRef,
        parent: str | None,
        old: Group,
        new: Group,
        before: str | None,
        outcome: ReloadOutcome,
    ) -> list[Workload | Group]:
        """A nested supervisor in both files: its children compared one by one, its settings
        (strategy, intensity), restart and shutdown changed in place, and its spec replaced so
        that its next start is the new one. If it ended meanwhile (it gave up, say), it is
        started afresh from the new file. Returns it as it now is (or nothing, if that fails)."""
        try:
            running = {child_id: ref for child_id, ref, _ in S.which_children(supervisor)}
            if new.id not in running:
                raise LinxError("not_found", f"{new.id} is no longer a child of its supervisor")
            group = running[new.id]
            if group is None:  # not running: the new spec applies when it starts
                self.inbox.tell(("forget", Tree(self.tree.file, {}, old.children)))
                self.inbox.tell(("learn", Tree(self.tree.file, {}, new.children), new.id))
                children = new.children
            else:
                children = self.reload_children(group, new.id, old.children, new.children, outcome)
                if new.settings != old.settings:
                    S.change_settings(group, **new.settings)
            updated = Group(new.id, new.settings, children, new.restart, new.shutdown)
            S.replace_child_spec(supervisor, self._spec(updated))
        except LinxError as error:
            self.report_from_thread(new.id, "reload", f"restarting it whole: {error}")
            self.remove_child(supervisor, old)
            if not self.start_in_place(supervisor, parent, new, before, outcome):
                return []
            outcome.changed.append(new.id)
            return [new]
        if group is None or (new.settings, new.restart, new.shutdown) != (old.settings, old.restart, old.shutdown):
            outcome.reconfigured.append(new.id)
        return [updated]

    def remove_child(self, supervisor: pykka.ActorRef, child: Workload | Group) -> None:
        try:
            S.terminate_child(supervisor, child.id)
            S.delete_child(supervisor, child.id)
        except LinxError:
            pass  # a temporary child is gone from its supervisor once stopped
        self.inbox.tell(("forget", Tree(self.tree.file, {}, [child])))  # after its last events

    def start_in_place(
        self,
        supervisor: pykka.ActorRef,
        parent: str | None,
        child: Workload | Group,
        before: str | None,
        outcome: ReloadOutcome,
    ) -> bool:
        """Start ``child`` under ``supervisor`` before its sibling ``before`` (None: last);
        whether it started (why not is in ``outcome``). Raises ``LinxError("no_process")`` if
        ``supervisor`` has ended meanwhile (a nested one is then started afresh by the caller)."""
        fragment = Tree(self.tree.file, {}, [child])
        self.inbox.tell(("learn", fragment, parent))  # before its first events
        place = {} if before is None else {"before": before}
        try:
            S.start_child(supervisor, self._spec(child), **place)
        except LinxError as error:
            self.inbox.tell(("forget", fragment))
            if error.reason == "no_process":
                raise
            outcome.failed[child.id] = str(error)
            return False
        return True

    # ``workloads`` and the state's records change here alone, on the loop, in the order the
    # reload thread queued ``learn`` and ``forget`` (the old version's forget before the new
    # one's learn): the two always know the same workloads.

    def learn(self, fragment: Tree, parent: str | None) -> None:
        self.state.learn(fragment, parent)
        for workload in fragment.workloads():
            self.workloads[workload.id] = workload
            self.strays.discard(workload.id)

    def forget(self, fragment: Tree) -> None:
        """Drop what a reload removed (or the old version of what it replaced)."""
        child_ids = [child.id for child in fragment.walk()]
        self.state.forget(child_ids)
        with self.state.lock:
            for child_id in child_ids:
                self.child_locks.pop(child_id, None)
        for child_id in child_ids:
            if self.workloads.pop(child_id, None) is not None:
                self.output.end_of(child_id)

    def reload_for_hangup(self) -> None:
        """SIGHUP: reload on a thread of its own (a reload waits for stops and starts). Hangups
        that come while it reloads make one more reload after it, not a thread and a reload each."""
        with self.hangups_lock:
            self.hangup_pending = True
            if self.hangup_reloader is None:
                self.hangup_reloader = threading.Thread(
                    target=self._reload_while_hangups_come, name="linx-otp-reload", daemon=True
                )
                self.hangup_reloader.start()

    def _reload_while_hangups_come(self) -> None:
        while True:
            with self.hangups_lock:
                if not self.hangup_pending:
                    self.hangup_reloader = None
                    return
                self.hangup_pending = False
            try:
                self.reload_on_signal()
            except Exception as error:  # a bug: reported, and the next hangup still reloads
                self.report_from_thread(
                    "daemon", "internal_error", f"reload on SIGHUP: {type(error).__name__}: {error}"
                )

    def reload_on_signal(self) -> None:
        try:
            result = self.reload()
        except LinxError as error:
            self.report_from_thread("tree", "reload_failed", f"nothing was changed: {error}")
            return
        self.report_from_thread("tree", "reloaded", describe_reload(result))

    def notify_now(self, *fields: str) -> None:
        if self.notifier is not None:
            self.notifier.send(*fields)

    # -- checkpoint set-up ---------------------------------------------------------------------

    def apply_setup(self, workload: Workload, host_pid: int) -> Release:
        """The workload's ``Setup``, scoped to this instance: its cgroup under
        ``linx-otp/NAME/``, its veth host end marked as this instance's, and a link or address
        another owner holds refused (the child then stays stopped). Runs on the child's session
        thread at ``ready``; the session proceeds it, or aborts it when this raises, and calls
        the returned release when the incarnation ends. The workload is the one its spec was
        made from (bound there), so a set-up due before the loop has learned a reload's new
        version needs nothing from the loop."""
        child_id = workload.id
        try:
            return workload.setup.apply(
                host_pid,
                cgroup_name=self.instance.cgroup_name(child_id),
                link_alias=self.instance.link_alias(child_id),
                claim_link=lambda host, name, address: self.instance.claim_link(host, name, child_id, address),
            )
        except (LinxError, OSError) as error:
            self.report_from_thread(child_id, "setup_failed", str(error))
            if isinstance(error, LinxError) and isinstance(error.reason, tuple) and error.reason[0] in REFUSALS:
                self.stop_refused(child_id)
            raise

    def stop_refused(self, child_id: str) -> None:
        """A child refused a host resource another owns stays stopped (restarting it would
        only be refused again, and spend its siblings' restart intensity)."""

        def stop() -> None:
            try:
                supervisor, _ = self.state.locate(child_id)
                S.terminate_child(supervisor, child_id)
            except LinxError:
                pass  # its supervisor is gone or going: nothing left to stop

        threading.Thread(target=stop, name="linx-otp-refuse", daemon=True).start()

    # -- the control socket's answers (on the control thread, or a thread of one request) --------

    def answer(self, request: Request, note: Any) -> Any:
        child_id = request.child_id
        match request.verb:
            case "status":
                return self.state.status()
            case "shutdown":
                self.inbox.tell(("shutdown",))
                return "stopping"
            case "reload":
                return self.reload()
            case "logs":
                if child_id not in self.workloads:
                    raise LinxError("not_found", f"no workload {child_id!r} in the tree (supervisors have no output)")
                return self.rings.read(child_id, last=request.lines, after=request.after)
        if child_id is None:
            raise LinxError(("bad_verb", request.verb), f"{request.verb} needs a child id")
        if request.verb == "stop":  # never waits behind a start: it cuts one short (a readiness wait, say)
            return self.change_child(request.verb, child_id)
        if request.verb in ("start", "restart"):
            self.state.locate(child_id)  # an id not in the tree is refused before a lock is kept for it
            with self.child_lock(child_id):  # one start at a time per child: each sees the last one's result
                return self.change_child(request.verb, child_id)
        _, current = self.state.locate(child_id)
        if request.verb != "attach":
            raise LinxError(("bad_verb", request.verb), f"unknown verb {request.verb!r}")
        if current is None or child_id not in self.workloads or not request.fds:
            raise LinxError("not_running", f"{child_id} is not a running workload, or no terminal was passed")
        outcome = tty.attach(current, terminal=request.fds[0], on_attached=lambda: note("attached"))
        if isinstance(outcome, tuple):  # it ended while attached: its terminal event came to attach
            self.inbox.tell(("child", child_id, ("linx_process", *outcome)))
            return describe_exit(outcome)
        return outcome

    def child_lock(self, child_id: str) -> threading.Lock:
        with self.state.lock:
            return self.child_locks.setdefault(child_id, threading.Lock())

    def change_child(self, verb: str, child_id: str) -> str:
        """``stop``, ``start`` or ``restart`` of one child. The caller holds the child's lock for
        a start or restart: two racing restarts each stopped it, and then one found it started by
        the other, and said so in the supervisor's words."""
        supervisor, current = self.state.locate(child_id)
        match verb:
            case "stop":
                self.terminate(supervisor, child_id)
                return "stopped"
            case "start":
                if current is not None:
                    raise LinxError("running", f"{child_id} is already running; to start it afresh: restart {child_id}")
                try:
                    S.restart_child(supervisor, child_id)
                except LinxError as error:
                    if error.reason != "restarting":
                        raise
                    S.terminate_child(supervisor, child_id)  # waiting out a back-off: now, as systemctl start
                    S.restart_child(supervisor, child_id)
                return "started"
            case _:  # restart
                self.terminate(supervisor, child_id)
                S.restart_child(supervisor, child_id)
                self.state.count_restart(child_id)
                return "restarted"

    def terminate(self, supervisor: pykka.ActorRef, child_id: str) -> None:
        """``terminate_child``, and a child waiting for its readiness check (its supervisor busy
        with it) is stopped at once, as is an incarnation its supervisor starts meanwhile."""
        with self.state.lock:
            self.cutting_short.add(child_id)
        try:
            self.shut_down_unready([child_id])
            S.terminate_child(supervisor, child_id)
        finally:
            with self.state.lock:
                self.cutting_short.discard(child_id)

    # -- reporting -------------------------------------------------------------------------------

    def report_from_thread(self, child_id: str, kind: str, detail: str) -> None:
        """An event from the writer or the control thread, reported by the loop."""
        self.inbox.tell(("report", child_id, kind, detail))

    def report(self, child_id: str, kind: str, detail: Any) -> None:
        if self.json_output:
            line = json.dumps({"time": time.time(), "id": child_id, "event": kind, "detail": _jsonable(detail)})
        else:
            shown = f" {detail}" if detail not in ("", None) else ""
            line = f"{iso_time(time.time())} {child_id:>12} | {kind}{shown}"
        self.output.line(line)


@dataclass
class ReloadOutcome:
    """What a reload did, gathered supervisor by supervisor (ids of the whole tree)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """Restarted from their new table."""
    unchanged: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    """Supervisors given new settings (or restart, shutdown) in place, their children left running."""
    failed: dict[str, str] = field(default_factory=dict)
    """Children that were to start and did not: why."""

    def result(self) -> dict[str, Any]:
        """The reply: the four lists always, ``reconfigured`` and ``failed`` when not empty."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value or key in RELOAD_LISTS}


RELOAD_LISTS = ("added", "removed", "changed", "unchanged")


def describe_reload(result: dict[str, Any]) -> str:
    """What a reload did, in words.

    >>> describe_reload({"added": ["d"], "removed": ["b"], "changed": ["c"], "unchanged": ["a"]})
    'added d; removed b; restarted c; unchanged a'
    >>> describe_reload({**ReloadOutcome(reconfigured=["root"]).result()})
    'new settings for root'
    """
    words = {
        "added": "added",
        "removed": "removed",
        "changed": "restarted",
        "unchanged": "unchanged",
        "reconfigured": "new settings for",
    }
    parts = [f"{word} {', '.join(result[key])}" for key, word in words.items() if result.get(key)]
    parts += [f"{child_id} failed to start: {why}" for child_id, why in result.get("failed", {}).items()]
    return "; ".join(parts) or "nothing to do"


def _describe_event(kind: str, detail: list) -> Any:
    match kind, detail:
        case "signaled", [number]:
            return f"{number} ({signal_name(number)})"
        case "error", [number, stage]:
            return describe_exit(("error", number, stage))
        case _, [single]:
            return single
        case _, []:
            return ""
    return " ".join(map(str, detail))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return repr(value)
