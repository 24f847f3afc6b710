"""Network setup at the checkpoint, on pyroute2 (README, "The checkpoint, composed"): open rtnetlink in the host's netns
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

import fcntl
import ipaddress
import socket
import struct
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import LinxOSError, LinxValueError
from . import namespaces

MACVLAN_MODES = ("private", "vepa", "bridge", "passthru", "source")
INTERFACE_NAME_MAX_BYTES = 15


def open(pid: int | None = None) -> IPRoute:
    """rtnetlink in the host's netns, or in the netns of the process ``pid`` (a host pid).
    Use the handle from the thread that opened it: pyroute2 wraps the socket anew in each
    thread that touches it, and two wrappers would both close the one fd."""
    if pid is None:
        return IPRoute()
    return IPRoute(fileno=_netns_socket(pid))


def _netns_socket(pid: int) -> int:
    """A NETLINK_ROUTE socket (SOCK_DGRAM, as pyroute2 requires) bound to ``pid``'s netns."""

    def netlink_socket() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE).detach()

    return namespaces.run_in(pid, ["net"], netlink_socket)


def _call(operation: str, action: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return action(*args, **kwargs)
    except NetlinkError as error:
        raise LinxOSError(operation, error.code) from error


def index_of(handle: IPRoute, name: str) -> int:
    """The ifindex of link ``name``; ``LinxOSError(("link_lookup", "enodev"))`` if none."""
    reply = _call("link_lookup", handle.link, "get", ifname=name)
    return reply[0]["index"]


def _peer_namespace(pid: int | None) -> dict[str, Any]:
    return {} if pid is None else {"net_ns_pid": pid}


def create_veth(handle: IPRoute, name: str, peer: str, peer_pid: int | None = None, *, up: bool = False) -> None:
    """A veth pair: ``name`` in ``handle``'s netns, ``peer`` created directly inside the netns
    of ``peer_pid`` (or beside ``name`` when None). ``up`` brings ``name`` (not the peer: the
    kernel takes no state for it here) up in the same request."""
    state = {"state": "up"} if up else {}
    _call(
        "create_veth",
        handle.link,
        "add",
        ifname=name,
        kind="veth",
        **state,
        peer={"ifname": peer, **_peer_namespace(peer_pid)},
    )


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
    _call("move_to_netns", handle.link, "set", ifname=name, net_ns_pid=pid)


def set_up(handle: IPRoute, name: str) -> None:
    """Bring link ``name`` up (one request: the kernel finds the link by name)."""
    _call("set_up", handle.link, "set", ifname=name, state="up")


def add_address(handle: IPRoute, name: str, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` to link ``name``."""
    _call("add_address", handle.addr, "add", index=index_of(handle, name), address=address, prefixlen=prefixlen)


def add_default_route(handle: IPRoute, gateway: str) -> None:
    """A default route via ``gateway``."""
    _call("add_default_route", handle.route, "add", dst="default", gateway=gateway)


def delete_link(handle: IPRoute, name: str, *, missing_ok: bool = False) -> None:
    """Delete link ``name`` (a veth takes its peer with it). ``missing_ok``: a link that is
    already gone (say, with its peer's network namespace) is not an error."""
    try:
        _call("delete_link", handle.link, "del", ifname=name)
    except LinxOSError as error:
        if not (missing_ok and error.errno == 19):  # ENODEV
            raise


def setup_veth(
    pid: int,
    *,
    host_name: str,
    address: str,
    prefixlen: int,
    peer_name: str = "eth0",
    gateway: str | None = None,
    host_address: str | None = None,
    host: IPRoute | None = None,
) -> None:
    """The usual checkpoint network in one call (IPv4): a veth ``host_name`` on the host, up,
    with ``host_address/prefixlen`` if given, whose peer ``peer_name`` is created directly in
    the netns of ``pid`` with ``address/prefixlen``; ``lo`` and the peer up; a default route
    via ``gateway`` if given. Inside the child's netns this uses the classic interface ioctls
    from one throwaway thread, several times cheaper than a netlink handle and four requests.

    For IPv6 or anything else, use ``open(pid)`` and the functions above."""
    check_interface_name(host_name)
    check_interface_name(peer_name)
    for value in (address, gateway, host_address):
        if value is not None:
            check_ipv4_address(value)
    check_ipv4_prefixlen(prefixlen)
    handle = open() if host is None else host
    try:
        create_veth(handle, host_name, peer_name, peer_pid=pid, up=True)
    finally:
        if host is None:
            handle.close()
    if host_address is not None:
        _configure_ipv4(host_name, host_address, prefixlen, None)

    namespaces.run_in(pid, ["net"], lambda: _configure_ipv4(peer_name, address, prefixlen, gateway, loopback=True))


def check_interface_name(name: Any) -> str:
    """A Linux interface name: 1 to 15 bytes, no '/', ':' or white space, not '.' or '..'.

    >>> check_interface_name("lxdemo0")
    'lxdemo0'
    """
    if (
        not isinstance(name, str)
        or not 1 <= len(name.encode()) <= INTERFACE_NAME_MAX_BYTES
        or name in (".", "..")
        or any(character in name for character in "/:")
        or any(character.isspace() for character in name)
    ):
        raise LinxValueError(
            ("bad_interface_name", name),
            f"an interface name is 1 to {INTERFACE_NAME_MAX_BYTES} bytes without '/', ':' or spaces, not {name!r}",
        )
    return name


def check_ipv4_address(address: Any) -> str:
    """An IPv4 address in dotted form (what a tree's veth takes).

    >>> check_ipv4_address("10.78.0.2")
    '10.78.0.2'
    """
    if isinstance(address, str):
        try:
            return str(ipaddress.IPv4Address(address))
        except ValueError:
            pass
    raise LinxValueError(("bad_ipv4_address", address), f"expected an IPv4 address like 10.0.0.2, not {address!r}")


def check_ipv4_prefixlen(prefixlen: Any) -> int:
    if not isinstance(prefixlen, int) or isinstance(prefixlen, bool) or not 0 <= prefixlen <= 32:
        raise LinxValueError(("bad_prefixlen", prefixlen), f"an IPv4 prefix length is an int 0..32, not {prefixlen!r}")
    return prefixlen


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCSIFNETMASK, _SIOCADDRT = 0x8913, 0x8914, 0x8916, 0x891C, 0x890B
_IFF_UP, _RTF_UP, _RTF_GATEWAY = 0x1, 0x1, 0x2
_RTENTRY = struct.Struct("@L16s16s16sHhLPhPLLH0L")  # struct rtentry, <linux/route.h>


def _configure_ipv4(name: str, address: str, prefixlen: int, gateway: str | None, loopback: bool = False) -> None:
    """In the calling thread's netns: ``lo`` up (if asked), ``address/prefixlen`` on ``name``,
    ``name`` up, and a default route via ``gateway``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        if loopback:
            _ioctl(
                control,
                "set_up",
                _SIOCSIFFLAGS,
                _interface_request("lo", struct.pack("=H", _flags(control, "lo") | _IFF_UP)),
            )
        netmask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF))
        _ioctl(control, "add_address", _SIOCSIFADDR, _interface_request(name, _sockaddr(address)))
        _ioctl(control, "add_address", _SIOCSIFNETMASK, _interface_request(name, _sockaddr(netmask)))
        _ioctl(
            control,
            "set_up",
            _SIOCSIFFLAGS,
            _interface_request(name, struct.pack("=H", _flags(control, name) | _IFF_UP)),
        )
        if gateway is not None:
            anywhere = _sockaddr("0.0.0.0")
            route = _RTENTRY.pack(
                0, anywhere, _sockaddr(gateway), anywhere, _RTF_UP | _RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0
            )
            _ioctl(control, "add_default_route", _SIOCADDRT, route)


def _interface_request(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s24s", name.encode(), payload)  # struct ifreq


def _sockaddr(address: str) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))


def _flags(control: socket.socket, name: str) -> int:
    return struct.unpack_from("=H", _ioctl(control, "link_lookup", _SIOCGIFFLAGS, _interface_request(name)), 16)[0]


def _ioctl(control: socket.socket, operation: str, request: int, argument: bytes) -> bytes:
    try:
        return fcntl.ioctl(control, request, argument)
    except OSError as error:
        raise LinxOSError(operation, error.errno or 0) from None


def link_names(handle: IPRoute) -> list[str]:
    """The names of every link in ``handle``'s netns."""
    return [link.get_attr("IFLA_IFNAME") for link in handle.get_links()]


def link_aliases(handle: IPRoute) -> dict[str, str]:
    """Every link in ``handle``'s netns by name, with its alias (``ip link set NAME alias``;
    ``""`` when it has none): the mark by which a program can tell the links it made."""
    return {
        link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_IFALIAS") or ""
        for link in _call("link_dump", handle.get_links)
    }


def set_alias(handle: IPRoute, name: str, alias: str) -> None:
    """Set link ``name``'s alias (at most 255 bytes)."""
    _call("set_alias", handle.link, "set", ifname=name, ifalias=alias)


def links_with_address(handle: IPRoute, address: str) -> list[str]:
    """The names of the links in ``handle``'s netns that hold ``address``."""
    indexes = {found["index"] for found in _call("address_lookup", handle.get_addr, address=address)}
    return [link.get_attr("IFLA_IFNAME") for link in handle.get_links() if link["index"] in indexes]


__all__ = [
    "add_address",
    "add_default_route",
    "check_interface_name",
    "check_ipv4_address",
    "check_ipv4_prefixlen",
    "create_macvlan",
    "create_veth",
    "delete_link",
    "index_of",
    "link_aliases",
    "link_names",
    "links_with_address",
    "move_to_netns",
    "open",
    "set_alias",
    "set_up",
    "setup_veth",
]
