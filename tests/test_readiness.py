"""Readiness (README, "Readiness: `ready`"; issue 14, item 3): a child with a ``ready`` check
counts as started only once it passes, so the next child waits for it. Through the real command
line (the daemon as a subprocess, real sockets, namespaces and files, short time-outs), and
through ``P.child_spec(ready=...)`` under a supervisor."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import test_cli
from support import descendant_pids, needs_root, process_alive, run_scoped_name, wait_until
from test_cli import COMMAND, TIMEOUT, write_tree

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.actor import ChildSpec
from linx_otp.daemon.tree import parse_text
from linx_otp.errors import LinxError, LinxValueError
from linx_otp.readiness import Readiness

running = test_cli.running  # the fixture, shared

README = Path(__file__).resolve().parent.parent / "README.md"

LISTENER = """
import os, socket, time
while not os.path.exists("{go}"):
    time.sleep(0.02)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", {port}))
server.listen()
with open("{stamp}", "w") as stamp:
    stamp.write(repr(time.time()))
while True:
    server.accept()[0].close()
"""
"""A server that listens on a port once the file ``go`` exists and writes the time it did to ``stamp``."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listener(port: int, stamp: Path, go: Path, loopback_up: bool = False) -> str:
    """The listener's argv as TOML; ``loopback_up`` first brings up ``lo``, which a fresh network
    namespace has down."""
    code = LISTENER.format(port=port, stamp=stamp, go=go)
    if loopback_up:
        return json.dumps(["sh", "-c", 'ip link set lo up && exec python3 -c "$0"', code])
    return json.dumps(["python3", "-c", code])


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone meanwhile


def events(daemon: test_cli.Running) -> list[dict]:
    """The daemon's ``--json`` event objects so far (captured output lines are left out)."""
    found = []
    for line in list(daemon.lines):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


def first(daemon: test_cli.Running, child_id: str, kind: str) -> dict | None:
    return next((e for e in events(daemon) if e["id"] == child_id and e["event"] == kind), None)


# -- tcp: the next sibling waits; status says starting, then running --------------------------------


def test_a_tcp_check_holds_back_the_next_sibling_and_status_shows_starting_then_running(tmp_path, running):
    port, stamp = free_port(), tmp_path / "listened"
    tree = f"""
        [[child]]
        id = "web"
        argv = {listener(port, stamp, tmp_path / "go")}
        ready = {{ tcp = "127.0.0.1:{port}", timeout = 15, interval = 0.05 }}

        [[child]]
        id = "client"
        argv = ["sleep", "600"]
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert wait_until(lambda: first(daemon, "web", "running") is not None, TIMEOUT), daemon.lines
    waiting = daemon.status()
    assert not stamp.exists(), "the status must be seen while web has not listened yet"
    assert (waiting["web"]["state"], waiting["web"]["ready"], waiting["web"]["readiness"]) == (
        "starting",
        False,
        f"tcp 127.0.0.1:{port}",
    )
    assert waiting["web"]["host_pid"] is not None
    assert (waiting["client"]["state"], waiting["client"]["host_pid"]) == ("starting", None)  # not started at all
    table = daemon.control_command("status").stdout.splitlines()
    assert re.match(rf"web +worker +starting +no +tcp 127\.0\.0\.1:{port} +\d+ ", table[1]), table
    (tmp_path / "go").touch()  # now web listens

    assert wait_until(lambda: first(daemon, "client", "running") is not None, TIMEOUT), daemon.lines
    listened = float(stamp.read_text())
    ready, client = first(daemon, "web", "ready"), first(daemon, "client", "checkpoint")
    assert ready is not None and client is not None
    print(f"port opened {listened:.3f}, web ready {ready['time']:.3f}, client at its checkpoint {client['time']:.3f}")
    assert listened <= ready["time"] <= client["time"]  # the client started only once the port was open
    assert ready["time"] - listened < 1.0  # tried every 0.05 s: it noticed soon
    assert re.fullmatch(rf"tcp 127\.0\.0\.1:{port} passed \d+\.\d\d s after it ran", ready["detail"])
    up = next(e for e in events(daemon) if e["id"] == "tree" and e["event"] == "up")
    assert up["time"] >= ready["time"]
    after = daemon.status()
    assert (after["web"]["state"], after["web"]["ready"]) == ("running", True)
    assert (after["client"]["state"], after["client"]["ready"], after["client"]["readiness"]) == ("running", True, None)
    assert daemon.stop() == 0


# -- file: as the child sees it, in its own mount namespace -------------------------------------------


@needs_root
def test_a_file_check_looks_in_the_childs_own_mount_namespace(tmp_path, running):
    name = f"ready-{uuid.uuid4().hex[:8]}"
    tree = f"""
        [[child]]
        id = "private"
        argv = ["sh", "-c", "sleep 0.5; touch /mnt/{name}; exec sleep 600"]
        namespaces = ["mount"]
        ready = {{ file = "/mnt/{name}", timeout = 10, interval = 0.05 }}
        [child.setup]
        mounts = [{{ target = "/mnt", type = "tmpfs" }}]

        [[child]]
        id = "after"
        argv = ["sleep", "600"]
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert wait_until(lambda: first(daemon, "after", "running") is not None, TIMEOUT), daemon.lines
    ready = first(daemon, "private", "ready")
    assert ready is not None and ready["detail"].startswith(f"file /mnt/{name} passed ")
    seconds = float(ready["detail"].split(" passed ")[1].split(" s ")[0])
    assert seconds >= 0.4  # not before the child made it
    assert not Path("/mnt", name).exists()  # the host never had the file: the child's view was checked
    assert daemon.status()["private"]["state"] == "running"
    assert daemon.stop() == 0


# -- command: run inside the child's namespaces --------------------------------------------------------


@needs_root
def test_a_command_check_runs_inside_the_childs_network_namespace(tmp_path, running):
    port, stamp = free_port(), tmp_path / "listened"
    probe = ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"]
    tree = f"""
        [[child]]
        id = "hidden"
        argv = {listener(port, stamp, tmp_path / "go", loopback_up=True)}
        namespaces = ["net"]
        ready = {{ command = {json.dumps(probe)}, timeout = 15, interval = 0.1 }}

        [[child]]
        id = "after"
        argv = ["sleep", "600"]
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert wait_until(lambda: first(daemon, "hidden", "running") is not None, TIMEOUT), daemon.lines
    time.sleep(0.5)  # a few tries that find nothing listening yet
    assert first(daemon, "hidden", "ready") is None
    (tmp_path / "go").touch()
    assert wait_until(lambda: first(daemon, "after", "running") is not None, TIMEOUT), daemon.lines
    listened, ready = float(stamp.read_text()), first(daemon, "hidden", "ready")
    assert ready is not None and listened <= ready["time"] <= first(daemon, "after", "checkpoint")["time"]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass  # the port is open only inside the child's network namespace
    assert not [
        pid for pid in descendant_pids(daemon.process.pid) if command_line(pid).startswith(b"python3\0-c\0import")
    ]
    assert daemon.stop() == 0


# -- not ready in time: a failed start, with the reason -------------------------------------------------


def test_a_check_that_does_not_pass_in_time_fails_the_start_and_says_why(tmp_path, running):
    port = free_port()  # nothing listens there
    tree = f"""
        [[child]]
        id = "web"
        argv = ["sleep", "600"]
        ready = {{ tcp = "127.0.0.1:{port}", timeout = 1, interval = 0.1 }}

        [[child]]
        id = "client"
        argv = ["sleep", "600"]
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert daemon.process.wait(TIMEOUT) == 1
    daemon._reader.join(5)
    ran, failed = first(daemon, "web", "running"), first(daemon, "web", "start_failed")
    assert failed is not None, daemon.lines
    reason = f"not ready: tcp 127.0.0.1:{port} did not pass within 1 s (last try: connection refused)"
    assert failed["detail"] == reason
    assert 0.9 <= failed["time"] - ran["time"] < 2.0
    tree_failed = next(e for e in events(daemon) if e["event"] == "failed_to_start")
    assert tree_failed["detail"] == f"child 'web': {reason}"
    assert not [e for e in events(daemon) if e["id"] == "client"]  # never started
    web_pid = first(daemon, "web", "checkpoint")["detail"]
    assert not process_alive(web_pid)  # stopped by its shutdown spec
    assert not [line for line in daemon.lines if "Traceback" in line]


ONLY_THE_FIRST_INCARNATION_MAKES_THE_FILE = (
    "if [ ! -e {mark} ]; then touch {mark} {ready_file}; fi; exec sleep 600"  # and nobody removes it
)
"""A workload that is ready the first time, and whose restarts leave the first one's file as it was."""

STALE = "(last try: it is older than this start (changed "
"""Why a file left from before the incarnation started does not pass."""


def test_a_restart_that_is_not_ready_in_time_is_a_failed_restart(tmp_path, running):
    mark, ready_file = tmp_path / "ran-once", tmp_path / "ready"
    script = ONLY_THE_FIRST_INCARNATION_MAKES_THE_FILE.format(mark=mark, ready_file=ready_file)
    tree = f"""
        [supervisor]
        max_restarts = 2
        max_seconds = 30.0

        [[child]]
        id = "flaky"
        argv = ["sh", "-c", "{script}"]
        ready = {{ file = "{ready_file}", timeout = 0.5, interval = 0.05 }}
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert wait_until(lambda: first(daemon, "tree", "up") is not None, TIMEOUT), daemon.lines
    os.kill(daemon.status()["flaky"]["host_pid"], 9)
    assert daemon.process.wait(TIMEOUT) == 1  # each failed restart counted: past 2 in 30 s, it gives up
    daemon._reader.join(5)
    kinds = [e["event"] for e in events(daemon) if e["id"] == "flaky"]
    assert kinds.count("ready") == 1 and kinds.count("start_failed") >= 2, kinds
    assert first(daemon, "flaky", "gave_up") is not None
    assert "did not pass within 0.5 s " + STALE in first(daemon, "flaky", "start_failed")["detail"]


def test_restart_over_the_control_socket_answers_once_ready_or_says_why_not(tmp_path, running):
    mark, ready_file = tmp_path / "ran-once", tmp_path / "ready"
    script = ONLY_THE_FIRST_INCARNATION_MAKES_THE_FILE.format(mark=mark, ready_file=ready_file)
    tree = f"""
        [[child]]
        id = "flaky"
        argv = ["sh", "-c", "{script}"]
        ready = {{ file = "{ready_file}", timeout = 0.5, interval = 0.05 }}
    """
    daemon = running(write_tree(tmp_path, tree))
    assert daemon.shows(r"tree \| up"), daemon.lines
    restart = daemon.control_command("restart", "flaky")  # the new incarnation never makes the file
    assert restart.returncode == 2
    assert "not ready: file " in restart.stderr and "did not pass within 0.5 s " + STALE in restart.stderr
    flaky = daemon.status()["flaky"]
    assert (flaky["state"], flaky["ready"], flaky["host_pid"]) == ("stopped", False, None)
    assert flaky["last_exit"].startswith("not ready: file ")
    assert daemon.stop() == 0


def ready_only_once(tmp_path: Path) -> str:
    """A tree whose one child, ``flaky``, passes its 60 s file check in its first incarnation only:
    any restart then waits the whole minute for it."""
    script = ONLY_THE_FIRST_INCARNATION_MAKES_THE_FILE.format(mark=tmp_path / "ran-once", ready_file=tmp_path / "ready")
    return f"""
        [[child]]
        id = "flaky"
        argv = ["sh", "-c", "{script}"]
        ready = {{ file = "{tmp_path / "ready"}", timeout = 60 }}
    """


def test_stop_of_a_child_that_waits_for_its_check_after_a_restart_is_prompt(tmp_path, running):
    daemon = running(write_tree(tmp_path, ready_only_once(tmp_path)), "--json")
    assert wait_until(lambda: first(daemon, "tree", "up") is not None, TIMEOUT), daemon.lines
    os.kill(daemon.status()["flaky"]["host_pid"], 9)  # restarted, and now waits for a file that never comes
    assert wait_until(lambda: len([e for e in events(daemon) if e["event"] == "checkpoint"]) == 2, TIMEOUT)
    waiting = daemon.status()["flaky"]
    assert (waiting["state"], waiting["ready"]) == ("starting", False)
    began = time.monotonic()
    stop = daemon.control_command("stop", "flaky")
    print(f"stop answered in {time.monotonic() - began:.2f} s")
    assert stop.returncode == 0 and stop.stdout.strip() == "stopped", stop.stderr
    assert time.monotonic() - began < 10.0  # not the check's 60 s
    stopped = daemon.status()["flaky"]
    assert (stopped["state"], stopped["host_pid"]) == ("stopped", None) and not process_alive(waiting["host_pid"])
    assert daemon.stop() == 0


def test_stop_of_a_child_whose_requested_restart_waits_for_its_check_is_prompt(tmp_path, running):
    """A `restart` asked over the control socket waits for the new incarnation's check (60 s
    here); a `stop` of that child meanwhile does not wait behind it, and cuts it short."""
    daemon = running(write_tree(tmp_path, ready_only_once(tmp_path)), "--json")
    assert wait_until(lambda: first(daemon, "tree", "up") is not None, TIMEOUT), daemon.lines
    restart = subprocess.Popen(
        [*COMMAND, "restart", "flaky", "--control", str(daemon.control)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert wait_until(lambda: len([e for e in events(daemon) if e["event"] == "checkpoint"]) == 2, TIMEOUT)
        began = time.monotonic()
        stop = daemon.control_command("stop", "flaky")
        assert stop.returncode == 0 and stop.stdout.strip() == "stopped", stop.stderr
        assert time.monotonic() - began < 10.0  # not the check's 60 s
        assert restart.wait(TIMEOUT) != 0  # the restart it cut short says it failed
        assert daemon.status()["flaky"]["state"] == "stopped"
    finally:
        if restart.poll() is None:
            restart.kill()
        restart.wait()
    assert daemon.stop() == 0


def test_a_file_made_before_the_start_passes_once_the_child_changes_it(tmp_path, running):
    ready_file = tmp_path / "ready"
    ready_file.touch()  # left from an earlier run: not a sign that this one is ready
    tree = f"""
        [[child]]
        id = "touches"
        argv = ["sh", "-c", "sleep 0.4; touch {ready_file}; exec sleep 600"]
        ready = {{ file = "{ready_file}", timeout = 10, interval = 0.05 }}
    """
    daemon = running(write_tree(tmp_path, tree), "--json")
    assert wait_until(lambda: first(daemon, "touches", "ready") is not None, TIMEOUT), daemon.lines
    waited = float(re.search(r"passed ([\d.]+) s", first(daemon, "touches", "ready")["detail"])[1])
    assert waited >= 0.3, waited  # not at the first look: only once the child touched it
    assert daemon.stop() == 0


# -- a stop while a child waits for its check is prompt -------------------------------------------------


def test_sigterm_while_a_child_waits_for_its_check_stops_at_once(tmp_path, running):
    tree = f"""
        [[child]]
        id = "slow"
        argv = ["sleep", "600"]
        ready = {{ file = "{tmp_path / "never"}", timeout = 60 }}
    """
    daemon = running(write_tree(tmp_path, tree))
    assert daemon.shows(r"slow \| running"), daemon.lines
    pid = daemon.status()["slow"]["host_pid"]
    began = time.monotonic()
    assert daemon.stop() == 0
    print(f"stopped in {time.monotonic() - began:.2f} s")
    assert time.monotonic() - began < 5.0  # not the check's 60 s
    assert daemon.lines[-1].endswith("tree | stopped") and not process_alive(pid)


# -- systemd hears READY=1 only once every child is ready -----------------------------------------------


def test_systemd_hears_ready_only_once_every_child_is_ready(tmp_path):
    port, stamp = free_port(), tmp_path / "listened"
    address = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(address))
    systemd.settimeout(TIMEOUT)
    tree = f"""
        [[child]]
        id = "web"
        argv = {listener(port, stamp, tmp_path / "go")}
        ready = {{ tcp = "127.0.0.1:{port}", timeout = 15, interval = 0.05 }}
    """
    daemon = subprocess.Popen(
        [*COMMAND, "run", write_tree(tmp_path, tree), "--control", str(tmp_path / "c.sock")],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": str(address)},
    )
    try:
        time.sleep(1.0)  # nothing heard while web does not listen
        systemd.setblocking(False)
        with pytest.raises(BlockingIOError):
            systemd.recv(4096)
        systemd.settimeout(TIMEOUT)
        (tmp_path / "go").touch()
        first_message = systemd.recv(4096).decode()
        heard_at = time.time()
        assert first_message.startswith("READY=1\n") and "STATUS=1 of 1 workloads running" in first_message
        assert float(stamp.read_text()) <= heard_at
        daemon.terminate()
        assert daemon.wait(TIMEOUT) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        systemd.close()


def test_the_tree_is_up_and_systemd_hears_ready_only_once_every_workload_runs(tmp_path):
    """Without readiness checks a child counts as started once its session is; its workload may
    still be at its checkpoint then. "up" and READY=1 wait until every workload runs."""
    address = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(address))
    systemd.settimeout(TIMEOUT)
    children = "".join(
        f'\n[[child]]\nid = "w{number}"\nargv = ["sleep", "600"]\nnamespaces = ["net", "mount"]\n'
        for number in range(6)
    )  # a fresh network namespace takes a while: the last workloads run well after their sessions start
    daemon = subprocess.Popen(
        [*COMMAND, "run", write_tree(tmp_path, children), "--control", str(tmp_path / "c.sock"), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": str(address)},
    )
    try:
        heard = [systemd.recv(4096).decode()]
        while "READY=1" not in heard[-1]:  # STATUS lines may come before it
            heard.append(systemd.recv(4096).decode())
        assert "STATUS=6 of 6 workloads running" in heard[-1], heard
        said = []
        for line in daemon.stdout:
            event = json.loads(line)
            said.append((event["id"], event["event"]))
            if event["event"] == "up":
                break
        assert all(said.index((f"w{number}", "running")) < said.index(("tree", "up")) for number in range(6)), said
        daemon.terminate()
        assert daemon.wait(TIMEOUT) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        systemd.close()


# -- the demo: the client waits for web --------------------------------------------------------------


@needs_root
def test_the_demo_client_starts_once_web_answers(running):
    demo = running(None, "--name", run_scoped_name("ready")[:12], "--json")
    assert wait_until(lambda: any("web answered: hello from web" in line for line in demo.lines), TIMEOUT), demo.lines
    ready, client = first(demo, "web", "ready"), first(demo, "client", "checkpoint")
    assert ready is not None and client is not None and ready["time"] <= client["time"]
    assert re.fullmatch(r"tcp 10\.78\.\d+\.2:8080 passed \d+\.\d\d s after it ran", ready["detail"])
    assert not any("web is not answering yet" in line for line in demo.lines)  # its first poll was answered
    assert demo.status()["web"]["readiness"].startswith("tcp 10.78.")
    assert demo.stop() == 0


# -- bad ready tables: every key path, nothing started ----------------------------------------------


def test_bad_ready_tables_are_refused_with_their_key_paths_and_nothing_starts(tmp_path):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "a"
        argv = ["true"]
        ready = { tcp = "127.0.0.1:70000", timeout = 0, interval = "fast", colour = "red" }

        [[child]]
        id = "b"
        argv = ["true"]
        ready = { file = "/ready", command = ["true"] }

        [[child]]
        id = "f"
        argv = ["true"]
        ready = { file = "relative/path" }

        [[child]]
        id = "c"
        argv = ["true"]
        ready = { command = [], timeout = nan }

        [[child]]
        id = "d"
        argv = ["true"]
        ready = { file = "/ok", timeout = 1, interval = 2 }

        [[child]]
        id = "e"
        argv = ["true"]
        ready = "tcp"
        """,
    )
    control = tmp_path / "c.sock"
    result = subprocess.run(
        [*COMMAND, "run", tree, "--control", str(control)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    expected = {
        "child[0].ready.colour": "unknown key; expected one of: command, file, interval, tcp, timeout",
        "child[0].ready.tcp": "tcp is 'HOST:PORT'",
        "child[0].ready.timeout": "timeout is a number of seconds, more than 0",
        "child[0].ready.interval": "interval is a number of seconds, more than 0",
        "child[1].ready": "ready takes exactly one of tcp, file or command, not file and command",
        "child[2].ready.file": "file is an absolute path",
        "child[3].ready.command": "command is a non-empty list of strings",
        "child[3].ready.timeout": "not nan",
        "child[4].ready": "interval (2 s) must not be longer than timeout (1 s)",
        "child[5].ready": "expected a table",
    }
    for where, what in expected.items():
        assert re.search(rf"tree\.toml: {re.escape(where)}: .*{re.escape(what)}", result.stderr), (where, result.stderr)
    assert not control.exists() and result.stdout == ""  # nothing started


def test_one_probe_exactly():
    with pytest.raises(LinxValueError, match="exactly one of tcp, file or command, not file and command"):
        Readiness(file="/a", command=("true",))
    with pytest.raises(LinxValueError, match="not none"):
        Readiness(timeout=1)


def test_the_readme_examples_parse():
    section = README.read_text().split("### Readiness: `ready`", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    assert blocks
    for block in blocks:
        tree = parse_text(block, "README.md")
        assert any(child.ready is not None for child in tree.children)


# -- the Python API: child_spec(ready=...) under a supervisor ------------------------------------------


def test_child_spec_takes_the_same_forms_and_the_supervisor_waits(tmp_path):
    port, stamp = free_port(), tmp_path / "listened"
    box = linx_otp.Mailbox()
    (tmp_path / "go").touch()
    code = LISTENER.format(port=port, stamp=stamp, go=tmp_path / "go")
    specs = [
        P.child_spec(
            id="web",
            argv=[sys.executable, "-c", code],
            auto_proceed=True,
            owner=box,
            ready={"tcp": f"127.0.0.1:{port}", "timeout": 10, "interval": 0.05},
        ),
        P.child_spec(
            id="after", argv=["sleep", "60"], auto_proceed=True, owner=box, ready=Readiness(command=("true",))
        ),
    ]
    tree = S.start(specs, events=box)
    try:
        reports = [m for m in box.flush() if m[0] == "linx_supervisor"]
        assert [(kind, child) for _, kind, _, child, _ in reports] == [
            ("started", "web"),
            ("ready", "web"),
            ("started", "after"),
            ("ready", "after"),
        ]
        assert stamp.exists()  # start returned after the port opened
    finally:
        S.stop(tree)


def test_child_spec_refuses_a_bad_ready_before_anything_starts():
    before = descendant_pids()
    with pytest.raises(LinxValueError, match="tcp is 'HOST:PORT'"):
        P.child_spec(id="x", argv=["true"], ready={"tcp": "localhost"})
    with pytest.raises(LinxValueError, match="ready is a Readiness or a mapping"):
        P.child_spec(id="x", argv=["true"], ready={"tcp": "127.0.0.1:1", "colour": 1})
    with pytest.raises(LinxValueError, match="ready must be None or a callable"):
        ChildSpec(id="x", start=lambda: None, ready="tcp")  # type: ignore[arg-type]
    assert descendant_pids() == before


def test_a_python_child_that_is_not_ready_fails_to_start():
    with pytest.raises(LinxError) as failure:
        S.start(
            [
                P.child_spec(
                    id="never", argv=["sleep", "60"], auto_proceed=True, ready={"command": ["false"], "timeout": 0.5}
                )
            ]
        )
    assert failure.value.reason[:2] == ("failed_to_start_child", "never")
    assert failure.value.reason[2][:2] == ("not_ready", "command false")
    assert "last try: exited with status 1" in str(failure.value)
    linx_otp.flush()


def test_a_command_probe_still_running_at_the_time_out_is_stopped_with_nothing_left():
    before = descendant_pids()
    spec = P.child_spec(
        id="stuck", argv=["sleep", "60"], auto_proceed=True, ready={"command": ["sleep", "61"], "timeout": 0.5}
    )
    began = time.monotonic()
    with pytest.raises(LinxError, match=r"did not pass within 0\.5 s \(last try: no answer before the time-out\)"):
        S.start([spec])
    assert time.monotonic() - began < 5.0
    linx_otp.flush()
    assert wait_until(lambda: descendant_pids() <= before, TIMEOUT), descendant_pids() - before  # probe and child gone


def test_a_restarted_child_that_runs_before_its_restarted_report_still_waits_for_its_check():
    from linx_otp.daemon.state import TreeState

    tree = parse_text('[[child]]\nid = "a"\nargv = ["true"]\nready = { file = "/r" }\n', "t.toml")
    state = TreeState(tree, clock=lambda: 100.0)

    def shown() -> tuple[str, bool, str | None]:
        row = state.status()[0]
        return row["state"], row["ready"], row["readiness"]

    state.supervisor_report("started", "a", "session-1")
    state.child_event("a", "ready", [11])
    assert shown() == ("starting", False, "file /r")  # parked at its checkpoint
    state.child_event("a", "running", [])
    assert shown() == ("starting", False, "file /r")
    state.supervisor_report("ready", "a", "file /r passed 0.10 s after it ran")
    assert shown() == ("running", True, "file /r")
    state.child_event("a", "signaled", [9])
    state.supervisor_report("exited", "a", ("signaled", 9))
    state.child_event("a", "ready", [12])  # the next incarnation's events overtake its restarted report
    state.child_event("a", "running", [])
    assert shown() == ("starting", False, "file /r")
    state.supervisor_report("restarted", "a", "session-2")
    state.supervisor_report("ready", "a", "file /r passed 0.10 s after it ran")
    assert shown() == ("running", True, "file /r")
