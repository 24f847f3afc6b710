"""Builds tests/probes/escape_probe.c: static and non-PIE, with the host's cc, into a directory
any user can read (the test user runs it too). The tests' session fixtures call it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "escape_probe.c"


def build_probe(directory: Path) -> Path:
    """The probe binary in ``directory``; skips the test when there is no C compiler."""
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.skip("building the static escape probe needs a C compiler (cc)")
    binary = directory / "escape_probe"
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-static", "-no-pie", "-o", str(binary), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    binary.chmod(0o755)
    return binary
