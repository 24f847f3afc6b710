"""What ending a workload's descendants costs: from a shell's last line to its outcome when it
leaves N background jobs behind (which the agent ends with SIGTERM and reaps before it
reports), beside the same shell leaving none; and a stop of a running workload with N jobs
beside one with none.

    sudo python benchmarks/descendants.py [--runs 200]

Prints a Markdown table; the two figures of a row alternate within one loop, so read the
difference, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from common import median_and_p99

import linx_otp
from linx_otp import process as P


def jobs(count: int) -> str:
    return "".join("sleep 600 & " for _ in range(count))


def to_outcome(box: linx_otp.Mailbox, count: int) -> float:
    """From the workload's last line (every job forked) to its outcome."""
    script = f"{jobs(count)}echo forked; exit 0"
    session = P.spawn(argv=["/bin/sh", "-c", script], auto_proceed=True, owner=box, stdio={"stdout": "capture"})
    box.receive(("linx_process", "stdout"), timeout=10)
    started = time.perf_counter()
    box.receive(("linx_process", "exited"), timeout=10)
    elapsed = (time.perf_counter() - started) * 1000
    session.stop()
    box.flush()
    return elapsed


def stop_running(box: linx_otp.Mailbox, count: int) -> float:
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    script = f"{jobs(count)}echo {marker}; exec sleep 600"
    session = P.spawn(argv=["/bin/sh", "-c", script], auto_proceed=True, owner=box, stdio={"stdout": "capture"})
    box.receive(("linx_process", "stdout"), timeout=10)  # every job has been forked
    started = time.perf_counter()
    session.stop()
    elapsed = (time.perf_counter() - started) * 1000
    box.flush()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    arguments = parser.parse_args()
    box = linx_otp.Mailbox()
    print(
        f"linx_otp descendants benchmark: {arguments.runs} runs each, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    print("| measured | jobs | ms (median / p99) | baseline: no jobs, ms | difference, ms |")
    print("|---|---|---|---|---|")
    for name, measure in (("workload ends, to outcome", to_outcome), ("stop of a running workload", stop_running)):
        for count in (1, 10, 100):
            base, ours = [], []
            for _ in range(arguments.runs):
                base.append(measure(box, 0))
                ours.append(measure(box, count))
            difference = statistics.median(ours) - statistics.median(base)
            print(f"| {name} | {count} | {median_and_p99(ours)} | {median_and_p99(base)} | {difference:+.2f} |")


if __name__ == "__main__":
    main()
