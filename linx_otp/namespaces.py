"""The old import path of ``linx_otp.checkpoint.namespaces``, kept for code that imports it: the same module."""

import sys

from .checkpoint import namespaces

sys.modules[__name__] = namespaces
