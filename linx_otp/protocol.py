"""The agent's wire protocol (``native/PROTOCOL.md``): frames, the request, commands, events.

Pure encoding and decoding, no I/O and no policy: what a frame *means* for a session is
``process.py``'s business. The numbers here must equal those in ``native/protocol.h``;
``tests/test_protocol.py`` checks that they do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

FRAME_HEADER = struct.Struct(">I")
REQUEST_MAX = 1024 * 1024
COMMAND_MAX = 64 * 1024
OUTPUT_CHUNK = 262144
"""The most output bytes one ``pty_out``/``stdout``/``stderr`` event carries."""
PTY_IN_BUFFER_MAX = 1024 * 1024
OUTPUT_WINDOW_DEFAULT = 1024 * 1024
"""Output bytes a session may have in flight (sent by the agent, not yet taken by the owner)."""
OUTPUT_WINDOW_MIN = 4096
OUTPUT_WINDOW_MAX = 1024 * 1024 * 1024
PTY_IN_CHUNK = 16 * 1024
"""``pty_write`` splits data into frames of this size, well under ``COMMAND_MAX``."""

MSG_REQUEST = 0x01
CMD_PROCEED = 0x02
CMD_ABORT = 0x03
CMD_SIGNAL = 0x04
CMD_PTY_IN = 0x05
CMD_WINSIZE = 0x06
CMD_STOP = 0x07
CMD_CREDIT = 0x08
CMD_OUTPUT_MODE = 0x09
CMD_RELAY = 0x0A

EVT_SPAWNED = 0x81
EVT_READY = 0x82
EVT_RUNNING = 0x83
EVT_EXITED = 0x84
EVT_SIGNALED = 0x85
EVT_ABORTED = 0x86
EVT_ERROR = 0x87
EVT_PTY_OUT = 0x88
EVT_PTY_IN_DROPPED = 0x89
EVT_STDOUT = 0x8A
EVT_STDERR = 0x8B
EVT_OUTPUT_DROPPED = 0x8C

FIELD_MODE = 0x01
FIELD_TARGET = 0x02
FIELD_ARGV = 0x03
FIELD_ENV = 0x04
FIELD_NAMESPACES = 0x05
FIELD_CWD = 0x06
FIELD_STDIO = 0x07
FIELD_PTY = 0x08
FIELD_NO_NEW_PRIVS = 0x09
FIELD_ORPHAN_POLICY = 0x0A
FIELD_OUTPUT_WINDOW = 0x0B
FIELD_OUTPUT_MODE = 0x0C

# Hardening fields (docs/hardening.md), applied by the child just before execve (native/harden.c).
FIELD_USER = 0x10
FIELD_GROUP = 0x11
FIELD_EXTRA_GROUPS = 0x12
FIELD_UMASK = 0x13
FIELD_RLIMIT = 0x14
FIELD_CAPABILITIES = 0x15
FIELD_SECCOMP = 0x16
EXTRA_GROUPS_MAX = 65536
UMASK_MAX = 0o777
RLIMIT_COUNT = 16
SECCOMP_INSTRUCTIONS_MAX = 4096
SECCOMP_INSTRUCTION_SIZE = 8
RLIM_INFINITY_WIRE = 2**64 - 1
"""An unlimited rlimit on the wire (``RLIM_INFINITY``, all ones)."""

MODE_SPAWN = 0
MODE_ENTER = 1

STDIO_INHERIT = 0
STDIO_DEVNULL = 1
STDIO_CONNECT_UNIX = 2
STDIO_CAPTURE = 3
STDIO_CAPTURE_HELD = 4
"""A capture pipe this process made and reads itself (``held_output``); its two ends travel with
the request, and the agent relays it only once told ``relay``."""

ORPHAN_KILL = 0
ORPHAN_LINGER = 1
ORPHAN_DEFAULT_GRACE_MS = 5000

OUTPUT_BLOCK = 0
OUTPUT_DROP = 1
OUTPUT_MODES = {"block": OUTPUT_BLOCK, "drop": OUTPUT_DROP}
"""What a session does with output past its window: block the workload, or drop and report it."""

OUTPUT_STREAM_PTY = 0
OUTPUT_STREAM_STDOUT = 1
OUTPUT_STREAM_STDERR = 2
OUTPUT_STREAMS = {OUTPUT_STREAM_PTY: "pty", OUTPUT_STREAM_STDOUT: "stdout", OUTPUT_STREAM_STDERR: "stderr"}
"""How ``output_dropped`` names its stream."""

NS_USER = 1
NS_MOUNT = 2
NS_UTS = 4
NS_IPC = 8
NS_CGROUP = 16
NS_NET = 32
NS_TIME = 64
NS_PID = 128

SERVER_HELLO = 0x41
SERVER_SPAWN = 0x42
SERVER_READY = 0xC0
SERVER_SPAWNED = 0xC1
SERVER_STALE = 0xC2
SERVER_FAILED = 0xC3
SERVER_MESSAGE_MAX = 64
SERVER_SPAWN_FDS_MAX = 4
"""The spawn server's messages (PROTOCOL.md, "Spawn server"): one SOCK_SEQPACKET message each
way; a spawn request carries the session's socket and the stdio fds it names (the server
opens the calling thread's cwd itself)."""


@dataclass(frozen=True)
class NamespaceKind:
    """One kind of namespace under each of its names: ``name`` as users and error stages say
    it, its ``bit`` in the request's namespaces field, ``proc_name`` under ``/proc/<pid>/ns``,
    and the ``clone_flag`` (``CLONE_NEW*``) that clone3, unshare and setns take."""

    name: str
    bit: int
    proc_name: str
    clone_flag: int


NAMESPACE_KINDS = (
    NamespaceKind("user", NS_USER, "user", 0x10000000),
    NamespaceKind("mount", NS_MOUNT, "mnt", 0x00020000),
    NamespaceKind("uts", NS_UTS, "uts", 0x04000000),
    NamespaceKind("ipc", NS_IPC, "ipc", 0x08000000),
    NamespaceKind("cgroup", NS_CGROUP, "cgroup", 0x02000000),
    NamespaceKind("net", NS_NET, "net", 0x40000000),
    NamespaceKind("time", NS_TIME, "time", 0x00000080),
    NamespaceKind("pid", NS_PID, "pid", 0x20000000),
)
"""The one table of namespace kinds, in the order enter mode joins them; ``native/agent.c``'s
``namespace_kinds`` is its C twin (``tests/test_protocol.py`` checks that they agree)."""

NAMESPACE_BITS = {kind.name: kind.bit for kind in NAMESPACE_KINDS}


@dataclass(frozen=True)
class StdioDirective:
    """What one of fds 0..2 becomes: ``kind`` is a ``STDIO_*`` number."""

    kind: int = STDIO_INHERIT
    path: bytes | None = None


@dataclass(frozen=True)
class Request:
    """Everything the agent needs to create (or enter) and run one workload."""

    mode: int
    argv: tuple[bytes, ...]
    env: tuple[bytes, ...]
    target: int | None = None
    namespaces: frozenset[str] | None = None
    cwd: bytes | None = None
    stdio: tuple[StdioDirective, StdioDirective, StdioDirective] = field(
        default=(StdioDirective(), StdioDirective(), StdioDirective())
    )
    pty: bool = False
    no_new_privs: bool = False
    orphan_policy: tuple[int, int] | None = None
    """``(ORPHAN_KILL, grace_ms)`` or ``(ORPHAN_LINGER, 0)``; None leaves the agent's default."""
    output_window: int = OUTPUT_WINDOW_DEFAULT
    output_mode: int = OUTPUT_BLOCK
    hardening: Hardening | None = None
    """What the workload may do (docs/hardening.md); None changes nothing."""


@dataclass(frozen=True)
class Hardening:
    """The hardening fields of a request, already validated; None leaves a property unchanged."""

    user: int | None = None
    group: int | None = None
    extra_groups: tuple[int, ...] | None = None
    rlimits: tuple[tuple[int, int, int], ...] = ()
    """``(resource, soft, hard)``, unlimited as ``RLIM_INFINITY_WIRE``."""
    umask: int | None = None
    capabilities: int | None = None
    """A mask: bit N keeps capability N."""
    seccomp: bytes | None = None
    """A BPF program: ``struct sock_filter`` instructions in the host's byte order."""


def _hardening_fields(hardening: Hardening) -> list[bytes]:
    parts = []
    if hardening.user is not None:
        parts.append(_field(FIELD_USER, FRAME_HEADER.pack(hardening.user)))
    if hardening.group is not None:
        parts.append(_field(FIELD_GROUP, FRAME_HEADER.pack(hardening.group)))
    if hardening.extra_groups is not None:
        parts.append(
            _field(FIELD_EXTRA_GROUPS, struct.pack(f">{len(hardening.extra_groups)}I", *hardening.extra_groups))
        )
    for resource, soft, hard in hardening.rlimits:
        parts.append(_field(FIELD_RLIMIT, struct.pack(">BQQ", resource, soft, hard)))
    if hardening.umask is not None:
        parts.append(_field(FIELD_UMASK, FRAME_HEADER.pack(hardening.umask)))
    if hardening.capabilities is not None:
        parts.append(_field(FIELD_CAPABILITIES, struct.pack(">Q", hardening.capabilities)))
    if hardening.seccomp is not None:
        parts.append(_field(FIELD_SECCOMP, hardening.seccomp))
    return parts


def frame(payload: bytes) -> bytes:
    """One frame: the 4-byte big-endian length, then the payload (type byte first)."""
    return FRAME_HEADER.pack(len(payload)) + payload


FIELD_HEADER = struct.Struct(">BI")
"""A request field's tag and size."""


def _field(tag: int, value: bytes) -> bytes:
    return FIELD_HEADER.pack(tag, len(value)) + value


def _string_fields(tag: int, values: tuple[bytes, ...]) -> list[bytes]:
    """One field per string, NUL-terminated (argv and env: the hot part of every request)."""
    pack = FIELD_HEADER.pack
    return [pack(tag, len(value) + 1) + value + b"\0" for value in values]


_encoded_env: tuple[tuple[bytes, ...], bytes] = ((), b"")
"""The env fields last encoded, and the tuple they were encoded from."""


def _env_fields(env: tuple[bytes, ...]) -> bytes:
    """``env`` as request fields. Sessions that inherit an unchanged environment share one tuple
    (``options.check_env``), so most requests reuse the last encoding: 46 fields here, a
    quarter of the time ``encode_request`` took."""
    global _encoded_env
    known, encoded = _encoded_env
    if env is not known:
        encoded = b"".join(_string_fields(FIELD_ENV, env))
        _encoded_env = (env, encoded)
    return encoded


def namespace_mask(names: frozenset[str]) -> int:
    mask = 0
    for name in names:
        mask |= NAMESPACE_BITS[name]
    return mask


def encode_request(request: Request) -> bytes:
    """The request frame, ready to send."""
    parts = [bytes((MSG_REQUEST,)), _field(FIELD_MODE, bytes((request.mode,)))]
    if request.target is not None:
        parts.append(_field(FIELD_TARGET, FRAME_HEADER.pack(request.target)))
    parts += _string_fields(FIELD_ARGV, request.argv)
    parts.append(_env_fields(request.env))
    if request.namespaces is not None:
        parts.append(_field(FIELD_NAMESPACES, FRAME_HEADER.pack(namespace_mask(request.namespaces))))
    if request.cwd is not None:
        parts.append(_field(FIELD_CWD, request.cwd + b"\0"))
    for fd, directive in enumerate(request.stdio):
        if directive.kind == STDIO_CONNECT_UNIX:
            assert directive.path is not None
            parts.append(_field(FIELD_STDIO, bytes((fd, directive.kind)) + directive.path + b"\0"))
        elif directive.kind != STDIO_INHERIT:
            parts.append(_field(FIELD_STDIO, bytes((fd, directive.kind))))
    if request.pty:
        parts.append(_field(FIELD_PTY, b""))
    if request.no_new_privs:
        parts.append(_field(FIELD_NO_NEW_PRIVS, b""))
    if request.orphan_policy is not None:
        kind, grace_ms = request.orphan_policy
        parts.append(_field(FIELD_ORPHAN_POLICY, bytes((kind,)) + FRAME_HEADER.pack(grace_ms)))
    parts.append(_field(FIELD_OUTPUT_WINDOW, FRAME_HEADER.pack(request.output_window)))
    parts.append(_field(FIELD_OUTPUT_MODE, bytes((request.output_mode,))))
    if request.hardening is not None:
        parts += _hardening_fields(request.hardening)
    return frame(b"".join(parts))


def encode_command(command_type: int, body: bytes = b"") -> bytes:
    """A command frame: ``proceed``, ``abort``, ``stop``, ``signal``, ``pty_in``, ``winsize``,
    ``credit``, ``output_mode``, ``relay``."""
    return frame(bytes((command_type,)) + body)


def encode_credit(nbytes: int) -> bytes:
    """Give the agent back ``nbytes`` of its output window (bytes the owner has taken)."""
    return encode_command(CMD_CREDIT, FRAME_HEADER.pack(nbytes))


def encode_output_mode(mode: int) -> bytes:
    return encode_command(CMD_OUTPUT_MODE, bytes((mode,)))


def encode_relay(stream: int, carried: int = 0) -> bytes:
    """Have the agent relay held capture pipe ``stream`` (``OUTPUT_STREAM_STDOUT`` or ``_STDERR``)
    from now on: this process has stopped reading it. ``carried``: the bytes read from the held
    pipes that the owner has not taken, which the agent counts as in flight."""
    return encode_command(CMD_RELAY, bytes((stream,)) + FRAME_HEADER.pack(carried))


def encode_signal(signum: int) -> bytes:
    return encode_command(CMD_SIGNAL, bytes((signum,)))


def encode_winsize(rows: int, cols: int, xpixel: int, ypixel: int) -> bytes:
    return encode_command(CMD_WINSIZE, struct.pack(">HHHH", rows, cols, xpixel, ypixel))


def encode_pty_input(data: bytes) -> Iterator[bytes]:
    """``pty_in`` frames for data of any size, chunked."""
    for start in range(0, len(data), PTY_IN_CHUNK):
        yield encode_command(CMD_PTY_IN, data[start : start + PTY_IN_CHUNK])


Event = tuple
"""A decoded agent event: ``("spawned", pid)``, ``("ready", pid)``, ``("running",)``,
``("exited", code)``, ``("signaled", signum)``, ``("aborted",)``, ``("error", errno, stage)``,
``("pty_out", bytes)``, ``("pty_in_dropped", n)``, ``("stdout", bytes)``, ``("stderr", bytes)``,
``("output_dropped", stream, n)`` (stream ``"pty"``, ``"stdout"`` or ``"stderr"``), or
``("malformed", payload)``."""

_U32_EVENTS = {
    EVT_SPAWNED: "spawned",
    EVT_READY: "ready",
    EVT_EXITED: "exited",
    EVT_SIGNALED: "signaled",
    EVT_PTY_IN_DROPPED: "pty_in_dropped",
}


_DATA_EVENTS = {EVT_PTY_OUT: "pty_out", EVT_STDOUT: "stdout", EVT_STDERR: "stderr"}
OUTPUT_EVENTS = frozenset(_DATA_EVENTS.values())
"""The events whose bytes count against the output window."""
_OUTPUT_DROPPED = struct.Struct(">BQ")


@dataclass(frozen=True)
class ServerReply:
    """The spawn server's answer: ``kind`` (``SERVER_READY``, ``_SPAWNED``, ``_STALE`` or
    ``_FAILED``), ``value`` (the agent's pid, or an errno) and ``name`` (the piece of state
    that is stale, or the stage that failed)."""

    kind: int
    value: int
    name: str


_SERVER_HEAD = struct.Struct(">BI")


def encode_server_hello(thread_id: int) -> bytes:
    """The first message to a spawn server: the thread whose state it snapshots.

    >>> encode_server_hello(258).hex()
    '4100000102'
    """
    return _SERVER_HEAD.pack(SERVER_HELLO, thread_id)


def encode_server_spawn(thread_id: int, stdio_mask: int) -> bytes:
    """A spawn request from thread ``thread_id``; bit N of ``stdio_mask`` says the caller's
    fd N travels with it (after the session's socket).

    >>> encode_server_spawn(258, 0b101).hex()
    '420000010205'
    """
    return _SERVER_HEAD.pack(SERVER_SPAWN, thread_id) + bytes([stdio_mask])


def decode_server_reply(message: bytes) -> ServerReply:
    """Raises ``ValueError`` for anything the server would never send.

    >>> decode_server_reply(bytes.fromhex("c2000000006e732f6e6574"))
    ServerReply(kind=194, value=0, name='ns/net')
    """
    if len(message) < _SERVER_HEAD.size or message[0] not in (
        SERVER_READY,
        SERVER_SPAWNED,
        SERVER_STALE,
        SERVER_FAILED,
    ):
        raise ValueError(f"malformed spawn server reply {message!r}")
    kind, value = _SERVER_HEAD.unpack_from(message)
    return ServerReply(kind, value, message[_SERVER_HEAD.size :].decode("ascii", "replace"))


def decode_event(payload: bytes | memoryview) -> Event:
    """One event from a frame's payload. Never raises: a frame that does not parse comes back
    as ``("malformed", payload)`` for the session to log and drop. Output data is copied once,
    out of ``payload`` (which may be a view into a larger buffer)."""
    if not payload:
        return ("malformed", b"")
    kind, body = payload[0], payload[1:]
    if kind in _DATA_EVENTS:
        return (_DATA_EVENTS[kind], bytes(body))
    if kind in _U32_EVENTS and len(body) == 4:
        return (_U32_EVENTS[kind], FRAME_HEADER.unpack(body)[0])
    if kind == EVT_RUNNING and not body:
        return ("running",)
    if kind == EVT_ABORTED and not body:
        return ("aborted",)
    if kind == EVT_OUTPUT_DROPPED and len(body) == _OUTPUT_DROPPED.size:
        stream, nbytes = _OUTPUT_DROPPED.unpack(body)
        if stream in OUTPUT_STREAMS:
            return ("output_dropped", OUTPUT_STREAMS[stream], nbytes)
    if kind == EVT_ERROR and len(body) > 4:
        return ("error", FRAME_HEADER.unpack(body[:4])[0], bytes(body[4:]).decode("ascii", "replace"))
    return ("malformed", bytes(payload))


class EventDecoder:
    """Turns a byte stream from the agent into events, however the bytes are split. Whole
    frames are decoded straight out of the data they arrived in; only a frame split across two
    reads is gathered in a buffer."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, data: bytes | memoryview) -> list[Event]:
        """The events completed by ``data``; nothing refers to ``data`` afterwards. Output
        frames of one stream that follow each other in ``data`` come out as one event (up to
        ``OUTPUT_CHUNK`` bytes, as one frame): output is a byte stream, whose chunks mean
        nothing, and a workload writing a line at a time, which the agent relays as it comes,
        would otherwise cost an owner that lags behind an event per line."""
        events: list[Event] = []
        view = memoryview(data)
        if self._partial:
            view = self._complete_partial(view, events)
        position, size = 0, len(view)
        stream, merged = 0, 0
        pieces: list[memoryview] = []  # the run of output frames not yet made an event
        while size - position >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(view, position)
            start = position + FRAME_HEADER.size
            end = start + length
            if end > size:
                break
            kind = view[start] if length else 0
            if pieces and (kind != stream or merged + length - 1 > OUTPUT_CHUNK):
                events.append((_DATA_EVENTS[stream], b"".join(pieces)))
                pieces, merged = [], 0
            if kind in _DATA_EVENTS:
                stream = kind
                pieces.append(view[start + 1 : end])
                merged += length - 1
            else:
                events.append(decode_event(view[start:end]))
            position = end
        if pieces:
            events.append((_DATA_EVENTS[stream], b"".join(pieces)))
        self._partial += view[position:]
        return events

    def _complete_partial(self, view: memoryview, events: list[Event]) -> memoryview:
        """Moves bytes from ``view`` into the split frame until it is whole (then decodes it);
        returns what is left of ``view``."""
        if len(self._partial) < FRAME_HEADER.size:
            taken = FRAME_HEADER.size - len(self._partial)
            self._partial += view[:taken]
            view = view[taken:]
            if len(self._partial) < FRAME_HEADER.size:
                return view
        (length,) = FRAME_HEADER.unpack_from(self._partial)
        taken = FRAME_HEADER.size + length - len(self._partial)
        self._partial += view[:taken]
        if len(self._partial) == FRAME_HEADER.size + length:
            events.append(decode_event(bytes(self._partial[FRAME_HEADER.size :])))
            self._partial.clear()
        return view[taken:]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still held."""
        return len(self._partial)
