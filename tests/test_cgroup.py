"""cgroups at the checkpoint, on this host's real (hybrid) layout."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from support import needs_root, process_alive, run_scoped_name, wait_until

from linx_otp import process as P
from linx_otp.checkpoint import cgroup as C
from linx_otp.errors import LinxOSError, LinxValueError

pytestmark = needs_root
TIMEOUT = 10


@pytest.fixture
def make_cgroup():
    made = []

    def make(**limits) -> C.Cgroup:
        cgroup = C.create(run_scoped_name(f"cg{uuid.uuid4().hex[:5]}"), **limits)
        made.append(cgroup)
        return cgroup

    yield make
    for cgroup in made:
        C.destroy(cgroup, kill_first=True)


def test_the_layout_is_detected_from_the_mounts():
    layout = C.detect()
    assert layout.v2_root is not None and Path(layout.v2_root, "cgroup.procs").exists()
    for controller, root in layout.v1_roots.items():
        assert Path(root).is_dir(), controller


def test_a_workload_placed_at_the_checkpoint_is_there_from_its_first_instruction(make_cgroup, box):
    cgroup = make_cgroup(pids_max=50)
    session = P.spawn(argv=["/bin/cat", "/proc/self/cgroup"], stdio="pty", owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    C.add_process(cgroup, pid)
    assert C.processes(cgroup) == [pid]
    P.proceed(session)
    assert P.wait(session, TIMEOUT) == ("exited", 0)
    printed = b"".join(event[2] for event in box.flush() if event[1] == "pty_out").decode().splitlines()
    assert f"0::/{cgroup.name}" in printed  # what cat, the workload's first program, saw
    if "pids" in cgroup.v1_paths:
        assert any(line.endswith(f":pids:/{cgroup.name}") for line in printed)
    session.stop()


def test_pids_max_of_10_stops_a_fork_bomb(make_cgroup, box):
    cgroup = make_cgroup(pids_max=10)
    bomb = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done 2>/dev/null; echo started $(jobs -p | wc -l)"
    session = P.spawn(argv=["/bin/sh", "-c", bomb], stdio="pty", owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    C.add_process(cgroup, pid)
    P.proceed(session)
    assert wait_until(
        lambda: b"started" in b"".join(e[2] for e in box.flush() if e[1] == "pty_out") or not process_alive(pid),
        TIMEOUT,
    )
    assert len(C.processes(cgroup)) <= 10
    C.kill(cgroup)
    assert P.wait(session, TIMEOUT)[0] in ("exited", "signaled")
    session.stop()


def test_cgroup_kill_takes_down_a_workload_and_all_its_descendants(make_cgroup, box):
    cgroup = make_cgroup()
    tree = "sleep 60 & sleep 60 & (sleep 60 & wait) & wait"
    session = P.spawn(argv=["/bin/sh", "-c", tree], owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    C.add_process(cgroup, pid)
    P.proceed(session)
    assert wait_until(lambda: len(C.processes(cgroup)) >= 5, TIMEOUT)
    members = C.processes(cgroup)
    C.kill(cgroup)
    assert P.wait(session, TIMEOUT) == ("signaled", 9)
    assert wait_until(lambda: not any(process_alive(member) for member in members), TIMEOUT)
    assert wait_until(lambda: C.events(cgroup)["populated"] == 0, TIMEOUT)
    session.stop()


def test_freeze_and_thaw(make_cgroup, box):
    cgroup = make_cgroup()
    session = P.spawn(argv=["/bin/sleep", "60"], owner=box, auto_proceed=True)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    C.add_process(cgroup, pid)
    C.freeze(cgroup)
    assert C.events(cgroup)["frozen"] == 1
    C.thaw(cgroup)
    assert C.events(cgroup)["frozen"] == 0
    session.stop()


def test_limits_are_written_where_the_controller_lives(make_cgroup):
    cgroup = make_cgroup(memory_max=64 * 1024 * 1024, pids_max=7, cpu_max=(50000, 100000))
    layout = C.detect()
    for controller, v2_file, v1_file, expected_v2, expected_v1 in [
        ("pids", "pids.max", "pids.max", "7", "7"),
        ("memory", "memory.max", "memory.limit_in_bytes", str(64 << 20), str(64 << 20)),
        ("cpu", "cpu.max", "cpu.cfs_quota_us", "50000 100000", "50000"),
    ]:
        if controller in layout.v2_controllers():
            assert Path(cgroup.path, v2_file).read_text().strip() == expected_v2
        else:
            assert Path(cgroup.v1_paths[controller], v1_file).read_text().strip() == expected_v1
    C.set_pids_max(cgroup, "max")
    C.set_memory_max(cgroup, "max")


def test_bad_input_and_kernel_errors(make_cgroup):
    for name in ("", "/abs", "../up", None):
        with pytest.raises(LinxValueError):
            C.create(name)
    never_made = run_scoped_name("never")
    with pytest.raises(LinxValueError) as raised:
        C.create(never_made, pids_max=-1)
    assert raised.value.reason == ("bad_pids_max", -1)
    assert not Path(C.detect().v2_root, never_made).exists()
    with pytest.raises(LinxValueError):
        C.create(never_made, cpu_max=(1,))
    cgroup = make_cgroup()
    with pytest.raises(LinxOSError) as raised:
        C.add_process(cgroup, 2**22 + 1)
    assert raised.value.reason == ("add_process", "esrch")


def test_destroying_a_populated_cgroup_is_ebusy_unless_killed_first(make_cgroup, box):
    cgroup = make_cgroup()
    session = P.spawn(argv=["/bin/sleep", "60"], owner=box, auto_proceed=True)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    C.add_process(cgroup, pid)
    with pytest.raises(LinxOSError) as raised:
        C.destroy(cgroup)
    assert raised.value.reason == ("destroy", "ebusy")
    C.destroy(cgroup, kill_first=True)
    assert not os.path.exists(cgroup.path)
    assert P.wait(session, TIMEOUT) == ("signaled", 9)
    session.stop()
