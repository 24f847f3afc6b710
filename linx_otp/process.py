"""Sessions: one pykka actor per workload, owning exactly one agent process.

A user spawns (or enters) a workload, which parks at the checkpoint between clone and execve;
the owner gets ``("linx_process", "ready", host_pid)``, configures the child from the host,
and calls ``proceed``. Events follow to the owner's mailbox, ending with exactly one terminal
event. The module-level functions are the verbs (README, "Using it"); the ``Session`` actor holds the
state ladder. This module never forks and never blocks the I/O thread.

Events reach the owner in the order the agent sent them, by one of two hands. The session
actor handles every event the I/O thread queues for it (``AgentConnection``). But while it has
nothing queued or in hand, the I/O thread hands a live session's output (``stdout``,
``stderr``, ``pty_out``) straight to an owner that is a ``Mailbox`` or an actor
(``_deliver_directly``, ``takes_output_in_io_thread``): a flood of output then costs no wake-up of the session actor.
It also takes the start (``_take_start_directly``) and a lingering session's outcome
(``_take_end_directly``) when nothing needs the actor. The first event it declines queues for
the actor, and so does everything after it until the actor has handled it, which keeps the
order: ``ready`` and ``running`` before any output, all output before the terminal event.
``signal`` to a running workload goes straight to its agent from the caller's thread. ``_owner_lock`` makes
telling output and ``set_owner``'s swap atomic with each other, so ``set_owner`` takes effect
when it returns. The I/O thread sends nothing to the agent on this path (an owner found gone
is this actor's to deal with), and the window's claim and credit (``flow``) are the same on both paths.

>>> from linx_otp import process as P
>>> import linx_otp
>>> session = P.spawn(argv=["/bin/true"], auto_proceed=True)
>>> P.wait(session)
('exited', 0)
>>> [event[1] for event in linx_otp.flush()]
['ready', 'running', 'exited']
>>> session.stop()
True
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from signal import SIGTERM
from typing import Any, Unpack

import pykka

from . import protocol
from .actor import Actor, ChildSpec, actor_of, call, tell_quietly
from .agent import AgentConnection, many_live_agents
from .errors import LinxError, LinxValueError, describe_outcome
from .flow import EVENT_TAG, OutputWindow, consumed
from .held_output import DRAINING, HELD, RELAYED, STREAMS, WAITING, HeldPipe, open_held_pipes
from .mailbox import Mailbox, check_timeout, flush, mailbox, receive
from .options import SessionOptions, SessionPlan, check_owner, check_target, credit_on_tell, plan_session
from .reactor import reactor
from .readiness import Readiness, check_readiness

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""How long a graceful stop waits for the agent to reap the workload before it kills the agent
(whose death takes the workload with it)."""
KILL_TIMEOUT = 0.5
"""The same wait when a supervisor stops the session outright (``brutal_kill``, or its child's
shutdown seconds are over): the time is already spent, and a live agent kills and reaps the
whole tree in milliseconds, so only a stuck one (stopped, say) is killed."""

Outcome = tuple
"""``("exited", code)``, ``("signaled", signum)``, ``("aborted",)`` or ``("error", errno, stage)``."""

TERMINAL_EVENTS = ("exited", "signaled", "aborted", "error")

OWNER_CHECK_SECONDS = 0.5
"""While an actor owner holds a full output window, how often its session checks that it lives."""


@dataclass(frozen=True)
class Info:
    """A snapshot of a session (``info(session)``)."""

    mode: str
    """``"spawn"`` or ``"enter"``."""
    stage: str
    """``starting spawned ready running`` (live) or ``exited signaled aborted errored``."""
    host_pid: int | None
    """The workload's pid as the host sees it; None before the agent has cloned."""
    child_pid: int | None
    """The workload's own view of its pid (1 in a fresh pid namespace); None before ready."""
    pty: bool
    result: Outcome | None
    """The outcome once terminal, else None."""

    def __repr__(self) -> str:
        stage = self.stage
        match self.result:
            case ("exited" | "signaled", number):
                stage = f"{stage}({number})"
            case ("error", number, where):
                stage = f"{stage}({where}/{number})"
        host = "" if self.host_pid is None else f" host={self.host_pid}"
        return f"<Info {self.mode} {stage}{host}{' pty' if self.pty else ''}>"


def takes_output_in_io_thread(owner: Any) -> bool:
    """Whether the I/O thread may tell ``owner`` output itself: a ``Mailbox`` or an actor, whose
    ``tell`` only queues, and which give the window back by themselves (so the I/O thread never
    sends credit). Any other owner's ``tell`` is code that could block, or send credit: its
    session actor tells it, as every other event."""
    return isinstance(owner, (Mailbox, pykka.ActorRef))


def _can_be_watched(owner: Any) -> bool:
    """Whether the session can tell when ``owner`` will take no more output: an actor (it stops)
    or a ``Mailbox`` (the thread that reads it ends)."""
    return isinstance(owner, (pykka.ActorRef, Mailbox))


def _still_takes_output(owner: pykka.ActorRef | Mailbox) -> bool:
    if isinstance(owner, Mailbox):
        return not owner.reader_has_ended()
    return owner.is_alive()


def exit_reason(outcome: Outcome) -> Any:
    """The exit reason of a ``linger=False`` session that ended with ``outcome`` (README, "Supervision")."""
    match outcome:
        case ("exited", 0):
            return "normal"
        case ("aborted",):
            return ("shutdown", "aborted")
    return outcome


class _EventsWaiting:
    """Nudge from the I/O thread: the agent connection has events queued."""


_EVENTS_WAITING = _EventsWaiting()


@dataclass(frozen=True)
class _PipeDrained:
    """From the mailbox holding a pipe: its last output is all queued (``Mailbox.finish``)."""

    pipe: HeldPipe


@dataclass(frozen=True)
class _CheckOwner:
    """Timer: is the actor that holds the session's full window still alive?"""

    owner: Any


# -- the session's messages: one class per verb, asked by the module's functions ---------------
# Public so that a caller can ask without blocking (``session.ask(P.GetInfo(), block=False)``);
# the functions below are the API.


@dataclass(frozen=True)
class Proceed:
    """Ask: let the parked child go on to execve (``proceed``)."""


@dataclass(frozen=True)
class Abort:
    """Ask: discard the parked child unrun (``abort``)."""


@dataclass(frozen=True)
class Signal:
    """Ask: send ``signum`` to the workload, or buffer it until ``running`` (``signal``)."""

    signum: int


@dataclass(frozen=True)
class Wait:
    """Tell: set ``waiter``'s result to the outcome once there is one. Told, not asked, so
    that a timeout leaves nothing blocked in the session. ``wait`` itself registers its waiter
    directly (``Session.add_waiter``): a message told as the session stops can arrive after
    pykka's teardown and never be answered."""

    waiter: concurrent.futures.Future


@dataclass(frozen=True)
class CancelWait:
    """Ask: forget ``waiter``; answers the outcome if there is one already (``Session.cancel_wait``)."""

    waiter: concurrent.futures.Future


@dataclass(frozen=True)
class GetHostPid:
    """Ask: the workload's host pid (``host_pid``)."""


@dataclass(frozen=True)
class GetInfo:
    """Ask: an ``Info`` snapshot (``info``)."""


_ANY_OWNER = object()
"""``SetOwner.only_from`` when the owner is replaced whoever it is."""


@dataclass(frozen=True)
class SetOwner:
    """Ask: send future events to ``owner``; answers the previous owner (``swap_owner``). With
    ``only_from``, only if that is the owner now (``give_back``); otherwise nothing changes, and
    it answers the owner there is."""

    owner: Any
    only_from: Any = _ANY_OWNER


@dataclass(frozen=True)
class PtyWrite:
    """Ask: type ``data`` into a running pty session (``pty_write``)."""

    data: bytes


@dataclass(frozen=True)
class PtySetWinsize:
    """Ask: set a pty session's window size, ``(rows, cols, xpixel, ypixel)`` (``pty_set_winsize``)."""

    size: tuple[int, int, int, int]


class Session(Actor):
    """The session actor. Use the module's functions rather than messages."""

    stops_in_caller = True  # terminate waits for the agent and tells events: any thread can

    def __init__(self, plan: SessionPlan, connection: AgentConnection, held_pipes: tuple[HeldPipe, ...] = ()) -> None:
        super().__init__()
        self._plan = plan
        self._connection = connection
        self._held_pipes = held_pipes
        """Capture pipes the first owner (a ``Mailbox``) reads itself from ``running`` on
        (``held_output``); the agent relays them once the owner changes or stops taking."""
        self._waiting_outcome: Outcome | None = None
        """The outcome, kept until the mailbox holding the pipes has queued their last output
        (``_outcome_waits_for_pipes``): as the agent keeps it until it has relayed its pipes'."""
        self._owner = plan.owner
        self._pty = plan.request.pty
        self._host_pid: int | None = None
        self._child_pid: int | None = None
        self._running = False
        self._pending_signals: list[int] = []
        self._pending_abort = False
        self._setup_failure: Outcome | None = None
        self._setup_release: Any = None
        self._waiters: list[concurrent.futures.Future] = []
        self._waiters_closed = False
        """The session has stopped (``answer_left_tells``): no waiter is added any more."""
        self._result: Outcome | None = None
        self._stopping = False
        """The session is ending: ``terminate`` has begun, or ``_finish`` has asked for the exit.
        Nothing may ask for an exit again (``_finish`` checks it)."""
        self._shutting_down = False
        """A supervisor asked for a graceful stop (``shutdown_requested``) before the outcome:
        the workload was sent SIGTERM or aborted, and the outcome ends the session with
        ``"shutdown"`` (whatever ``linger`` says)."""
        self._window = OutputWindow(plan.request.output_window, connection.send)
        self._credit_on_tell = credit_on_tell(plan.owner)
        self._owner_takes_output_in_io_thread = takes_output_in_io_thread(plan.owner)
        self._dropping_for_stopped_owner = False
        self._owners_watched: set[pykka.ActorRef] = set()
        """Actors that hold the full window (the owner, or one it was taken from) and are checked on."""
        self._owner_lock = threading.Lock()
        """Held while an output event, or ``ready`` or ``running`` (``_take_start_directly``),
        is told to the owner (by this actor or the I/O thread), while the owner is swapped,
        while ``_signal`` and ``signal_directly`` decide between sending and buffering, and
        while the outcome is recorded or the waiters change (``_take_end_directly``, ``_finish``,
        ``shutdown_requested``). The I/O thread never waits for it behind a send to the agent:
        ``set_owner``, ``_check_owner``, ``_signal`` and ``signal_directly`` send only after
        releasing it, and this actor tells output (and may send an on-tell owner's credit)
        only while it handles queued events, when the I/O thread delivers nothing itself."""

    # -- lifecycle -----------------------------------------------------------------------

    def on_start(self) -> None:
        self._connection.listen(self._nudge, self._deliver_directly)

    def _nudge(self) -> None:
        try:
            self.actor_ref.tell(_EVENTS_WAITING)
        except pykka.ActorDeadError:
            pass  # stopping: terminate() drains the rest itself

    def on_receive(self, message: Any) -> Any:
        match message:
            case _EventsWaiting():
                self._drain_events()
            case Proceed():
                self._proceed()
            case Abort():
                self._abort()
            case Signal(signum):
                self._signal(signum)
            case Wait(waiter):
                self.add_waiter(waiter)
            case CancelWait(waiter):
                return self.cancel_wait(waiter)
            case GetHostPid():
                return self._get_host_pid()
            case GetInfo():
                return self._info()
            case SetOwner(owner, only_from):
                return self._set_owner(owner, only_from)
            case PtyWrite(data):
                self._pty_write(data)
            case PtySetWinsize(size):
                self._pty_set_winsize(size)
            case _CheckOwner(owner):
                self._check_owner(owner)
            case _PipeDrained(pipe):
                self._pipe_drained(pipe)
            case _:
                log.warning("session ignoring unexpected message %r", message)
        return None

    def terminate(self, reason: Any) -> None:
        """The graceful reap: the workload never outlives its session (README, "Using it")."""
        self._stopping = True
        try:
            self._end_agent(reason)
        except BaseException:
            # Interrupted (Ctrl-C in the thread that stops this session: stop_in_caller): no
            # agent outlives its session, and its end, drained below, is the owner's outcome.
            self._connection.kill()
            self._connection.finished.wait(KILL_TIMEOUT)
            raise
        finally:
            self._drain_events()
            # what an outcome kept for the pipes still waits for is dropped, as the agent drops at a stop
            with self._owner_lock:
                self._close_pipes()
            self._finish_waiting_outcome()
            self.answer_left_tells()

    def _end_agent(self, reason: Any) -> None:
        """Have the agent end the workload (if it has not ended) and wait for the agent's exit."""
        if self._connection.finished.is_set():  # the agent is reaped: DOWN means gone
            return
        if self._result is None:
            self._hand_pipes_to_agent()  # it drops them at the stop: one reader, so one order
            self._connection.send(protocol.encode_command(protocol.CMD_STOP))
        # a supervisor's stop outright of a workload that has not ended (after its end, the
        # agent is only exiting)
        timeout = KILL_TIMEOUT if reason == "shutdown" and self._result is None else STOP_TIMEOUT
        if not self._connection.finished.wait(timeout):
            log.error("agent %d did not reap its workload in %s s; killing it", self._connection.pid, timeout)
            self._connection.kill()
            self._connection.finished.wait(STOP_TIMEOUT)

    def answer_left_tells(self) -> None:
        """The session has stopped: every ``Wait`` still queued (told, not asked, so pykka's
        teardown would drop it) gets the outcome, and every waiter without one fails with
        ``no_process``. Run by ``terminate``, and again by this actor's thread for a ``Wait``
        it took while a caller's thread stopped the session."""
        for message in self.take_queued_tells(lambda message: isinstance(message, Wait)):
            self.add_waiter(message.waiter)
        with self._owner_lock:
            self._waiters_closed = True
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.set_exception(LinxError("no_process", "the session stopped"))

    def shutdown_requested(self) -> None:
        """A supervisor's graceful stop: SIGTERM to a running workload, abort for one that has
        not been let past the checkpoint; the session ends with ``"shutdown"`` at its outcome."""
        with self._owner_lock:  # against _take_end_directly: one of the two sees the other
            ended = self._result is not None
            self._shutting_down = not ended
        if ended:
            self.exit("shutdown")
            return
        try:
            if self._connection.claim_proceed():
                self._abort_claimed()
            else:
                self._send_signal(SIGTERM)
        except LinxError as error:
            if error.reason != "no_process":
                raise
            # The agent is gone: its outcome, or its exit, is queued for this actor and ends the
            # session with "shutdown" (not with this error, as a crash for the supervisor).

    # -- events from the agent -----------------------------------------------------------

    def _drain_events(self) -> None:
        while events := self._connection.take_events():
            for event in events:
                self._handle_event(event)

    def _emit(self, *event: Any) -> None:
        tell_quietly(self._owner, (EVENT_TAG, *event))

    def _send(self, frame: bytes) -> None:
        if not self._connection.send(frame):
            raise LinxError("no_process", "the session's agent is gone")

    def _handle_event(self, event: tuple) -> None:
        kind = event[0]
        if self._result is not None or self._waiting_outcome is not None:
            if kind not in TERMINAL_EVENTS and kind != "agent_exit":
                log.warning("session dropped %r after its terminal event", event)
            return
        match event:
            case ("spawned", host_pid):
                self._host_pid = host_pid
            case ("ready", child_pid):
                self._child_pid = child_pid
                self._emit("ready", self._host_pid)
                if self._pending_abort:
                    self._connection.send(protocol.encode_command(protocol.CMD_ABORT))
                elif self._plan.setup is not None:
                    self._run_setup()
                # auto_proceed was sent by the I/O thread already (AgentConnection)
            case ("running",):
                self._emit("running")
                for signum in self._pending_signals:
                    self._connection.send(protocol.encode_signal(signum))
                self._pending_signals.clear()
                with self._owner_lock:  # only now may signal_directly send: after the buffered ones
                    self._running = True
                    self._hold_pipes()
            case ("pty_out" | "stdout" | "stderr", _):
                with self._owner_lock:
                    gone = self._emit_output(event)
                if gone is not None:
                    self._owner_stopped(gone)  # its claim stays: once the window is full, the agent drops
            case ("pty_in_dropped", _) | ("output_dropped", _, _):
                self._emit(*event)
            case ("exited" | "signaled", _) | ("aborted",) | ("error", _, _):
                self._finish(event)
            case ("agent_exit", status):
                self._finish(("error", status, "agent_died"))
            case _:
                log.warning("session dropped a malformed agent frame %r", event)

    # -- output flow control (README, "Using it"; flow.py) -------------------------------------------

    def _deliver_directly(self, event: tuple) -> bool:
        """The I/O thread's fast path (``AgentConnection.listen``): hand an output event of a
        live session straight to its owner (see ``takes_output_in_io_thread``), sparing a
        wake-up of this actor per batch. False for anything else, which then queues for this
        actor, in order. It sends nothing to the agent (the I/O thread must not block): an
        owner found gone is left to this actor to deal with (``_CheckOwner``). The agent's exit
        after the outcome needs nothing of this actor either, and wakes it for nothing."""
        if event[0] == "agent_exit" and (self._result is not None or self._waiting_outcome is not None):
            return True  # what _handle_event does with it: nothing
        if self._result is not None or self._stopping:
            return False
        if event[0] in TERMINAL_EVENTS:
            return self._take_end_directly(event)
        if event[0] not in protocol.OUTPUT_EVENTS:
            return self._take_start_directly(event)
        with self._owner_lock:
            if not self._owner_takes_output_in_io_thread:
                return False
            gone = self._emit_output(event)
        if gone is not None:
            tell_quietly(self.actor_ref, _CheckOwner(gone))
        return True

    def _take_start_directly(self, event: tuple) -> bool:
        """The I/O thread's fast path for the start (``_deliver_directly``): ``spawned``, and
        ``ready`` and ``running`` of a session the I/O thread proceeded itself (auto_proceed,
        so no abort or set-up can follow ``ready``) with no signal waiting for ``running``,
        need nothing of this actor but a record and a tell; taking them here spares three
        wake-ups of its thread per session (benchmarks/spawn.py, the scaling rows). Anything
        else goes to this actor, in order."""
        match event:
            case ("spawned", host_pid):
                self._host_pid = host_pid
                return True
            case ("ready", child_pid) if self._connection.auto_proceeded:
                with self._owner_lock:
                    if not self._owner_takes_output_in_io_thread:
                        return False
                    self._child_pid = child_pid
                    self._emit("ready", self._host_pid)
                return True
            case ("running",):
                with self._owner_lock:  # against _signal's look at _running
                    if not self._owner_takes_output_in_io_thread or self._pending_signals:
                        return False
                    self._running = True
                    self._emit("running")
                    self._hold_pipes()
                return True
        return False

    def _take_end_directly(self, outcome: Outcome) -> bool:
        """The I/O thread's fast path for the outcome (``_deliver_directly``) of a session that
        lingers: it is recorded and told to the owner here, sparing a wake-up of this
        actor per session (benchmarks/spawn.py: the signalling row at 10,000 sessions). A
        session with a set-up to release, one that ends at its outcome (``linger=False``, or a
        supervisor's shutdown), one whose owner's ``tell`` might block and one with waiters
        (a ``Wait`` future's callbacks are the caller's code, which must not run on the thread
        that reads every agent) leave it to this actor."""
        if self._plan.setup is not None or not self._plan.linger:
            return False
        with self._owner_lock:  # against shutdown_requested, wait and set_owner
            if self._shutting_down or self._stopping or self._waiters or not self._owner_takes_output_in_io_thread:
                return False
            if self._outcome_waits_for_pipes(outcome):
                return True  # kept: _pipe_drained finishes it
            self._result = outcome
            self._emit(*outcome)
        return True

    def _emit_output(self, event: tuple) -> Any:
        """Output goes to the owner holding a claim on the window; the owner gives it back.
        Called with ``_owner_lock`` held; returns the owner if it is found gone, else None."""
        message = self._window.claim((EVENT_TAG, *event))
        owner = self._owner
        try:
            owner.tell(message)
        except pykka.ActorDeadError:
            return owner
        except Exception:
            log.exception("delivering %r to %r failed", message[:2], owner)
            consumed(message)
            return None
        if self._credit_on_tell:
            consumed(message)
        elif self._window.full and _can_be_watched(owner):
            self._watch_owner(owner)
        return None

    def _watch_owner(self, owner: Any) -> None:
        """An actor or a mailbox holds the whole window (the owner, or one ``set_owner`` took the
        session from): if nobody will take from it any more it never gives it back, so check on
        it (``_still_takes_output``). Called with ``_owner_lock`` held."""
        if owner in self._owners_watched:
            return
        self._owners_watched.add(owner)
        check = _CheckOwner(owner)
        reactor().call_later(OWNER_CHECK_SECONDS, lambda: tell_quietly(self.actor_ref, check))

    def _check_owner(self, owner: Any) -> None:
        with self._owner_lock:
            self._owners_watched.discard(owner)
            current = owner is self._owner
            if current and self._dropping_for_stopped_owner:
                return
            if _still_takes_output(owner):
                if self._window.full:
                    self._watch_owner(owner)
                return
            if not current:  # a previous owner stopped with output it will never take
                credit = self._window.forgive_without_sending()
        if current:
            self._owner_stopped(owner)
            return
        log.warning(
            "session %s: its previous owner %r stopped holding output; %d bytes given back", self, owner, credit
        )
        self._window.give_credit(credit)

    def _owner_stopped(self, owner: Any) -> None:
        """The owner will never take output (an actor that stopped, a mailbox whose reading
        thread ended): rather than block the workload forever, the session drops output past
        the window until ``set_owner``."""
        if self._dropping_for_stopped_owner:
            return
        self._dropping_for_stopped_owner = True
        log.warning(
            "session %s: its owner %r has stopped taking output; output past the window is dropped until set_owner",
            self,
            owner,
        )
        self._window.forgive()  # what it held will never be taken; what it is told from now on fills the window
        self._hand_pipes_to_agent()
        if self._plan.request.output_mode != protocol.OUTPUT_DROP:
            self._connection.send(protocol.encode_output_mode(protocol.OUTPUT_DROP))
        self._finish_waiting_outcome()

    def _finish(self, outcome: Outcome) -> None:
        with self._owner_lock:
            if self._outcome_waits_for_pipes(outcome):
                return  # kept: _pipe_drained finishes it
        if self._setup_failure is not None:  # aborted, or killed with the set-up's cgroup
            outcome = self._setup_failure
        self._release_setup()
        with self._owner_lock:
            self._result = outcome
            waiters, self._waiters = self._waiters, []
        self._emit(*outcome)
        for waiter in waiters:
            waiter.set_result(outcome)
        if self._stopping:
            return
        if self._shutting_down or not self._plan.linger:
            self._stopping = True
            self.exit("shutdown" if self._shutting_down else exit_reason(outcome))

    # -- held capture pipes (held_output) --------------------------------------------------------

    def _hold_pipes(self) -> None:
        """``running`` has been told: the owner's mailbox reads the waiting pipes from now on (an
        owner changed before this had them relayed already). Called with ``_owner_lock`` held."""
        held = False
        for pipe in self._held_pipes:
            if pipe.state == WAITING and pipe.holder is self._owner:
                pipe.holder.hold(pipe)
                pipe.state = HELD
                held = True
        if held:
            reactor().call_later(OWNER_CHECK_SECONDS, self._check_pipes_holder)

    def _check_pipes_holder(self) -> None:
        """In the I/O thread, while the pipes are held: once the thread that reads the holding
        mailbox has ended, nobody will read them, and the session deals with its owner as
        with one that holds a full window (``_check_owner``)."""
        holder = next((pipe.holder for pipe in self._held_pipes if pipe.state in (HELD, DRAINING)), None)
        if holder is None:
            return
        if holder.reader_has_ended():
            tell_quietly(self.actor_ref, _CheckOwner(holder))
        # on and on while they are held: another thread may take from the mailbox meanwhile
        # (_check_owner then leaves them), and end in its turn
        reactor().call_later(OWNER_CHECK_SECONDS, self._check_pipes_holder)

    def _hand_pipes_to_agent(self) -> None:
        """The owner changes, has stopped taking output, or the session stops: the agent relays
        the pipes from now on (or drops, at a stop), and the mailbox that read them stops at once.
        What it read and still holds counts in the session's window, and the agent is told so
        with the first ``relay``: the window carries over. Called without ``_owner_lock``."""
        with self._owner_lock:
            handed = [pipe for pipe in self._held_pipes if pipe.state in (WAITING, HELD, DRAINING)]
            streams = [pipe.stream_number for pipe in handed if pipe.state in (WAITING, HELD)]
            read = [pipe for pipe in handed if pipe.state in (HELD, DRAINING)]
            for pipe in read:
                pipe.holder.release(pipe)
            for pipe in handed:
                pipe.state = RELAYED
            carried = handed[0].window.queued if handed else 0  # only falls from now on: nothing reads
        for index, stream in enumerate(streams):
            self._connection.send(protocol.encode_relay(stream, carried if index == 0 else 0))
        if read:
            adopted = read[0].holder.adopt_output(read, self._window.claim)
            if streams:
                self._window.give_credit(carried - adopted)  # taken between the count and the adoption

    def _outcome_waits_for_pipes(self, outcome: Outcome) -> bool:
        """What each pipe holds at the outcome goes ahead of it, as the agent does at the
        workload's exit for the pipes it relays: a held pipe's mailbox queues it within the
        window (``Mailbox.finish``), and while the owner has not taken enough, the outcome is
        kept and True returned (``_pipe_drained`` finishes it); a relayed pipe's (the agent has
        exited, and nothing else reads it) goes to the owner here. Then the pipes close. Called
        with ``_owner_lock`` held."""
        waiting = self._waiting_outcome is not None
        for pipe in self._held_pipes:
            if pipe.state == HELD:
                if pipe.holder.finish(pipe, self._tell_pipe_drained):
                    pipe.close()
                else:
                    pipe.state = DRAINING
                    waiting = True
            elif pipe.state in (WAITING, RELAYED):
                for data in pipe.drain():
                    self._emit_output((pipe.stream, data))
                pipe.close()
        if waiting and self._waiting_outcome is None:
            self._waiting_outcome = outcome
        return waiting

    def _tell_pipe_drained(self, pipe: HeldPipe) -> None:
        tell_quietly(self.actor_ref, _PipeDrained(pipe))  # from the reading thread, the mailbox's lock held

    def _pipe_drained(self, pipe: HeldPipe) -> None:
        with self._owner_lock:
            if pipe.state == DRAINING:
                pipe.close()
            drained = all(pipe.state != DRAINING for pipe in self._held_pipes)
        if drained:
            self._finish_waiting_outcome()

    def _finish_waiting_outcome(self) -> None:
        """The kept outcome, finished once no pipe drains any more into a mailbox."""
        outcome, self._waiting_outcome = self._waiting_outcome, None
        if outcome is not None:
            self._finish(outcome)

    def _close_pipes(self) -> None:
        """Called with ``_owner_lock`` held (idempotent)."""
        for pipe in self._held_pipes:
            if pipe.state in (HELD, DRAINING):
                pipe.holder.release(pipe)
            pipe.close()

    # -- checkpoint set-up (docs/hardening.md, "One checkpoint set-up"): ``setup=`` runs at ready, then the session proceeds --------

    def _run_setup(self) -> None:
        """Run the plan's set-up on the parked child; on success proceed, on failure abort it
        unrun, and its terminal event becomes ``("error", errno, "setup")``. What the set-up
        returns, if callable, releases what it created: it runs when the incarnation ends."""
        setup, host_pid = self._plan.setup, self._host_pid
        assert setup is not None and host_pid is not None  # ready comes after spawned
        try:
            release = setup(host_pid)
        except Exception as error:
            log.error("set-up of the child (host pid %s) failed; aborting it unrun", self._host_pid, exc_info=True)
            number = error.errno if isinstance(error, OSError) and isinstance(error.errno, int) else 0
            self._setup_failure = ("error", number, "setup")
            if self._connection.claim_proceed():
                self._connection.send(protocol.encode_command(protocol.CMD_ABORT))  # gone already: killed with it
            return
        self._setup_release = release if callable(release) else None
        if self._connection.claim_proceed():
            self._connection.send(protocol.encode_command(protocol.CMD_PROCEED))

    def _release_setup(self) -> None:
        release, self._setup_release = self._setup_release, None
        if release is None:
            return
        try:
            release()
        except Exception:
            log.error("releasing what the set-up of host pid %s created failed", self._host_pid, exc_info=True)

    # -- verbs (each runs in the actor's thread; the order of checks is the ladder) ----------

    def _require_live(self, verb: str) -> None:
        if self._result is not None:
            raise LinxError("no_process", f"{verb}: the session has ended ({describe_outcome(self._result)})")

    def _proceed(self) -> None:
        self._require_live("proceed")
        if self._running:
            raise LinxError("running", "proceed: the workload is already running")
        if self._child_pid is None:
            raise LinxError("not_ready", "proceed: the child has not reached the checkpoint yet")
        if self._connection.claim_proceed():
            self._send(protocol.encode_command(protocol.CMD_PROCEED))

    def _abort(self) -> None:
        self._require_live("abort")
        if self._running or not self._connection.claim_proceed():
            raise LinxError("running", "abort: the workload is past the checkpoint; use signal()")
        self._abort_claimed()

    def _abort_claimed(self) -> None:
        if self._child_pid is None:
            self._pending_abort = True
        else:
            self._send(protocol.encode_command(protocol.CMD_ABORT))

    def _signal(self, signum: int) -> None:
        self._require_live("signal")
        self._send_signal(signum)

    def _send_signal(self, signum: int) -> None:
        """Send ``signum`` to a running workload, or buffer it until ``running``."""
        with self._owner_lock:  # the I/O thread may be taking running (_take_start_directly)
            running = self._running
            if not running:
                self._pending_signals.append(signum)
        if running:
            self._send(protocol.encode_signal(signum))

    def signal_directly(self, signum: int) -> bool:
        """``signal``'s fast path, in the caller's thread: send ``signum`` to a running
        workload of a live session without a round trip through this actor (at 10,000 sessions
        that round trip was 0.7 ms a signal: benchmarks/spawn.py). False when this actor must
        decide (not running yet, so the signal is buffered; ended; stopping; agent gone), or
        while anything sent to this actor is unhandled (``idle``: a signal asked without
        blocking, a stop), and ``signal`` then asks it as usual, behind those. "Running" is set
        only once the signals buffered before it have been sent, so a signal never overtakes an
        earlier one."""
        with self._owner_lock:
            live = self._running and self._result is None and not self._stopping
        return live and self.idle() and self._connection.send(protocol.encode_signal(signum))

    def add_waiter(self, waiter: concurrent.futures.Future) -> None:
        """Have ``waiter`` get the outcome, at once if there is one; from any thread (``wait``
        calls it directly: a message could reach the session after it has stopped, and never
        be answered). Once the session has stopped, a waiter without an outcome fails with
        ``no_process``."""
        with self._owner_lock:  # the I/O thread may be recording the outcome (_take_end_directly)
            outcome, closed = self._result, self._waiters_closed
            if outcome is None and not closed:
                self._waiters.append(waiter)
        if outcome is not None:
            waiter.set_result(outcome)
        elif closed:
            waiter.set_exception(LinxError("no_process", "the session stopped"))

    def cancel_wait(self, waiter: concurrent.futures.Future) -> Outcome | None:
        """Forget ``waiter``; the outcome if there is one (``wait``'s timeout)."""
        with self._owner_lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return self._result

    def _get_host_pid(self) -> int:
        if self._host_pid is None:
            raise LinxError("not_ready", "host_pid: the agent has not cloned the child yet")
        return self._host_pid

    def _info(self) -> Info:
        result = self._result  # read once: the I/O thread may record it meanwhile (_take_end_directly)
        return Info(
            mode=self._plan.mode,
            stage=self._stage(result),
            host_pid=self._host_pid,
            child_pid=self._child_pid,
            pty=self._pty,
            result=result,
        )

    def _stage(self, result: Outcome | None) -> str:
        if result is not None:
            return "errored" if result[0] == "error" else result[0]
        if self._running:
            return "running"
        if self._child_pid is not None:
            return "ready"
        if self._host_pid is not None:
            return "spawned"
        return "starting"

    def _set_owner(self, owner: Any, only_from: Any = _ANY_OWNER) -> Any:
        """The window carries over: output the previous owner holds counts until it is taken.
        The swap is atomic with the I/O thread's deliveries (``_owner_lock``): every output
        event goes to the old owner or the new one, none is lost, and none reaches the old one
        once this has returned. A new owner after one that had stopped gets a whole window and
        the session's own output mode again."""
        with self._owner_lock:
            if only_from is not _ANY_OWNER and self._owner is not only_from:
                return self._owner
            previous, self._owner = self._owner, owner
            self._credit_on_tell = credit_on_tell(owner)
            self._owner_takes_output_in_io_thread = takes_output_in_io_thread(owner)
            restore, self._dropping_for_stopped_owner = self._dropping_for_stopped_owner, False
            # what the stopped owner was told will never be taken
            credit = self._window.forgive_without_sending() if restore else 0
            if not restore and self._window.full and _can_be_watched(previous):
                self._watch_owner(previous)  # the new owner gets nothing until the previous one takes its part
        if owner is not previous:
            self._hand_pipes_to_agent()
        self._finish_waiting_outcome()
        if restore:
            self._window.give_credit(credit)
            if self._plan.request.output_mode != protocol.OUTPUT_DROP:
                self._connection.send(protocol.encode_output_mode(self._plan.request.output_mode))
        return previous

    def _pty_write(self, data: bytes) -> None:
        self._require_live("pty_write")
        if not self._pty:
            raise LinxError("no_pty", "pty_write: not a pty session (spawn with stdio='pty')")
        if not self._running:
            raise LinxError(
                "not_running", f"pty_write: the workload is not running yet (stage {self._stage(self._result)})"
            )
        for frame in protocol.encode_pty_input(data):
            self._send(frame)

    def _pty_set_winsize(self, size: tuple[int, int, int, int]) -> None:
        self._require_live("pty_set_winsize")
        if not self._pty:
            raise LinxError("no_pty", "pty_set_winsize: not a pty session (spawn with stdio='pty')")
        self._send(protocol.encode_winsize(*size))


# -- the public verbs -------------------------------------------------------------------------

SessionRef = pykka.ActorRef


def _open_held_pipes(plan: SessionPlan) -> tuple[HeldPipe, ...]:
    """The capture pipes the owner will read itself (``held_output``): for a plain ``Mailbox``
    owner whose session blocks past its window, while this process holds few sessions (each
    pipe is one more fd that every later ``posix_spawn`` copies). None when any of it fails:
    then the agent makes and relays the pipes, as for any other owner."""
    request, owner = plan.request, plan.owner
    if type(owner) is not Mailbox or request.pty or request.output_mode != protocol.OUTPUT_BLOCK:
        return ()
    streams = [stream for stream, fd in STREAMS.items() if request.stdio[fd].kind == protocol.STDIO_CAPTURE]
    if not streams or many_live_agents():
        return ()
    try:
        owner.prepare_to_hold()
        return open_held_pipes(streams, request.output_window, owner)
    except OSError as error:
        log.warning("no held capture pipes (%s): the agent relays the output", error)
        return ()


def _with_held_pipes(request: protocol.Request, pipes: tuple[HeldPipe, ...]) -> protocol.Request:
    stdio = list(request.stdio)
    for pipe in pipes:
        stdio[pipe.stream_number] = protocol.StdioDirective(protocol.STDIO_CAPTURE_HELD)
    return dataclasses.replace(request, stdio=(stdio[0], stdio[1], stdio[2]))


def _start(plan: SessionPlan) -> SessionRef:
    pipes = _open_held_pipes(plan)
    try:
        connection = AgentConnection.start(
            protocol.encode_request(_with_held_pipes(plan.request, pipes) if pipes else plan.request),
            plan.auto_proceed and plan.setup is None,
            fds=[end for pipe in pipes for end in (pipe.read_end, pipe.write_end)],
        )
    except BaseException:
        for pipe in pipes:
            pipe.close()
        raise
    for pipe in pipes:
        pipe.close_write_end()  # the agent has its own: the workload's stdout or stderr
    try:
        return Session.start(plan, connection, pipes)
    except BaseException as error:
        connection.kill()
        for pipe in pipes:
            pipe.close()
        if isinstance(error, RuntimeError):  # threading's "can't start new thread": out of processes
            raise LinxError(("spawn_failed", "eagain"), f"starting the session's thread failed: {error}") from error
        raise


def spawn(**options: Unpack[SessionOptions]) -> SessionRef:
    """Start a workload in fresh namespaces, parked at the checkpoint; returns the session.
    The options are README, "Using it"'s: ``argv`` (required), ``namespaces``, ``env``, ``cwd``,
    ``stdio``, ``owner``, ``linger``, ``auto_proceed``, ``no_new_privs``, ``orphan_policy``,
    and flow control's ``output`` (``"block"``, the default, or ``"drop"``) and
    ``output_window`` (bytes of output in flight to the owner, default 1 MiB; see ``flow``),
    and ``setup`` (docs/hardening.md, "One checkpoint set-up": a ``linx_otp.Setup`` or a callable ``f(host_pid)``, run at
    ``ready``; the session then proceeds by itself).

    >>> session = spawn(argv=["/bin/echo", "hello"], namespaces=["uts"], stdio="devnull")
    >>> receive(("linx_process", "ready"), timeout=5)[0]
    'linx_process'
    >>> proceed(session); wait(session)
    ('exited', 0)
    >>> [event[1] for event in flush()]
    ['running', 'exited']
    >>> session.stop()
    True
    """
    return _start(plan_session(mode=protocol.MODE_SPAWN, target=None, **options))


def enter(target_pid: int, **options: Unpack[SessionOptions]) -> SessionRef:
    """Run a workload inside the namespaces of the process ``target_pid`` (a host pid): all of
    them by default, or those named in ``namespaces``. Like ``nsenter --target`` or
    ``docker exec``. The options are ``spawn``'s.

    >>> import os
    >>> probe = enter(os.getpid(), argv=["/bin/true"], namespaces=["net"], auto_proceed=True)
    >>> wait(probe)
    ('exited', 0)
    >>> [event[1] for event in flush()]
    ['ready', 'running', 'exited']
    >>> probe.stop()
    True
    """
    return _start(plan_session(mode=protocol.MODE_ENTER, target=check_target(target_pid), **options))


def child_spec(
    *,
    id: Any = "linx_process",
    restart: str = "permanent",
    shutdown: float | str | None = 5.0,
    ready: Readiness | Mapping[str, Any] | None = None,
    restart_delay: float = 0.0,
    restart_backoff_max: float | None = None,
    **options: Unpack[SessionOptions],
) -> ChildSpec:
    """A child spec for a supervisor: a session with ``options`` (``spawn``'s) and
    ``linger=False``, so its outcome becomes its exit reason (README, "Supervision"). The options are
    checked now, and the owner is fixed now (default: the calling thread's mailbox); every
    restart spawns a new session with the same options and owner. A supervised session needs
    ``auto_proceed=True`` or a ``setup`` (run again for every incarnation) unless something
    else proceeds it. ``ready`` (a ``readiness.Readiness`` or a mapping of its keys, as a tree
    file's ``ready`` table) makes the supervisor count each incarnation as started only once it
    passes that check (README, "Readiness"). ``restart_delay`` and ``restart_backoff_max`` are
    the supervisor's restart back-off (``ChildSpec``).

    >>> spec = child_spec(id="sleeper", argv=["sleep", "60"], auto_proceed=True)
    >>> spec.id, spec.restart, spec.shutdown, spec.type
    ('sleeper', 'permanent', 5.0, 'worker')
    >>> web = child_spec(id="web", argv=["python3", "-m", "http.server", "8000"], ready={"tcp": "127.0.0.1:8000"})
    >>> web.ready is not None
    True
    """
    if options.get("linger", False) is not False:
        raise LinxValueError(
            ("bad_linger", options["linger"]), "a supervised session has linger=False (its outcome is its exit reason)"
        )
    plan = plan_session(mode=protocol.MODE_SPAWN, target=None, **{**options, "linger": False})
    readiness = check_readiness(ready)
    waiter = readiness.waiter(options) if readiness is not None else None
    return ChildSpec(
        id=id,
        start=lambda: _start(plan),
        restart=restart,
        shutdown=shutdown,
        ready=waiter,
        restart_delay=restart_delay,
        restart_backoff_max=restart_backoff_max,
    )


def _ask(session: SessionRef, message: Any) -> Any:
    return call(session, message, "the session")


def proceed(session: SessionRef) -> None:
    """Let a parked child go on to execve. Raises ``not_ready`` before ``ready``, ``running``
    once past the checkpoint, ``no_process`` once terminal."""
    _ask(session, Proceed())


def abort(session: SessionRef) -> None:
    """Discard a parked child unrun (buffered before ``ready``). Raises ``running`` once past
    the checkpoint, ``no_process`` once terminal."""
    _ask(session, Abort())


def signal(session: SessionRef, signum: int) -> None:
    """Send ``signum`` (1..64) to the workload; buffered until ``running``, flushed in order."""
    if not isinstance(signum, int) or isinstance(signum, bool) or not 1 <= signum <= 64:
        raise LinxValueError(("bad_signal", signum), f"signum must be an int in 1..64, not {signum!r}")
    actor = actor_of(session)
    if isinstance(actor, Session) and actor.signal_directly(int(signum)):
        return
    _ask(session, Signal(int(signum)))


def wait(session: SessionRef, timeout: float | None = None) -> Outcome:
    """The workload's outcome, blocking until it ends. Raises ``TimeoutError`` if it is still
    live after ``timeout`` seconds (the session is unaffected), ``LinxValueError`` for a
    timeout that is not None or finite seconds >= 0."""
    timeout = check_timeout(timeout)
    actor = actor_of(session)
    if not isinstance(actor, Session) or not session.is_alive():
        raise LinxError("no_process", "the session is gone (wait)")
    waiter: concurrent.futures.Future = concurrent.futures.Future()
    actor.add_waiter(waiter)
    try:
        return waiter.result(timeout)
    except concurrent.futures.TimeoutError:
        outcome = actor.cancel_wait(waiter)  # also catches an end that raced the timeout
        if outcome is not None:
            return outcome
        raise TimeoutError(f"the workload is still live after {timeout} s") from None


def host_pid(session: SessionRef) -> int:
    """The workload's host pid, from the moment the agent has cloned it."""
    return _ask(session, GetHostPid())


def info(session: SessionRef) -> Info:
    """A snapshot of the session's state."""
    return _ask(session, GetInfo())


def set_owner(session: SessionRef, owner: Any = None) -> None:
    """Send future events to ``owner`` (None: the calling thread's mailbox), in any stage."""
    swap_owner(session, owner)


def swap_owner(session: SessionRef, owner: Any = None) -> Any:
    """``set_owner`` that returns the previous owner, to give the session back later (how
    ``tty.attach`` borrows a session).

    >>> import linx_otp
    >>> session = spawn(argv=["/bin/true"])
    >>> borrower = linx_otp.Mailbox()
    >>> swap_owner(session, borrower) is mailbox()
    True
    >>> swap_owner(session, mailbox()) is borrower
    True
    >>> session.stop(); flush() and None
    True
    """
    return _ask(session, SetOwner(check_owner(owner)))


def give_back(session: SessionRef, borrower: Any, owner: Any) -> bool:
    """``set_owner(session, owner)`` if ``borrower`` is still its owner, at once (nobody can
    swap in between); False, changing nothing, if someone else has taken it since. How an
    ``attach`` that another attach took over leaves the session to the newer one.

    >>> import linx_otp
    >>> session = spawn(argv=["/bin/true"])
    >>> borrower, newer = linx_otp.Mailbox(), linx_otp.Mailbox()
    >>> swap_owner(session, borrower) is mailbox()
    True
    >>> swap_owner(session, newer) is borrower  # taken over
    True
    >>> give_back(session, borrower, mailbox()), give_back(session, newer, mailbox())
    (False, True)
    >>> session.stop(); flush() and None
    True
    """
    return _ask(session, SetOwner(check_owner(owner), only_from=borrower)) is borrower


def pty_write(session: SessionRef, data: bytes | str) -> None:
    """Type into a running pty session; data of any size is chunked."""
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise LinxValueError(("bad_data", data), f"pty_write takes bytes or str, not {data!r}")
    _ask(session, PtyWrite(bytes(data)))


def _window_size_fields(size: Any) -> tuple | None:
    if isinstance(size, tuple) and len(size) == 4:
        return size
    if isinstance(size, Mapping):
        try:
            return tuple(size[key] for key in ("rows", "cols", "xpixel", "ypixel"))
        except KeyError:
            return None
    try:
        return (size.rows, size.cols, size.xpixel, size.ypixel)
    except AttributeError:
        return None


def pty_set_winsize(session: SessionRef, size: Any) -> None:
    """Set a pty session's window size: ``(rows, cols, xpixel, ypixel)``, or anything with
    those fields (``linx_otp.tty.WindowSize``). Before proceed the workload sees it at exec;
    while running it gets SIGWINCH."""
    fields = _window_size_fields(size)
    if fields is None or not all(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535 for value in fields
    ):
        raise LinxValueError(
            ("bad_winsize", size), f"a window size is (rows, cols, xpixel, ypixel) of ints in 0..65535, not {size!r}"
        )
    _ask(session, PtySetWinsize(fields))


__all__ = [
    "Info",
    "Outcome",
    "Session",
    "SessionRef",
    "abort",
    "child_spec",
    "enter",
    "exit_reason",
    "flush",
    "give_back",
    "host_pid",
    "info",
    "mailbox",
    "proceed",
    "pty_set_winsize",
    "pty_write",
    "receive",
    "set_owner",
    "signal",
    "spawn",
    "swap_owner",
    "wait",
]
