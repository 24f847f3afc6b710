"""The ``linx-otp run`` daemon: runs a declared tree in the foreground until told to stop.

It starts the tree's supervisors, prints one line per lifecycle event (or one JSON object with
``--json``), applies each child's declared checkpoint setup when it reaches ``ready`` (uid/gid
maps, hostname, veth, cgroup) and then proceeds it, prefixes captured output with the child's
id (or appends it to the child's log file), and serves the control socket. SIGINT or SIGTERM
stops the tree gracefully and exits 0; a tree that gives up exits 1.

Events from every session and supervisor land in one mailbox that the main thread works
through, so the bookkeeping needs no locks beyond the one the control thread reads under.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import pykka

from . import cgroup as Cgroup
from . import mount as Mount
from . import netlink as Netlink
from . import process as P
from . import supervisor as S
from . import tty
from . import user as User
from .actor import monitor
from .errors import LinxError
from .mailbox import Mailbox
from .tree import Group, Tree, Workload

ROOT_ID = "root"


def default_control_path() -> str:
    """Where the control socket lives unless ``--control`` says otherwise."""
    if "LINX_OTP_CONTROL" in os.environ:
        return os.environ["LINX_OTP_CONTROL"]
    if os.geteuid() == 0:
        return "/run/linx-otp/control.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/linx-otp-{os.getuid()}"
    return f"{runtime}/linx-otp.sock"


class _ChildOwner:
    """The owner of one child's sessions (every incarnation): tags events with the id."""

    def __init__(self, child_id: str, inbox: Mailbox) -> None:
        self.child_id, self.inbox = child_id, inbox

    def tell(self, message: Any) -> None:
        self.inbox.tell(("child", self.child_id, message))


@dataclass
class _Record:
    """What ``status`` shows for one child."""

    kind: str
    state: str = "starting"
    host_pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit: Any = None


class Daemon:
    def __init__(
        self, tree: Tree, *, json_output: bool = False, control_path: str | None = None, out: TextIO = sys.stdout
    ) -> None:
        self.tree = tree
        self.json_output = json_output
        self.out = out
        self.inbox = Mailbox()
        self.control_path = control_path or default_control_path()
        self.workloads = {workload.id: workload for workload in tree.workloads()}
        self.records: dict[str, _Record] = {}
        self.lock = threading.Lock()
        self.cgroups: dict[str, Cgroup.Cgroup] = {}
        self.root: pykka.ActorRef | None = None
        self.stopping = False
        self.output = _Output(self)

    # -- building the tree -------------------------------------------------------------------

    def _spec(self, child: Workload | Group) -> Any:
        if isinstance(child, Group):
            self.records[child.id] = _Record("supervisor")
            return S.child_spec(
                [self._spec(grandchild) for grandchild in child.children],
                id=child.id,
                restart=child.restart,
                shutdown=child.shutdown,
                events=self.inbox,
                **child.settings,
            )
        self.records[child.id] = _Record("worker")
        return P.child_spec(owner=_ChildOwner(child.id, self.inbox), auto_proceed=not child.setup, **child.options)

    def start(self) -> None:
        specs = [self._spec(child) for child in self.tree.children]
        self.root = S.start(specs, id=ROOT_ID, events=self.inbox, **self.tree.settings)
        monitor(self.root, self.inbox)
        _ControlServer(self).start()

    # -- the main loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Run until a signal (exit 0) or until the tree gives up (exit 1)."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.report("tree", "starting", self.tree.file)
        try:
            self.start()
        except LinxError as error:
            self.report("tree", "failed_to_start", str(error))
            self.cleanup()
            return 1
        self.report("tree", "up", f"{len(self.workloads)} workloads; control socket {self.control_path}")
        code = None
        while code is None:
            try:
                message = self.inbox.receive(timeout=0.5)
            except TimeoutError:
                continue
            code = self.handle(message)
        self.cleanup()
        return code

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.inbox.tell(("signal", signum))

    def handle(self, message: Any) -> int | None:
        match message:
            case ("signal", signum):
                self.report("tree", "stopping", f"signal {signal.Signals(signum).name}")
                self.stop_tree()
                return 0
            case ("shutdown",):
                self.report("tree", "stopping", "shutdown requested over the control socket")
                self.stop_tree()
                return 0
            case ("DOWN", ref, reason) if ref == self.root:
                if self.stopping:
                    return 0
                self.report("tree", "gave_up", reason)
                return 1
            case ("linx_supervisor", kind, _, child_id, detail):
                self.supervisor_event(kind, child_id, detail)
            case ("child", child_id, ("linx_process", kind, *detail)):
                self.child_event(child_id, kind, detail)
        return None

    def supervisor_event(self, kind: str, child_id: str, detail: Any) -> None:
        with self.lock:
            record = self.records.get(child_id)
            if record is not None:
                if kind in ("started", "restarted"):
                    record.started_at = time.time()
                    record.state = "running" if record.kind == "supervisor" else record.state
                    record.restarts += kind == "restarted"
                elif kind in ("exited", "stopped"):
                    record.state = "stopped" if kind == "stopped" else "exited"
                    record.last_exit = detail
                    record.host_pid = None
        worker = record is not None and record.kind == "worker"
        if kind in ("restarted", "gave_up", "start_failed") or (kind in ("exited", "stopped") and not worker):
            self.report(child_id, kind, detail if kind != "restarted" else "")  # a worker's own events say the rest

    def child_event(self, child_id: str, kind: str, detail: list) -> None:
        if kind in ("stdout", "stderr", "pty_out"):
            self.output.write(child_id, kind, detail[0])
            return
        with self.lock:
            record = self.records[child_id]
            record.state = kind
            if kind == "ready":
                record.host_pid = detail[0]
        self.report(child_id, kind, detail[0] if len(detail) == 1 else tuple(detail) if detail else "")
        workload = self.workloads[child_id]
        if kind == "ready" and workload.setup:
            self.apply_setup(workload, detail[0])
        elif kind in P.TERMINAL_EVENTS:
            self.output.flush(child_id)
            if child_id in self.cgroups:
                self.release_cgroup(child_id)

    # -- checkpoint setup ----------------------------------------------------------------------

    def apply_setup(self, workload: Workload, pid: int) -> None:
        setup = workload.setup
        session = self.find_session(workload.id)
        try:
            if setup.uid_map is not None:  # the tree file gives both maps or neither
                User.setup_maps(pid, uid=setup.uid_map, gid=setup.gid_map)
            if setup.hostname is not None:
                Mount.hostname(setup.hostname, in_pid=pid)
            if setup.veth is not None:
                veth = setup.veth
                with Netlink.open() as host:  # the last incarnation's pair may not be torn down yet
                    Netlink.delete_link(host, veth["host"], missing_ok=True)
                Netlink.setup_veth(
                    pid,
                    host_name=veth["host"],
                    address=veth["address"],
                    prefixlen=veth["prefixlen"],
                    gateway=veth.get("gateway"),
                    host_address=veth.get("host_address"),
                )
            if setup.cgroup is not None:
                cgroup = Cgroup.create(f"linx-otp-{workload.id}", **setup.cgroup)
                self.cgroups[workload.id] = cgroup
                Cgroup.add_process(cgroup, pid)
            if session is not None:
                P.proceed(session)
        except LinxError as error:
            self.report(workload.id, "setup_failed", str(error))
            if session is not None:
                try:
                    P.abort(session)
                except LinxError:
                    pass

    def release_cgroup(self, child_id: str) -> None:
        try:
            Cgroup.destroy(self.cgroups.pop(child_id), kill_first=True)
        except LinxError as error:
            self.report(child_id, "cgroup_left", str(error))

    def locate(self, child_id: str) -> tuple[pykka.ActorRef, pykka.ActorRef | None]:
        """The supervisor holding ``child_id`` and its current ref (None while stopped)."""

        def search(supervisor: pykka.ActorRef) -> tuple[pykka.ActorRef, pykka.ActorRef | None] | None:
            for found_id, ref, kind in S.which_children(supervisor):
                if found_id == child_id:
                    return supervisor, ref
                if kind == "supervisor" and ref is not None:
                    inner = search(ref)
                    if inner is not None:
                        return inner
            return None

        found = search(self.root) if self.root is not None else None
        if found is None:
            raise LinxError("not_found", f"no child {child_id!r} in the tree")
        return found

    def find_session(self, child_id: str) -> pykka.ActorRef | None:
        """The current session of ``child_id``, or None."""
        try:
            return self.locate(child_id)[1]
        except LinxError:
            return None

    # -- stopping ------------------------------------------------------------------------------

    def stop_tree(self) -> None:
        self.stopping = True
        if self.root is not None:
            S.stop(self.root)
        while True:  # the terminal events of the stop, for the log and the cgroups
            try:
                message = self.inbox.receive(timeout=0)
            except TimeoutError:
                break
            if message[0] in ("child", "linx_supervisor"):
                self.handle(message)
        self.report("tree", "stopped", "")

    def cleanup(self) -> None:
        for child_id in list(self.cgroups):
            self.release_cgroup(child_id)
        self.output.close()
        try:
            os.unlink(self.control_path)
        except OSError:
            pass

    # -- reporting -------------------------------------------------------------------------------

    def report(self, child_id: str, kind: str, detail: Any) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.json_output:
            line = json.dumps({"time": time.time(), "id": child_id, "event": kind, "detail": _jsonable(detail)})
        else:
            line = f"{stamp} {child_id:>12} | {kind}{' ' + str(detail) if detail not in ('', None) else ''}"
        self.write_line(line)

    def write_line(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            return [
                {
                    "id": child_id,
                    "kind": record.kind,
                    "state": record.state,
                    "host_pid": record.host_pid,
                    "restarts": record.restarts,
                    "uptime": round(now - record.started_at, 1)
                    if record.started_at and record.state in ("running", "ready")
                    else None,
                    "last_exit": _jsonable(record.last_exit),
                }
                for child_id, record in self.records.items()
            ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return repr(value)


class _Output:
    """Captured output, arriving as events: each complete line is printed with its child's id
    as prefix (like foreman/honcho; ``!`` marks stderr) or appended to the child's log file."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.partial: dict[tuple[str, str], bytes] = {}
        self.logs: dict[str, BinaryIO] = {}

    def write(self, child_id: str, stream: str, data: bytes) -> None:
        path = self.daemon.workloads[child_id].log
        if path is not None:
            if child_id not in self.logs:  # opened once, kept for the daemon's life
                self.logs[child_id] = open(path, "ab", buffering=0)
            self.logs[child_id].write(data)
            return
        complete, _, rest = (self.partial.pop((child_id, stream), b"") + data).rpartition(b"\n")
        if rest:
            self.partial[(child_id, stream)] = rest
        if complete or data.endswith(b"\n"):
            self._print(child_id, stream, complete)

    def flush(self, child_id: str) -> None:
        """At the child's outcome: print what it left without a final newline."""
        for stream in ("stdout", "stderr", "pty_out"):
            rest = self.partial.pop((child_id, stream), b"")
            if rest:
                self._print(child_id, stream, rest)

    def close(self) -> None:
        for log in self.logs.values():
            log.close()

    def _print(self, child_id: str, stream: str, text: bytes) -> None:
        for line in text.decode(errors="replace").replace("\r\n", "\n").split("\n"):
            self.daemon.write_line(f"{child_id:>12} {'!' if stream == 'stderr' else '|'} {line}")


class _ControlServer:
    """The control socket: one JSON request per connection, answered with one JSON line.
    Mode 0600 and a SO_PEERCRED check: only this daemon's uid may use it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        path = Path(daemon.control_path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            if _answers(str(path)):
                raise LinxError("control_in_use", f"another linx-otp daemon answers at {path}; use --control")
            path.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o177)
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old_mask)
        os.chmod(path, 0o600)
        self.listener.listen(16)

    def start(self) -> None:
        threading.Thread(target=self._serve, name="linx-otp-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            connection, _ = self.listener.accept()
            threading.Thread(
                target=self._answer, args=(connection,), name="linx-otp-control-client", daemon=True
            ).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            pid, uid, gid = struct.unpack(
                "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            )
            if uid != os.getuid():
                _send(
                    connection,
                    {"ok": False, "error": f"uid {uid} may not control this daemon (it runs as uid {os.getuid()})"},
                )
                return
            message, fds, _, _ = socket.recv_fds(connection, 65536, 1)
            try:
                request = json.loads(message.decode())
                result = self.dispatch(request, fds, lambda note: _send(connection, {"ok": True, "note": note}))
                _send(connection, {"ok": True, "result": result})
            except (LinxError, ValueError, KeyError) as error:
                _send(connection, {"ok": False, "error": str(error)})
            finally:
                for fd in fds:
                    os.close(fd)

    def dispatch(self, request: dict, fds: list[int], note: Any) -> Any:
        daemon, verb, child_id = self.daemon, request["verb"], request.get("id")
        if verb == "status":
            return daemon.status()
        if verb == "shutdown":
            daemon.inbox.tell(("shutdown",))
            return "stopping"
        if child_id not in daemon.records:
            raise LinxError("not_found", f"no child {child_id!r} in the tree")
        supervisor = daemon.locate(child_id)[0]
        if verb == "stop":
            S.terminate_child(supervisor, child_id)
            return "stopped"
        if verb == "start":
            S.restart_child(supervisor, child_id)
            return "started"
        if verb == "restart":
            S.terminate_child(supervisor, child_id)
            S.restart_child(supervisor, child_id)
            return "restarted"
        if verb == "attach":
            session = daemon.find_session(child_id)
            if session is None or not fds:
                raise LinxError("not_running", f"{child_id} is not running, or no terminal was passed")
            return _jsonable(tty.attach(session, terminal=fds[0], on_attached=lambda: note("attached")))
        raise LinxError(("bad_verb", verb), f"unknown verb {verb!r}")


def _send(connection: socket.socket, answer: dict) -> None:
    try:
        connection.sendall(json.dumps(answer).encode() + b"\n")
    except OSError:
        pass


def _answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(path)
        return True
    except OSError:
        return False
