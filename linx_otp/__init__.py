"""linx_otp: run Linux workloads in fresh namespaces under OTP-style supervision.

>>> import linx_otp
>>> from linx_otp import process as P
>>> session = P.spawn(argv=["/bin/echo", "hello"], stdio="devnull")
>>> linx_otp.receive(("linx_process", "ready"), timeout=5)[1]
'ready'
>>> P.proceed(session)
>>> P.wait(session)
('exited', 0)
>>> [event[1] for event in linx_otp.flush()]
['running', 'exited']
>>> session.stop()
True

Modules: ``process`` (sessions and their verbs), ``supervisor`` (OTP supervisors and trees),
``mailbox`` (where events land), ``flow`` (output windows and ``consumed``), ``actor`` (the actor base, monitors and child specs),
``errors``, ``checkpoint`` (configuring a parked child from the host: ``Setup``, ``netlink``,
``user``, ``cgroup``, ``mount``, ``seccomp``, ``profiles``). The agent protocol is
``native/PROTOCOL.md``.

``linx_otp.Setup`` (docs/hardening.md, "One checkpoint set-up") is ``linx_otp.checkpoint.setup.Setup``, imported on first use so
that ``import linx_otp`` does not load pyroute2.
"""

import logging
from typing import Any

from . import tty
from .actor import Actor, ChildSpec, demonitor, monitor, start_monitored
from .errors import LinxError, LinxValueError
from .flow import consumed
from .mailbox import Mailbox, flush, mailbox, receive
from .process import Info


def __getattr__(name: str) -> Any:
    if name == "Setup":
        from .checkpoint.setup import Setup

        return Setup
    raise AttributeError(f"module 'linx_otp' has no attribute {name!r}")


logging.getLogger(__name__).addHandler(logging.NullHandler())  # reports show once the app configures logging

__all__ = [
    "Actor",
    "ChildSpec",
    "consumed",
    "Info",
    "LinxError",
    "LinxValueError",
    "demonitor",
    "Mailbox",
    "flush",
    "mailbox",
    "monitor",
    "receive",
    "Setup",
    "start_monitored",
    "tty",
]
