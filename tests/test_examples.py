"""Every example script runs to completion (they are the seed's examples, as users will run them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import IS_ROOT

EXAMPLES_DIRECTORY = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIRECTORY.rglob("*.py"))
NEEDS_ROOT = {"namespaces.py", "enter.py", "netns_checkpoint.py"}
NEEDS_A_TERMINAL = {"interactive_shell.py", "borrow_and_return.py"}  # run in tmux by test_tty_tmux.py
RUN_BELOW = {"container.py"}  # has its own end-to-end test here
EXAMPLES = [path for path in EXAMPLES if path.name not in NEEDS_A_TERMINAL | RUN_BELOW]


@pytest.mark.parametrize("script", EXAMPLES, ids=[str(path.relative_to(EXAMPLES_DIRECTORY)) for path in EXAMPLES])
def test_example_runs(script):
    if script.name in NEEDS_ROOT and not IS_ROOT:
        pytest.skip("creates namespaces: needs root")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an example shows what it does"


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
    assert "dd-100M=137" in lines and "dd-10M=0" in lines  # memory.max 64 MiB: the OOM killer's SIGKILL
    assert "container: ('exited', 0)" in lines
