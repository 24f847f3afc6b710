"""The old import path of ``linx_otp.checkpoint.netlink``, kept for code that imports it: the same module."""

import sys

from .checkpoint import netlink

sys.modules[__name__] = netlink
