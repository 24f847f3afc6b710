"""Validation of ``spawn``/``enter`` options into a ``SessionPlan``.

Runs entirely in the caller's thread before anything is started: a bad option raises
``LinxValueError`` with its documented ``.reason`` and leaves no process, thread or fd behind.
The checks run in the original's order (argv, namespaces, env, stdio, cwd, no_new_privs,
orphan_policy), then output and output_window, the hardening options (docs/hardening.md), owner, linger and
auto_proceed. This module never starts anything; all it asks the host are user and group names
(``pwd``, ``grp``) and, for a ``seccomp.Filter``, libseccomp to compile it.
"""

from __future__ import annotations

import dataclasses
import grp
import math
import os
import pwd
import resource
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    setup: Callable[[int], Any] | None = None
    """Run by the session at ``ready`` (then it proceeds by itself); see ``check_setup``."""

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


_inherited_env: tuple[dict[bytes, bytes], tuple[bytes, ...]] = ({}, ())
"""The environment last inherited, and its entries: one tuple shared by every session that
inherits an unchanged environment (it lives as long as its session; 10,000 copies add up)."""


def _inherit_env() -> tuple[bytes, ...]:
    """This process's environment as ``KEY=VALUE`` entries. Read from the bytes dict behind
    ``os.environb`` where CPython has it (a fifth of the time of ``items()``, which re-checks
    every key and value: a measurable part of every spawn)."""
    global _inherited_env
    data = getattr(os.environb, "_data", None)
    environment = dict(data) if isinstance(data, dict) else dict(os.environb)
    known, entries = _inherited_env
    if environment != known:
        entries = tuple(key + b"=" + value for key, value in environment.items())
        _inherited_env = (environment, entries)
    return entries


def check_env(env: Any) -> tuple[bytes, ...]:
    if env is None:
        return _inherit_env()
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


# ---- hardening (docs/hardening.md): what the workload may do ------------------------------------------

CAPABILITIES = {
    name: number
    for number, name in enumerate(
        "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
        "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio "
        "sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time "
        "sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog "
        "wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore".split()
    )
}
"""Capability names (``linux/capability.h`` without ``CAP_``, lower-case) → their numbers."""

RLIMITS = {
    name.removeprefix("RLIMIT_").lower(): getattr(resource, name)
    for name in dir(resource)
    if name.startswith("RLIMIT_")
}
"""rlimit names (``resource.RLIMIT_*`` without the prefix, lower-case) → their numbers."""

MAX_ID = 2**32 - 2
"""The largest uid or gid; 2**32 - 1 is (uid_t)-1, which the kernel reads as "unchanged"."""
MAX_RLIMIT = 2**64 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_id(value: Any, kind: str, lookup: Any) -> int:
    """A uid/gid given as an int or as a name resolved on the host (``pwd``/``grp``)."""
    if _is_int(value) and 0 <= value <= MAX_ID:
        return value
    if isinstance(value, str) and value:
        try:
            return lookup(value)
        except (KeyError, ValueError):  # unknown, or not a name at all (a NUL inside)
            pass
    raise LinxValueError(
        (f"bad_{kind}", value), f"{kind} must be an id 0..{MAX_ID} or the name of a {kind} on this host, not {value!r}"
    )


def check_user(user: Any) -> int | None:
    return None if user is None else _resolve_id(user, "user", lambda name: pwd.getpwnam(name).pw_uid)


def check_group(group: Any) -> int | None:
    return None if group is None else _resolve_id(group, "group", lambda name: grp.getgrnam(name).gr_gid)


def check_extra_groups(extra_groups: Any, user: int | None) -> tuple[int, ...] | None:
    """Default: ``[]`` when ``user`` is given (as ``su`` would), else unchanged."""
    if extra_groups is None:
        return () if user is not None else None
    if not _is_list_like(extra_groups):
        raise LinxValueError(
            ("bad_extra_groups", extra_groups),
            f"extra_groups must be a list of gids or group names, not {extra_groups!r}",
        )
    groups = tuple(check_group(group) for group in extra_groups)
    if len(groups) > protocol.EXTRA_GROUPS_MAX:
        raise LinxValueError(
            ("bad_extra_groups", len(groups)), f"at most {protocol.EXTRA_GROUPS_MAX} extra groups, not {len(groups)}"
        )
    return groups  # type: ignore[return-value]


def check_umask(umask: Any) -> int | None:
    if umask is None:
        return None
    if not _is_int(umask) or not 0 <= umask <= protocol.UMASK_MAX:
        raise LinxValueError(("bad_umask", umask), f"umask must be an int 0..0o777, not {umask!r}")
    return umask


def _rlimit_value(value: Any) -> int | None:
    """One limit: an int >= 0, or ``resource.RLIM_INFINITY`` (unlimited)."""
    if value == resource.RLIM_INFINITY and _is_int(value):
        return protocol.RLIM_INFINITY_WIRE
    return value if _is_int(value) and 0 <= value < MAX_RLIMIT else None


def check_rlimits(rlimits: Any) -> tuple[tuple[int, int, int], ...]:
    """``{name: limit or (soft, hard)}`` → ``(resource, soft, hard)`` triples; a single limit
    sets both, as systemd's ``LimitNOFILE=16`` does."""
    if rlimits is None:
        return ()
    if not isinstance(rlimits, Mapping):
        raise LinxValueError(("bad_rlimits", rlimits), f"rlimits must be a mapping of name to limit, not {rlimits!r}")
    triples = []
    for name, value in rlimits.items():
        if name not in RLIMITS:
            raise LinxValueError(("bad_rlimit", name), f"unknown rlimit {name!r}; expected one of {sorted(RLIMITS)}")
        pair = value if isinstance(value, tuple) and len(value) == 2 else (value, value)
        soft, hard = _rlimit_value(pair[0]), _rlimit_value(pair[1])
        if soft is None or hard is None or soft > hard:
            raise LinxValueError(
                ("bad_rlimit", (name, value)),
                f"rlimit {name!r} must be a limit or (soft, hard) with 0 <= soft <= hard (resource.RLIM_INFINITY for none), not {value!r}",
            )
        triples.append((RLIMITS[name], soft, hard))
    return tuple(triples)


def capability_number(name: Any) -> int:
    """``"net_bind_service"``, ``"CAP_NET_BIND_SERVICE"`` (any case) → 10."""
    key = name.lower().removeprefix("cap_") if isinstance(name, str) else None
    if key not in CAPABILITIES:
        raise LinxValueError(
            ("bad_capability", name), f"unknown capability {name!r}; expected names like 'net_bind_service'"
        )
    return CAPABILITIES[key]


def check_capabilities(capabilities: Any) -> int | None:
    """None leaves them unchanged; otherwise the mask of exactly these."""
    if capabilities is None:
        return None
    if not _is_list_like(capabilities):
        raise LinxValueError(
            ("bad_capabilities", capabilities), f"capabilities must be a list of names or None, not {capabilities!r}"
        )
    mask = 0
    for name in capabilities:
        mask |= 1 << capability_number(name)
    return mask


def check_seccomp(seccomp: Any, no_new_privs: bool, capabilities: int | None, user: int | None) -> bytes | None:
    """A ``seccomp.Filter`` or raw BPF; the kernel installs a filter only under no_new_privs or
    for a task with CAP_SYS_ADMIN, so one that would certainly be refused is refused here."""
    if seccomp is None:
        return None
    if callable(getattr(seccomp, "bpf", None)):  # a seccomp.Filter (not imported: it lives a floor above)
        program = bytes(seccomp.bpf())
    elif isinstance(seccomp, (bytes, bytearray, memoryview)):
        program = bytes(seccomp)
    else:
        raise LinxValueError(
            ("bad_seccomp", seccomp), f"seccomp must be a linx_otp.seccomp.Filter or BPF bytes, not {seccomp!r}"
        )
    count = len(program) // protocol.SECCOMP_INSTRUCTION_SIZE
    if len(program) % protocol.SECCOMP_INSTRUCTION_SIZE or not 0 < count <= protocol.SECCOMP_INSTRUCTIONS_MAX:
        raise LinxValueError(
            ("bad_seccomp", ("not_a_program", len(program))),
            f"a seccomp program must be 1..{protocol.SECCOMP_INSTRUCTIONS_MAX} struct sock_filter (8 bytes each), not {len(program)} bytes",
        )
    sys_admin = 1 << CAPABILITIES["sys_admin"]
    keeps_sys_admin = bool(capabilities & sys_admin) if capabilities is not None else user in (None, 0)
    if not no_new_privs and not keeps_sys_admin:
        raise LinxValueError(
            ("bad_seccomp", "needs_no_new_privs"),
            "a seccomp filter needs no_new_privs=True unless the workload keeps the sys_admin capability",
        )
    return program


def check_hardening(
    *,
    user: Any,
    group: Any,
    extra_groups: Any,
    umask: Any,
    rlimits: Any,
    capabilities: Any,
    seccomp: Any,
    no_new_privs: bool,
) -> protocol.Hardening | None:
    """All of docs/hardening.md's options, in the order the child applies them; None when none is given."""
    uid = check_user(user)
    hardening = protocol.Hardening(
        user=uid,
        group=check_group(group),
        extra_groups=check_extra_groups(extra_groups, uid),
        rlimits=check_rlimits(rlimits),
        umask=check_umask(umask),
        capabilities=check_capabilities(capabilities),
    )
    program = check_seccomp(seccomp, no_new_privs, hardening.capabilities, uid)
    if program is not None:
        hardening = dataclasses.replace(hardening, seccomp=program)
    return None if hardening == protocol.Hardening() else hardening


# ---- the options as a whole ---------------------------------------------------------------


class SessionOptions(TypedDict, total=False):
    """The keyword options of ``spawn`` and ``enter`` (README, "Using it"); defaults in ``plan_session``."""

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
    user: int | str | None
    group: int | str | None
    extra_groups: Iterable[int | str] | None
    umask: int | None
    rlimits: Mapping[str, int | tuple[int, int]] | None
    capabilities: Iterable[str] | None
    seccomp: Any
    setup: Callable[[int], Any] | None


def check_setup(setup: Any) -> Callable[[int], Any] | None:
    """A ``linx_otp.Setup`` or any callable ``f(host_pid)`` (docs/hardening.md, "One checkpoint set-up"). It may return a
    callable of no arguments, which the session calls when the incarnation ends, to release
    what the set-up created (a ``Setup`` does).

    >>> check_setup(None) is None, check_setup(print) is print
    (True, True)
    """
    if setup is not None and not callable(setup):
        raise LinxValueError(
            ("bad_setup", setup), f"setup is a linx_otp.Setup or a callable f(host_pid), not {setup!r}"
        )
    return setup


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
    user: Any = None,
    group: Any = None,
    extra_groups: Any = None,
    umask: Any = None,
    rlimits: Any = None,
    capabilities: Any = None,
    seccomp: Any = None,
    setup: Any = None,
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
    checked_no_new_privs = check_bool("no_new_privs", no_new_privs)
    policy = check_orphan_policy(orphan_policy)
    output_mode, window = check_output(output), check_output_window(output_window)
    hardening = check_hardening(
        user=user,
        group=group,
        extra_groups=extra_groups,
        umask=umask,
        rlimits=rlimits,
        capabilities=capabilities,
        seccomp=seccomp,
        no_new_privs=checked_no_new_privs,
    )
    request = protocol.Request(
        mode=mode,
        target=target,
        argv=encoded_argv,
        env=encoded_env,
        namespaces=chosen_namespaces,
        cwd=encoded_cwd,
        stdio=directives,  # type: ignore[arg-type]
        pty=pty,
        no_new_privs=checked_no_new_privs,
        orphan_policy=policy,
        output_mode=output_mode,
        output_window=window,
        hardening=hardening,
    )
    return SessionPlan(
        request=request,
        owner=check_owner(owner),
        linger=check_bool("linger", linger),
        auto_proceed=check_bool("auto_proceed", auto_proceed),
        setup=check_setup(setup),
    )
