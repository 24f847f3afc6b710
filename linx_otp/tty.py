"""Attaching a real terminal to a pty session, like ``docker attach`` (README, "Terminals: pty sessions and attach").

``attach(session)`` borrows the session's event stream with ``set_owner``, puts the caller's
terminal in raw mode, and pumps keystrokes to the workload and its output to the terminal
until the workload ends (returning the outcome) or the user types the detach key (returning
``"detached"``; the workload keeps running). The terminal's settings and the previous owner
are restored on every way out, including an exception, a KeyboardInterrupt and a SIGTERM or
SIGHUP to the Python process (which is then re-delivered, so the process still dies of it).

This module only ever touches the terminal it was given; it never forks and never reads a
session's state except through the session's verbs.

>>> WindowSize(rows=24, cols=80)
WindowSize(rows=24, cols=80, xpixel=0, ypixel=0)
>>> scanner = DetachScanner(b"\\x10\\x11")
>>> scanner.feed(b"ls\\x10"), scanner.feed(b"\\x11")
((b'ls', False), (b'', True))
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from . import process as P
from .actor import demonitor, monitor
from .errors import LinxError, LinxValueError
from .flow import consumed
from .mailbox import mailbox, receive

DEFAULT_DETACH_KEY = b"\x10\x11"
"""Ctrl-P Ctrl-Q, Docker's default."""

WINDOW_POLL_SECONDS = 0.25
"""Without SIGWINCH (attach called off the main thread), the window size is polled this often."""

TAKE_OVER_SECONDS = 5.0
"""How long a newer attach waits for the one it took over to have recorded its previous owner
(the statement after its own swap: never near this, but never forever either)."""

TAKEN_OVER_SHOWS_SECONDS = 1.0
"""How long an attach that is taken over gets to show the output it was told and end; past it
(a terminal nobody reads), that output's window is given back for the newer attach."""

_WINSIZE = struct.Struct("HHHH")


@dataclass(frozen=True)
class WindowSize:
    """A terminal's size; what ``P.pty_set_winsize`` takes. Each field is 0..65535."""

    rows: int
    cols: int
    xpixel: int = 0
    ypixel: int = 0


def window_size(fd: int) -> WindowSize:
    """The window size of the terminal open on ``fd`` (``TIOCGWINSZ``)."""
    rows, cols, xpixel, ypixel = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size)))
    return WindowSize(rows, cols, xpixel, ypixel)


def set_window_size(fd: int, size: WindowSize) -> None:
    """Set the window size of the terminal open on ``fd`` (``TIOCSWINSZ``)."""
    fields = (size.rows, size.cols, size.xpixel, size.ypixel)
    if not all(isinstance(value, int) and 0 <= value <= 65535 for value in fields):
        raise LinxValueError(("bad_winsize", size), f"window size fields are ints in 0..65535, not {size!r}")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(*fields))


class DetachScanner:
    """Finds the detach key in keystrokes that may arrive split across reads.

    ``feed(data)`` returns ``(bytes to forward, detached)``. A trailing partial match is held
    back (so one key byte delays by one keystroke) and flushed ahead of the next byte if that
    byte breaks the match; bytes before a complete key are forwarded."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key or b""
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if not self.key:
            return data, False
        stream = self._held + data
        found = stream.find(self.key)
        if found >= 0:
            self._held = b""
            return stream[:found], True
        for length in range(min(len(self.key) - 1, len(stream)), 0, -1):
            if stream.endswith(self.key[:length]):
                self._held = stream[-length:]
                return stream[:-length], False
        self._held = b""
        return stream, False


class _Borrowed:
    """The owner attach installs: queues the session's events and wakes the pump's poll. The
    pump gives an output event's window back once it has written it to the terminal, so a slow
    terminal slows the workload instead of filling this queue."""

    output_credit = "explicit"

    def __init__(self) -> None:
        self.events: deque[Any] = deque()
        self.wake_read, self.wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._closed = False
        self.taken_over = False
        """Another attach has taken the session from this one: its pump ends, and the newer
        attach gives the session back to ``previous_owner`` when it ends."""
        self.previous_owner: Any = None
        self._previous_owner_known = threading.Event()
        self.ended = threading.Event()
        """Its attach has returned (or raised), and handed back what it was told and did not show."""

    def remember_previous_owner(self, owner: Any) -> None:
        self.previous_owner = owner
        self._previous_owner_known.set()

    def take_over(self) -> Any:
        """Another attach has swapped this one out: end its pump, and return the owner the
        session goes back to at the end (this attach's own previous owner, which it recorded
        right after its swap: at most a moment away)."""
        self.taken_over = True
        self.wake()
        self._previous_owner_known.wait(TAKE_OVER_SECONDS)
        if not self.ended.wait(TAKEN_OVER_SHOWS_SECONDS):
            # Stuck writing to a terminal nobody reads (a frozen ssh session): the output it was
            # told and has not shown holds the session's window, and the newer attach would get
            # nothing. Give that window back; the stuck write ends when the terminal goes.
            self._give_back_unshown_output()
        return self.previous_owner

    def _give_back_unshown_output(self) -> None:
        for _ in range(len(self.events)):
            try:
                event = self.events.popleft()
            except IndexError:
                return  # its pump took the rest meanwhile
            if event[:2] == ("linx_process", "pty_out"):
                consumed(event)
            else:
                self.events.append(event)  # an outcome or a DOWN is still its pump's to act on

    def tell(self, message: Any) -> None:
        self.events.append(message)
        self.wake()

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return  # a late event, after attach has handed the session back
            try:
                os.write(self.wake_write, b"!")
            except BlockingIOError:
                pass  # already awake

    def clear_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.wake_read)
            os.close(self.wake_write)
        for event in self.events:  # output never shown (a detach): its window goes back to the session
            consumed(event)


class _ProcessSignal(BaseException):
    """SIGTERM/SIGHUP arrived while attached: unwind, restore, then re-deliver it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _open_terminal(terminal: int | None) -> tuple[int, bool]:
    if terminal is not None:
        if not os.isatty(terminal):
            raise LinxError("no_local_tty", f"fd {terminal} is not a terminal")
        return terminal, False
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC), True
    except OSError as error:
        raise LinxError(
            "no_local_tty", f"this process has no controlling terminal (/dev/tty: {error.strerror or error})"
        ) from None


def _check_attachable(session: pykka.ActorRef) -> None:
    info = P.info(session)  # raises no_process for a gone session
    if info.result is not None:
        raise LinxError("no_process", f"attach: the session has ended ({info!r})")
    if not info.pty:
        raise LinxError("no_pty", "attach: not a pty session (spawn with stdio='pty')")
    if info.stage != "running":
        raise LinxError(("not_running", info.stage), f"attach: the workload is not running yet (stage {info.stage})")


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, blocking or not (a non-blocking fd is waited on)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])


class _Pump:
    """One attachment: terminal ↔ session until an outcome or the detach key."""

    def __init__(self, session: pykka.ActorRef, fd: int, owner: _Borrowed, detach_key: bytes | None) -> None:
        self.session = session
        self.fd = fd
        self.owner = owner
        self.scanner = DetachScanner(detach_key)
        self.size = window_size(fd)

    def run(self, watch_signals: bool) -> Any:
        """The outcome, or ``"detached"``. Every OS error here is the terminal's (a hung-up one
        gives EIO): ``attach`` turns it into ``terminal_gone``, with those of the set-up."""
        P.pty_set_winsize(self.session, self.size)
        poll_timeout = None if watch_signals else WINDOW_POLL_SECONDS
        while True:
            readable, _, _ = select.select([self.fd, self.owner.wake_read], [], [], poll_timeout)
            self.owner.clear_wakeups()
            if self.owner.taken_over:  # what was told to this attach is shown; the rest goes to the newer one
                return self._handle_events() or "detached"
            self._forward_window_size()
            result = self._handle_events()
            if result is not None:
                return result
            if self.fd in readable and self._handle_keystrokes():
                return "detached"

    def _forward_window_size(self) -> None:
        size = window_size(self.fd)
        if size != self.size:
            self.size = size
            P.pty_set_winsize(self.session, size)

    def _handle_events(self) -> Any:
        """The events queued now, not those that come meanwhile: a flood of output must not keep
        the pump from the keyboard (the detach key, Ctrl-C). What is left wakes the next turn."""
        for _ in range(len(self.owner.events)):
            match event := self.owner.events.popleft():
                case ("linx_process", "pty_out", data):
                    write_all(self.fd, data)
                    consumed(event)
                case ("linx_process", kind, *details) if kind in P.TERMINAL_EVENTS:
                    return (kind, *details)
                case ("DOWN", _, _):
                    raise LinxError("no_process", "attach: the session stopped")
        if self.owner.events:
            self.owner.wake()
        return None

    def _handle_keystrokes(self) -> bool:
        try:
            data = os.read(self.fd, 4096)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EINTR):
                return False
            raise LinxError("terminal_gone", f"attach: reading the terminal failed: {error}") from error
        if not data:
            raise LinxError("terminal_gone", "attach: the terminal was closed")
        forward, detached = self.scanner.feed(data)
        if forward:
            try:
                P.pty_write(self.session, forward)
            except LinxError as error:
                if error.reason != "no_process":
                    raise
                # the workload ended: its terminal event is on its way to this owner
        return detached


def attach(
    session: pykka.ActorRef,
    *,
    detach_key: bytes | None = DEFAULT_DETACH_KEY,
    terminal: int | None = None,
    on_attached: Callable[[], None] | None = None,
) -> Any:
    """Hand the caller's terminal to a running pty session until the workload ends (returns its
    outcome, e.g. ``("exited", 0)``) or the detach key is typed (returns ``"detached"``).

    ``terminal`` is a tty fd to use instead of the controlling terminal (``/dev/tty``);
    ``detach_key`` ``None`` or ``b""`` disables detaching; ``on_attached`` is called once the
    terminal is raw and keystrokes go to the workload. Raises ``LinxError`` with reason
    ``"no_local_tty"``, ``"no_pty"``, ``("not_running", stage)``, or ``"no_process"``.
    Called from the main thread it follows SIGWINCH; from another thread it polls the size.

        session = P.spawn(argv=["/bin/sh"], stdio="pty", auto_proceed=True)
        linx_otp.receive(("linx_process", "running"), timeout=5)
        outcome = tty.attach(session)          # type `exit`, or Ctrl-P Ctrl-Q to detach
    """
    if detach_key is not None and not isinstance(detach_key, (bytes, bytearray)):
        raise LinxValueError(("bad_detach_key", detach_key), f"detach_key must be bytes or None, not {detach_key!r}")
    _check_attachable(session)
    fd, opened = _open_terminal(terminal)
    owner = _Borrowed()
    previous_owner = None
    saved_termios = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handlers: dict[int, Any] = {}
    try:
        previous_owner = P.swap_owner(session, owner)
        if isinstance(previous_owner, _Borrowed):  # attached elsewhere: the newest attach wins
            previous_owner = previous_owner.take_over()
        owner.remember_previous_owner(previous_owner)
        if previous_owner is mailbox():
            _take_output_already_queued(owner)
        monitor(session, owner)
        info = P.info(session)
        if info.result is not None:  # it ended between the check and the swap
            return info.result
        pump = _Pump(session, fd, owner, bytes(detach_key or b""))
        if in_main_thread:
            previous_handlers = _install_signal_handlers(owner)
        saved_termios = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)
        if on_attached is not None:
            on_attached()
        return pump.run(watch_signals=in_main_thread)
    except _ProcessSignal as delivered:
        pending_signal = delivered.signum
    except (OSError, termios.error) as error:  # the terminal failed, in the set-up or the pump: it is gone
        raise LinxError("terminal_gone", f"attach: the terminal failed: {error}") from error
    finally:
        if saved_termios is not None:
            _restore_terminal(fd, saved_termios)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if previous_owner is not None:
            try:
                # unless a newer attach took it over: that one gives it back when it ends
                P.give_back(session, owner, previous_owner)
            except LinxError:
                pass  # the session is gone: there is nothing to hand back
            demonitor(session, owner)
        if opened:
            os.close(fd)
        owner.close()
        owner.ended.set()
    signal.raise_signal(pending_signal)  # the handlers are the previous ones again
    raise LinxError(("signal", pending_signal), f"attach: interrupted by signal {pending_signal}")


def _restore_terminal(fd: int, saved_termios: list) -> None:
    """Put the terminal's modes back; a terminal already hung up (the client's end closed: a
    dropped ssh session) has none to restore, and that must not stop the session being given back."""
    try:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved_termios)
    except (OSError, termios.error):  # termios.error is not an OSError
        pass


def _take_output_already_queued(owner: _Borrowed) -> None:
    """The caller owned the session: output it produced before attach (a shell's first
    prompt, say) is queued in the caller's mailbox; show it first, as the original's pump
    did by reading its own mailbox."""
    earlier = []
    while True:
        try:
            earlier.append(receive(("linx_process", "pty_out"), timeout=0))
        except TimeoutError:
            break
    owner.events.extendleft(reversed(earlier))  # ahead of what arrived since the swap
    owner.wake()


def _install_signal_handlers(owner: _Borrowed) -> dict[int, Any]:
    def on_window_change(signum: int, frame: Any) -> None:
        owner.wake()

    def on_termination(signum: int, frame: Any) -> None:
        raise _ProcessSignal(signum)

    handlers = {signal.SIGWINCH: on_window_change, signal.SIGTERM: on_termination, signal.SIGHUP: on_termination}
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


__all__ = ["DEFAULT_DETACH_KEY", "DetachScanner", "WindowSize", "attach", "set_window_size", "window_size"]
