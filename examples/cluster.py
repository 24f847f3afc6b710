"""A supervision tree across a Ray cluster: children placed on nodes, a crash restarted on its
node, the tree stopped with nothing left anywhere.

    ray start --head                                # or any cluster you can reach
    python examples/cluster.py --address auto

Needs ``pip install 'linx_otp[ray]'`` on every node and root (or the rights linx_otp needs) there.
"""

import argparse

import ray

import linx_otp
from linx_otp import cluster as C
from linx_otp import process as P

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--address", default="auto", help="the Ray cluster to join (default: the one on this machine)")
address = parser.parse_args().address

ray.init(address=address, log_to_driver=False)
events = linx_otp.Mailbox()


def worker(name: str, argv: list[str], **placement) -> C.ClusterChildSpec:
    """A child running ``argv``, placed by ``placement`` (any live node when empty)."""
    return C.child_spec(P.child_spec(id=name, argv=argv, auto_proceed=True, stdio="devnull"), **placement)


# One child on this node (by its id), one where a CPU is free, one that crashes after a second.
here = ray.get_runtime_context().get_node_id()
tree = C.start(
    [
        worker("frontend", ["sleep", "3600"], node=here),
        worker("cruncher", ["sleep", "3600"], resources={"CPU": 1}),
        worker("flaky", ["sh", "-c", "sleep 1; exit 3"]),
    ],
    strategy="one_for_one",
    max_restarts=5,
    max_seconds=10.0,
    events=events,
)
print("the tree runs:")
for child_id, node_id, state, kind in C.which_children(tree):
    print(f"  {child_id:<9} {kind:<7} {state:<8} on node {node_id[:12]}")

# The flaky child exits 3: its node host restarts it on the same node, the cluster supervisor counts it.
flaky_node = next(node_id for child_id, node_id, _, _ in C.which_children(tree) if child_id == "flaky")
for kind in ("exited", "restarted"):
    event = events.receive(("linx_supervisor", kind, tree.name, "flaky"), timeout=30)
    print(f"flaky {kind}: {event[4]!r} on node {event[5][:12]} (its first node: {event[5] == flaky_node})")

C.stop(tree)
ours = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["namespace"] == C.NAMESPACE]
print("stopped; Ray actors of linx_otp left:", ours)
ray.shutdown()
