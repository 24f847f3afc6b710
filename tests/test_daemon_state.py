"""The tree's state as data: reports and events in, status and refs out, with no process; and
the loop's ``learn``/``forget`` against a reload's in the order that once crashed it."""

from __future__ import annotations

import pytest

from linx_otp import LinxError
from linx_otp import supervisor as S
from linx_otp.daemon.instance import Instance
from linx_otp.daemon.run import Daemon, ReloadOutcome
from linx_otp.daemon.state import TreeState, describe_exit
from linx_otp.daemon.tree import parse_text

TREE = """
[[child]]
id = "web"
argv = ["true"]
[[child]]
id = "workers"
type = "supervisor"
[[child.child]]
id = "crasher"
argv = ["true"]
"""


@pytest.fixture
def state():
    now = [1000.0]
    created = TreeState(parse_text(TREE, "t.toml"), clock=lambda: now[0])
    created.root = "root-ref"
    created.now = now
    return created


def test_refs_come_from_the_supervisor_reports_and_locate_uses_them(state):
    with pytest.raises(LinxError, match="not running"):
        state.locate("crasher")  # its supervisor has not started yet
    state.supervisor_report("started", "web", "web-session-1")
    state.supervisor_report("started", "workers", "workers-supervisor")
    state.supervisor_report("started", "crasher", "crasher-session-1")
    assert state.locate("web") == ("root-ref", "web-session-1")
    assert state.locate("crasher") == ("workers-supervisor", "crasher-session-1")
    state.child_event("crasher", "exited", [3])
    state.supervisor_report("exited", "crasher", ("exited", 3))
    assert state.locate("crasher") == ("workers-supervisor", None)
    state.supervisor_report("restarted", "crasher", "crasher-session-2")
    assert state.locate("crasher") == ("workers-supervisor", "crasher-session-2")
    with pytest.raises(LinxError, match="no child 'nobody'"):
        state.locate("nobody")
    with pytest.raises(LinxError, match="no child"):
        state.locate(["a", "list"])


def test_a_back_off_shows_in_the_state_until_the_restart_or_a_stop(state):
    state.supervisor_report("started", "web", "s1")
    state.child_event("web", "exited", [3])
    state.supervisor_report("exited", "web", ("exited", 3))
    state.supervisor_report("backoff", "web", 0.4)
    assert state.status()[0]["state"] == "backoff"
    state.supervisor_report("backoff_cancelled", "web", "stopped before its restart")
    row = state.status()[0]
    assert (row["state"], row["last_exit"], row["restarts"]) == ("stopped", "exited 3", 0)


def test_a_reload_learns_children_under_their_parent_and_arranges_the_start_order(state):
    added = parse_text('[[child]]\nid = "early"\nargv = ["true"]\n', "t.toml")
    state.learn(added, "workers")
    assert [row["id"] for row in state.status()] == ["web", "workers", "crasher", "early"]
    state.arrange(
        parse_text(
            TREE.replace(
                '[[child.child]]\nid = "crasher"',
                '[[child.child]]\nid = "early"\nargv = ["true"]\n[[child.child]]\nid = "crasher"',
            ),
            "t.toml",
        )
    )
    rows = state.status()
    assert [(row["id"], row["parent"]) for row in rows] == [
        ("web", None),
        ("workers", None),
        ("early", "workers"),
        ("crasher", "workers"),
    ]


def test_status_counts_restarts_and_says_exits_in_words(state):
    state.supervisor_report("started", "web", "s1")
    state.child_event("web", "ready", [10])
    state.child_event("web", "running", [])
    state.now[0] += 7
    row = {r["id"]: r for r in state.status()}["web"]
    assert (row["state"], row["host_pid"], row["uptime"], row["restarts"]) == ("running", 10, 7.0, 0)
    state.child_event("web", "signaled", [9])
    state.supervisor_report("exited", "web", ("signaled", 9))
    state.supervisor_report("restarted", "web", "s2")
    state.count_restart("web")  # a restart asked for over the control socket
    row = {r["id"]: r for r in state.status()}["web"]
    assert (row["restarts"], row["last_exit"], row["host_pid"]) == (2, "killed by SIGKILL", None)


def test_an_event_about_a_child_it_does_not_know_changes_nothing(state):
    state.supervisor_report("started", "crasher", "crasher-session-1")
    before = state.status()
    state.forget(["crasher"])  # a reload removed it; its last incarnation still has things to say
    assert state.child_event("crasher", "signaled", [15]) is False
    assert state.child_event("nobody", "running", []) is False
    state.count_restart("crasher")  # a restart asked for just before the reload removed it
    assert state.status() == [row for row in before if row["id"] != "crasher"]
    assert state.child_event("web", "running", []) is True


GROUP = """
[supervisor]
max_restarts = 1000000
max_seconds = 1
[[child]]
id = "g"
type = "supervisor"
max_restarts = 0
max_seconds = 10
[[child.child]]
id = "cr"
argv = ["sh", "-c", "sleep 0.02; exit 3"]
[[child.child]]
id = "st"
argv = ["sleep", "1400"{more}]
"""


def ended_supervisor(child_id: str):
    """A supervisor that has ended (as ``g`` had, having given up, when the reload met it)."""
    supervisor = S.start([], id=child_id)
    S.stop(supervisor)
    return supervisor


def test_a_group_restarted_whole_by_a_reload_keeps_workloads_and_records_in_step(tmp_path):
    """The order that crashed the loop with ``KeyError: 'st'``: the reload thread changes ``st``
    in a group that has just given up (its start meets ``no_process``), the loop handles the
    queued forget/learn/forget, the reload thread restarts the group whole, and an old
    incarnation's event comes before the loop has learned the new group. The reload thread
    writes nothing the loop reads: the event finds no workload, is reported once and ignored,
    and afterwards the loop's workloads and the state's records name the same children."""
    old = parse_text(GROUP.format(more=', "0"'), "t.toml")
    new = parse_text(GROUP.format(more=""), "t.toml")
    daemon = Daemon(old, Instance("racefix-unit", str(tmp_path / "c.sock")))
    lines: list[tuple] = []
    daemon.report = lambda *line: lines.append(line)

    def loop_handles_what_is_queued() -> None:
        while True:
            try:
                assert daemon.handle(daemon.inbox.receive(timeout=0)) is None
            except TimeoutError:
                return

    [old_group], [new_group] = old.children, new.children
    outcome = ReloadOutcome()
    group, root = ended_supervisor("g"), ended_supervisor("root")
    daemon.remove_child(group, old_group.children[1])  # st changed: the old one stopped...
    with pytest.raises(LinxError) as raised:
        daemon.start_in_place(group, "g", new_group.children[1], None, outcome)  # ...the new one meets g gone
    assert raised.value.reason == "no_process"
    loop_handles_what_is_queued()
    daemon.remove_child(root, old_group)  # "restarting it whole: the supervisor is gone"
    with pytest.raises(LinxError):
        daemon.start_in_place(root, None, new_group, None, outcome)
    daemon.handle(("child", "st", ("linx_process", "signaled", 15)))  # the old st, on its way out
    daemon.handle(("child", "st", ("linx_process", "exited", 0)))
    assert lines == [("st", "ignored", "its signaled event: it is not in the tree (now)")]
    assert "st" not in daemon.workloads and not daemon.state.has("st")
    loop_handles_what_is_queued()
    assert daemon.state.status() == [] and daemon.workloads == {}  # the group's start failed too: forgotten whole


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (("exited", 3), "exited 3"),
        ("normal", "exited 0"),
        (("signaled", 15), "killed by SIGTERM"),
        (("error", 2, "execve"), "execve failed: ENOENT (No such file or directory)"),
        (("error", 13, "execve"), "execve failed: EACCES (Permission denied)"),
        (("shutdown", "aborted"), "aborted at the checkpoint"),
        (("error", 9, "agent_died"), "its agent died (status 9)"),
        (("reached_max_restart_intensity", 3, 5.0), "more than 3 restarts in 5 s"),
    ],
)
def test_exits_in_words(reason, words):
    assert describe_exit(reason) == words
