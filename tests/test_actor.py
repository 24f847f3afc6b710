"""The actor base: exit reasons and monitors."""

from __future__ import annotations

import pytest

import linx_otp


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
