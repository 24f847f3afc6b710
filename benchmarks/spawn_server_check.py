"""What the spawn server's per-request state check costs, against a baseline agent binary.

    sudo python benchmarks/spawn_server_check.py --baseline /path/to/older/linx-agent [--runs 2000]

Starts one server from each binary (the same protocol) and alternates requests between them: a
request that passes the check (forks an agent, which reads end-of-file at once and is reaped)
and one that the check turns down (a thread with another nice value: stale after every piece
but the process-wide ones, no fork). Also times the Python-side thread fingerprint
(``spawn_server.thread_fingerprint``) that every spawn through the server computes first.
Prints a Markdown table of medians and p99 in µs; read the difference between the columns.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

from common import median_and_p99

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from linx_otp import spawn_server  # noqa: E402
from linx_otp.agent import agent_path  # noqa: E402


def forked_request(server: spawn_server.SpawnServer) -> float:
    ours, theirs = socket.socketpair()
    started = time.perf_counter()
    pid = server.spawn(theirs)
    elapsed = time.perf_counter() - started
    theirs.close()
    ours.close()
    os.waitpid(pid, 0)
    return elapsed


def stale_request(server: spawn_server.SpawnServer) -> float:
    ours, theirs = socket.socketpair()
    started = time.perf_counter()
    try:
        server.spawn(theirs)
    except spawn_server.StaleState:
        pass
    else:
        raise AssertionError("a reniced thread was not stale")
    elapsed = time.perf_counter() - started
    theirs.close()
    ours.close()
    return elapsed


def in_reniced_thread(function):
    """Runs ``function`` in a thread whose nice value is one above this process's."""
    result: list = []

    def run() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + 1)
        result.append(function())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="an older linx-agent binary")
    parser.add_argument("--runs", type=int, default=2000)
    arguments = parser.parse_args()
    servers = {
        "this": spawn_server.SpawnServer.start(agent_path()),
        "baseline": spawn_server.SpawnServer.start(arguments.baseline),
    }
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(arguments.runs):
            for name, server in servers.items():
                samples.setdefault(("forked", name), []).append(forked_request(server))
            for name, server in servers.items():
                samples.setdefault(("stale", name), []).append(in_reniced_thread(lambda s=server: stale_request(s)))
    finally:
        for server in servers.values():
            server.discard()
    fingerprint = []
    for _ in range(arguments.runs):
        started = time.perf_counter()
        spawn_server.thread_fingerprint()
        fingerprint.append(time.perf_counter() - started)
    print("| request (µs, median / p99) | this | baseline |")
    print("|---|---|---|")
    for kind in ("forked", "stale"):
        this = [s * 1e6 for s in samples[(kind, "this")]]
        base = [s * 1e6 for s in samples[(kind, "baseline")]]
        print(f"| {kind} | {median_and_p99(this)} | {median_and_p99(base)} |")
    print(f"| thread fingerprint (Python) | {median_and_p99([s * 1e6 for s in fingerprint])} | - |")


if __name__ == "__main__":
    main()
