"""The tree's state as data: reports and events in, status and refs out, with no process."""

from __future__ import annotations

import pytest

from linx_otp import LinxError
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
