"""systemd's notify protocol (``Type=notify``), written with the standard library: one
datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by ``NOTIFY_SOCKET`` (a path,
or an abstract name when it starts with ``@``).

``Notifier.from_environment`` reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
and removes them from the environment (as ``sd_notify``'s ``unset_environment``), so the
workloads never inherit them and never talk to systemd in the daemon's name. The daemon's
loop calls ``send`` (``READY=1``, ``STATUS=…``, ``RELOADING=1``, ``STOPPING=1``) and pings the
watchdog from that same loop, so a hung loop stops the pings and systemd notices. A failing
send is reported once through ``report``; this module never raises an I/O error and never
blocks (the socket is non-blocking).

>>> Notifier.from_environment({}, report=print) is None  # not under systemd: nothing to do
True
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, MutableMapping

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notify datagrams to one socket; ``watchdog_seconds`` is how often to ping (None:
    no watchdog asked for)."""

    def __init__(self, address: str, watchdog_seconds: float | None, report: Callable[[str, str, str], None]) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = watchdog_seconds
        self.report = report
        self.failing = False
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @classmethod
    def from_environment(
        cls, environment: MutableMapping[str, str], report: Callable[[str, str, str], None]
    ) -> Notifier | None:
        values = {name: environment.pop(name, None) for name in NOTIFY_VARIABLES}
        address = values["NOTIFY_SOCKET"]
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None
        watchdog = None
        usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6 / 2  # ping every half of the interval, as sd_watchdog_enabled advises
        return cls(address, watchdog, report)

    def send(self, *fields: str) -> None:
        """One datagram, e.g. ``send("READY=1", "STATUS=3 of 3 workloads running")``."""
        message = "\n".join(field.replace("\n", " ") for field in fields).encode()
        try:
            self.socket.sendto(message, self.address)
        except OSError as error:
            if not self.failing:
                self.failing = True
                self.report("daemon", "notify_failed", f"{self.address!r}: {error.strerror or error}")
            return
        self.failing = False

    def close(self) -> None:
        self.socket.close()
