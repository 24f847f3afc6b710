"""Network setup at the checkpoint with real links in real namespaces."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import needs_root, run_scoped_name

import linx_otp
from linx_otp import process as P
from linx_otp.checkpoint import netlink as N
from linx_otp.errors import LinxOSError

pytestmark = needs_root
TIMEOUT = 10
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def host():
    handle = N.open()
    yield handle
    handle.close()


def parked(box, argv, namespaces=("net",)):
    session = P.spawn(argv=argv, namespaces=list(namespaces), owner=box, stdio="devnull")
    return session, box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]


def test_a_fresh_netns_holds_only_lo(box):
    session, pid = parked(box, ["/bin/true"])
    inside = N.open(pid)
    try:
        assert N.link_names(inside) == ["lo"]
    finally:
        inside.close()
        session.stop()


def test_a_veth_created_in_place_carries_tcp_between_host_and_workload(host, box):
    host_end = run_scoped_name("h0")  # a host link of this run's
    server = "import socket; s = socket.create_server(('10.200.0.2', 8080)); c, _ = s.accept(); c.sendall(c.recv(100).upper())"
    session, pid = parked(box, [sys.executable, "-c", server])
    try:
        N.create_veth(host, host_end, "ct0", peer_pid=pid)
        assert "ct0" not in N.link_names(host)
        N.add_address(host, host_end, "10.200.0.1", 30)
        N.set_up(host, host_end)
        inside = N.open(pid)
        try:
            assert N.link_names(inside) == ["lo", "ct0"]
            N.set_up(inside, "lo")
            N.add_address(inside, "ct0", "10.200.0.2", 30)
            N.set_up(inside, "ct0")
        finally:
            inside.close()
        P.proceed(session)
        box.receive(("linx_process", "running"), timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                connection = socket.create_connection(("10.200.0.2", 8080), timeout=TIMEOUT)
                break
            except ConnectionRefusedError:  # the server (a Python) is still starting
                assert time.monotonic() < deadline, "the workload never listened"
                time.sleep(0.02)
        with connection:
            connection.sendall(b"hello over veth")
            assert connection.recv(100) == b"HELLO OVER VETH"
        assert P.wait(session, TIMEOUT) == ("exited", 0)
    finally:
        session.stop()
        N.delete_link(host, host_end, missing_ok=True)  # it may be going with the netns


def test_the_seeds_motivating_use_case_runs_as_written():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "netns_checkpoint.py")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "inet 10.0.0.5/24" in result.stdout and "default via 10.0.0.1 dev ct0" in result.stdout, result.stdout


def test_netlink_errors_name_the_operation_and_errno(host):
    with pytest.raises(LinxOSError) as raised:
        N.set_up(host, "no-such-link")
    assert raised.value.reason == ("set_up", "enodev")
    with pytest.raises(LinxOSError) as raised:
        N.add_address(host, "no-such-link", "10.9.9.9", 24)
    assert raised.value.reason == ("link_lookup", "enodev")
    with pytest.raises(LinxOSError) as raised:
        N.create_veth(host, "lo", run_scoped_name("peer"))
    assert raised.value.reason == ("create_veth", "eexist")
    with pytest.raises(linx_otp.LinxValueError):
        N.create_macvlan(host, "ct9", "eth0", "sideways")
    with pytest.raises(LinxOSError) as raised:
        N.delete_link(host, "no-such-link")
    assert raised.value.reason == ("delete_link", "enodev")
    N.delete_link(host, "no-such-link", missing_ok=True)
    with pytest.raises(LinxOSError) as raised:
        N.open(2**22 + 1)
    assert raised.value.reason == ("open_ns", "enoent")


def test_a_macvlan_created_in_place(host, box):
    session, pid = parked(box, ["/bin/true"])
    try:
        N.create_macvlan(host, "ct1", "eth0", "bridge", pid=pid)
        inside = N.open(pid)
        try:
            assert N.link_names(inside) == ["lo", "ct1"]
        finally:
            inside.close()
        assert "ct1" not in N.link_names(host)
    finally:
        session.stop()


def test_setup_veth_does_the_whole_checkpoint_network_in_one_call(host, box):
    host_end = run_scoped_name("h1")  # a host link of this run's
    script = "ip -4 -o addr show eth0; ip route; busybox ping -c1 -W2 10.201.0.1 | grep -c ' 0% packet loss'"
    session = P.spawn(argv=["/bin/sh", "-c", script], namespaces=["net", "mount"], stdio="pty", owner=box)
    pid = box.receive(("linx_process", "ready"), timeout=TIMEOUT)[2]
    try:
        N.setup_veth(
            pid,
            host_name=host_end,
            address="10.201.0.2",
            prefixlen=30,
            gateway="10.201.0.1",
            host_address="10.201.0.1",
        )
        assert host_end in N.link_names(host)
        P.proceed(session)
        assert P.wait(session, TIMEOUT) == ("exited", 0)
        output = b"".join(event[2] for event in box.flush() if event[1] == "pty_out").decode()
        assert "inet 10.201.0.2/30" in output and "default via 10.201.0.1 dev eth0" in output
        assert output.strip().splitlines()[-1] == "1"  # the host end answered a ping
    finally:
        session.stop()
        N.delete_link(host, host_end, missing_ok=True)


def test_setup_veth_refuses_bad_input_before_creating_anything(host, box):
    host_end = run_scoped_name("h2")  # a host link of this run's
    session, pid = parked(box, ["/bin/true"])
    for arguments, reason in [
        ({"address": "fe80::1", "prefixlen": 64}, ("bad_ipv4_address", "fe80::1")),
        ({"address": "10.0.0.2", "prefixlen": 33}, ("bad_prefixlen", 33)),
        ({"address": "10.0.0.2", "prefixlen": 30, "gateway": "nowhere"}, ("bad_ipv4_address", "nowhere")),
    ]:
        with pytest.raises(linx_otp.LinxValueError) as raised:
            N.setup_veth(pid, host_name=host_end, **arguments)
        assert raised.value.reason == reason
    assert host_end not in N.link_names(host)
    session.stop()
