"""Readiness checks: when a started workload counts as started for its supervisor.

A check is one probe, tried from the moment the workload runs (it has passed its checkpoint)
every ``interval`` seconds until one try passes or ``timeout`` seconds are over:

- ``tcp = "HOST:PORT"``: a TCP connection to HOST (an IP address, ``[v6]``, or ``localhost``)
  succeeds, made from the supervisor's network namespace, as a sibling on the host (or across
  a veth) would make it;
- ``file = "/PATH"``: the path exists in the child's view of the file system (resolved in its
  root, through ``/proc/PID/root``, without leaving it: a symbolic link it planted stays inside),
  made or changed since this incarnation started: a file an earlier one left (a workload killed
  by SIGKILL cannot remove it) does not make a restart ready;
- ``command = [ARGV...]``: exits 0, run in all the child's namespaces by an agent of its own
  (``enter``), as the child runs: its user, groups, capabilities, seccomp filter,
  ``no_new_privs``, environment and working directory.

Supervisors wait for it (``supervisor.py``): the next child in the start order starts only once
this one is ready, and a check that does not pass is a failed start. The values are checked
here, once, for tree files (key by key) and for ``process.child_spec(ready=...)`` alike.

This module never probes a workload before it runs, and never leaves a probe running: a
command still running at the time-out is stopped with its session.

>>> check = check_readiness({"tcp": "127.0.0.1:8080", "timeout": 5})
>>> check.describe(), check.timeout, check.interval
('tcp 127.0.0.1:8080', 5.0, 0.25)
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from . import process as P
from .checkpoint.setup import open_beneath
from .errors import LinxError, LinxValueError, describe_outcome
from .mailbox import Mailbox
from .options import plan_session
from .protocol import MODE_ENTER

PROBES = ("tcp", "file", "command")
KEYS = (*PROBES, "timeout", "interval")
TIMEOUT_DEFAULT = 30.0
"""Seconds a workload has to become ready, from the moment it runs (as systemd's
``TimeoutStartSec``, shorter: a tree's children start one after another)."""
INTERVAL_DEFAULT = 0.25
SECONDS_MAX = 86400.0
RUNNING_POLL_SECONDS = 0.02
"""How often the wait looks whether the workload has passed its checkpoint yet."""
CONNECT_SECONDS_MAX = 1.0
"""The longest one TCP try waits for an answer (a dropped SYN), within the time-out."""
CUT_SHORT = "no answer before the time-out"
"""Why a try failed that was still going when the time was over."""
PROBE_OPTIONS = ("env", "cwd", "user", "group", "extra_groups", "umask", "rlimits", "capabilities", "seccomp")
"""The child's session options a command probe runs with too (and ``no_new_privs``)."""


def parse_tcp(value: Any) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(address, port)``: HOST an IPv4 address, ``[IPv6]`` or ``localhost``.

    >>> parse_tcp("10.78.0.2:8080"), parse_tcp("[::1]:53"), parse_tcp("localhost:5432")
    (('10.78.0.2', 8080), ('::1', 53), ('127.0.0.1', 5432))
    """
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    bracketed = host.startswith("[") and host.endswith("]")
    address = "127.0.0.1" if host == "localhost" else host[1:-1] if bracketed else host
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if (
        parsed is None
        or (parsed.version == 6) != bracketed
        or not (port.isascii() and port.isdigit())
        or not 1 <= int(port) <= 65535
    ):
        raise LinxValueError(
            ("bad_ready_tcp", value),
            f"tcp is 'HOST:PORT' (HOST an IPv4 address, [IPv6] or localhost; PORT 1 to 65535), not {value!r}",
        )
    return str(parsed), int(port)


def check_file(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise LinxValueError(
            ("bad_ready_file", value), f"file is an absolute path (as the child sees it), not {value!r}"
        )
    return value


def check_command(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not value[0]
        or not all(isinstance(part, str) and "\0" not in part for part in value)
    ):
        raise LinxValueError(
            ("bad_ready_command", value), f"command is a non-empty list of strings (an argv), not {value!r}"
        )
    return tuple(value)


def check_seconds(name: str, value: Any) -> float:
    """``timeout`` or ``interval``: finite seconds, more than 0, at most a day."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= SECONDS_MAX
    ):
        return float(value)
    raise LinxValueError(
        (f"bad_ready_{name}", value),
        f"{name} is a number of seconds, more than 0 and at most {SECONDS_MAX:g}, not {value!r}",
    )


CHECKS: dict[str, Callable[[Any], Any]] = {
    "tcp": lambda value: parse_tcp(value) and value,
    "file": check_file,
    "command": check_command,
    "timeout": lambda value: check_seconds("timeout", value),
    "interval": lambda value: check_seconds("interval", value),
}
"""Each key's check: tree files run them key by key (to name each wrong key), ``Readiness`` all."""


def check_combination(probes: list[str], timeout: float, interval: float) -> None:
    """How the keys go together: exactly one probe, and an interval within the time-out."""
    if len(probes) != 1:
        raise LinxValueError(
            ("bad_ready", tuple(probes)),
            f"ready takes exactly one of tcp, file or command, not {' and '.join(probes) or 'none'}",
        )
    if interval > timeout:
        raise LinxValueError(
            ("bad_ready_interval", interval),
            f"interval ({interval:g} s) must not be longer than timeout ({timeout:g} s)",
        )


@dataclass(frozen=True)
class Readiness:
    """One readiness check (exactly one of ``tcp``, ``file``, ``command``), checked when made.

    >>> Readiness(command=("pg_isready", "-q"), timeout=10).describe()
    'command pg_isready -q'
    """

    tcp: str | None = None
    file: str | None = None
    command: tuple[str, ...] | None = None
    timeout: float = TIMEOUT_DEFAULT
    interval: float = INTERVAL_DEFAULT

    def __post_init__(self) -> None:
        given = {key: getattr(self, key) for key in KEYS if key in PROBES and getattr(self, key) is not None}
        for key in (*given, "timeout", "interval"):
            object.__setattr__(self, key, CHECKS[key](getattr(self, key)))
        check_combination(list(given), self.timeout, self.interval)

    def describe(self) -> str:
        """What is checked, in words: ``tcp 10.78.0.2:8080``, ``file /run/ready``, ``command ...``."""
        if self.command is not None:
            return "command " + " ".join(self.command)
        return f"tcp {self.tcp}" if self.tcp is not None else f"file {self.file}"

    def waiter(self, child_options: Mapping[str, Any]) -> Callable[[pykka.ActorRef], str]:
        """The wait for one incarnation of a child with these session options (a supervisor
        calls it with the child's session; see ``wait``). A command probe's options are
        checked now, as the child's own are."""
        probe = {key: child_options[key] for key in PROBE_OPTIONS if key in child_options}
        probe["no_new_privs"] = child_options.get("no_new_privs", False)
        if self.command is not None:
            plan_session(mode=MODE_ENTER, target=1, **_probe_session(self.command, probe))
        return lambda session: self.wait(session, probe)

    # -- waiting -------------------------------------------------------------------------------

    def wait(self, session: pykka.ActorRef, probe: Mapping[str, Any]) -> str:
        """Block until the workload of ``session`` passes the check; returns how long it took,
        in words. Raises ``LinxError(("not_ready", check, why))`` when the time is over or the
        workload ends first."""
        host_pid = self._until_running(session)
        started = time.monotonic()
        deadline = started + self.timeout
        incarnation_started = _started_at(host_pid) if self.file is not None else None
        last = None
        while True:
            why = self._try(host_pid, probe, deadline, incarnation_started)
            self._require_running(session)  # a pass counts for this incarnation only
            if why is None:
                return f"{self.describe()} passed {time.monotonic() - started:.2f} s after it ran"
            if why != CUT_SHORT or last is None:  # a try the time-out ended early says less
                last = why
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"did not pass within {self.timeout:g} s (last try: {last})")
            time.sleep(min(self.interval, remaining))

    def _failure(self, why: str) -> LinxError:
        return LinxError(("not_ready", self.describe(), why), f"not ready: {self.describe()} {why}")

    def _stage(self, session: pykka.ActorRef) -> P.Info:
        try:
            return P.info(session)
        except LinxError:
            raise self._failure("never passed: it ended first") from None

    def _until_running(self, session: pykka.ActorRef) -> int:
        while True:
            self._require_running(session, before=True)
            info = self._stage(session)
            if info.stage == "running" and info.host_pid is not None:
                return info.host_pid
            time.sleep(RUNNING_POLL_SECONDS)

    def _require_running(self, session: pykka.ActorRef, before: bool = False) -> None:
        info = self._stage(session)
        if info.result is not None:
            raise self._failure(f"never passed: it ended first ({describe_outcome(info.result)})")
        if not before and info.stage != "running":
            raise self._failure(f"never passed: it is {info.stage}")

    def _try(
        self, host_pid: int, probe: Mapping[str, Any], deadline: float, incarnation_started: float | None
    ) -> str | None:
        """One try: None if it passed, else why not."""
        if self.tcp is not None:
            return _try_tcp(parse_tcp(self.tcp), deadline)
        if self.file is not None:
            return _try_file(host_pid, self.file, incarnation_started)
        assert self.command is not None
        return _try_command(host_pid, self.command, probe, deadline)


def _try_tcp(address: tuple[str, int], deadline: float) -> str | None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as connection:
        connection.settimeout(max(0.001, min(CONNECT_SECONDS_MAX, deadline - time.monotonic())))
        try:
            connection.connect(address)
        except TimeoutError:
            return CUT_SHORT
        except OSError as error:
            return (error.strerror or str(error)).lower()
    return None


def _started_at(host_pid: int) -> float | None:
    """When the process started, in seconds since the epoch as a file's times count them, or None
    if it is gone. The kernel keeps it in clock ticks (``/proc/PID/stat``, rounded down), and
    stamps files from a clock that lags by up to a tick: one tick more is taken off, so a file
    made at once still counts, and only one left less than two ticks before the start would be
    taken for new."""
    try:
        with open(f"/proc/{host_pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    started_ticks = int(data[data.rindex(b")") + 2 :].split()[19])  # field 22, starttime; field 3 is the first here
    running_for = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / ticks_per_second
    return time.time() - running_for - 1 / ticks_per_second


def _try_file(host_pid: int, path: str, incarnation_started: float | None) -> str | None:
    try:
        root = os.open(f"/proc/{host_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        return f"its root is not reachable: {error.strerror}"
    try:
        found = open_beneath(root, path, path)
    except OSError as error:
        return "no such file" if error.errno == errno.ENOENT else str(error)
    finally:
        os.close(root)
    try:
        changed = os.fstat(found).st_ctime
    finally:
        os.close(found)
    if incarnation_started is not None and changed < incarnation_started:
        return f"it is older than this start (changed {incarnation_started - changed:.2f} s before it)"
    return None


def _probe_session(command: tuple[str, ...], probe: Mapping[str, Any]) -> dict[str, Any]:
    """A command probe's session options: the child's, its output nowhere, let go at once."""
    return {**probe, "argv": list(command), "stdio": "devnull", "owner": Mailbox(), "auto_proceed": True}


def _try_command(host_pid: int, command: tuple[str, ...], probe: Mapping[str, Any], deadline: float) -> str | None:
    try:
        session = P.enter(host_pid, **_probe_session(command, probe))
    except LinxError as error:
        return str(error)
    try:
        outcome = P.wait(session, timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return CUT_SHORT
    finally:
        session.stop()  # a probe still running is stopped with its session
    return None if outcome == ("exited", 0) else describe_outcome(outcome).removeprefix("the workload ")


def check_readiness(ready: Any) -> Readiness | None:
    """``ready=`` of ``process.child_spec``: None, a ``Readiness``, or a mapping with its keys
    (``{"tcp": "127.0.0.1:8080", "timeout": 5}``, as a tree file's ``ready`` table).

    >>> check_readiness({"file": "/run/ready", "interval": 0.1}).describe()
    'file /run/ready'
    """
    if ready is None or isinstance(ready, Readiness):
        return ready
    if not isinstance(ready, Mapping) or set(ready) - set(KEYS):
        raise LinxValueError(
            ("bad_ready", ready),
            f"ready is a Readiness or a mapping of {', '.join(KEYS)} (one of tcp, file, command), not {ready!r}",
        )
    return Readiness(**ready)


__all__ = ["KEYS", "PROBES", "Readiness", "check_readiness", "parse_tcp"]
