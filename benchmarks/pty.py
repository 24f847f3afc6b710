"""pty sessions against a plain pseudo-terminal: keystroke round trip and output throughput.

    python benchmarks/pty.py [--round-trips 500] [--mebibytes 100] [--repeats 3]

Both sides run the same workload in raw mode (`stty raw -echo`), so the tty passes bytes
through untouched. Round trip: one byte written, the same byte read back from `cat`
(linx_otp: `pty_write` → agent → pty → cat → agent → `pty_out` event in a mailbox; baseline:
`os.write` to the master of an `os.openpty()` pair whose slave is cat's terminal, `os.read`
back). Throughput: `head -c N /dev/zero` written to the terminal, read to the end. The two
alternate within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import median_and_p99

import linx_otp
from linx_otp import process as P

RAW_CAT = "stty raw -echo; echo READY; exec cat"


def raw_stream(size: int) -> str:
    return f"stty raw -echo; echo READY; read go; head -c {size} /dev/zero"


class Terminal:
    """What both sides share: wait for the workload's READY, time a keystroke, time a stream.
    Subclasses only say how to write to and read from their terminal."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self) -> bytes:
        raise NotImplementedError

    def wait_until_ready(self) -> None:
        output = b""
        while b"READY" not in output:
            output += self.read()

    def round_trip_ms(self) -> float:
        started = time.perf_counter()
        self.write(b"x")
        self.read()
        return (time.perf_counter() - started) * 1000

    def read_all(self, size: int) -> float:
        started = time.perf_counter()
        self.write(b"\n")
        received = 0
        while received < size:
            received += len(self.read())
        return time.perf_counter() - started


class LinxTerminal(Terminal):
    def __init__(self, script: str) -> None:
        self.events = linx_otp.Mailbox()
        self.session = P.spawn(argv=["/bin/sh", "-c", script], stdio="pty", auto_proceed=True, owner=self.events)
        self.wait_until_ready()

    def write(self, data: bytes) -> None:
        P.pty_write(self.session, data)

    def read(self) -> bytes:
        return self.events.receive(("linx_process", "pty_out"), timeout=60)[2]

    def close(self) -> None:
        self.session.stop()


class PlainTerminal(Terminal):
    def __init__(self, script: str) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", script], stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.wait_until_ready()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read(self) -> bytes:
        return os.read(self.master, 65536)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.master)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--mebibytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    ours, theirs = LinxTerminal(RAW_CAT), PlainTerminal(RAW_CAT)
    ours_ms, theirs_ms = [], []
    for _ in range(20):
        ours.round_trip_ms(), theirs.round_trip_ms()
    for _ in range(arguments.round_trips):
        ours_ms.append(ours.round_trip_ms())
        theirs_ms.append(theirs.round_trip_ms())
    ours.close(), theirs.close()

    size = arguments.mebibytes * 1024 * 1024
    ours_rate, theirs_rate = [], []
    for _ in range(arguments.repeats):
        for rates, kind in ((ours_rate, LinxTerminal), (theirs_rate, PlainTerminal)):
            terminal = kind(raw_stream(size))
            rates.append(arguments.mebibytes / terminal.read_all(size))
            terminal.close()

    print(f"pty benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print("| measure | linx_otp pty session | plain `os.openpty` pair | ratio |")
    print("|---|---|---|---|")
    print(
        f"| keystroke round trip through `cat`, ms (median / p99, {arguments.round_trips} runs) "
        f"| {median_and_p99(ours_ms)} | {median_and_p99(theirs_ms)} "
        f"| {statistics.median(ours_ms) / statistics.median(theirs_ms):.1f}× |"
    )
    print(
        f"| output throughput, {arguments.mebibytes} MiB, MiB/s (median of {arguments.repeats}) "
        f"| {statistics.median(ours_rate):.0f} | {statistics.median(theirs_rate):.0f} "
        f"| {statistics.median(ours_rate) / statistics.median(theirs_rate):.2f}× |"
    )


if __name__ == "__main__":
    main()
