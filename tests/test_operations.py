"""Operating the daemon as users of systemd, supervisord and docker expect (issue 14), through
the real command line: the daemon as a subprocess, its control socket, short time-outs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import test_cli
from support import blocked_in, needs_root, process_alive, run_scoped_name, wait_until
from test_cli import COMMAND, SMALL_TREE, STAMP, TIMEOUT, logged_text, write_tree

from linx_otp.cli import request
from linx_otp.errors import LinxError

running = test_cli.running  # the fixture, shared

README = Path(__file__).resolve().parent.parent / "README.md"

TREE = """
    [supervisor]
    max_restarts = 10
    max_seconds = 5.0

    [[child]]
    id = "sleeper"
    argv = ["sleep", "600"]

    [[child]]
    id = "logged"
    argv = ["sh", "-c", "echo into the log; exec sleep 600"]
    stdio = "capture"
    log = "{log}"

    [[child]]
    id = "group"
    type = "supervisor"

    [[child.child]]
    id = "inner"
    argv = ["sleep", "600"]
"""


def control(daemon: test_cli.Running, *arguments: str) -> tuple[int, dict]:
    result = daemon.control_command(*arguments, "--json")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # exactly one object, nothing else on stdout
    return result.returncode, json.loads(lines[0])


def readme_status_keys() -> list[str]:
    section = README.read_text().split("### Machine-readable replies: `--json`", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)


@pytest.mark.timeout(240)  # fifteen commands, each a Python start-up: 2-6 s apiece on a loaded 2-core machine
def test_status_json_follows_the_readme_schema_and_every_verb_answers_json(tmp_path, running):
    log = tmp_path / "logged.log"
    daemon = running(write_tree(tmp_path, TREE.format(log=log)))
    assert daemon.shows(r"tree \| up"), daemon.lines
    assert wait_until(lambda: all(row["state"] == "running" for row in daemon.status().values()), TIMEOUT)
    pid = daemon.status()["sleeper"]["host_pid"]
    killed_at, killed_at_wall = time.monotonic(), datetime.now().astimezone()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: daemon.status()["sleeper"]["restarts"] == 1, TIMEOUT)
    assert wait_until(lambda: daemon.status()["sleeper"]["state"] == "running", TIMEOUT)

    code, reply = control(daemon, "status")
    assert code == 0 and reply["ok"] is True
    rows = {row["id"]: row for row in reply["result"]}
    assert [row["id"] for row in reply["result"]] == ["sleeper", "logged", "group", "inner"]  # start order
    keys = readme_status_keys()
    assert keys and all(list(row) == keys for row in rows.values()), (keys, rows)
    sleeper = rows["sleeper"]
    assert sleeper["last_exit"] == "killed by SIGKILL" and sleeper["restarts"] == 1 and sleeper["ready"] is True
    # The incarnation started after the kill: bounded by the time since, however slow a loaded machine made the
    # commands in between (uptime is shown to 0.1 s, started_at to the millisecond).
    assert sleeper["host_pid"] != pid and isinstance(sleeper["uptime"], float)
    assert 0 <= sleeper["uptime"] <= time.monotonic() - killed_at + 0.1, sleeper
    started = datetime.fromisoformat(sleeper["started_at"])
    assert started.tzinfo is not None
    assert killed_at_wall - timedelta(milliseconds=1) <= started <= datetime.now().astimezone(), killed_at_wall
    assert rows["logged"]["log"] == str(log) and rows["sleeper"]["log"] is None
    assert (rows["group"]["kind"], rows["inner"]["parent"], rows["sleeper"]["parent"]) == ("supervisor", "group", None)

    assert control(daemon, "stop", "sleeper") == (0, {"ok": True, "result": "stopped"})
    stopped = daemon.status()["sleeper"]
    assert (stopped["state"], stopped["ready"], stopped["uptime"], stopped["host_pid"]) == (
        "stopped",
        False,
        None,
        None,
    )
    assert control(daemon, "start", "sleeper") == (0, {"ok": True, "result": "started"})
    assert control(daemon, "restart", "inner") == (0, {"ok": True, "result": "restarted"})
    code, refused = control(daemon, "stop", "nosuch")
    assert code == 2 and refused["ok"] is False and "no child 'nosuch'" in refused["error"]
    code, refused = control(daemon, "start", "logged")
    assert code == 2 and "already running" in refused["error"]

    table = daemon.control_command("status").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "KIND",
        "STATE",
        "READY",
        "READINESS",
        "HOST",
        "PID",
        "RESTARTS",
        "UPTIME",
        "LAST",
        "EXIT",
        "LOG",
    ]
    logged_line = next(line for line in table if line.startswith("logged "))
    assert logged_line.endswith(str(log)) and " yes " in logged_line

    assert control(daemon, "shutdown") == (0, {"ok": True, "result": "stopping"})
    assert daemon.process.wait(TIMEOUT) == 0


def test_json_errors_without_a_daemon(tmp_path):
    result = subprocess.run(
        [*COMMAND, "status", "--json", "--control", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    reply = json.loads(result.stdout)
    assert reply["ok"] is False and reply["reason"] == "no_daemon" and "no linx-otp daemon at" in reply["error"]


# -- logs: the ring, -f, rotation, time stamps ------------------------------------------------------

TALKER = """
    [[child]]
    id = "talker"
    argv = ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exec sleep 600"]
    stdio = "capture"

    [[child]]
    id = "rotated"
    argv = ["sh", "-c", "for i in $(seq 10 39); do echo rotated $i; sleep 0.01; done; exec sleep 600"]
    stdio = "capture"
    log = {{ path = "{log}", max_bytes = 200, keep = 2 }}
"""


@pytest.mark.timeout(240)  # a dozen commands, each a Python start-up: 2-6 s apiece on a loaded 2-core machine
def test_logs_shows_the_last_lines_and_follows_new_ones(tmp_path, running):
    log = tmp_path / "rotated.log"
    daemon = running(write_tree(tmp_path, TALKER.format(log=log)))
    assert daemon.shows(r"talker ! oops"), daemon.lines
    console = next(line for line in daemon.lines if line.endswith("talker | line 5"))
    assert re.match(STAMP + r" +talker \| line 5$", console)  # the console's lines carry the time too

    last = daemon.control_command("logs", "talker", "-n", "3")
    assert last.returncode == 0, last.stderr
    assert [re.sub("^" + STAMP + " ", "", line) for line in last.stdout.splitlines()] == [
        "| line 4",
        "| line 5",
        "! oops",
    ]
    code, reply = control(daemon, "logs", "talker", "-n", "2")
    assert code == 0 and [line["text"] for line in reply["result"]["lines"]] == ["line 5", "oops"]
    assert reply["result"]["lines"][1]["stream"] == "stderr"

    follower = subprocess.Popen(
        [*COMMAND, "logs", "talker", "-f", "-n", "0", "--control", str(daemon.control)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(follower.stdout), daemon=True)
        reader.start()
        assert wait_until(lambda: daemon.status()["talker"]["host_pid"] is not None, TIMEOUT)
        # -n 0 follows from its first request: a follower that has not asked yet when the restart's lines come
        # (a Python start-up takes seconds on a loaded machine) starts after them. It sleeps between requests.
        assert wait_until(lambda: blocked_in(follower.pid, "clock_nanosleep"), TIMEOUT), "the follower never asked"
        assert daemon.control_command("restart", "talker").returncode == 0  # it writes lines 1 to 5 again
        assert wait_until(lambda: any(line.endswith("| line 5\n") for line in seen), TIMEOUT), seen
        assert [line.split(" ", 1)[1] for line in seen[:5]] == [f"| line {n}\n" for n in range(1, 6)]
        follower.send_signal(signal.SIGINT)
        assert follower.wait(TIMEOUT) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    nosuch = daemon.control_command("logs", "nosuch")
    assert nosuch.returncode == 2 and "no workload 'nosuch'" in nosuch.stderr


def test_a_log_rotates_by_renaming_and_keeps_keep_files(tmp_path, running):
    log = tmp_path / "rotated.log"
    daemon = running(write_tree(tmp_path, TALKER.format(log=log)))

    def wrote_the_last_line() -> bool:
        try:  # the daemon may rename the file between any two looks at it
            return logged_text(log).endswith("rotated 39\n")
        except FileNotFoundError:
            return False

    assert wait_until(wrote_the_last_line, TIMEOUT)
    files = [Path(f"{log}.2"), Path(f"{log}.1"), log]
    assert all(file.exists() for file in files) and not Path(f"{log}.3").exists()
    assert all(0 < file.stat().st_size <= 200 for file in files)
    text = "".join(logged_text(file) for file in files)  # oldest first: the newest lines, in order
    numbers = [int(line.split()[1]) for line in text.splitlines()]
    assert numbers == list(range(numbers[0], 40)) and numbers[0] > 10
    assert all(re.match(STAMP + r" \| rotated \d+$", line) for line in log.read_text().splitlines())
    assert daemon.status()["rotated"]["log"] == str(log)


def test_a_rotation_that_cannot_rename_is_reported_once_and_loses_nothing(tmp_path, running):
    log = tmp_path / "rotated.log"
    Path(f"{log}.2").mkdir()  # in the way of the rename of rotated.log.1
    Path(f"{log}.1").write_text("")
    daemon = running(write_tree(tmp_path, TALKER.format(log=log)))

    def wrote_the_last_line() -> bool:
        return log.exists() and logged_text(log).endswith("rotated 39\n")

    assert wait_until(wrote_the_last_line, TIMEOUT), daemon.lines
    numbers = [int(line.split()[1]) for line in logged_text(log).splitlines()]
    assert numbers == list(range(10, 40))  # every line, in the file that could not be rotated
    failures = [line for line in daemon.lines if "log_rotation_failed" in line]
    assert len(failures) == 1 and f"{log}.2: Is a directory" in failures[0], daemon.lines
    assert not [line for line in daemon.lines if "log_failed" in line or "log_resumed" in line]


def test_a_child_removed_by_a_reload_leaves_no_log_file_open(tmp_path, running):
    log = tmp_path / "gone.log"
    gone = f"""
        [[child]]
        id = "gone"
        argv = ["sh", "-c", "echo last words; exec sleep 600"]
        stdio = "capture"
        log = "{log}"
    """
    kept = """
        [[child]]
        id = "kept"
        argv = ["sleep", "600"]
    """
    tree = Path(write_tree(tmp_path, kept + gone))
    daemon = running(str(tree))
    assert wait_until(lambda: log.exists() and logged_text(log) == "last words\n", TIMEOUT)
    open_files = Path(f"/proc/{daemon.process.pid}/fd")
    assert str(log) in [os.path.realpath(fd) for fd in open_files.iterdir()]
    tree.write_text(textwrap.dedent(kept))
    assert daemon.control_command("reload").returncode == 0
    assert wait_until(lambda: str(log) not in [os.path.realpath(fd) for fd in open_files.iterdir()], TIMEOUT)
    # Nor are its last lines kept for `logs` (each removed id held up to 1 MiB for good): a child
    # added again under its id starts with nothing of the old one's.
    tree.write_text(textwrap.dedent(kept + gone.replace("last words", "new words")))
    assert daemon.control_command("reload").returncode == 0
    assert wait_until(lambda: "new words" in logged_text(log), TIMEOUT)
    code, reply = control(daemon, "logs", "gone")
    assert code == 0 and [line["text"] for line in reply["result"]["lines"]] == ["new words"], reply
    assert daemon.stop() == 0


def test_a_bad_log_table_names_its_key_paths(tmp_path):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "a"
        argv = ["true"]
        stdio = "capture"
        log = { path = "", max_bytes = 0, keep = -1, colour = "red" }
        """,
    )
    result = subprocess.run([*COMMAND, "run", tree], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    for where in ("child[0].log.colour", "child[0].log.path", "child[0].log.max_bytes", "child[0].log.keep"):
        assert f"{where}: " in result.stderr, result.stderr


def test_two_children_logging_to_one_file_is_refused(tmp_path):
    """They would rotate each other's files early (a .1 of half max_bytes)."""
    tree = write_tree(
        tmp_path,
        f"""
        [[child]]
        id = "a"
        argv = ["true"]
        stdio = "capture"
        log = "{tmp_path}/shared.log"

        [[child]]
        id = "b"
        argv = ["true"]
        stdio = "capture"
        log = {{ path = "{tmp_path}/./shared.log" }}
        """,
    )
    result = subprocess.run([*COMMAND, "run", tree], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "child[1].log: " in result.stderr and "is also child[0].log" in result.stderr, result.stderr
    assert not (tmp_path / "shared.log").exists()


# -- restart back-off ------------------------------------------------------------------------------

BACKOFF = """
    [supervisor]
    max_restarts = 100
    max_seconds = 10.0

    [[child]]
    id = "crasher"
    argv = ["sh", "-c", "exit 3"]
    restart_delay = 0.1
    restart_backoff_max = 0.4

    [[child]]
    id = "steady"
    argv = ["sleep", "600"]
"""


def events(daemon: test_cli.Running, child_id: str, kind: str) -> list[float]:
    found = []
    for line in list(daemon.lines):
        event = json.loads(line)
        if event["id"] == child_id and event["event"] == kind:
            found.append(event["time"])
    return found


def test_restart_delays_double_up_to_the_maximum_measured_from_events(tmp_path, running):
    daemon = running(write_tree(tmp_path, BACKOFF), "--json")
    assert wait_until(lambda: len(events(daemon, "crasher", "exited")) >= 7, TIMEOUT)
    exits, runs = events(daemon, "crasher", "exited"), events(daemon, "crasher", "running")
    delays = [round(runs[n + 1] - exits[n], 3) for n in range(6)]
    print("delays between an exit and the next run:", delays)
    # At least the delay, and below the next doubling: that tells doubling, the cap and no delay apart (a missed
    # cap gives 0.8, a missed doubling less than the delay) and leaves a loaded machine its scheduling (seen: 0.551
    # and 0.646 for 0.4 at load 8, where the old bound of delay + 0.15 s failed).
    for measured, nominal in zip(delays, [0.1, 0.2, 0.4, 0.4, 0.4, 0.4], strict=True):
        # Each event is stamped when the daemon's loop writes it, so the exit's stamp can lag
        # the supervisor's own clock by a loaded loop's turn: a little slack below as well.
        assert nominal - 0.025 <= measured < 2 * nominal, delays
    restarts = daemon.status()["crasher"]["restarts"]
    assert restarts >= 6  # counted by the supervisor as they happen
    waiting = [json.loads(line)["detail"] for line in daemon.lines if '"backoff"' in line]
    assert waiting[:3] == ["runs in 0.1 s", "runs in 0.2 s", "runs in 0.4 s"]
    steady = daemon.status()["steady"]
    assert (steady["restarts"], steady["state"]) == (0, "running")
    assert daemon.control_command("shutdown").returncode == 0  # a child held back stops at once
    assert daemon.process.wait(TIMEOUT) == 0


RECOVERING = """
    [supervisor]
    max_restarts = 100
    max_seconds = 10.0

    [[child]]
    id = "slow_crasher"
    argv = ["sh", "-c", "sleep 1.1; exit 1"]
    restart_delay = 0.1
    restart_backoff_max = 1.0
"""


def test_a_child_that_ran_ten_delays_starts_its_back_off_again(tmp_path, running):
    daemon = running(write_tree(tmp_path, RECOVERING), "--json")
    assert wait_until(lambda: len(events(daemon, "slow_crasher", "exited")) >= 3, TIMEOUT)
    waiting = [json.loads(line)["detail"] for line in daemon.lines if '"backoff"' in line]
    assert waiting[:2] == ["runs in 0.1 s", "runs in 0.1 s"]


def test_bad_back_off_settings_name_their_key_paths(tmp_path):
    tree = write_tree(
        tmp_path,
        """
        [[child]]
        id = "a"
        argv = ["true"]
        restart_delay = 2.0
        restart_backoff_max = 1.0

        [[child]]
        id = "b"
        argv = ["true"]
        restart_delay = -1
        """,
    )
    result = subprocess.run([*COMMAND, "run", tree], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    expected = "child[0].restart_backoff_max: restart_backoff_max must be at least restart_delay (2), not 1"
    assert expected in result.stderr
    assert "child[1].restart_delay: restart_delay is a number of seconds from 0 to 86400" in result.stderr


# -- systemd's notify protocol, with a real datagram socket playing systemd -------------------------

NOTIFIED = """
    [[child]]
    id = "one"
    argv = ["sh", "-c", "echo notify=${NOTIFY_SOCKET:-unset} watchdog=${WATCHDOG_USEC:-unset}; exec sleep 600"]
    stdio = "capture"

    [[child]]
    id = "two"
    argv = ["sleep", "600"]
"""


def test_systemd_hears_ready_status_watchdog_pings_and_stopping_in_order(tmp_path):
    address = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(address))
    systemd.settimeout(0.1)  # the listener looks at `finished` between datagrams
    environment = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
    control = tmp_path / "c.sock"
    daemon = subprocess.Popen(
        [*COMMAND, "run", write_tree(tmp_path, NOTIFIED), "--control", str(control)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
        text=True,
    )
    heard: list[tuple[float, str]] = []

    finished = threading.Event()

    def hear() -> None:  # all along: the queue holds 10 datagrams (net.unix.max_dgram_qlen) and the daemon drops
        while not finished.is_set():  # what does not fit, as sd_notify does; a test that stopped reading during
            try:  # a slow reload command lost the RELOADING=1 queued behind the watchdog pings
                message = systemd.recv(4096).decode()
            except TimeoutError:
                continue
            heard.append((time.monotonic(), message))

    def heard_after(start: int, predicate) -> int | None:
        """The index of the first message from ``start`` on that satisfies ``predicate``."""
        return next((index for index, (_, message) in enumerate(heard) if index >= start and predicate(message)), None)

    listener = threading.Thread(target=hear, daemon=True)
    listener.start()
    try:
        assert wait_until(lambda: heard, TIMEOUT), "no datagram"
        first = heard[0][1]
        assert first.splitlines()[0] == "READY=1" and first.splitlines()[1].startswith("STATUS="), first
        assert wait_until(
            lambda: heard_after(0, lambda message: "STATUS=2 of 2 workloads running" in message) is not None, TIMEOUT
        )
        assert wait_until(lambda: sum(message == "WATCHDOG=1" for _, message in heard) >= 6, TIMEOUT)
        pings = [when for when, message in heard if message == "WATCHDOG=1"][:6]
        gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
        print("watchdog gaps:", [round(gap, 3) for gap in gaps])
        assert all(0.15 < gap < 0.35 for gap in gaps), gaps  # every half of WATCHDOG_USEC (0.2 s)
        reload = subprocess.run([*COMMAND, "reload", "--control", str(control)], capture_output=True, timeout=TIMEOUT)
        assert reload.returncode == 0, reload.stderr
        assert wait_until(
            lambda: heard_after(0, lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC=")) is not None, TIMEOUT
        )
        reloading = heard_after(0, lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="))
        assert wait_until(lambda: heard_after(reloading, lambda m: m.startswith("READY=1")) is not None, TIMEOUT)
        daemon.terminate()
        assert wait_until(lambda: heard_after(0, lambda m: "STOPPING=1" in m.splitlines()) is not None, TIMEOUT)
        assert daemon.wait(TIMEOUT) == 0
        output = daemon.stdout.read()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        finished.set()
        listener.join(TIMEOUT)
        systemd.close()
    assert "one | notify=unset watchdog=unset" in output  # a workload never talks to systemd in our name
    messages = [message for _, message in heard]
    assert messages[0].startswith("READY=1") and messages.index("STOPPING=1") > messages.index("WATCHDOG=1")
    assert sum("READY=1" in message for message in messages) == 2  # at the start, and after the reload


# -- reload ------------------------------------------------------------------------------------------

BEFORE = """
    [supervisor]
    max_restarts = 1
    max_seconds = 60.0

    [[child]]
    id = "same"
    argv = ["sleep", "600"]

    [[child]]
    id = "going"
    argv = ["sleep", "601"]

    [[child]]
    id = "changing"
    argv = ["sleep", "602"]
"""

AFTER = """
    [supervisor]
    max_restarts = 1
    max_seconds = 60.0

    [[child]]
    id = "same"
    argv = ["sleep", "600"]

    [[child]]
    id = "changing"
    argv = ["sleep", "603"]

    [[child]]
    id = "coming"
    argv = ["sleep", "604"]
"""


@pytest.mark.timeout(120)
def test_reload_applies_the_difference_and_leaves_the_unchanged_alone(tmp_path, running):
    tree = Path(write_tree(tmp_path, BEFORE))
    daemon = running(str(tree))
    assert daemon.shows(r"tree \| up")
    assert wait_until(lambda: all(row["state"] == "running" for row in daemon.status().values()), TIMEOUT)
    os.kill(daemon.status()["same"]["host_pid"], signal.SIGKILL)  # one restart of max_restarts = 1 spent
    assert wait_until(lambda: daemon.status()["same"]["restarts"] == 1 and daemon.status()["same"]["host_pid"], TIMEOUT)
    assert wait_until(lambda: daemon.status()["same"]["state"] == "running", TIMEOUT)
    before = daemon.status()

    tree.write_text(textwrap.dedent(AFTER).replace('"sleep", "604"', '"sleep", 604'))  # a bad file first
    bad = daemon.control_command("reload")
    assert bad.returncode == 2 and "nothing was changed" in bad.stderr and "child[2].argv" in bad.stderr
    assert {row["id"]: row["host_pid"] for row in daemon.status().values()} == {
        row["id"]: row["host_pid"] for row in before.values()
    }

    tree.write_text(textwrap.dedent(AFTER))
    code, reply = control(daemon, "reload")
    assert code == 0 and reply["result"] == {
        "added": ["coming"],
        "removed": ["going"],
        "changed": ["changing"],
        "unchanged": ["same"],
    }
    after = daemon.status()
    assert (after["same"]["host_pid"], after["same"]["restarts"]) == (before["same"]["host_pid"], 1)
    assert "going" not in after and not process_alive(before["going"]["host_pid"])
    assert not process_alive(before["changing"]["host_pid"])
    assert wait_until(
        lambda: daemon.status()["changing"]["state"] == daemon.status()["coming"]["state"] == "running", TIMEOUT
    )
    assert Path(f"/proc/{daemon.status()['changing']['host_pid']}/cmdline").read_bytes() == b"sleep\x00603\x00"

    tree.write_text(textwrap.dedent(BEFORE))  # back again by SIGHUP, twice at once with a command
    daemon.process.send_signal(signal.SIGHUP)
    again = daemon.control_command("reload")
    assert again.returncode == 0, again.stderr
    assert daemon.shows(r"tree \| reloaded"), daemon.lines
    assert wait_until(lambda: sorted(daemon.status()) == ["changing", "going", "same"], TIMEOUT)
    assert wait_until(lambda: all(row["state"] == "running" for row in daemon.status().values()), TIMEOUT)
    assert daemon.status()["same"]["host_pid"] == before["same"]["host_pid"]
    assert not any("gave_up" in line for line in daemon.lines)  # reload restarts spend no intensity
    assert daemon.stop() == 0


# -- the demo tree has a pty child to attach to ------------------------------------------------------


@needs_root
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")
def test_the_demo_trees_shell_can_be_attached_to(tmp_path, running):
    daemon = running(None, "--name", run_scoped_name("demo")[:12])
    assert daemon.shows(r"shell \| running"), daemon.lines
    from test_tty_tmux import Tmux

    attach = " ".join(f"'{part}'" for part in [*COMMAND, "attach", "shell", "--control", str(daemon.control)])
    terminal = Tmux(tmp_path, ["sh", "-c", attach + "; echo attach-exit=$?"])
    try:
        assert terminal.shows("attached to shell"), terminal.screen()
        terminal.type("echo on-$(hostname)-$((40+2))", "Enter")
        assert terminal.shows("on-demo-shell-42\n"), terminal.screen()
        terminal.type("C-p", "C-q")
        assert terminal.shows("attach-exit=0"), terminal.screen()
    finally:
        terminal.close()
    assert daemon.status()["shell"]["state"] == "running"
    assert daemon.stop() == 0


# -- metrics -----------------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("linx_otp_")
    }


@pytest.mark.skipif(importlib.util.find_spec("prometheus_client") is None, reason="needs the [metrics] extra")
def test_metrics_are_scraped_over_http_after_a_restart(tmp_path, running):
    daemon = running(write_tree(tmp_path, TREE.format(log=tmp_path / "l.log")), "--metrics", "127.0.0.1:0")
    assert daemon.shows(r"daemon \| metrics http://127\.0\.0\.1:\d+/metrics"), daemon.lines
    url = re.search(r"(http://\S+)", next(line for line in daemon.lines if "| metrics" in line)).group(1)
    assert wait_until(lambda: all(row["state"] == "running" for row in daemon.status().values()), TIMEOUT)
    before = daemon.status()["sleeper"]["host_pid"]
    killed_at = time.time()
    os.kill(before, signal.SIGKILL)
    assert wait_until(lambda: daemon.status()["sleeper"]["restarts"] == 1, TIMEOUT)
    assert wait_until(lambda: daemon.status()["sleeper"]["state"] == "running", TIMEOUT)
    metrics = scrape(url)
    assert metrics['linx_otp_child_up{id="sleeper",kind="worker"}'] == 1.0
    assert metrics['linx_otp_child_up{id="group",kind="supervisor"}'] == 1.0
    assert metrics['linx_otp_child_restarts_total{id="sleeper"}'] == 1.0
    assert metrics['linx_otp_child_restarts_total{id="inner"}'] == 0.0
    assert metrics['linx_otp_child_last_exit_info{id="sleeper",last_exit="killed by SIGKILL"}'] == 1.0
    assert killed_at - 0.001 <= metrics['linx_otp_child_start_time_seconds{id="sleeper"}'] <= time.time()  # restarted
    assert not any(key.startswith("linx_otp_supervisor_gave_up_total") for key in metrics)  # none gave up
    daemon.control_command("stop", "sleeper")
    assert scrape(url)['linx_otp_child_up{id="sleeper",kind="worker"}'] == 0.0
    assert daemon.stop() == 0
    with pytest.raises(OSError):
        scrape(url)  # the server went with the daemon


def test_a_bad_metrics_address_is_refused_before_anything_starts(tmp_path):
    tree = write_tree(tmp_path, TREE.format(log=tmp_path / "l.log"))
    result = subprocess.run(
        [*COMMAND, "run", tree, "--metrics", "localhost", "--control", str(tmp_path / "c.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2 and "--metrics takes HOST:PORT, like 127.0.0.1:9100" in result.stderr
    assert not (tmp_path / "c.sock").exists()


@pytest.mark.timeout(120)
def test_racing_restarts_of_one_child_each_restart_it(tmp_path, running):
    """Ten restarts at once: each stops and starts the child in turn (two racing ones used to
    both stop it, and then one failed with the supervisor's "terminate_child it first")."""
    daemon = running(write_tree(tmp_path, SMALL_TREE))
    assert daemon.shows(r"sleeper \\| running"), daemon.lines
    replies: list = []

    def restart() -> None:
        try:
            replies.append(request(str(daemon.control), {"verb": "restart", "id": "sleeper"}))
        except LinxError as error:
            replies.append(error)

    clients = [threading.Thread(target=restart) for _ in range(10)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(TIMEOUT * 2)
    assert replies == ["restarted"] * 10, replies
    row = daemon.status()["sleeper"]
    assert row["state"] == "running" and row["restarts"] == 10 and process_alive(int(row["host_pid"]))
    assert daemon.stop() == 0
