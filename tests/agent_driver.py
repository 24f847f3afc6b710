"""Drives a bare agent process over its socket, without a session, for protocol and fuzz tests."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from linx_otp import protocol
from linx_otp.agent import agent_path


@dataclass
class AgentRun:
    events: list[tuple]
    exit_status: int
    """As a shell shows it: the exit code, or 128+N for signal N."""
    killed_by_signal: bool


def run_agent(data: bytes, *, close_after: bool = True, timeout: float = 5.0, fds: Sequence[int] = ()) -> AgentRun:
    """Start an agent, send ``data`` (then end-of-file unless ``close_after`` is False), with
    ``fds`` along with its first bytes (SCM_RIGHTS), and read every event until the agent
    exits. A hang raises ``TimeoutError``."""
    ours, theirs = socket.socketpair()
    pid = os.posix_spawn(agent_path(), ["linx-agent"], {}, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)])
    theirs.close()
    ours.settimeout(timeout)
    decoder = protocol.EventDecoder()
    events: list[tuple] = []
    try:
        try:
            if fds:
                sent = ours.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                data = data[sent:]
            ours.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent gave up on the frame early, as it should for oversized ones
        if close_after:
            ours.shutdown(socket.SHUT_WR)
        while True:
            try:
                chunk = ours.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            events += decoder.feed(chunk)
    except BaseException:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    finally:
        ours.close()
    _, status = os.waitpid(pid, 0)
    return AgentRun(
        events, abs(os.waitstatus_to_exitcode(status)) + (128 if os.WIFSIGNALED(status) else 0), os.WIFSIGNALED(status)
    )


def request(**overrides) -> bytes:
    """A valid request frame for /bin/true, with fields overridden."""
    fields = dict(mode=protocol.MODE_SPAWN, argv=(b"/bin/true",), env=(b"PATH=/bin",))
    fields.update(overrides)
    return protocol.encode_request(protocol.Request(**fields))
