"""Every validation error: the documented ``.reason``, a ValueError, a message that says what is
expected, and nothing started."""

from __future__ import annotations

import threading

import pytest
from support import child_pids, needs_root

import linx_otp
from linx_otp import process as P

GOOD = {"argv": ["/bin/true"]}


@pytest.mark.parametrize(
    "options, reason",
    [
        ({}, "argv_required"),
        ({"argv": []}, "argv_required"),
        ({"argv": "/bin/true"}, "argv_required"),
        ({"argv": None}, "argv_required"),
        ({"argv": [1]}, "argv_required"),
        ({"argv": ["/bin/echo", 1]}, ("bad_argv", ["/bin/echo", 1])),
        ({"argv": ["/bin/echo", "a\0b"]}, ("bad_argv", ["/bin/echo", "a\0b"])),
        ({**GOOD, "namespaces": ["typo"]}, ("bad_namespaces", ["typo"])),
        ({**GOOD, "namespaces": ["net", "typo", "pid", "nope"]}, ("bad_namespaces", ["typo", "nope"])),
        ({**GOOD, "namespaces": "net"}, ("bad_namespaces", ("not_a_list", "net"))),
        ({**GOOD, "namespaces": 5}, ("bad_namespaces", ("not_a_list", 5))),
        ({**GOOD, "env": 5}, ("bad_env", ("not_a_list", 5))),
        ({**GOOD, "env": "A=1"}, ("bad_env", ("not_a_list", "A=1"))),
        ({**GOOD, "env": ["A=1", 2]}, ("bad_env", ("not_all_strings", ["A=1", 2]))),
        ({**GOOD, "env": ["NOEQUALS"]}, ("bad_env", ("bad_entry", "NOEQUALS"))),
        ({**GOOD, "env": ["=1"]}, ("bad_env", ("bad_entry", "=1"))),
        ({**GOOD, "env": {"A=B": "1"}}, ("bad_env", ("bad_entry", "A=B"))),
        ({**GOOD, "env": {"A": 1}}, ("bad_env", ("not_all_strings", {"A": 1}))),
        ({**GOOD, "stdio": "bogus"}, ("bad_stdio", "bogus")),
        ({**GOOD, "stdio": 3}, ("bad_stdio", 3)),
        ({**GOOD, "stdio": {"stdfoo": "devnull"}}, ("bad_stdio", ("bad_fd_entry", "stdfoo"))),
        ({**GOOD, "stdio": {"stdout": "pty"}}, ("bad_stdio", ("bad_directive", "pty"))),
        ({**GOOD, "stdio": {"stdout": ("connect_unix", 5)}}, ("bad_stdio", ("bad_directive", ("connect_unix", 5)))),
        ({**GOOD, "stdio": {"stdout": ("connect_tcp", "x")}}, ("bad_stdio", ("bad_directive", ("connect_tcp", "x")))),
        ({**GOOD, "cwd": 5}, ("bad_cwd", 5)),
        ({**GOOD, "cwd": "/tmp\0x"}, ("bad_cwd", "/tmp\0x")),
        ({**GOOD, "no_new_privs": "yes"}, ("bad_no_new_privs", "yes")),
        ({**GOOD, "orphan_policy": "nuke"}, ("bad_orphan_policy", "nuke")),
        ({**GOOD, "orphan_policy": ("kill", -1)}, ("bad_orphan_policy", ("kill", -1))),
        ({**GOOD, "orphan_policy": ("kill", "fast")}, ("bad_orphan_policy", ("kill", "fast"))),
        ({**GOOD, "orphan_policy": ("kill", float("inf"))}, ("bad_orphan_policy", ("kill", float("inf")))),
        ({**GOOD, "orphan_policy": ("kill", 3_000_000)}, ("bad_orphan_policy", ("kill", 3_000_000))),
        ({**GOOD, "owner": 42}, ("bad_owner", 42)),
        ({**GOOD, "linger": "no"}, ("bad_linger", "no")),
        ({**GOOD, "auto_proceed": 1}, ("bad_auto_proceed", 1)),
    ],
)
def test_bad_options_raise_with_the_spec_reason_and_start_nothing(options, reason):
    before = (set(child_pids()), threading.active_count())
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(**options)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert str(caught.value), "the message says what was expected"
    assert (set(child_pids()), threading.active_count()) == before


def test_validation_runs_in_the_originals_order():
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=[], namespaces=["typo"], env=5)
    assert caught.value.reason == "argv_required"
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=["/bin/true"], namespaces=["typo"], env=5)
    assert caught.value.reason == ("bad_namespaces", ["typo"])
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=["/bin/true"], env=5, stdio="bogus")
    assert caught.value.reason == ("bad_env", ("not_a_list", 5))


def test_enter_validates_like_spawn():
    with pytest.raises(linx_otp.LinxError) as caught:
        P.enter(1, argv=["/bin/true"], namespaces=["typo"])
    assert caught.value.reason == ("bad_namespaces", ["typo"])


def test_unknown_options_are_a_type_error():
    with pytest.raises(TypeError):
        P.spawn(argv=["/bin/true"], namespace=["net"])


@pytest.mark.parametrize(
    "size",
    [(1, 2, 3), (1, 2, 3, -1), (1, 2, 3, 65536), ("a", 1, 1, 1), {"rows": 1}, None, (1.0, 2, 3, 4)],
)
def test_bad_window_sizes(size):
    with pytest.raises(linx_otp.LinxError) as caught:
        P.pty_set_winsize(None, size)  # checked before the session is looked at
    assert caught.value.reason == ("bad_winsize", size)


def test_bytes_argv_and_path_like_cwd_work(tmp_path):
    session = P.spawn(argv=[b"/bin/true", b"\xff"], cwd=tmp_path, auto_proceed=True)
    assert P.wait(session) == ("exited", 0)


@needs_root
def test_duplicate_namespaces_are_allowed():
    session = P.spawn(argv=["/bin/true"], namespaces=["uts", "uts"], auto_proceed=True)
    assert P.wait(session) == ("exited", 0)


def test_missing_agent_binary_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("LINX_OTP_AGENT", str(tmp_path / "nothing-here"))
    with pytest.raises(linx_otp.LinxError) as caught:
        P.spawn(argv=["/bin/true"])
    assert caught.value.reason == ("missing_binary", str(tmp_path / "nothing-here"))
