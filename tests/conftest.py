"""Shared fixtures. Every test is checked for leaks afterwards: all actors are stopped
gracefully, then no child process of this Python process and no actor thread may remain."""

from __future__ import annotations

import threading

import pykka
import pytest
from support import child_pids, threads_added_since, wait_until

import linx_otp
from linx_otp.supervisor import Supervisor


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


def _host_objects() -> dict[str, set[str]]:
    """What a test run could leave behind on the host: links, mounts, cgroup directories,
    linx-* entries in /tmp."""
    from pathlib import Path

    from linx_otp import cgroup, netlink

    with netlink.open() as host:
        links = set(netlink.link_names(host))
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    layout = cgroup.detect()
    roots = [layout.v2_root, *layout.v1_roots.values()]
    cgroups = {str(path) for root in roots if root for path in Path(root).iterdir() if path.is_dir()}
    scratch = {str(path) for path in Path("/tmp").glob("linx-*")}
    return {"links": links, "mounts": mounts, "cgroups": cgroups, "/tmp": scratch}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_host():
    """At the end of the run: no link, mount, cgroup or scratch file the tests made is left."""
    before = _host_objects()
    yield
    after = _host_objects()
    left = {kind: sorted(after[kind] - before[kind]) for kind in before if after[kind] - before[kind]}
    assert not left, f"the tests left these behind: {left}"


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


TEST_USER = "linxtest"


@pytest.fixture(scope="session")
def test_user():
    """An ordinary user for the rootless tests, made with useradd and removed at the end of
    the run (unless it was there before)."""
    import os
    import pwd
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("making a test user needs root (CI runs as root)")
    try:
        yield pwd.getpwnam(TEST_USER)
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], check=True)
    yield pwd.getpwnam(TEST_USER)
    subprocess.run(["userdel", TEST_USER], check=True)


@pytest.fixture
def readable_directory():
    """A directory the test user can enter (pytest's tmp_path sits under a private one)."""
    import shutil
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="linx-readable-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)
