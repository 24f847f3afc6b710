"""README, "The linx-otp command" Safety: nothing another user made is trusted. The socket's directory, the socket
path itself, the server a client talks to, and log files, each probed by a real second user
(made with useradd) where it matters."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_cli
import test_user
from support import needs_root, run_scoped_name, wait_until
from test_cli import COMMAND, TIMEOUT, logged_text, write_tree
from test_user import run_as

from linx_otp.agent import AGENT_PATH_VARIABLE, BUNDLED_AGENT
from linx_otp.daemon.instance import Instance

running = test_cli.running  # the fixtures, shared
importable_copy = test_user.importable_copy
NOBODY = 65534
SLEEPER = """
    [[child]]
    id = "sleeper"
    argv = ["sleep", "600"]
"""


def refused_before_starting(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``linx-otp run`` with a spy agent: returns the result and checks no agent started."""
    started = tmp_path / "an-agent-started"
    spy = tmp_path / "agent-spy"
    spy.write_text(f'#!/bin/sh\ntouch {started}\nexec {BUNDLED_AGENT} "$@"\n')
    spy.chmod(0o755)
    result = subprocess.run(
        [*COMMAND, "run", *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, AGENT_PATH_VARIABLE: str(spy)},
    )
    assert not started.exists(), "an agent was started"
    return result


# -- the socket's directory and path --------------------------------------------------------------


@needs_root
def test_a_planted_tmp_directory_is_refused_and_a_fresh_one_is_private(test_user, importable_copy, readable_directory):
    directory = Path(f"/tmp/linx-otp-{test_user.pw_uid}")
    tree = readable_directory / "tree.toml"
    tree.write_text(textwrap.dedent(SLEEPER))
    tree.chmod(0o644)
    try:
        directory.mkdir(mode=0o777)
        os.chown(directory, NOBODY, NOBODY)  # another user got there first
        directory.chmod(0o777)
        result = run_as(test_user, importable_copy, readable_directory, "-m", "linx_otp", "run", str(tree))
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert f"refusing to use {directory}" in result.stderr and f"belongs to uid {NOBODY}" in result.stderr
        assert list(directory.iterdir()) == []
        os.chown(directory, test_user.pw_uid, test_user.pw_gid)  # ours, but anyone may write in it
        result = run_as(test_user, importable_copy, readable_directory, "-m", "linx_otp", "run", str(tree))
        assert result.returncode == 2 and "writable by others (mode 0777)" in result.stderr, result.stderr
        directory.rmdir()

        daemon = subprocess.Popen(
            ["/usr/bin/python3.11", "-m", "linx_otp", "run", str(tree)],
            user=test_user.pw_uid,
            group=test_user.pw_gid,
            extra_groups=[],
            env={"PYTHONPATH": str(importable_copy), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            cwd=readable_directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(lambda: (directory / "default.sock").exists(), TIMEOUT)
            status = os.lstat(directory)
            assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (test_user.pw_uid, 0o700)
            answer = run_as(test_user, importable_copy, readable_directory, "-m", "linx_otp", "status")
            assert answer.returncode == 0 and "sleeper" in answer.stdout, answer.stderr
        finally:
            daemon.terminate()
            assert daemon.wait(TIMEOUT) == 0
        assert not (directory / "default.sock").exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_control_in_a_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = refused_before_starting(tmp_path, write_tree(tmp_path, SLEEPER), "--control", str(shared / "c.sock"))
    assert result.returncode == 2 and "writable by others" in result.stderr, result.stderr
    assert list(shared.iterdir()) == []


@needs_root
def test_control_below_a_directory_of_another_user_is_refused_and_nothing_made_there(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)  # they could swap in their own "sub" once we had made ours
    result = refused_before_starting(
        tmp_path, write_tree(tmp_path, SLEEPER), "--control", str(theirs / "sub" / "c.sock")
    )
    assert result.returncode == 2 and f"{theirs} belongs to uid {NOBODY}" in result.stderr, result.stderr
    assert list(theirs.iterdir()) == []


def test_control_naming_a_file_or_a_directory_is_refused_and_left_alone(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    result = refused_before_starting(tmp_path, write_tree(tmp_path, SLEEPER), "--control", str(precious))
    assert result.returncode == 2 and "exists and is not a socket" in result.stderr, result.stderr
    assert precious.read_text() == "keep me"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    result = refused_before_starting(tmp_path, write_tree(tmp_path, SLEEPER), "--control", str(directory))
    assert result.returncode == 2 and "not a socket" in result.stderr, result.stderr
    assert directory.is_dir()
    assert not Path(str(precious) + ".lock").exists() and not Path(str(directory) + ".lock").exists()


@needs_root
def test_a_link_planted_at_the_name_lock_is_refused_and_its_target_left_alone(tmp_path):
    name = run_scoped_name("planted")
    lock = Path(Instance(name, str(tmp_path / "c.sock")).name_lock_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    mode = victim.stat().st_mode
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    lock.symlink_to(victim)
    try:
        result = refused_before_starting(
            tmp_path, write_tree(tmp_path, SLEEPER), "--name", name, "--control", str(tmp_path / "c.sock")
        )
        assert result.returncode == 2 and f"{lock}: Too many levels of symbolic links" in result.stderr, result.stderr
        assert lock.is_symlink() and victim.read_text() == "keep me" and victim.stat().st_mode == mode
        assert not (tmp_path / "c.sock").exists() and not (tmp_path / "c.sock.lock").exists()
    finally:
        lock.unlink()


# -- the client checks the server ------------------------------------------------------------------

FAKE_SERVER = """
import os, socket, sys
path, record = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
os.chmod(path, 0o666)
listener.listen(1)
print("listening", flush=True)
connection, _ = listener.accept()
connection.settimeout(3)
try:
    received = connection.recv(65536)
except TimeoutError:
    received = b""
open(record, "w").write(repr(received))
try:
    connection.sendall(b'{"ok": true, "result": []}\\n')
except OSError:
    pass  # the client hung up, as it should
"""


@needs_root
def test_a_client_refuses_a_server_of_another_uid_before_sending(test_user, readable_directory):
    theirs = readable_directory / "theirs"
    theirs.mkdir()
    os.chown(theirs, test_user.pw_uid, test_user.pw_gid)
    path, record = theirs / "forged.sock", theirs / "received"
    server = subprocess.Popen(
        ["/usr/bin/python3.11", "-c", FAKE_SERVER, str(path), str(record)],
        user=test_user.pw_uid,
        group=test_user.pw_gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert server.stdout.readline().strip() == "listening"
        result = subprocess.run(
            [*COMMAND, "status", "--control", str(path)], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 2
        assert f"runs as uid {test_user.pw_uid}, neither root nor you" in result.stderr, result.stderr
        assert server.wait(TIMEOUT) == 0
        assert record.read_text() == "b''", "the client sent something to a forged server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# -- log files --------------------------------------------------------------------------------------


def logging_children(logs: dict) -> str:
    """Tree children that each print a line and log it to its path: ``{id: log path}``."""
    return "".join(
        f"""
        [[child]]
        id = "{name}"
        argv = ["sh", "-c", "echo output of {name}; exec sleep 600"]
        stdio = {{ stdout = "capture", stderr = "inherit" }}
        log = "{path}"
        """
        for name, path in logs.items()
    )


@needs_root
def test_logs_never_follow_a_symlink_or_append_to_someone_elses_file(tmp_path, running, test_user):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "linked.log").symlink_to(victim)
    (logs / "hard.log").hardlink_to(victim)
    (logs / "foreign.log").write_text("theirs\n")
    os.chown(logs / "foreign.log", test_user.pw_uid, test_user.pw_gid)
    children = logging_children({name: f"{logs / name}.log" for name in ("linked", "hard", "foreign", "fresh")})
    daemon = running(write_tree(tmp_path, children))
    assert daemon.shows(r"linked \| log_failed .*linked\.log: .*[Ll]oop|symbolic"), "\n".join(daemon.lines)
    assert daemon.shows(r"hard \| log_failed .*has 2 hard links"), "\n".join(daemon.lines)
    assert daemon.shows(rf"foreign \| log_failed .*belongs to uid {test_user.pw_uid}"), "\n".join(daemon.lines)
    assert wait_until(lambda: (logs / "fresh.log").exists() and logged_text(logs / "fresh.log") == "output of fresh\n")
    assert stat.S_IMODE((logs / "fresh.log").stat().st_mode) == 0o640
    assert victim.read_text() == "precious\n" and (logs / "foreign.log").read_text() == "theirs\n"
    assert daemon.status()["fresh"]["state"] == "running"
    time.sleep(0.2)
    assert sum("log_failed" in line for line in daemon.lines) == 3, "each failure is reported once"
    assert daemon.stop() == 0


@needs_root
def test_a_log_in_a_directory_another_user_could_redirect_is_refused(tmp_path, running, test_user):
    victim_directory = tmp_path / "victim"
    victim_directory.mkdir()
    (victim_directory / "app.log").write_text("precious\n")
    (victim_directory / "app.log").chmod(0o644)
    planted = tmp_path / "planted"  # their link to our directory
    planted.symlink_to(victim_directory)
    os.lchown(planted, test_user.pw_uid, test_user.pw_gid)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, test_user.pw_uid, test_user.pw_gid)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    logs = {"linked": planted / "app.log", "theirs": theirs / "app.log", "shared": shared / "app.log"}
    children = logging_children(logs)
    daemon = running(write_tree(tmp_path, children))
    uid = test_user.pw_uid
    assert daemon.shows(rf"linked \| log_failed .*{planted} is a symbolic link that belongs to uid {uid}"), daemon.lines
    assert daemon.shows(rf"theirs \| log_failed .*{theirs} belongs to uid {uid}"), daemon.lines
    assert daemon.shows(r"shared \| log_failed .*writable by others \(mode 0777\)"), daemon.lines
    assert (victim_directory / "app.log").read_text() == "precious\n"
    assert stat.S_IMODE((victim_directory / "app.log").stat().st_mode) == 0o644
    assert list(theirs.iterdir()) == [] and list(shared.iterdir()) == []
    assert daemon.stop() == 0


@needs_root
def test_a_fifo_planted_at_a_log_path_is_refused_without_waiting_for_a_reader(tmp_path, running, test_user):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o1777)  # sticky and open to all, as /tmp
    fifo = logs / "victim.log"
    os.mkfifo(fifo, 0o622)
    os.chown(fifo, test_user.pw_uid, test_user.pw_gid)
    tree = f"""
        [[child]]
        id = "victim"
        argv = ["sh", "-c", "echo output of victim; exec sleep 600"]
        stdio = {{ stdout = "capture", stderr = "inherit" }}
        log = "{fifo}"

        [[child]]
        id = "other"
        argv = ["sh", "-c", "while true; do echo tick; sleep 0.1; done"]
        stdio = {{ stdout = "capture", stderr = "inherit" }}
    """
    daemon = running(write_tree(tmp_path, tree))
    assert daemon.shows(r"victim \| log_failed .*victim\.log: "), daemon.lines  # no reader: not opened at all
    assert daemon.shows(r"tree \| up"), daemon.lines
    assert daemon.shows(r"other \| tick"), daemon.lines  # the writer was never stuck on the FIFO
    assert daemon.stop() == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
