"""Network setup at the checkpoint, on pyroute2 (SPEC §3): open rtnetlink in the host's netns
or in a workload's, create links (a veth's peer directly inside the workload's netns: that
costs under 1 ms where moving a link costs about 33 ms), addresses and routes.

Every handle is a pyroute2 ``IPRoute``, so anything pyroute2 can do stays available; the
functions here only name the common steps and turn netlink errors into ``LinxOSError`` with
the operation and errno. Opening a workload's netns never forks: a throwaway thread joins the
netns and creates the socket there, and the socket stays bound to that netns for its life.

>>> host = open()
>>> index_of(host, "lo")
1
>>> host.close()
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import namespaces
from .errors import LinxOSError, LinxValueError

MACVLAN_MODES = ("private", "vepa", "bridge", "passthru", "source")


def open(pid: int | None = None) -> IPRoute:
    """rtnetlink in the host's netns, or in the netns of the process ``pid`` (a host pid)."""
    if pid is None:
        return IPRoute()

    def netlink_socket() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE).detach()

    return IPRoute(fileno=namespaces.run_in(pid, ["net"], netlink_socket))


def _call(operation: str, action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except NetlinkError as error:
        raise LinxOSError(operation, error.code) from error


def index_of(handle: IPRoute, name: str) -> int:
    """The ifindex of link ``name``; ``LinxOSError(("link_lookup", "enodev"))`` if none."""
    found = handle.link_lookup(ifname=name)
    if not found:
        raise LinxOSError("link_lookup", 19, name)  # ENODEV
    return found[0]


def _peer_namespace(pid: int | None) -> dict[str, Any]:
    return {} if pid is None else {"net_ns_pid": pid}


def create_veth(handle: IPRoute, name: str, peer: str, peer_pid: int | None = None) -> None:
    """A veth pair: ``name`` in ``handle``'s netns, ``peer`` created directly inside the netns
    of ``peer_pid`` (or beside ``name`` when None)."""
    _call("create_veth", handle.link, "add", ifname=name, kind="veth", peer={"ifname": peer, **_peer_namespace(peer_pid)})


def create_macvlan(handle: IPRoute, name: str, parent: str, mode: str = "bridge", pid: int | None = None) -> None:
    """A macvlan on ``parent``; with ``pid`` it is created directly inside that netns."""
    if mode not in MACVLAN_MODES:
        raise LinxValueError(("bad_macvlan_mode", mode), f"mode must be one of {MACVLAN_MODES}, not {mode!r}")
    _call(
        "create_macvlan",
        handle.link,
        "add",
        ifname=name,
        kind="macvlan",
        link=index_of(handle, parent),
        macvlan_mode=mode,
        **_peer_namespace(pid),
    )


def move_to_netns(handle: IPRoute, name: str, pid: int) -> None:
    """Move link ``name`` into the netns of the process ``pid``."""
    _call("move_to_netns", handle.link, "set", index=index_of(handle, name), net_ns_pid=pid)


def set_up(handle: IPRoute, name: str) -> None:
    """Bring link ``name`` up."""
    _call("set_up", handle.link, "set", index=index_of(handle, name), state="up")


def add_address(handle: IPRoute, name: str, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` to link ``name``."""
    _call("add_address", handle.addr, "add", index=index_of(handle, name), address=address, prefixlen=prefixlen)


def add_default_route(handle: IPRoute, gateway: str) -> None:
    """A default route via ``gateway``."""
    _call("add_default_route", handle.route, "add", dst="default", gateway=gateway)


def delete_link(handle: IPRoute, name: str) -> None:
    """Delete link ``name`` (a veth takes its peer with it)."""
    _call("delete_link", handle.link, "del", index=index_of(handle, name))


def link_names(handle: IPRoute) -> list[str]:
    """The names of every link in ``handle``'s netns."""
    return [link.get_attr("IFLA_IFNAME") for link in handle.get_links()]


__all__ = [
    "add_address",
    "add_default_route",
    "create_macvlan",
    "create_veth",
    "delete_link",
    "index_of",
    "link_names",
    "move_to_netns",
    "open",
    "set_up",
]
