"""``linx-otp reload`` and SIGHUP through the real command line (the daemon as a subprocess,
host pids checked): children added in their place in the start order, nested supervisors
compared child by child, supervisor settings applied in place, a stop during a restart
back-off, and reloads serialized with the start-up, a back-off, a give-up and each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
import test_cli
from support import process_alive, run_scoped_name, wait_until
from test_cli import COMMAND, TIMEOUT, write_tree
from test_daemon_state import GROUP

from linx_otp.cli import request

running = test_cli.running  # the fixture, shared


def status(daemon: test_cli.Running) -> dict[str, dict]:
    """``status``'s rows by child id, asked with the command's own client in this process (the
    machine may be loaded: a command per look would make every wait seconds long)."""
    assert daemon.shows(r'"id": "tree", "event": "up"'), daemon.lines
    return {row["id"]: row for row in request(str(daemon.control), {"verb": "status"})}


def reload(daemon: test_cli.Running) -> dict:
    result = daemon.control_command("reload", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["result"]


def events(daemon: test_cli.Running, child_id: str, kind: str) -> list[dict]:
    return [event for event in map(json.loads, list(daemon.lines)) if (event["id"], event["event"]) == (child_id, kind)]


def all_running(daemon: test_cli.Running) -> bool:
    return all(row["state"] == "running" for row in status(daemon).values())


def pids(daemon: test_cli.Running) -> dict[str, int | None]:
    return {child_id: row["host_pid"] for child_id, row in status(daemon).items()}


def kill(daemon: test_cli.Running, child_id: str) -> None:
    os.kill(status(daemon)[child_id]["host_pid"], signal.SIGKILL)


def restarted(daemon: test_cli.Running, child_id: str, count: int, old_pid: int) -> bool:
    row = status(daemon)[child_id]
    return row["restarts"] == count and row["state"] == "running" and row["host_pid"] not in (None, old_pid)


# -- added children go in their place in the start order ----------------------------------------------

IN_ORDER = """
    [supervisor]
    strategy = "rest_for_one"
    max_restarts = 10
    max_seconds = 10.0

    [[child]]
    id = "a"
    argv = ["sleep", "600"]
    {b}
    [[child]]
    id = "c"
    argv = ["sleep", "601"]
"""
B = """
    [[child]]
    id = "b"
    argv = ["sleep", "602"]
"""


@pytest.mark.timeout(120)
def test_an_added_child_starts_in_its_place_in_the_start_order(tmp_path, running):
    tree = Path(write_tree(tmp_path, IN_ORDER.format(b="")))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    before = pids(daemon)
    tree.write_text(textwrap.dedent(IN_ORDER.format(b=B)))
    assert reload(daemon) == {"added": ["b"], "removed": [], "changed": [], "unchanged": ["a", "c"]}
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    assert list(status(daemon)) == ["a", "b", "c"]
    middle = pids(daemon)
    assert (middle["a"], middle["c"]) == (before["a"], before["c"])

    kill(daemon, "b")  # rest_for_one: c was started after b, a before it
    assert wait_until(lambda: restarted(daemon, "b", 1, middle["b"]), TIMEOUT)
    assert wait_until(lambda: restarted(daemon, "c", 1, middle["c"]), TIMEOUT)
    row = status(daemon)["a"]
    assert (row["host_pid"], row["restarts"]) == (before["a"], 0)

    assert daemon.stop() == 0  # in reverse start order: c, b, a
    stopping = [json.loads(line)["event"] for line in daemon.lines].index("stopping")
    ended = [event["id"] for event in map(json.loads, daemon.lines[stopping:]) if event["event"] == "signaled"]
    assert ended == ["c", "b", "a"]


def test_a_child_left_unchanged_by_one_reload_is_removed_by_the_next(tmp_path, running):
    """The first reload keeps b as it was; the second removes it: it leaves the status too."""
    tree = Path(write_tree(tmp_path, IN_ORDER.format(b=B)))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    b = pids(daemon)["b"]
    assert reload(daemon)["unchanged"] == ["a", "b", "c"]
    tree.write_text(textwrap.dedent(IN_ORDER.format(b="")))
    assert reload(daemon)["removed"] == ["b"]
    assert wait_until(lambda: list(status(daemon)) == ["a", "c"], TIMEOUT), status(daemon)
    assert not process_alive(b)
    assert daemon.stop() == 0


# -- nested supervisors compared child by child ---------------------------------------------------------

NESTED = """
    [supervisor]
    max_restarts = 20
    max_seconds = 10.0

    [[child]]
    id = "outside"
    argv = ["sleep", "600"]

    [[child]]
    id = "group"
    type = "supervisor"
    strategy = "{strategy}"
    max_restarts = {max_restarts}
    max_seconds = 10.0

    [[child.child]]
    id = "first"
    argv = ["sleep", "601"]
    {grandchildren}
"""
OLD_GRANDCHILDREN = """
    [[child.child]]
    id = "second"
    argv = ["sleep", "602"]

    [[child.child]]
    id = "leaving"
    argv = ["sleep", "603"]
"""
NEW_GRANDCHILDREN = """
    [[child.child]]
    id = "middle"
    argv = ["sleep", "604"]

    [[child.child]]
    id = "second"
    argv = ["sleep", "605"]
"""


@pytest.mark.timeout(120)
def test_a_nested_supervisor_is_compared_child_by_child_and_takes_new_settings_in_place(tmp_path, running):
    tree = Path(write_tree(tmp_path, NESTED.format(strategy="one_for_one", max_restarts=5, grandchildren="")))
    tree.write_text(
        textwrap.dedent(NESTED.format(strategy="one_for_one", max_restarts=5, grandchildren=OLD_GRANDCHILDREN))
    )
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    first = pids(daemon)["first"]
    kill(daemon, "first")  # a restart count to keep
    assert wait_until(lambda: restarted(daemon, "first", 1, first), TIMEOUT)
    before = pids(daemon)

    tree.write_text(
        textwrap.dedent(NESTED.format(strategy="rest_for_one", max_restarts=5, grandchildren=NEW_GRANDCHILDREN))
    )
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.shows(r'"event": "reloaded"'), daemon.lines
    reloaded = events(daemon, "tree", "reloaded")[0]["detail"]
    assert reloaded == (
        "added middle; removed leaving; restarted second; unchanged outside, first; new settings for group"
    )
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    after = status(daemon)
    assert list(after) == ["outside", "group", "first", "middle", "second"]
    for kept in ("outside", "group", "first"):  # the group was not restarted: its children kept running
        assert after[kept]["host_pid"] == before[kept], kept
    assert (after["first"]["restarts"], after["group"]["restarts"]) == (1, 0)
    assert not process_alive(before["leaving"]) and not process_alive(before["second"])
    assert Path(f"/proc/{after['second']['host_pid']}/cmdline").read_bytes() == b"sleep\x00605\x00"
    assert after["middle"]["parent"] == "group"

    kill(daemon, "middle")  # rest_for_one now, in place: second (after middle) restarts too, first not
    assert wait_until(lambda: restarted(daemon, "middle", 1, after["middle"]["host_pid"]), TIMEOUT)
    assert wait_until(lambda: restarted(daemon, "second", 1, after["second"]["host_pid"]), TIMEOUT)
    assert status(daemon)["first"]["host_pid"] == before["first"]

    tree.write_text(
        textwrap.dedent(NESTED.format(strategy="rest_for_one", max_restarts=0, grandchildren=NEW_GRANDCHILDREN))
    )
    assert reload(daemon)["reconfigured"] == ["group"]
    kill(daemon, "second")  # past the group's new intensity: it gives up and the root restarts it...
    assert daemon.shows(r'"id": "group", "event": "restarted"'), daemon.lines
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    again = status(daemon)  # ...from its new spec: leaving is gone for good, middle is there
    assert list(again) == ["outside", "group", "first", "middle", "second"]
    assert again["group"]["restarts"] == 1 and again["first"]["host_pid"] != before["first"]
    assert again["outside"]["host_pid"] == before["outside"]
    assert daemon.stop() == 0


# -- the root's own settings ---------------------------------------------------------------------------

ROOT = """
    [supervisor]
    strategy = "{strategy}"
    max_restarts = {max_restarts}
    max_seconds = 60.0

    [[child]]
    id = "a"
    argv = ["sleep", "600"]

    [[child]]
    id = "b"
    argv = ["sleep", "601"]
"""


@pytest.mark.timeout(120)
def test_the_root_supervisors_new_settings_apply_in_place(tmp_path, running):
    tree = Path(write_tree(tmp_path, ROOT.format(strategy="one_for_one", max_restarts=10)))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    before = pids(daemon)
    tree.write_text(textwrap.dedent(ROOT.format(strategy="one_for_all", max_restarts=10)))
    assert reload(daemon) == {
        "added": [],
        "removed": [],
        "changed": [],
        "unchanged": ["a", "b"],
        "reconfigured": ["root"],
    }
    assert pids(daemon) == before  # nothing restarted by the change itself
    kill(daemon, "a")  # one_for_all now: b restarts with a
    assert wait_until(lambda: restarted(daemon, "a", 1, before["a"]), TIMEOUT)
    assert wait_until(lambda: restarted(daemon, "b", 1, before["b"]), TIMEOUT)

    tree.write_text(textwrap.dedent(ROOT.format(strategy="one_for_all", max_restarts=1)))
    assert reload(daemon)["reconfigured"] == ["root"]
    kill(daemon, "b")  # the second restart in max_seconds, past the new max_restarts = 1
    assert daemon.process.wait(TIMEOUT) == 1
    assert daemon.shows(r'"event": "gave_up", "detail": "more than 1 restarts in 60 s"'), daemon.lines


# -- a stop during a restart back-off -------------------------------------------------------------------

BACKING_OFF = """
    [supervisor]
    max_restarts = 10
    max_seconds = 10.0

    [[child]]
    id = "crasher"
    argv = ["sh", "-c", "{script}"]
    restart_delay = {delay}

    [[child]]
    id = "steady"
    argv = ["sleep", "600"]
"""


@pytest.mark.timeout(120)
def test_stop_during_a_back_off_acts_at_once_and_the_child_stays_stopped(tmp_path, running):
    daemon = running(write_tree(tmp_path, BACKING_OFF.format(script="exit 3", delay=3.0)), "--json")
    assert daemon.shows(r'"id": "crasher", "event": "backoff", "detail": "runs in 3 s"'), daemon.lines
    asked = time.monotonic()
    answer = request(str(daemon.control), {"verb": "stop", "id": "crasher"})  # the command's own client, timed
    took = time.monotonic() - asked
    print(f"stop during a 3 s back-off answered in {took:.3f} s")
    assert answer == "stopped" and took < 2.0  # at once: well before the 3 s delay, even under load
    assert status(daemon)["crasher"]["state"] == "stopped"
    assert daemon.shows(r'"id": "crasher", "event": "backoff_cancelled"')
    time.sleep(3.3)  # past the delay: the cancelled restart never comes
    assert len(events(daemon, "crasher", "checkpoint")) == 1 and status(daemon)["crasher"]["state"] == "stopped"
    assert status(daemon)["steady"]["restarts"] == 0
    assert daemon.control_command("start", "crasher").returncode == 0  # and it can be started again
    assert wait_until(lambda: len(events(daemon, "crasher", "exited")) == 2, TIMEOUT)
    assert wait_until(lambda: len(events(daemon, "crasher", "backoff")) == 2, TIMEOUT)  # waiting again
    assert request(str(daemon.control), {"verb": "start", "id": "crasher"}) == "started"  # during the wait: now
    assert wait_until(lambda: len(events(daemon, "crasher", "checkpoint")) == 3, 2.0)  # well before its 3 s
    assert daemon.stop() == 0


# -- reloads serialized with the start-up, a back-off, a give-up and each other ------------------------------


@pytest.mark.timeout(120)
def test_a_reload_during_the_start_up_waits_for_the_tree_to_be_up(tmp_path, running):
    many = "".join(f'\n[[child]]\nid = "s{n}"\nargv = ["sleep", "600"]\n' for n in range(100))
    tree = tmp_path / "tree.toml"
    tree.write_text(many)
    control = tmp_path / "control.sock"
    daemon = running(str(tree), "--json", control=control)
    assert wait_until(lambda: control.exists(), TIMEOUT, interval=0.002)
    tree.write_text(many + '\n[[child]]\nid = "late"\nargv = ["sleep", "601"]\n')
    asked = time.time()
    result = request(str(control), {"verb": "reload"})  # answered once the start has ended
    assert wait_until(lambda: events(daemon, "tree", "up"), TIMEOUT)  # "up" waits for the last workloads to run
    up = events(daemon, "tree", "up")
    assert asked < up[0]["time"], "the reload was to be asked before the tree was up"
    assert result["added"] == ["late"] and len(result["unchanged"]) == 100
    reloaded = status(daemon)
    assert list(reloaded)[-1] == "late" and len(reloaded) == 101
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_a_reload_during_a_back_off_replaces_the_waiting_restart(tmp_path, running):
    # A 6 s delay: noticing the back-off, reloading and starting the new child must all fit in it on a
    # loaded machine, or the old restart fires first.
    tree = Path(write_tree(tmp_path, BACKING_OFF.format(script="exit 3", delay=6.0)))
    daemon = running(str(tree), "--json")
    assert daemon.shows(r'"id": "crasher", "event": "backoff", "detail": "runs in 6 s"'), daemon.lines
    steady = pids(daemon)["steady"]
    tree.write_text(textwrap.dedent(BACKING_OFF.format(script="exec sleep 600", delay=6.0)))
    assert request(str(daemon.control), {"verb": "reload"})["changed"] == ["crasher"]
    assert wait_until(lambda: status(daemon)["crasher"]["state"] == "running", TIMEOUT)
    # status answers from the tree's state; the event's line reaches stdout (and this test) just after
    assert wait_until(lambda: len(events(daemon, "crasher", "running")) == 2, TIMEOUT), daemon.lines
    backoff, running = events(daemon, "crasher", "backoff")[0], events(daemon, "crasher", "running")
    assert running[1]["time"] < backoff["time"] + 6.0  # at once, not after the old delay
    pid = status(daemon)["crasher"]["host_pid"]
    time.sleep(
        max(0.0, backoff["time"] + 6.2 - time.time())
    )  # past the old delay: the cancelled restart started nothing
    row = status(daemon)["crasher"]
    assert (row["host_pid"], row["state"], row["restarts"]) == (pid, "running", 0)
    assert len(events(daemon, "crasher", "running")) == 2  # the crashed one and the new table's
    assert pids(daemon)["steady"] == steady
    assert daemon.stop() == 0


GIVING_UP = """
    [supervisor]
    max_restarts = 1000
    max_seconds = 1.0

    [[child]]
    id = "steady"
    argv = ["sleep", "600"]

    [[child]]
    id = "flaky"
    type = "supervisor"
    max_restarts = 0

    [[child.child]]
    id = "crashy"
    argv = ["sh", "-c", "sleep 0.2; exit 1"]
    {extra}
"""
EXTRA = """
    [[child.child]]
    id = "extra"
    argv = ["sleep", "{seconds}"]
"""


@pytest.mark.timeout(120)
def test_reloads_while_a_nested_supervisor_keeps_giving_up(tmp_path, running):
    tree = Path(write_tree(tmp_path, GIVING_UP.format(extra="")))
    daemon = running(str(tree), "--json")
    assert daemon.shows(r'"id": "flaky", "event": "restarted"'), daemon.lines
    steady = pids(daemon)["steady"]
    for number in range(6):
        tree.write_text(textwrap.dedent(GIVING_UP.format(extra=EXTRA.format(seconds=600 + number))))
        result = reload(daemon)  # each one answers, whether it met the group running or just given up
        assert "steady" in result["unchanged"], result
        assert {*result["added"], *result["changed"]} & {"extra", "flaky"}, result
        assert not result.get("failed"), result
    assert daemon.shows(r'"id": "crashy", "event": "gave_up"')  # flaky gave up on crashy
    assert len(events(daemon, "flaky", "restarted")) >= 3  # it went on giving up through the reloads
    assert daemon.process.poll() is None and pids(daemon)["steady"] == steady
    assert status(daemon)["extra"]["parent"] == "flaky"
    assert wait_until(lambda: status(daemon)["extra"]["state"] == "running", TIMEOUT)
    assert daemon.stop() == 0


QUICK_GIVER = GROUP + '\n[[child]]\nid = "w"\nargv = ["sleep", "1401"]\n'
"""A group that gives up at every turn (``test_daemon_state``'s replay of the crash), and a steady sibling."""


@pytest.mark.timeout(120)
def test_reloads_and_sighups_at_once_while_a_nested_group_gives_up_at_every_turn(tmp_path, running):
    """The hostile probe that once killed the loop (``KeyError: 'st'``) within a few dozen
    reloads: st changed by each reload, asked for over the socket and by SIGHUP at once, while
    g gives up (its cr exits at once) and the root restarts it, so reloads restart g whole. The
    daemon goes on, w is never touched, and the status names the tree's children. A race, so
    this met the old crash in about half its runs; test_daemon_state replays its order exactly."""
    tree = Path(write_tree(tmp_path, QUICK_GIVER.format(more="")))
    daemon = running(str(tree), "--json", "--name", run_scoped_name("hup"))
    assert daemon.shows(r'"id": "tree", "event": "up"'), daemon.lines
    steady = pids(daemon)["w"]
    failures: list[str] = []

    def ask_reload() -> None:  # with the command, as the probe did: it lands a moment after the SIGHUP
        result = daemon.control_command("reload")
        if result.returncode != 0:
            failures.append(result.stderr)

    clients = []
    for number in range(24):
        changed = tmp_path / "changed.toml"  # the file replaced whole, as an editor saves it
        changed.write_text(textwrap.dedent(QUICK_GIVER.format(more=', "0"' if number % 2 else "")))
        changed.replace(tree)
        clients.append(threading.Thread(target=ask_reload))
        clients[-1].start()
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # the probe's pace: g gives up and is restarted between reloads
    for client in clients:
        client.join(TIMEOUT)
    assert not failures and daemon.process.poll() is None, (failures, daemon.lines[-20:])
    assert not any('"internal_error"' in line or "Traceback" in line for line in daemon.lines)
    assert wait_until(lambda: set(status(daemon)) == {"g", "cr", "st", "w"}, TIMEOUT), status(daemon)
    assert pids(daemon)["w"] == steady
    assert daemon.stop() == 0 and not daemon.control.exists()


TWO = """
    [[child]]
    id = "same"
    argv = ["sleep", "600"]
    {coming}
"""
COMING = """
    [[child]]
    id = "coming"
    argv = ["sleep", "601"]
"""


@pytest.mark.timeout(120)
def test_two_reloads_and_a_sighup_at_once_apply_the_file_once(tmp_path, running):
    tree = Path(write_tree(tmp_path, TWO.format(coming="")))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    same = pids(daemon)["same"]
    tree.write_text(textwrap.dedent(TWO.format(coming=COMING)))
    replies: list[subprocess.CompletedProcess] = []
    clients = [
        threading.Thread(target=lambda: replies.append(daemon.control_command("reload", "--json"))) for _ in range(2)
    ]
    for client in clients:
        client.start()
    daemon.process.send_signal(signal.SIGHUP)
    for client in clients:
        client.join(TIMEOUT)
    assert daemon.shows(r'"id": "tree", "event": "reloaded"')
    results = [json.loads(reply.stdout)["result"] for reply in replies if reply.returncode == 0]
    assert len(results) == 2, replies
    detail = events(daemon, "tree", "reloaded")[0]["detail"]
    added = [result["added"] for result in results] + [["coming"] if detail.startswith("added coming") else []]
    assert sorted(added) == [[], [], ["coming"]]  # one of the three started it; the others found nothing to do
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    assert len(events(daemon, "coming", "checkpoint")) == 1 and pids(daemon)["same"] == same
    assert daemon.stop() == 0


def test_a_reload_without_a_daemon_says_so(tmp_path):
    result = subprocess.run(
        [*COMMAND, "reload", "--control", str(tmp_path / "none.sock")], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode != 0 and "no linx-otp daemon" in result.stderr


@pytest.mark.timeout(120)
def test_a_fifo_or_dev_zero_as_the_tree_file_is_refused_without_waiting_and_changes_nothing(tmp_path, running):
    """The probe's FIFO hung ``reload`` (and every reload after it, behind the lock), and a link
    to /dev/zero grew the daemon by 12 GB in 10 s: neither is read, the reply says why, and the
    next reload of a good file works."""
    tree = Path(write_tree(tmp_path, TWO.format(coming="")))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    before = pids(daemon)
    tree.unlink()
    os.mkfifo(tree)
    result = daemon.control_command("reload")
    assert result.returncode == 2, result
    assert f"{tree}: file: is a FIFO, not a regular file" in result.stderr and "nothing was changed" in result.stderr
    tree.unlink()
    tree.symlink_to("/dev/zero")
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.shows(r'"event": "reload_failed".*is a character device, not a regular file')
    tree.unlink()
    tree.write_text("#" * (1 << 20) + "\n")
    result = daemon.control_command("reload")
    assert result.returncode == 2 and "larger than 1 MiB" in result.stderr, result
    assert pids(daemon) == before
    tree.unlink()
    tree.write_text(textwrap.dedent(TWO.format(coming=COMING)))
    assert reload(daemon)["added"] == ["coming"]
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    assert pids(daemon)["same"] == before["same"]
    assert daemon.stop() == 0


UNREADY_AND_AFTER = """
    [[child]]
    id = "unready"
    argv = ["sleep", "603"]
    ready = {{ file = "{never}", timeout = 0.5, interval = 0.05 }}

    [[child]]
    id = "after"
    argv = ["sleep", "604"]
"""


def test_a_reload_some_of_whose_children_fail_to_start_says_which_and_exits_1(tmp_path, running):
    tree = Path(write_tree(tmp_path, TWO.format(coming="")))
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: all_running(daemon), TIMEOUT)
    tree.write_text(textwrap.dedent(TWO.format(coming=UNREADY_AND_AFTER.format(never=tmp_path / "never"))))
    result = daemon.control_command("reload", "--json")
    assert result.returncode == 1, result.stderr
    reply = json.loads(result.stdout)["result"]
    assert reply["added"] == ["after"] and list(reply["failed"]) == ["unready"], reply
    assert "readiness" in reply["failed"]["unready"] or "ready" in reply["failed"]["unready"], reply
    words = daemon.control_command("reload")  # the same file again: it tries the failed child again
    assert words.returncode == 1 and "unready failed to start" in words.stdout, (words.stdout, words.stderr)
    assert wait_until(lambda: status(daemon)["after"]["state"] == "running", TIMEOUT)
    assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_sighups_that_come_while_a_reload_waits_make_one_more_reload_not_one_each(tmp_path, running):
    """A reload waits for the start-up (here a readiness check the test holds back). Fifty
    SIGHUPs meanwhile made fifty threads and fifty reloads; now one thread waits, and the
    hangups that come while it does make one more reload after it."""
    go = tmp_path / "go"
    tree = Path(
        write_tree(
            tmp_path,
            f"""
            [[child]]
            id = "held"
            argv = ["sleep", "600"]
            ready = {{ command = ["test", "-e", "{go}"], timeout = 60, interval = 0.05 }}
            """,
        )
    )
    daemon = running(str(tree), "--json")
    assert wait_until(lambda: daemon.shows(r'"id": "held", "event": "running"'), TIMEOUT), daemon.lines
    threads_before = len(os.listdir(f"/proc/{daemon.process.pid}/task"))
    for _ in range(50):
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(0.002)
    time.sleep(0.5)  # every hangup handled by the loop
    # one reloader waiting (a spare actor thread or a check may come and go), not one per hangup
    assert len(os.listdir(f"/proc/{daemon.process.pid}/task")) <= threads_before + 4
    go.touch()
    assert wait_until(lambda: events(daemon, "tree", "reloaded"), TIMEOUT), daemon.lines
    time.sleep(1)
    assert 1 <= len(events(daemon, "tree", "reloaded")) <= 2
    assert daemon.stop() == 0
