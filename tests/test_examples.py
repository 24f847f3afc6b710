"""Every example script runs to completion and prints what it demonstrates (they are the seed's
examples, as users will run them), and leaves no temporary file behind."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import IS_ROOT, cgroup_roots

EXAMPLES_DIRECTORY = Path(__file__).resolve().parent.parent / "examples"
NEEDS_ROOT = {"namespaces.py", "enter.py", "netns_checkpoint.py"}
NEEDS_A_TERMINAL = {"interactive_shell.py", "borrow_and_return.py"}  # run in tmux by test_tty_tmux.py
RUN_BELOW = {"container.py"}  # has its own end-to-end test here
NEEDS_A_CLUSTER = {"cluster.py"}  # run against a real Ray cluster by test_cluster.py


def literal_after(prefix: str, lines: list[str]):
    """The Python literal printed after ``prefix`` on the one line that starts with it."""
    [line] = [line for line in lines if line.startswith(prefix)]
    return ast.literal_eval(line.removeprefix(prefix).strip())


# A workload writes to the example's stdout itself, while the example's own prints may wait in
# Python's buffer: their relative order is not fixed, only the order among the prints is.


def check_quick_start(lines: list[str]) -> None:
    assert any(line.startswith("spawned session ") for line in lines)
    checkpoint = literal_after("checkpoint:", lines)
    assert checkpoint[:2] == ("linx_process", "ready") and checkpoint[2] > 1  # the host pid
    assert "hello" in lines  # the workload's own output, after proceed
    assert literal_after("outcome:", lines) == ("exited", 0)
    assert literal_after("events:", lines) == [("linx_process", "running"), ("linx_process", "exited", 0)]


def check_abort(lines: list[str]) -> None:
    assert lines == [
        "('linx_process', 'aborted')",
        "('aborted',)",
        "abort once terminal: no_process",
        "abort once running: running",
    ]


def check_errors(lines: list[str]) -> None:
    assert lines[0] == "('linx_process', 'error', 2, 'execve')"  # ENOENT, at the execve stage
    assert lines[1].startswith("'argv_required' - argv must be")
    assert lines[2].startswith("('bad_namespaces', ['typo']) - unknown namespace(s) ['typo']")
    assert len(lines) == 3


def check_signals_and_waits(lines: list[str]) -> None:
    assert lines == [
        "('linx_process', 'signaled', 15)",
        "('signaled', 15) [('linx_process', 'running'), ('linx_process', 'signaled', 15)]",
        "still running: the workload is still live after 0.1 s",
        "('signaled', 9)",
    ]


def check_stdio(lines: list[str]) -> None:
    assert lines == ["devnull: ('exited', 0)", "received: b'hello from a workload\\n'", "('exited', 0)"]


def check_namespaces(lines: list[str]) -> None:
    for kind in ("net", "uts", "ipc", "pid"):
        [line] = [line for line in lines if line.startswith(f"{kind:4} ours")]
        ours, theirs = re.fullmatch(rf"{kind} +ours ({kind}:\[\d+\]) +child's ({kind}:\[\d+\])", line).groups()
        assert ours != theirs, line  # a fresh namespace of each kind
    assert any(re.fullmatch(r"<Info spawn ready host=\d+> child_pid: 1", line) for line in lines)
    assert lines[-1] == "('linx_process', 'aborted')"


def check_enter(lines: list[str]) -> None:
    assert lines == [
        "1",  # the probe, inside the target's netns, counted one link: lo
        "probe: ('exited', 0)",
        "('linx_process', 'error', 2, 'open_ns_proc')",
        "('signaled', 9)",
    ]


def check_netns_checkpoint(lines: list[str]) -> None:
    assert "('linx_process', 'running')" in "\n".join(lines)  # the workload's lines may land before its newline
    assert any("ct0" in line and "inet 10.0.0.5/24" in line for line in lines)
    assert any(line.startswith("default via 10.0.0.1 dev ct0") for line in lines)
    assert lines[-1] == "outcome: ('exited', 0)"


def check_escalation(lines: list[str]) -> None:
    assert lines[-1] == "outer ended: shutdown"
    reports = [line.split(None, 3) for line in lines[:-1]]
    inner_gave_up = [line for line in reports if line[:3] == ["inner:", "gave_up", "flaky"]]
    assert [line[3] for line in inner_gave_up] == ["('reached_max_restart_intensity', 2, 5.0)"] * 2
    assert [line[:3] for line in reports].count(["outer:", "restarted", "inner"]) == 1  # max_restarts=1
    outer = [line for line in reports if line[0] == "outer:"]
    assert outer[-1] == ["outer:", "gave_up", "inner", "('reached_max_restart_intensity', 1, 5.0)"]
    assert not any(line[2] == "logger" for line in reports)  # one_for_one: the sibling stayed up


def check_restart_on_crash(lines: list[str]) -> None:
    before, after = (ast.literal_eval(line.removeprefix("running:")) for line in lines if line.startswith("running:"))
    assert after["web"] != before["web"] and after["cache"] == before["cache"]
    assert lines[1] == "report: ('web', ('signaled', 9))" and lines[2] == "report: web"
    assert literal_after("restarts:", lines) == {"web": 1, "cache": 0}


def check_seed_child_spec(lines: list[str]) -> None:
    events = [ast.literal_eval(line.removeprefix("  event:")) for line in lines if line.startswith("  event:")]
    kinds = [event[1:] if event[1] != "ready" else ("ready",) for event in events]
    assert kinds == [("ready",), ("running",), ("exited", 7), ("ready",), ("running",), ("exited", 0)]
    assert events[0][2] != events[3][2]  # the restart is a new process
    assert literal_after("children after exit 0:", lines) == [("myd", None)]  # transient: stays down


def check_worker_pool(lines: list[str]) -> None:
    # print() writes its text and its newline in two writes, so a job's line (one atomic write of its
    # own to the same pipe) can land between them: read the output as one text, not line by line.
    output = "\n".join(lines)
    jobs = sorted(int(number) for number in re.findall(r"job (\d+) in [^\s{}]+\n", output + "\n"))
    assert jobs == list(range(10))  # every job ran, each once
    ended = re.findall(r"a job ended: (.*?) \| pool: (\{.*?\})", output)
    assert len(ended) == 10 and all(outcome == "('exited', 0)" for outcome, _ in ended)
    counts = [ast.literal_eval(count) for _, count in ended]
    assert all(count["active"] <= 4 and count["supervisors"] == 0 for count in counts)  # max_children=4


CHECKS = {
    "quick_start.py": check_quick_start,
    "abort.py": check_abort,
    "errors.py": check_errors,
    "signals_and_waits.py": check_signals_and_waits,
    "stdio.py": check_stdio,
    "namespaces.py": check_namespaces,
    "enter.py": check_enter,
    "netns_checkpoint.py": check_netns_checkpoint,
    "supervisors/escalation.py": check_escalation,
    "supervisors/restart_on_crash.py": check_restart_on_crash,
    "supervisors/seed_child_spec.py": check_seed_child_spec,
    "supervisors/worker_pool.py": check_worker_pool,
}
"""What each example run here must print: what it demonstrates, not just that it printed."""


def test_every_example_is_checked_somewhere():
    examples = {str(path.relative_to(EXAMPLES_DIRECTORY)) for path in EXAMPLES_DIRECTORY.rglob("*.py")}
    assert examples == set(CHECKS) | NEEDS_A_TERMINAL | RUN_BELOW | NEEDS_A_CLUSTER


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs_shows_what_it_demonstrates_and_leaves_no_temporary_file(name):
    if Path(name).name in NEEDS_ROOT and not IS_ROOT:
        pytest.skip("creates namespaces: needs root")
    scratch = Path(tempfile.mkdtemp(prefix="example-"))  # the example's TMPDIR (the run's own area)
    try:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES_DIRECTORY / name)],
            capture_output=True,
            text=True,
            timeout=60,
            # Unbuffered, as on a terminal: each write reaches the pipe the workloads share whole (a print is two).
            env={**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
        )
        assert result.returncode == 0, result.stderr
        CHECKS[name](result.stdout.splitlines())
        assert not list(scratch.iterdir()), f"{name} left temporary files: {list(scratch.iterdir())}"
    finally:
        shutil.rmtree(scratch)


CONTAINER_CHECKS = "; ".join(
    [
        "echo host=$(hostname) uid=$(id -u) pid=$$",
        "echo root: $(ls /)",
        "echo procs: /proc/[0-9]*",
        "ip -4 -o addr show eth0",
        "ip route",
        "ping -c1 -W2 10.231.0.1 | grep -c ' 0% packet loss'",
        "cat /proc/self/cgroup",
        "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo dd-100M=$?",
        "dd if=/dev/zero of=/dev/null bs=10M count=1 2>/dev/null; echo dd-10M=$?",
    ]
)


@pytest.mark.skipif(not IS_ROOT, reason="the full container (veth, cgroup) needs root")
def test_the_container_example_end_to_end():
    """examples/container.py builds the container at the checkpoint; the workload's own view
    shows every piece in place."""
    script = EXAMPLES_DIRECTORY / "container.py"
    result = subprocess.run(
        [sys.executable, str(script), "--command", CONTAINER_CHECKS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert "host=container uid=0 pid=1" in lines
    assert "root: bin dev etc proc root sys tmp" in lines  # only the rootfs, after pivot_root
    assert "procs: /proc/1" in lines  # its own /proc: nothing of the host's
    assert any("inet 10.231.0.2/30" in line and "eth0" in line for line in lines)
    assert any(line.startswith("default via 10.231.0.1 dev eth0") for line in lines)
    assert "1" in lines  # one ping answered by the host end of the veth
    cgroup_lines = [line for line in lines if "linx-container-" in line]
    assert any(line.startswith("0::/linx-container-") for line in cgroup_lines)
    cgroup_name = next(line for line in cgroup_lines if line.startswith("0::/")).removeprefix("0::/")
    host_pid = cgroup_name.removeprefix("linx-container-")  # the example names its cgroup and veth by it
    assert not any((root / cgroup_name).exists() for root in cgroup_roots()), "the example left its cgroup"
    assert f"lxc{host_pid}" not in os.listdir("/sys/class/net"), "the example left its veth"
    assert "dd-100M=137" in lines and "dd-10M=0" in lines  # memory.max 64 MiB: the OOM killer's SIGKILL
    assert "container: ('exited', 0)" in lines
