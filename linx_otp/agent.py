"""Starting an agent process and talking to it.

``AgentConnection.start`` posix_spawns the native agent (never a fork of this multi-threaded
process), or past ``SPAWN_SERVER_FROM`` live sessions has the spawn server fork it
(``spawn_server``), with one end of a socketpair as its fd 3, sends the request, and registers
the socket with the reactor. Decoded events queue up in the connection; its listener (the
session) is nudged and takes them. When the agent has exited and its socket is drained, a last
``("agent_exit", status)`` event follows, so the session can tell a silent death from a
reported end. This module knows the wire, not the session's rules.

A live session holds one fd here, its socket: every fd this process holds is copied into and
closed again by each later ``posix_spawn`` (the kernel duplicates the fd table for the child),
so a second fd per session would make every spawn cost more the more sessions are alive. The
agent holds its end until it exits and no other process keeps it (its workload closes it
before anything else), so the socket's end-of-file is the agent's exit: then it is reaped
(``_reap``), waiting for the last moments of its exit through a pidfd held only for those.
Until it is reaped, its pid cannot be reused, so ``kill`` signals it by pid, never after.

The fast path: while no event waits for the listener (it has taken and handled everything), the
I/O thread offers each new event to the listener's ``deliver`` callback, which may hand it on
itself (the session delivers output straight to its owner). The first event it declines, and
every event after it, queue up as usual, so events are handed on in the order they arrived.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from . import protocol, spawn_server
from .agent_image import is_sealed, sealed_executable
from .errors import LinxError, errno_name
from .reactor import reactor

AGENT_PATH_VARIABLE = "LINX_OTP_AGENT"
"""An environment variable naming another agent binary (for debugging the agent)."""

BUNDLED_AGENT = Path(__file__).parent / "_bin" / "linx-agent"
RECEIVE_SIZE = 1024 * 1024
_receive_buffer = bytearray(RECEIVE_SIZE)
"""Where every agent socket is read into: only the I/O thread reads, one socket at a time, and
the decoder copies out what it keeps (a fresh object per read would cost page faults)."""
SEND_BUFFER = 1024 * 1024
"""The agent's socket buffer (the kernel caps it at net.core.wmem_max): room for a window's
worth of output, so the agent and the I/O thread wake each other less often."""


def agent_path() -> str:
    """The agent binary to run; raises ``LinxError(("missing_binary", path))`` if it is not an
    executable file (for instance when the package was not installed with ``pip install``).
    Once this process holds its sealed copy (``agent_image``), that is what runs, and the file
    is not looked at again: a ``stat`` per spawn was a hand-over of the GIL on every spawn."""
    path = os.environ.get(AGENT_PATH_VARIABLE) or str(BUNDLED_AGENT)
    if is_sealed(path):
        return path
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode) or not mode & 0o111:
        raise LinxError(
            ("missing_binary", path),
            f"the linx agent {path} is missing or not executable; reinstall with `pip install .`",
        )
    return path


def spawn_failed(error: OSError, step: str) -> LinxError:
    """The error for a spawn the system refused (out of fds or processes, say):
    ``LinxError(("spawn_failed", errno_name))``."""
    reason = errno_name(error.errno) if error.errno else "unknown"
    return LinxError(("spawn_failed", reason), f"starting the linx agent failed at {step}: {error.strerror or error}")


EXIT_STATUS_UNKNOWN = 255
"""The ``agent_exit`` status of an agent whose status another ``wait()`` in this process took."""


def _send_now(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> int:
    """Sends what the socket takes without waiting, ``fds`` with its first byte (SCM_RIGHTS);
    the bytes sent."""
    try:
        if fds:
            return sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], socket.MSG_DONTWAIT
            )
        return sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        if fds:
            raise  # a fresh socket takes at least the first bytes: this is not a full buffer
        return 0


SPAWN_SERVER_FROM = 1000
"""Live agent sockets from which ``start`` has the spawn server fork agents instead of
``posix_spawn``-ing them. Each ``posix_spawn`` copies and closes this process's whole fd table,
so it costs more with every live session; the server's round trip (the state check and a
fork, 0.5 ms on a quiet machine, 1-3 ms under load) grows with nothing but the load. Starting
sessions back to back, the two cost the same per session at 1,000 live sessions and the server
is ahead beyond (README, "The spawn server past 1,000 live sessions"); a lone spawn, not
overlapping the last agent's start, is cheaper direct up to about 5,000. Tests set it to 0 to
take the server's path."""
_live_agents = 0
_live_agents_lock = threading.Lock()


def many_live_agents() -> bool:
    """Whether this process holds ``SPAWN_SERVER_FROM`` live agent sockets or more: then a session
    holds no fd but its socket (held capture pipes are not made: ``process``)."""
    return _live_agents >= SPAWN_SERVER_FROM


def _count_live_agents(change: int) -> None:
    """Count an agent socket opened (+1) or closed (-1): the fds a spawn would copy, cheaply."""
    global _live_agents
    with _live_agents_lock:
        _live_agents += change


def _start_agent_process(
    path: str, request_frame: bytes, may_ask_server: bool, fds: Sequence[int] = ()
) -> tuple[socket.socket, int, bytes]:
    """Start an agent on a new socket pair: our end, its pid, and what of ``request_frame`` is
    still to be sent; ``fds`` go with the request (held capture pipes: PROTOCOL.md). Forked by the spawn server once this process holds many fds and the
    server can serve this thread, posix_spawned otherwise. As much of the request as the
    socket takes is in it before the agent starts, so the agent reads it at once instead of
    sleeping until this thread has sent it (README, "The full cycle, and a spawn server that
    did not pay for it")."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as error:
        raise spawn_failed(error, "socketpair") from error
    step = "setsockopt"
    try:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        unsent = request_frame[_send_now(ours, request_frame, fds) :]
        pid = None
        if may_ask_server and many_live_agents():
            step = "the spawn server's fork"
            pid = spawn_server.start_agent(theirs, path)
        if pid is None:
            step = "posix_spawn"
            pid = os.posix_spawn(
                sealed_executable(path),  # never the file itself (agent_image: CVE-2019-5736)
                [path],
                {},
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)],
                setsigmask=(),
                # Its own process group: a Ctrl-C at the terminal goes to Python, which stops
                # sessions gracefully, instead of killing every agent at once.
                setpgroup=0,
            )
    except BaseException as error:
        ours.close()
        if isinstance(error, OSError):
            raise spawn_failed(error, step) from error
        raise
    finally:
        theirs.close()
    return ours, pid, unsent


def exit_status(result: os.waitid_result) -> int:
    """An agent's exit status as a shell shows it: the code, or 128+N for signal N."""
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return 128 + result.si_status


REAP_RETRY_SECONDS = 0.01
"""How often an agent past its socket's end-of-file is looked at again when no pidfd could be
opened to wait for it (out of fds)."""


class AgentConnection:
    """One agent process: its socket, its pid until it is reaped, and the events read from it."""

    def __init__(self, sock: socket.socket, pid: int, proceed_on_ready: bool = False) -> None:
        self.pid = pid
        self._socket = sock
        _count_live_agents(+1)  # the socket it now holds; -1 where it closes it
        self._reaped = False
        self._reap_lock = threading.Lock()
        """Held to signal the agent by pid and to reap it, so no signal can reach a reused pid."""
        self._exit_pidfd = -1
        """Open only between the socket's end-of-file and the agent's reaping, if those differ."""
        self._send_lock = threading.Lock()
        self._decoder = protocol.EventDecoder()
        self._events: list[tuple] = []
        self._events_lock = threading.Lock()
        self._listener: Callable[[], None] | None = None
        self._deliver: Callable[[tuple], bool] | None = None
        self._listener_nudged = False
        """Events wait for the listener, or it holds some it has not handled: from the nudge
        until ``take_events`` answers empty. While it is set, nothing is offered to ``deliver``."""
        self._socket_drained = False
        self._status: int | None = None
        self._proceed_on_ready = proceed_on_ready
        """auto_proceed: the I/O thread sends ``proceed`` the moment ``ready`` is decoded."""
        self._proceed_sent = False
        self.auto_proceeded = False
        """The I/O thread sent ``proceed`` at ``ready`` (so nothing else can: not an abort either)."""
        self._proceed_lock = threading.Lock()
        self.finished = threading.Event()
        """Set once the agent has exited and everything it sent has been queued."""

    @classmethod
    def start(cls, request_frame: bytes, proceed_on_ready: bool = False, fds: Sequence[int] = ()) -> AgentConnection:
        """Start an agent and hand it the request, with ``fds`` (the agent has its own copies
        once this returns). With ``proceed_on_ready`` (auto_proceed) the I/O thread proceeds at
        ``ready`` itself, sparing a detour through the session."""
        path = agent_path()
        try:
            reactor()  # its first use makes its epoll fd and thread: before any agent exists
        except OSError as error:
            raise spawn_failed(error, "epoll") from error
        try:
            ours, pid, unsent = _start_agent_process(path, request_frame, may_ask_server=True, fds=fds)
        except spawn_server.ServerLost:  # its request may sit in a half-made agent: a fresh pair, directly
            ours, pid, unsent = _start_agent_process(path, request_frame, may_ask_server=False, fds=fds)
        connection = cls(ours, pid, proceed_on_ready)
        if unsent:
            connection.send(unsent)
        try:
            connection.watch()
        except OSError as error:  # epoll_ctl: out of memory or of watches
            connection._abandon()
            raise spawn_failed(error, "epoll_ctl") from error
        return connection

    def watch(self) -> None:
        """Have the I/O thread read the socket from now on (``start`` does it); raises
        ``OSError`` if the reactor cannot watch it."""
        reactor().register(self._socket.fileno(), self._on_socket_readable)

    # -- the session's side --------------------------------------------------------------

    def listen(self, listener: Callable[[], None], deliver: Callable[[tuple], bool] | None = None) -> None:
        """``listener()`` is called (from the I/O thread) whenever events wait in the queue.
        ``deliver(event)``, if given, is offered each new event (in the I/O thread) while none
        waits for the listener; it answers True if it has handed the event on itself. It must
        be quick and never block (no sends to the agent: the I/O thread is what drains it)."""
        with self._events_lock:
            self._listener = listener
            self._deliver = deliver
            pending = self._listener_nudged = bool(self._events)
        if pending:
            self._nudge()

    def claim_proceed(self) -> bool:
        """Take the right to send ``proceed``: False if it was already sent. ``abort`` claims it
        too, which is how an abort before ready wins over auto_proceed."""
        with self._proceed_lock:
            claimed = not self._proceed_sent
            self._proceed_sent = True
            self._proceed_on_ready = False
            return claimed

    def take_events(self) -> list[tuple]:
        """Every queued event, oldest first. Call it until it answers empty: only that re-arms the
        nudge, so events that arrive while the listener is still taking cost no nudge."""
        with self._events_lock:
            events, self._events = self._events, []
            if not events:
                self._listener_nudged = False
        return events

    def send(self, data: bytes) -> bool:
        """Send frames to the agent; False if it is gone."""
        with self._send_lock:
            if self._socket.fileno() < 0:
                return False
            try:
                self._socket.sendall(data)
            except OSError:
                return False
            return True

    def kill(self) -> None:
        """SIGKILL the agent (its workload dies with it, by its parent-death signal)."""
        with self._reap_lock:
            if self._reaped:
                return
            try:
                os.kill(self.pid, signal.SIGKILL)  # our unreaped child: the pid is still its own
            except OSError:
                pass

    def _abandon(self) -> None:
        """Undo a start that could not be watched: kill and reap the agent, close everything."""
        reactor().unregister(self._socket.fileno())  # a no-op for an fd never registered
        self.kill()
        with self._reap_lock:
            self._reaped = True
            os.waitpid(self.pid, 0)  # never registered, so only this thread reaps it
        self._socket.close()
        _count_live_agents(-1)

    # -- the I/O thread's side -----------------------------------------------------------

    def _hand_on(self, events: list[tuple]) -> None:
        """Offer ``events`` to ``deliver`` while nothing waits for the listener; queue the rest."""
        with self._events_lock:
            deliver = None if self._listener_nudged else self._deliver
        if deliver is not None:
            # Nothing can be queued meanwhile: only this thread queues.
            delivered = 0
            while delivered < len(events) and deliver(events[delivered]):
                delivered += 1
            events = events[delivered:]
        if events:
            self._queue(events)

    def _queue(self, events: list[tuple]) -> None:
        with self._events_lock:
            self._events.extend(events)
            nudge = self._listener is not None and not self._listener_nudged
            if nudge:
                self._listener_nudged = True
        if nudge:
            self._nudge()

    def _nudge(self) -> None:
        listener = self._listener
        if listener is not None:
            listener()

    def _receive(self) -> int | None:
        """Reads what the socket holds into the receive buffer, up to its size, in one call: a
        stream socket's read takes every queued frame that fits, and the poll is level-triggered,
        so what arrives later wakes this thread again. Each call is a hand-over of the GIL,
        which the thread calling ``signal`` at 10,000 sessions waits for. 0 at end-of-file;
        None if nothing was there after all."""
        size: int | None = 0
        try:
            size = self._socket.recv_into(_receive_buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            size = None
        except (ConnectionResetError, BrokenPipeError):
            pass  # the agent exited with a command unread; what it sent came first
        return size

    def _on_socket_readable(self) -> None:
        size = self._receive()
        if size is None:
            return
        if size:
            events = self._decoder.feed(memoryview(_receive_buffer)[:size])
            if self._proceed_on_ready and any(event[0] == "ready" for event in events):
                self._auto_proceed()
            self._hand_on(events)
            return
        if self._decoder.pending:
            self._queue([("malformed", b"truncated frame at end of stream")])
        reactor().unregister(self._socket.fileno())
        with self._send_lock:
            self._socket.close()
        _count_live_agents(-1)
        self._socket_drained = True
        self._reap()

    def _auto_proceed(self) -> None:
        with self._proceed_lock:
            if not self._proceed_on_ready:
                return
            self._proceed_on_ready = False
            self._proceed_sent = True
            self.auto_proceeded = True
        self.send(protocol.encode_command(protocol.CMD_PROCEED))

    def _reap(self) -> None:
        """Reap the agent, whose socket has reached end-of-file; if it has not quite exited yet,
        wait for it through a pidfd (or, with none to be had, by looking again shortly)."""
        with self._reap_lock:
            try:
                result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG)
            except ChildProcessError:  # reaped by someone else's wait(): its status is lost
                self._reaped = True
                self._status = EXIT_STATUS_UNKNOWN
            else:
                if result is not None:
                    self._reaped = True
                    self._status = exit_status(result)
        if self._reaped:
            self._close_exit_pidfd()
            self._finish_if_done()
        elif self._exit_pidfd < 0:
            self._wait_for_exit()

    def _wait_for_exit(self) -> None:
        io = reactor()
        try:
            self._exit_pidfd = os.pidfd_open(self.pid)
            io.register(self._exit_pidfd, self._reap)
        except OSError:
            self._close_exit_pidfd()
            io.call_later(REAP_RETRY_SECONDS, self._reap)

    def _close_exit_pidfd(self) -> None:
        if self._exit_pidfd >= 0:
            reactor().unregister(self._exit_pidfd)
            os.close(self._exit_pidfd)
            self._exit_pidfd = -1

    def _finish_if_done(self) -> None:
        if self._socket_drained and self._status is not None and not self.finished.is_set():
            self._hand_on(
                [("agent_exit", self._status)]
            )  # offered like any event: after a known outcome it wakes nobody
            self.finished.set()
