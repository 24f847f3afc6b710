"""The old import path of ``linx_otp.checkpoint.mount``, kept for code that imports it: the same module."""

import sys

from .checkpoint import mount

sys.modules[__name__] = mount
