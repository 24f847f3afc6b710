"""The old import path of ``linx_otp.checkpoint.user``, kept for code that imports it: the same module."""

import sys

from .checkpoint import user

sys.modules[__name__] = user
