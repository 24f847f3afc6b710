"""Shared fixtures. Every test is checked for leaks afterwards: all actors are stopped
gracefully, then no child process of this Python process and no actor thread may remain."""

from __future__ import annotations

import pykka
import pytest

import linx_otp
from linx_otp.supervisor import Supervisor

import threading

from support import child_pids, threads_added_since, wait_until


@pytest.fixture(autouse=True)
def no_leaks():
    linx_otp.flush()
    threads_before = set(threading.enumerate())
    yield
    for tree in pykka.ActorRegistry.get_by_class(Supervisor):  # first, or they would restart children
        tree.stop()
    pykka.ActorRegistry.stop_all()
    assert wait_until(lambda: not child_pids(), 10), f"processes left behind: {child_pids()}"
    assert wait_until(lambda: not threads_added_since(threads_before), 5), (
        f"threads left: {threads_added_since(threads_before)}"
    )
    linx_otp.flush()


@pytest.fixture
def box() -> linx_otp.Mailbox:
    return linx_otp.Mailbox()


@pytest.fixture
def listener(tmp_path):
    from support import Listener

    created = Listener(tmp_path)
    yield created
    created.close()


@pytest.fixture
def stalled_listener(tmp_path):
    from support import Listener

    created = Listener(tmp_path, stalled=True)
    yield created
    created.close()
