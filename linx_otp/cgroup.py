"""The old import path of ``linx_otp.checkpoint.cgroup``, kept for code that imports it: the same module."""

import sys

from .checkpoint import cgroup

sys.modules[__name__] = cgroup
