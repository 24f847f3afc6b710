"""Seccomp filters for the ``seccomp=`` option (docs/hardening.md), compiled to classic BPF with libseccomp.

A ``Filter`` is a frozen value: a deny list (everything else allowed) or an allow list
(everything else refused with ``errno``, or the process killed). A rule is a syscall name, or a
``Rule`` with its own errno, argument conditions (``Arg``) and, if it must, the ABIs it is for.
``Filter.bpf()`` gives the program, which the agent installs last, just before execve; the agent
itself stays libc-only and never compiles anything.

Every ABI the kernel runs is covered (on x86-64: x86-64, i386 through ``int 0x80``, and x32), so
a denied call stays denied whichever way the workload enters the kernel; a call from any other
ABI kills the process (libseccomp's bad-architecture action).

Why ctypes: libseccomp's own Python binding (``seccomp`` on PyPI, ``pyseccomp``) is unmaintained
and builds from source against a matching libseccomp, while ``libseccomp.so.2`` itself is on every
Debian machine (systemd links it) with a stable C ABI. This module calls the few functions it
needs and nothing else; it never installs a filter in the Python process.

>>> import errno
>>> Filter(deny=["mount", Rule("clone3", errno=errno.ENOSYS)]).bpf()[:8] != b""
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_codes
import functools
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LinxError, LinxValueError

OPERATORS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}
"""libseccomp's ``enum scmp_compare``: ``masked_eq`` means ``(arg & mask) == value``."""

ABIS = {"x86_64": ("x86_64", "x86", "x32"), "aarch64": ("aarch64", "arm")}
"""For each machine, the ABIs its kernel can run (libseccomp's names); the first is native."""

ACT_KILL_PROCESS = 0x80000000
ACT_ALLOW = 0x7FFF0000
ACT_ERRNO = 0x00050000
ERRNO_MAX = 4095
ARG_MAX = 2**64 - 1
NR_SCMP_ERROR = -1


@dataclass(frozen=True)
class Arg:
    """A condition on syscall argument ``index`` (0..5): ``op`` is one of ``OPERATORS``; for
    ``masked_eq``, ``(arg & mask) == value``.

    >>> Arg(0, "masked_eq", 0, mask=0x10000000)
    Arg(index=0, op='masked_eq', value=0, mask=268435456)
    """

    index: int
    op: str
    value: int
    mask: int = 0

    def __post_init__(self) -> None:
        numbers = (self.index, self.value, self.mask)
        if (
            self.op not in OPERATORS
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
            or not 0 <= self.index <= 5
            or not 0 <= self.value <= ARG_MAX
            or not 0 <= self.mask <= ARG_MAX
            or (self.mask and self.op != "masked_eq")
        ):
            raise LinxValueError(
                ("bad_seccomp_arg", self),
                f"an argument condition needs index 0..5, op in {sorted(OPERATORS)}, 64-bit value (and mask only for masked_eq): {self!r}",
            )


@dataclass(frozen=True)
class Rule:
    """One syscall, optionally only when every ``args`` condition holds; ``errno`` overrides
    the filter's (deny rules only); ``abis`` limits it to some of ``ABIS`` (None: all).

    >>> Rule("clone3", errno=38).errno
    38
    """

    syscall: str
    args: tuple[Arg, ...] = ()
    errno: int | None = None
    abis: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        if self.abis is not None:
            object.__setattr__(self, "abis", tuple(self.abis))
        if not all(isinstance(arg, Arg) for arg in self.args) or len(self.args) > 6:
            raise LinxValueError(("bad_seccomp_rule", self), f"a rule's args must be at most six Arg values: {self!r}")
        if self.errno is not None:
            _check_errno(self.errno)
        if self.abis is not None and not set(self.abis) <= set(host_abis()):
            raise LinxValueError(
                ("bad_seccomp_abi", self.abis), f"a rule's abis must be among this host's {host_abis()}: {self.abis!r}"
            )
        if (
            not isinstance(self.syscall, str)
            or _library().seccomp_syscall_resolve_name(self.syscall.encode()) == NR_SCMP_ERROR
        ):
            raise LinxValueError(("bad_syscall", self.syscall), f"unknown syscall {self.syscall!r}")


def _check_errno(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ERRNO_MAX:
        raise LinxValueError(("bad_seccomp_errno", value), f"errno must be an int 1..{ERRNO_MAX}, not {value!r}")
    return value


def _rules(items: Iterable[Any], what: str) -> tuple[Rule, ...]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise LinxValueError((f"bad_seccomp_{what}", items), f"{what} must be a list of syscall names or Rules")
    return tuple(item if isinstance(item, Rule) else Rule(item) for item in items)


@dataclass(frozen=True, init=False)
class Filter:
    """A seccomp filter (docs/hardening.md). ``deny`` alone: those calls fail with ``errno`` (or kill the
    process with ``kill=True``), everything else is allowed. With ``allow``: only those calls
    are allowed, the rest fail (or kill); ``deny`` rules then say which calls fail differently
    (their own ``errno``). Unknown syscall names raise ``("bad_syscall", name)``.

    >>> Filter(deny=["reboot"]).deny
    (Rule(syscall='reboot', args=(), errno=None, abis=None),)
    """

    deny: tuple[Rule, ...] = ()
    allow: tuple[Rule, ...] | None = None
    errno: int = errno_codes.EPERM
    kill: bool = False
    _program: bytes | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        deny: Iterable[str | Rule] = (),
        allow: Iterable[str | Rule] | None = None,
        errno: int = errno_codes.EPERM,
        kill: bool = False,
    ) -> None:
        object.__setattr__(self, "deny", _rules(deny, "deny"))
        object.__setattr__(self, "allow", None if allow is None else _rules(allow, "allow"))
        object.__setattr__(self, "errno", _check_errno(errno))
        if not isinstance(kill, bool):
            raise LinxValueError(("bad_seccomp_kill", kill), f"kill must be True or False, not {kill!r}")
        object.__setattr__(self, "kill", kill)
        object.__setattr__(self, "_program", None)
        if self.allow is not None and any(rule.errno is not None for rule in self.allow):
            raise LinxValueError(("bad_seccomp_allow", self.allow), "allowed calls carry no errno")

    def bpf(self) -> bytes:
        """The compiled program: ``struct sock_filter`` instructions in the host's byte order
        (compiled on first use, then kept: the value is frozen)."""
        if self._program is None:
            object.__setattr__(self, "_program", _compile(self))
        assert self._program is not None
        return self._program


# ---- libseccomp through ctypes ------------------------------------------------------------


class _ArgCompare(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        library = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as error:
        raise LinxError(
            "no_libseccomp", f"seccomp filters need libseccomp.so.2 (Debian: libseccomp2): {error}"
        ) from None
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_release.argtypes = [ctypes.c_void_p]
    library.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    library.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    for name in ("seccomp_arch_add", "seccomp_arch_remove"):
        getattr(library, name).argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    library.seccomp_arch_native.restype = ctypes.c_uint32
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCompare),
    ]
    library.seccomp_merge.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    library.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return library


def host_abis() -> tuple[str, ...]:
    """The ABIs a filter covers on this machine, native first."""
    return ABIS.get(platform.machine(), (platform.machine(),))


def _check(result: int, what: str) -> None:
    if result < 0:
        raise LinxError(("seccomp_compile", what, -result), f"libseccomp failed at {what}: {os.strerror(-result)}")


def _context_for(abi: str, default_action: int) -> int:
    """A libseccomp context that filters exactly one ABI."""
    library = _library()
    context = library.seccomp_init(default_action)
    if not context:
        raise LinxError(("seccomp_compile", "init"), "libseccomp could not make a filter context")
    token = library.seccomp_arch_resolve_name(abi.encode())
    native = library.seccomp_arch_native()
    if token != native:
        _check(library.seccomp_arch_add(context, token), f"arch_add {abi}")
        _check(library.seccomp_arch_remove(context, native), f"arch_remove {abi}")
    return context


def _add_rule(context: int, action: int, rule: Rule, abi: str) -> None:
    library = _library()
    number = library.seccomp_syscall_resolve_name(rule.syscall.encode())
    conditions = (_ArgCompare * max(1, len(rule.args)))(
        *(
            _ArgCompare(arg.index, OPERATORS[arg.op], arg.mask if arg.op == "masked_eq" else arg.value, arg.value)
            for arg in rule.args
        )
    )
    _check(
        library.seccomp_rule_add_array(context, action, number, len(rule.args), conditions), f"{rule.syscall} ({abi})"
    )


def _actions(compiled: Filter) -> tuple[int, list[tuple[int, Rule]]]:
    """The default action, and each rule with its action (rules equal to the default dropped:
    libseccomp refuses them, and they change nothing)."""
    refusal = ACT_KILL_PROCESS if compiled.kill else ACT_ERRNO | compiled.errno
    if compiled.allow is None:
        default = ACT_ALLOW
        rules = [(ACT_ERRNO | rule.errno if rule.errno else refusal, rule) for rule in compiled.deny]
    else:
        default = refusal
        rules = [(ACT_ALLOW, rule) for rule in compiled.allow]
        rules += [(ACT_ERRNO | rule.errno, rule) for rule in compiled.deny if rule.errno]
    return default, [(action, rule) for action, rule in rules if action != default]


def _compile(compiled: Filter) -> bytes:
    library = _library()
    default, rules = _actions(compiled)
    contexts = []
    try:
        for abi in host_abis():
            contexts.append(_context_for(abi, default))
            for action, rule in rules:
                if rule.abis is None or abi in rule.abis:
                    _add_rule(contexts[-1], action, rule, abi)
        for other in contexts[1:]:
            _check(library.seccomp_merge(contexts[0], other), "merge")
            contexts.remove(other)
        descriptor = os.memfd_create("linx-seccomp", os.MFD_CLOEXEC)
        try:
            _check(library.seccomp_export_bpf(contexts[0], descriptor), "export")
            size = os.lseek(descriptor, 0, os.SEEK_END)
            return os.pread(descriptor, size, 0)
        finally:
            os.close(descriptor)
    finally:
        for context in contexts:
            library.seccomp_release(context)


__all__ = ["ABIS", "Arg", "Filter", "OPERATORS", "Rule", "host_abis"]
