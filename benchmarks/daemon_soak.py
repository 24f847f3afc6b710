"""Soak: does a long-running ``linx-otp run`` hold steady under churn?

The daemon runs a tree with a child that crash-loops (it exits 1 every 0.2 s and is restarted)
and a chatty one, while a client sends 1000 ``status`` requests spread over the run, plus
garbage (bytes that are not JSON, JSON that is not a request) and idle connections that send
nothing. The daemon's RSS, open fds and threads are sampled every 30 s; the table shows each
sample beside the one taken after the first minute (the baseline), and the verdict says
whether anything grew past it.

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
SAMPLE_SECONDS = 30.0
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
        samples = []
        try:
            while True:
                elapsed = time.monotonic() - started
                samples.append((elapsed, sample(daemon.pid), load.restarts))
                if elapsed >= seconds or daemon.poll() is not None:
                    break
                time.sleep(min(SAMPLE_SECONDS, max(0.0, seconds - elapsed)))
        finally:
            load.close()
            daemon.terminate()
            code = daemon.wait(60)
    report(samples, load, lines, code)
    return 0


def report(samples: list, load: Load, lines: int, code: int) -> None:
    baseline = next((values for elapsed, values, _ in samples if elapsed >= 60), samples[-1][1])
    print(
        f"{'time':>6}  {'RSS MiB':>8} {'(1 min)':>8}  {'fds':>4} {'(1 min)':>8}  {'threads':>7} {'(1 min)':>8}  restarts"
    )
    for elapsed, values, restarts in samples:
        print(
            f"{elapsed:>5.0f}s  {values['rss_mib']:>8.1f} {baseline['rss_mib']:>8.1f}  {values['fds']:>4} "
            f"{baseline['fds']:>8}  {values['threads']:>7} {baseline['threads']:>8}  {restarts:>8}"
        )
    after = [values for elapsed, values, _ in samples if elapsed >= 60]
    grew = {
        key: max(values[key] for values in after) - baseline[key]
        for key in ("rss_mib", "fds", "threads")
        if after and max(values[key] for values in after) > baseline[key] * (1.10 if key == "rss_mib" else 1)
    }
    print(
        f"status answered {load.status_answered}/{load.status_answered + load.status_failed}; "
        f"garbage answered with an error {load.garbage_answered}/{load.garbage_answered + load.garbage_failed}; "
        f"{lines} console lines; daemon exit code {code}"
    )
    print("verdict: " + ("steady after the first minute" if not grew else f"grew after the first minute: {grew}"))


if __name__ == "__main__":
    sys.exit(main())
