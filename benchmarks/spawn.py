"""Spawn cost and scale, measured side by side with the tools people would otherwise use.

    sudo python benchmarks/spawn.py [--runs 300] [--scale-sizes 1000,10000] [--scale-rounds 3] [--scale-only]

Prints Markdown tables. Each spawn figure is the median (and p99) of --runs iterations; the
baseline and linx_otp alternate within one loop, so machine noise hits both alike and the
ratio is what to read. Needs root for the namespace rows. The scaling rows hold each size's
sessions alive at once (the sizes alternate in each round; medians of the rounds) and, as
root, raise ``kernel.pid_max`` for them (put back afterwards); their wall times need an
otherwise idle machine, and the CPU per session shows the cost whatever the load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import cast

from common import median_and_p99, ratio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import pid_max_at_least  # noqa: E402 (the one implementation, shared with tests/test_scale.py)

import linx_otp
from linx_otp import process as P
from linx_otp import protocol
from linx_otp.agent import agent_path
from linx_otp.agent_image import sealed_executable
from linx_otp.options import plan_session

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


def agent_alone(namespaces: list[str]):
    """The floor under a session's cycle: the agent by itself, started as a session starts it
    (sealed copy, socket pair, the request in the socket before the agent runs) with the
    proceed sent along, and driven from this one thread to its end-of-file and reaping. No
    session actor, no I/O thread, no mailbox, no validation: what is left of the cycle is the
    agent's own work (its exec, clone, checkpoint, the workload's exec and reaping)."""
    plan = plan_session(mode=protocol.MODE_SPAWN, target=None, argv=["/bin/true"], namespaces=namespaces)
    frames = protocol.encode_request(plan.request) + protocol.encode_command(protocol.CMD_PROCEED)
    path = sealed_executable(agent_path())

    def run():
        ours, theirs = socket.socketpair()
        with ours:
            ours.sendall(frames)
            pid = os.posix_spawn(
                path, [path], {}, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)], setsigmask=(), setpgroup=0
            )
            theirs.close()
            decoder, events = protocol.EventDecoder(), []
            while data := ours.recv(65536):
                events += decoder.feed(data)
        os.waitpid(pid, 0)
        if events[-1] != ("exited", 0):
            raise RuntimeError(f"the agent alone ended with {events[-1]}")

    return run


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


def row(name: str, baseline_name: str, base: list[float], ours: list[float], limit: float | None) -> str:
    """A table row; ``limit`` None for a floor, which has no target of its own."""
    measured = ratio(ours, base)
    target = (
        "(the floor under the row above)" if limit is None else f"≤ {limit}×: {'yes' if measured <= limit else 'NO'}"
    )
    return (
        f"| {name} | {median_and_p99(ours)} | {baseline_name} | {median_and_p99(base)} | {measured:.2f}× | {target} |"
    )


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- scaling: many live sessions in one process (issue 15) -------------------------------------------

SCALE_TARGETS = {"running_s": 8.0, "rss_mib": 300.0, "signal_s": 2.0, "stop_s": 3.0, "per_session_ratio": 1.25}
"""At the largest size: all `running`, Python RSS growth, SIGTERM to every `signaled`, every
session stopped; and each per-session cost at the largest size against the smallest."""
TASKS_PER_SESSION = 3  # an actor thread, an agent, a workload


@dataclasses.dataclass
class Run:
    """What every scaling run measures, with or without linx_otp."""

    sessions: int
    running_s: float
    """From the first start to the last workload known to run."""
    signal_s: float
    """From the first SIGTERM sent to the last workload known to have ended."""
    stop_s: float
    """Every session stopped (its thread ended), newest first."""
    start_cpu_ms: float
    """This process's CPU (user + system, all threads) per session, to all running."""

    def per_session_ms(self, seconds: float) -> float:
        return seconds / self.sessions * 1000


@dataclasses.dataclass
class ScaleRun(Run):
    """linx_otp's sessions: running is the last `running` event taken (events taken in order),
    ended the last `signaled`."""

    rss_mib: float
    threads: int
    fds: int
    signal_cpu_ms: float
    stop_returned_s: float
    """Part of ``stop_s``: until the last ``stop()`` returned (an idle session is stopped in
    the caller's thread; its own thread ends after)."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def take_until(box: linx_otp.Mailbox, kind: str, count: int) -> None:
    seen = 0
    while seen < count:
        if box.receive(timeout=120)[1] == kind:
            seen += 1


def scale_run(count: int) -> ScaleRun:
    """``count`` `/bin/sleep` sessions: spawn all, every `running`, SIGTERM to all, every
    `signaled`, stop all (newest first)."""
    box = linx_otp.Mailbox()
    rss_before, threads_before, fds_before = rss_kib(), threading.active_count(), len(os.listdir("/proc/self/fd"))
    cpu_before, started = cpu_seconds(), time.perf_counter()
    sessions = [P.spawn(argv=["/bin/sleep", "600"], auto_proceed=True, owner=box) for _ in range(count)]
    take_until(box, "running", count)
    running_s, cpu_running = time.perf_counter() - started, cpu_seconds()
    rss_mib = (rss_kib() - rss_before) / 1024
    threads = threading.active_count() - threads_before
    fds = len(os.listdir("/proc/self/fd")) - fds_before
    signalled_at = time.perf_counter()
    for session in sessions:
        P.signal(session, signal.SIGTERM)
    take_until(box, "signaled", count)
    signal_s, cpu_signaled = time.perf_counter() - signalled_at, cpu_seconds()
    stopping_at = time.perf_counter()
    # newest first, as a supervisor stops its children (pykka's registry made that order quadratic)
    for session in reversed(sessions):
        session.stop()
    stop_returned_s = time.perf_counter() - stopping_at
    deadline = time.monotonic() + 60
    while threading.active_count() > threads_before:  # a session stopped in the caller's thread ends its own later
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{threading.active_count() - threads_before} session threads outlived their stop by 60 s"
            )
        time.sleep(0.001)
    stop_s = time.perf_counter() - stopping_at
    box.flush()
    return ScaleRun(
        sessions=count,
        running_s=running_s,
        rss_mib=rss_mib,
        threads=threads,
        fds=fds,
        signal_s=signal_s,
        stop_s=stop_s,
        start_cpu_ms=(cpu_running - cpu_before) / count * 1000,
        signal_cpu_ms=(cpu_signaled - cpu_running) / count * 1000,
        stop_returned_s=stop_returned_s,
    )


@dataclasses.dataclass
class BareRun(Run):
    """The same count of tasks with no linx_otp: per session, a thread parked on its own queue (as
    pykka parks each actor on its inbox) and two `/bin/sleep` processes (where a session has its agent and its workload), each
    started by `posix_spawn` from this process. What this machine's kernel and Python charge for
    that many tasks alone, so the scaling ratios have a baseline measured in the same run. Running
    is the last `posix_spawn` returned (each returns after the exec), ended the last process reaped,
    stopped every thread woken by its queue and joined."""


def bare_run(count: int) -> BareRun:
    inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(count)]
    threads = [threading.Thread(target=inbox.get, daemon=True) for inbox in inboxes]
    cpu_before, started = cpu_seconds(), time.perf_counter()
    pids = []
    for thread in threads:
        thread.start()
        pids += [os.posix_spawn("/bin/sleep", ["sleep", "600"], os.environ) for _ in range(2)]
    running_s, cpu_running = time.perf_counter() - started, cpu_seconds()
    signalled_at = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    signal_s = time.perf_counter() - signalled_at
    stopping_at = time.perf_counter()
    for inbox in reversed(inboxes):  # newest first, as the sessions are stopped
        inbox.put(None)
    for thread in reversed(threads):
        thread.join()
    stop_s = time.perf_counter() - stopping_at
    return BareRun(count, running_s, signal_s, stop_s, (cpu_running - cpu_before) / count * 1000)


def sizes_argument(text: str) -> list[int]:
    sizes = [int(size) for size in text.split(",")]
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"two or more session counts, comma-separated, not {text!r}")
    return sizes


def print_scaling(sizes: list[int], rounds: int) -> None:
    print(f"\nScaling: {rounds} rounds, sizes alternating in each; medians\n", flush=True)
    for line in scaling(sizes, rounds):
        print(line)


def room_for(count: int) -> contextlib.ExitStack:
    """The fd soft limit raised to the hard one if ``count`` sessions need it, and
    ``kernel.pid_max`` raised for them as root; both put back when the stack closes."""
    stack = contextlib.ExitStack()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        stack.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
    stack.enter_context(pid_max_at_least(32768 + (TASKS_PER_SESSION + 1) * count))
    return stack


def run_alone(kind: str, count: int) -> ScaleRun | BareRun:
    """``scale_run(count)`` (kind ``"linx"``) or ``bare_run(count)`` (``"bare"``) in a fresh
    Python process (this script, ``--scale-run``), so that no run inherits another's memory,
    threads or allocator state."""
    done = subprocess.run(
        [sys.executable, __file__, "--scale-run", f"{kind}:{count}"], capture_output=True, text=True, check=True
    )
    return (ScaleRun if kind == "linx" else BareRun)(**json.loads(done.stdout))


def print_scale_run(kind_and_count: str) -> None:
    kind, count = kind_and_count.split(":")
    if kind == "bare":
        print(json.dumps(dataclasses.asdict(bare_run(int(count)))))
        return
    warm = P.spawn(argv=["/bin/true"], auto_proceed=True, owner=linx_otp.Mailbox())
    P.wait(warm)
    warm.stop()
    print(json.dumps(dataclasses.asdict(scale_run(int(count)))))


def scaling(sizes: list[int], rounds: int) -> list[str]:
    """The sizes alternate within each round, so machine noise hits all alike; medians of the
    rounds. Each run is a process of its own."""
    runs: dict[int, list[ScaleRun]] = {size: [] for size in sizes}
    bare: dict[int, list[BareRun]] = {size: [] for size in sizes}
    with room_for(max(sizes)):
        for _ in range(rounds):
            for size in sizes:
                runs[size].append(cast(ScaleRun, run_alone("linx", size)))
                bare[size].append(cast(BareRun, run_alone("bare", size)))

    def median(size: int, figure, of: dict | None = None) -> float:
        return statistics.median(figure(run) for run in (runs if of is None else of)[size])

    lines = [
        "| live sessions | all `running` | per session | Python RSS growth | threads | fds "
        "| SIGTERM → all `signaled` | per session | stop all, newest first (to the last `stop()`) "
        "| CPU per session: start / signal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        lines.append(
            f"| {size:,} | {median(size, lambda r: r.running_s):.2f} s "
            f"| {median(size, lambda r: r.per_session_ms(r.running_s)):.3f} ms "
            f"| {median(size, lambda r: r.rss_mib):.0f} MiB | +{median(size, lambda r: r.threads):.0f} "
            f"| +{median(size, lambda r: r.fds):.0f} | {median(size, lambda r: r.signal_s):.2f} s "
            f"| {median(size, lambda r: r.per_session_ms(r.signal_s)):.3f} ms "
            f"| {median(size, lambda r: r.stop_s):.2f} s ({median(size, lambda r: r.stop_returned_s):.2f} s) "
            f"| {median(size, lambda r: r.start_cpu_ms):.2f} / {median(size, lambda r: r.signal_cpu_ms):.2f} ms |"
        )
    small, large = min(sizes), max(sizes)

    def per_session_ratio(figure, of: dict | None = None) -> float:
        return median(large, figure, of) / median(small, figure, of)

    def verdict(measured: float, limit: float) -> str:
        return "yes" if measured <= limit else "NO"

    start_ratio = per_session_ratio(lambda r: r.per_session_ms(r.running_s))
    signal_ratio = per_session_ratio(lambda r: r.per_session_ms(r.signal_s))
    targets = [
        (f"all `running` at {large:,}", median(large, lambda r: r.running_s), "s", "running_s"),
        (f"Python RSS growth at {large:,}", median(large, lambda r: r.rss_mib), "MiB", "rss_mib"),
        (f"SIGTERM → all `signaled` at {large:,}", median(large, lambda r: r.signal_s), "s", "signal_s"),
        (f"stop all at {large:,}", median(large, lambda r: r.stop_s), "s", "stop_s"),
        (f"start, per session {large:,} / {small:,}", start_ratio, "×", "per_session_ratio"),
        (f"signalling, per session {large:,} / {small:,}", signal_ratio, "×", "per_session_ratio"),
    ]
    lines += ["", "| scaling target | measured | target | met |", "|---|---|---|---|"]
    for name, measured, unit, key in targets:
        limit = SCALE_TARGETS[key]
        lines.append(f"| {name} | {measured:.2f} {unit} | ≤ {limit} {unit} | {verdict(measured, limit)} |")
    cpu_start = per_session_ratio(lambda r: r.start_cpu_ms)
    cpu_signal = per_session_ratio(lambda r: r.signal_cpu_ms)
    lines.append(
        f"| (CPU per session {large:,} / {small:,}: start, signal) | {cpu_start:.2f} ×, {cpu_signal:.2f} × | | |"
    )
    lines += [
        "",
        "The same counts with no linx_otp (per session a parked thread and two `posix_spawn`ed sleeps):",
        "",
        f"| per session, {large:,} / {small:,} | linx_otp | no linx_otp | no linx_otp, at {large:,} |",
        "|---|---|---|---|",
    ]
    for name, figure, whole in [
        ("start", lambda r: r.per_session_ms(r.running_s), lambda r: f"{r.running_s:.2f} s"),
        ("SIGTERM → all ended", lambda r: r.per_session_ms(r.signal_s), lambda r: f"{r.signal_s:.2f} s"),
        ("stop all, newest first", lambda r: r.per_session_ms(r.stop_s), lambda r: f"{r.stop_s:.2f} s"),
        ("CPU of the start", lambda r: r.start_cpu_ms, lambda r: f"{r.start_cpu_ms:.2f} ms a session"),
    ]:
        middle = sorted(bare[large], key=figure)[len(bare[large]) // 2]
        lines.append(
            f"| {name} | {per_session_ratio(figure):.2f} × | {per_session_ratio(figure, bare):.2f} × | {whole(middle)} |"
        )
    return lines


def full_cycle_rows(runs: int, box: linx_otp.Mailbox) -> list[str]:
    """The round trip issue 15 sets targets for: spawn → outcome received → session gone."""
    rows = []
    for linger, name in [(True, "full cycle, `linger=True` + `stop()`"), (False, "full cycle, `linger=False`")]:
        run, clean = linx_cycle([], linger, box)
        base, ours = compare(runs, lambda: subprocess.run(["/bin/true"]), run, clean)
        rows.append(row(name, "`subprocess.run(['/bin/true'])`", base, ours, 2.0))
    base, ours = compare(runs, lambda: subprocess.run(["/bin/true"]), agent_alone([]), lambda: None)
    rows.append(row("the agent alone, driven from one thread", "`subprocess.run(['/bin/true'])`", base, ours, None))
    if os.geteuid() == 0 and shutil.which("unshare"):
        run, clean = linx_cycle(NAMESPACES, True, box)
        base, ours = compare(runs, lambda: subprocess.run(UNSHARE), run, clean)
        rows.append(
            row(f"full cycle, `stop()`, namespaces {','.join(NAMESPACES)}", "`unshare` (as above)", base, ours, 1.0)
        )
        base, ours = compare(runs, lambda: subprocess.run(UNSHARE), agent_alone(NAMESPACES), lambda: None)
        rows.append(row("the agent alone, the same namespaces", "`unshare` (as above)", base, ours, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--scale-sizes", type=sizes_argument, default=[1000, 10000])
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--scale-only", action="store_true", help="print only the scaling rows")
    parser.add_argument("--scale-run", help=argparse.SUPPRESS)  # one run, "linx:N" or "bare:N", as JSON (run_alone)
    parser.add_argument("--no-scale", action="store_true", help="skip the scaling rows")
    arguments = parser.parse_args()
    if arguments.scale_run:
        print_scale_run(arguments.scale_run)
        return
    if arguments.scale_only:
        print_scaling(arguments.scale_sizes, arguments.scale_rounds)
        return

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

    if not arguments.no_scale:
        print_scaling(arguments.scale_sizes, arguments.scale_rounds)


if __name__ == "__main__":
    main()
