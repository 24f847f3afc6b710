"""The code style is checked with the tests: ruff's lint rules and its formatter, and mypy's
types (the package ships ``py.typed``, so its types are a promise)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str | None:
    """A tool of the test extra: beside this interpreter (a virtualenv's bin/, which need not be
    on PATH), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    ruff = tool("ruff")
    assert ruff is not None, "ruff is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    """The package ships ``py.typed``: its types are a promise, checked with the tests."""
    mypy = tool("mypy")
    assert mypy is not None, "mypy is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, timeout=120)  # [tool.mypy] files
    assert result.returncode == 0, result.stdout + result.stderr
