"""Trees across a real Ray cluster (linx_otp.cluster, docs/cluster.md), on this machine.

A head and two more nodes (real raylets, ``ray.cluster_utils.Cluster``) run inside a network
namespace of their own holding only ``lo``, so every address Ray uses is 127.0.0.1 and no Ray
traffic leaves loopback. The test process itself must not fork into a namespace, so this module
runs twice: outside, its first test starts ``unshare --net`` running pytest on this same file
inside (``LINX_OTP_CLUSTER_INSIDE=1``, one cluster for the whole module), and every test outside
reports the result of its twin inside, read from the JUnit XML of that run. Ray's health checks
are shortened so a node loss is seen in about a second.

After every test inside, no workload, agent or Ray actor of ours remains: workloads are found by
their unique argv, agents by this tree's agent binary, actors by Ray's named-actor list.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ray = pytest.importorskip(
    "ray", exc_type=ImportError, reason="Ray is not installed: pip install 'linx_otp[ray]' (CI installs it)"
)

import linx_otp  # noqa: E402
from linx_otp import cluster as C  # noqa: E402
from linx_otp import process as P  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
AGENT = (ROOT / "linx_otp" / "_bin" / "linx-agent").resolve()
INSIDE = os.environ.get("LINX_OTP_CLUSTER_INSIDE") == "1"
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_timeout_ms": 200,
    "health_check_failure_threshold": 3,
}
NODE_ARGS = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600 if not INSIDE else 150)]


# -- running inside the cluster's network namespace, reporting outside -------------------------------


def _inside_command(report: Path, basetemp: Path) -> list[str]:
    return [
        "unshare",
        "--net",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__).resolve()),
        "-m",
        "ray",
        "--noconftest",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=-ra --strict-markers",
        f"--junitxml={report}",
        f"--basetemp={basetemp}",  # inside the outer run's own temp dir, which pytest cleans
        "-q",
    ]


@pytest.fixture(scope="module")
def inside_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Run this module inside a fresh network namespace; ``{test name: (outcome, message)}``."""
    if os.geteuid() != 0:
        pytest.skip("the Ray cluster runs in a network namespace of its own: needs root (CI runs as root)")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    directory = tmp_path_factory.mktemp("cluster")
    report = directory / "inside.xml"
    environment = {**os.environ, "LINX_OTP_CLUSTER_INSIDE": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        _inside_command(report, directory / "inside"),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=540,
    )
    if not report.exists():
        pytest.fail(
            f"the run inside the namespace left no report (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    results = {}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = f"{found.get('message', '')}\n{found.text or ''}"
                break
        if case.get("name") in results and outcome == "passed":
            continue  # an error in teardown is reported as a second case: keep the failure
        results[case.get("name")] = (outcome, message)
    return results


def scenario(test):
    """Mark a test that needs the cluster: inside it runs; outside it reports its twin's result."""
    if INSIDE:
        return test

    def report_from_inside(inside_results: dict[str, tuple[str, str]]) -> None:
        outcome, message = inside_results.get(test.__name__, ("missing", "the run inside did not report this test"))
        if outcome == "skipped":
            pytest.skip(message)
        assert outcome == "passed", f"inside the namespace: {outcome}\n{message}"

    report_from_inside.__name__ = test.__name__
    report_from_inside.__doc__ = test.__doc__
    return report_from_inside


# -- inside: the cluster, and what must be left after each test ----------------------------------------


def _processes() -> dict[int, tuple[list[str], str]]:
    """Every process on the machine: argv and the binary it runs."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            binary = os.readlink(entry / "exe")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        found[int(entry.name)] = (argv, binary)
    return found


def _workload_pids(marker: str) -> list[int]:
    return [pid for pid, (argv, _) in _processes().items() if argv[:1] == ["sleep"] and marker in argv[1:]]


def _our_agents() -> list[int]:
    return [pid for pid, (_, binary) in _processes().items() if Path(binary) == AGENT]


def _our_actors() -> list[str]:
    return [
        entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True) if entry["namespace"] == C.NAMESPACE
    ]


def wait_until(condition, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Cluster:
    """The module's cluster: the Ray ``Cluster`` and the nodes that may be removed (not the head)."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster as RayCluster

        self.ray = RayCluster(initialize_head=True, head_node_args={**NODE_ARGS, "_system_config": HEALTH_CHECKS})
        self.add_nodes(2)
        ray.init(address=self.ray.address, log_to_driver=False)

    def add_nodes(self, count: int, **extra) -> list:
        added = [self.ray.add_node(**NODE_ARGS, **extra) for _ in range(count)]
        self.ray.wait_for_nodes()
        return added

    def alive(self) -> list[str]:
        return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])

    def worker(self, node_id: str):
        return next(node for node in self.ray.worker_nodes if node.node_id == node_id)

    @property
    def head_id(self) -> str:
        return self.ray.head_node.node_id

    def shutdown(self) -> None:
        ray.shutdown()
        self.ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    if not INSIDE:
        pytest.fail("the cluster runs only inside the namespace")
    directory = tempfile.mkdtemp(prefix="linx-ray-")
    os.environ["RAY_TMPDIR"] = directory  # Ray's sessions, sockets and logs (not /tmp/ray), removed at the end
    try:
        created = Cluster()
        yield created
        created.shutdown()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster(ray_cluster: Cluster):
    """Three live nodes (nodes removed by an earlier test are replaced); afterwards, nothing of
    ours is left: no named actor, no agent, no workload; and the nodes the test added (with
    labels or resources of its own) are removed, also when it failed."""
    alive = ray_cluster.alive()
    for node in [node for node in ray_cluster.ray.worker_nodes if node.node_id not in alive]:
        ray_cluster.ray.remove_node(node, allow_graceful=False)  # left dead by a failed test
    missing = 3 - len(alive)
    if missing > 0:
        ray_cluster.add_nodes(missing)
    plain = set(ray_cluster.ray.worker_nodes)
    yield ray_cluster
    try:
        assert wait_until(lambda: not _our_actors(), 30), f"Ray actors left: {_our_actors()}"
        assert wait_until(lambda: not _our_agents(), 30), f"agents left: {_our_agents()}"
    finally:
        for node in set(ray_cluster.ray.worker_nodes) - plain:
            ray_cluster.ray.remove_node(node, allow_graceful=False)


def sleeper(child_id: str, marker: str, **placement) -> C.ClusterChildSpec:
    """A child running ``sleep <marker>``; the marker finds its process on the machine."""
    spec = P.child_spec(id=child_id, argv=["sleep", marker], auto_proceed=True, stdio="devnull", shutdown=2.0)
    return C.child_spec(spec, **placement)


def new_markers(count: int) -> list[str]:
    """Unique ``sleep`` arguments (a long, odd duration nobody else uses)."""
    token = uuid.uuid4().int % 10**9
    return [f"{100000 + index}.{token:09d}" for index in range(count)]


def receive_until(box: linx_otp.Mailbox, predicate, timeout: float) -> list[tuple]:
    """Events up to and including the first one ``predicate`` accepts."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        event = box.receive(timeout=max(0.01, deadline - time.monotonic()))
        seen.append(event)
        if predicate(event):
            return seen


def receive_started(box: linx_otp.Mailbox, ids) -> None:
    """Wait for the ``started`` report of each child (``C.start`` returns before the driver's
    event pump has necessarily delivered them), so that later reports are read on their own."""
    waiting = set(ids)
    receive_until(box, lambda event: event[1] == "started" and waiting.discard(event[3]) is None and not waiting, 60)


def all_running(tree: C.Tree) -> bool:
    return all(state == "running" for _, _, state, _ in C.which_children(tree))


def pids_by_child(markers: dict[str, str]) -> dict[str, list[int]]:
    return {child_id: _workload_pids(marker) for child_id, marker in markers.items()}


# -- the scenarios -------------------------------------------------------------------------------------


@scenario
def test_a_lost_node_s_children_restart_elsewhere_and_the_others_stay(cluster: Cluster) -> None:
    """Six children, two per node; removing one node reports its two ("node_down", id) and runs
    them again on the remaining nodes within 10 s; the other four keep their host pids."""
    ids = [f"c{index}" for index in range(6)]
    markers = dict(zip(ids, new_markers(6), strict=True))
    box = linx_otp.Mailbox()
    tree = C.start([sleeper(child_id, markers[child_id]) for child_id in ids], events=box)
    try:
        assert wait_until(lambda: all_running(tree), 10)
        placed = {child_id: node_id for child_id, node_id, _, _ in C.which_children(tree)}
        per_node = {node_id: sorted(c for c, n in placed.items() if n == node_id) for node_id in set(placed.values())}
        assert sorted(map(len, per_node.values())) == [2, 2, 2], per_node
        before = pids_by_child(markers)
        assert all(len(pids) == 1 for pids in before.values()), before
        victim = next(node_id for node_id in per_node if node_id != cluster.head_id)
        receive_started(box, ids)

        lost_at = time.monotonic()
        cluster.ray.remove_node(cluster.worker(victim), allow_graceful=False)
        restarted = set()
        events = receive_until(
            box, lambda event: event[1] == "restarted" and restarted.add(event[3]) is None and len(restarted) == 2, 30
        )
        assert wait_until(lambda: all_running(tree), 30)
        took = time.monotonic() - lost_at

        lost = per_node[victim]  # in start order, as the tree reports them
        after = {child_id: node_id for child_id, node_id, _, _ in C.which_children(tree)}
        assert [event[1:] for event in events] == [
            ("exited", tree.name, child_id, ("node_down", victim), victim) for child_id in lost
        ] + [("restarted", tree.name, child_id, 2, after[child_id]) for child_id in lost], events
        assert took < 10, took
        assert all(after[child_id] not in (victim, None) for child_id in per_node[victim])
        old_pids = [pid for child_id in per_node[victim] for pid in before[child_id]]
        assert wait_until(lambda: not any(map(_alive, old_pids)), C.OVERLAP_BOUND_SECONDS), (
            "old copies outlived the bound"
        )
        now = pids_by_child(markers)
        for child_id in ids:
            if child_id in per_node[victim]:
                assert len(now[child_id]) == 1 and now[child_id] != before[child_id]
            else:
                assert now[child_id] == before[child_id] and after[child_id] == placed[child_id]
    finally:
        C.stop(tree)
    assert not any(_workload_pids(marker) for marker in markers.values())


@scenario
def test_a_crash_restarts_on_its_own_node(cluster: Cluster) -> None:
    """A workload killed on a node restarts there (same node, new pid); its siblings are untouched."""
    nodes = cluster.alive()
    markers = dict(zip(("a", "b", "c"), new_markers(3), strict=True))
    box = linx_otp.Mailbox()
    children = [sleeper(child_id, markers[child_id], node=node) for child_id, node in zip(markers, nodes, strict=True)]
    tree = C.start(children, events=box)
    try:
        assert wait_until(lambda: all_running(tree), 10)
        before = pids_by_child(markers)
        receive_started(box, markers)
        os.kill(before["b"][0], signal.SIGKILL)
        events = receive_until(box, lambda event: event[1] == "restarted", 30)
        assert [event[1:] for event in events] == [
            ("exited", tree.name, "b", ("signaled", 9), nodes[1]),
            ("restarted", tree.name, "b", 2, nodes[1]),
        ], events
        assert wait_until(lambda: all_running(tree), 30)
        assert [node_id for _, node_id, _, _ in C.which_children(tree)] == nodes
        now = pids_by_child(markers)
        assert now["a"] == before["a"] and now["c"] == before["c"]
        assert len(now["b"]) == 1 and now["b"] != before["b"]
    finally:
        C.stop(tree)


@scenario
def test_restart_intensity_across_nodes_gives_up_and_stops_everything(cluster: Cluster) -> None:
    """Crashes on different nodes count against one intensity: past it, the tree reports gave_up,
    stops every child on every node, and its actors go."""
    nodes = cluster.alive()
    markers = dict(zip(("x", "y", "z"), new_markers(3), strict=True))
    box = linx_otp.Mailbox()
    children = [sleeper(child_id, markers[child_id], node=node) for child_id, node in zip(markers, nodes, strict=True)]
    tree = C.start(children, events=box, max_restarts=2, max_seconds=30.0)
    try:
        receive_started(box, markers)
        for round_number, child_id in enumerate(["x", "y", "z"]):
            assert wait_until(lambda child_id=child_id: len(_workload_pids(markers[child_id])) == 1, 30)
            os.kill(_workload_pids(markers[child_id])[0], signal.SIGKILL)
            events = receive_until(box, lambda event: event[1] in ("restarted", "gave_up"), 30)
            node_id = nodes[round_number]
            exited = ("exited", tree.name, child_id, ("signaled", 9), node_id)
            if round_number < 2:
                assert [event[1:] for event in events] == [exited, ("restarted", tree.name, child_id, 2, node_id)]
            else:
                limit = ("reached_max_restart_intensity", 2, 30.0)
                assert [event[1:] for event in events] == [exited, ("gave_up", tree.name, child_id, limit, node_id)]
        stopped = receive_until(box, lambda event: event[1] == "stopped" and event[3] == "x", 30)
        # z's node host had restarted it already (one_for_one restarts on the node): it is stopped too
        assert [event[1:4] for event in stopped] == [("stopped", tree.name, child_id) for child_id in "zyx"], stopped
        assert wait_until(lambda: not any(_workload_pids(marker) for marker in markers.values()), 30)
        assert wait_until(lambda: not _our_actors(), 30), _our_actors()
        with pytest.raises(linx_otp.LinxError) as gone:
            C.which_children(tree)
        assert gone.value.reason == "no_process"
    finally:
        C.stop(tree)


@scenario
def test_a_node_loss_with_four_children_counts_as_one_restart(cluster: Cluster) -> None:
    """With the default intensity (3 in 5 s), losing a node that runs four children moves all four
    to a spare node with the same label; the tree does not give up."""
    (zone_node,) = cluster.add_nodes(1, labels={"zone": "blue"})
    markers = dict(zip(("p", "q", "r", "s"), new_markers(4), strict=True))
    box = linx_otp.Mailbox()
    tree = C.start(
        [sleeper(child_id, marker, labels={"zone": "blue"}) for child_id, marker in markers.items()], events=box
    )
    try:
        lost = zone_node.node_id
        assert {node_id for _, node_id, _, _ in C.which_children(tree)} == {lost}
        receive_started(box, markers)
        (spare,) = cluster.add_nodes(1, labels={"zone": "blue"})
        cluster.ray.remove_node(zone_node, allow_graceful=False)
        restarted = set()
        events = receive_until(
            box, lambda event: event[1] == "restarted" and restarted.add(event[3]) is None and len(restarted) == 4, 60
        )
        # each child exits once, with its node's loss (not with its agent, which Ray's worker kills
        # as it ends), and is restarted once on the spare node: no second exit, no gave_up
        assert [event[1:] for event in events] == [
            ("exited", tree.name, child_id, ("node_down", lost), lost) for child_id in markers
        ] + [("restarted", tree.name, child_id, 2, spare.node_id) for child_id in markers], events
        assert wait_until(lambda: all_running(tree), 30)
        assert {node_id for _, node_id, _, _ in C.which_children(tree)} == {spare.node_id}
        assert all(len(_workload_pids(marker)) == 1 for marker in markers.values())
        assert not box.flush()  # nothing more happened
    finally:
        C.stop(tree)


@scenario
def test_a_cluster_supervisor_that_dies_rebuilds_without_duplicates(cluster: Cluster) -> None:
    """Ray restarts a killed cluster supervisor; the new one adopts the running children (same
    pids, one process each) and supervises them: a crash afterwards is restarted."""
    markers = dict(zip(("k", "l", "m"), new_markers(3), strict=True))
    tree = C.start([sleeper(child_id, marker) for child_id, marker in markers.items()])
    try:
        assert wait_until(lambda: all_running(tree), 10)
        placed = C.which_children(tree)
        before = pids_by_child(markers)
        ray.kill(tree.supervisor(), no_restart=False)
        assert wait_until(lambda: _adopted(tree) == placed, 60), _adopted(tree)
        assert pids_by_child(markers) == before
        os.kill(before["l"][0], signal.SIGKILL)
        assert wait_until(
            lambda: len(_workload_pids(markers["l"])) == 1 and _workload_pids(markers["l"]) != before["l"], 10
        )
        assert wait_until(lambda: all_running(tree), 10)
        assert all(len(pids) == 1 for pids in pids_by_child(markers).values())
    finally:
        C.stop(tree)


def _adopted(tree: C.Tree) -> list | None:
    try:
        return C.which_children(tree)
    except (linx_otp.LinxError, ray.exceptions.RayError):
        return None


@scenario
def test_after_a_partition_the_old_incarnation_ends_within_the_bound(cluster: Cluster) -> None:
    """A node whose raylet is stopped (SIGSTOP: its node host and workload live on) is declared
    dead by Ray; its child runs again elsewhere, and the old copy ends within
    ``OVERLAP_BOUND_SECONDS`` of the replacement's start (the node host fences itself)."""
    ids = ["e", "f", "g"]
    markers = dict(zip(ids, new_markers(3), strict=True))
    box = linx_otp.Mailbox()
    tree = C.start([sleeper(child_id, markers[child_id]) for child_id in ids], events=box)
    raylet = None
    try:
        assert wait_until(lambda: all_running(tree), 10)
        placed = {child_id: node_id for child_id, node_id, _, _ in C.which_children(tree)}
        child_id, victim = next((c, n) for c, n in placed.items() if n != cluster.head_id)
        (old_pid,) = _workload_pids(markers[child_id])
        raylet = cluster.worker(victim).all_processes["raylet"][0].process
        receive_started(box, ids)
        raylet.send_signal(signal.SIGSTOP)
        events = receive_until(box, lambda event: event[1] == "restarted", 60)
        replaced_at = time.monotonic()
        assert [event[1:4] for event in events] == [
            ("exited", tree.name, child_id),
            ("restarted", tree.name, child_id),
        ], events
        assert events[0][4:] == (("node_down", victim), victim), events
        assert wait_until(lambda: len(_workload_pids(markers[child_id])) == 2 or not _alive(old_pid), 30)
        assert wait_until(lambda: not _alive(old_pid), C.OVERLAP_BOUND_SECONDS + 5)
        overlap = time.monotonic() - replaced_at
        assert overlap <= C.OVERLAP_BOUND_SECONDS, overlap
        assert wait_until(lambda: all_running(tree), 30)
        assert all(len(_workload_pids(marker)) == 1 for marker in markers.values())
    finally:
        if raylet is not None:
            raylet.send_signal(signal.SIGCONT)
            cluster.ray.remove_node(cluster.worker(victim), allow_graceful=False)
        C.stop(tree)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@scenario
def test_the_tree_outlives_the_driver_that_started_it(cluster: Cluster) -> None:
    """A driver starts a named tree and exits; the tree keeps running, another driver attaches
    to it by name and stops it, and nothing is left."""
    (marker,) = new_markers(1)
    script = textwrap.dedent(
        f"""
        import ray
        from linx_otp import cluster as C, process as P
        ray.init(address={cluster.ray.address!r}, log_to_driver=False)
        spec = P.child_spec(id="kept", argv=["sleep", {marker!r}], auto_proceed=True, stdio="devnull")
        C.start([C.child_spec(spec)], name="outlives-driver")
        print("started", flush=True)
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120, capture_output=True)
    tree = C.attach("outlives-driver")
    try:
        time.sleep(C.LEASE_SECONDS * 2)  # longer than a node host's lease: it is still polled
        assert wait_until(lambda: all_running(tree), 10)
        assert len(_workload_pids(marker)) == 1
    finally:
        C.stop(tree)
    assert wait_until(lambda: not _workload_pids(marker), 10)


@scenario
def test_a_tree_file_runs_across_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """`linx-otp run --ray ADDRESS TREE` (``cluster.run_tree``) places children by label and
    resources, prints each child's node, and stops everything on SIGTERM."""
    (labelled,) = cluster.add_nodes(1, labels={"disk": "ssd"}, resources={"licence": 2})
    first, second = new_markers(2)
    tree_file = tmp_path / "spread.toml"
    tree_file.write_text(
        textwrap.dedent(
            f"""
            [supervisor]
            max_restarts = 5
            [[child]]
            id = "fast"
            argv = ["sleep", "{first}"]
            stdio = "devnull"
            node = {{ label = "disk=ssd" }}
            [[child]]
            id = "licensed"
            argv = ["sleep", "{second}"]
            stdio = "devnull"
            node = {{ resources = {{ licence = 1 }} }}
            """
        )
    )
    runner = subprocess.Popen(
        [sys.executable, "-m", "linx_otp", "run", "--ray", cluster.ray.address, str(tree_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rows = [runner.stdout.readline().rstrip("\n").split("\t") for _ in range(2)]
        assert [(row[0], row[3]) for row in rows] == [("fast", labelled.node_id), ("licensed", labelled.node_id)]
        assert [row[2] for row in rows] == ["running", "running"]
        status = subprocess.run(
            [sys.executable, "-m", "linx_otp", "status", "--ray", cluster.ray.address, "--name", "spread"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr[-2000:]
        assert [line.split("\t") for line in status.stdout.splitlines()] == rows  # what `linx-otp status` shows
        assert len(_workload_pids(first)) == 1 and len(_workload_pids(second)) == 1
    finally:
        runner.send_signal(signal.SIGTERM)
        stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr[-2000:]
    assert not _workload_pids(first) and not _workload_pids(second)


@scenario
def test_the_example_runs_against_the_cluster(cluster: Cluster) -> None:
    """examples/cluster.py places its children, sees its flaky child restarted on its node, and
    stops with no actor of ours left (test_examples.py cannot run it: it needs a cluster)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cluster.py"), "--address", cluster.ray.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "flaky exited: ('exited', 3) on node" in "\n".join(lines)
    assert any(line.startswith("flaky restarted:") and line.endswith("(its first node: True)") for line in lines)
    assert lines[-1] == "stopped; Ray actors of linx_otp left: []"


# -- without a cluster: what is checked before anything starts ------------------------------------------

outside_only = pytest.mark.skipif(INSIDE, reason="needs no cluster: runs outside the namespace")


@outside_only
def test_placement_is_checked_when_the_spec_is_made() -> None:
    spec = P.child_spec(id="x", argv=["true"], auto_proceed=True)
    for keywords, reason in [
        ({"node": "not-a-node-id"}, "bad_node"),
        ({"labels": {"zone": 3}}, "bad_labels"),
        ({"resources": {"CPU": float("nan")}}, "bad_resources"),
        ({"resources": {"CPU": 0}}, "bad_resources"),
    ]:
        with pytest.raises(linx_otp.LinxValueError) as error:
            C.child_spec(spec, **keywords)
        assert error.value.reason[0] == reason
    with pytest.raises(linx_otp.LinxValueError) as error:
        C.child_spec("not a spec")
    assert error.value.reason[0] == "bad_child_spec"


class Locked(linx_otp.Actor):
    def __init__(self, lock) -> None:
        super().__init__()
        self.lock = lock


@outside_only
def test_a_spec_that_cannot_cross_to_a_node_is_refused_before_anything_starts() -> None:
    import threading

    owned = P.child_spec(id="owned", argv=["true"], auto_proceed=True, owner=linx_otp.Mailbox())
    assert C.ship(owned)  # a driver-side owner stays behind: the session gets a node-local one
    unshippable = Locked.child_spec(threading.Lock(), id="locked")
    with pytest.raises(linx_otp.LinxValueError) as error:
        C.ship(unshippable)
    assert error.value.reason[:2] == ("unshippable_child_spec", "locked")
    with pytest.raises(linx_otp.LinxValueError) as error:
        C.start([C.child_spec(unshippable)])
    assert error.value.reason[0] == "unshippable_child_spec"
    assert not ray.is_initialized()


@outside_only
def test_bad_trees_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for text, where in [
        ('[[child]]\nid = "a"\nargv = ["true"]\nnode = { zone = "x" }', "child[0].node"),
        ('[[child]]\nid = "a"\nargv = ["true"]\nnode = { label = "nolabel" }', "child[0].node.label"),
        ('[[child]]\nid = "a"\nargv = ["true"]\nsetup = { hostname = "h" }', "child[0]"),
        ('[supervisor]\nstrategy = "all"\n[[child]]\nid = "a"\nargv = ["true"]', "supervisor"),
        ("[[child]]\nid = 'a'\n[[child]]\nid = 'a'\nargv = ['true']", "child[0]"),
    ]:
        with pytest.raises(linx_otp.LinxValueError) as error:
            C.parse_tree(text, "t.toml")
        assert error.value.reason[:3] == ("bad_tree", "t.toml", where), error.value.reason
    missing = tmp_path / "missing.toml"
    assert C.run_tree("127.0.0.1:1", missing) == 2
