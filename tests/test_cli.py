"""The linx-otp command end to end: the real command as a subprocess, the demo tree, the
control socket, configuration errors, and spawn."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support import agent_pids, needs_root, process_alive, run_scoped_name, wait_until

from linx_otp import cgroup as Cgroup
from linx_otp import netlink as Netlink
from linx_otp.agent import AGENT_PATH_VARIABLE, BUNDLED_AGENT
from linx_otp.daemon.tree import instance_values

COMMAND = [sys.executable, "-m", "linx_otp"]
TIMEOUT = 20


class Running:
    """``linx-otp run`` as a subprocess, its output collected line by line."""

    def __init__(self, tree: str | None, control: Path, *extra: str) -> None:
        arguments = ["run", *([tree] if tree else []), "--control", str(control), *extra]
        self.process = subprocess.Popen(
            [*COMMAND, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.control = control
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def shows(self, pattern: str, timeout: float = TIMEOUT, after: int = 0) -> bool:
        return wait_until(lambda: any(re.search(pattern, line) for line in self.lines[after:]), timeout, interval=0.05)

    def control_command(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*COMMAND, *arguments, "--control", str(self.control)], capture_output=True, text=True, timeout=TIMEOUT
        )

    def status(self) -> dict[str, dict]:
        """``status --json``'s rows by child id."""
        result = self.control_command("status", "--json")
        assert result.returncode == 0, result.stderr
        return {row["id"]: row for row in json.loads(result.stdout)["result"]}

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(TIMEOUT)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """After a failed test: stop it as an operator would (it cleans up after itself), and
        only if that does not work, kill it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)


@pytest.fixture
def running(tmp_path):
    started = []

    def start(tree: str | None, *extra: str, control: Path | None = None) -> Running:
        instance = Running(tree, control or tmp_path / "control.sock", *extra)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.kill()


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
"""ISO 8601 local time with its offset, to the millisecond: how every log and console line begins."""
_LOGGED = re.compile(rb"^" + STAMP.encode() + rb" [|!] ", re.MULTILINE)


def logged_text(path: Path) -> str:
    """A log file's text without the time stamp and stream marker each line starts with (a line
    without them is left whole, so a comparison shows it)."""
    return _LOGGED.sub(b"", path.read_bytes()).decode()


def write_tree(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tree.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


SMALL_TREE = """
    [supervisor]
    max_restarts = 10
    max_seconds = 5.0

    [[child]]
    id = "sleeper"
    argv = ["sleep", "600"]

    [[child]]
    id = "talker"
    argv = ["sh", "-c", "echo hello from talker; echo to stderr >&2; exec sleep 600"]
    stdio = "capture"
"""


# -- the demo tree ------------------------------------------------------------------------------


@needs_root
def test_the_demo_tree_comes_up_and_sigterm_leaves_nothing(running):
    # An instance of this run's own: two runs on one machine (CI's neighbours, other helpers) both running
    # the demo as "default" would share its link, addresses and cgroups, and each would clean up the other's.
    instance = run_scoped_name("demo")
    names = instance_values(instance)
    demo = running(None, "--name", instance)
    assert demo.shows(r"client \| web answered: hello from web"), "\n".join(demo.lines)
    assert demo.shows(r"crasher \| exited 3") and demo.shows(r"crasher \| restarted")
    assert demo.shows(rf"web ! {re.escape(names['instance_net'])}\.1 .* \"GET / HTTP/1\.1\" 200")
    status = demo.status()
    assert status["web"]["state"] == "running" and status["workers"]["kind"] == "supervisor"
    pids = [
        row["host_pid"] for child, row in status.items() if row["host_pid"] and child != "crasher"
    ]  # it ends on its own
    assert pids and all(process_alive(pid) for pid in pids)
    agents = agent_pids(demo.process.pid)  # the daemon's own, not those of any other linx-otp here
    assert agents
    assert demo.stop() == 0
    assert demo.lines[-1].endswith("tree | stopped")
    assert not any(process_alive(pid) for pid in pids)
    assert wait_until(lambda: not any(process_alive(pid) for pid in agents), TIMEOUT)
    with Netlink.open() as host:
        assert wait_until(lambda: f"lxd-{names['instance_tag']}" not in Netlink.link_names(host), TIMEOUT)
    layout = Cgroup.detect()
    assert not Path(layout.v2_root, f"linx-otp/{instance}").exists()
    assert not any(Path(root, f"linx-otp/{instance}").exists() for root in layout.v1_roots.values())
    assert not demo.control.exists()


# -- supervision over the control socket -----------------------------------------------------------


def test_a_child_killed_from_outside_is_logged_restarted_and_counted(tmp_path, running):
    daemon = running(write_tree(tmp_path, SMALL_TREE))
    assert daemon.shows(r"sleeper \| running")
    assert daemon.shows(r"talker \| hello from talker") and daemon.shows(r"talker ! to stderr")
    pid = int(daemon.status()["sleeper"]["host_pid"])
    os.kill(pid, signal.SIGKILL)
    assert daemon.shows(r"sleeper \| signaled 9") and daemon.shows(r"sleeper \| restarted")
    assert wait_until(
        lambda: (daemon.status()["sleeper"]["state"], daemon.status()["sleeper"]["restarts"]) == ("running", 1), TIMEOUT
    )
    row = daemon.status()["sleeper"]
    assert row["host_pid"] != pid and row["last_exit"] == "killed by SIGKILL"
    assert daemon.stop() == 0


def test_stop_start_and_restart_act(tmp_path, running):
    daemon = running(write_tree(tmp_path, SMALL_TREE))
    assert daemon.shows(r"sleeper \| running")
    first = int(daemon.status()["sleeper"]["host_pid"])
    assert daemon.control_command("stop", "sleeper").stdout.strip() == "stopped"
    assert not process_alive(first) and daemon.status()["sleeper"]["state"] == "stopped"
    assert daemon.control_command("start", "sleeper").stdout.strip() == "started"
    assert wait_until(lambda: daemon.status()["sleeper"]["state"] == "running", TIMEOUT)
    second = int(daemon.status()["sleeper"]["host_pid"])
    assert daemon.control_command("restart", "sleeper").stdout.strip() == "restarted"
    assert wait_until(
        lambda: (
            daemon.status()["sleeper"]["state"] == "running" and int(daemon.status()["sleeper"]["host_pid"]) != second
        ),
        TIMEOUT,
    )
    assert not process_alive(second)
    unknown = daemon.control_command("stop", "nobody")
    assert unknown.returncode != 0 and "no child 'nobody'" in unknown.stderr
    assert daemon.control_command("shutdown").stdout.strip() == "stopping"
    assert daemon.process.wait(TIMEOUT) == 0


def test_control_words_for_people_and_global_options_on_either_side(tmp_path, running):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "sleeper"
        argv = ["sleep", "600"]
        [[child]]
        id = "missing"
        argv = ["/no/such/program"]
        restart = "temporary"
        [[child]]
        id = "group"
        type = "supervisor"
        [[child.child]]
        id = "inner"
        argv = ["sleep", "600"]
    """,
    )
    daemon = running(tree, "--name", "words")
    assert daemon.shows(r"sleeper \| running") and daemon.shows(r"inner \| running")
    assert daemon.shows(r"missing \| error execve failed: ENOENT \(No such file or directory\)"), "\n".join(
        daemon.lines
    )
    before = subprocess.run(
        [*COMMAND, "--control", str(daemon.control), "status"], capture_output=True, text=True, timeout=TIMEOUT
    )
    after = daemon.control_command("status")  # --control after the verb
    ids = [[line.split()[0] for line in result.stdout.splitlines()] for result in (before, after)]
    assert before.returncode == after.returncode == 0 and ids[0] == ids[1] == [
        "ID",
        "sleeper",
        "missing",
        "group",
        "inner",
    ]
    row = next(line for line in before.stdout.splitlines() if line.startswith("missing"))
    assert "  execve failed: ENOENT (No such file or directory)  " in row, row  # the LOG column follows
    started = daemon.control_command("start", "sleeper")
    assert (
        started.returncode == 2 and "sleeper is already running; to start it afresh: restart sleeper" in started.stderr
    )
    assert "terminate_child" not in started.stderr
    assert daemon.control_command("restart", "group").stdout.strip() == "restarted"
    assert wait_until(
        lambda: (daemon.status()["group"]["state"], daemon.status()["group"]["restarts"]) == ("running", 1), TIMEOUT
    ), daemon.status()
    assert wait_until(lambda: daemon.status()["inner"]["state"] == "running", TIMEOUT)
    os.kill(int(daemon.status()["sleeper"]["host_pid"]), signal.SIGKILL)
    assert wait_until(lambda: daemon.status()["sleeper"]["last_exit"] == "killed by SIGKILL", TIMEOUT), daemon.status()
    assert daemon.stop() == 0


def test_json_output_is_one_object_per_line_and_sigint_stops_cleanly(tmp_path, running):
    daemon = running(write_tree(tmp_path, SMALL_TREE), "--json")
    assert daemon.shows(r'"id": "sleeper", "event": "running"')
    pid = int(daemon.status()["sleeper"]["host_pid"])
    assert daemon.stop(signal.SIGINT) == 0
    assert not process_alive(pid)
    events = [json.loads(line) for line in daemon.lines if line.startswith("{")]
    assert {"time", "id", "event", "detail"} <= set(events[0])
    assert ("tree", "stopping", "signal SIGINT") in [(event["id"], event["event"], event["detail"]) for event in events]
    assert ("tree", "stopped") in [(event["id"], event["event"]) for event in events]


def test_a_tree_that_gives_up_exits_non_zero(tmp_path, running):
    tree = write_tree(
        tmp_path,
        """
        [supervisor]
        max_restarts = 2
        [[child]]
        id = "broken"
        argv = ["sh", "-c", "exit 1"]
    """,
    )
    daemon = running(tree)
    assert daemon.process.wait(TIMEOUT) == 1
    assert daemon.shows(r"tree \| gave_up")


def test_log_files_instead_of_prefixes(tmp_path, running):
    log = tmp_path / "talker.log"
    tree = write_tree(
        tmp_path,
        f"""
        [[child]]
        id = "talker"
        argv = ["sh", "-c", "echo into the log; exec sleep 600"]
        stdio = {{ stdout = "capture", stderr = "inherit" }}
        log = "{log}"
    """,
    )
    daemon = running(tree)
    assert wait_until(lambda: log.exists() and logged_text(log) == "into the log\n", TIMEOUT)
    assert re.match(STAMP + r" \| into the log\n$", log.read_text())
    assert daemon.stop() == 0
    assert not any("into the log" in line for line in daemon.lines)


@needs_root
def test_another_uid_is_refused_at_the_socket(tmp_path, running, test_user, readable_directory):
    daemon = running(write_tree(tmp_path, SMALL_TREE), control=readable_directory / "control.sock")
    assert daemon.shows(r"sleeper \| running")
    assert oct(daemon.control.stat().st_mode & 0o777) == "0o600"
    user = test_user
    probe = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(daemon.control)!r})
        except PermissionError:
            print("denied by the file mode")
        else:
            try:
                s.sendall(b'{{"verb": "status"}}')
            except BrokenPipeError:
                pass  # refused and closed before the request was even sent
            print(s.recv(4096).decode().strip())
    """)
    as_user = dict(
        user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True, timeout=TIMEOUT, cwd="/"
    )
    result = subprocess.run(["/usr/bin/python3.11", "-c", probe], **as_user)
    assert result.stdout.strip() == "denied by the file mode", result.stderr
    os.chmod(daemon.control, 0o666)  # even past the file mode, SO_PEERCRED refuses
    result = subprocess.run(["/usr/bin/python3.11", "-c", probe], **as_user)
    assert result.stdout.startswith("{"), (result.stdout, result.stderr)
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and f"uid {user.pw_uid} may not control" in answer["error"]
    assert daemon.stop() == 0


# -- configuration errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('[[child]]\nid = "a"\nargv = = ["true"]\n', "syntax", "line 3"),
        ('[[child]]\nid = "a"\nargv = ["true"]\ncolour = "red"\n', "child[0].colour", "unknown key"),
        ('[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["net", "nett"]\n', "child[0].namespaces", "nett"),
        ('[[child]]\nid = "a"\n', "child[0].argv", "missing"),
        ('[[child]]\nid = "a"\nargv = ["true"]\n[[child]]\nid = "a"\nargv = ["true"]\n', "child[1].id", "duplicate id"),
        (
            '[supervisor]\nstrategy = "all_for_none"\n[[child]]\nid = "a"\nargv = ["true"]\n',
            "supervisor.strategy",
            "one_for_one",
        ),
        (
            '[[child]]\nid = "g"\ntype = "supervisor"\n[[child.child]]\nid = "b"\nargv = ["true"]\nrestart = "sometimes"\n',
            "child[0].child[0].restart",
            "transient",
        ),
        ('[[child]]\nid = "a"\nargv = ["true"]\n[child.setup]\nhostname = "x"\n', "child[0].setup.hostname", "uts"),
        (
            '[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["net"]\n[child.setup.veth]\nhost = "x"\n',
            "child[0].setup.veth.address",
            "missing",
        ),
        (
            '[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["user"]\n[child.setup]\nuid_map = [[0, 0, 1]]\n',
            "child[0].setup.gid_map",
            "come together",
        ),
    ],
    ids=[
        "syntax",
        "unknown-key",
        "bad-namespace",
        "missing-argv",
        "duplicate-ids",
        "bad-strategy",
        "nested-restart",
        "setup-needs-ns",
        "veth-missing",
        "maps-together",
    ],
)
def test_configuration_errors_name_the_place_and_start_nothing(tmp_path, text, where, what):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    started = tmp_path / "an-agent-started"
    spy = tmp_path / "agent-spy"  # any agent the command starts runs this first
    spy.write_text(f'#!/bin/sh\ntouch {started}\nexec {BUNDLED_AGENT} "$@"\n')
    spy.chmod(0o755)
    result = subprocess.run(
        [*COMMAND, "run", str(path), "--control", str(tmp_path / "c.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, AGENT_PATH_VARIABLE: str(spy)},
    )
    assert result.returncode == 2
    assert f"{path}: {where}:" in result.stderr and what in result.stderr, result.stderr
    assert not started.exists() and not (tmp_path / "c.sock").exists()


def test_a_missing_tree_file_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [*COMMAND, "run", str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2 and "none.toml: file: cannot read it" in result.stderr


def test_control_verbs_without_a_daemon(tmp_path):
    result = subprocess.run(
        [*COMMAND, "status", "--control", str(tmp_path / "none.sock")], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2 and "no linx-otp daemon at" in result.stderr


def test_a_closed_stdout_ends_the_client_quietly_as_sigpipe_would(tmp_path, running):
    """``linx-otp status | head -3``: no traceback, and 141, a shell's status for SIGPIPE."""
    daemon = running(write_tree(tmp_path, SMALL_TREE))
    assert daemon.shows(r"sleeper \| running")
    for verb in ("status", "restart"):
        client = subprocess.Popen(
            [*COMMAND, verb, *(["sleeper"] if verb == "restart" else []), "--control", str(daemon.control)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        client.stdout.close()  # the reader has gone before the client writes a thing
        assert client.wait(TIMEOUT) == 141 and client.stderr.read() == ""
        client.stderr.close()
    assert daemon.stop() == 0


class FakeServer:
    """A control socket of this uid that closes every connection at once, or never answers."""

    def __init__(self, path: Path, answers: bool) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.answers, self.kept = answers, []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            if self.answers:
                connection.close()
            else:
                self.kept.append(connection)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(TIMEOUT)
        for connection in self.kept:
            connection.close()


def test_a_server_that_closes_at_once_or_never_answers_is_reported_in_words(tmp_path):
    closing = FakeServer(tmp_path / "closing.sock", answers=True)
    silent = FakeServer(tmp_path / "silent.sock", answers=False)
    try:
        for _ in range(5):  # closed before the request is sent (EPIPE) or after (ECONNRESET, or EOF)
            result = subprocess.run(
                [*COMMAND, "status", "--control", str(tmp_path / "closing.sock")],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert result.returncode == 2 and "closed the connection without an answer" in result.stderr, result
            assert "Traceback" not in result.stderr
        started = time.monotonic()
        result = subprocess.run(
            [*COMMAND, "reload", "--timeout", "1.5", "--control", str(tmp_path / "silent.sock")],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 2 and "did not answer reload within 1.5 s" in result.stderr, result
        assert "--timeout" in result.stderr and time.monotonic() - started < TIMEOUT / 2
        for wrong in ("0", "-1", "nan", "inf", "soon"):
            result = subprocess.run(
                [*COMMAND, "status", "--timeout", wrong, "--control", str(tmp_path / "silent.sock")],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert result.returncode == 2 and "expected seconds, more than 0 and at most 86400" in result.stderr
    finally:
        closing.close()
        silent.close()


# -- spawn ------------------------------------------------------------------------------------------


@needs_root
def test_spawn_passes_the_exit_status_through_and_sets_the_hostname():
    result = subprocess.run(
        [
            *COMMAND,
            "spawn",
            "--ns",
            "pid,mount,net",
            "--hostname",
            "one-off",
            "--mount-proc",
            "--",
            "sh",
            "-c",
            "echo $(hostname) $$ /proc/[0-9]*; exit 7",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout.strip() == "one-off 1 /proc/1"


def test_spawn_errors():
    result = subprocess.run(
        [*COMMAND, "spawn", "--ns", "nett", "--", "true"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2 and "nett" in result.stderr
    result = subprocess.run([*COMMAND, "spawn", "--", "/nonexistent"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 127
    assert result.stderr.strip() == "linx-otp: /nonexistent: No such file or directory"
    result = subprocess.run([*COMMAND, "spawn"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")
@needs_root
def test_spawn_pty_through_tmux(tmp_path):
    from test_tty_tmux import Tmux

    command = [
        *COMMAND,
        "spawn",
        "--ns",
        "pid,mount,uts",
        "--hostname",
        "ttybox",
        "--mount-proc",
        "--pty",
        "--",
        "/bin/sh",
    ]
    terminal = Tmux(tmp_path, ["sh", "-c", " ".join(f"'{part}'" for part in command) + "; echo spawn-exit=$?"])
    try:
        assert terminal.shows("#") or terminal.shows("$"), terminal.screen()
        terminal.type("echo on $(hostname) as pid $$", "Enter")
        assert terminal.shows("on ttybox as pid 1"), terminal.screen()
        terminal.type("stty size", "Enter")
        assert terminal.shows("24 80"), terminal.screen()
        terminal.type("exit 5", "Enter")
        assert terminal.shows("spawn-exit=5"), terminal.screen()
    finally:
        terminal.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")
def test_attach_to_a_pty_child_of_the_daemon_through_tmux(tmp_path, running):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "shell"
        argv = ["/bin/sh"]
        stdio = "pty"
        env = { PS1 = "tree-shell$ ", PATH = "/usr/bin:/bin" }
    """,
    )
    daemon = running(tree)
    assert daemon.shows(r"shell \| running")
    from test_tty_tmux import Tmux

    attach = " ".join(f"'{part}'" for part in [*COMMAND, "attach", "shell", "--control", str(daemon.control)])
    terminal = Tmux(tmp_path, ["sh", "-c", attach + "; echo attach-exit=$?"])
    try:
        assert terminal.shows("attached to shell"), terminal.screen()
        terminal.type("echo inside-$((40+2))", "Enter")
        assert terminal.shows("inside-42\n"), terminal.screen()
        terminal.type("C-p", "C-q")
        assert terminal.shows("linx-otp: detached"), terminal.screen()
        assert terminal.shows("attach-exit=0"), terminal.screen()
    finally:
        terminal.close()
    assert daemon.status()["shell"]["state"] == "running"
    assert daemon.stop() == 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")
def test_an_exit_while_attached_reaches_the_daemon(tmp_path, running):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "shell"
        argv = ["/bin/sh"]
        stdio = "pty"
        restart = "temporary"
        env = { PS1 = "tree-shell$ ", PATH = "/usr/bin:/bin" }
    """,
    )
    daemon = running(tree)
    assert daemon.shows(r"shell \| running")
    from test_tty_tmux import Tmux

    attach = " ".join(f"'{part}'" for part in [*COMMAND, "attach", "shell", "--control", str(daemon.control)])
    terminal = Tmux(tmp_path, ["sh", "-c", attach + "; echo attach-exit=$?; sleep 60"])
    try:
        assert terminal.shows("attached to shell"), terminal.screen()
        terminal.type("exit 4", "Enter")
        assert terminal.shows("linx-otp: exited 4"), terminal.screen()
    finally:
        terminal.close()
    assert daemon.shows(r"shell \| exited 4"), "\n".join(daemon.lines)
    assert wait_until(lambda: daemon.status()["shell"]["last_exit"] == "exited 4", TIMEOUT), daemon.status()
    assert daemon.stop() == 0


TREES = sorted((Path(__file__).resolve().parent.parent / "examples" / "supervisors").glob("*.toml"))


@needs_root
@pytest.mark.parametrize("tree", TREES, ids=[tree.name for tree in TREES])
def test_every_bundled_tree_comes_up_cleanly_and_stops(tree, running):
    daemon = running(str(tree), "--name", run_scoped_name("tree"))  # not "default": see the demo test
    assert daemon.shows(r"tree \| up"), "\n".join(daemon.lines)
    workers = [name for name, row in daemon.status().items() if row["kind"] == "worker"]
    for name in workers:
        assert daemon.shows(rf"{re.escape(name)} \| running"), "\n".join(daemon.lines)
    assert not any(re.search(r"\| (setup_failed|start_failed|gave_up)", line) for line in daemon.lines), "\n".join(
        daemon.lines
    )
    assert daemon.stop() == 0
    Path("/tmp/linx-otp-report.log").unlink(missing_ok=True)  # sandboxed_jobs.toml's log file


@needs_root
def test_every_kind_of_checkpoint_setup_in_a_tree_is_in_place_at_exec(tmp_path, running):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "fenced"
        argv = ["sh", "-c", "echo uid=$(id -u) host=$(hostname) $(ip -4 -o addr show eth0 | cut -d' ' -f7) $(grep -c linx-otp/default/fenced /proc/self/cgroup); exec sleep 600"]
        namespaces = ["user", "uts", "net", "pid", "mount"]
        stdio = "capture"
        shutdown = 1.0
        [child.setup]
        uid_map = [[0, 100000, 65536]]
        gid_map = [[0, 100000, 65536]]
        hostname = "fenced"
        veth = { host = "lxfence0", address = "10.79.0.2", prefixlen = 30, host_address = "10.79.0.1" }
        cgroup = { pids_max = 20 }
    """.replace("lxfence0", run_scoped_name("fence")),  # a host link name of this test run's
    )
    daemon = running(tree)
    assert daemon.shows(r"fenced \| uid=0 host=fenced 10\.79\.0\.2/30 [1-9]"), "\n".join(daemon.lines)
    pid = int(daemon.status()["fenced"]["host_pid"])
    assert Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0] == "100000"
    assert daemon.stop() == 0
    layout = Cgroup.detect()
    assert not Path(layout.v2_root, "linx-otp/default/fenced").exists()
