"""The old import path of ``linx_otp.checkpoint.profiles``, kept for code that imports it: the same module."""

import sys

from .checkpoint import profiles

sys.modules[__name__] = profiles
