"""Tree files: every value is checked at load, every problem is named in one message, and the
instance placeholders make one file run as several instances."""

from __future__ import annotations

import subprocess
import sys

import pytest

from linx_otp import tree as old_import_path
from linx_otp.daemon.tree import TreeError, instance_values, parse_file, parse_text

NET_CHILD = '[[child]]\nid = "a"\nargv = ["true"]\nnamespaces = ["net", "uts"]\n'


def problems(text: str) -> dict[str, str]:
    with pytest.raises(TreeError) as caught:
        parse_text(text, "t.toml")
    return dict(caught.value.problems)


@pytest.mark.parametrize(
    ("setup", "where", "what"),
    [
        ('veth = { host = "h", address = "not-an-ip", prefixlen = 30 }', "veth.address", "IPv4 address"),
        ('veth = { host = "h", address = "10.0.0.2", prefixlen = 999 }', "veth.prefixlen", "0..32"),
        ('veth = { host = "h", address = "10.0.0.2", prefixlen = true }', "veth.prefixlen", "0..32"),
        ('veth = { host = "h", address = "10.0.0.2", prefixlen = 30, gateway = "10.0.0.256" }', "veth.gateway", "IPv4"),
        (
            'veth = { host = "h", address = "10.0.0.2", prefixlen = 30, host_address = "::1" }',
            "veth.host_address",
            "IPv4",
        ),
        (f'veth = {{ host = "{"x" * 39}", address = "10.0.0.2", prefixlen = 30 }}', "veth.host", "15 bytes"),
        ('veth = { host = "a/b", address = "10.0.0.2", prefixlen = 30 }', "veth.host", "15 bytes"),
        (f'hostname = "{"h" * 100}"', "hostname", "64 bytes"),
        ('hostname = "-bad-"', "hostname", "labels"),
        ('hostname = "under_score"', "hostname", "labels"),
    ],
)
def test_network_values_are_checked(setup, where, what):
    found = problems(NET_CHILD + "[child.setup]\n" + setup + "\n")
    assert what in found[f"child[0].setup.{where}"], found


@pytest.mark.parametrize(
    ("cgroup", "key", "what"),
    [
        ('memory_max = "lots"', "memory_max", "'max'"),
        ("pids_max = -1", "pids_max", "int >= 0"),
        ("pids_max = 1.5", "pids_max", "int >= 0"),
        ("cpu_max = [0, 100000]", "cpu_max", "quota_us"),
    ],
)
def test_sizes_are_an_int_or_max(cgroup, key, what):
    found = problems('[[child]]\nid = "a"\nargv = ["true"]\n[child.setup.cgroup]\n' + cgroup + "\n")
    assert what in found[f"child[0].setup.cgroup.{key}"], found


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[[child]]\nid = "a"\nargv = ["true"]\nshutdown = inf\n', "child[0].shutdown"),
        ('[[child]]\nid = "a"\nargv = ["true"]\nshutdown = -1\n', "child[0].shutdown"),
        ('[supervisor]\nmax_seconds = nan\n[[child]]\nid = "a"\nargv = ["true"]\n', "supervisor.max_seconds"),
        ('[supervisor]\nmax_seconds = 0\n[[child]]\nid = "a"\nargv = ["true"]\n', "supervisor.max_seconds"),
        (
            '[[child]]\nid = "g"\ntype = "supervisor"\nmax_seconds = inf\n[[child.child]]\nid = "b"\nargv = ["true"]\n',
            "child[0].max_seconds",
        ),
    ],
)
def test_durations_are_finite(text, where):
    assert where in problems(text)


def test_every_bad_key_path_is_named_in_one_message():
    text = """
[supervisor]
strategy = "all_for_none"
max_restarts = -1
[[child]]
id = "a"
argv = ["true"]
namespaces = ["net", "uts"]
shutdown = inf
colour = "red"
[child.setup]
hostname = "x"
veth = { host = "an-interface-name-far-too-long", address = "not-an-ip", prefixlen = 999 }
cgroup = { memory_max = "lots" }
[[child]]
id = "b"
argv = "not a list"
"""
    with pytest.raises(TreeError) as caught:
        parse_text(text, "t.toml")
    expected = {
        "supervisor.strategy",
        "supervisor.max_restarts",
        "child[0].shutdown",
        "child[0].colour",
        "child[0].setup.veth.host",
        "child[0].setup.veth.address",
        "child[0].setup.veth.prefixlen",
        "child[0].setup.cgroup.memory_max",
        "child[1].argv",
    }
    assert set(dict(caught.value.problems)) == expected
    lines = str(caught.value).splitlines()
    assert len(lines) == len(expected) and all(line.startswith("t.toml: ") for line in lines)


def test_a_bad_file_exits_2_naming_every_problem(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[child]]\nid = "a"\nargv = ["true"]\nshutdown = inf\n[supervisor]\nmax_seconds = nan\n')
    result = subprocess.run(
        [sys.executable, "-m", "linx_otp", "run", str(path), "--control", str(tmp_path / "c.sock")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert f"{path}: child[0].shutdown:" in result.stderr and f"{path}: supervisor.max_seconds:" in result.stderr
    assert not (tmp_path / "c.sock").exists() and not (tmp_path / "c.sock.lock").exists()


def test_instance_placeholders_give_each_instance_its_own_link_and_subnet():
    demo = parse_file(old_import_path.__file__.replace("tree.py", "trees/demo.toml"))
    web = demo.children[0]
    assert web.setup.veth.host == "lxd-default" and web.setup.veth.address == "10.78.0.2"
    named = parse_file(old_import_path.__file__.replace("tree.py", "trees/demo.toml"), instance="blue")
    veth = named.children[0].setup.veth
    assert veth.host == "lxd-blue" and veth.address != "10.78.0.2"
    assert veth.address.rsplit(".", 1)[0] == instance_values("blue")["instance_net"]
    assert "10.78." in " ".join(named.children[0].options["argv"]) and "${" not in str(named)
    long_tag = instance_values("a-very-long-instance-name")["instance_tag"]
    assert len(long_tag) <= 8 and long_tag != instance_values("a-very-long-instance-name-2")["instance_tag"]


def test_the_old_import_path_still_works():
    assert old_import_path.parse_text is parse_text and old_import_path.TreeError is TreeError
