"""Every example script runs to completion (they are the seed's examples, as users will run them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import IS_ROOT

EXAMPLES_DIRECTORY = Path(__file__).resolve().parent.parent / "examples"
EXAMPLES = sorted(EXAMPLES_DIRECTORY.rglob("*.py"))
NEEDS_ROOT = {"namespaces.py", "enter.py"}
NEEDS_A_TERMINAL = {"interactive_shell.py", "borrow_and_return.py"}  # run in tmux by test_tty_tmux.py
EXAMPLES = [path for path in EXAMPLES if path.name not in NEEDS_A_TERMINAL]


@pytest.mark.parametrize("script", EXAMPLES, ids=[str(path.relative_to(EXAMPLES_DIRECTORY)) for path in EXAMPLES])
def test_example_runs(script):
    if script.name in NEEDS_ROOT and not IS_ROOT:
        pytest.skip("creates namespaces: needs root")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "an example shows what it does"
