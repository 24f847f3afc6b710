"""Starting an agent: the request is in its socket before the agent runs (``AgentConnection.start``
sends what the socket takes first), and a request bigger than that still arrives whole."""

from __future__ import annotations

import fcntl
import os
import socket
import termios

import linx_otp
from linx_otp import process as P
from linx_otp import protocol

TIMEOUT = 10


def socket_takes_before_it_blocks() -> int:
    """Bytes a fresh socket pair's end takes without a reader, as the start's first send sees it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        total = 0
        try:
            while True:
                total += ours.send(b"x" * 65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return total


def captured_stdout(box: linx_otp.Mailbox) -> bytes:
    output = b""
    while True:
        event = box.receive(("linx_process",), timeout=TIMEOUT)
        if event[1] == "stdout":
            output += event[2]
        elif event[1] in P.TERMINAL_EVENTS:
            assert event[1:] == ("exited", 0)
            return output


def test_a_request_bigger_than_the_socket_takes_arrives_whole(box):
    # in variables of 100 kB: execve refuses a single string over 128 KiB
    count = socket_takes_before_it_blocks() // 100_000 + 2
    variables = {f"BIG{index}": "v" * 100_000 for index in range(count)}
    script = "".join(f'printf %s "$BIG{index}"; ' for index in range(count))
    session = P.spawn(
        argv=["/bin/sh", "-c", f"({script}) | wc -c"],
        env={**variables, "PATH": "/usr/bin:/bin"},
        stdio={"stdout": "capture"},
        auto_proceed=True,
        owner=box,
    )
    assert int(captured_stdout(box)) == count * 100_000
    session.stop()


def test_a_small_request_is_in_the_agents_socket_when_it_is_started(box, monkeypatch):
    waiting_at_start = []
    real_spawn = os.posix_spawn

    def spawn_and_look(path, argv, env, *, file_actions, **options):
        agent_end = file_actions[0][1]  # (POSIX_SPAWN_DUP2, fd, 3): what becomes the agent's fd 3
        waiting_at_start.append(int.from_bytes(fcntl.ioctl(agent_end, termios.FIONREAD, bytes(4)), "little"))
        return real_spawn(path, argv, env, file_actions=file_actions, **options)

    monkeypatch.setattr(os, "posix_spawn", spawn_and_look)
    session = P.spawn(
        argv=["/bin/sh", "-c", "echo $SMALL"],
        env={"SMALL": "hello"},
        stdio={"stdout": "capture"},
        auto_proceed=True,
        owner=box,
    )
    assert captured_stdout(box) == b"hello\n"
    session.stop()
    request = P.plan_session(
        mode=protocol.MODE_SPAWN,
        target=None,
        argv=["/bin/sh", "-c", "echo $SMALL"],
        env={"SMALL": "hello"},
        stdio={"stdout": "capture"},
    ).request
    assert waiting_at_start == [len(protocol.encode_request(request))]
