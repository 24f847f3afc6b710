"""Mailboxes: selective receive, timeouts, per-thread mailboxes."""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time

import pytest

import linx_otp


def test_receive_takes_the_first_match_and_leaves_the_rest_in_order(box):
    for message in [("a", 1), ("b", 2), ("a", 3), "plain"]:
        box.tell(message)
    assert box.receive(("a",)) == ("a", 1)
    assert box.receive(lambda m: m == "plain") == "plain"
    assert box.flush() == [("b", 2), ("a", 3)]
    assert box.flush() == []


def test_receive_times_out_with_timeouterror(box):
    box.tell(("other",))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        box.receive(("wanted",), timeout=0.1)
    assert time.monotonic() - started >= 0.09
    assert len(box) == 1


def test_the_timeout_counts_from_the_call_not_from_the_first_wait(box):
    """A scan that outlasts the timeout ends the receive, not a timeout more; it looks at each message once."""
    box.tell(("other",))
    looked_at = []

    def slow_no(message):
        looked_at.append(message)
        time.sleep(0.15)
        return False

    with pytest.raises(TimeoutError):
        box.receive(slow_no, timeout=0.1)
    assert looked_at == [("other",)]


@pytest.mark.parametrize("timeout", [float("nan"), math.inf, -1, -0.001, True, "1", 1e30])
def test_a_bad_timeout_is_refused_and_nothing_is_taken(box, timeout):
    """The rule ``P.wait`` keeps: None, or finite seconds from 0 to ``threading.TIMEOUT_MAX``."""
    box.tell(("here",))
    with pytest.raises(linx_otp.LinxValueError, match="timeout must be None") as refused:
        box.receive(timeout=timeout)
    reason, value = refused.value.reason
    assert reason == "bad_timeout" and value is timeout
    assert box.flush() == [("here",)]


def test_the_longest_timeout_is_taken(box):
    threading.Timer(0.05, box.tell, [("late",)]).start()
    assert box.receive(("late",), timeout=threading.TIMEOUT_MAX) == ("late",)


def test_receive_wakes_when_a_matching_message_arrives(box):
    threading.Timer(0.05, box.tell, [("late",)]).start()
    assert box.receive(("late",), timeout=5) == ("late",)


def test_each_thread_has_its_own_mailbox():
    linx_otp.mailbox().tell("main")
    seen = []
    worker = threading.Thread(target=lambda: seen.append(linx_otp.flush()))
    worker.start()
    worker.join()
    assert seen == [[]]
    assert linx_otp.receive(timeout=1) == "main"


def test_a_bad_match_is_a_type_error(box):
    with pytest.raises(TypeError):
        box.receive(["not", "a", "tuple"], timeout=0)


def test_a_signal_handler_on_the_receiving_thread_may_tell_the_mailbox(box):
    """The daemon's SIGTERM handler tells its loop's mailbox, on the thread that may be inside a
    receive: the lock is reentrant, so the tell appended to the queue mid-scan ("deque mutated
    during iteration", which ended the daemon with a traceback in CI), and a flush could lose it."""
    for number in range(200_000):
        box.tell(("noise", number))
    numbers = itertools.count()

    def on_alarm(signum, frame):
        box.tell(("alarm", next(numbers)))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # scans of 200,000 messages, each hit by alarms
            with pytest.raises(TimeoutError):
                box.receive(("never",), timeout=0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    told = next(numbers)
    assert told > 10
    # every one, none lost (a handler can itself be interrupted by the next alarm, so not in order)
    alarms = sorted(number for kind, number in box.flush() if kind == "alarm")
    assert alarms == list(range(told))


@pytest.mark.parametrize("take", ["receive", "flush"])
def test_a_signal_handler_may_not_take_from_a_mailbox_its_thread_is_taking_from(box, take):
    """A handler that receives or flushes while the thread it interrupted is inside a receive
    would take from under that receive's scan, or queue held output behind newer output: it gets
    a clear error, raised where the handler interrupted, and the mailbox goes on working."""
    attempts = []

    def on_alarm(signum, frame):
        attempts.append(take)
        box.flush() if take == "flush" else box.receive(timeout=0)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(RuntimeError, match="a signal handler may only tell it"):
            box.receive(("never",), timeout=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert attempts == [take]
    box.tell(("after",))
    assert box.receive(timeout=1) == ("after",)  # neither thread nor mailbox is left marked as taking
    box.tell(("later",))
    on_alarm(signal.SIGALRM, None)  # outside any take, a handler's take is an ordinary one
    assert box.flush() == []
