"""Trees across a Ray cluster (docs/cluster.md): OTP's supervision rules for children placed on Ray nodes.

A tree here is two kinds of Ray actor, both detached (they outlive the driver that started
them) and named in the ``linx_otp`` namespace after the tree:

- a **node host** (``NodeHost``, ``"<tree>/host/<node id>"``): one per node that hosts
  children, pinned to that node (``NodeAffinitySchedulingStrategy``, not soft). It runs a local
  ``linx_otp`` supervisor whose children are the tree's children placed there and queues their
  exits, restarts and ``running`` events until the cluster supervisor's next long poll takes
  them. In a ``one_for_one`` tree it restarts a crashed child on its node at once (the cluster
  supervisor counts the restart and may give up); otherwise its children are ``temporary``
  there and the cluster supervisor restarts them.
- the **cluster supervisor** (``ClusterSupervisor``, ``"<tree>/supervisor"``, pinned to the head
  node): places each
  child on a live node that fits its placement, applies the strategy, restart types and
  restart intensity of README, "Supervision", and reports ``("linx_supervisor", kind, tree, child_id,
  detail, node_id)``. Ray restarts it when it dies (``SUPERVISOR_RESTARTS``); the new
  incarnation adopts what the node hosts still run instead of starting duplicates.

Failure model (docs/cluster.md has the long form):

- A child's exit reason is its local one. When its node is lost (the node host died, or Ray
  declared the node dead), each of its children exits with ``("node_down", node_id)`` and is
  restarted elsewhere per its restart type. A node loss is **one** failure: it counts once
  against ``max_restarts`` however many children it took, as a ``one_for_all`` restart does in
  OTP; so with the defaults a lost node with four children does not make the tree give up.
- Sessions on a node host use an immediate orphan policy (``("kill", 0)``): when the node
  host's process goes, its workloads are killed at once.
- A dying node is not a crash of its children: Ray ends a worker whose raylet died by killing
  its child processes (the agents) first, so a node host whose raylet has ended ends at once,
  without reporting those exits or restarting them there; each child exits once, ``node_down``.
- Overlap of two incarnations after a node loss: none when the lost node's processes are gone
  (the orphan policy); at most ``OVERLAP_BOUND_SECONDS`` when the node host lives on but Ray
  declared its node dead (a stopped raylet, a partition through which the node host can still
  reach the cluster supervisor): the node host, no longer polled for ``LEASE_SECONDS``, asks
  the supervisor, hears it is no longer the tree's, and ends with its workloads; and at most
  ``SILENCE_SECONDS`` when it cannot reach the supervisor at all.
- Losing the head node (Ray's GCS) is out of scope: Ray itself does not survive it.

Ray is imported only inside functions: the core package never needs it (extra ``[ray]``).
This module never touches an OS process itself: sessions do that on their node.

>>> from linx_otp import process as P
>>> spec = child_spec(P.child_spec(id="web", argv=["sleep", "60"], auto_proceed=True), labels={"zone": "a"})
>>> spec.id, spec.restart, spec.type, spec.placement
('web', 'permanent', 'worker', Placement(node=None, labels=(('zone', 'a'),), resources=()))
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import os
import pickle
import re
import select
import signal
import sys
import threading
import time
import tomllib
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka

from . import process as P
from . import supervisor as S
from .actor import Actor, ChildSpec
from .errors import LinxError, LinxValueError
from .mailbox import Mailbox
from .options import SessionPlan
from .protocol import ORPHAN_KILL

log = logging.getLogger(__name__)

NAMESPACE = "linx_otp"
"""The Ray namespace of every named actor this module creates."""
EVENT_TAG = S.EVENT_TAG
POLL_SECONDS = 1.0
"""The longest a node host holds the cluster supervisor's poll open when it has nothing to report."""
LEASE_SECONDS = 1.0
"""A node host not polled for this long asks the cluster supervisor whether it is still the tree's."""
SILENCE_SECONDS = 30.0
"""A node host that cannot reach its cluster supervisor for this long stops its children and exits."""
OVERLAP_BOUND_SECONDS = POLL_SECONDS + LEASE_SECONDS + 2 * LEASE_SECONDS / 4 + 1.0
"""How long a lost node's children may outlive their replacements' start while the node host
can still reach the supervisor: its last poll ends, the lease runs out, the watchdog's check
(every quarter lease, plus the question itself), and a second for killing the children."""
SUPERVISOR_RESTARTS = 10
"""How often Ray restarts a cluster supervisor that died (Ray's ``max_restarts``)."""
START_TIMEOUT_SECONDS = 60.0
"""The longest a cluster supervisor waits for a node host to start one child."""
FINAL_EVENTS_SECONDS = 10.0
"""How long a finished cluster supervisor keeps its last reports for a driver that forwards them."""
MAX_QUEUED_EVENTS = 10_000
RUNNING_WAIT_SECONDS = 10.0
"""How long ``start`` waits for every started child to run before it returns anyway."""
LOCAL_RESTARTS_UNLIMITED = 2**62
"""A node host's supervisor never gives up by itself: the cluster supervisor counts its restarts."""
HEAD_RESOURCE = "node:__internal_head__"
"""The resource Ray gives the head node only: the cluster supervisor is pinned there, where Ray's
GCS runs too (losing the head is out of scope), so the loss of another node never takes it along."""
NODE_ID = re.compile(r"[0-9a-f]{56}")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LinxError("ray_missing", "linx_otp.cluster needs Ray: pip install 'linx_otp[ray]'") from None
    return ray


# -- placement and child specs ------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a child may run: on the Ray node ``node`` (an id, which changes when a node restarts),
    on a node carrying every label in ``labels``, and with ``resources`` still free there (counted
    against the other children of the tree placed on that node). Empty means any live node."""

    node: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, float], ...] = ()

    def fits(self, node: _Node, claimed: Mapping[str, float]) -> bool:
        """Whether this placement fits ``node`` with ``claimed`` of its resources already taken."""
        if self.node is not None and self.node != node.id:
            return False
        if any(node.labels.get(key) != value for key, value in self.labels):
            return False
        return all(node.resources.get(name, 0.0) - claimed.get(name, 0.0) >= amount for name, amount in self.resources)


def check_placement(node: Any = None, labels: Any = None, resources: Any = None) -> Placement:
    """A placement, checked: ``node`` a Ray node id (56 hex digits), ``labels`` a mapping of
    str to str, ``resources`` a mapping of str to finite numbers > 0. Raises ``LinxValueError``
    with ``("bad_node" | "bad_labels" | "bad_resources", value)``; the one check, used by
    ``child_spec`` and tree files.

    >>> check_placement(resources={"CPU": 1})
    Placement(node=None, labels=(), resources=(('CPU', 1.0),))
    """
    if node is not None and not (isinstance(node, str) and NODE_ID.fullmatch(node)):
        raise LinxValueError(("bad_node", node), f"node must be a Ray node id (56 hex digits), not {node!r}")
    if labels is None:
        labels = {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(key, str) and key and isinstance(value, str) for key, value in labels.items()
    ):
        raise LinxValueError(("bad_labels", labels), f"labels must map non-empty str keys to str, not {labels!r}")
    if resources is None:
        resources = {}
    if not isinstance(resources, Mapping) or not all(
        isinstance(name, str)
        and name
        and isinstance(amount, (int, float))
        and not isinstance(amount, bool)
        and math.isfinite(amount)
        and amount > 0
        for name, amount in resources.items()
    ):
        raise LinxValueError(
            ("bad_resources", resources), f"resources must map non-empty names to finite numbers > 0, not {resources!r}"
        )
    return Placement(
        node=node,
        labels=tuple(sorted(labels.items())),
        resources=tuple(sorted((name, float(amount)) for name, amount in resources.items())),
    )


@dataclass(frozen=True)
class ClusterChildSpec:
    """A child spec (``P.child_spec``, ``S.child_spec`` or ``Actor.child_spec``) with its placement."""

    spec: ChildSpec
    placement: Placement

    @property
    def id(self) -> Any:
        return self.spec.id

    @property
    def restart(self) -> str:
        return self.spec.restart

    @property
    def shutdown(self) -> float | str | None:
        return self.spec.shutdown

    @property
    def type(self) -> str:
        return self.spec.type


def child_spec(
    spec: ChildSpec,
    node: str | None = None,
    labels: Mapping[str, str] | None = None,
    resources: Mapping[str, float] | None = None,
) -> ClusterChildSpec:
    """Wrap a child spec with its placement (``node`` id, ``labels``, ``resources``; all must
    hold). Tree files place by labels or resources: node ids change when a node restarts."""
    if not isinstance(spec, ChildSpec):
        raise LinxValueError(
            ("bad_child_spec", spec), f"a cluster child wraps a ChildSpec (P.child_spec, S.child_spec), not {spec!r}"
        )
    return ClusterChildSpec(spec, check_placement(node, labels, resources))


# -- shipping a spec to a node ----------------------------------------------------------------------


_landing = threading.local()
"""On a node host, while a shipped spec is unpickled: the host and the child id it lands for."""


class _HostedOwner:
    """The owner of a shipped session on its node host: passes ``running`` on, drops the rest
    (the session's other events stay on its node)."""

    def __init__(self, host: NodeHost, child_id: Any) -> None:
        self._host = host
        self._child_id = child_id

    def tell(self, message: Any) -> None:
        match message:
            case ("linx_process", "running"):
                self._host._child_running(self._child_id)


def _owner_on_node() -> _HostedOwner:
    return _HostedOwner(_landing.host, _landing.child_id)


def _plan_on_node(plan: SessionPlan) -> SessionPlan:
    """A session plan as it runs on a node host: the immediate orphan policy, a node-local owner."""
    request = dataclasses.replace(plan.request, orphan_policy=(ORPHAN_KILL, 0))
    return dataclasses.replace(plan, request=request, owner=_owner_on_node())


def _shipped_plan(request: Any, linger: bool, auto_proceed: bool) -> SessionPlan:
    return _plan_on_node(SessionPlan(request=request, owner=None, linger=linger, auto_proceed=auto_proceed))


def ship(spec: ChildSpec) -> bytes:
    """A child spec as bytes for a node host: pickled with Ray's cloudpickle, every session plan
    without its driver-side owner (it gets the immediate orphan policy and a node-local owner
    when it lands), every other mailbox or actor ref replaced by a node-local one. Raises
    ``LinxValueError(("unshippable_child_spec", id, error))`` for what cannot cross."""
    cloudpickle = _ray().cloudpickle

    class Shipper(cloudpickle.CloudPickler):  # type: ignore[name-defined]  # Ray's vendored copy, imported lazily
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, SessionPlan):
                return _shipped_plan, (obj.request, obj.linger, obj.auto_proceed)
            if isinstance(obj, (Mailbox, pykka.ActorRef)):
                return _owner_on_node, ()
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    try:
        Shipper(buffer).dump(spec)
    except Exception as error:
        raise LinxValueError(
            ("unshippable_child_spec", spec.id, repr(error)), f"child {spec.id!r} cannot be sent to a node: {error}"
        ) from error
    return buffer.getvalue()


# -- the node host ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exited:
    """A node host's report: an incarnation of a child ended with ``reason``; with
    ``restarting``, the node host's supervisor is already starting the next one there."""

    child_id: Any
    incarnation: int
    reason: Any
    restarting: bool = False


@dataclass(frozen=True)
class Restarted:
    """A node host's report: its supervisor restarted a child there as ``incarnation``."""

    child_id: Any
    incarnation: int


@dataclass(frozen=True)
class StartFailed:
    """A node host's report: its supervisor could not restart a child (it retries)."""

    child_id: Any
    incarnation: int
    reason: Any


@dataclass(frozen=True)
class Running:
    """A node host's report: an incarnation of a worker child is running."""

    child_id: Any
    incarnation: int


@dataclass
class _Hosted:
    incarnation: int
    kind: str
    restart: str
    """The restart type the node host's supervisor applies: ``temporary`` unless it restarts locally."""
    state: str = "starting"
    launched: bool = False
    """Whether its first start has returned (a failure before that is ``start_child``'s answer)."""


class _HostInbox:
    """The ``events`` owner of a node host's local supervisor: its reports become the node host's."""

    def __init__(self, host: NodeHost) -> None:
        self._host = host

    def tell(self, message: Any) -> None:
        if self._host._raylet_ended():
            # Ray ends a worker whose raylet died by killing its child processes first (our
            # agents): what the local supervisor sees then is the node's loss, not a crash
            self._host._fence("its node's raylet has ended")
        match message:
            case (S.EVENT_TAG, "exited", _, child_id, reason):
                self._host._child_exited(child_id, reason)
            case (S.EVENT_TAG, "restarted", _, child_id, _):
                self._host._child_restarted(child_id)
            case (S.EVENT_TAG, "start_failed", _, child_id, reason):
                self._host._child_start_failed(child_id, reason)


class NodeHost:
    """The Ray actor on one node that hosts a tree's children there (see the module docstring).
    Its methods are called by the cluster supervisor only."""

    def __init__(self, tree: str, node_id: str) -> None:
        _normal_priority()
        self._tree = tree
        self._node_id = node_id
        self._changed = threading.Condition()
        self._reports: list[Exited | Restarted | StartFailed | Running] = []
        self._hosted: dict[Any, _Hosted] = {}
        self._polls_open = 0
        self._last_contact = time.monotonic()
        self._stopping = threading.Event()
        self._raylet = _open_raylet()
        self._supervisor = S.start(
            [], id=("linx_otp.cluster", tree, node_id), events=_HostInbox(self), max_restarts=LOCAL_RESTARTS_UNLIMITED
        )
        threading.Thread(target=self._watch_lease, name="linx-otp-lease", daemon=True).start()

    # -- called by the cluster supervisor ----------------------------------------------------

    def start_child(self, child_id: Any, payload: bytes, kind: str, incarnation: int, restart_locally: bool) -> tuple:
        """Start one incarnation; ``("started", state)`` or ``("start_failed", reason)``. With
        ``restart_locally`` the node host's supervisor restarts it here by its restart type
        (the cluster supervisor counts those restarts); otherwise it is ``temporary`` here."""
        _landing.host, _landing.child_id = self, child_id
        try:
            spec = pickle.loads(payload)
        finally:
            _landing.host = _landing.child_id = None
        restart = spec.restart if restart_locally else "temporary"
        with self._changed:
            self._hosted[child_id] = _Hosted(incarnation, kind, restart)
        try:
            S.start_child(self._supervisor, dataclasses.replace(spec, restart=restart))
        except LinxError as error:
            with self._changed:
                self._hosted.pop(child_id, None)
            return ("start_failed", error.reason)
        with self._changed:
            hosted = self._hosted.get(child_id)
            if hosted is None:
                return ("started", "starting")  # it has ended already: its report follows
            hosted.launched = True
            if kind == "supervisor" and hosted.state == "starting":
                hosted.state = "running"
            return ("started", hosted.state)

    def stop_child(self, child_id: Any) -> None:
        """Stop the child's incarnation here by its shutdown spec, and forget it."""
        with self._changed:
            if self._hosted.pop(child_id, None) is None:
                return
        try:
            S.terminate_child(self._supervisor, child_id)
            S.delete_child(self._supervisor, child_id)
        except LinxError as error:
            if error.reason != "not_found":  # a temporary child that exited meanwhile: its report says so
                raise

    def children(self) -> list[tuple[Any, int, str]]:
        """``(child_id, incarnation, state)`` of every hosted child, for a rebuilding supervisor."""
        with self._changed:
            return [(child_id, hosted.incarnation, hosted.state) for child_id, hosted in self._hosted.items()]

    def next_reports(self, timeout: float) -> list[Exited | Restarted | StartFailed | Running]:
        """The reports queued since the last call, waiting up to ``timeout`` seconds for one."""
        with self._changed:
            self._polls_open += 1
            try:
                self._changed.wait_for(lambda: self._reports, timeout)
                reports, self._reports = self._reports, []
                return reports
            finally:
                self._polls_open -= 1
                self._last_contact = time.monotonic()

    def shutdown(self) -> None:
        """Stop every hosted child (reverse start order, by their shutdown specs); then this
        actor may be killed."""
        self._stopping.set()
        S.stop(self._supervisor)
        with self._changed:
            self._hosted.clear()

    def ready(self) -> str:
        """This node host's Ray actor id, once it is up."""
        return _own_actor_id()

    # -- local supervisor and session reports ---------------------------------------------------

    def _report(self, report: Exited | Restarted | StartFailed | Running) -> None:
        self._reports.append(report)
        self._changed.notify_all()

    def _child_exited(self, child_id: Any, reason: Any) -> None:
        with self._changed:
            hosted = self._hosted.get(child_id)
            if hosted is None:
                return
            restarting = hosted.restart == "permanent" or (
                hosted.restart == "transient" and not S.is_normal_exit(reason)
            )
            self._report(Exited(child_id, hosted.incarnation, reason, restarting))
            if restarting:
                hosted.incarnation += 1
                hosted.state = "starting"
            else:
                del self._hosted[child_id]

    def _child_restarted(self, child_id: Any) -> None:
        with self._changed:
            hosted = self._hosted.get(child_id)
            if hosted is not None:
                self._report(Restarted(child_id, hosted.incarnation))
                if hosted.kind == "supervisor":  # a nested tree runs once it has started
                    hosted.state = "running"
                    self._report(Running(child_id, hosted.incarnation))

    def _child_start_failed(self, child_id: Any, reason: Any) -> None:
        with self._changed:
            hosted = self._hosted.get(child_id)
            if hosted is not None and hosted.launched:
                self._report(StartFailed(child_id, hosted.incarnation, reason))

    def _child_running(self, child_id: Any) -> None:
        with self._changed:
            hosted = self._hosted.get(child_id)
            if hosted is not None and hosted.kind == "worker" and hosted.state == "starting":
                hosted.state = "running"
                self._report(Running(child_id, hosted.incarnation))

    # -- the lease: a node host nobody polls any more stops its children --------------------------

    def _watch_lease(self) -> None:
        while not self._stopping.wait(LEASE_SECONDS / 4):
            if self._raylet_ended():
                self._fence("its node's raylet has ended")
            with self._changed:
                quiet = self._polls_open == 0 and time.monotonic() - self._last_contact > LEASE_SECONDS
            if quiet and not self._still_the_trees():
                self._fence("it is no longer the tree's")
                return

    def _still_the_trees(self) -> bool:
        """Ask the cluster supervisor whether it still counts on this node host; True while it
        cannot answer (it may be restarting) for up to ``SILENCE_SECONDS``."""
        ray = _ray()
        try:
            supervisor = ray.get_actor(_supervisor_name(self._tree), namespace=NAMESPACE)
            mine = ray.get(supervisor.holds_host.remote(self._node_id, _own_actor_id()), timeout=LEASE_SECONDS)
        except (ValueError, ray.exceptions.ActorDiedError):  # the tree is gone (Ray retries a restarting one)
            return False
        except Exception as error:  # unreachable for now: the supervisor may be restarting
            log.warning("node host %s: cannot reach the cluster supervisor: %s", self._node_id, error)
            with self._changed:
                return time.monotonic() - self._last_contact < SILENCE_SECONDS
        if mine:
            with self._changed:
                self._last_contact = time.monotonic()
        return mine

    def _raylet_ended(self) -> bool:
        """Whether this node's raylet has ended: the node is lost (Ray is ending this worker too)."""
        if self._raylet is None:
            return False
        watch = select.poll()
        watch.register(self._raylet, select.POLLIN)
        return bool(watch.poll(0))

    def _fence(self, why: str) -> None:
        """This node host's node is lost or it is no longer the tree's (``why``): its process ends
        at once, and with it, by the immediate orphan policy, every workload it hosts, without a
        report or a local restart (no graceful stop: a replacement may already run elsewhere)."""
        log.error("node host %s of tree %r: %s; ending its workloads", self._node_id, self._tree, why)
        os._exit(0)


def _open_raylet() -> int | None:
    """A pidfd on this node's raylet (Ray tells its workers the pid in ``RAY_RAYLET_PID``),
    readable once the raylet has ended; None where Ray does not say (then only the poll and
    the lease notice a lost node)."""
    try:
        return os.pidfd_open(int(os.environ["RAY_RAYLET_PID"]))
    except (KeyError, ValueError, OSError) as error:
        log.warning("node host: cannot watch the node's raylet: %r", error)
        return None


def _normal_priority() -> None:
    """Undo Ray's worker niceness (15) for every thread of this process, so that a node host
    reacts as fast as a local supervisor and its workloads (which inherit it) run at the
    priority they would have anywhere else. Linux keeps a nice value per thread; threads made
    later inherit their maker's."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), 0)
        except ProcessLookupError:
            pass  # that thread has ended
        except PermissionError:
            log.warning("node host: cannot undo Ray's worker niceness (needs CAP_SYS_NICE); workloads run niced")
            return


@functools.cache
def _remote(actor_class: type) -> Any:
    """``actor_class`` as a Ray actor class (made once per process)."""
    return _ray().remote(actor_class)


def _own_actor_id() -> str:
    return _ray().get_runtime_context().get_actor_id()


def _supervisor_name(tree: str) -> str:
    return f"{tree}/supervisor"


def _host_name(tree: str, node_id: str) -> str:
    return f"{tree}/host/{node_id}"


# -- the cluster supervisor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    id: str
    labels: Mapping[str, str]
    resources: Mapping[str, float]


def _live_nodes() -> list[_Node]:
    nodes = [
        _Node(node["NodeID"], node.get("Labels") or {}, node.get("Resources") or {})
        for node in _ray().nodes()
        if node.get("Alive")
    ]
    return sorted(nodes, key=lambda node: node.id)


@dataclass(frozen=True)
class _Shipped:
    """A child as the cluster supervisor gets it: the spec's fields, its placement, its bytes."""

    id: Any
    restart: str
    shutdown: float | str | None
    type: str
    placement: Placement
    payload: bytes


class _Placed:
    def __init__(self, shipped: _Shipped) -> None:
        self.shipped = shipped
        self.node_id: str | None = None
        self.incarnation = 0
        self.state = "down"


@dataclass(frozen=True)
class _TreeSettings:
    name: str
    strategy: str
    max_restarts: int
    max_seconds: float
    forward_events: bool


@dataclass(frozen=True)
class _Reports:
    node_id: str
    reports: list


@dataclass(frozen=True)
class _HostLost:
    node_id: str
    host: Any


@dataclass(frozen=True)
class _RetryRestart:
    child_ids: tuple


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple = ()


class _Hosts:
    """The tree's node hosts by node id, shared by the tree actor and the poller thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, tuple[Any, str]] = {}

    def add(self, node_id: str, handle: Any, actor_id: str) -> None:
        with self._lock:
            self._by_node[node_id] = (handle, actor_id)

    def remove(self, node_id: str, handle: Any) -> bool:
        with self._lock:
            entry = self._by_node.get(node_id)
            if entry is None or entry[0] is not handle:
                return False
            del self._by_node[node_id]
            return True

    def get(self, node_id: str) -> Any:
        with self._lock:
            entry = self._by_node.get(node_id)
            return None if entry is None else entry[0]

    def holds(self, node_id: str, actor_id: str) -> bool:
        with self._lock:
            entry = self._by_node.get(node_id)
            return entry is not None and entry[1] == actor_id

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {node_id: handle for node_id, (handle, _) in self._by_node.items()}


class _Poller:
    """Long-polls every node host of the tree and tells the tree actor what it hears; a poll that
    fails because the node host died is that node's loss."""

    def __init__(self, hosts: _Hosts, tree: pykka.ActorRef) -> None:
        self._hosts = hosts
        self._tree = tree
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linx-otp-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        ray = _ray()
        polls: dict[Any, tuple[str, Any]] = {}
        while not self._stop.is_set():
            hosts = self._hosts.snapshot()
            polling = {(node_id, id(handle)) for node_id, handle in polls.values()}
            for node_id, handle in hosts.items():
                if (node_id, id(handle)) not in polling:
                    polls[handle.next_reports.remote(POLL_SECONDS)] = (node_id, handle)
            if not polls:
                self._stop.wait(0.05)
                continue
            ready, _ = ray.wait(list(polls), num_returns=1, timeout=0.1)
            for ref in ready:
                node_id, handle = polls.pop(ref)
                try:
                    reports = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:
                    continue  # unreachable for now: poll again
                except ray.exceptions.RayActorError:
                    self._tell(_HostLost(node_id, handle))
                    continue
                if reports:
                    self._tell(_Reports(node_id, reports))

    def _tell(self, message: Any) -> None:
        try:
            self._tree.tell(message)
        except pykka.ActorDeadError:
            self._stop.set()


class _Outbox:
    """The cluster supervisor's reports on their way to a driver, and whether the tree has
    finished; shared by the tree actor (which puts) and Ray's threads (which take)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._events: deque[tuple] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._finished = False

    def put(self, event: tuple) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def take(self, timeout: float) -> tuple[list[tuple], bool]:
        """The queued reports (waiting up to ``timeout`` for one) and whether no more will come."""
        with self._changed:
            self._changed.wait_for(lambda: self._events or self._finished, timeout)
            events = list(self._events)
            self._events.clear()
            return events, self._finished

    def wait_finished(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._finished)


class _Tree(Actor):
    """The cluster supervisor's decisions, one message at a time (inside the Ray actor)."""

    def __init__(self, settings: _TreeSettings, shipped: list[_Shipped], rebuild: bool, outbox: _Outbox) -> None:
        super().__init__()
        self._settings = settings
        self._children = [_Placed(child) for child in shipped]
        self._rebuild = rebuild
        self._hosts = _Hosts()
        self._nodes: dict[str, _Node] = {}
        self._poller: _Poller | None = None
        self._restart_times: deque[float] = deque()
        self._outbox = outbox
        self._finished = False
        self._start_failure: tuple | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._poller = _Poller(self._hosts, self.actor_ref)
        if self._rebuild:
            self._adopt()
            return
        for child in self._children:
            failure = self._start_child(child, "started")
            if failure is not None:
                self._start_failure = (child.shipped.id, failure)
                self._finish()
                return

    def terminate(self, reason: Any) -> None:
        if self._poller is not None:
            self._poller.stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Reports(node_id, reports):
                self._take_reports(node_id, reports)
            case _HostLost(node_id, host):
                self._host_lost(node_id, host)
            case _RetryRestart(child_ids):
                group = [child for child in self._children if child.shipped.id in child_ids and child.state == "down"]
                if group and not self._finished and not self._record_restart(group[0]):
                    self._start_group(group)
            case _Call(name, args):
                return getattr(self, f"_verb_{name}")(*args)
            case _:
                log.warning("cluster supervisor %r ignoring %r", self._settings.name, message)
        return None

    # -- reports --------------------------------------------------------------------------------

    def _report(self, kind: str, child_id: Any, detail: Any, node_id: str | None, level: int = logging.INFO) -> None:
        log.log(
            level, "cluster supervisor %r: child %r %s on %s: %r", self._settings.name, child_id, kind, node_id, detail
        )
        if self._settings.forward_events:
            self._outbox.put((EVENT_TAG, kind, self._settings.name, child_id, detail, node_id))

    # -- node hosts -----------------------------------------------------------------------------

    def _host(self, node_id: str) -> Any:
        """The tree's node host on ``node_id``, created (pinned, detached) when there is none."""
        host = self._hosts.get(node_id)
        if host is not None:
            return host
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        host = (
            _remote(NodeHost)
            .options(
                name=_host_name(self._settings.name, node_id),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=0,
                max_concurrency=16,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            .remote(self._settings.name, node_id)
        )
        actor_id = ray.get(host.ready.remote(), timeout=START_TIMEOUT_SECONDS)
        self._hosts.add(node_id, host, actor_id)
        return host

    def _adopt(self) -> None:
        """After a restart: take over what the node hosts still run; start what none has."""
        ray = _ray()
        prefix = _host_name(self._settings.name, "")
        found: dict[Any, tuple[str, int, str]] = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] != NAMESPACE or not entry["name"].startswith(prefix):
                continue
            node_id = entry["name"][len(prefix) :]
            try:
                host = ray.get_actor(entry["name"], namespace=NAMESPACE)
                actor_id = ray.get(host.ready.remote(), timeout=START_TIMEOUT_SECONDS)
                hosted = ray.get(host.children.remote(), timeout=START_TIMEOUT_SECONDS)
            except (ValueError, ray.exceptions.RayError):
                continue  # gone meanwhile
            self._hosts.add(node_id, host, actor_id)
            for child_id, incarnation, state in hosted:
                found[child_id] = (node_id, incarnation, state)
        lost = []
        for child in self._children:
            if child.shipped.id in found:
                child.node_id, child.incarnation, child.state = found[child.shipped.id]
            else:
                lost.append((child, ("node_down", None)))
        log.warning("cluster supervisor %r restarted: adopted %d children", self._settings.name, len(found))
        if lost:
            self._children_failed(lost)

    def _host_lost(self, node_id: str, host: Any) -> None:
        if not self._hosts.remove(node_id, host):
            return
        lost = [child for child in self._children if child.node_id == node_id and child.state != "down"]
        log.warning("cluster supervisor %r: node %s lost with %d children", self._settings.name, node_id, len(lost))
        if lost:
            self._children_failed([(child, ("node_down", node_id)) for child in lost])

    def _take_reports(self, node_id: str, reports: list) -> None:
        for report in reports:
            child = self._find(report.child_id)
            if child is None or child.incarnation != report.incarnation or child.node_id != node_id or self._finished:
                continue  # an incarnation this supervisor has stopped or replaced
            match report:
                case Running():
                    if child.state == "starting":
                        child.state = "running"
                case Exited(reason=reason, restarting=True):
                    self._report("exited", child.shipped.id, reason, node_id, logging.WARNING)
                    # the node host's supervisor is restarting it there: count it, as OTP would
                    # before restarting (past the limit, the new incarnation is stopped with the rest)
                    child.incarnation, child.state = report.incarnation + 1, "starting"
                    self._record_restart(child)
                case Exited(reason=reason):
                    if child.state != "down":
                        self._children_failed([(child, reason)])
                case Restarted():
                    self._report("restarted", child.shipped.id, report.incarnation, node_id)
                case StartFailed(reason=reason):
                    self._report("start_failed", child.shipped.id, reason, node_id, logging.ERROR)
                    self._record_restart(child)

    # -- placing, starting and stopping -----------------------------------------------------------

    def _find(self, child_id: Any) -> _Placed | None:
        return next((child for child in self._children if child.shipped.id == child_id), None)

    def _choose_node(self, child: _Placed, prefer: str | None) -> str | None:
        """A live node that fits: ``prefer`` if it does, else the one with fewest of our children.
        A node whose node host this tree still polls counts as live without asking Ray (a crash
        restart stays on its node without a round trip to Ray's GCS)."""
        load: dict[str, int] = {}
        claimed: dict[str, dict[str, float]] = {}
        for other in self._children:
            if other is child or other.state == "down" or other.node_id is None:
                continue
            load[other.node_id] = load.get(other.node_id, 0) + 1
            taken = claimed.setdefault(other.node_id, {})
            for name, amount in other.shipped.placement.resources:
                taken[name] = taken.get(name, 0.0) + amount
        placement = child.shipped.placement
        if prefer is not None:
            known = self._nodes.get(prefer)
            if (
                known is not None
                and self._hosts.get(prefer) is not None
                and placement.fits(known, claimed.get(prefer, {}))
            ):
                return prefer
        nodes = _live_nodes()
        self._nodes = {node.id: node for node in nodes}
        fitting = [node for node in nodes if placement.fits(node, claimed.get(node.id, {}))]
        if any(node.id == prefer for node in fitting):
            return prefer
        if not fitting:
            return None
        return min(fitting, key=lambda node: load.get(node.id, 0)).id

    def _start_child(self, child: _Placed, kind: str) -> Any:
        """Place and start one incarnation; None, or the reason it could not start (reported)."""
        ray = _ray()
        node_id = self._choose_node(child, prefer=child.node_id)
        if node_id is None:
            reason = ("no_node_fits", dataclasses.asdict(child.shipped.placement))
            self._report("start_failed", child.shipped.id, reason, None, logging.ERROR)
            return reason
        child.incarnation += 1
        try:
            host = self._host(node_id)
            restart_locally = self._settings.strategy == "one_for_one" and child.shipped.restart != "temporary"
            started = host.start_child.remote(
                child.shipped.id, child.shipped.payload, child.shipped.type, child.incarnation, restart_locally
            )
            outcome = ray.get(started, timeout=START_TIMEOUT_SECONDS)
        except ray.exceptions.RayActorError:
            outcome = ("start_failed", ("node_down", node_id))
        except ray.exceptions.GetTimeoutError:
            outcome = ("start_failed", ("timeout", START_TIMEOUT_SECONDS))
        match outcome:
            case ("started", state):
                child.node_id, child.state = node_id, state
                self._report(kind, child.shipped.id, child.incarnation, node_id)
                return None
            case (_, reason):
                self._report("start_failed", child.shipped.id, reason, node_id, logging.ERROR)
                return reason

    def _stop_child(self, child: _Placed) -> None:
        if child.state == "down":
            return
        ray = _ray()
        child.state = "down"
        host = self._hosts.get(child.node_id) if child.node_id is not None else None
        if host is not None:
            try:
                ray.get(host.stop_child.remote(child.shipped.id))
            except ray.exceptions.RayError as error:
                log.warning("stopping %r on %s: %s", child.shipped.id, child.node_id, error)
        self._report("stopped", child.shipped.id, "shutdown", child.node_id)

    def _stop_children(self, children: Iterable[_Placed]) -> None:
        for child in reversed(list(children)):
            self._stop_child(child)

    # -- OTP's rules ------------------------------------------------------------------------------

    def _children_failed(self, failures: list[tuple[_Placed, Any]]) -> None:
        """Children that exited together (one crash, or one node's loss): report each, then
        count **one** restart and restart by the strategy the ones their restart type asks for."""
        to_restart = []
        for child, reason in failures:
            child.state = "down"
            normal = S.is_normal_exit(reason)
            self._report("exited", child.shipped.id, reason, child.node_id, logging.INFO if normal else logging.WARNING)
            restart = child.shipped.restart
            if restart == "permanent" or (restart == "transient" and not normal):
                to_restart.append(child)
            elif restart == "temporary":
                self._children.remove(child)
        if not to_restart or self._record_restart(to_restart[0]):
            return
        match self._settings.strategy:
            case "one_for_one":
                group = to_restart
            case "one_for_all":
                group = [child for child in self._children if child in to_restart or child.state != "down"]
            case _:  # rest_for_one
                first = min(self._children.index(child) for child in to_restart)
                group = [child for child in self._children[first:] if child in to_restart or child.state != "down"]
        self._stop_children(group)
        for child in [child for child in group if child.shipped.restart == "temporary" and child not in to_restart]:
            group.remove(child)
            self._children.remove(child)
        self._start_group(group)

    def _record_restart(self, child: _Placed) -> bool:
        """Count one restart; past the intensity limit, report ``gave_up``, stop everything and
        finish. Returns whether it gave up."""
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self._settings.max_seconds:
            self._restart_times.popleft()
        if len(self._restart_times) <= self._settings.max_restarts:
            return False
        limit = ("reached_max_restart_intensity", self._settings.max_restarts, self._settings.max_seconds)
        self._report("gave_up", child.shipped.id, limit, child.node_id, logging.ERROR)
        self._finish()
        return True

    def _start_group(self, group: list[_Placed]) -> None:
        """Restart in start order; if one cannot start, retry it and the rest later (each retry
        counts against the restart intensity, as in OTP)."""
        for index, child in enumerate(group):
            if self._start_child(child, "restarted") is not None:
                self.actor_ref.tell(_RetryRestart(tuple(other.shipped.id for other in group[index:])))
                return

    def _finish(self) -> None:
        """Stop every child (reverse start order), then every node host; no more reports follow."""
        if self._finished:
            return
        ray = _ray()
        self._stop_children(self._children)
        for node_id, host in self._hosts.snapshot().items():
            try:
                ray.get(host.shutdown.remote(), timeout=START_TIMEOUT_SECONDS)
            except ray.exceptions.RayError as error:
                log.warning("node host on %s: %s", node_id, error)
            ray.kill(host, no_restart=True)
            self._hosts.remove(node_id, host)
        self._finished = True
        self._outbox.finish()

    # -- verbs ------------------------------------------------------------------------------------

    def _verb_start_failure(self) -> tuple | None:
        return self._start_failure

    def _verb_which_children(self) -> list[tuple[Any, str | None, str, str]]:
        return [(child.shipped.id, child.node_id, child.state, child.shipped.type) for child in self._children]

    def _verb_holds_host(self, node_id: str, actor_id: str) -> bool:
        return not self._finished and self._hosts.holds(node_id, actor_id)

    def _verb_stop(self) -> None:
        self._finish()


class ClusterSupervisor:
    """The Ray actor that supervises a tree across the cluster (see the module docstring). Ray
    restarts it when it dies; the new incarnation rebuilds its view from the node hosts."""

    def __init__(self, settings: _TreeSettings, shipped: list[_Shipped]) -> None:
        rebuild = _ray().get_runtime_context().was_current_actor_reconstructed
        self._outbox = _Outbox()
        self._tree = _Tree.start(settings, shipped, rebuild, self._outbox)
        if self.start_failure() is None:
            grace = FINAL_EVENTS_SECONDS if settings.forward_events else 0.0
            threading.Thread(target=self._exit_when_finished, args=(grace,), daemon=True).start()

    def _ask(self, name: str, *args: Any) -> Any:
        return self._tree.ask(_Call(name, args))

    def start_failure(self) -> tuple | None:
        return self._ask("start_failure")

    def which_children(self) -> list[tuple]:
        return self._ask("which_children")

    def holds_host(self, node_id: str, actor_id: str) -> bool:
        return self._ask("holds_host", node_id, actor_id)

    def next_events(self, timeout: float) -> tuple[list[tuple], bool]:
        return self._outbox.take(timeout)

    def stop(self) -> None:
        self._ask("stop")

    def _exit_when_finished(self, grace: float) -> None:
        """Once the tree has finished (stopped or gave up), this actor goes too, without a
        restart, after ``grace`` seconds for a driver still collecting the last reports."""
        self._outbox.wait_finished()
        time.sleep(grace)
        ray = _ray()
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


# -- the public verbs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A handle on a tree running across the cluster (any driver can ``attach`` to it by name)."""

    name: str

    def supervisor(self) -> Any:
        ray = _ray()
        try:
            return ray.get_actor(_supervisor_name(self.name), namespace=NAMESPACE)
        except ValueError:
            raise LinxError("no_process", f"tree {self.name!r}: its cluster supervisor is gone") from None


class _EventPump:
    """On the driver: takes the cluster supervisor's reports and tells them to ``events``."""

    def __init__(self, tree: Tree, events: Any) -> None:
        self._tree = tree
        self._events = events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="linx-otp-cluster-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ray = _ray()
        try:
            supervisor = self._tree.supervisor()
        except LinxError:
            return
        while not self._stop.is_set():
            try:
                events, finished = ray.get(supervisor.next_events.remote(POLL_SECONDS))
            except ray.exceptions.RayError:
                return  # gone for good (Ray retries calls while it restarts)
            for event in events:
                try:
                    self._events.tell(event)
                except Exception:
                    log.exception("delivering %r to %r failed", event, self._events)
            if finished:
                ray.kill(supervisor, no_restart=True)
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


_pumps: dict[str, _EventPump] = {}


def _check_cluster_children(children: Any) -> list[ClusterChildSpec]:
    if isinstance(children, (str, bytes)) or not isinstance(children, Iterable):
        raise LinxValueError(
            ("bad_children", children), f"children must be a list of cluster child specs, not {children!r}"
        )
    specs = [child if isinstance(child, ClusterChildSpec) else child_spec(child) for child in children]
    S.check_children([spec.spec for spec in specs])
    return specs


def start(
    children: Iterable[ClusterChildSpec | ChildSpec],
    *,
    strategy: str = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    events: Any = None,
    name: str | None = None,
) -> Tree:
    """Start a tree across the connected Ray cluster (``ray.init`` first) and return its handle
    once every child runs, each on a live node that fits its placement (a plain
    ``ChildSpec`` may go anywhere). If one cannot start, those started are stopped and this
    raises ``LinxError(("failed_to_start_child", id, reason))``. ``events`` (a ref or
    ``Mailbox`` on this driver) receives ``("linx_supervisor", kind, tree, child_id, detail,
    node_id)``. ``name`` (default: a fresh one) names the tree's Ray actors."""
    specs = _check_cluster_children(children)
    S.check_settings(strategy=strategy, max_restarts=max_restarts, max_seconds=max_seconds, events=events)
    if name is None:
        name = f"tree-{uuid.uuid4().hex[:12]}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
        raise LinxValueError(("bad_name", name), f"a tree name is 1-100 of A-Z a-z 0-9 _ . -, not {name!r}")
    shipped = [
        _Shipped(spec.id, spec.restart, spec.shutdown, spec.type, spec.placement, ship(spec.spec)) for spec in specs
    ]
    ray = _ray()
    if not ray.is_initialized():
        raise LinxError("ray_not_initialized", "connect to the cluster first: ray.init(address=...)")
    tree = Tree(name)
    try:
        tree.supervisor()
    except LinxError:
        pass
    else:
        raise LinxError(("already_started", name), f"a tree named {name!r} is running; stop it or pick another name")
    settings = _TreeSettings(name, strategy, max_restarts, float(max_seconds), events is not None)
    supervisor = _start_supervisor(settings, shipped)
    failure = ray.get(supervisor.start_failure.remote())
    if failure is not None:
        ray.kill(supervisor, no_restart=True)
        _wait_gone(_supervisor_name(name))
        child_id, reason = failure
        raise LinxError(("failed_to_start_child", child_id, reason), f"child {child_id!r} could not start: {reason!r}")
    if events is not None:
        _pumps[name] = _EventPump(tree, events)
    _wait_running(tree)
    return tree


def _wait_running(tree: Tree) -> None:
    """Wait until every child of a started tree runs (a crashing one may take its restarts), for
    up to ``RUNNING_WAIT_SECONDS``; after that the tree is left to its supervisor."""
    deadline = time.monotonic() + RUNNING_WAIT_SECONDS
    while time.monotonic() < deadline:
        if all(state == "running" for _, _, state, _ in which_children(tree)):
            return
        time.sleep(0.01)
    log.warning("tree %r: not every child runs after %s s", tree.name, RUNNING_WAIT_SECONDS)


def _start_supervisor(settings: _TreeSettings, shipped: list[_Shipped]) -> Any:
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        (node["NodeID"] for node in ray.nodes() if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {})),
        ray.get_runtime_context().get_node_id(),
    )
    return (
        _remote(ClusterSupervisor)
        .options(
            name=_supervisor_name(settings.name),
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_restarts=SUPERVISOR_RESTARTS,
            max_task_retries=-1,
            max_concurrency=16,
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False),
        )
        .remote(settings, shipped)
    )


def attach(name: str) -> Tree:
    """The handle of a running tree, by name (from any driver connected to the cluster)."""
    tree = Tree(name)
    tree.supervisor()
    return tree


def which_children(tree: Tree) -> list[tuple[Any, str | None, str, str]]:
    """``(id, node_id, state, kind)`` per child in start order; state ``"running"`` once that
    incarnation runs, ``"starting"`` or ``"down"`` otherwise; kind ``"worker"`` or ``"supervisor"``."""
    ray = _ray()
    try:
        return ray.get(tree.supervisor().which_children.remote())
    except ray.exceptions.RayActorError:
        raise LinxError("no_process", f"tree {tree.name!r}: its cluster supervisor is gone") from None


def _wait_gone(name: str, timeout: float = 30.0) -> None:
    ray = _ray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)
    raise LinxError(("still_there", name), f"the Ray actor {name!r} did not go within {timeout} s")


def stop(tree: Tree) -> None:
    """Stop the tree: every child by its shutdown spec in reverse start order, then every node
    host and the cluster supervisor; returns when none of them is left."""
    ray = _ray()
    pump = _pumps.pop(tree.name, None)
    try:
        supervisor = tree.supervisor()
    except LinxError:
        supervisor = None
    if supervisor is not None:
        try:
            ray.get(supervisor.stop.remote())
        except ray.exceptions.RayActorError:
            pass  # finished meanwhile (it gave up)
    if pump is not None:
        pump.close()
    if supervisor is not None:
        ray.kill(supervisor, no_restart=True)
    _wait_gone(_supervisor_name(tree.name))
    prefix = _host_name(tree.name, "")
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix):
            _stop_stray_host(entry["name"])
            _wait_gone(entry["name"])


def _stop_stray_host(name: str) -> None:
    """A node host the supervisor no longer knew (it had counted it lost): stop it as well."""
    ray = _ray()
    try:
        host = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return
    log.warning("stopping the node host %r, which its supervisor had counted lost", name)
    try:
        ray.get(host.shutdown.remote(), timeout=START_TIMEOUT_SECONDS)
    except ray.exceptions.RayError as error:
        log.warning("node host %r: %s", name, error)
    ray.kill(host, no_restart=True)


# -- tree files (`linx-otp run --ray ADDRESS TREE`) --------------------------------------------------


TREE_SUPERVISOR_KEYS = {"strategy", "max_restarts", "max_seconds"}
TREE_CHILD_KEYS = {"id", "argv", "namespaces", "env", "cwd", "stdio", "restart", "shutdown", "no_new_privs", "node"}
TREE_NODE_KEYS = {"id", "label", "labels", "resources"}


def _tree_error(file: str, where: str, what: str) -> LinxValueError:
    return LinxValueError(("bad_tree", file, where, what), f"{file}: {where}: {what}")


def parse_tree(text: str, file: str) -> tuple[dict[str, Any], list[ClusterChildSpec]]:
    """A cluster tree file: ``[supervisor]`` (strategy, max_restarts, max_seconds) and
    ``[[child]]`` workloads with spawn options, ``restart``, ``shutdown`` and a placement
    ``node = { id = "..." | label(s) = { k = "v" } | resources = { name = n } }``. Returns
    ``start``'s keywords and the children; raises ``LinxValueError(("bad_tree", file, where,
    what))`` and starts nothing.

    >>> settings, children = parse_tree('[[child]]\\nid = "a"\\nargv = ["true"]\\nnode = { labels = { zone = "b" } }', "t")
    >>> children[0].id, children[0].placement.labels
    ('a', (('zone', 'b'),))
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _tree_error(file, "toml", str(error)) from None
    unknown = set(document) - {"supervisor", "child"}
    if unknown:
        raise _tree_error(file, "top level", f"unknown tables {sorted(unknown)}; expected supervisor and child")
    settings = document.get("supervisor", {})
    if not isinstance(settings, dict) or set(settings) - TREE_SUPERVISOR_KEYS:
        raise _tree_error(file, "supervisor", f"expected a table of {sorted(TREE_SUPERVISOR_KEYS)}")
    try:
        S.check_settings(**settings)
    except LinxValueError as error:
        raise _tree_error(file, "supervisor", str(error)) from None
    entries = document.get("child", [])
    if not isinstance(entries, list) or not entries:
        raise _tree_error(file, "child", "a tree needs at least one [[child]]")
    children = []
    for index, entry in enumerate(entries):
        where = f"child[{index}]"
        if not isinstance(entry, dict):
            raise _tree_error(file, where, "expected a table")
        extra = set(entry) - TREE_CHILD_KEYS
        if extra:
            raise _tree_error(
                file, where, f"unknown keys {sorted(extra)}; a cluster child takes {sorted(TREE_CHILD_KEYS)}"
            )
        options = dict(entry)
        node = options.pop("node", {})
        if not isinstance(node, dict) or set(node) - TREE_NODE_KEYS:
            raise _tree_error(file, f"{where}.node", f"expected a table of {sorted(TREE_NODE_KEYS)}")
        labels = node.get("labels")
        if "label" in node:
            key, separator, value = str(node["label"]).partition("=")
            if not separator:
                raise _tree_error(file, f"{where}.node.label", f"a label is 'key=value', not {node['label']!r}")
            labels = {**(labels or {}), key: value}
        try:
            spec = P.child_spec(auto_proceed=True, **options)
            children.append(child_spec(spec, node=node.get("id"), labels=labels, resources=node.get("resources")))
        except LinxValueError as error:
            raise _tree_error(file, where, str(error)) from None
        except TypeError as error:
            raise _tree_error(file, where, str(error)) from None
    try:
        S.check_children([child.spec for child in children])
    except LinxValueError as error:
        raise _tree_error(file, "child", str(error)) from None
    return settings, children


def status_lines(tree: Tree) -> list[str]:
    """``which_children`` as the lines ``linx-otp status`` prints: id, kind, state, node."""
    return [f"{child_id}\t{kind}\t{state}\t{node_id or '-'}" for child_id, node_id, state, kind in which_children(tree)]


def run_tree(address: str, tree_file: str | Path, name: str | None = None, out: Any = None) -> int:
    """``linx-otp run --ray ADDRESS TREE``: connect to the cluster, start the tree (named after the
    file unless ``name`` is given), print its reports until SIGINT/SIGTERM or until it gives up,
    then stop it. Returns the exit status (0 stopped, 1 gave up or could not start, 2 bad tree file)."""
    out = sys.stdout if out is None else out
    path = Path(tree_file)
    try:
        settings, children = parse_tree(path.read_text(), str(path))
    except OSError as error:
        print(f"linx-otp: {path}: {error.strerror}", file=sys.stderr)
        return 2
    except LinxValueError as error:
        print(f"linx-otp: {error}", file=sys.stderr)
        return 2
    ray = _ray()
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    events = Mailbox()
    stopping = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stopping.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            tree = start(children, events=events, name=name or re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem), **settings)
        except LinxError as error:
            print(f"linx-otp: {path}: {error}", file=sys.stderr)
            return 1
        for line in status_lines(tree):
            print(line, file=out, flush=True)
        gave_up = False
        while not stopping.is_set() and not gave_up:
            try:
                event = events.receive(timeout=0.2)
            except TimeoutError:
                continue
            _, kind, _, child_id, detail, node_id = event
            print(f"{child_id}: {kind} {detail!r} on {node_id or '-'}", file=out, flush=True)
            gave_up = kind == "gave_up"
        stop(tree)
        return 1 if gave_up else 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        ray.shutdown()


def status(address: str, name: str, out: Any = None) -> int:
    """``linx-otp status --ray ADDRESS NAME``: print the tree's children with their nodes
    (``status_lines``); 1 if no such tree runs."""
    out = sys.stdout if out is None else out
    ray = _ray()
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    try:
        lines = status_lines(attach(name))
    except LinxError as error:
        print(f"linx-otp: {error}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    for line in lines:
        print(line, file=out)
    return 0


__all__ = [
    "ClusterChildSpec",
    "ClusterSupervisor",
    "NodeHost",
    "Placement",
    "Tree",
    "attach",
    "check_placement",
    "child_spec",
    "parse_tree",
    "run_tree",
    "ship",
    "start",
    "status",
    "status_lines",
    "stop",
    "which_children",
]
