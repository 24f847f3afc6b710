"""The actor base: exit reasons and monitors."""

from __future__ import annotations

import threading

import pykka
import pytest

import linx_otp
from linx_otp.actor import start_actor


class Echo(linx_otp.Actor):
    def on_receive(self, message):
        if message == "crash":
            raise RuntimeError("boom")
        if message == "quit":
            self.exit(("shutdown", "asked"))
        return message


def test_a_graceful_stop_is_normal(box):
    ref = Echo.start()
    linx_otp.monitor(ref, box)
    ref.stop()
    assert box.receive(timeout=5) == ("DOWN", ref, "normal")


def test_an_exit_reason_reaches_every_monitor(box):
    ref = Echo.start()
    other = linx_otp.Mailbox()
    linx_otp.monitor(ref, box)
    linx_otp.monitor(ref, other)
    ref.tell("quit")
    assert box.receive(timeout=5) == ("DOWN", ref, ("shutdown", "asked"))
    assert other.receive(timeout=5) == ("DOWN", ref, ("shutdown", "asked"))


def test_a_crash_is_an_abnormal_exit(box):
    ref = Echo.start()
    linx_otp.monitor(ref, box)
    ref.tell("crash")
    down = box.receive(timeout=5)
    assert down[:2] == ("DOWN", ref) and down[2][0] == "exception" and str(down[2][1]) == "boom"


def test_monitoring_a_dead_actor_is_noproc_at_once(box):
    ref = Echo.start()
    ref.stop()
    linx_otp.monitor(ref, box)
    assert box.receive(timeout=0) == ("DOWN", ref, "noproc")


def test_monitor_defaults_to_the_calling_threads_mailbox():
    ref = Echo.start()
    linx_otp.monitor(ref)
    ref.stop()
    assert linx_otp.receive(("DOWN",), timeout=5) == ("DOWN", ref, "normal")


@pytest.mark.parametrize("linger", [True, False])
def test_sessions_report_down_too(linger):
    from linx_otp import process as P

    session = P.spawn(argv=["/bin/true"], linger=linger)
    linx_otp.monitor(session)
    linx_otp.receive(("linx_process", "ready"), timeout=5)
    P.proceed(session)
    if linger:
        P.wait(session)
        session.stop()
    assert linx_otp.receive(("DOWN",), timeout=5) == ("DOWN", session, "normal")


class Quitter(linx_otp.Actor):
    def on_receive(self, message):
        raise SystemExit(3)


def test_system_exit_ends_that_actor_alone(box):
    bystander = Echo.start()
    quitter = Quitter.start()
    linx_otp.monitor(quitter, box)
    quitter.tell("anything")
    down = box.receive(timeout=5)
    assert down[:2] == ("DOWN", quitter) and down[2][0] == "exception" and isinstance(down[2][1], SystemExit)
    assert bystander.ask("still here") == "still here"
    bystander.stop()


def test_system_exit_in_an_ask_reaches_the_caller_and_ends_the_actor(box):
    quitter = Quitter.start()
    linx_otp.monitor(quitter, box)
    with pytest.raises(linx_otp.LinxError):
        quitter.ask("anything")
    assert box.receive(timeout=5)[2][0] == "exception"
    assert not quitter.is_alive()


class BrokenStart(linx_otp.Actor):
    def on_start(self):
        raise ValueError("cannot start")


def test_a_crash_in_on_start_is_an_exit_reason_not_a_silent_log():
    box = linx_otp.Mailbox()
    with pytest.raises(linx_otp.LinxError) as raised:
        start_actor(BrokenStart.start, [box])
    assert raised.value.reason[0] == "failed_to_start"
    down = box.receive(timeout=5)
    assert down[2][0] == "exception" and str(down[2][1]) == "cannot start"


def test_a_monitor_from_birth_sees_an_actor_that_ends_at_once():
    class Brief(linx_otp.Actor):
        def on_start(self):
            self.exit(("shutdown", "done already"))

    box = linx_otp.Mailbox()
    ref = start_actor(Brief.start, [box])
    assert box.receive(timeout=5) == ("DOWN", ref, ("shutdown", "done already"))


def test_start_actor_refuses_a_plain_pykka_actor():
    class Plain(pykka.ThreadingActor):
        pass

    with pytest.raises(linx_otp.LinxValueError):
        start_actor(Plain.start)
    assert not pykka.ActorRegistry.get_all()


class Slow(linx_otp.Actor):
    """Blocks on ``gate`` when told "wait"; told "quit now", ends at once with exit_now."""

    def __init__(self, gate, seen: list) -> None:
        super().__init__()
        self.gate = gate
        self.seen = seen

    def on_receive(self, message):
        self.seen.append(message)
        if message == "wait":
            self.gate.wait(5)
        if message == "quit now":
            self.exit_now(("shutdown", "now"))
        if message == "quit later":
            self.exit(("shutdown", "later"))
        return message


@pytest.mark.parametrize(("how", "handled_after"), [("quit now", []), ("quit later", ["after"])])
def test_exit_now_drops_the_queue_and_exit_handles_it_first(box, how, handled_after):
    gate, seen = threading.Event(), []
    ref = Slow.start(gate, seen)
    linx_otp.monitor(ref, box)
    ref.tell("wait")
    ref.tell(how)
    ref.tell("after")
    answer = ref.ask("asked", block=False)
    gate.set()
    down = box.receive(timeout=5)
    assert down[:2] == ("DOWN", ref) and down[2] == ("shutdown", how.split()[1])
    assert seen == ["wait", how, *handled_after, *(["asked"] if handled_after else [])]
    if handled_after:
        assert answer.get(timeout=5) == "asked"
    else:
        with pytest.raises(pykka.ActorDeadError):
            answer.get(timeout=5)


def test_call_answers_and_says_no_process_once_the_actor_is_gone():
    from linx_otp.actor import call

    ref = Echo.start()
    assert call(ref, "hello") == "hello"
    with pytest.raises(RuntimeError, match="boom"):
        call(ref, "crash")  # a handler's error reaches the caller; the actor lives on (pykka's ask)
    ref.stop()
    with pytest.raises(linx_otp.LinxError) as raised:
        call(ref, "hello", "the echo")
    assert raised.value.reason == "no_process" and "the echo is gone" in str(raised.value)


class Collecting(linx_otp.Actor):
    """Blocks on ``gate`` when told "wait"; at its end takes the queued tells that are ints."""

    def __init__(self, gate, taken: list) -> None:
        super().__init__()
        self.gate = gate
        self.taken = taken

    def on_receive(self, message):
        if message == "wait":
            self.gate.wait(5)
        if message == "quit now":
            self.exit_now("normal")
        return message

    def terminate(self, reason):
        self.taken.extend(self.take_queued_tells(lambda message: isinstance(message, int)))


def test_take_queued_tells_takes_only_what_it_selects_and_leaves_asks_to_the_teardown(box):
    """terminate takes the tells it selects, oldest first; the rest stay queued, and pykka's
    teardown still answers an ask among them (with ActorDeadError)."""
    gate, taken = threading.Event(), []
    ref = Collecting.start(gate, taken)
    linx_otp.monitor(ref, box)
    ref.tell("wait")
    ref.tell("quit now")
    ref.tell(1)
    asked = ref.ask(2, block=False)  # an int, but asked: not taken
    ref.tell("three")
    ref.tell(4)
    gate.set()
    assert box.receive(timeout=5)[2] == "normal"
    assert taken == [1, 4]
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)


def test_the_actor_registry_keeps_start_order_and_forgets_each_actor_at_its_stop():
    """pykka's registry, indexed by linx_otp (a stop no longer scans every live actor): it
    still lists actors in start order, finds them by class and urn, and forgets each one as it
    stops, in any order."""

    class Member(linx_otp.Actor):
        pass

    refs = [Member.start() for _ in range(5)]
    assert pykka.ActorRegistry.get_all() == refs
    assert pykka.ActorRegistry.get_by_class(Member) == refs
    assert pykka.ActorRegistry.get_by_urn(refs[2].actor_urn) is refs[2]
    for ref in [refs[4], refs[0], refs[2]]:  # newest first, oldest, middle
        assert ref.stop()
    assert pykka.ActorRegistry.get_all() == [refs[1], refs[3]]
    pykka.ActorRegistry.stop_all()
    assert not pykka.ActorRegistry.get_all()
    assert not any(ref.is_alive() for ref in refs)


class StopsHere(linx_otp.Actor):
    """Allows a stop in the caller's thread; records the thread each message and its
    terminate run on; told "wait", says so on ``busy`` and blocks on ``gate``."""

    stops_in_caller = True

    def __init__(self, gate: threading.Event, busy: threading.Event, log: list) -> None:
        super().__init__()
        self.gate, self.busy, self.log = gate, busy, log

    def on_receive(self, message):
        self.log.append(("message", threading.current_thread()))
        if message == "wait":
            self.busy.set()
            self.gate.wait(5)
        return message

    def terminate(self, reason):
        self.log.append((reason, threading.current_thread()))


def test_an_idle_actor_that_allows_it_is_stopped_in_the_callers_thread(box):
    """Its terminate runs in the thread that calls stop(), the monitors are told before stop()
    returns, and the actor's own thread, woken, ends by itself."""
    from linx_otp.actor import call

    log: list = []
    ref = StopsHere.start(threading.Event(), threading.Event(), log)
    assert call(ref, "hello") == "hello"
    actor_thread = log[0][1]
    linx_otp.monitor(ref, box)
    assert ref.stop() is True
    assert log[-1] == ("normal", threading.current_thread())
    assert box.receive(timeout=0) == ("DOWN", ref, "normal")
    assert not ref.is_alive() and ref.stop() is False
    with pytest.raises(linx_otp.LinxError) as raised:
        call(ref, "hello")
    assert raised.value.reason == "no_process"
    actor_thread.join(5)
    assert not actor_thread.is_alive()


def test_a_busy_actor_is_stopped_by_its_own_thread_after_the_message_in_hand(box):
    gate, busy, log = threading.Event(), threading.Event(), []
    ref = StopsHere.start(gate, busy, log)
    ref.tell("wait")
    assert busy.wait(5)
    stopper = threading.Thread(target=ref.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive() and len(log) == 1  # queued behind "wait", as pykka's stop
    gate.set()
    stopper.join(5)
    assert not stopper.is_alive()
    actor_thread = log[0][1]
    assert log == [("message", actor_thread), ("normal", actor_thread)]


def test_every_ask_racing_a_stop_in_the_callers_thread_is_answered():
    """Asks sent by another thread while stop() runs here are answered, by the handler or with
    ActorDeadError, never left waiting; many times over, for the race's every order."""
    for _ in range(200):
        ref = StopsHere.start(threading.Event(), threading.Event(), [])
        ref.ask("started")
        answers: list = []

        def ask_many(ref=ref, answers=answers) -> None:
            answers.extend(ref.ask(number, block=False) for number in range(20))

        asker = threading.Thread(target=ask_many)
        asker.start()
        assert ref.stop() is True
        asker.join(5)
        for number, answer in enumerate(answers):
            try:
                assert answer.get(timeout=5) == number
            except pykka.ActorDeadError:
                pass
