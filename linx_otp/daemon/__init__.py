"""``linx-otp run``: a declared tree as a long-running daemon (README, "The linx-otp command").

``tree`` reads and checks tree files, ``instance`` owns a name and what it creates on the host,
``state`` is the tree's state as data, ``run`` the event loop, ``control`` the control socket,
``output`` the console and log writer.
"""

from .instance import Instance, check_instance_name, default_control_path
from .run import Daemon

__all__ = ["Daemon", "Instance", "check_instance_name", "default_control_path"]
