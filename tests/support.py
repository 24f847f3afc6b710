"""Helpers shared by the tests: process inspection, waiting, listeners, and the run's own
names on the host (``run_scoped_name``) with the check that none of them is left behind.

Every host object a test makes (a link, a cgroup, a scratch directory) carries this run's
marker, so the end-of-run check looks at this run's objects only: a linx-otp daemon, or a
second test run on the same machine, is never mistaken for a leak, and never hides one."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import string
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs CAP_SYS_ADMIN: run the tests as root (CI does)")


def child_pids(pid: int | str = "self") -> list[int]:
    """Direct children of a process, across all its threads (but not this process's spawn
    server, which lives as long as the process)."""
    from linx_otp.spawn_server import server_pid

    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return [child for child in found if pid != "self" or child != server_pid()]


def process_table() -> dict[int, tuple[str, list[str]]]:
    """Every process on the machine: its name and the fields of ``/proc/<pid>/stat`` after the
    name (``[0]`` state, ``[1]`` parent, ``[3]`` session, ``[19]`` start time)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            name, _, rest = text[text.index("(") + 1 :].rpartition(")")
            table[int(entry.name)] = (name, rest.split())
    return table


def descendant_pids(root: int | None = None, table: dict[int, tuple[str, list[str]]] | None = None) -> set[int]:
    """Every process below ``root`` (default: this test process), however deep."""
    children: dict[int, list[int]] = {}
    for pid, (_, fields) in (table or process_table()).items():
        children.setdefault(int(fields[1]), []).append(pid)
    found: set[int] = set()
    below = list(children.get(os.getpid() if root is None else root, []))
    while below:
        pid = below.pop()
        if pid not in found:
            found.add(pid)
            below += children.get(pid, [])
    return found


AGENT_NAME = "linx-agent"


def agent_pids(root: int | None = None) -> set[int]:
    """The agents below ``root`` (default: this test process; a child parked at the checkpoint
    has not exec-ed yet, so it is one too): never those of a daemon or another run."""
    table = process_table()
    return {pid for pid in descendant_pids(root, table) if table[pid][0] == AGENT_NAME}


def orphaned_agent_pids() -> set[int]:
    """Agents this run started that have lost their parent (a test's subprocess that died
    under them) and so left its process tree: those in its session, started since it began,
    whose parent is now outside that session (init, or a subreaper)."""
    table = process_table()
    own = table[os.getpid()][1]
    session, started = own[3], int(own[19])
    return {
        pid
        for pid, (name, fields) in table.items()
        if name == AGENT_NAME
        and fields[0] != "Z"  # a dead one is its new parent's to reap
        and fields[3] == session
        and int(fields[19]) >= started
        and (int(fields[1]) == 1 or table.get(int(fields[1]), ("", [""] * 4))[1][3] != session)
    }


def pipe_inode(path: str) -> int | None:
    """The inode of the pipe ``path`` (an fd under ``/proc``) opens; None if it is not a pipe or is gone."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino if stat.S_ISFIFO(status.st_mode) else None


def process_alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or in the middle of exiting
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


SYSCALL_NUMBERS = {
    "x86_64": {"read": 0, "connect": 42, "clock_nanosleep": 230},
    "aarch64": {"read": 63, "connect": 203, "clock_nanosleep": 115},
}
"""The few syscalls tests look for a process blocked in (``/proc/<pid>/syscall`` gives numbers)."""


def blocked_in(pid: int, syscall: str) -> bool:
    """True if the process is asleep in ``syscall`` (``"read"``, ``"connect"``, ``"clock_nanosleep"``, which is
    Python's ``time.sleep``): an event a test
    can wait for instead of sleeping and hoping the process got there."""
    numbers = SYSCALL_NUMBERS.get(os.uname().machine)
    if numbers is None:
        pytest.skip(f"no syscall numbers for {os.uname().machine} in support.SYSCALL_NUMBERS")
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        current = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return state == "S" and current == str(numbers[syscall])


def parked_at_the_checkpoint(pid: int) -> bool:
    """True if ``pid`` is a child parked at the checkpoint: still the agent's image (not
    exec-ed) and asleep reading its go pipe, so it cannot run anything until proceeded."""
    try:
        image = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return image == "linx-agent" and blocked_in(pid, "read")


def some_agent_blocked_connecting() -> bool:
    """True if an agent of this test process is asleep in ``connect`` (to a stalled listener)."""
    return any(blocked_in(pid, "connect") for pid in agent_pids())


def window_size(pid: int, fd: int = 0) -> tuple[int, int]:
    """``(rows, columns)`` of the terminal that is fd ``fd`` of process ``pid``."""
    import fcntl
    import struct
    import termios

    descriptor = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        rows, columns = struct.unpack("HHHH", fcntl.ioctl(descriptor, termios.TIOCGWINSZ, bytes(8)))[:2]
    finally:
        os.close(descriptor)
    return rows, columns


def ends_within(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for process ``pid`` to end: True if it did. Woken by the end itself
    (a pidfd), so "it did not end" is decided by the deadline alone, never by a polling step."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([descriptor], [], [], seconds)[0])
    finally:
        os.close(descriptor)


def thread_blocked_in(thread: threading.Thread, function) -> bool:
    """True if ``thread`` is inside ``function`` and asleep there on a lock or condition (its
    innermost frame is a ``wait``): e.g. blocked in ``P.wait``, its request already sent."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None or frame.f_code.co_name != "wait":
        return False
    while frame is not None:
        if frame.f_code is function.__code__:
            return True
        frame = frame.f_back
    return False


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


# -- the run's own names on the host ---------------------------------------------------------------


def _base36(number: int) -> str:
    digits = string.digits + string.ascii_lowercase
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


RUN_MARKER = "lt" + _base36(os.getpid()).rjust(5, "0")
"""This test run's mark on the host: ``lt`` and the test process's pid in five base-36
digits (pids stay below 36**5), so runs alive at the same time never share it and no run's
marker is the start of another's."""

LINK_NAME_MAX = 15
"""The kernel's limit on a link name (IFNAMSIZ less the NUL); run-scoped names fit in it."""


def run_scoped_name(role: str) -> str:
    """A host name (link, cgroup, scratch directory) that belongs to this test run:
    ``run_scoped_name("h0")`` is ``"lt0abcd-h0"``. Short enough for a link name.

    >>> run_scoped_name("veth").startswith(RUN_MARKER)
    True
    """
    name = f"{RUN_MARKER}-{role}"
    if not role or len(name) > LINK_NAME_MAX or "/" in role:
        raise ValueError(f"a role of 1 to {LINK_NAME_MAX - len(RUN_MARKER) - 1} characters without '/', not {role!r}")
    return name


SYSTEM_TMPDIR = Path(tempfile.gettempdir())
RUN_TMPDIR = SYSTEM_TMPDIR / run_scoped_name("tmp")
"""The run's scratch area: the tests, and every program they start (examples, ``linx-otp
run``, workloads), get it as ``TMPDIR``, so whatever one of them makes with ``tempfile`` and
leaves behind is found here at the end of the run."""


def cgroup_roots() -> list[Path]:
    """Where each cgroup hierarchy (v1 and v2) is mounted, read from ``/proc/self/mountinfo``."""
    mount_table = (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return sorted({Path(fields[4]) for fields in mount_table if fields[fields.index("-") + 1] in ("cgroup", "cgroup2")})


def run_objects(pytest_tmp: Path | None = None) -> dict[str, set[str]]:
    """What of this run's is on the host now: its agents (orphaned ones too), the links and cgroups named with
    ``RUN_MARKER``, mounts at places of the run's (``RUN_TMPDIR``, pytest's ``pytest_tmp``,
    any path with the marker), entries of the system temp directory named with the marker,
    and anything inside ``RUN_TMPDIR``."""
    # Read straight from the kernel's files, not through linx_otp: the check must not share
    # a blind spot with the code it checks.
    links = {name for name in os.listdir("/sys/class/net") if RUN_MARKER in name}
    mount_table = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    places = [str(RUN_TMPDIR), *([str(pytest_tmp)] if pytest_tmp else [])]
    mounts = {
        fields[4]
        for fields in mount_table
        if RUN_MARKER in fields[4] or any(fields[4].startswith(place + "/") for place in places)
    }
    cgroups = {str(path) for root in cgroup_roots() for path in root.glob(f"*{RUN_MARKER}*") if path.is_dir()}
    scratch = {str(path) for path in SYSTEM_TMPDIR.glob(f"*{RUN_MARKER}*") if path != RUN_TMPDIR}
    if RUN_TMPDIR.exists():
        scratch |= {str(path) for path in RUN_TMPDIR.iterdir()}
    agents = {f"pid {pid}" for pid in agent_pids() | orphaned_agent_pids()}
    return {"agents": agents, "links": links, "mounts": mounts, "cgroups": cgroups, "tmp": scratch}


def left_since(before: dict[str, set[str]], pytest_tmp: Path | None = None) -> dict[str, list[str]]:
    """The run's objects that are on the host now and were not in ``before``, by kind."""
    after = run_objects(pytest_tmp)
    return {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}


# -- the host's process limit, for many sessions at once ------------------------------------------

PID_MAX = Path("/proc/sys/kernel/pid_max")


@contextlib.contextmanager
def pid_max_at_least(needed: int) -> Iterator[int]:
    """``kernel.pid_max`` at least ``needed`` for the block: raised if lower (root only), and put
    back afterwards even if the block fails, unless something else changed it meanwhile (then
    its value stays). Yields the value in force; raises ``PermissionError`` if it is too low and
    this process may not raise it. Shared with ``benchmarks/spawn.py``."""
    before = int(PID_MAX.read_text())
    if before >= needed:
        yield before
        return
    PID_MAX.write_text(str(needed))
    try:
        yield needed
    finally:
        if int(PID_MAX.read_text()) == needed:
            PID_MAX.write_text(str(before))
