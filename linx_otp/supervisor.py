"""Supervisors: OTP's supervisor behaviour on linx_otp actors (README, "Supervision").

A supervisor is an ``Actor`` that starts its children in order, monitors each from birth,
restarts them by its strategy (``one_for_one``, ``one_for_all``, ``rest_for_one``) and their
restart type (``permanent``, ``transient``, ``temporary``), and gives up when restarts exceed
``max_restarts`` in ``max_seconds``: it then stops every child in reverse start order and exits
``"shutdown"``, which its own supervisor sees like any child's exit. A child whose spec has a
``restart_delay`` is restarted only after its back-off (``linx_otp.backoff``), counted then.
Children are sessions
(``process.child_spec``), supervisors (``child_spec`` here) or any ``Actor``
(``MyActor.child_spec(...)``). Reports go to ``logging`` and, when asked, to an ``events``
owner as ``("linx_supervisor", kind, supervisor_id, child_id, detail)`` tuples. A child whose
spec has a readiness check (``process.child_spec(ready=...)``) is reported ``started`` when its
session starts and ``ready`` when the check passes; only then is the next child started.

Erlang/OTP's ``supervisor`` is the reference: tests/test_supervisor_differential.py runs the
same random scenarios on both and requires equal results, step by step. The one difference
kept: ``which_children`` lists children in start order (OTP lists the newest first). Beyond
OTP's verbs, ``start_child(..., before=ID)`` puts a child in its place in the start order, and
``change_settings`` and ``replace_child_spec`` do what OTP's ``code_change`` does to a running
supervisor (new intensity, strategy or child specs; the running children are left alone).

This module never touches an OS process itself: stopping a session is the session's job.

>>> from linx_otp import process as P, supervisor as S
>>> tree = S.start([P.child_spec(id="sleeper", argv=["sleep", "60"], auto_proceed=True)])
>>> [(child_id, kind) for child_id, _, kind in S.which_children(tree)]
[('sleeper', 'worker')]
>>> S.stop(tree)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pykka

from .actor import Actor, ChildSpec, call, exit_actor, request_shutdown, start_actor, tell_quietly
from .backoff import BackOff
from .errors import LinxError, LinxValueError
from .reactor import reactor

log = logging.getLogger(__name__)

EVENT_TAG = "linx_supervisor"
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
NORMAL_REASONS = ("normal", "shutdown")


def is_normal_exit(reason: Any) -> bool:
    """Whether a transient child that ended with ``reason`` stays down (OTP's rule).

    >>> is_normal_exit("normal"), is_normal_exit(("shutdown", "aborted")), is_normal_exit(("exited", 1))
    (True, True, False)
    """
    return reason in NORMAL_REASONS or (isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "shutdown")


class _Watch:
    """Monitors one incarnation of one child for its supervisor: remembers the reason, wakes
    a supervisor waiting through a shutdown, and tells the supervisor's inbox."""

    def __init__(self, supervisor: pykka.ActorRef) -> None:
        self.supervisor = supervisor
        self.down = threading.Event()
        self.reason: Any = None

    def tell(self, message: tuple) -> None:
        self.reason = message[2]
        self.down.set()
        tell_quietly(self.supervisor, _ChildDown(self))


# -- the supervisor's messages: its own, then one class per public verb ------------------------


@dataclass(frozen=True)
class _ChildDown:
    watch: _Watch


@dataclass(frozen=True)
class _TryAgainRestart:
    """A restart whose start failed is tried again from the inbox (OTP's ``try_again_restart``),
    so that calls queued meanwhile (a stop, a ``terminate_child``) are served first."""

    child_id: Any


@dataclass(frozen=True)
class _BackOffOver:
    """A crashed child's back-off has passed: restart it (if that wait is still the current one)."""

    child_id: Any
    wait: object


@dataclass(frozen=True)
class _StartChild:
    spec: ChildSpec
    before: tuple[Any, ...] = ()
    """``(child_id,)``: start it in the start order before that child; ``()``: last."""


@dataclass(frozen=True)
class _ChangeSettings:
    strategy: str
    max_restarts: int
    max_seconds: float


@dataclass(frozen=True)
class _ReplaceChildSpec:
    spec: ChildSpec


@dataclass(frozen=True)
class _TerminateChild:
    child_id: Any


@dataclass(frozen=True)
class _RestartChild:
    child_id: Any


@dataclass(frozen=True)
class _DeleteChild:
    child_id: Any


@dataclass(frozen=True)
class _WhichChildren:
    pass


@dataclass(frozen=True)
class _CountChildren:
    pass


@dataclass(frozen=True)
class _RestartCounts:
    pass


class _Child:
    """One child spec and its current incarnation. ``ref`` is None when it is not running;
    ``restarting`` is True while a failed restart waits for its retry (OTP's
    ``{restarting, Pid}``) or a crashed child waits out its back-off (``backoff_wait`` then
    names that wait)."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: pykka.ActorRef | None = None
        self.watch: _Watch | None = None
        self.restarting = False
        self.restarts = 0
        self.started_at = 0.0
        self.backoff = _backoff(spec)
        self.backoff_wait: object | None = None


def _backoff(spec: ChildSpec) -> BackOff | None:
    """The back-off a spec asks for (None: restarts at once, as in OTP)."""
    return BackOff(spec.restart_delay, spec.restart_backoff_max or 0.0) if spec.restart_delay else None


@dataclass(frozen=True)
class _Settings:
    id: Any
    strategy: str
    max_restarts: int
    max_seconds: float
    max_children: int | None
    events: Any


class Supervisor(Actor):
    """The supervisor actor. Use the module's functions rather than messages.

    It follows OTP's ``supervisor.erl`` step for step: a child's exit goes through
    ``_child_exited`` (``do_restart``), a restart through ``_restart`` (``restart/2``), which
    first counts it with ``_record_restart`` (``add_restart``); past the intensity the
    supervisor exits at once, so child exits still queued are never counted.
    """

    def __init__(self, specs: list[ChildSpec], settings: _Settings) -> None:
        super().__init__()
        self._settings = settings
        self._children = [_Child(spec) for spec in specs]
        self._restart_times: deque[float] = deque()

    # -- lifecycle -----------------------------------------------------------------------

    def on_start(self) -> None:
        for child in self._children:
            try:
                self._start_child(child)
            except LinxError as error:
                self._stop_children(self._children)
                raise LinxError(
                    ("failed_to_start_child", child.spec.id, error.reason), f"child {child.spec.id!r}: {error}"
                ) from error

    def terminate(self, reason: Any) -> None:
        self._stop_children(self._children)

    def on_receive(self, message: Any) -> Any:
        match message:
            case _ChildDown(watch):
                self._child_exited(watch)
            case _TryAgainRestart(child_id):
                child = self._find(child_id)
                if child is not None and child.restarting and child.backoff_wait is None:
                    self._restart(child)
            case _BackOffOver(child_id, wait):
                child = self._find(child_id)
                if child is not None and child.backoff_wait is wait:
                    self._restart(child)
            case _StartChild(spec, before):
                return self._start_new_child(spec, before)
            case _ChangeSettings(strategy, max_restarts, max_seconds):
                self._settings = dataclasses.replace(
                    self._settings, strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds
                )
            case _ReplaceChildSpec(spec):
                child = self._require(spec.id)
                child.spec, child.backoff = spec, _backoff(spec)
            case _TerminateChild(child_id):
                self._terminate_child(self._require(child_id))
            case _RestartChild(child_id):
                return self._start_child(self._require_stopped(child_id))
            case _DeleteChild(child_id):
                self._children.remove(self._require_stopped(child_id))
            case _WhichChildren():
                return [(child.spec.id, child.ref, child.spec.type) for child in self._children]
            case _CountChildren():
                return self._count_children()
            case _RestartCounts():
                return {child.spec.id: child.restarts for child in self._children}
            case _:
                log.warning("supervisor %r ignoring unexpected message %r", self._settings.id, message)
        return None

    # -- reports ---------------------------------------------------------------------------

    def _report(self, kind: str, child_id: Any, detail: Any, level: int = logging.INFO) -> None:
        log.log(level, "supervisor %r: child %r %s: %r", self._settings.id, child_id, kind, detail)
        if self._settings.events is not None:
            tell_quietly(self._settings.events, (EVENT_TAG, kind, self._settings.id, child_id, detail))

    # -- starting and stopping children ---------------------------------------------------

    def _start_child(self, child: _Child, report: str = "started") -> pykka.ActorRef:
        """Start one incarnation of ``child``; a failure is reported and raised, and leaves
        ``child`` as it was."""
        watch = _Watch(self.actor_ref)
        try:
            ref = start_actor(child.spec.start, [watch])
        except LinxError as error:
            self._report("start_failed", child.spec.id, error.reason, logging.ERROR)
            raise
        except Exception as error:
            self._report("start_failed", child.spec.id, ("exception", error), logging.ERROR)
            raise LinxError(("exception", error), f"starting {child.spec.id!r} raised {error!r}") from error
        child.ref, child.watch, child.restarting, child.backoff_wait = ref, watch, False, None
        child.started_at = time.monotonic()
        self._report(report, child.spec.id, ref)
        if child.spec.ready is not None:
            self._await_ready(child, child.spec.ready, ref)
        return ref

    def _await_ready(self, child: _Child, ready: Callable[[pykka.ActorRef], Any], ref: pykka.ActorRef) -> None:
        """A child with a readiness check has started only once it passes, and this supervisor
        starts nothing else meanwhile (OTP's start order as a dependency order, as systemd's
        ``After=`` with ``Type=notify``). Passed: reported ``ready``. Not passed: the child is
        stopped by its shutdown spec and it is a failed start (reported, and raised)."""
        try:
            detail = ready(ref)
        except LinxError as error:
            failure = error
        except Exception as error:
            failure = LinxError(("exception", error), f"the readiness check of {child.spec.id!r} raised {error!r}")
        else:
            self._report("ready", child.spec.id, detail)
            return
        self._stop_child(child)
        self._report("start_failed", child.spec.id, failure.reason, logging.ERROR)
        raise failure

    def _stop_children(self, children: Iterable[_Child]) -> None:
        for child in reversed(list(children)):
            self._stop_child(child)

    def _stop_child(self, child: _Child) -> None:
        """Stop one child by its spec's ``shutdown``: ask, wait, then stop it outright.
        A child that has ended already (its exit still queued here) is only marked down:
        its queued exit then belongs to no incarnation and is ignored, as OTP's
        ``unlink_flush`` consumes it."""
        ref, watch, shutdown = child.ref, child.watch, child.spec.shutdown
        if ref is None or watch is None:
            return
        child.ref = child.watch = None
        if isinstance(shutdown, str):  # "brutal_kill", the one word check_shutdown keeps
            exit_actor(ref, "shutdown")
        else:
            request_shutdown(ref)
            if not watch.down.wait(shutdown):
                log.warning(
                    "supervisor %r: child %r ignored shutdown for %s s; stopping it",
                    self._settings.id,
                    child.spec.id,
                    shutdown,
                )
                exit_actor(ref, "shutdown")
        watch.down.wait()
        self._report("stopped", child.spec.id, watch.reason)

    def _mark_down(self, child: _Child) -> None:
        """OTP's ``del_child``: a temporary child leaves the children, any other is kept as
        not running."""
        if child.backoff_wait is not None:
            self._report("backoff_cancelled", child.spec.id, "stopped before its restart")
        child.ref = child.watch = child.backoff_wait = None
        child.restarting = False
        if child.spec.restart == "temporary":
            self._children.remove(child)

    # -- restarts ----------------------------------------------------------------------------

    def _find(self, child_id: Any) -> _Child | None:
        return next((child for child in self._children if child.spec.id == child_id), None)

    def _child_exited(self, watch: _Watch) -> None:
        """OTP's ``do_restart``: permanent always, transient unless normal, temporary never."""
        child = next((child for child in self._children if child.watch is watch), None)
        if child is None:
            return  # an incarnation this supervisor stopped itself
        child.ref = child.watch = None
        reason = watch.reason
        normal = is_normal_exit(reason)
        self._report("exited", child.spec.id, reason, logging.INFO if normal else logging.WARNING)
        restart = child.spec.restart
        if not (restart == "permanent" or (restart == "transient" and not normal)):
            self._mark_down(child)
        elif child.backoff is not None:
            self._back_off(child)
        else:
            self._restart(child)

    def _back_off(self, child: _Child) -> None:
        """Beyond OTP: the restart waits out the child's back-off (as ``restarting``: a stop
        cancels it, and a restart of its group in the meantime takes its place)."""
        assert child.backoff is not None
        delay = child.backoff.crashed(ran=time.monotonic() - child.started_at)
        wait = object()
        child.restarting, child.backoff_wait = True, wait
        self._report("backoff", child.spec.id, delay)
        over = _BackOffOver(child.spec.id, wait)
        reactor().call_later(delay, lambda: tell_quietly(self.actor_ref, over))

    def _record_restart(self) -> bool:
        """OTP's ``add_restart``: count one restart now, forget those older than
        ``max_seconds``, and say whether the count is still within ``max_restarts``."""
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self._settings.max_seconds:
            self._restart_times.popleft()
        return len(self._restart_times) <= self._settings.max_restarts

    def _restart(self, failed: _Child) -> None:
        """OTP's ``restart/2``: count the restart, then restart by the strategy; past the
        intensity, report ``gave_up`` and exit ``"shutdown"`` at once (``terminate`` stops
        the children; exits still queued are dropped with the inbox, never counted again)."""
        failed.ref = failed.watch = failed.backoff_wait = None
        failed.restarting = False
        if not self._record_restart():
            limit = ("reached_max_restart_intensity", self._settings.max_restarts, self._settings.max_seconds)
            self._report("gave_up", failed.spec.id, limit, logging.ERROR)
            self.exit_now("shutdown")
            return
        position = self._children.index(failed)
        match self._settings.strategy:
            case "one_for_one":
                group = [failed]
            case "one_for_all":
                group = list(self._children)
            case _:  # rest_for_one
                group = self._children[position:]
        self._restart_group(group)

    def _restart_group(self, group: list[_Child]) -> None:
        """OTP's ``restart_multiple_children``: stop the group in reverse start order (a
        temporary one leaves the children: it is never restarted), then start every other
        member in start order, running before or not. If a start fails, that child is
        ``restarting`` and is tried again from the inbox (counting as a new restart)."""
        for child in reversed(group):
            self._stop_child(child)
            if child.spec.restart == "temporary":
                self._children.remove(child)
        for child in group:
            if child.spec.restart == "temporary":
                continue
            try:
                self._start_child(child, "restarted")
            except LinxError:
                child.restarting = True
                tell_quietly(self.actor_ref, _TryAgainRestart(child.spec.id))
                return
            child.restarts += 1

    # -- the dynamic verbs ---------------------------------------------------------------------

    def _require(self, child_id: Any) -> _Child:
        child = self._find(child_id)
        if child is None:
            raise LinxError("not_found", f"supervisor {self._settings.id!r} has no child {child_id!r}")
        return child

    def _require_stopped(self, child_id: Any) -> _Child:
        child = self._require(child_id)
        if child.restarting:
            raise LinxError("restarting", f"child {child_id!r} is being restarted")
        if child.ref is not None:
            raise LinxError("running", f"child {child_id!r} is running; terminate_child it first")
        return child

    def _start_new_child(self, spec: ChildSpec, before: tuple[Any, ...]) -> pykka.ActorRef:
        """OTP's ``start_child``, and beyond it ``before``: the place in the start order."""
        position = self._children.index(self._require(before[0])) if before else len(self._children)
        existing = self._find(spec.id)
        if existing is not None:
            if existing.ref is not None:
                raise LinxError(("already_started", existing.ref), f"child {spec.id!r} is already running")
            raise LinxError(
                "already_present", f"child {spec.id!r} exists (terminated); restart_child or delete_child it"
            )
        limit = self._settings.max_children
        if limit is not None and sum(child.ref is not None for child in self._children) >= limit:
            raise LinxError("max_children", f"supervisor {self._settings.id!r} already runs max_children={limit}")
        child = _Child(spec)
        ref = self._start_child(child)
        self._children.insert(position, child)
        return ref

    def _terminate_child(self, child: _Child) -> None:
        self._stop_child(child)
        self._mark_down(child)

    def _count_children(self) -> dict[str, int]:
        return {
            "specs": len(self._children),
            "active": sum(child.ref is not None for child in self._children),
            "supervisors": sum(child.spec.type == "supervisor" for child in self._children),
            "workers": sum(child.spec.type == "worker" for child in self._children),
        }


# -- the public verbs ---------------------------------------------------------------------------


def check_children(children: Any) -> list[ChildSpec]:
    """A list of child specs, checked (each a ``ChildSpec``, ids unique) without starting
    anything; raises ``LinxValueError``. ``start`` and ``child_spec`` use it, and so does a
    cluster tree before it ships specs to its nodes."""
    if isinstance(children, (str, bytes)) or not isinstance(children, Iterable):
        raise LinxValueError(("bad_children", children), f"children must be a list of child specs, not {children!r}")
    specs = list(children)
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise LinxValueError(
                ("bad_child_spec", spec),
                f"a child must be a ChildSpec (P.child_spec, S.child_spec, Actor.child_spec), not {spec!r}",
            )
    ids = [spec.id for spec in specs]
    duplicates = sorted({repr(child_id) for child_id in ids if ids.count(child_id) > 1})
    if duplicates:
        raise LinxValueError(
            ("duplicate_child_ids", duplicates), f"child ids must be unique; repeated: {', '.join(duplicates)}"
        )
    return specs


def check_settings(
    *,
    id: Any = "supervisor",
    strategy: Any = "one_for_one",
    max_restarts: Any = 3,
    max_seconds: Any = 5.0,
    max_children: Any = None,
    events: Any = None,
) -> _Settings:
    """Check a supervisor's settings (``start``'s keywords, with its defaults) without starting
    anything; raises ``LinxValueError`` with ``("bad_<name>", value)``."""
    if strategy not in STRATEGIES:
        raise LinxValueError(("bad_strategy", strategy), f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise LinxValueError(
            ("bad_max_restarts", max_restarts), f"max_restarts must be an int >= 0, not {max_restarts!r}"
        )
    if (
        not isinstance(max_seconds, (int, float))
        or isinstance(max_seconds, bool)
        or not math.isfinite(max_seconds)
        or max_seconds <= 0
    ):
        raise LinxValueError(
            ("bad_max_seconds", max_seconds), f"max_seconds must be a finite number > 0, not {max_seconds!r}"
        )
    if max_children is not None and (
        not isinstance(max_children, int) or isinstance(max_children, bool) or max_children < 0
    ):
        raise LinxValueError(
            ("bad_max_children", max_children), f"max_children must be an int >= 0 or None, not {max_children!r}"
        )
    if events is not None and not callable(getattr(events, "tell", None)):
        raise LinxValueError(
            ("bad_events", events), f"events must be an actor ref, a Mailbox or anything with .tell, not {events!r}"
        )
    return _Settings(id, strategy, max_restarts, float(max_seconds), max_children, events)


def _starter(specs: list[ChildSpec], settings: _Settings) -> Any:
    return lambda: Supervisor.start(specs, settings)


def start(
    children: Iterable[ChildSpec],
    *,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    max_children: int | None = None,
    events: Any = None,
    id: Any = "supervisor",
) -> pykka.ActorRef:
    """Start a supervisor and its children in order; returns once every child has started
    (and passed its readiness check, if it has one).
    If a child fails to start, the ones already started are stopped and this raises
    ``LinxError(("failed_to_start_child", id, reason))``. ``events`` (a ref or ``Mailbox``)
    receives ``("linx_supervisor", kind, supervisor_id, child_id, detail)`` reports."""
    specs = check_children(children)
    settings = check_settings(
        id=id,
        strategy=strategy,
        max_restarts=max_restarts,
        max_seconds=max_seconds,
        max_children=max_children,
        events=events,
    )
    try:
        return start_actor(_starter(specs, settings))
    except LinxError as error:
        if isinstance(error.__cause__, LinxError):  # the supervisor's own on_start failure
            raise error.__cause__ from None
        raise


def child_spec(
    children: Iterable[ChildSpec],
    *,
    id: Any,
    restart: str = "permanent",
    shutdown: float | str | None = None,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    max_children: int | None = None,
    events: Any = None,
    restart_delay: float = 0.0,
    restart_backoff_max: float | None = None,
) -> ChildSpec:
    """A child spec for a nested supervisor (type ``"supervisor"``, shutdown ``None``: it is
    given all the time its own children's shutdowns need; ``restart_delay`` and
    ``restart_backoff_max``: its restart back-off, as for any child)."""
    specs = check_children(children)
    settings = check_settings(
        id=id,
        strategy=strategy,
        max_restarts=max_restarts,
        max_seconds=max_seconds,
        max_children=max_children,
        events=events,
    )
    return ChildSpec(
        id=id,
        start=_starter(specs, settings),
        restart=restart,
        shutdown=shutdown,
        type="supervisor",
        restart_delay=restart_delay,
        restart_backoff_max=restart_backoff_max,
    )


_LAST = object()
"""``start_child``'s default place: after every other child."""


def _call(supervisor: pykka.ActorRef, message: Any) -> Any:
    return call(supervisor, message, "the supervisor")


def start_child(supervisor: pykka.ActorRef, spec: ChildSpec, *, before: Any = _LAST) -> pykka.ActorRef:
    """Start and supervise one more child; returns its ref. It goes last in the start order
    (as in OTP), or with ``before=ID`` just before that child, so that a restart of the group
    (and the shutdown, in reverse) treats it as if it had been declared there. Raises
    ``("already_started", ref)``, ``"already_present"``, ``"max_children"``, ``"not_found"``
    (no child ``before``) or the failed start's reason."""
    if not isinstance(spec, ChildSpec):
        raise LinxValueError(("bad_child_spec", spec), f"start_child takes a ChildSpec, not {spec!r}")
    return _call(supervisor, _StartChild(spec, () if before is _LAST else (before,)))


def change_settings(
    supervisor: pykka.ActorRef, *, strategy: str = "one_for_one", max_restarts: int = 3, max_seconds: float = 5.0
) -> None:
    """Give a running supervisor new restart settings (``start``'s keywords and defaults), as
    OTP's ``code_change`` does: no child is stopped or started; the restarts already counted
    stay counted and are measured against the new intensity from the next restart on.

    >>> from linx_otp import process as P
    >>> tree = start([P.child_spec(id="b", argv=["sleep", "60"], auto_proceed=True)])
    >>> change_settings(tree, strategy="rest_for_one", max_restarts=10)
    >>> _ = start_child(tree, P.child_spec(id="a", argv=["sleep", "60"], auto_proceed=True), before="b")
    >>> [child_id for child_id, _, _ in which_children(tree)]
    ['a', 'b']
    >>> stop(tree)
    """
    settings = check_settings(strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds)
    _call(supervisor, _ChangeSettings(settings.strategy, settings.max_restarts, settings.max_seconds))


def replace_child_spec(supervisor: pykka.ActorRef, spec: ChildSpec) -> None:
    """Replace the spec of the child ``spec.id`` and leave its incarnation running, as OTP's
    ``code_change`` does with a changed child spec: the new restart type, shutdown and back-off
    apply from now on, the new ``start`` at its next start. Raises ``"not_found"``."""
    if not isinstance(spec, ChildSpec):
        raise LinxValueError(("bad_child_spec", spec), f"replace_child_spec takes a ChildSpec, not {spec!r}")
    _call(supervisor, _ReplaceChildSpec(spec))


def terminate_child(supervisor: pykka.ActorRef, child_id: Any) -> None:
    """Stop a child by its shutdown spec; its spec stays (unless temporary) for ``restart_child``."""
    _call(supervisor, _TerminateChild(child_id))


def restart_child(supervisor: pykka.ActorRef, child_id: Any) -> pykka.ActorRef:
    """Start a terminated child again from its spec. Raises ``"running"`` if it runs,
    ``"restarting"`` while a failed restart of it waits for its retry."""
    return _call(supervisor, _RestartChild(child_id))


def delete_child(supervisor: pykka.ActorRef, child_id: Any) -> None:
    """Forget a terminated child's spec. Raises ``"running"`` if it runs, ``"restarting"``
    while a failed restart of it waits for its retry."""
    _call(supervisor, _DeleteChild(child_id))


def which_children(supervisor: pykka.ActorRef) -> list[tuple[Any, pykka.ActorRef | None, str]]:
    """``(id, ref or None, "worker" | "supervisor")`` for each child, in start order."""
    return _call(supervisor, _WhichChildren())


def count_children(supervisor: pykka.ActorRef) -> dict[str, int]:
    """``{"specs", "active", "supervisors", "workers"}``."""
    return _call(supervisor, _CountChildren())


def restart_counts(supervisor: pykka.ActorRef) -> dict[Any, int]:
    """How many times each child has been restarted by this supervisor."""
    return _call(supervisor, _RestartCounts())


def stop(supervisor: pykka.ActorRef) -> None:
    """Stop the tree: every child by its shutdown spec, in reverse start order; returns when
    all are gone."""
    supervisor.stop()


__all__ = [
    "STRATEGIES",
    "Supervisor",
    "check_children",
    "change_settings",
    "check_settings",
    "child_spec",
    "count_children",
    "delete_child",
    "is_normal_exit",
    "restart_child",
    "replace_child_spec",
    "restart_counts",
    "start",
    "start_child",
    "stop",
    "terminate_child",
    "which_children",
]
