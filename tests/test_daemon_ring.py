"""The ring of each child's last output lines (``linx_otp/daemon/ring.py``): bounded by what its
lines cost, however short they are."""

from __future__ import annotations

import json

from linx_otp.daemon.ring import RING_BYTES, Rings

STAMP = "2026-11-29T23:00:00.000+00:00"


def test_a_chunk_of_empty_lines_bigger_than_the_ring_keeps_its_newest_within_the_capacity():
    rings = Rings()
    rings.add("yes", STAMP, "stdout", [""] * 262_144)  # one 256 KiB chunk of `yes ""`
    whole = rings.read("yes")
    kept = len(whole["lines"])
    assert 0 < kept < 262_144 and whole["next"] == 262_144
    assert [line["seq"] for line in whole["lines"][-2:]] == [262_143, 262_144]  # the newest, numbered as written
    assert len(json.dumps(whole)) < 3 * RING_BYTES  # the reply to `logs` stays about the ring's size
    assert rings.read("yes", after=0)["missed"] == 262_144 - kept


def test_many_batches_of_short_lines_hold_about_the_capacity():
    rings = Rings(capacity=64 << 10)
    for number in range(1000):
        rings.add("chatty", STAMP, "stdout", [str(number)] * 100)
    lines = rings.read("chatty")["lines"]
    assert 500 < len(lines) <= (64 << 10) // 57  # each short line counts what it costs in memory
    assert lines[-1] == {"seq": 100_000, "time": STAMP, "stream": "stdout", "text": "999"}
