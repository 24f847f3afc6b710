"""The control socket: one ``selectors`` loop on its own thread, serving one JSON request per
connection and answering each with one JSON line (notes such as attach's ``"attached"`` come
first, as ``{"ok": true, "note": ...}``).

Behind a narrow interface: the server checks the peer's uid (SO_PEERCRED), reads and checks
the request's shape, and calls ``answer(request, note)``, which the daemon provides; quick
verbs are answered in the loop, the others (which may wait for a child's shutdown, or hold a
terminal for as long as an attach lasts) on a thread of their own. Nothing here knows the
daemon's loop.

Every failure is contained: a malformed request (any JSON that is not a request object,
bytes that are not JSON) gets an error reply; file descriptors passed with a request are
capped (``attach`` passes its terminal, no other verb any): more are closed at once and the
request refused; a connection that sends nothing gets one at
its deadline and is closed; at most ``max_connections`` are open (the oldest idle one makes
room for a new one); EMFILE/ENFILE in ``accept`` closes the oldest idle connection and, if
that is not enough, pauses accepting for a growing while; each kind is reported once per
episode through ``report``.

This module never lets an exception end its thread, and never blocks on one client.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LinxError

QUICK_VERBS = ("status", "shutdown", "logs")
"""Answered in the server's loop: they only read the daemon's state, or send it a message."""
CHILD_VERBS = ("restart", "stop", "start", "attach", "logs")
"""They name a child by ``id``."""
VERBS = tuple(dict.fromkeys((*QUICK_VERBS, *CHILD_VERBS, "reload")))
COUNT_MAX = 1 << 62
"""``lines`` and ``after`` (of ``logs``) are ints from 0 to this."""
MAX_REQUEST_BYTES = 65536
FDS_BY_VERB = {"attach": 1}
"""The file descriptors a request passes (SCM_RIGHTS): ``attach`` its terminal; no other verb any."""
MAX_FDS = max(FDS_BY_VERB.values())
"""What one connection may pass in all; more, and they are closed at once and the request refused."""
REQUEST_SECONDS = 5.0
MAX_UNSENT_REPLY_BYTES = 16 << 20
"""Replies written and not yet read by their clients, all connections together. A ``logs`` reply
can be several MiB (a child's last 1 MiB of lines, escaped as JSON); one that would pass this
while others wait is refused as busy instead of queued, so clients that ask and never read
cannot make the daemon hold 64 of them. A whole ``logs`` (not a follower's next lines) asked
while half of it waits is refused before it is built, so the control thread is not kept
building them either. Only ``logs`` is bounded: ``status``, ``shutdown`` and errors always go."""
SMALL_REPLY_BYTES = 64 << 10
"""A ``logs`` reply this small is queued whatever is unsent."""
MAX_CONNECTIONS = 64
SLOTS_KEPT_FOR_QUICK_VERBS = 8
"""Connections that requests which wait (reload, restart, attach...) may never take, so that
``status`` and ``shutdown`` always get in, however many of those wait behind a readiness check."""
BACKOFF_SECONDS = (0.05, 1.0)
QUIET_SECONDS = 60.0
_CREDENTIALS = struct.Struct("3i")


@dataclass(frozen=True)
class Request:
    """A well-formed request: a verb, the child it names (child verbs only), passed fds."""

    verb: str
    child_id: str | None = None
    fds: tuple[int, ...] = ()
    lines: int | None = None
    """``logs``: how many of the last lines (None: all the daemon keeps)."""
    after: int | None = None
    """``logs``: only the lines after this sequence number (what ``logs -f`` has seen)."""


Answer = Callable[[Request, Callable[[str], None]], Any]
Report = Callable[[str, str, str], None]


class BadRequest(ValueError):
    """A request that is not one; its message is the error reply."""


def parse_request(data: bytes, fds: tuple[int, ...] = ()) -> Request:
    """Check one request's shape: a JSON object with a known ``verb`` and, for child verbs, a
    string ``id``. Raises ``BadRequest`` with a message for people.

    >>> parse_request(b'{"verb": "stop", "id": "web"}')
    Request(verb='stop', child_id='web', fds=(), lines=None, after=None)
    >>> parse_request(b'[]')
    Traceback (most recent call last):
    ...
    linx_otp.daemon.control.BadRequest: a request is a JSON object like {"verb": "status"}, not a list
    """
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"a request is one JSON object on one line; this is not JSON ({error})") from None
    if not isinstance(message, dict):
        raise BadRequest(f'a request is a JSON object like {{"verb": "status"}}, not a {_json_type(message)}')
    verb = message.get("verb")
    if not isinstance(verb, str) or verb not in VERBS:
        raise BadRequest(f"unknown verb {verb!r}; expected one of: {', '.join(VERBS)}")
    child_id = message.get("id")
    wanted = FDS_BY_VERB.get(verb, 0)
    if len(fds) != wanted:
        what = "its terminal, one file descriptor" if wanted else "no file descriptors"
        raise BadRequest(f"{verb} passes {what}, not {len(fds)}")
    if verb not in CHILD_VERBS:
        return Request(verb, None, fds)
    if not isinstance(child_id, str) or not child_id:
        raise BadRequest(f"{verb} needs an 'id' naming a child (a string), not {child_id!r}")
    counts = {key: message.get(key) for key in ("lines", "after")} if verb == "logs" else {}
    for key, value in counts.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= COUNT_MAX):
            raise BadRequest(f"{verb}: {key!r} is an int from 0 to {COUNT_MAX}, not {value!r}")
    return Request(verb, child_id, fds, **counts)


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    outgoing: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ
    """What the selector watches for (0: unregistered, the client has hung up)."""
    working: bool = False
    finished: bool = False
    """True once the final answer is queued: close when it is written."""

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class ControlServer:
    """Serves ``listener`` on the thread ``linx-otp-control`` until ``close``."""

    def __init__(
        self,
        listener: socket.socket,
        answer: Answer,
        report: Report,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self.listener = listener
        self.answer = answer
        self.report = report
        self.max_connections = max_connections
        self.max_working = max(1, max_connections - SLOTS_KEPT_FOR_QUICK_VERBS)
        self.request_seconds = request_seconds
        self.uid = os.geteuid()
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, _Connection] = {}
        self.finished_work: deque[tuple[_Connection, dict]] = deque()
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.accepting = False
        self.resume_accept_at: float | None = None
        self.backoff = BACKOFF_SECONDS[0]
        self.last_reported: dict[str, float] = {}
        self.stopping = False
        listener.setblocking(False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")
        self._accept_again()
        self.thread = threading.Thread(target=self._serve, name="linx-otp-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stopping = True
        self._wake()
        if self.thread.is_alive():
            self.thread.join(5)
        for connection in list(self.connections.values()):
            self._close(connection)
        self.selector.close()
        self.listener.close()
        os.close(self.wake_read)
        os.close(self.wake_write)

    # -- the loop ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self.stopping:
            try:
                self._turn()
            except Exception as error:  # a bug must not end the control plane: report it, go on
                self._report_once("control_error", f"{type(error).__name__}: {error}")
                time.sleep(0.05)

    def _turn(self) -> None:
        for key, mask in self.selector.select(self._timeout()):
            if key.data == "wake":
                self._drain_wake()
            elif key.data == "listener":
                self._accept()
            else:
                connection = key.data
                if mask & selectors.EVENT_READ:
                    self._read(connection)
                if mask & selectors.EVENT_WRITE and connection.sock in self.connections:
                    self._flush(connection)
        now = time.monotonic()
        for connection in [c for c in self.connections.values() if not c.working and c.deadline <= now]:
            if connection.finished:
                self._close(connection)  # a client that does not read its answer
            else:
                self._finish(
                    connection, {"ok": False, "error": f"no complete request within {self.request_seconds:g} s"}
                )
        if self.resume_accept_at is not None and now >= self.resume_accept_at:
            self.resume_accept_at = None
            self._accept_again()

    def _timeout(self) -> float:
        deadlines = [c.deadline for c in self.connections.values() if not c.working]
        if self.resume_accept_at is not None:
            deadlines.append(self.resume_accept_at)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0

    def _wake(self) -> None:
        try:
            os.write(self.wake_write, b"!")
        except BlockingIOError:
            pass  # already awake

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while self.finished_work:
            connection, reply = self.finished_work.popleft()
            if connection.sock in self.connections:
                if "note" in reply:
                    self._send(connection, reply)
                else:
                    connection.working = False
                    self._finish(connection, reply)

    # -- accepting -----------------------------------------------------------------------------

    def _accept_again(self) -> None:
        if not self.accepting and not self.stopping:
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")
            self.accepting = True

    def _pause_accepting(self, seconds: float | None) -> None:
        if self.accepting:
            self.selector.unregister(self.listener)
            self.accepting = False
        self.resume_accept_at = None if seconds is None else time.monotonic() + seconds

    def _accept(self) -> None:
        for _ in range(self.max_connections):
            if len(self.connections) >= self.max_connections and not self._evict_oldest_idle("too many connections"):
                self._pause_accepting(None)  # every slot is working: resume when one closes
                return
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._report_once(
                        "control_out_of_fds", f"accept: {error.strerror}; closing idle connections and backing off"
                    )
                    if self._evict_oldest_idle("the daemon is out of file descriptors"):
                        continue
                    self._pause_accepting(self.backoff)
                    self.backoff = min(self.backoff * 2, BACKOFF_SECONDS[1])
                    return
                if error.errno == errno.ECONNABORTED:
                    continue
                self._report_once("control_accept_failed", f"accept: {error.strerror}")
                self._pause_accepting(self.backoff)
                return
            self.backoff = BACKOFF_SECONDS[0]
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        connection = _Connection(sock, time.monotonic() + self.request_seconds)
        self.connections[sock] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection)
        try:
            _, uid, _ = _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
        except OSError:
            uid = -1
        if uid != self.uid:
            self._finish(
                connection, {"ok": False, "error": f"uid {uid} may not control this daemon (it runs as uid {self.uid})"}
            )

    def _evict_oldest_idle(self, why: str) -> bool:
        idle = [c for c in self.connections.values() if not c.working and not c.finished]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.deadline)
        self._finish(oldest, {"ok": False, "error": f"closed: {why}"})
        self._close(oldest)
        return True

    # -- one connection ------------------------------------------------------------------------

    def _read(self, connection: _Connection) -> None:
        if connection.working or connection.finished:
            try:  # nothing more is expected: junk after the request, or the client hanging up
                hung_up = not connection.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                hung_up = True
            if hung_up and connection.working:
                self._watch(connection, 0)  # the work's answer will find nobody, and close it
            elif hung_up:
                self._close(connection)
            return
        try:  # room for one fd more than allowed: the kernel closes what does not fit (MSG_CTRUNC)
            data, fds, flags, _ = socket.recv_fds(connection.sock, MAX_REQUEST_BYTES, MAX_FDS + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        connection.fds.extend(fds)
        if len(connection.fds) > MAX_FDS or flags & socket.MSG_CTRUNC:
            self._finish(  # closes them now; what the client sends after is read and dropped, fds and all
                connection,
                {
                    "ok": False,
                    "error": f"a request passes at most {MAX_FDS} file descriptor (attach: its terminal); "
                    "this one passed more, and they were closed",
                },
            )
            return
        connection.received += data
        line, newline, _ = connection.received.partition(b"\n")
        if len(line) > MAX_REQUEST_BYTES:  # whether its newline has come or not
            self._finish(connection, {"ok": False, "error": f"a request is at most {MAX_REQUEST_BYTES} bytes"})
        elif newline or not data:
            self._handle(connection, bytes(line))
        elif _complete_json(connection.received):  # a client that sends no newline
            self._handle(connection, bytes(connection.received))

    def _handle(self, connection: _Connection, data: bytes) -> None:
        try:
            request = parse_request(data, tuple(connection.fds))
        except BadRequest as error:
            self._finish(connection, {"ok": False, "error": str(error)})
            return
        whole_logs = request.verb == "logs" and request.after is None  # a follower's next lines are few
        if whole_logs and self._unsent_reply_bytes() >= MAX_UNSENT_REPLY_BYTES // 2:
            self._finish(connection, self._busy_with_unread_replies())  # refused before it is built
            return
        if request.verb in QUICK_VERBS:
            self._finish(connection, self._call(request, lambda note: None), bounded=request.verb == "logs")
            return
        working = sum(other.working for other in self.connections.values())
        if working >= self.max_working:
            busy = f"busy: {working} requests are in progress, the most at once; try {request.verb} again once one ends"
            self._finish(connection, {"ok": False, "error": busy})
            return
        connection.working = True

        def work() -> None:
            def note(text: str) -> None:
                self.finished_work.append((connection, {"ok": True, "note": text}))
                self._wake()

            self.finished_work.append((connection, self._call(request, note)))
            self._wake()

        threading.Thread(target=work, name=f"linx-otp-control-{request.verb}", daemon=True).start()

    def _call(self, request: Request, note: Callable[[str], None]) -> dict:
        try:
            return {"ok": True, "result": self.answer(request, note)}
        except LinxError as error:
            return {"ok": False, "error": str(error)}
        except Exception as error:  # reported, answered, and the server goes on
            self.report("daemon", "control_error", f"{request.verb}: {type(error).__name__}: {error}")
            return {"ok": False, "error": f"internal error: {type(error).__name__}: {error}"}

    def _finish(self, connection: _Connection, reply: dict, bounded: bool = False) -> None:
        """Queue the final answer; the connection closes once it is written. A ``bounded`` one
        (``logs``) is refused as busy if it would take the replies not yet read past their bound."""
        connection.close_fds()
        connection.finished = True
        connection.deadline = time.monotonic() + self.request_seconds
        self._send(connection, reply, bounded)

    def _send(self, connection: _Connection, reply: dict, bounded: bool = False) -> None:
        encoded = json.dumps(reply).encode() + b"\n"
        unsent = self._unsent_reply_bytes()
        if bounded and len(encoded) > SMALL_REPLY_BYTES and unsent and unsent + len(encoded) > MAX_UNSENT_REPLY_BYTES:
            encoded = json.dumps(self._busy_with_unread_replies()).encode() + b"\n"
        connection.outgoing += encoded
        self._flush(connection)

    def _unsent_reply_bytes(self) -> int:
        return sum(len(connection.outgoing) for connection in self.connections.values())

    def _busy_with_unread_replies(self) -> dict:
        unsent = self._unsent_reply_bytes()
        return {
            "ok": False,
            "error": f"busy: {unsent} bytes of replies wait for clients that have not read them; try again later",
        }

    def _flush(self, connection: _Connection) -> None:
        try:
            while connection.outgoing:
                sent = connection.sock.send(connection.outgoing)
                del connection.outgoing[:sent]
        except (BlockingIOError, InterruptedError):
            if connection.events:
                self._watch(connection, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            self._close(connection)  # hung up and not reading: nobody to wait for
            return
        except OSError:
            self._close(connection)  # the client went away: nothing to tell it
            return
        if connection.finished:
            self._close(connection)
        elif connection.events:
            self._watch(connection, selectors.EVENT_READ)

    def _watch(self, connection: _Connection, events: int) -> None:
        if events == connection.events:
            return
        if not events:
            self.selector.unregister(connection.sock)
        elif not connection.events:
            self.selector.register(connection.sock, events, connection)
        else:
            self.selector.modify(connection.sock, events, connection)
        connection.events = events

    def _close(self, connection: _Connection) -> None:
        if self.connections.pop(connection.sock, None) is None:
            return
        connection.close_fds()
        self._watch(connection, 0)
        connection.sock.close()
        if not self.accepting and self.resume_accept_at is None:
            self._accept_again()

    def _report_once(self, kind: str, detail: str) -> None:
        """Once per episode: again only after ``QUIET_SECONDS`` without this kind of trouble."""
        now = time.monotonic()
        last = self.last_reported.get(kind)
        self.last_reported[kind] = now
        if last is None or now - last > QUIET_SECONDS:
            self.report("daemon", kind, detail)


def _complete_json(data: bytearray) -> bool:
    """Whether ``data`` is a whole JSON value; parsed only when it could be one (a request is
    an object, so it ends with ``}``), so that a client dribbling a request byte by byte does
    not have everything so far parsed again at each byte."""
    if not data.rstrip().endswith(b"}"):
        return False
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True
