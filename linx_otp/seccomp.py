"""The old import path of ``linx_otp.checkpoint.seccomp``, kept for code that imports it: the same module."""

import sys

from .checkpoint import seccomp

sys.modules[__name__] = seccomp
