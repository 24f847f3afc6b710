"""README, "The linx-otp command" Instances: named daemons side by side never touch each other's workloads, cgroups
or links; a host resource someone else owns is refused and left alone; a killed instance's
leftovers are cleaned by its successor of the same name, and nothing else is."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import test_cli
from support import needs_root, process_alive, wait_until
from test_cli import COMMAND, TIMEOUT, write_tree

from linx_otp import cgroup as Cgroup
from linx_otp import netlink as Netlink

running = test_cli.running  # the fixture, shared

pytestmark = needs_root


def cgroup_dir(instance: str, child: str) -> Path:
    return Path(Cgroup.detect().v2_root, "linx-otp", instance, child)


def aliases() -> dict[str, str]:
    with Netlink.open() as host:
        return Netlink.link_aliases(host)


def fenced_tree(tmp_path: Path, name: str, link: str, subnet: str) -> str:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return write_tree(
        path,
        f"""
        [[child]]
        id = "web"
        argv = ["sleep", "600"]
        namespaces = ["net"]
        shutdown = 1.0
        [child.setup]
        veth = {{ host = "{link}", address = "{subnet}.2", prefixlen = 30, host_address = "{subnet}.1" }}
        cgroup = {{ pids_max = 8 }}

        [[child]]
        id = "bystander"
        argv = ["sleep", "600"]
        """,
    )


def test_two_named_demo_instances_run_side_by_side_and_stop_apart(tmp_path, running):
    alpha = running(None, "--name", "alpha", control=tmp_path / "alpha.sock")
    beta = running(None, "--name", "beta", control=tmp_path / "beta.sock")
    for daemon in (alpha, beta):
        assert daemon.shows(r"client \| web answered: hello from web"), "\n".join(daemon.lines)
    marks = aliases()
    assert marks["lxd-alpha"] == "linx-otp:alpha:web" and marks["lxd-beta"] == "linx-otp:beta:web"
    assert cgroup_dir("alpha", "web").is_dir() and cgroup_dir("beta", "web").is_dir()
    beta_pids = {name: int(beta.status()[name]["host_pid"]) for name in ("web", "client", "ticker")}  # not the crasher
    assert alpha.stop() == 0
    assert wait_until(lambda: "lxd-alpha" not in aliases())
    assert not cgroup_dir("alpha", "web").parent.exists()
    assert aliases()["lxd-beta"] == "linx-otp:beta:web" and cgroup_dir("beta", "web").is_dir()
    assert all(process_alive(pid) for pid in beta_pids.values())
    answered = len(beta.lines)
    assert beta.shows(r"client \| web answered: hello from web", after=answered)
    assert beta.stop() == 0
    assert not cgroup_dir("beta", "web").parent.exists() and "lxd-beta" not in aliases()


def test_two_trees_with_the_same_child_ids_stop_without_touching_each_other(tmp_path, running):
    one = running(fenced_tree(tmp_path, "one", "lxone0", "10.81.1"), "--name", "one", control=tmp_path / "one.sock")
    two = running(fenced_tree(tmp_path, "two", "lxtwo0", "10.81.2"), "--name", "two", control=tmp_path / "two.sock")
    for daemon in (one, two):
        assert daemon.shows(r"web \| running") and daemon.shows(r"bystander \| running"), "\n".join(daemon.lines)
    two_pids = [int(two.status()[child]["host_pid"]) for child in ("web", "bystander")]
    assert str(two_pids[0]) in cgroup_dir("two", "web").joinpath("cgroup.procs").read_text()
    assert one.stop() == 0
    assert all(process_alive(pid) for pid in two_pids)
    assert cgroup_dir("two", "web").is_dir() and not cgroup_dir("one", "web").exists()
    assert wait_until(lambda: "lxone0" not in aliases()) and aliases()["lxtwo0"] == "linx-otp:two:web"
    assert two.stop() == 0
    assert not any(process_alive(pid) for pid in two_pids)


def test_a_link_or_address_someone_else_owns_is_refused_naming_the_owner(tmp_path, running):
    owner = running(fenced_tree(tmp_path, "own", "lxowned0", "10.82.1"), "--name", "owner", control=tmp_path / "o.sock")
    assert owner.shows(r"web \| running")
    owner_pid = int(owner.status()["web"]["host_pid"])
    taker = running(
        fenced_tree(tmp_path, "take", "lxowned0", "10.82.2"), "--name", "taker", control=tmp_path / "t.sock"
    )
    assert taker.shows(r"web \| setup_failed host link 'lxowned0' is owned by linx-otp instance 'owner'"), "\n".join(
        taker.lines
    )
    assert wait_until(lambda: taker.status()["web"]["state"] == "stopped", TIMEOUT), taker.status()
    assert taker.status()["bystander"]["state"] == "running" and not any("gave_up" in line for line in taker.lines)
    address_taker = running(
        fenced_tree(tmp_path, "addr", "lxaddr0", "10.82.1"), "--name", "addresses", control=tmp_path / "a.sock"
    )
    assert address_taker.shows(r"web \| setup_failed host address 10\.82\.1\.1 is held by link 'lxowned0'"), "\n".join(
        address_taker.lines
    )
    assert aliases()["lxowned0"] == "linx-otp:owner:web" and process_alive(owner_pid)
    assert owner.status()["web"]["host_pid"] == owner_pid
    for daemon in (address_taker, taker, owner):
        assert daemon.stop() == 0


def test_a_link_linx_otp_did_not_make_is_never_deleted(tmp_path, running):
    with Netlink.open() as host:
        Netlink.create_veth(host, "lxforeign0", "lxforeign1")
    try:
        daemon = running(
            fenced_tree(tmp_path, "f", "lxforeign0", "10.83.1"), "--name", "f", control=tmp_path / "f.sock"
        )
        assert daemon.shows(r"web \| setup_failed host link 'lxforeign0' is not linx-otp's"), "\n".join(daemon.lines)
        assert daemon.stop() == 0
        assert "lxforeign0" in aliases() and "lxforeign1" in aliases()
    finally:
        with Netlink.open() as host:
            Netlink.delete_link(host, "lxforeign0", missing_ok=True)


def test_a_restart_after_kill_9_cleans_exactly_its_own_leftovers(tmp_path, running):
    victim_tree = fenced_tree(tmp_path, "victim", "lxvictim0", "10.84.1")
    victim = running(victim_tree, "--name", "victim", control=tmp_path / "victim.sock")
    neighbour = running(
        fenced_tree(tmp_path, "neighbour", "lxneigh0", "10.84.2"), "--name", "neighbour", control=tmp_path / "n.sock"
    )
    for daemon in (victim, neighbour):
        assert daemon.shows(r"web \| running") and daemon.shows(r"bystander \| running")
    neighbour_pids = [int(neighbour.status()[child]["host_pid"]) for child in ("web", "bystander")]
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    assert victim.control.exists() and cgroup_dir("victim", "web").is_dir(), "kill -9 leaves these behind"
    successor = running(victim_tree, "--name", "victim", control=victim.control)
    assert successor.shows(r"daemon \| cleaned a killed predecessor's cgroup linx-otp/victim/web"), "\n".join(
        successor.lines
    )
    assert successor.shows(r"web \| running"), "\n".join(successor.lines)
    assert successor.status()["web"]["state"] == "running"
    assert all(process_alive(pid) for pid in neighbour_pids)
    assert cgroup_dir("neighbour", "web").is_dir() and aliases()["lxneigh0"] == "linx-otp:neighbour:web"
    assert neighbour.status()["web"]["host_pid"] == neighbour_pids[0]
    assert not any("cleaned" in line for line in neighbour.lines)
    for daemon in (successor, neighbour):
        assert daemon.stop() == 0
    assert not Path(Cgroup.detect().v2_root, "linx-otp", "victim").exists()
    result = subprocess.run(["ip", "link", "show", "lxvictim0"], capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("name", ["", "../x", "a" * 33])
def test_a_bad_instance_name_is_refused_even_empty(name, tmp_path):
    """``--name "$UNSET"`` must not quietly drive the shared ``default`` instance."""
    result = subprocess.run([*COMMAND, "--name", name, "status"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert "an instance name is 1 to 32 letters" in result.stderr and repr(name) in result.stderr, result.stderr
