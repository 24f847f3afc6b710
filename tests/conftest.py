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


def _kernel_objects() -> dict[str, set[str]]:
    """What a test run could leave behind on the host: links, mounts, cgroup directories."""
    from pathlib import Path

    from linx_otp import cgroup, netlink

    with netlink.open() as host:
        links = set(netlink.link_names(host))
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    layout = cgroup.detect()
    roots = [layout.v2_root, *layout.v1_roots.values()]
    cgroups = {str(path) for root in roots if root for path in Path(root).iterdir() if path.is_dir()}
    return {"links": links, "mounts": mounts, "cgroups": cgroups}


@pytest.fixture(scope="session", autouse=True)
def no_kernel_objects_left():
    """At the end of the run: no link, mount or cgroup the tests made is still there."""
    before = _kernel_objects()
    yield
    after = _kernel_objects()
    left = {kind: sorted(after[kind] - before[kind]) for kind in before if after[kind] - before[kind]}
    assert not left, f"the tests left kernel objects behind: {left}"


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
