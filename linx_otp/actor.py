"""The actor base every linx_otp actor is built on, monitors, and child specs.

pykka has no links or monitors; OTP supervision needs to know *how* an actor ended. An
``Actor`` records an exit reason (``"normal"``, ``"shutdown"``, ``("shutdown", x)`` or an
abnormal reason) and tells every monitor ``("DOWN", ref, reason)`` once it has stopped and
cleaned up. It runs on a daemon thread, so live actors never keep the interpreter from exiting.

Unlike a plain pykka actor, a crash in ``on_start`` is an exit with a reason (pykka only logs
it), and ``SystemExit`` raised in a handler ends that actor alone (pykka stops every actor in
the process). This module never starts an OS process.

>>> import linx_otp
>>> class Echo(Actor):
...     def on_receive(self, message):
...         return message
>>> ref = Echo.start()
>>> box = linx_otp.Mailbox()
>>> linx_otp.monitor(ref, box)
>>> ref.stop()
True
>>> box.receive(timeout=1)[2]
'normal'
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import queue
import reprlib
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast, overload

import pykka
from pykka._envelope import Envelope

from . import futex_hash
from .backoff import check_backoff
from .errors import LinxError, LinxValueError
from .flow import consumed
from .mailbox import mailbox

log = logging.getLogger(__name__)

RESTART_TYPES = ("permanent", "transient", "temporary")
CHILD_TYPES = ("worker", "supervisor")


@dataclass(frozen=True)
class _AddMonitor:
    watcher: Any


@dataclass(frozen=True)
class _RemoveMonitor:
    watcher: Any


@dataclass(frozen=True)
class _Shutdown:
    """A supervisor asks its child to end with reason ``"shutdown"`` (the graceful phase)."""


@dataclass(frozen=True)
class _Exit:
    """End with ``reason`` once the messages queued before this one are handled."""

    reason: Any


class _Wake:
    """Told by ``Actor.stop_in_caller`` to an actor it has stopped: its thread, parked on the
    inbox, wakes, finds the actor stopped and ends."""


_WAKE = _Wake()


class _Ref(pykka.ActorRef):
    """A linx_otp actor's ref: pykka's, but a blocking ``stop()`` without a timeout of an actor
    that allows it (``Actor.stops_in_caller``) runs the stop in the calling thread while that
    actor is idle, instead of handing it to the actor's thread and waiting for the answer."""

    @overload
    def stop(self, *, block: Literal[True], timeout: float | None = None) -> bool: ...

    @overload
    def stop(self, *, block: Literal[False], timeout: float | None = None) -> pykka.Future[bool]: ...

    @overload
    def stop(self, *, block: bool = True, timeout: float | None = None) -> bool | pykka.Future[bool]: ...

    def stop(self, *, block: bool = True, timeout: float | None = None) -> bool | pykka.Future[bool]:
        actor = actor_of(self)
        if block and timeout is None and isinstance(actor, Actor) and actor.stop_in_caller():
            return True
        return super().stop(block=block, timeout=timeout)


class _Birth:
    """What ``start_actor`` hands to the actor it is creating: monitors that must be in place
    from the first instruction, and a way to learn whether ``on_start`` succeeded."""

    def __init__(self, monitors: Iterable[Any]) -> None:
        self.monitors = list(monitors)
        self.settled = threading.Event()
        self.failure: Any = None


_births = threading.local()


class _Inbox(queue.SimpleQueue):
    """An actor's inbox that also knows how many messages put in it are not yet handled
    (``Actor.idle``): one entry per message, added before it is queued and removed once it has
    been handled, so there is no moment when a message is neither queued nor counted. A list's
    append and pop are atomic, so any thread may put."""

    def __init__(self) -> None:
        self.unhandled: list[None] = []

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.unhandled.append(None)
        super().put(item, block, timeout)

    def put_back(self, item: Any) -> None:
        """Queue a message taken out unhandled (it is still counted)."""
        super().put(item)


class _SpareThread:
    """One daemon thread started ahead of need. ``threading.Thread.start`` waits for the new
    thread's start-up handshake (about 0.3 ms, a sixth of a whole spawn); an actor that
    adopts the spare instead starts at once, and the spare starts its own replacement before
    it runs the actor's loop, off the caller's path."""

    def __init__(self) -> None:
        self._handoff: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = False
        self._started = False

    def run(self, name: str, loop: Callable[[], None]) -> bool:
        """Run ``loop`` on the idle spare; False (and a spare is made for next time) if none."""
        with self._lock:
            if not self._started:
                self._started = True
                self._launch()
            if not self._idle:
                return False
            self._idle = False
        self._handoff.put((name, loop))
        return True

    def _launch(self) -> None:
        threading.Thread(target=self._wait_for_work, name="linx-otp-spare", daemon=True).start()

    def _wait_for_work(self) -> None:
        with self._lock:
            self._idle = True
        name, loop = self._handoff.get()
        threading.current_thread().name = name
        try:
            self._launch()
        except RuntimeError as error:  # out of threads: the adopted actor must still run
            log.warning("no spare actor thread (%s); the next actor starts its own", error)
            with self._lock:
                self._started = False
        loop()


_spare = _SpareThread()
_thread_numbers = itertools.count(1)


def _forget_spare_in_child() -> None:
    """A child made by ``os.fork()`` has none of its parent's threads, the spare among them
    (an actor handed to it would never run): the child makes its own."""
    global _spare
    _spare = _SpareThread()


os.register_at_fork(after_in_child=_forget_spare_in_child)


class _RefsInStartOrder:
    """pykka's registry of live actors, kept in a dict instead of a list: registering stays in
    start order, and finding and removing a ref at its stop take constant time. pykka's list
    made each stop scan every live actor twice, so stopping 10,000 sessions newest first (a
    supervisor's order) spent 2.1 s in the scans alone, with the GIL held."""

    def __init__(self, refs: Iterable[Any]) -> None:
        self._refs = dict.fromkeys(refs)

    def append(self, ref: Any) -> None:
        self._refs[ref] = None

    def remove(self, ref: Any) -> None:
        del self._refs[ref]

    def __contains__(self, ref: Any) -> bool:
        return ref in self._refs

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: Any) -> Any:
        return list(self._refs)[index]


def _index_the_actor_registry() -> None:
    # pykka-internal: ActorRegistry keeps live refs in the class attribute _actor_refs, a list
    # it only appends to, tests with ``in``, removes from, iterates and copies with [:] (all
    # under _actor_refs_lock); _RefsInStartOrder answers those in constant time.
    with pykka.ActorRegistry._actor_refs_lock:
        refs = pykka.ActorRegistry._actor_refs
        if not isinstance(refs, _RefsInStartOrder):
            pykka.ActorRegistry._actor_refs = cast("list[Any]", _RefsInStartOrder(refs))


_index_the_actor_registry()


class Actor(pykka.ThreadingActor):
    """A pykka actor that ends with an exit reason and reports it to its monitors.

    Subclasses put their cleanup in ``terminate(reason)`` (not ``on_stop``/``on_failure``),
    end themselves with ``self.exit(reason)`` (or ``self.exit_now(reason)``), and may override
    ``shutdown_requested()`` to end gracefully when a supervisor asks. Messages are typed
    classes handled with ``match`` in ``on_receive``; callers use ``call(ref, message)``.

    As the owner of a session, it gives each output event's window back once ``on_receive`` has
    returned from handling it (``linx_otp.consumed``).

    ``_ended`` means: ``terminate`` has run and the monitors have been told (it runs once).
    """

    use_daemon_thread = True
    stops_in_caller = False
    """Whether a blocking ``stop()`` may run this actor's stop (``on_stop``, so ``terminate``)
    in the calling thread while the actor is idle (``stop_in_caller``): only for an actor
    whose ``terminate`` needs nothing of its own thread (a session's waits for its agent and
    tells events; a supervisor's uses its thread's mailbox)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # pykka-internal: Actor.__init__ makes the ref as _actor_ref (the actor_ref property's
        # field); ours is made before anyone can see the first.
        self._actor_ref = _Ref(self)
        self._turn = threading.Lock()
        """Held by the thread acting for this actor: its own while it handles a message, or a
        caller's while it runs the stop (``stop_in_caller``); never both at once."""
        self._looping = False
        """``on_start`` has run and the actor's thread takes messages."""
        birth = getattr(_births, "pending", None)
        _births.pending = None  # only the first actor created inside start_actor() takes it
        self._birth: _Birth | None = birth
        self._exit_reason: Any = "normal"
        self._ended = False
        self._monitors: list[Any] = list(birth.monitors) if birth else []
        self._monitors_lock = threading.Lock()

    def exit(self, reason: Any) -> None:
        """End with ``reason`` once the messages already queued to this actor are handled."""
        self._exit_reason = reason
        self.stop()

    def exit_now(self, reason: Any) -> None:
        """End with ``reason`` right after the current message: ``terminate`` runs now, and
        messages still queued are dropped (an ``ask`` among them raises ``ActorDeadError``),
        as an Erlang process's mailbox dies with it (a supervisor that gives up)."""
        self._exit_reason = reason
        # pykka-internal: Actor._stop ends the loop without handling the rest of the inbox;
        # pykka's public stop() would queue behind those messages.
        self._stop()

    def terminate(self, reason: Any) -> None:
        """Cleanup hook, run in the actor's thread once, however it ends."""

    def take_queued_tells(self, selects: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the messages queued to this actor by ``tell`` that ``selects``
        accepts, oldest first; everything else stays queued, in order. For ``terminate``: a
        told message that expects an answer by other means (a future it carries) would never
        get one from pykka's teardown, which only answers asks."""
        # pykka-internal: pykka's ActorInbox protocol has no non-blocking get; this actor's
        # inbox is a queue.SimpleQueue of envelopes (message, reply_to) (_create_actor_inbox).
        # Once the actor has stopped tell refuses new messages, so emptying it and putting back
        # what stays keeps the order. During a stop in a caller's thread the actor's own thread
        # may take a message meanwhile (it hands it to ``answer_left_tells``), so the inbox is
        # emptied until it says so, not by a look at empty() first.
        inbox = cast("_Inbox", self.actor_inbox)
        taken, kept = [], []
        while True:
            try:
                envelope = inbox.get_nowait()
            except queue.Empty:
                break
            if envelope.reply_to is None and selects(envelope.message):
                taken.append(envelope.message)
                inbox.unhandled.pop()  # handled by the caller
            else:
                kept.append(envelope)
        for envelope in kept:
            inbox.put_back(envelope)
        return taken

    def answer_left_tells(self) -> None:
        """Run by this actor's thread, holding the turn, when it finds the actor stopped in a
        caller's thread (``stop_in_caller``) with a message in hand, which is back in the
        inbox: a told message that expects an answer by other means must get it here
        (``take_queued_tells``), since pykka's teardown only answers asks. Default: nothing."""

    def shutdown_requested(self) -> None:
        """A supervisor asks this actor to end with ``"shutdown"``; it has the child spec's
        ``shutdown`` seconds to do so before it is stopped outright. Default: at once."""
        self.exit("shutdown")

    def stop_in_caller(self) -> bool:
        """Stop this actor in the calling thread, as its own thread would handle pykka's stop
        (``on_stop`` and so ``terminate`` run here, and the monitors are told), if it allows it
        (``stops_in_caller``) and is idle: started, not stopped, with nothing sent to it
        unhandled, and its thread parked on the inbox. False, changing nothing, otherwise. Its
        thread, told ``_WAKE``, then finds it stopped and ends without waiting for anyone.
        This spares a stop two hand-overs between threads (0.15-0.26 ms of a session's whole
        cycle: benchmarks/spawn.py)."""
        if not self.stops_in_caller or not self._turn.acquire(blocking=False):
            return False
        if not self._looping or self.actor_stopped.is_set() or not self.idle():
            self._turn.release()
            return False
        try:
            # pykka-internal: Actor._stop is what pykka's own stop message runs (unregister,
            # mark stopped, on_stop); here in the caller's thread, holding the turn.
            self._stop()
        finally:
            self._turn.release()
            # pykka-internal: an Envelope put in the inbox is how pykka's tell sends (tell
            # refuses a stopped actor). Woken only now, the thread does not wait out the stop;
            # woken even if the stop was interrupted (Ctrl-C in this thread), it ends.
            self.actor_inbox.put(Envelope(_WAKE))
        return True

    @classmethod
    def child_spec(
        cls,
        *args: Any,
        id: Any = None,
        restart: str = "permanent",
        shutdown: float | str | None = 5.0,
        restart_delay: float = 0.0,
        restart_backoff_max: float | None = None,
        **kwargs: Any,
    ) -> ChildSpec:
        """A child spec that starts ``cls(*args, **kwargs)`` (``id`` defaults to the class
        name); ``id``, ``restart``, ``shutdown`` and the back-off are the supervisor's, not the
        actor's."""
        return ChildSpec(
            id=cls.__name__ if id is None else id,
            start=lambda: cls.start(*args, **kwargs),
            restart=restart,
            shutdown=shutdown,
            restart_delay=restart_delay,
            restart_backoff_max=restart_backoff_max,
        )

    # -- pykka hooks: private methods of pykka 4.5 (the range pinned in pyproject.toml) ---------

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        # pykka-internal: the inbox factory (pykka's ActorInbox protocol: put, get, empty). A
        # SimpleQueue (C, one lock) instead of pykka's queue.Queue (three Conditions in Python):
        # telling and taking a message cost less, and an idle actor holds 2 KiB less, which
        # counts with 10,000 sessions (benchmarks/spawn.py, the scaling rows).
        return _Inbox()

    def _start_actor_loop(self) -> None:
        # pykka-internal: _start_actor_loop/_actor_loop are how a ThreadingActor gets its thread;
        # overridden to adopt a spare thread (see _SpareThread).
        futex_hash.fit(threading.active_count())  # every actor is a thread asleep on its inbox
        if not (
            self.use_daemon_thread
            and _spare.run(f"{self.__class__.__name__}-{next(_thread_numbers)}", self._actor_loop)
        ):
            super()._start_actor_loop()

    def _actor_loop_setup(self) -> None:
        # pykka-internal: the step that runs on_start; pykka would only log a failure and leave
        # monitors waiting, so a crash here becomes an exit reason.
        try:
            self.on_start()
        except BaseException as error:
            log.error("%s failed to start", self, exc_info=error)
            self.exit_now(("exception", error))
        finally:
            self._looping = True
            if self._birth is not None:
                self._birth.failure = self._exit_reason if self._ended else None
                self._birth.settled.set()

    def _actor_loop_running(self) -> None:
        # pykka-internal: pykka 4.5's message loop, unchanged but for the turn: each message is
        # handled holding it, so that stop_in_caller can act for a parked actor. A message
        # taken once a caller has stopped the actor goes back for pykka's teardown, which
        # answers asks with ActorDeadError, as for any message that reaches a stopped actor;
        # told ones that carry their own future are this actor's to answer (answer_left_tells).
        while not self.actor_stopped.is_set():
            envelope = self.actor_inbox.get()
            with self._turn:
                if self.actor_stopped.is_set():
                    cast("_Inbox", self.actor_inbox).put_back(envelope)
                    self.answer_left_tells()
                    return
                self._handle_envelope(envelope)

    def _handle_envelope(self, envelope: Any) -> None:
        # pykka-internal: the body of pykka 4.5's Actor._actor_loop_running, as it is there.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                log.info("Exception returned from %s to caller:", self, exc_info=sys.exc_info())
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:
                    self._handle_failure(*sys.exc_info())
        except BaseException:
            log.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], self)
            self._stop()
            pykka.ActorRegistry.stop_all()

    def idle(self) -> bool:
        """Whether every message told or asked of this actor so far has been handled: what
        the calling thread sent it before is still unhandled, so a fast path taken only when
        idle cannot overtake it (``process.signal``). A message another thread sends at the
        same moment has no order with the call anyway."""
        return not cast("_Inbox", self.actor_inbox).unhandled

    def _handle_receive(self, message: Any) -> Any:
        # pykka-internal: the dispatch before on_receive, for every message pykka's loop takes;
        # the base's own messages are handled here so that subclasses' on_receive never sees
        # them, and SystemExit ends this actor alone (pykka would stop every actor in the
        # process). It also counts the message handled (idle()).
        try:
            return self._dispatch(message)
        finally:
            cast("_Inbox", self.actor_inbox).unhandled.pop()

    def _dispatch(self, message: Any) -> Any:
        match message:
            case _AddMonitor(watcher):
                with self._monitors_lock:
                    self._monitors.append(watcher)
                return None
            case _RemoveMonitor(watcher):
                with self._monitors_lock:
                    self._monitors = [known for known in self._monitors if known is not watcher]
                return None
            case _Shutdown():
                self._exit_reason = "shutdown"
                return self.shutdown_requested()
            case _Exit(reason):
                return self.exit(reason)
        try:
            return super()._handle_receive(message)
        except SystemExit as error:
            log.error("%s raised SystemExit(%r); stopping it alone", self, error.code)
            self.exit_now(("exception", error))
            raise LinxError(("exception", error), f"the actor exited: SystemExit({error.code!r})") from error
        finally:
            # Flow control (flow.py): a session's output event gives its window back once the
            # actor has handled it. pykka has no public hook for "a message was handled"; this
            # private one is pinned with the others.
            consumed(message)

    def on_stop(self) -> None:
        self._end(self._exit_reason)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        cause = exception_value.__cause__ if isinstance(exception_value, LinxError) else None
        self._end(("exception", cause if isinstance(cause, SystemExit) else exception_value))

    def _end(self, reason: Any) -> None:
        if self._ended:
            return
        self._ended = True
        self._exit_reason = reason
        try:
            self.terminate(reason)
        finally:
            with self._monitors_lock:
                monitors, self._monitors = self._monitors, []
            for watcher in monitors:
                tell_quietly(watcher, ("DOWN", self.actor_ref, reason))


def actor_of(ref: pykka.ActorRef) -> Any:
    """The actor object behind ``ref``, or None once it has been collected. For a verb's fast
    path that reads an actor's state, or sends on its behalf, without a round trip through its
    thread (``process.signal``); the actor must make what it offers so
    thread-safe."""
    # pykka-internal: an ActorRef holds its actor by a weak reference (_actor_weakref), and
    # pykka offers no public way to reach it.
    return ref._actor_weakref()


def tell_quietly(destination: Any, message: Any) -> None:
    """Tell ``message`` to a ref or ``Mailbox``; a destination that is gone is not an error
    (as an Erlang send to a dead process), anything else is logged, never raised."""
    try:
        destination.tell(message)
    except pykka.ActorDeadError:
        pass
    except Exception:
        log.exception("delivering %r to %r failed", message, destination)


def call(ref: pykka.ActorRef, message: Any, what: str = "the actor") -> Any:
    """Ask an actor ``message`` (a typed message its ``on_receive`` matches) and return the
    answer; an actor that is gone raises ``LinxError("no_process")``, an error raised by its
    handler is raised here.

    >>> class Doubler(Actor):
    ...     def on_receive(self, message):
    ...         return 2 * message
    >>> ref = Doubler.start()
    >>> call(ref, 21)
    42
    >>> ref.stop()
    True
    >>> call(ref, 21, "the doubler")
    Traceback (most recent call last):
    linx_otp.errors.LinxError: the doubler is gone (asked 21)
    """
    try:
        return ref.ask(message)
    except pykka.ActorDeadError:
        raise LinxError("no_process", f"{what} is gone (asked {_described(message)})") from None


def _described(message: Any) -> str:
    """A message as an error names it: linx_otp's own typed messages by their name (their
    fields hold child specs and callables, hundreds of characters that tell an operator
    nothing), anything else by a repr cut short."""
    if type(message).__module__.startswith(__package__ + ".") and dataclasses.is_dataclass(message):
        return type(message).__name__.lstrip("_")
    return reprlib.repr(message)


def monitor(ref: pykka.ActorRef, watcher: Any = None) -> None:
    """Deliver ``("DOWN", ref, reason)`` to ``watcher`` (a ref, a ``Mailbox``, or the calling
    thread's mailbox) once the actor has stopped; at once with ``"noproc"`` if it already has."""
    destination = mailbox() if watcher is None else watcher
    try:
        ref.ask(_AddMonitor(destination))
    except pykka.ActorDeadError:
        tell_quietly(destination, ("DOWN", ref, "noproc"))


def demonitor(ref: pykka.ActorRef, watcher: Any = None) -> None:
    """Undo ``monitor(ref, watcher)``: no DOWN will reach that watcher (a no-op for an actor
    that is gone; a DOWN already sent stays sent)."""
    destination = mailbox() if watcher is None else watcher
    try:
        ref.ask(_RemoveMonitor(destination))
    except pykka.ActorDeadError:
        pass


def start_actor(start: Callable[[], pykka.ActorRef], monitors: Iterable[Any] = ()) -> pykka.ActorRef:
    """Run ``start`` (which creates one ``Actor``), with ``monitors`` watching it from birth,
    and return its ref once its ``on_start`` has run. If ``on_start`` failed, the monitors
    get their DOWN and this raises ``LinxError(("failed_to_start", reason))``.

    Monitoring from birth matters: a ``linger=False`` session can end before a later
    ``monitor()`` call would reach it.
    """
    birth = _Birth(monitors)
    _births.pending = birth
    try:
        ref = start()
    finally:
        _births.pending = None
    if not issubclass(ref.actor_class, Actor):
        ref.stop()
        raise LinxValueError(("bad_start", start), f"a child must start a linx_otp.Actor, not {ref.actor_class!r}")
    birth.settled.wait()
    if birth.failure is not None:
        cause: BaseException | None = None
        match birth.failure:
            case ("exception", BaseException() as exception):
                cause = exception
        raise LinxError(
            ("failed_to_start", birth.failure), f"{ref.actor_class.__name__} failed to start: {birth.failure!r}"
        ) from cause
    return ref


def start_monitored(start: Callable[[], pykka.ActorRef], watcher: Any = None) -> pykka.ActorRef:
    """Start an actor with ``start`` and monitor it from its first instruction: the DOWN
    reaches ``watcher`` (default: the calling thread's mailbox) even if the actor ends before
    this returns, which a later ``monitor()`` could miss (it would say ``"noproc"``).

    >>> import linx_otp
    >>> from linx_otp import process as P
    >>> box = linx_otp.Mailbox()
    >>> session = start_monitored(lambda: P.spawn(argv=["true"], linger=False, auto_proceed=True, owner=box), box)
    >>> box.receive(("DOWN",), timeout=5)[2]
    'normal'
    """
    return start_actor(start, [mailbox() if watcher is None else watcher])


def request_shutdown(ref: pykka.ActorRef) -> None:
    """Ask an actor to end with ``"shutdown"`` (``shutdown_requested`` runs in its thread)."""
    tell_quietly(ref, _Shutdown())


def exit_actor(ref: pykka.ActorRef, reason: Any) -> None:
    """Make an actor end with ``reason`` after the messages already queued to it."""
    tell_quietly(ref, _Exit(reason))


MAX_SHUTDOWN_SECONDS = 365 * 24 * 3600.0
"""The longest finite ``shutdown``: a year (longer waits are ``None``, "wait forever")."""


def check_shutdown(shutdown: Any) -> float | str | None:
    """A child's ``shutdown``, checked and normalised: seconds (finite, 0 to a year),
    ``"brutal_kill"``, or ``None``/``"infinity"`` (wait forever, returned as ``None``).
    Raises ``LinxValueError(("bad_shutdown", value))``. The one check, used by specs and tree files.

    >>> check_shutdown(2), check_shutdown("infinity"), check_shutdown("brutal_kill")
    (2.0, None, 'brutal_kill')
    """
    if shutdown is None or shutdown == "infinity":
        return None
    if shutdown == "brutal_kill":
        return shutdown
    if (
        isinstance(shutdown, (int, float))
        and not isinstance(shutdown, bool)
        and math.isfinite(shutdown)
        and 0 <= shutdown <= MAX_SHUTDOWN_SECONDS
    ):
        return float(shutdown)
    raise LinxValueError(
        ("bad_shutdown", shutdown),
        f"shutdown must be seconds from 0 to {MAX_SHUTDOWN_SECONDS:.0f}, 'brutal_kill', or None/'infinity', "
        f"not {shutdown!r}",
    )


def check_restart(restart: Any) -> str:
    """A child's restart type, checked: one of ``RESTART_TYPES``; raises
    ``LinxValueError(("bad_restart", value))``."""
    if not isinstance(restart, str) or restart not in RESTART_TYPES:
        raise LinxValueError(("bad_restart", restart), f"restart must be one of {RESTART_TYPES}, not {restart!r}")
    return restart


@dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child (OTP's child spec).

    ``start`` creates the child actor and returns its ref; ``restart`` is ``"permanent"``,
    ``"transient"`` or ``"temporary"``; ``shutdown`` is seconds (ask, wait, then stop
    outright), ``"brutal_kill"`` or ``None`` (wait forever); ``type`` is ``"worker"`` or
    ``"supervisor"``. ``ready``, if given, is called with each new incarnation's ref and
    returns (a description) once it is ready, or raises ``LinxError``: the supervisor counts
    the child as started only then (``readiness.Readiness.waiter`` makes one). Beyond OTP,
    ``restart_delay`` seconds pass before a crashed child is restarted, doubling per
    consecutive crash up to ``restart_backoff_max`` (``None``: no doubling); see
    ``linx_otp.backoff``.
    """

    id: Any
    start: Callable[[], pykka.ActorRef] = field(repr=False)
    restart: str = "permanent"
    shutdown: float | str | None = 5.0
    type: str = "worker"
    ready: Callable[[pykka.ActorRef], Any] | None = field(default=None, repr=False)
    restart_delay: float = 0.0
    restart_backoff_max: float | None = None

    def __post_init__(self) -> None:
        try:
            hash(self.id)
        except TypeError:
            raise LinxValueError(("bad_id", self.id), f"a child id must be hashable, not {self.id!r}") from None
        if not callable(self.start):
            raise LinxValueError(("bad_start", self.start), "start must be a callable that returns an actor ref")
        check_restart(self.restart)
        object.__setattr__(self, "shutdown", check_shutdown(self.shutdown))
        if self.type not in CHILD_TYPES:
            raise LinxValueError(("bad_type", self.type), f"type must be one of {CHILD_TYPES}, not {self.type!r}")
        if self.ready is not None and not callable(self.ready):
            raise LinxValueError(
                ("bad_ready", self.ready), f"ready must be None or a callable f(ref), not {self.ready!r}"
            )
        delay, maximum = check_backoff(self.restart_delay, self.restart_backoff_max)
        object.__setattr__(self, "restart_delay", delay)
        object.__setattr__(self, "restart_backoff_max", maximum)
