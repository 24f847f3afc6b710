"""The Python codec and the C agent agree: on the numbers, on every field, and on what is
malformed."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from agent_driver import request, run_agent

from linx_otp import namespaces, options, protocol
from linx_otp.agent import agent_path

NATIVE = Path(__file__).resolve().parent.parent / "native"


def c_defines() -> dict[str, int]:
    defines = {}
    for name, value in re.findall(r"^#define (\w+) (.+)$", (NATIVE / "protocol.h").read_text(), re.M):
        if name != "LINX_PROTOCOL_H":
            defines[name] = eval(value, {})  # only integer arithmetic lives there
    return defines


def test_every_number_in_protocol_h_is_the_same_in_python():
    defines = c_defines()
    assert len(defines) > 40
    for name, value in defines.items():
        if name in ("NS_ALL", "FRAME_HEADER_SIZE"):
            continue
        assert getattr(protocol, name) == value, name
    assert protocol.FRAME_HEADER.size == defines["FRAME_HEADER_SIZE"]
    assert sum(protocol.NAMESPACE_BITS.values()) == defines["NS_ALL"]


def c_namespace_kinds() -> list[tuple[str, str, str, str]]:
    """The agent's table of namespace kinds: (NS_* bit, name, /proc name, CLONE_NEW* flag) rows."""
    source = "".join(path.read_text() for path in sorted(NATIVE.glob("*.[ch]")))
    table = re.search(r"\bnamespace_kinds\[\] = \{(.*?)\n\};", source, re.S)
    assert table, "native/ no longer has a namespace_kinds[] table: update this test"
    code = re.sub(r"/\*.*?\*/", "", table.group(1), flags=re.S)
    rows = re.findall(r'\{\s*(NS_\w+),\s*"(\w+)",\s*"(\w+)",\s*(CLONE_NEW\w+)\s*\}', code)
    assert len(rows) == code.count("{"), f"a row of namespace_kinds[] this test cannot read: {code}"
    return rows


def clone_flag_values(names: list[str], directory: Path) -> dict[str, int]:
    """The values the agent's compiler sees for ``CLONE_NEW*`` (from the same <sched.h>)."""
    source = directory / "flags.c"
    source.write_text(
        "#define _GNU_SOURCE\n#include <sched.h>\n#include <stdio.h>\nint main(void) {\n"
        + "".join(f'    printf("%s %lu\\n", "{name}", (unsigned long){name});\n' for name in names)
        + "    return 0;\n}\n"
    )
    compiler = os.environ.get("CC", "cc")
    subprocess.run([compiler, "-o", str(directory / "flags"), str(source)], check=True, timeout=60)
    printed = subprocess.run([str(directory / "flags")], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in printed.splitlines())}


def test_the_namespace_table_is_the_same_in_python_and_in_the_agent(tmp_path):
    rows = c_namespace_kinds()
    defines = c_defines()
    flags = clone_flag_values([flag for *_, flag in rows], tmp_path)
    in_c = [protocol.NamespaceKind(name, defines[bit], proc_name, flags[flag]) for bit, name, proc_name, flag in rows]
    assert list(protocol.NAMESPACE_KINDS) == in_c  # every name, bit, /proc name and flag, in join order
    assert sum(kind.bit for kind in protocol.NAMESPACE_KINDS) == defines["NS_ALL"]
    assert options.NAMESPACES == tuple(kind.name for kind in protocol.NAMESPACE_KINDS)
    assert set(namespaces.THREAD_JOINABLE.values()) <= set(protocol.NAMESPACE_KINDS)


def test_every_field_command_and_event_is_documented_with_its_number():
    documented = (NATIVE / "PROTOCOL.md").read_text()
    for name, value in c_defines().items():
        kind, _, short = name.partition("_")
        if kind in ("CMD", "EVT", "FIELD"):
            assert f"| `0x{value:02x}` | `{short.lower()}` |" in documented, name


def test_every_error_stage_the_c_side_names_is_documented():
    documented = (NATIVE / "PROTOCOL.md").read_text()
    source = "".join(path.read_text() for path in NATIVE.glob("*.c"))
    stages = set(re.findall(r'fail(?:_with_child)?\([^;]*?"([a-z_]+)"', source))
    assert {"malformed_request", "execve", "connect_unix", "command_too_big"} <= stages
    for stage in stages:
        assert f"`{stage}`" in documented, stage
    for prefix in ("open_ns", "setns"):
        assert f"`{prefix}_<ns>`" in documented


def test_event_decoder_handles_any_split():
    stream = b"".join(
        protocol.frame(payload)
        for payload in (
            bytes([protocol.EVT_SPAWNED]) + struct.pack(">I", 41234),
            bytes([protocol.EVT_READY]) + struct.pack(">I", 1),
            bytes([protocol.EVT_RUNNING]),
            bytes([protocol.EVT_PTY_OUT]) + b"hi\r\n",
            bytes([protocol.EVT_ERROR]) + struct.pack(">I", 2) + b"execve",
        )
    )
    expected = [("spawned", 41234), ("ready", 1), ("running",), ("pty_out", b"hi\r\n"), ("error", 2, "execve")]
    for cut in range(len(stream) + 1):
        decoder = protocol.EventDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected
    one_at_a_time = protocol.EventDecoder()
    assert [e for byte in stream for e in one_at_a_time.feed(bytes([byte]))] == expected


def test_the_decoder_makes_one_event_of_one_stream_s_frames_read_together():
    """Output is a byte stream, so frames of one stream that arrive in one read are one event
    (at most OUTPUT_CHUNK bytes, as one frame), in order; another stream or any other event
    ends the run."""

    def output(kind: int, data: bytes) -> bytes:
        return protocol.frame(bytes([kind]) + data)

    dropped = protocol.frame(bytes([protocol.EVT_OUTPUT_DROPPED]) + struct.pack(">BQ", 1, 5))
    stdout, stderr = protocol.EVT_STDOUT, protocol.EVT_STDERR
    stream = (
        output(stdout, b"a") + output(stdout, b"b") + output(stderr, b"c") + output(stderr, b"d")
        + output(stdout, b"e") + dropped + output(stdout, b"f") + output(protocol.EVT_PTY_OUT, b"g")
    )  # fmt: skip
    assert protocol.EventDecoder().feed(stream) == [
        ("stdout", b"ab"),
        ("stderr", b"cd"),
        ("stdout", b"e"),
        ("output_dropped", "stdout", 5),
        ("stdout", b"f"),
        ("pty_out", b"g"),
    ]
    half = protocol.OUTPUT_CHUNK // 2
    halves = b"".join(output(stdout, bytes([index]) * half) for index in range(3))
    events = protocol.EventDecoder().feed(halves)
    assert events == [("stdout", bytes([0]) * half + bytes([1]) * half), ("stdout", bytes([2]) * half)]


def test_decoder_reports_malformed_frames_instead_of_raising():
    decoder = protocol.EventDecoder()
    assert decoder.feed(protocol.frame(bytes([protocol.EVT_EXITED, 1]))) == [
        ("malformed", bytes([protocol.EVT_EXITED, 1]))
    ]
    assert decoder.feed(protocol.frame(b"\x42")) == [("malformed", b"\x42")]


def test_pty_input_is_chunked_under_the_command_ceiling():
    frames = list(protocol.encode_pty_input(b"x" * (3 * protocol.PTY_IN_CHUNK + 5)))
    assert len(frames) == 4
    assert all(len(f) - 4 <= protocol.COMMAND_MAX for f in frames)


def test_the_agent_accepts_a_valid_request_and_runs_it_on_proceed():
    run = run_agent(request() + protocol.encode_command(protocol.CMD_PROCEED), close_after=False)
    assert [e[0] for e in run.events] == ["spawned", "ready", "running", "exited"]
    assert run.events[-1] == ("exited", 0) and run.exit_status == 0


def test_the_agent_skips_unknown_fields():
    frame = request()
    body = frame[4:] + bytes([0x7F]) + struct.pack(">I", 3) + b"new"
    run = run_agent(protocol.frame(body) + protocol.encode_command(protocol.CMD_PROCEED), close_after=False)
    assert run.events[-1] == ("exited", 0)


def test_hangup_at_the_checkpoint_discards_the_child():
    run = run_agent(request())
    assert [e[0] for e in run.events] == ["spawned", "ready"]
    assert run.exit_status == 1


def raw_request(*fields: tuple[int, bytes]) -> bytes:
    body = bytes([protocol.MSG_REQUEST]) + b"".join(bytes([tag]) + struct.pack(">I", len(v)) + v for tag, v in fields)
    return protocol.frame(body)


MODE = (protocol.FIELD_MODE, b"\x00")
ARGV = (protocol.FIELD_ARGV, b"/bin/true\0")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(raw_request(MODE), id="no argv"),
        pytest.param(raw_request(ARGV), id="no mode"),
        pytest.param(raw_request((protocol.FIELD_MODE, b"\x02"), ARGV), id="bad mode"),
        pytest.param(raw_request((protocol.FIELD_MODE, b"\x01"), ARGV), id="enter without target"),
        pytest.param(raw_request(MODE, (protocol.FIELD_ARGV, b"/bin/true")), id="string without NUL"),
        pytest.param(raw_request(MODE, (protocol.FIELD_ARGV, b"/bin\0/true\0")), id="string with inner NUL"),
        pytest.param(
            raw_request(MODE, ARGV, (protocol.FIELD_NAMESPACES, struct.pack(">I", 256))), id="unknown namespace bit"
        ),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_NAMESPACES, b"\x01")), id="short namespaces"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_STDIO, b"\x03\x00")), id="stdio fd 3"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_STDIO, b"\x01\x09")), id="stdio kind 9"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_STDIO, b"\x01\x02")), id="connect_unix without path"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_STDIO, b"\x00\x03")), id="capture of stdin"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_STDIO, b"\x01\x03x")), id="capture with a path"),
        pytest.param(
            raw_request(MODE, ARGV, (protocol.FIELD_ORPHAN_POLICY, b"\x00" + struct.pack(">I", 2**31))),
            id="grace too long",
        ),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_PTY, b"x")), id="pty with a value"),
        pytest.param(
            raw_request(MODE, ARGV, (protocol.FIELD_OUTPUT_WINDOW, struct.pack(">I", protocol.OUTPUT_WINDOW_MIN - 1))),
            id="window too small",
        ),
        pytest.param(
            raw_request(MODE, ARGV, (protocol.FIELD_OUTPUT_WINDOW, struct.pack(">I", protocol.OUTPUT_WINDOW_MAX + 1))),
            id="window too large",
        ),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_OUTPUT_WINDOW, b"\x00\x10\x00")), id="short window"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_OUTPUT_MODE, b"\x02")), id="output mode 2"),
        pytest.param(raw_request(MODE, ARGV, (protocol.FIELD_OUTPUT_MODE, b"")), id="empty output mode"),
        pytest.param(protocol.frame(bytes([protocol.MSG_REQUEST, protocol.FIELD_MODE, 0, 0])), id="field overruns"),
        pytest.param(protocol.frame(bytes([protocol.CMD_PROCEED])), id="not a request"),
        pytest.param(struct.pack(">I", 0), id="empty frame"),
        pytest.param(request()[:-3], id="truncated"),
    ],
)
def test_malformed_requests_are_refused_cleanly(frame):
    run = run_agent(frame)
    assert run.events == [("error", 22, "malformed_request")]
    assert run.exit_status == 2


def test_an_oversized_request_is_request_too_big():
    run = run_agent(struct.pack(">I", protocol.REQUEST_MAX + 1) + b"\x01" * 64)
    assert run.events == [("error", 90, "request_too_big")] and run.exit_status == 1


def test_eof_before_any_request_exits_silently():
    run = run_agent(b"")
    assert run.events == [] and run.exit_status == 1


@pytest.mark.parametrize(
    "command, stage, errno",
    [
        (protocol.encode_command(0x42), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_PROCEED, b"x"), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_SIGNAL, b"\x00"), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_SIGNAL, b"\x41"), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_WINSIZE, b"\x00" * 7), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_CREDIT, b"\x00" * 3), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_OUTPUT_MODE, b"\x02"), "malformed_command", 71),
        (protocol.encode_command(protocol.CMD_OUTPUT_MODE, b""), "malformed_command", 71),
        (struct.pack(">I", 0), "malformed_command", 71),
        (struct.pack(">I", protocol.COMMAND_MAX + 1) + b"x" * 100, "command_too_big", 90),
    ],
)
def test_malformed_commands_at_the_checkpoint_discard_the_child(command, stage, errno):
    run = run_agent(request() + command)
    assert run.events[:2] == [("spawned", run.events[0][1]), ("ready", run.events[1][1])]
    assert run.events[2:] == [("error", errno, stage)] and run.exit_status == 1


def test_a_well_formed_command_out_of_phase_is_ignored():
    run = run_agent(
        request()
        + protocol.encode_signal(9)
        + protocol.encode_command(protocol.CMD_PTY_IN, b"x")
        + protocol.encode_command(protocol.CMD_PROCEED),
        close_after=False,
    )
    assert run.events[-1] == ("exited", 0)


def test_flow_control_commands_are_accepted_in_every_phase():
    run = run_agent(
        request()
        + protocol.encode_credit(4096)
        + protocol.encode_output_mode(protocol.OUTPUT_DROP)
        + protocol.encode_command(protocol.CMD_PROCEED),
        close_after=False,
    )
    assert run.events[-1] == ("exited", 0)


def test_the_request_carries_the_window_and_the_mode():
    encoded = request(output_window=65536, output_mode=protocol.OUTPUT_DROP)
    assert bytes([protocol.FIELD_OUTPUT_WINDOW]) + struct.pack(">II", 4, 65536) in encoded
    assert bytes([protocol.FIELD_OUTPUT_MODE]) + struct.pack(">IB", 1, protocol.OUTPUT_DROP) in encoded


def env_fields(encoded: bytes) -> list[bytes]:
    """The env entries a request frame carries, in order."""
    entries, at = [], protocol.FRAME_HEADER.size + 1  # past the frame's length and its type
    while at < len(encoded):
        tag, size = protocol.FIELD_HEADER.unpack_from(encoded, at)
        if tag == protocol.FIELD_ENV:
            entries.append(encoded[at + 5 : at + 5 + size - 1])
        at += 5 + size
    return entries


def test_each_request_carries_its_own_environment_and_an_inherited_one_follows_changes(monkeypatch):
    """The inherited environment's encoding is reused while it is unchanged; a request with
    another environment, or after the process's environment changed, carries its own."""

    def encoded_env(env=None) -> list[bytes]:
        plan = options.plan_session(mode=protocol.MODE_SPAWN, target=None, argv=["/bin/true"], env=env)
        return env_fields(protocol.encode_request(plan.request))

    inherited = encoded_env()
    assert inherited == [key + b"=" + value for key, value in os.environb.items()]
    assert encoded_env({"ONLY": "this"}) == [b"ONLY=this"]
    assert encoded_env() == inherited
    monkeypatch.setenv("LINX_OTP_PROTOCOL_TEST", "changed")
    assert encoded_env() == inherited + [b"LINX_OTP_PROTOCOL_TEST=changed"]
    assert encoded_env([]) == []


CAPTURE_STDOUT = (protocol.StdioDirective(), protocol.StdioDirective(protocol.STDIO_CAPTURE), protocol.StdioDirective())


def test_drop_mode_sends_the_window_and_reports_the_rest_exactly():
    size = 1_000_000
    run = run_agent(
        request(
            argv=(b"/usr/bin/head", b"-c", str(size).encode(), b"/dev/zero"),
            stdio=CAPTURE_STDOUT,
            output_window=protocol.OUTPUT_WINDOW_MIN,
            output_mode=protocol.OUTPUT_DROP,
        )
        + protocol.encode_command(protocol.CMD_PROCEED),
        close_after=False,
    )
    delivered = sum(len(event[1]) for event in run.events if event[0] == "stdout")
    dropped = [event for event in run.events if event[0] == "output_dropped"]
    assert delivered == protocol.OUTPUT_WINDOW_MIN
    assert dropped == [("output_dropped", "stdout", size - delivered)]
    assert run.events[-2:] == [dropped[0], ("exited", 0)]


def test_block_mode_never_has_more_than_the_window_in_flight():
    """A driver that gives credit back for each chunk only after it has seen it: what it has
    received minus what it has credited never exceeds the window, and every byte arrives."""
    size, window = 3_000_000, protocol.OUTPUT_WINDOW_MIN
    ours, theirs = socket.socketpair()
    pid = os.posix_spawn(agent_path(), ["linx-agent"], {}, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)])
    theirs.close()
    ours.settimeout(10)
    frame = request(
        argv=(b"/usr/bin/head", b"-c", str(size).encode(), b"/dev/zero"), stdio=CAPTURE_STDOUT, output_window=window
    )
    ours.sendall(frame + protocol.encode_command(protocol.CMD_PROCEED))
    decoder = protocol.EventDecoder()
    received = credited = 0
    outcome = None
    try:
        while outcome is None:
            for event in decoder.feed(ours.recv(65536)):
                if event[0] == "stdout":
                    received += len(event[1])
                    assert received - credited <= window
                elif event[0] in ("exited", "signaled", "error"):
                    outcome = event
            if outcome is None and received > credited:
                ours.sendall(protocol.encode_credit(received - credited))
                credited = received
    finally:
        ours.close()
        os.waitpid(pid, 0)
    assert outcome == ("exited", 0) and received == size


# -- hardening fields (docs/hardening.md; PROTOCOL.md's second request table) ---------------------------


def test_every_hardening_stage_the_child_names_is_documented():
    documented = (NATIVE / "PROTOCOL.md").read_text()
    stages = set(re.findall(r'refuse\([^;]*?"([a-z_]+)"', (NATIVE / "harden.c").read_text()))
    assert stages == {"setgroups", "setgid", "setuid", "rlimit", "capabilities", "seccomp", "parent_death_signal"}
    for stage in stages:
        assert f"`{stage}`" in documented, stage


def test_the_codec_lays_out_hardening_fields_as_documented():
    hardening = protocol.Hardening(
        user=1000,
        group=1001,
        extra_groups=(5, 6),
        rlimits=((7, 16, protocol.RLIM_INFINITY_WIRE),),
        umask=0o27,
        capabilities=1 << 10,
        seccomp=b"\x06\x00\x00\x00\x00\x00\xff\x7f",
    )
    body = protocol.encode_request(protocol.Request(mode=0, argv=(b"/bin/true",), env=(), hardening=hardening))[5:]
    fields = {}
    while body:
        tag, size = struct.unpack(">BI", body[:5])
        fields[tag] = body[5 : 5 + size]
        body = body[5 + size :]
    assert fields[protocol.FIELD_USER] == struct.pack(">I", 1000)
    assert fields[protocol.FIELD_GROUP] == struct.pack(">I", 1001)
    assert fields[protocol.FIELD_EXTRA_GROUPS] == struct.pack(">II", 5, 6)
    assert fields[protocol.FIELD_RLIMIT] == bytes([7]) + struct.pack(">QQ", 16, 2**64 - 1)
    assert fields[protocol.FIELD_UMASK] == struct.pack(">I", 0o27)
    assert fields[protocol.FIELD_CAPABILITIES] == struct.pack(">Q", 1024)
    assert fields[protocol.FIELD_SECCOMP] == hardening.seccomp


ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
"""One BPF instruction: return SECCOMP_RET_ALLOW."""


def test_the_agent_applies_every_hardening_field_it_is_sent():
    hardening = protocol.Hardening(
        user=65534,
        group=65534,
        extra_groups=(),
        rlimits=((7, 64, 64),),
        umask=0o77,
        capabilities=0,
        seccomp=ALLOW_ALL,
    )
    frame = request(hardening=hardening, no_new_privs=True)
    run = run_agent(frame + protocol.encode_command(protocol.CMD_PROCEED), close_after=False)
    assert run.events[-1] == ("exited", 0), run.events


@pytest.mark.parametrize(
    "field",
    [
        pytest.param((protocol.FIELD_USER, struct.pack(">I", 2**32 - 1)), id="user -1"),
        pytest.param((protocol.FIELD_USER, b"\x00\x01"), id="short user"),
        pytest.param((protocol.FIELD_GROUP, struct.pack(">Q", 1)), id="long group"),
        pytest.param((protocol.FIELD_EXTRA_GROUPS, b"\x00\x00\x01"), id="extra_groups not u32s"),
        pytest.param((protocol.FIELD_EXTRA_GROUPS, struct.pack(">I", 2**32 - 1)), id="extra group -1"),
        pytest.param((protocol.FIELD_UMASK, struct.pack(">I", 0o1000)), id="umask too big"),
        pytest.param((protocol.FIELD_RLIMIT, bytes([16]) + struct.pack(">QQ", 1, 1)), id="rlimit resource 16"),
        pytest.param((protocol.FIELD_RLIMIT, bytes([7]) + struct.pack(">QQ", 2, 1)), id="rlimit soft over hard"),
        pytest.param((protocol.FIELD_RLIMIT, bytes([7]) + struct.pack(">Q", 1)), id="rlimit short"),
        pytest.param((protocol.FIELD_CAPABILITIES, b"\x00" * 4), id="capabilities short"),
        pytest.param((protocol.FIELD_SECCOMP, b""), id="seccomp empty"),
        pytest.param((protocol.FIELD_SECCOMP, ALLOW_ALL[:7]), id="seccomp not whole instructions"),
        pytest.param((protocol.FIELD_SECCOMP, ALLOW_ALL * 4097), id="seccomp too long"),
    ],
)
def test_malformed_hardening_fields_are_refused(field):
    run = run_agent(raw_request(MODE, ARGV, field))
    assert run.events == [("error", 22, "malformed_request")]
    assert run.exit_status == 2


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([(protocol.FIELD_RLIMIT, bytes([7]) + struct.pack(">QQ", 1, 1))] * 2, id="rlimit twice"),
        pytest.param([(protocol.FIELD_SECCOMP, ALLOW_ALL)] * 2, id="seccomp twice"),
        pytest.param([(protocol.FIELD_EXTRA_GROUPS, b"")] * 2, id="extra_groups twice"),
    ],
)
def test_repeated_hardening_fields_are_refused(fields):
    run = run_agent(raw_request(MODE, ARGV, *fields))
    assert run.events == [("error", 22, "malformed_request")]
