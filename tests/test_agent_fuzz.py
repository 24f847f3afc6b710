"""Fuzzing a real agent: random, truncated, oversized and mutated frames must only ever lead to
a clean exit (codes 0..4, never a signal, never a hang) with well-formed events.

The workload in every request is /bin/true, so a mutation that happens to be valid is harmless."""

from __future__ import annotations

import random
import struct

from agent_driver import request, run_agent

from linx_otp import protocol

RUNS = 1200
SEED = 20261129
TERMINAL = ("exited", "signaled", "aborted", "error")


def random_bytes(rng: random.Random, most: int) -> bytes:
    return rng.randbytes(rng.randint(0, most))


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(data))
        data[position] = rng.randrange(256)
    return bytes(data)


def random_command(rng: random.Random) -> bytes:
    kind = rng.choice(["valid", "random", "oversized", "empty", "truncated"])
    if kind == "valid":
        return rng.choice(
            [
                protocol.encode_command(protocol.CMD_ABORT),
                protocol.encode_signal(rng.randint(1, 64)),
                protocol.encode_winsize(1, 2, 3, 4),
                protocol.encode_command(protocol.CMD_PTY_IN, random_bytes(rng, 50)),
                protocol.encode_command(protocol.CMD_STOP),
            ]
        )
    if kind == "random":
        return protocol.frame(bytes([rng.randrange(256)]) + random_bytes(rng, 20))
    if kind == "oversized":
        return struct.pack(">I", rng.randint(protocol.COMMAND_MAX + 1, 2**32 - 1)) + random_bytes(rng, 20)
    if kind == "empty":
        return struct.pack(">I", 0)
    return struct.pack(">I", rng.randint(5, 100)) + random_bytes(rng, 4)


def fuzz_case(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    valid = request(namespaces=frozenset(rng.sample(["uts", "ipc"], rng.randint(0, 2))))
    if kind == 0:
        return random_bytes(rng, 300)
    if kind == 1:
        return protocol.frame(random_bytes(rng, 300))
    if kind == 2:
        return valid[: rng.randrange(len(valid))]
    if kind == 3:
        return struct.pack(">I", rng.randint(protocol.REQUEST_MAX + 1, 2**32 - 1)) + random_bytes(rng, 50)
    if kind == 4:
        return mutate(rng, valid)
    return valid + b"".join(random_command(rng) for _ in range(rng.randint(1, 3)))


def test_a_thousand_hostile_streams_only_ever_exit_cleanly():
    rng = random.Random(SEED)
    outcomes: dict[int, int] = {}
    for run_number in range(RUNS):
        data = fuzz_case(rng)
        run = run_agent(data, timeout=5)
        context = f"run {run_number} (seed {SEED}): {data[:80]!r}"
        assert not run.killed_by_signal, context
        assert run.exit_status in (0, 1, 2, 3, 4), context
        assert all(event[0] != "malformed" for event in run.events), context
        terminals = [event for event in run.events if event[0] in TERMINAL]
        assert len(terminals) <= 1 and (not terminals or run.events[-1] == terminals[0]), context
        outcomes[run.exit_status] = outcomes.get(run.exit_status, 0) + 1
    assert sum(outcomes.values()) == RUNS
    assert len(outcomes) >= 3, f"the fuzz cases should reach several exits: {outcomes}"
