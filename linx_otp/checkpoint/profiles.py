"""Ready-made hardening: ``container(rootfs=None)`` gives the spawn options a container engine
would use for an untrusted workload run by root (docs/hardening.md).

What it promises, and against what: at most Docker's default capabilities minus ``mknod``; a
seccomp allow list that is Docker's default profile (moby ``profiles/seccomp/default.json``, as
derived into the data at the bottom of this module) minus the calls in ``REMOVED_FROM_DOCKER``,
for every ABI the kernel runs; ``no_new_privs``; and a ``setup`` for the checkpoint that mounts
a fresh ``/proc`` with Docker's masks, a fresh read-only ``/sys``, and ``pivot_root``s into
``rootfs`` when one is given. Uid 0 without capabilities still owns the host's root-owned files
(and cgroup files), so the promise holds for a workload in its own rootfs with a cgroup
namespace, or with a non-root ``user``, or in a mapped user namespace.

This module only builds values; its ``setup`` is a ``linx_otp.Setup`` (``checkpoint.setup``
does the mounts, never in the host's own mount namespace).

>>> options = container()
>>> sorted(options)
['capabilities', 'namespaces', 'no_new_privs', 'seccomp', 'setup']
>>> "mknod" in options["capabilities"]
False
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any

from .seccomp import Arg, Filter, Rule
from .setup import MASKED_PATHS as MASKED_PATHS  # Docker's masks, re-exported: part of what container() promises
from .setup import READONLY_PATHS as READONLY_PATHS
from .setup import Setup

DOCKER_DEFAULT_CAPABILITIES = (
    "chown dac_override fsetid fowner mknod net_raw setgid setuid setfcap setpcap net_bind_service sys_chroot kill "
    "audit_write"
).split()
"""Docker's default capability set (moby ``daemon/pkg/oci/caps/defaults.go``)."""

CAPABILITIES = tuple(name for name in DOCKER_DEFAULT_CAPABILITIES if name != "mknod")

NAMESPACES = ("pid", "mount", "net", "uts", "ipc", "cgroup")

CLONE_NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a ``clone`` with any of
them is refused (Docker's rule for a workload without ``sys_admin``)."""


def container(rootfs: str | os.PathLike | None = None) -> dict[str, Any]:
    """Spawn options for an untrusted workload (docs/hardening.md). ``setup`` is a ``linx_otp.Setup``,
    which the session runs at ``ready`` before it proceeds::

        session = P.spawn(argv=["/bin/sh"], **profiles.container("/srv/rootfs"))
    """
    return {
        "namespaces": list(NAMESPACES),
        "capabilities": list(CAPABILITIES),
        "seccomp": container_filter(),
        "no_new_privs": True,
        "setup": container_setup(rootfs),
    }


@functools.cache
def container_filter() -> Filter:
    """Docker's default seccomp profile for a workload with ``CAPABILITIES``, minus
    ``REMOVED_FROM_DOCKER``: an allow list; everything else fails with EPERM. Built once (a
    ``Filter`` is a frozen value, and its program is compiled once too)."""
    return Filter(allow=container_allowed_rules(), deny=[Rule("clone3", errno=errno.ENOSYS)], errno=errno.EPERM)


def container_allowed_rules() -> list[Rule]:
    """The allow list of ``container_filter``: Docker's, for this host's ABIs and CAPABILITIES."""
    removed = set(REMOVED_FROM_DOCKER)
    docker = set(DOCKER_ALLOWED) | set(DOCKER_ALLOWED_ON_NEW_KERNELS) | set(DOCKER_ALLOWED_FOR_CAPABILITIES)
    plain = sorted(docker - removed)
    rules = [Rule(name) for name in plain if known_syscall(name)]
    rules += [Rule(name, abis=abis) for name, abis in DOCKER_ALLOWED_FOR_ABIS if known_syscall(name)]
    rules += [Rule("socket", args=(Arg(0, op, family),)) for op, family in DOCKER_SOCKET_FAMILIES]
    rules += [Rule("personality", args=(Arg(0, "eq", persona),)) for persona in DOCKER_PERSONALITIES]
    rules.append(Rule("clone", args=(Arg(0, "masked_eq", 0, mask=CLONE_NAMESPACE_FLAGS),)))
    return rules


def known_syscall(name: str) -> bool:
    """Whether this host's libseccomp knows the name (Docker's list names newer calls too)."""
    try:
        Rule(name)
    except ValueError:
        return False
    return True


# ---- the checkpoint set-up ---------------------------------------------------------------


def container_setup(rootfs: str | os.PathLike | None = None) -> Setup:
    """The set-up ``container()`` returns, for a child parked in fresh pid, mount and net
    namespaces (and a user namespace, mapped, when the caller is not root): a fresh /proc with
    Docker's masks (``setup.MASKED_PATHS``, ``setup.READONLY_PATHS``), a fresh read-only /sys,
    and ``pivot_root`` into ``rootfs`` when given."""
    return Setup(proc=True, sys=True, masked=True, rootfs=None if rootfs is None else os.fspath(rootfs))


# ---- data derived from moby's profiles/seccomp/default.json --------------------------------
# Fetched from github.com/moby/moby at b985e2313a8676e18072b442911fc8f64f17d440 (2026-08-23),
# vendor/github.com/moby/profiles/seccomp/default.json. Only the lists that apply to x86-64 (with
# i386 and x32) and to CAPABILITIES are kept; tests/test_escape.py lists every difference.

DOCKER_ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32 clock_adjtime
clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2
fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait
futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid
getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom
getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
get_thread_area gettid gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount listxattr listxattrat llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret
mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget
msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64
prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr
removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64
send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
setuid setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statmount statx symlink symlinkat
sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uretprobe utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()
"""The profile's unconditional allow list (its first ``SCMP_ACT_ALLOW`` entry)."""

DOCKER_ALLOWED_ON_NEW_KERNELS = ("process_vm_readv", "process_vm_writev", "ptrace")
"""Allowed by Docker on kernels >= 4.8 (``minKernel``)."""

DOCKER_ALLOWED_FOR_CAPABILITIES = ("chroot",)
"""Allowed by Docker for a capability in CAPABILITIES (``includes.caps``: CAP_SYS_CHROOT)."""

DOCKER_ALLOWED_FOR_ABIS = (("arch_prctl", ("x86_64", "x32")), ("modify_ldt", ("x86_64", "x32", "x86")))
"""Allowed by Docker only on some ABIs (``includes.arches``: amd64, x32, x86)."""

DOCKER_SOCKET_FAMILIES = (("lt", 38), ("eq", 39), ("gt", 40))
"""``socket`` is allowed for these ``arg0`` comparisons: not AF_ALG (38) nor AF_VSOCK (40)."""

DOCKER_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""``personality`` is allowed for these ``arg0`` values (and 0xffffffff, the query)."""

REMOVED_FROM_DOCKER = {
    "ptrace": "untrusted code needs no debugger; ptrace of a process it can see is an escape route (issue 13)",
    "process_vm_readv": "reads another process's memory: ptrace's power without ptrace",
    "process_vm_writev": "writes another process's memory: ptrace's power without ptrace",
}
"""Calls Docker's profile allows (for this capability set, on this kernel) that ours refuses, and why."""
