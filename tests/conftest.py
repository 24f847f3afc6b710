"""Shared fixtures. Every test is checked for leaks afterwards: all actors are stopped
gracefully, then no child process of this Python process, no agent orphaned by one of its
subprocesses and no actor thread may remain. At the end of the run, none of the run's host
objects may remain (``nothing_left_on_the_host``)."""

from __future__ import annotations

import threading

import pykka
import pytest
from support import (
    RUN_TMPDIR,
    child_pids,
    left_since,
    orphaned_agent_pids,
    run_objects,
    threads_added_since,
    wait_until,
)

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
    assert wait_until(lambda: not orphaned_agent_pids(), 10), f"agents orphaned: {orphaned_agent_pids()}"
    assert wait_until(lambda: not threads_added_since(threads_before), 5), (
        f"threads left: {threads_added_since(threads_before)}"
    )
    linx_otp.flush()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_host(tmp_path_factory):
    """At the end of the run: none of the run's own host objects is left (``support.run_objects``:
    its agents, links and cgroups named with the run's marker, mounts in its scratch places,
    anything in its ``TMPDIR``). Objects of a daemon or another run are none of its business."""
    import os
    import shutil
    import stat
    import tempfile

    pytest_tmp = tmp_path_factory.getbasetemp()  # made now, before TMPDIR changes below
    before = run_objects(pytest_tmp)
    RUN_TMPDIR.mkdir(mode=0o755, exist_ok=True)  # it exists only if a run with our pid leaked it
    status = RUN_TMPDIR.lstat()
    assert stat.S_ISDIR(status.st_mode) and status.st_uid == os.geteuid(), f"{RUN_TMPDIR} is not this user's directory"
    RUN_TMPDIR.chmod(0o755)  # whatever the umask: the rootless tests' user walks through it
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(RUN_TMPDIR)  # for this process and all it starts
    try:
        yield
    finally:
        if saved[0] is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
    wait_until(lambda: not left_since(before, pytest_tmp), 5)  # what is still going away, e.g. an agent ending
    left = left_since(before, pytest_tmp)
    if not left.get("mounts"):  # never remove a tree with something mounted in it
        shutil.rmtree(RUN_TMPDIR, ignore_errors=True)
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
