"""The spawn server: one long-lived agent process per Python process that forks a fresh agent
per session (native/PROTOCOL.md, "Spawn server").

Starting an agent directly costs this process a ``posix_spawn``, which copies this process's
whole fd table into the child and closes it again at its ``execve``: the more sessions are
alive (one fd each), the dearer. The server holds four fds and costs one message each way,
the same at any count, so ``agent.AgentConnection.start`` asks it once this process holds
many agent sockets (``agent.SPAWN_SERVER_FROM``) and spawns directly below that. It is
started (with ``posix_spawn``, never a fork of this process) on the first such spawn and kept;
each request carries the session's socket and this thread's fds 0-2 (for
``stdio="inherit"``) with ``SCM_RIGHTS``, and the server opens the thread's cwd
(``/proc/PID/task/TID/cwd``), so the agent gets the caller's at spawn time. It compares the calling
thread's namespaces, root, credentials, cgroup, rlimits and the like with those of the thread
the server has itself (read per request: what a forked agent really inherits) and answers
"stale" when any differs or either is under a seccomp filter: that agent is then spawned
directly (``start_agent`` returns None). State ``/proc`` does not show (securebits, the
memory-deny-write-execute flags, the session keyring, the timer slack) is compared here, by
``thread_fingerprint``, with the starting thread's, and a thread that differs is not sent. Agents it forks are this process's children, as directly
spawned ones are, so a dead server takes no session with it: the I/O thread reaps it (a pidfd)
and the next spawn starts a new one. The server exits when this process's end of its socket
closes (at this process's exit: end-of-file, not the death of the thread that started it); a
child made by ``os.fork()`` forgets the parent's server and starts its own if it spawns.

This module must never fork this process, and never hand the server anything but fds the
caller gave it for one request.

>>> import socket
>>> from linx_otp.agent import agent_path
>>> ours, theirs = socket.socketpair()
>>> pid = start_agent(theirs, agent_path())  # forked by the server, a child of this process
>>> theirs.close(); ours.close()  # the agent reads end-of-file instead of a request and exits
>>> os.waitpid(pid, 0)[0] == pid, server_pid() is not None
(True, True)
>>> stop(); server_pid() is None
True
"""

from __future__ import annotations

import array
import logging
import os
import signal
import socket
import threading
import time

from . import protocol
from .agent_image import sealed_executable
from .libc import libc
from .reactor import reactor

log = logging.getLogger(__name__)

SERVER_ARGUMENT = "--spawn-server"
"""native/server.h's: ``linx-agent --spawn-server`` serves spawn requests on fd 3."""
REPLY_TIMEOUT = 5.0
"""Seconds to wait for an answer before the server is taken for stuck and replaced."""
RETRY_SECONDS = 5.0
"""After a server could not be started (out of fds or processes, say), agents are spawned
directly for this long before another one is tried."""
DISABLE_VARIABLE = "LINX_OTP_SPAWN_SERVER"
"""Set to ``0`` to spawn every agent directly (for comparing the two paths)."""


PROCESS_WIDE_PIECES = frozenset({"limits", "oom_score_adj"})
"""Stale pieces of state that no thread of this process has as the server does any more (the
server compares them last, after every per-thread one): the server is replaced by one
started from the asking thread instead of sending every later spawn the direct way."""


STALE_IN_A_ROW_MAX = 16
"""Stale answers in a row after which the server is replaced by one started from the asking
thread, whatever piece differs: the thread that started it may have been the odd one out (in
another namespace, say). Bounded: at worst one server start per this many spawns."""


_PR_GET_SECUREBITS = 27
_PR_GET_TIMERSLACK = 30
_PR_GET_MDWE = 66
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
_KEYCTL_GET_KEYRING_ID = 0
_KEY_SPEC_SESSION_KEYRING = -3


def thread_fingerprint() -> tuple[int, int, int, int]:
    """The calling thread's inherited state that no ``/proc`` file shows, for comparing with the
    server's (it has the starting thread's: nothing but the server itself can change these):
    securebits, ``PR_GET_MDWE`` (-1 on a kernel without it), the session keyring's id and the
    timer slack. A few µs (benchmarks/spawn_server_check.py).

    >>> thread_fingerprint() == thread_fingerprint()
    True
    """
    return (
        libc.prctl(_PR_GET_SECUREBITS, 0, 0, 0, 0),
        libc.prctl(_PR_GET_MDWE, 0, 0, 0, 0),
        libc.syscall(_SYS_KEYCTL, _KEYCTL_GET_KEYRING_ID, _KEY_SPEC_SESSION_KEYRING, 0),
        libc.prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0),
    )


class StaleState(Exception):
    """The asking thread's state differs from the server's in ``piece`` (a namespace, ``root``,
    ``credentials``, ...): an agent forked by the server would not get what this thread has."""

    def __init__(self, piece: str) -> None:
        super().__init__(piece)
        self.piece = piece


class ServerLost(Exception):
    """The server went away while it held a request: the session's socket may be in a half-made
    agent, so the caller starts over with a new socket pair."""


class SpawnServer:
    """One running server: its pid, its socket, and the agent binary it runs."""

    def __init__(self, pid: int, sock: socket.socket, path: str) -> None:
        self.pid = pid
        self.path = path
        self._socket = sock
        self.fingerprint = thread_fingerprint()
        """The starting thread's, which the server (posix_spawned from it) has."""
        self._pidfd = -1
        """Watched by the I/O thread: a server that dies between requests is reaped at once."""

    @classmethod
    def start(cls, path: str) -> SpawnServer:
        """Start a server running ``path`` from the calling thread (whose fingerprint it records).
        Raises ``OSError`` if it cannot be started or does not answer its hello."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.posix_spawn(
                sealed_executable(path),
                [path, SERVER_ARGUMENT],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setsigmask=(),
                setpgroup=0,  # like an agent: a Ctrl-C at the terminal is Python's to handle
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        server = cls(pid, ours, path)
        ours.settimeout(REPLY_TIMEOUT)
        try:
            server._pidfd = os.pidfd_open(pid)
            reactor().register(server._pidfd, lambda: _reap_if_current(server))
            reply = server._ask(protocol.encode_server_hello(threading.get_native_id()), [])
        except (OSError, ServerLost) as error:
            server.discard()
            raise OSError(f"the spawn server did not answer its hello: {error}") from error
        if reply.kind != protocol.SERVER_READY:
            server.discard()
            raise OSError(reply.value, f"the spawn server failed at {reply.name}")
        return server

    def spawn(self, agent_socket: socket.socket) -> int:
        """Ask for an agent on ``agent_socket``: its pid. Raises ``StaleState`` when this thread's
        state is not the server's, ``ServerLost`` if the server is gone or misbehaves, and
        ``OSError`` if it could not fork. A thread whose ``thread_fingerprint`` is not the
        server's is stale without asking."""
        if thread_fingerprint() != self.fingerprint:
            raise StaleState("thread_fingerprint")
        stdio = [fd for fd in (0, 1, 2) if _passes_exec(fd)]
        message = protocol.encode_server_spawn(threading.get_native_id(), sum(1 << fd for fd in stdio))
        reply = self._ask(message, [agent_socket.fileno(), *stdio])
        if reply.kind == protocol.SERVER_SPAWNED:
            return reply.value
        if reply.kind == protocol.SERVER_STALE:
            raise StaleState(reply.name)
        if reply.kind == protocol.SERVER_FAILED and reply.name == "server_fork":
            raise OSError(reply.value, os.strerror(reply.value))
        raise ServerLost(f"the spawn server answered {reply}")

    def _ask(self, message: bytes, fds: list[int]) -> protocol.ServerReply:
        try:
            self._socket.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            answer = self._socket.recv(protocol.SERVER_MESSAGE_MAX)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as error:
            raise ServerLost(str(error)) from error
        if not answer:
            raise ServerLost("end-of-file")
        try:
            return protocol.decode_server_reply(answer)
        except ValueError as error:
            raise ServerLost(str(error)) from error

    def discard(self) -> None:
        """Close the socket (a live server exits at that), make sure it is gone, reap it: all
        through its pidfd, never by pid (one reaped by another wait() of this process may have
        a new owner)."""
        self._socket.close()
        if self._pidfd < 0:  # pidfd_open failed right after the spawn: the pid is still its own
            _kill_and_reap_by_pid(self.pid)
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except ChildProcessError:  # reaped by someone else's wait() in this process
            pass
        self._close_pidfd()

    def fds(self) -> set[int]:
        """The fds this process holds for the server: its socket and its pidfd."""
        return {fd for fd in (self._socket.fileno(), self._pidfd) if fd >= 0}

    def forget(self) -> None:
        """In a child made by ``os.fork()``: drop the parent's server without touching it."""
        self._socket.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)  # the parent's reactor thread is not in this process

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            reactor().unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def _kill_and_reap_by_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _passes_exec(fd: int) -> bool:
    """True if ``fd`` is open and not close-on-exec: what a directly spawned agent would have.
    (A process that closed its fd 0 may hold its epoll there, close-on-exec: never the agent's.)"""
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


_server: SpawnServer | None = None
_next_try = 0.0
"""``time.monotonic()`` before which no server is started again (one could not be)."""
_stale_in_a_row = 0
"""Stale answers since the last agent the server forked."""
_lock = threading.Lock()
"""Held for a whole request: one request at a time on the server's socket."""


def start_agent(agent_socket: socket.socket, path: str) -> int | None:
    """Fork an agent for ``agent_socket`` through this process's spawn server (started on first
    use, or again after it died); None if the caller must spawn it directly (the server is
    disabled, cannot start, or holds state this thread does not have; a stale answer for the
    whole process, or ``STALE_IN_A_ROW_MAX`` in a row, replaces it first). Raises ``ServerLost``
    (start over with a new socket pair) or ``OSError`` (the fork failed)."""
    global _server, _next_try, _stale_in_a_row
    if os.environ.get(DISABLE_VARIABLE) == "0" or time.monotonic() < _next_try:
        return None
    with _lock:
        if _server is not None and _server.path != path:
            _replace_server()  # another agent binary was asked for since it started
        for _attempt in range(2):
            if _server is None:
                try:
                    _server = SpawnServer.start(path)
                except OSError as error:
                    log.warning("no spawn server (%s): agents are spawned directly for %s s", error, RETRY_SECONDS)
                    _next_try = time.monotonic() + RETRY_SECONDS
                    return None
            try:
                pid = _server.spawn(agent_socket)
            except StaleState as stale:
                _stale_in_a_row += 1
                if stale.piece not in PROCESS_WIDE_PIECES and _stale_in_a_row < STALE_IN_A_ROW_MAX:
                    log.debug("spawn server stale (%s): spawning this agent directly", stale.piece)
                    return None
                log.debug("spawn server stale (%s): replacing it", stale.piece)
                _replace_server()
            except ServerLost:
                _replace_server()
                raise
            else:
                _stale_in_a_row = 0
                return pid
        return None  # stale again at once: this thread's state changes under us


def _replace_server() -> None:
    """Discard the server (the lock held): the next request starts a new one."""
    global _server
    if _server is not None:
        _server.discard()
        _server = None


def _reap_if_current(server: SpawnServer) -> None:
    """In the I/O thread, when ``server`` has exited: reap it, unless a request holds the lock
    (that request sees the end-of-file at once and discards it; until then the pidfd stays
    readable and this is called again) or it was replaced meanwhile."""
    global _server
    if not _lock.acquire(blocking=False):
        return
    try:
        if _server is server:
            _server = None
            server.discard()
    finally:
        _lock.release()


def server_pid() -> int | None:
    """The pid of this process's spawn server, if one runs (a child of this process)."""
    server = _server
    return server.pid if server is not None else None


def held_fds() -> set[int]:
    """The fds this process holds for its server (none if none runs): for fd accounting."""
    server = _server
    return server.fds() if server is not None else set()


def stop() -> None:
    """Stop this process's server, if one runs (the next spawn that needs one starts another):
    for a caller done with starting many sessions, and for tests."""
    with _lock:
        _replace_server()


def _forget_in_child() -> None:
    global _server, _lock, _next_try
    _next_try = 0.0
    _lock = threading.Lock()  # the parent's may have been held by another thread at the fork
    if _server is not None:
        _server.forget()
        _server = None


os.register_at_fork(after_in_child=_forget_in_child)
