"""Tree files: the old import path of ``linx_otp.daemon.tree``, kept for users who import it."""

from .daemon.tree import *  # noqa: F403
from .daemon.tree import Group, Setup, Tree, TreeError, Workload, parse_file, parse_text  # noqa: F401
