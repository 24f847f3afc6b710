"""The leak checks themselves: the end-of-run check (``support.left_since``) reports what this
run left with its marker, and nothing of anybody else's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import (
    RUN_MARKER,
    RUN_TMPDIR,
    SYSTEM_TMPDIR,
    agent_pids,
    cgroup_roots,
    left_since,
    needs_root,
    orphaned_agent_pids,
    process_table,
    run_objects,
    run_scoped_name,
    wait_until,
)

from linx_otp import process as P

TESTS = Path(__file__).resolve().parent


def test_run_scoped_names_carry_the_marker_and_fit_a_link_name():
    name = run_scoped_name("h0")
    assert name.startswith(RUN_MARKER) and len(RUN_MARKER) == 7 and len(name) <= 15
    assert run_scoped_name("1234567") != run_scoped_name("123456")
    for bad in ("", "12345678", "a/b"):
        with pytest.raises(ValueError):
            run_scoped_name(bad)


def test_the_run_and_every_program_it_starts_make_their_temporary_files_in_the_run_scratch_area():
    assert Path(tempfile.gettempdir()) == RUN_TMPDIR
    made = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"], capture_output=True, text=True
    )
    assert made.stdout.strip() == str(RUN_TMPDIR)


@needs_root
def test_a_leaked_link_cgroup_mount_scratch_dir_and_agent_of_this_run_are_reported(tmp_path_factory, box):
    pytest_tmp = tmp_path_factory.getbasetemp()
    before = run_objects(pytest_tmp)
    link, foreign_link = run_scoped_name("leak"), f"lx{RUN_MARKER[2:]}x"  # the latter: not of this run
    cgroup = cgroup_roots()[0] / run_scoped_name("leak")
    scratch = SYSTEM_TMPDIR / run_scoped_name("leak")
    undo = []
    try:
        subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", foreign_link], check=True)
        undo.append(["ip", "link", "del", link])  # and its peer with it
        cgroup.mkdir()
        undo.append(["rmdir", str(cgroup)])
        scratch.mkdir()
        undo.append(["rmdir", str(scratch)])
        foreign_scratch = tempfile.mkdtemp(dir=SYSTEM_TMPDIR)  # not named with the marker
        undo.append(["rmdir", foreign_scratch])
        mount_point = tempfile.mkdtemp()
        undo.append(["rmdir", mount_point])
        subprocess.run(["mount", "-t", "tmpfs", "leak", mount_point], check=True)
        undo.append(["umount", mount_point])
        example = subprocess.run(  # what examples/stdio.py used to do: a temporary directory never removed
            [sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp())"], capture_output=True, text=True
        )
        left_by_example = example.stdout.strip()
        undo.append(["rmdir", left_by_example])
        session = P.spawn(argv=["/bin/sleep", "60"], owner=box)
        undo.append(session.stop)
        box.receive(("linx_process", "ready"), timeout=10)
        agents = agent_pids()

        assert agents  # the agent, and its child parked at the checkpoint (not exec-ed yet: the same name)
        assert left_since(before, pytest_tmp) == {
            "agents": sorted(f"pid {pid}" for pid in agents),
            "links": [link],
            "cgroups": [str(cgroup)],
            "mounts": [mount_point],
            "tmp": sorted([str(scratch), mount_point, left_by_example]),
        }
    finally:
        for step in reversed(undo):
            step() if callable(step) else subprocess.run(step, check=True)
    assert left_since(before, pytest_tmp) == {}


def test_a_run_whose_example_leaves_its_temporary_directory_fails_at_the_end(tmp_path):
    """The real end-of-run fixture (this directory's conftest.py), in a run of its own."""
    for name in ("conftest.py", "support.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_leaky.py").write_text(
        "import subprocess, sys\n\n\n"
        "def test_an_example_that_forgets_its_temporary_directory():\n"
        "    subprocess.run([sys.executable, '-c', 'import tempfile; print(tempfile.mkdtemp())'], check=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
        + ["--basetemp", str(tmp_path / "basetemp"), str(tmp_path / "test_leaky.py")],
        cwd=TESTS.parent,  # where linx_otp is imported from
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout, result.stdout
    [report] = [line for line in result.stdout.splitlines() if re.match(r"E +AssertionError: the tests left", line)]
    assert "'tmp': [" in report and "-tmp/tmp" in report, report  # the directory, in that run's own TMPDIR


ORPHANING_HOST = """
import os, linx_otp
from linx_otp import process as P
session = P.spawn(argv=["/bin/sleep", "60"], orphan_policy="linger", auto_proceed=True, stdio="devnull")
linx_otp.receive(("linx_process", "running"), timeout=10)
print(P.host_pid(session), flush=True)
os._exit(0)  # no stop: the agent, lingering, is reparented out of this run's process tree
"""


def test_an_agent_whose_parent_died_is_still_counted_as_this_runs():
    host = subprocess.Popen([sys.executable, "-c", ORPHANING_HOST], stdout=subprocess.PIPE, text=True, cwd=TESTS.parent)
    with host.stdout:  # the agent holds it open too: read a line, not to the end
        workload = int(host.stdout.readline())
    assert host.wait(30) == 0
    try:
        agent = int(process_table()[workload][1][1])
        assert orphaned_agent_pids() == {agent} and agent not in agent_pids()
        assert f"pid {agent}" in run_objects()["agents"]
    finally:
        os.kill(workload, signal.SIGKILL)  # the lingering agent then ends too
    assert wait_until(lambda: not orphaned_agent_pids(), 10)
