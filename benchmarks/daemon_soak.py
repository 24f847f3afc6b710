"""Soak: does a long-running ``linx-otp run`` hold steady under churn?

The daemon runs a tree with a child that crash-loops (it exits 1 every 0.2 s and is restarted)
and a chatty one, while a client sends 1000 ``status`` requests spread over the run, plus
garbage (bytes that are not JSON, JSON that is not a request) and idle connections that send
nothing. The daemon's RSS, open fds and threads are sampled every second and shown every 30 s:
RSS as sampled, fds and threads as the lowest and highest of the 30 s (a restart or a request
in flight holds a few for a moment; a leak raises the lowest). The verdict compares the last
30 s with the first minute: the lowest fd and thread counts may not exceed the first minute's
highest, and RSS may not grow by more than 5 %.

    python benchmarks/daemon_soak.py              # 10 minutes
    python benchmarks/daemon_soak.py --minutes 2  # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TREE = """
[supervisor]
max_restarts = 1000000
max_seconds = 1.0

[[child]]
id = "crasher"
argv = ["sh", "-c", "sleep 0.2; exit 1"]
stdio = "capture"

[[child]]
id = "chatty"
argv = ["sh", "-c", "while :; do echo chatter; sleep 0.05; done"]
stdio = "capture"
"""
GARBAGE = [b"[]\n", b"null\n", b"42\n", b'"x"\n', b"true\n", b"{}\n", b'{"verb": 7}\n', b"\xff\xfe\n", b"{not json\n"]
ROW_SECONDS = 30.0
RSS_SLACK = 1.05
STATUS_REQUESTS = 1000
IDLE_CONNECTIONS = 20


def read_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def sample(pid: int) -> dict[str, float]:
    status = read_status(pid)
    return {
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
    }


def ask(path: str, payload: bytes, timeout: float = 10.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(path)
        connection.sendall(payload)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)


class Load:
    """The client side: status requests, garbage, idle connections; counts what was answered."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.status_answered = self.status_failed = 0
        self.garbage_answered = self.garbage_failed = 0
        self.restarts = 0
        self.idle: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        interval = self.seconds / STATUS_REQUESTS
        next_at = time.monotonic()
        for index in range(STATUS_REQUESTS):
            if self.stop.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at += interval
            try:
                rows = ask(self.path, b'{"verb": "status"}\n')["result"]
                self.restarts = next(row["restarts"] for row in rows if row["id"] == "crasher")
                self.status_answered += 1
            except (OSError, ValueError, KeyError, StopIteration):
                self.status_failed += 1
            if index % 5 == 0:
                try:
                    answer = ask(self.path, random.choice(GARBAGE))
                    self.garbage_answered += answer.get("ok") is False
                except (OSError, ValueError):
                    self.garbage_failed += 1
            if index % 10 == 0:
                self.churn_idle()

    def churn_idle(self) -> None:
        while len(self.idle) >= IDLE_CONNECTIONS:
            self.idle.pop(0).close()
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(self.path)
            self.idle.append(connection)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for connection in self.idle:
            connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    arguments = parser.parse_args()
    seconds = arguments.minutes * 60
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        tree = Path(scratch, "soak.toml")
        tree.write_text(TREE)
        control = str(Path(scratch, "soak.sock"))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "linx_otp", "run", str(tree), "--name", "soak", "--control", control],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        lines = 0

        def drain() -> None:
            nonlocal lines
            for _ in daemon.stdout:
                lines += 1

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 20
        while not os.path.exists(control) and time.monotonic() < deadline:
            time.sleep(0.1)
        load = Load(control, seconds)
        started = time.monotonic()
        load.thread.start()
        rows = []
        window: list[dict[str, float]] = []
        row_at = ROW_SECONDS
        try:
            rows.append((0.0, [sample(daemon.pid)], load.restarts))
            while daemon.poll() is None:
                time.sleep(1.0)
                elapsed = time.monotonic() - started
                window.append(sample(daemon.pid))
                if elapsed >= row_at or elapsed >= seconds:
                    rows.append((elapsed, window, load.restarts))
                    window, row_at = [], row_at + ROW_SECONDS
                if elapsed >= seconds:
                    break
        finally:
            load.close()
            daemon.terminate()
            code = daemon.wait(60)
    report(rows, load, lines, code)
    return 0


def report(rows: list, load: Load, lines: int, code: int) -> None:
    print(f"{'time':>6}  {'RSS MiB':>8}  {'fds (low-high)':>14}  {'threads (low-high)':>18}  {'restarts':>8}")
    for elapsed, window, restarts in rows:
        fds = sorted(values["fds"] for values in window)
        threads = sorted(values["threads"] for values in window)
        print(
            f"{elapsed:>5.0f}s  {window[-1]['rss_mib']:>8.1f}  {f'{fds[0]}-{fds[-1]}':>14}  "
            f"{f'{threads[0]}-{threads[-1]}':>18}  {restarts:>8}"
        )
    first = [values for elapsed, window, _ in rows if elapsed < 60 + ROW_SECONDS / 2 for values in window]
    last = rows[-1][1]
    problems = []
    for key in ("fds", "threads"):
        if min(values[key] for values in last) > max(values[key] for values in first):
            problems.append(f"{key} {max(v[key] for v in first)} -> at least {min(v[key] for v in last)}")
    first_rss, last_rss = first[-1]["rss_mib"], last[-1]["rss_mib"]
    if last_rss > first_rss * RSS_SLACK:
        problems.append(f"RSS {first_rss:.1f} -> {last_rss:.1f} MiB")
    print(
        f"status answered {load.status_answered}/{load.status_answered + load.status_failed}; "
        f"garbage answered with an error {load.garbage_answered}/{load.garbage_answered + load.garbage_failed}; "
        f"{lines} console lines; daemon exit code {code}; "
        f"RSS after the first minute {first_rss:.1f} MiB, at the end {last_rss:.1f} MiB"
    )
    print("verdict: " + ("steady after the first minute" if not problems else "grew: " + "; ".join(problems)))


if __name__ == "__main__":
    sys.exit(main())
