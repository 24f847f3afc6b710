"""linx_otp.seccomp against the real kernel: deny and allow lists, a rule's own errno and its
argument conditions, the kill action, raw BPF, and a denied call that stays denied through the
i386 entry point (``int 0x80``), seen by a small static probe."""

from __future__ import annotations

import errno
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from probes.build import build_probe
from support import needs_root

import linx_otp
from linx_otp import process as P
from linx_otp.seccomp import Arg, Filter, Rule

CLONE_NEWUSER = 0x10000000
TIMEOUT = 10


@pytest.fixture(scope="module")
def probe():
    directory = Path(tempfile.mkdtemp(prefix="linx-probe-"))
    try:
        yield build_probe(directory)
    finally:
        shutil.rmtree(directory)


def run_probe(probe: Path, *arguments: str, seccomp=None) -> tuple[tuple, list[str]]:
    """Runs one probe; returns the outcome and the words it printed."""
    box = linx_otp.Mailbox()
    extra = {} if seccomp is None else {"seccomp": seccomp, "no_new_privs": True}
    session = P.spawn(argv=[str(probe), *arguments], owner=box, stdio={"stdout": "capture"}, auto_proceed=True, **extra)
    try:
        outcome = P.wait(session, TIMEOUT)
    finally:
        session.stop()
    return outcome, b"".join(event[2] for event in box.flush() if event[1] == "stdout").decode().split()


def errno_of(probe: Path, *arguments: str, seccomp=None) -> int:
    outcome, words = run_probe(probe, *arguments, seccomp=seccomp)
    assert outcome == ("exited", 0), (outcome, words)
    return int(words[0])


# -- values ------------------------------------------------------------------------------------


def test_an_unknown_syscall_is_bad_syscall():
    with pytest.raises(linx_otp.LinxError) as raised:
        Filter(deny=["mount", "mountt"])
    assert raised.value.reason == ("bad_syscall", "mountt") and isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: Filter(deny=["mount"], errno=0), ("bad_seccomp_errno", 0)),
        (lambda: Filter(deny=["mount"], errno=4096), ("bad_seccomp_errno", 4096)),
        (lambda: Filter(deny="mount"), ("bad_seccomp_deny", "mount")),
        (lambda: Filter(allow=[Rule("read", errno=5)]), ("bad_seccomp_allow", (Rule("read", errno=5),))),
        (lambda: Filter(deny=["mount"], kill=1), ("bad_seccomp_kill", 1)),
        (lambda: Rule("clone", abis=("sparc",)), ("bad_seccomp_abi", ("sparc",))),
    ],
)
def test_bad_filter_values_are_refused(build, reason):
    with pytest.raises(linx_otp.LinxError) as raised:
        build()
    assert raised.value.reason == reason


def test_a_bad_argument_condition_is_refused():
    with pytest.raises(linx_otp.LinxError) as raised:
        Arg(6, "eq", 0)
    assert raised.value.reason[0] == "bad_seccomp_arg"
    with pytest.raises(linx_otp.LinxError):
        Arg(0, "eq", 1, mask=1)  # a mask only means something for masked_eq


def test_bpf_is_whole_instructions_and_the_same_filter_gives_the_same_program():
    program = Filter(deny=["mount", "umount2"]).bpf()
    assert program and len(program) % 8 == 0
    assert Filter(deny=["mount", "umount2"]).bpf() == program
    assert Filter(deny=["mount"]).bpf() != program


# -- in the kernel -----------------------------------------------------------------------------


@needs_root
def test_a_denied_call_fails_with_the_filters_errno_on_x86_64_and_through_int_0x80(probe, tmp_path):
    denied = Filter(deny=["mkdir"], errno=errno.EACCES)
    assert errno_of(probe, "mkdir", str(tmp_path / "a"), seccomp=denied) == errno.EACCES
    assert errno_of(probe, "mkdir_i386", str(tmp_path / "b"), seccomp=denied) == errno.EACCES
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # without the filter both succeed: the probe itself works
    assert errno_of(probe, "mkdir", str(tmp_path / "a")) == 0
    assert errno_of(probe, "mkdir_i386", str(tmp_path / "b")) == 0
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


@needs_root
def test_a_rule_carries_its_own_errno_and_argument_conditions(probe):
    docker_like = Filter(
        deny=[
            Rule("clone3", errno=errno.ENOSYS),
            Rule("clone", args=(Arg(0, "masked_eq", CLONE_NEWUSER, mask=CLONE_NEWUSER),)),
        ]
    )
    assert errno_of(probe, "clone3", seccomp=docker_like) == errno.ENOSYS
    assert errno_of(probe, "clone_newuser", seccomp=docker_like) == errno.EPERM
    assert errno_of(probe, "clone_newuser_i386", seccomp=docker_like) == errno.EPERM
    assert errno_of(probe, "clone", seccomp=docker_like) == 0  # a clone without the flag is allowed
    for name in ("clone3", "clone_newuser", "clone_newuser_i386"):
        assert errno_of(probe, name) == 0, name


@needs_root
def test_kill_ends_the_process_with_sigsys(probe, tmp_path):
    outcome, words = run_probe(probe, "mkdir", str(tmp_path / "a"), seccomp=Filter(deny=["mkdir"], kill=True))
    assert (outcome, words) == (("signaled", signal.SIGSYS), [])


@needs_root
def test_raw_bpf_bytes_are_installed_as_given(probe, tmp_path):
    program = Filter(deny=["mkdir"]).bpf()
    assert errno_of(probe, "mkdir", str(tmp_path / "a"), seccomp=program) == errno.EPERM
    assert errno_of(probe, "mkdir_i386", str(tmp_path / "a"), seccomp=bytearray(program)) == errno.EPERM


@needs_root
def test_an_allow_list_refuses_everything_else_and_its_deny_rules_answer_their_own_errno(probe, tmp_path):
    from linx_otp import profiles

    allowed = [rule for rule in profiles.container_allowed_rules() if rule.syscall not in ("mkdir", "mkdirat")]
    strict = Filter(allow=allowed, deny=[Rule("clone3", errno=errno.ENOSYS)], errno=errno.EROFS)
    assert errno_of(probe, "mkdir", str(tmp_path / "a"), seccomp=strict) == errno.EROFS
    assert errno_of(probe, "mkdir_i386", str(tmp_path / "a"), seccomp=strict) == errno.EROFS
    assert errno_of(probe, "clone3", seccomp=strict) == errno.ENOSYS
    assert errno_of(probe, "clone", seccomp=strict) == 0
