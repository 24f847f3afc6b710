"""Supervisors beyond OTP's verbs, with real workloads: the restart back-off of a child spec
(delays measured from the supervisor's own reports), a child started in its place in the start
order, and the settings and specs a running supervisor takes in place (OTP's ``code_change``)."""

from __future__ import annotations

import math
import threading
import time

import pytest
from support import child_pids, process_alive, wait_until
from test_supervisor import REPORT, crash, refs, report_sequence, running_pid, sleeper

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.errors import LinxError, LinxValueError


class Recorder:
    """A supervisor's ``events``: each report with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, tuple]] = []
        self.lock = threading.Lock()

    def tell(self, message: tuple) -> None:
        with self.lock:
            self.reports.append((time.monotonic(), message))

    def times(self, kind: str, child_id: str = "crasher") -> list[float]:
        with self.lock:
            return [when for when, report in self.reports if report[1] == kind and report[3] == child_id]

    def details(self, kind: str, child_id: str = "crasher") -> list:
        with self.lock:
            return [report[4] for _, report in self.reports if report[1] == kind and report[3] == child_id]


def crashing(child_id: str = "crasher", script: str = "exit 3", **options) -> linx_otp.actor.ChildSpec:
    return P.child_spec(id=child_id, argv=["sh", "-c", script], auto_proceed=True, **options)


# -- restart back-off ----------------------------------------------------------------------------------


def test_restart_delays_double_up_to_the_maximum_measured_from_the_supervisors_reports():
    events = Recorder()
    tree = S.start(
        # a 0.2 s base: a run under load must stay short of the 2 s that resets the back-off
        [crashing(restart_delay=0.2, restart_backoff_max=0.8), sleeper("steady")],
        max_restarts=100,
        max_seconds=30.0,
        events=events,
    )
    assert wait_until(lambda: len(events.times("restarted")) >= 5, 20)
    exits, restarts = events.times("exited"), events.times("restarted")
    delays = [round(restarts[n] - exits[n], 3) for n in range(5)]
    print("delays between an exit and its restart:", delays)
    nominal_delays = [0.2, 0.4, 0.8, 0.8, 0.8]
    for measured, nominal in zip(delays, nominal_delays, strict=True):
        # never early; late only by the restart itself (an actor and an agent started, on a loaded machine)
        assert nominal <= measured < nominal + 0.5, delays
    assert events.details("backoff")[:5] == nominal_delays  # each step, exactly
    counts = S.restart_counts(tree)
    assert counts["crasher"] >= 5 and counts["steady"] == 0  # restarts counted as they happen
    S.stop(tree)
    assert not child_pids()


def test_the_restart_intensity_counts_a_restart_when_it_happens_after_its_delay():
    events = Recorder()
    tree = S.start([crashing(restart_delay=0.3)], max_restarts=2, max_seconds=30.0, events=events)
    box = linx_otp.Mailbox()
    linx_otp.monitor(tree, box)
    assert box.receive(("DOWN", tree), timeout=10)[2] == "shutdown"
    exits, gave_up = events.times("exited"), events.times("gave_up")
    assert len(events.times("restarted")) == 2 and len(exits) == 3 and len(gave_up) == 1
    assert gave_up[0] - exits[2] >= 0.3  # the third restart was counted (and refused) after its delay
    assert events.details("backoff") == [0.3, 0.3, 0.3]


def test_a_stop_during_the_back_off_acts_at_once_and_the_child_stays_stopped():
    events = Recorder()
    tree = S.start([crashing(restart_delay=1.0), sleeper("steady")], events=events)
    assert wait_until(lambda: events.details("backoff") == [1.0], 10)
    started = time.monotonic()
    S.terminate_child(tree, "crasher")
    assert time.monotonic() - started < 0.5
    assert events.details("backoff_cancelled") == ["stopped before its restart"]
    time.sleep(1.3)  # past the cancelled delay: no restart came of it
    assert events.times("restarted") == [] and refs(tree)["crasher"] is None
    assert S.restart_counts(tree) == {"crasher": 0, "steady": 0}
    S.restart_child(tree, "crasher")  # and it can be started again by hand
    assert wait_until(lambda: len(events.times("exited")) == 2, 10)
    S.stop(tree)
    assert not child_pids()


def test_a_child_that_ran_ten_delays_starts_its_back_off_again():
    events = Recorder()
    tree = S.start([crashing(script="sleep 0.6; exit 1", restart_delay=0.05, restart_backoff_max=1.0)], events=events)
    assert wait_until(lambda: len(events.details("backoff")) >= 3, 10)
    assert events.details("backoff")[:3] == [0.05, 0.05, 0.05]
    S.stop(tree)


def test_a_group_restart_during_a_back_off_takes_the_place_of_the_waiting_restart(box):
    events = Recorder()
    tree = S.start(
        [sleeper("first"), crashing(restart_delay=2.0, restart_backoff_max=8.0)], strategy="one_for_all", events=events
    )
    assert wait_until(lambda: events.details("backoff") == [2.0], 10)
    crash(tree, "first")  # one_for_all: the crasher is started with the group, at once
    assert wait_until(lambda: len(events.times("restarted")) == 1, 5)
    first_exit = events.times("exited")[0]
    assert events.times("restarted")[0] - first_exit < 1.9  # well before its 2 s delay, even under load
    # Past the cancelled 2 s wait: it started nothing of its own (the crasher's next crash waits 4 s).
    time.sleep(max(0.0, first_exit + 2.3 - time.monotonic()))
    assert len(events.times("restarted")) == 1
    assert events.details("backoff")[1] == 4.0
    S.stop(tree)


@pytest.mark.parametrize(
    ("delay", "maximum", "reason"),
    [
        (-1, None, "bad_restart_delay"),
        (math.nan, None, "bad_restart_delay"),
        (True, None, "bad_restart_delay"),
        ("1", None, "bad_restart_delay"),
        (86401, None, "bad_restart_delay"),
        (2.0, 1.0, "bad_restart_backoff_max"),
        (0.1, math.inf, "bad_restart_backoff_max"),
    ],
)
@pytest.mark.parametrize(
    "make_spec",
    [
        lambda **back_off: P.child_spec(id="w", argv=["true"], auto_proceed=True, **back_off),
        lambda **back_off: S.child_spec([], id="s", **back_off),
        lambda **back_off: linx_otp.Actor.child_spec(**back_off),
    ],
    ids=["process", "supervisor", "actor"],
)
def test_bad_back_off_keywords_are_refused_by_every_child_spec(make_spec, delay, maximum, reason):
    with pytest.raises(LinxValueError) as raised:
        make_spec(restart_delay=delay, restart_backoff_max=maximum)
    assert raised.value.reason[0] == reason
    assert not child_pids()


def test_back_off_keywords_are_kept_normalised_on_the_spec():
    spec = P.child_spec(id="w", argv=["true"], auto_proceed=True, restart_delay=1, restart_backoff_max=30)
    assert (spec.restart_delay, spec.restart_backoff_max) == (1.0, 30.0)
    assert S.child_spec([], id="s", restart_delay=0.5).restart_backoff_max == 0.5  # no doubling


# -- a child started in its place in the start order ---------------------------------------------------


def test_start_child_before_a_sibling_puts_it_there_for_restarts_and_the_shutdown(box):
    tree = S.start([sleeper("a"), sleeper("c")], strategy="rest_for_one", events=box)
    with pytest.raises(LinxError) as raised:
        S.start_child(tree, sleeper("b"), before="nobody")
    assert raised.value.reason == "not_found" and [child for child, _, _ in S.which_children(tree)] == ["a", "c"]
    S.start_child(tree, sleeper("b"), before="c")
    assert [child for child, _, _ in S.which_children(tree)] == ["a", "b", "c"]
    before = refs(tree)
    box.flush()
    crash(tree, "b")  # rest_for_one: c comes after b now, a before it
    assert report_sequence(box, 4) == [("exited", "b"), ("stopped", "c"), ("restarted", "b"), ("restarted", "c")]
    assert refs(tree)["a"] is before["a"]
    box.flush()
    S.stop(tree)  # in reverse start order
    assert [report[3] for report in box.flush() if report[0] == REPORT and report[1] == "stopped"] == ["c", "b", "a"]
    assert not child_pids()


# -- settings and specs changed in place (OTP's code_change) ---------------------------------------------


def test_change_settings_applies_a_new_strategy_and_intensity_without_touching_a_child(box):
    tree = S.start([sleeper("a"), sleeper("b")], max_restarts=5, events=box)
    before = refs(tree)
    pids = {child_id: running_pid(ref) for child_id, ref in before.items()}
    with pytest.raises(LinxValueError):
        S.change_settings(tree, strategy="simple_one_for_one")  # and nothing changed:
    box.flush()
    crash(tree, "a")
    assert report_sequence(box, 2) == [("exited", "a"), ("restarted", "a")]
    S.change_settings(tree, strategy="one_for_all", max_restarts=2)
    assert refs(tree)["b"] is before["b"] and process_alive(pids["b"])  # no child stopped or started
    assert not box.flush()
    crash(tree, "b")  # one_for_all now: a is stopped and started with b
    assert report_sequence(box, 4) == [("exited", "b"), ("stopped", "a"), ("restarted", "a"), ("restarted", "b")]
    linx_otp.monitor(tree, box)
    crash(tree, "a")  # the third restart in max_seconds: more than max_restarts=2, counted with the first two
    assert box.receive(("DOWN", tree), timeout=10)[2] == "shutdown"
    assert not child_pids()


def test_replace_child_spec_keeps_the_incarnation_and_applies_the_new_spec_from_now_on(box):
    tree = S.start([sleeper("a"), sleeper("b")], events=box)
    before = refs(tree)
    S.replace_child_spec(tree, sleeper("a", restart="temporary"))
    assert refs(tree)["a"] is before["a"]
    with pytest.raises(LinxError) as raised:
        S.replace_child_spec(tree, sleeper("nobody"))
    assert raised.value.reason == "not_found"
    box.flush()
    crash(tree, "a")  # temporary now: not restarted, and gone
    assert report_sequence(box, 1) == [("exited", "a")]
    assert wait_until(lambda: [child for child, _, _ in S.which_children(tree)] == ["b"])
    S.stop(tree)
    assert not child_pids()
