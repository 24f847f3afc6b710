"""Restart latency: a supervised workload is killed; how long until its replacement runs?
linx_otp's supervisor side by side with supervisord (autorestart=true, startsecs=0) in one run.

    python benchmarks/restart.py [--restarts 200] [--supervisord-restarts 20]

Both restart `/bin/sleep 3600`. The clock starts at the SIGKILL and stops when the new
process has exec'd: for linx_otp the replacement session's `running` event reaching the
owner; for supervisord the new child showing `/bin/sleep` as its command line (polled every
0.2 ms). The two alternate (ten linx_otp restarts per supervisord restart) so machine noise
hits both alike. supervisord comes from `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median_and_p99, ratio

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S

SLEEPER = ["/bin/sleep", "3600"]
SUPERVISORD_CONFIG = """
[supervisord]
nodaemon=true
logfile={directory}/supervisord.log
pidfile={directory}/supervisord.pid
childlogdir={directory}

[program:sleeper]
command={command}
autorestart=true
startsecs=0
startretries=1000000
"""


class LinxRestarts:
    def __init__(self) -> None:
        self.events = linx_otp.Mailbox()
        spec = P.child_spec(id="sleeper", argv=SLEEPER, auto_proceed=True, owner=self.events, stdio="devnull")
        self.tree = S.start([spec], max_restarts=10**9, max_seconds=1.0)
        self.pid = self._next_running_pid()

    def _next_running_pid(self) -> int:
        pid = self.events.receive(("linx_process", "ready"), timeout=10)[2]
        self.events.receive(("linx_process", "running"), timeout=10)
        return pid

    def restart_ms(self) -> float:
        started = time.perf_counter()
        os.kill(self.pid, signal.SIGKILL)
        self.pid = self._next_running_pid()
        elapsed = (time.perf_counter() - started) * 1000
        self.events.flush()
        return elapsed

    def close(self) -> None:
        S.stop(self.tree)


class SupervisordRestarts:
    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        config = Path(self.directory.name) / "supervisord.conf"
        config.write_text(SUPERVISORD_CONFIG.format(directory=self.directory.name, command=" ".join(SLEEPER)))
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self._running_child(exclude=None)

    def _running_child(self, exclude: int | None, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for task in Path(f"/proc/{self.daemon.pid}/task").iterdir():
                for pid in (task / "children").read_text().split():
                    if int(pid) != exclude and self._is_sleeper(int(pid)):
                        return int(pid)
            time.sleep(0.0002)
        raise TimeoutError("supervisord did not restart the program")

    @staticmethod
    def _is_sleeper(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [s.encode() for s in SLEEPER]
        except OSError:
            return False

    def restart_ms(self) -> float:
        started = time.perf_counter()
        os.kill(self.pid, signal.SIGKILL)
        self.pid = self._running_child(exclude=self.pid)
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.daemon.terminate()
        self.daemon.wait(30)
        self.directory.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restarts", type=int, default=200)
    parser.add_argument("--supervisord-restarts", type=int, default=20)
    arguments = parser.parse_args()

    ours, theirs = LinxRestarts(), SupervisordRestarts()
    for _ in range(10):
        ours.restart_ms()  # warm up
    ours_ms: list[float] = []
    theirs_ms: list[float] = []
    try:
        per_round = max(1, arguments.restarts // arguments.supervisord_restarts)
        while len(ours_ms) < arguments.restarts or len(theirs_ms) < arguments.supervisord_restarts:
            for _ in range(min(per_round, arguments.restarts - len(ours_ms))):
                ours_ms.append(ours.restart_ms())
            if len(theirs_ms) < arguments.supervisord_restarts:
                theirs_ms.append(theirs.restart_ms())
    finally:
        ours.close()
        theirs.close()

    speedup = 1 / ratio(ours_ms, theirs_ms)
    print(
        f"restart latency, SIGKILL to the replacement running: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    print("| supervisor | restarts | ms (median / p99) |")
    print("|---|---|---|")
    print(f"| linx_otp one_for_one, permanent session | {len(ours_ms)} | {median_and_p99(ours_ms)} |")
    print(f"| supervisord 4.3, autorestart=true, startsecs=0 | {len(theirs_ms)} | {median_and_p99(theirs_ms)} |")
    print(f"\nlinx_otp is {speedup:.0f}× faster (target ≥ 100×: {'yes' if speedup >= 100 else 'NO'})")


if __name__ == "__main__":
    main()
