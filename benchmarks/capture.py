"""Captured output: a fast workload's stdout relayed to an owner that reads everything, against
``subprocess.Popen(stdout=PIPE)`` read in a loop.

    PYTHONPATH=. python benchmarks/capture.py [--mebibytes 200] [--repeats 7]

All run `dd if=/dev/zero` writing N bytes, 8 KiB a write (as `head`, `yes` and most programs'
stdio buffers) and then 128 KiB a write (as `cat`), and read every byte. linx_otp: `stdio={"stdout": "capture"}`,
a `linx_otp.Mailbox` owner, `receive()` until the terminal event: the mailbox reads the pipe
itself (held_output). And the same with a `Mailbox` subclass as the owner, whose output the
agent relays (the agent, the I/O thread and the flow-control credit on the path, as for any
owner but a plain `Mailbox`). Baseline: `Popen`, then
`proc.stdout.read(65536)` until end-of-file. A second baseline, with no linx_otp in it: the same
`Popen` read by one thread that hands each chunk to another through a `queue.SimpleQueue`, the
shape of any design whose owner is not the thread that reads the pipe (a session's owner never
is). Time from start to the last byte; the three alternate within one run; medians. Also the CPU time each spends per MiB (this process's
threads plus its reaped children: `dd`, and linx_otp's agent), which a loaded machine
disturbs less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time

from common import ratio

import linx_otp
from linx_otp import process as P

TERMINAL = ("exited", "signaled", "aborted", "error")


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its children that have been reaped."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


WRITE_SIZES = (8 * 1024, 128 * 1024)


def writer(size: int, write_size: int) -> list[str]:
    """A fast workload: ``size`` bytes to stdout, ``write_size`` bytes a write(2)."""
    return ["dd", "if=/dev/zero", f"bs={write_size}", f"count={size // write_size}", "status=none"]


class RelayedMailbox(linx_otp.Mailbox):
    """Any subclass is relayed: only a plain Mailbox reads capture pipes itself."""


def linx_capture(size: int, write_size: int, box: linx_otp.Mailbox | None = None) -> float:
    box = linx_otp.Mailbox() if box is None else box
    started = time.perf_counter()
    session = P.spawn(argv=writer(size, write_size), stdio={"stdout": "capture"}, owner=box, auto_proceed=True)
    received = 0
    while True:
        event = box.receive(timeout=60)
        if event[1] == "stdout":
            received += len(event[2])
        elif event[1] in TERMINAL:
            break
    elapsed = time.perf_counter() - started
    session.stop()  # reaps the agent, whose CPU time (and dd's) counts from then on
    assert received == size, (received, size)
    return elapsed


def relayed_capture(size: int, write_size: int) -> float:
    return linx_capture(size, write_size, RelayedMailbox())


def popen_capture(size: int, write_size: int) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(writer(size, write_size), stdout=subprocess.PIPE)
    received = 0
    while chunk := process.stdout.read(65536):
        received += len(chunk)
    process.wait()
    elapsed = time.perf_counter() - started
    process.stdout.close()
    assert received == size, (received, size)
    return elapsed


def handed_over_capture(size: int, write_size: int) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(writer(size, write_size), stdout=subprocess.PIPE)
    chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read_all() -> None:
        while chunk := process.stdout.read(65536):
            chunks.put(chunk)
        chunks.put(b"")

    reader = threading.Thread(target=read_all)
    reader.start()
    received = 0
    while chunk := chunks.get():
        received += len(chunk)
    elapsed = time.perf_counter() - started
    reader.join()
    process.wait()
    process.stdout.close()
    assert received == size, (received, size)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mebibytes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    size = arguments.mebibytes * 1024 * 1024

    captures = (linx_capture, relayed_capture, popen_capture, handed_over_capture)
    for capture in captures:
        capture(size // 10, WRITE_SIZES[0])  # warm up: page cache, the I/O thread
    speeds: dict = {(capture, write): [] for capture in captures for write in WRITE_SIZES}
    cpu: dict = {(capture, write): [] for capture in captures for write in WRITE_SIZES}
    for _ in range(arguments.repeats):
        for write in WRITE_SIZES:
            for capture in captures:
                before = cpu_seconds()
                speeds[capture, write].append(arguments.mebibytes / capture(size, write))
                cpu[capture, write].append(1000 * (cpu_seconds() - before) / arguments.mebibytes)

    print(
        f"capture benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, linx_otp from {linx_otp.__file__}\n"
    )
    print(
        "| measure | linx_otp capture to a Mailbox (reads the pipe) | ratio | to a Mailbox subclass (relayed) | ratio "
        "| `Popen(stdout=PIPE)` read loop | the same `Popen` read by a thread that hands over to another | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for write in WRITE_SIZES:
        rows = (
            (f"stdout throughput, {arguments.mebibytes} MiB in {write // 1024} KiB writes, MiB/s", speeds, "{:.0f}"),
            (f"CPU time per MiB ({write // 1024} KiB writes), all threads and processes, ms", cpu, "{:.2f}"),
        )
        for label, figures, number in rows:
            ours, relayed, theirs, handed_over = (figures[capture, write] for capture in captures)
            print(
                f"| {label} (median of {arguments.repeats}) | {number.format(statistics.median(ours))} "
                f"| {ratio(ours, theirs):.2f}× | {number.format(statistics.median(relayed))} "
                f"| {ratio(relayed, theirs):.2f}× | {number.format(statistics.median(theirs))} "
                f"| {number.format(statistics.median(handed_over))} | {ratio(handed_over, theirs):.2f}× |"
            )


if __name__ == "__main__":
    main()
