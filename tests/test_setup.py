"""``linx_otp.Setup`` (SPEC §6): one checkpoint set-up for the daemon, ``linx-otp spawn`` and
``P.spawn(setup=)``; and the checkpoint package's old import paths."""

from __future__ import annotations

import importlib

import pytest

CHECKPOINT_MODULES = ("netlink", "user", "cgroup", "mount", "namespaces", "seccomp", "profiles")


@pytest.mark.parametrize("name", CHECKPOINT_MODULES)
def test_the_old_import_path_is_the_same_module(name):
    old = importlib.import_module(f"linx_otp.{name}")
    new = importlib.import_module(f"linx_otp.checkpoint.{name}")
    assert old is new
    assert new.__name__ == f"linx_otp.checkpoint.{name}"
    from_import = getattr(importlib.import_module("linx_otp"), name)
    assert from_import is new
