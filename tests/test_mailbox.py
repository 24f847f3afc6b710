"""Mailboxes: selective receive, timeouts, per-thread mailboxes."""

from __future__ import annotations

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
