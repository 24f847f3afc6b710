"""Restart latency across a Ray cluster (linx_otp.cluster) beside the local supervisor's.

    python benchmarks/cluster_restart.py [--crashes 40] [--removals 20]

Needs root and Ray (``pip install -e '.[ray]'``). It re-runs itself inside a network namespace
holding only ``lo`` (``unshare --net``, by exec: nothing forks), starts a Ray cluster there (a
head and two worker nodes, one CPU each, health checks every 200 ms, dead after 3 misses) and
measures:

1. a crashed child on its own node: SIGKILL of the workload to its replacement running, for a
   child of a cluster tree on a worker node and, alternating with it, for a child of a local
   ``linx_otp.supervisor`` tree in this process (target: the cluster within 2× of local);
2. a child whose node was removed (``remove_node``, not graceful: its raylet and workers are
   killed, as when a machine dies): from the removal to the ``("node_down", id)`` report
   reaching the driver, and to the replacement running on the other worker node. A new worker
   node is added after each removal (not timed).

"Running" is the same for every figure: the workload (``sh -c 'echo $$ > FIFO; exec sleep'``)
writes its pid into a FIFO this process reads, so both sides pay the same for the signal.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import median_and_p99, ratio

import linx_otp
from linx_otp import cluster as C
from linx_otp import process as P
from linx_otp import supervisor as S

INSIDE = "LINX_OTP_BENCH_INSIDE"
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_timeout_ms": 200,
    "health_check_failure_threshold": 3,
}
NODE_ARGS = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
WORKER = {"role": "worker"}


def reexec_inside_a_network_namespace() -> None:
    """Replace this process by itself inside a fresh network namespace with only ``lo`` up."""
    os.environ[INSIDE] = "1"
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execvp("unshare", ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command])


class Announcements:
    """A FIFO the workloads write their pid into when they run."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "running"
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def argv(self) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0"; exec sleep 3600', str(self.path)]

    def next_pid(self, timeout: float = 30.0) -> int:
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            raise TimeoutError(f"no workload ran within {timeout} s")
        line = os.read(self.fd, 64).decode().split()
        return int(line[0])

    def close(self) -> None:
        os.close(self.fd)


def crash_ms(pid: int, announcements: Announcements) -> tuple[float, int]:
    started = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    new_pid = announcements.next_pid()
    return (time.perf_counter() - started) * 1000, new_pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crashes", type=int, default=40)
    parser.add_argument("--removals", type=int, default=20)
    arguments = parser.parse_args()
    if os.environ.get(INSIDE) != "1":
        reexec_inside_a_network_namespace()

    import ray
    from ray.cluster_utils import Cluster

    directory = Path(tempfile.mkdtemp(prefix="linx-bench-cluster-"))
    os.environ["RAY_TMPDIR"] = str(directory)  # Ray's sessions, sockets and logs (not /tmp/ray), removed at the end
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "_system_config": HEALTH_CHECKS})
    for _ in range(2):
        cluster.add_node(**NODE_ARGS, labels=WORKER)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    (directory / "local").mkdir()
    (directory / "cluster").mkdir()
    local_runs, cluster_runs = Announcements(directory / "local"), Announcements(directory / "cluster")
    events = linx_otp.Mailbox()
    local = S.start(
        [P.child_spec(id="local", argv=local_runs.argv(), auto_proceed=True, stdio="devnull")],
        max_restarts=10**9,
        max_seconds=1.0,
    )
    spec = P.child_spec(id="placed", argv=cluster_runs.argv(), auto_proceed=True, stdio="devnull", shutdown=1.0)
    tree = C.start([C.child_spec(spec, labels=WORKER)], events=events, max_restarts=10**9, max_seconds=1.0)
    local_ms: list[float] = []
    placed_ms: list[float] = []
    removed_ms: list[float] = []
    detect_ms: list[float] = []
    moved_ms: list[float] = []
    try:
        local_pid, placed_pid = local_runs.next_pid(), cluster_runs.next_pid()
        for round_number in range(arguments.crashes + 5):  # five to warm up
            local_took, local_pid = crash_ms(local_pid, local_runs)
            placed_took, placed_pid = crash_ms(placed_pid, cluster_runs)
            if round_number >= 5:
                local_ms.append(local_took)
                placed_ms.append(placed_took)
        for _ in range(arguments.removals):
            ((_, node_id, _, _),) = C.which_children(tree)
            doomed = next(node for node in cluster.worker_nodes if node.node_id == node_id)
            events.flush()
            started = time.perf_counter()
            cluster.remove_node(doomed, allow_graceful=False)
            removed_ms.append((time.perf_counter() - started) * 1000)
            # the node's loss, not a late report of the last crash (the event pump is asynchronous)
            events.receive((S.EVENT_TAG, "exited", tree.name, "placed", ("node_down", node_id)), timeout=60)
            detect_ms.append((time.perf_counter() - started) * 1000)
            placed_pid = cluster_runs.next_pid(60)
            moved_ms.append((time.perf_counter() - started) * 1000)
            cluster.add_node(**NODE_ARGS, labels=WORKER)
            cluster.wait_for_nodes()
    finally:
        C.stop(tree)
        S.stop(local)
        local_runs.close()
        cluster_runs.close()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(directory)

    detection = HEALTH_CHECKS["health_check_period_ms"] * HEALTH_CHECKS["health_check_failure_threshold"]
    print(
        f"restart latency across a Ray cluster: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"Ray {ray.__version__}\n"
    )
    print("| what | runs | ms (median / p99) |")
    print("|---|---|---|")
    print(f"| crash, local supervisor (baseline) | {len(local_ms)} | {median_and_p99(local_ms)} |")
    print(f"| crash, cluster tree, restarted on its own node | {len(placed_ms)} | {median_and_p99(placed_ms)} |")
    print(f"| `remove_node` returned (its processes killed) | {len(removed_ms)} | {median_and_p99(removed_ms)} |")
    print(f"| node removed → `node_down` reported to the driver | {len(detect_ms)} | {median_and_p99(detect_ms)} |")
    print(f"| node removed → replacement running on another node | {len(moved_ms)} | {median_and_p99(moved_ms)} |")
    crash_ratio = ratio(placed_ms, local_ms)
    print(
        f"\ncluster crash restart is {crash_ratio:.2f}× the local one (target ≤ 2×: {'yes' if crash_ratio <= 2 else 'NO'})"
    )
    print(
        f"a node loss is known after {statistics.median(detect_ms):.0f} ms (median; Ray's failure detection: "
        f"{detection} ms of missed health checks here, or less when Ray sees the node host's process die); the "
        f"replacement runs after {statistics.median(moved_ms):.0f} ms; the slow tail is starting a node host on a "
        "node where the tree had none (a Ray worker process)"
    )


if __name__ == "__main__":
    main()
