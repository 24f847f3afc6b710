"""Whether another user could change where a path leads: the one rule the daemon applies to the
directories of every path it is given to create, write, rename or remove in (its control
socket's directory, a child's log file).

A directory is trusted when nobody but root and this uid can change what its path resolves to:
every directory from ``/`` down to it, and every symbolic link met on the way, belongs to root
or this uid, and none of those directories is writable by others unless it is sticky (as
``/tmp`` is: then only an entry's owner may rename or remove it, and every entry passed through
must be root's or ours anyway). This is the check OpenSSH makes of the path to
``authorized_keys``. Once it holds, no other user can redirect the path between the check and
its use, so checking first does not race. The last component is the caller's to check
(``O_NOFOLLOW``, and the owner of what it opened).

This module only looks: it never creates, changes or removes anything.

>>> why_untrusted("/") is None
True
"""

from __future__ import annotations

import os
import stat

SYMBOLIC_LINKS_MAX = 40
"""As the kernel's own limit on links followed in one lookup."""


def why_untrusted(directory: str) -> str | None:
    """None if only root and this uid can change where ``directory`` leads; else why not, in
    words that name the component. A component that does not exist yet ends the walk: nothing
    can be redirected through it, and whoever uses the path finds it missing."""
    trusted = (0, os.geteuid())
    pending = list(_components(os.path.abspath(directory)))
    current = "/"
    problem = _untrusted_directory("/", os.lstat("/"), trusted)
    links_followed = 0
    while problem is None and pending:
        name = pending.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            status = os.lstat(candidate)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"{candidate} cannot be examined ({error.strerror})"
        if stat.S_ISLNK(status.st_mode):
            if status.st_uid not in trusted:
                return f"{candidate} is a symbolic link that belongs to uid {status.st_uid}"
            links_followed += 1
            if links_followed > SYMBOLIC_LINKS_MAX:
                return f"{directory} passes through more than {SYMBOLIC_LINKS_MAX} symbolic links"
            target = os.readlink(candidate)
            if os.path.isabs(target):
                current = "/"
            pending[:0] = _components(target)
            continue
        problem = _untrusted_directory(candidate, status, trusted)
        current = candidate
    return problem


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _untrusted_directory(path: str, status: os.stat_result, trusted: tuple[int, int]) -> str | None:
    if not stat.S_ISDIR(status.st_mode):
        return f"{path} is not a directory"
    if status.st_uid not in trusted:
        return f"{path} belongs to uid {status.st_uid}"
    if status.st_mode & 0o022 and not status.st_mode & stat.S_ISVTX:
        return f"{path} is writable by others (mode {stat.S_IMODE(status.st_mode):04o})"
    return None
