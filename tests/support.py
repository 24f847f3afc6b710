"""Helpers shared by the tests: process inspection, waiting, and listeners."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs CAP_SYS_ADMIN: run the tests as root (CI does)")


def child_pids(pid: int | str = "self") -> list[int]:
    """Direct children of a process, across all its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def process_alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or in the middle of exiting
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def threads_added_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """Live threads not in ``before``, other than linx_otp's I/O thread and its one idle spare
    actor thread (each started on first use and kept for the process's life)."""
    return [t for t in threading.enumerate() if t not in before and t.name not in ("linx-otp-io", "linx-otp-spare")]


class Listener:
    """An AF_UNIX listener for ("connect_unix", path). With ``stalled=True`` its backlog is
    full, so an agent's connect blocks (holding the session before ``ready``) until
    ``release()`` accepts."""

    def __init__(self, directory: Path, stalled: bool = False) -> None:
        self.path = str(directory / "listener.sock")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.bind(self.path)
        self.socket.listen(0 if stalled else 16)
        self._plug = None
        if stalled:
            self._plug = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._plug.connect(self.path)
        self.accepted: list[socket.socket] = []

    def release(self) -> None:
        """Accept the plug, making room for the agent's connect."""
        if self._plug is not None:
            self.accepted.append(self.socket.accept()[0])

    def accept(self, timeout: float = 5.0) -> socket.socket:
        self.socket.settimeout(timeout)
        connection = self.socket.accept()[0]
        connection.settimeout(timeout)
        self.accepted.append(connection)
        return connection

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        if self._plug is not None:
            self._plug.close()
        self.socket.close()


def read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def reason_of(verb, *args):
    """The ``.reason`` a verb raises, or ``"ok"``."""
    import linx_otp

    try:
        verb(*args)
    except linx_otp.LinxError as error:
        return error.reason
    return "ok"
