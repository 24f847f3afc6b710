"""Validation of ``spawn``/``enter`` options into a ``SessionPlan``.

Runs entirely in the caller's thread before anything is started: a bad option raises
``LinxValueError`` with the SPEC's ``.reason`` and leaves no process, thread or fd behind.
The checks run in the original's order (argv, namespaces, env, stdio, cwd, no_new_privs,
orphan_policy), then output, output_window, owner, linger and auto_proceed. This module never
touches the OS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import pykka

from . import protocol
from .errors import LinxValueError
from .flow import OUTPUT_CREDIT_POLICIES
from .mailbox import Mailbox, mailbox

NAMESPACES = tuple(protocol.NAMESPACE_BITS)
STDIO_KEYS = ("stdin", "stdout", "stderr")
MAX_GRACE_SECONDS = (2**31 - 1) / 1000
MAX_PID = 2**31 - 1


@dataclass(frozen=True)
class SessionPlan:
    """A validated session: the agent's request plus what the session actor itself needs."""

    request: protocol.Request
    owner: Any
    linger: bool
    auto_proceed: bool

    @property
    def mode(self) -> str:
        return "enter" if self.request.mode == protocol.MODE_ENTER else "spawn"


def _is_list_like(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping))


def _encode(value: Any) -> bytes | None:
    """str/bytes/PathLike → bytes with no NUL, or None if it cannot be one."""
    if isinstance(value, (str, bytes, os.PathLike)):
        try:
            encoded = os.fsencode(value)
        except (TypeError, UnicodeError):
            return None
        return None if b"\0" in encoded else encoded
    return None


def check_argv(argv: Any) -> tuple[bytes, ...]:
    if not isinstance(argv, Sequence) or isinstance(argv, (str, bytes, bytearray)) or not argv:
        raise LinxValueError("argv_required", f"argv must be a non-empty list of str or bytes, not {argv!r}")
    if not isinstance(argv[0], (str, bytes, os.PathLike)):
        raise LinxValueError("argv_required", f"argv[0] must be a str or bytes path, not {argv[0]!r}")
    encoded = tuple(_encode(arg) for arg in argv)
    if any(arg is None for arg in encoded):
        raise LinxValueError(
            ("bad_argv", list(argv)),
            f"every argv element must be a str or bytes without NUL bytes: {argv!r}",
        )
    return encoded  # type: ignore[return-value]


def check_namespaces(namespaces: Any) -> frozenset[str]:
    if not _is_list_like(namespaces):
        raise LinxValueError(
            ("bad_namespaces", ("not_a_list", namespaces)),
            f"namespaces must be a list of names from {NAMESPACES}, not {namespaces!r}",
        )
    names = list(namespaces)
    unknown = [name for name in names if name not in NAMESPACES]
    if unknown:
        raise LinxValueError(
            ("bad_namespaces", unknown),
            f"unknown namespace(s) {unknown!r}; expected names from {NAMESPACES}",
        )
    return frozenset(names)


def _check_env_entry(key: Any, value: Any, original: Any) -> bytes:
    encoded_key, encoded_value = _encode(key), _encode(value)
    if encoded_key is None or encoded_value is None:
        raise LinxValueError(
            ("bad_env", ("not_all_strings", original)),
            "env keys and values must be str or bytes without NUL bytes",
        )
    if not encoded_key or b"=" in encoded_key:
        raise LinxValueError(("bad_env", ("bad_entry", key)), f"env key {key!r} must be non-empty and contain no '='")
    return encoded_key + b"=" + encoded_value


def check_env(env: Any) -> tuple[bytes, ...]:
    if env is None:
        return tuple(key + b"=" + value for key, value in os.environb.items())
    if isinstance(env, Mapping):
        return tuple(_check_env_entry(key, value, env) for key, value in env.items())
    if not _is_list_like(env):
        raise LinxValueError(
            ("bad_env", ("not_a_list", env)),
            f"env must be a mapping or a list of 'KEY=VALUE' strings, not {env!r}",
        )
    entries = []
    for entry in env:
        encoded = _encode(entry)
        if encoded is None:
            raise LinxValueError(
                ("bad_env", ("not_all_strings", list(env))), "env entries must be str or bytes without NUL bytes"
            )
        key, separator, _ = encoded.partition(b"=")
        if not separator or not key:
            raise LinxValueError(
                ("bad_env", ("bad_entry", entry)), f"env entry {entry!r} is not of the form 'KEY=VALUE'"
            )
        entries.append(encoded)
    return tuple(entries)


def _check_directive(key: str, directive: Any) -> protocol.StdioDirective:
    if directive == "inherit":
        return protocol.StdioDirective(protocol.STDIO_INHERIT)
    if directive == "devnull":
        return protocol.StdioDirective(protocol.STDIO_DEVNULL)
    if directive == "capture":
        if key == "stdin":
            raise LinxValueError(
                ("bad_stdio", ("capture_is_for_output", key)),
                "'capture' sends stdout or stderr to the owner; stdin cannot be captured",
            )
        return protocol.StdioDirective(protocol.STDIO_CAPTURE)
    if isinstance(directive, tuple) and len(directive) == 2 and directive[0] == "connect_unix":
        path = _encode(directive[1])
        if path:
            return protocol.StdioDirective(protocol.STDIO_CONNECT_UNIX, path)
    raise LinxValueError(
        ("bad_stdio", ("bad_directive", directive)),
        f"bad stdio directive {directive!r}; expected 'inherit', 'devnull', 'capture' (stdout, stderr) or ('connect_unix', path)",
    )


def check_stdio(stdio: Any) -> tuple[tuple[protocol.StdioDirective, ...], bool]:
    """Returns the three directives and whether the session is a pty session."""
    if stdio == "pty":
        return (protocol.StdioDirective(),) * 3, True
    if stdio in ("inherit", "devnull"):
        return tuple(_check_directive(key, stdio) for key in STDIO_KEYS), False
    if not isinstance(stdio, Mapping):
        raise LinxValueError(
            ("bad_stdio", stdio),
            f"stdio must be 'inherit', 'devnull', 'pty' or a mapping of {STDIO_KEYS}, not {stdio!r}",
        )
    directives = [protocol.StdioDirective()] * 3
    for key, directive in stdio.items():
        if key not in STDIO_KEYS:
            raise LinxValueError(("bad_stdio", ("bad_fd_entry", key)), f"stdio key {key!r} is not one of {STDIO_KEYS}")
        directives[STDIO_KEYS.index(key)] = _check_directive(key, directive)
    return tuple(directives), False


def check_cwd(cwd: Any) -> bytes | None:
    if cwd is None:
        return None
    encoded = _encode(cwd)
    if encoded is None:
        raise LinxValueError(("bad_cwd", cwd), f"cwd must be a str, bytes or path without NUL bytes, not {cwd!r}")
    return encoded


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise LinxValueError((f"bad_{name}", value), f"{name} must be True or False, not {value!r}")
    return value


def check_orphan_policy(policy: Any) -> tuple[int, int] | None:
    if policy is None:
        return None
    if policy == "linger":
        return (protocol.ORPHAN_LINGER, 0)
    if isinstance(policy, tuple) and len(policy) == 2 and policy[0] == "kill":
        grace = policy[1]
        if (
            isinstance(grace, (int, float))
            and not isinstance(grace, bool)
            and math.isfinite(grace)
            and 0 <= grace <= MAX_GRACE_SECONDS
        ):
            return (protocol.ORPHAN_KILL, round(grace * 1000))
    raise LinxValueError(
        ("bad_orphan_policy", policy),
        f"orphan_policy must be ('kill', grace_seconds) with 0 <= grace <= {MAX_GRACE_SECONDS} or 'linger', not {policy!r}",
    )


def check_output(output: Any) -> int:
    """A session's ``output`` mode: ``"block"`` or ``"drop"``, as the protocol's number."""
    if isinstance(output, str) and output in protocol.OUTPUT_MODES:
        return protocol.OUTPUT_MODES[output]
    raise LinxValueError(
        ("bad_output", output),
        "output must be 'block' (a workload that outpaces its owner waits) or 'drop' (output past the window "
        f"is discarded and reported as output_dropped), not {output!r}",
    )


def check_output_window(window: Any) -> int:
    """A session's ``output_window``: the output bytes in flight to its owner, an int in range."""
    if (
        isinstance(window, int)
        and not isinstance(window, bool)
        and protocol.OUTPUT_WINDOW_MIN <= window <= protocol.OUTPUT_WINDOW_MAX
    ):
        return window
    raise LinxValueError(
        ("bad_output_window", window),
        f"output_window must be an int number of bytes from {protocol.OUTPUT_WINDOW_MIN} to "
        f"{protocol.OUTPUT_WINDOW_MAX}, not {window!r}",
    )


def check_owner(owner: Any) -> Any:
    if owner is None:
        return mailbox()
    if not callable(getattr(owner, "tell", None)):
        raise LinxValueError(
            ("bad_owner", owner), f"owner must be an ActorRef, a Mailbox or have .tell(message), not {owner!r}"
        )
    if getattr(owner, "output_credit", "on_tell") not in OUTPUT_CREDIT_POLICIES:
        raise LinxValueError(
            ("bad_owner", owner),
            f"an owner's output_credit must be one of {OUTPUT_CREDIT_POLICIES}, not {owner.output_credit!r}",
        )
    return owner


def credit_on_tell(owner: Any) -> bool:
    """Whether the session gives an output event's window back as soon as ``owner.tell`` returns.
    Not for a ``Mailbox`` (it does so as it hands events out), an actor (a ``linx_otp.Actor``
    does so once it has handled the event; a plain pykka actor calls ``linx_otp.consumed``), or
    an owner whose ``output_credit`` is ``"explicit"``."""
    if isinstance(owner, (Mailbox, pykka.ActorRef)):
        return False
    return getattr(owner, "output_credit", "on_tell") == "on_tell"


def check_target(target: Any) -> int:
    if not isinstance(target, int) or isinstance(target, bool) or not 0 < target <= MAX_PID:
        raise LinxValueError(("bad_target", target), f"the target must be a host pid (an int > 0), not {target!r}")
    return target


class SessionOptions(TypedDict, total=False):
    """The keyword options of ``spawn`` and ``enter`` (SPEC §2.1); defaults in ``plan_session``."""

    argv: Sequence[str | bytes]
    namespaces: Iterable[str] | None
    env: Mapping[str, str] | Sequence[str] | None
    cwd: str | bytes | os.PathLike | None
    stdio: str | Mapping[str, Any]
    owner: Any
    linger: bool
    auto_proceed: bool
    no_new_privs: bool
    orphan_policy: tuple[str, float] | str | None
    output: str
    output_window: int


def plan_session(
    *,
    mode: int,
    target: int | None,
    argv: Any = None,
    namespaces: Any = None,
    env: Any = None,
    cwd: Any = None,
    stdio: Any = "inherit",
    owner: Any = None,
    linger: Any = True,
    auto_proceed: Any = False,
    no_new_privs: Any = False,
    orphan_policy: Any = None,
    output: Any = "block",
    output_window: Any = protocol.OUTPUT_WINDOW_DEFAULT,
) -> SessionPlan:
    """Validate everything, in order, and build the plan. Raises ``LinxValueError``; an
    option that does not exist is a ``TypeError``, as for any Python call."""
    encoded_argv = check_argv(argv)
    chosen_namespaces: frozenset[str] | None
    if namespaces is None:
        chosen_namespaces = None if mode == protocol.MODE_ENTER else frozenset()
    else:
        chosen_namespaces = check_namespaces(namespaces)
    encoded_env = check_env(env)
    directives, pty = check_stdio(stdio)
    encoded_cwd = check_cwd(cwd)
    request = protocol.Request(
        mode=mode,
        target=target,
        argv=encoded_argv,
        env=encoded_env,
        namespaces=chosen_namespaces,
        cwd=encoded_cwd,
        stdio=directives,  # type: ignore[arg-type]
        pty=pty,
        no_new_privs=check_bool("no_new_privs", no_new_privs),
        orphan_policy=check_orphan_policy(orphan_policy),
        output_mode=check_output(output),
        output_window=check_output_window(output_window),
    )
    return SessionPlan(
        request=request,
        owner=check_owner(owner),
        linger=check_bool("linger", linger),
        auto_proceed=check_bool("auto_proceed", auto_proceed),
    )
