"""One named daemon instance and what it owns on the host (README, "The linx-otp command", Instances and Safety).

An instance's name scopes everything it creates: its control socket (``NAME.sock`` in a
directory only its uid can write), a lock file beside it (held with ``flock`` for the
daemon's life: the one test of "a daemon answers here"), a lock on the name itself in the
uid's instance directory (so a second daemon of the name is refused whatever ``--control``
it is given), its cgroups under
``linx-otp/NAME/``, and the veth host ends it makes, marked with the alias
``linx-otp:NAME:CHILD``. At start an instance removes what a killed predecessor of the same
name left, and nothing else; a link or address another instance (or anyone) holds is refused,
never taken.

This module never follows a symlink where another user could plant one, and never deletes
a path or a link it cannot prove is its own.

>>> check_instance_name("web-2")
'web-2'
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import cgroup as Cgroup
from ..checkpoint import netlink as Netlink
from ..errors import LinxError, LinxValueError
from .trust import why_untrusted

ALIAS_PREFIX = "linx-otp:"
CGROUP_ROOT = "linx-otp"
CONTROL_VARIABLE = "LINX_OTP_CONTROL"
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def check_instance_name(name: object) -> str:
    """1 to 32 letters, digits, '-' and '_', starting with a letter or digit."""
    if not isinstance(name, str) or not _INSTANCE_NAME.match(name):
        raise LinxValueError(
            ("bad_instance_name", name),
            f"an instance name is 1 to 32 letters, digits, '-' and '_' (starting with a letter or digit), not {name!r}",
        )
    return name


def instance_directory() -> str:
    """This uid's own directory for instances: ``/run/linx-otp`` for root,
    ``$XDG_RUNTIME_DIR/linx-otp`` or ``/tmp/linx-otp-UID`` for anyone else."""
    if os.geteuid() == 0:
        return "/run/linx-otp"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return f"{runtime}/linx-otp"
    return f"/tmp/linx-otp-{os.geteuid()}"


def default_control_path(name: str = "default") -> str:
    """Where instance ``name``'s socket lives: ``$LINX_OTP_CONTROL`` if set, else
    ``NAME.sock`` in the ``instance_directory()``."""
    if os.environ.get(CONTROL_VARIABLE):
        return os.environ[CONTROL_VARIABLE]
    return f"{instance_directory()}/{name}.sock"


def check_private_directory(directory: Path) -> None:
    """A directory may hold our socket only if it is a real directory (not a symlink), owned
    by us (or root) and writable by nobody else, in a directory no other user can redirect
    (``trust.py``). Raises ``LinxError(("unsafe_directory", path))``."""
    try:
        status = os.lstat(directory)
    except OSError as error:
        raise LinxError(("unsafe_directory", str(directory)), f"{directory}: {error.strerror}") from None
    uid = os.geteuid()
    problem = None
    untrusted_parent = why_untrusted(str(directory.parent))
    if untrusted_parent is not None:
        problem = f"is in a place another user could redirect: {untrusted_parent}"
    elif stat.S_ISLNK(status.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(status.st_mode):
        problem = "is not a directory"
    elif status.st_uid not in (uid, 0):
        problem = f"belongs to uid {status.st_uid}, not to uid {uid}"
    elif status.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(status.st_mode):04o})"
    if problem is not None:
        raise LinxError(
            ("unsafe_directory", str(directory)),
            f"refusing to use {directory} for the control socket: it {problem}; "
            f"remove it, or choose another place with --control",
        )


def prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700 (and missing parents), or check the one there;
    nothing is created where another user could redirect it."""
    untrusted = why_untrusted(str(directory.parent))
    if untrusted is not None:
        raise LinxError(
            ("unsafe_directory", str(directory)),
            f"refusing to use {directory} for the control socket: {untrusted}, so another user could redirect it; "
            f"choose another place with --control",
        )
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        os.mkdir(directory, 0o700)
    except OSError as error:
        raise LinxError(("unsafe_directory", str(directory)), f"cannot create {directory}: {error.strerror}") from None
    check_private_directory(directory)


@dataclass
class Instance:
    """A running instance's claim on its name: the locks, the socket path, and its marks."""

    name: str
    control_path: str
    locks: dict[str, int] = field(default_factory=dict)
    """The lock files held, in the order taken (path → fd): the name's, then the socket's."""
    cgroups: Cgroup.Layout | None = field(default=None, repr=False)

    @property
    def lock_path(self) -> str:
        """The socket's lock: one daemon answers at a path."""
        return self.control_path + ".lock"

    @property
    def name_lock_path(self) -> str:
        """The name's lock, in this uid's instance directory whatever ``--control`` says: one
        daemon owns a name (and so its cgroups and links), wherever its socket is."""
        return f"{instance_directory()}/{self.name}.instance.lock"

    # -- claiming the name -------------------------------------------------------------------

    def claim(self) -> None:
        """Check the directories, take the name's lock and then the socket's (refusing if another
        daemon holds either), and remove a stale socket. Nothing else is touched before both
        locks are ours."""
        try:
            for path in (self.name_lock_path, self.lock_path):
                prepare_directory(Path(path).parent)
                self.locks[path] = self._take_lock(path)
        except LinxError:
            self.release()
            raise
        self.remove_stale_socket()

    def _take_lock(self, path: str) -> int:
        """``flock`` on ``path`` (created 0600, never through a symlink), with this pid and the
        control socket's path written in."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as error:
                raise LinxError(("lock_failed", path), f"{path}: {error.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder, name, where = (os.pread(fd, 4096, 0).decode(errors="replace").strip().split(" ", 2) + ["", ""])[
                    :3
                ]
                os.close(fd)
                name = name or self.name
                raise LinxError(
                    ("instance_running", name),
                    f"another linx-otp daemon (pid {holder or '?'}) already runs instance {name!r} "
                    f"at {where or self.control_path}; stop it first, or use another --name or --control",
                ) from None
            try:  # a predecessor that unlinked the file between our open and our lock: retry
                if os.fstat(fd).st_ino == os.lstat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.name} {self.control_path}\n".encode(), 0)  # for the refusal of a second
        return fd

    def remove_stale_socket(self) -> None:
        """With the lock held, a socket at our path is a dead predecessor's; anything else there
        (a file, a directory) is not ours, and is refused."""
        try:
            status = os.lstat(self.control_path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(status.st_mode):
            self.release()
            raise LinxError(
                ("control_path_taken", self.control_path),
                f"{self.control_path} exists and is not a socket; refusing to replace it",
            )
        os.unlink(self.control_path)

    def listen(self, backlog: int = 64) -> socket.socket:
        """The control socket, at mode 0600. It is bound and listening under a temporary name and
        then renamed into place, so the path appears only once it answers (a client never meets
        a socket that refuses it)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        directory, name = os.path.split(self.control_path)
        staging = os.path.join(directory, f".{name}.{os.getpid()}")
        old_mask = os.umask(0o177)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)  # ours: a name with our pid, in a directory only we can write
            listener.bind(staging)
            listener.listen(backlog)
            os.rename(staging, self.control_path)
        except OSError as error:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise LinxError(("control_failed", self.control_path), f"{self.control_path}: {error.strerror}") from None
        finally:
            os.umask(old_mask)
        return listener

    def release(self) -> None:
        """At the end: the socket (ours only while we hold its lock), then each lock file and
        its lock, the name's last."""
        if self.lock_path in self.locks:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.control_path).st_mode):
                    os.unlink(self.control_path)
        for path, fd in reversed(self.locks.items()):
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        self.locks.clear()

    # -- what it owns on the host -----------------------------------------------------------

    def layout(self) -> Cgroup.Layout:
        if self.cgroups is None:
            self.cgroups = Cgroup.detect()
        return self.cgroups

    def cgroup_name(self, child_id: str) -> str:
        return f"{CGROUP_ROOT}/{self.name}/{child_id}"

    def link_alias(self, child_id: str) -> str:
        return f"{ALIAS_PREFIX}{self.name}:{child_id}"

    def own_links(self, aliases: dict[str, str]) -> list[str]:
        return [name for name, alias in aliases.items() if alias.startswith(f"{ALIAS_PREFIX}{self.name}:")]

    def clean_leftovers(self) -> list[str]:
        """What a killed predecessor of this name left: its cgroups (their processes killed)
        and its marked links. Returns what was removed, for the log."""
        removed = []
        layout = self.layout()
        base = f"{CGROUP_ROOT}/{self.name}"
        seen = set()
        for root in [layout.v2_root, *layout.v1_roots.values()]:
            if root is None or not Path(root, base).is_dir():
                continue
            for directory in Path(root, base).iterdir():
                if directory.is_dir() and not directory.is_symlink() and directory.name not in seen:
                    seen.add(directory.name)
                    cgroup = Cgroup.Cgroup(
                        self.cgroup_name(directory.name),
                        str(Path(layout.v2_root, base, directory.name)) if layout.v2_root else str(directory),
                        {c: str(Path(r, base, directory.name)) for c, r in layout.v1_roots.items()},
                    )
                    try:
                        Cgroup.destroy(cgroup, kill_first=True)
                        removed.append(f"cgroup {cgroup.name}")
                    except LinxError as error:
                        removed.append(f"cgroup {cgroup.name} (left: {error})")
        with Netlink.open() as host:
            for link in self.own_links(Netlink.link_aliases(host)):
                Netlink.delete_link(host, link, missing_ok=True)
                removed.append(f"link {link}")
        return removed

    def remove_cgroup_parents(self) -> None:
        Cgroup.remove_empty(self.layout(), f"{CGROUP_ROOT}/{self.name}")
        Cgroup.remove_empty(self.layout(), CGROUP_ROOT)

    def claim_link(self, host: object, link_name: str, child_id: str, host_address: str | None) -> None:
        """Make room for ``child_id``'s veth host end ``link_name``: a link of ours by that name
        (the last incarnation's) is deleted; one of anyone else's is refused, naming the owner;
        so is a host address held by a link that is not this child's."""
        aliases = Netlink.link_aliases(host)
        mine = self.link_alias(child_id)
        if link_name in aliases:
            alias = aliases[link_name]
            if alias != mine:
                raise LinxError(("link_taken", link_name), f"host link {link_name!r} {_owner(alias)}; not touching it")
        if host_address is not None:
            for holder in Netlink.links_with_address(host, host_address):
                if holder != link_name or aliases.get(holder) != mine:
                    raise LinxError(
                        ("address_taken", host_address),
                        f"host address {host_address} is held by link {holder!r}, which {_owner(aliases.get(holder, ''))}",
                    )
        if link_name in aliases:  # the last incarnation's, not yet gone with its netns
            Netlink.delete_link(host, link_name, missing_ok=True)


def _owner(alias: str) -> str:
    """``"is owned by linx-otp instance 'a' (child 'web')"`` or ``"is not linx-otp's"``."""
    if alias.startswith(ALIAS_PREFIX):
        instance, _, child = alias.removeprefix(ALIAS_PREFIX).partition(":")
        return f"is owned by linx-otp instance {instance!r} (child {child!r})"
    return "is not linx-otp's (no linx-otp mark)"
