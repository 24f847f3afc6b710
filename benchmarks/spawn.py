"""Spawn cost and scale, measured side by side with the tools people would otherwise use.

    sudo python benchmarks/spawn.py [--runs 300] [--sessions 1000]

Prints a Markdown table. Each spawn figure is the median (and p99) of --runs iterations; the
baseline and linx_otp alternate within one loop, so machine noise hits both alike and the
ratio is what to read. Needs root for the namespace rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import median_and_p99, ratio

import linx_otp
from linx_otp import process as P

NAMESPACES = ["net", "pid", "mount", "uts", "ipc"]
UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount", "--uts", "--ipc", "/bin/true"]


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def linx_true(namespaces: list[str], box: linx_otp.Mailbox):
    sessions = []

    def run():
        session = P.spawn(argv=["/bin/true"], namespaces=namespaces, auto_proceed=True, owner=box)
        P.wait(session)
        sessions.append(session)

    def clean():
        for session in sessions:
            session.stop()
        sessions.clear()
        box.flush()

    return run, clean


def linx_cycle(namespaces: list[str], linger: bool, box: linx_otp.Mailbox):
    """The whole cycle a caller pays: spawn, the outcome received, the session gone (``stop()``
    with ``linger=True``; with ``linger=False`` the session ends itself at its outcome)."""

    def run():
        session = P.spawn(argv=["/bin/true"], namespaces=namespaces, auto_proceed=True, linger=linger, owner=box)
        box.receive(("linx_process", "exited"), timeout=10)
        if linger:
            session.stop()
        elif not session.actor_stopped.wait(10):
            raise RuntimeError("a linger=False session outlived its outcome by 10 s")

    def clean():
        box.flush()

    return run, clean


def compare(runs: int, baseline, candidate, clean) -> tuple[list[float], list[float]]:
    """Baseline and candidate alternate, each going first every other run: whatever the one
    before leaves running (a session's last thread, an exit being reaped) falls on both alike."""
    base, ours = [], []
    for run in range(runs):
        if run % 2:
            base.append(timed(baseline))
        ours.append(timed(candidate))
        clean()
        if not run % 2:
            base.append(timed(baseline))
    return base, ours


def row(name: str, baseline_name: str, base: list[float], ours: list[float], limit: float) -> str:
    measured = ratio(ours, base)
    verdict = "yes" if measured <= limit else "NO"
    return (
        f"| {name} | {median_and_p99(ours)} | {baseline_name} | {median_and_p99(base)} "
        f"| {measured:.2f}× | ≤ {limit}×: {verdict} |"
    )


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def private_kib(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def agent_pid_of(workload: int) -> int:
    return int(Path(f"/proc/{workload}/stat").read_text().rsplit(")", 1)[1].split()[1])


def scale(count: int) -> list[str]:
    box = linx_otp.Mailbox()
    rss_before, threads_before = rss_kib(), threading.active_count()
    started = time.perf_counter()
    sessions = [P.spawn(argv=["/bin/sleep", "600"], auto_proceed=True, owner=box) for _ in range(count)]
    running = 0
    deadline = time.monotonic() + 60
    while running < count and time.monotonic() < deadline:
        box.receive(("linx_process", "running"), timeout=60)
        running += 1
    reached = time.perf_counter() - started
    rss_growth = (rss_kib() - rss_before) / 1024
    thread_growth = threading.active_count() - threads_before
    agents = [agent_pid_of(P.host_pid(s)) for s in sessions[:50]]
    agent_private = statistics.median(private_kib(pid) for pid in agents)

    signalled_at = time.perf_counter()
    for session in sessions:
        P.signal(session, signal.SIGTERM)
    delivered = 0
    while delivered < count:
        box.receive(("linx_process", "signaled"), timeout=30)
        delivered += 1
    signal_seconds = time.perf_counter() - signalled_at
    for session in sessions:
        session.stop()
    return [
        f"| {count} sessions reach `running` | {running}/{count} in {reached:.2f} s | all | {'yes' if running == count else 'NO'} |",
        f"| Python process growth | {rss_growth:.1f} MiB, {thread_growth} threads | ≤ 100 MiB, ≤ 1010 threads | "
        f"{'yes' if rss_growth <= 100 and thread_growth <= 1010 else 'NO'} |",
        f"| SIGTERM to all, every `signaled` event in | {signal_seconds:.2f} s | ≤ 5 s | {'yes' if signal_seconds <= 5 else 'NO'} |",
        f"| private memory of one agent | {agent_private:.0f} KiB | (report) | |",
    ]


def full_cycle_rows(runs: int, box: linx_otp.Mailbox) -> list[str]:
    """The round trip issue 15 sets targets for: spawn → outcome received → session gone."""
    rows = []
    for linger, name in [(True, "full cycle, `linger=True` + `stop()`"), (False, "full cycle, `linger=False`")]:
        run, clean = linx_cycle([], linger, box)
        base, ours = compare(runs, lambda: subprocess.run(["/bin/true"]), run, clean)
        rows.append(row(name, "`subprocess.run(['/bin/true'])`", base, ours, 2.0))
    if os.geteuid() == 0 and shutil.which("unshare"):
        run, clean = linx_cycle(NAMESPACES, True, box)
        base, ours = compare(runs, lambda: subprocess.run(UNSHARE), run, clean)
        rows.append(
            row(f"full cycle, `stop()`, namespaces {','.join(NAMESPACES)}", "`unshare` (as above)", base, ours, 1.0)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=1000, help="0 skips the scale rows")
    arguments = parser.parse_args()

    box = linx_otp.Mailbox()
    print(
        f"linx_otp spawn benchmark: {arguments.runs} runs each, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    print("| linx_otp | ms (median / p99) | baseline | ms (median / p99) | ratio | target |")
    print("|---|---|---|---|---|---|")
    run, clean = linx_true([], box)
    for _ in range(20):  # warm up both paths
        run(), clean(), subprocess.run(["/bin/true"])
    base, ours = compare(arguments.runs, lambda: subprocess.run(["/bin/true"]), run, clean)
    print(row("spawn + auto_proceed + wait, `/bin/true`", "`subprocess.run(['/bin/true'])`", base, ours, 2.5))
    if os.geteuid() == 0 and shutil.which("unshare"):
        run, clean = linx_true(NAMESPACES, box)
        base, ours = compare(arguments.runs, lambda: subprocess.run(UNSHARE), run, clean)
        print(
            row(
                f"same, namespaces {','.join(NAMESPACES)}",
                "`unshare --net --pid --fork --mount --uts --ipc`",
                base,
                ours,
                1.2,
            )
        )
    else:
        print("| namespaces row skipped: needs root and unshare | | | | | |")
    for row_text in full_cycle_rows(arguments.runs, box):
        print(row_text)

    if arguments.sessions <= 0:
        return
    print("\n| at scale | measured | target | met |")
    print("|---|---|---|---|")
    for line in scale(arguments.sessions):
        print(line)


if __name__ == "__main__":
    main()
