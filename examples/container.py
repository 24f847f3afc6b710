"""A small container built only from linx_otp's pieces, all applied at the checkpoint.

    sudo python examples/container.py                      # a shell in the container (needs a terminal)
    sudo python examples/container.py --command "ps; ip addr"

    python examples/container.py --command "id"       # unprivileged: adds a user namespace

Unprivileged, it adds a user namespace mapping root inside to you, and skips the cgroup and
the veth (both need root on the host); the mounts then go through the agent.

The workload is hardened with ``profiles.container()``: Docker's default capabilities minus
mknod, a seccomp profile at least as strict as Docker's (no mount, no namespaces, no module
loading, no ptrace, ...), no_new_privs, and a /proc with Docker's masks and a read-only /sys.

Steps (each is a few lines below, in this order):
1. a busybox rootfs (Debian's busybox-static), made in a temporary directory;
2. spawn /bin/sh with the container profile's options into fresh pid, mount, uts, ipc and net
   namespaces (and user, unprivileged); the child parks at the checkpoint and we get its host pid;
3. the hostname (unprivileged: first map root inside to our own uid and gid);
4. a cgroup with a memory and a pids limit, the child placed in it (root only);
5. a veth pair (root only), the peer created directly in the child's netns as eth0, addresses on both
   ends, lo up and a default route via the host end (``netlink.setup_veth`` does all of
   step 5 in one call; the single steps are spelled out here);
6. device nodes bound into the rootfs;
7. the profile's set-up: a fresh /proc for the child's pid namespace with Docker's masks, a
   read-only /sys, then pivot_root into the rootfs: the workload sees only the rootfs;
8. proceed: the shell starts with all of it in place from its first instruction; attach the
   terminal, or run --command;
9. clean up: stop the session, delete the cgroup and the veth, remove the rootfs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import linx_otp
from linx_otp import cgroup as Cgroup
from linx_otp import mount as Mount
from linx_otp import netlink as Netlink
from linx_otp import process as P
from linx_otp import profiles, tty
from linx_otp import user as User

BUSYBOX = Path("/bin/busybox")
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
HOST_ADDRESS, CONTAINER_ADDRESS, PREFIX = "10.231.0.1", "10.231.0.2", 30


def make_rootfs(directory: Path) -> Path:
    """Step 1: a busybox rootfs, every applet a symlink to one static binary."""
    if not BUSYBOX.exists():
        sys.exit("needs busybox-static: run scripts/system-deps.sh (apt-get install busybox-static)")
    for name in ("bin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (directory / name).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, directory / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = directory / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for device in DEVICES:
        (directory / "dev" / device).touch()
    (directory / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", help="run this with /bin/sh -c instead of an interactive shell")
    parser.add_argument("--hostname", default="container")
    parser.add_argument("--memory-max", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--pids-max", type=int, default=64)
    arguments = parser.parse_args()
    privileged = os.geteuid() == 0
    interactive = arguments.command is None

    rootfs = make_rootfs(Path(tempfile.mkdtemp(prefix="linx-rootfs-")))  # step 1
    namespaces = ["pid", "mount", "uts", "ipc", "net"] + ([] if privileged else ["user"])
    argv = ["/bin/sh"] if interactive else ["/bin/sh", "-c", arguments.command]

    # Step 2: spawn with the container profile, parked at the checkpoint.
    hardening = profiles.container(rootfs)
    setup = hardening.pop("setup")
    hardening["namespaces"] = namespaces  # no cgroup namespace: /proc/self/cgroup shows the host's path
    shell = P.spawn(
        **hardening,
        argv=argv,
        env={
            "PATH": "/bin",
            "HOME": "/root",
            "PS1": f"{arguments.hostname}# ",
            "TERM": os.environ.get("TERM", "xterm"),
        },
        cwd="/",
        stdio="pty" if interactive else "inherit",
    )
    _, _, pid = linx_otp.receive(("linx_process", "ready"), timeout=5)
    host, cgroup, veth = None, None, f"lxc{pid}"
    try:
        if not privileged:
            User.map_self(pid)
        Mount.hostname(arguments.hostname, in_pid=pid)  # step 3
        if privileged:
            cgroup = Cgroup.create(
                f"linx-container-{pid}", memory_max=arguments.memory_max, pids_max=arguments.pids_max
            )
            Cgroup.add_process(cgroup, pid)  # step 4
            host = Netlink.open()  # step 5
            Netlink.create_veth(host, veth, "eth0", peer_pid=pid)
            Netlink.add_address(host, veth, HOST_ADDRESS, PREFIX)
            Netlink.set_up(host, veth)
            inside = Netlink.open(pid)
            Netlink.set_up(inside, "lo")
            Netlink.add_address(inside, "eth0", CONTAINER_ADDRESS, PREFIX)
            Netlink.set_up(inside, "eth0")
            Netlink.add_default_route(inside, HOST_ADDRESS)
            inside.close()
        else:
            print("unprivileged: no cgroup and no veth (they need root on the host)")
        for device in DEVICES:  # step 6
            Mount.bind(f"/dev/{device}", rootfs / "dev" / device, recursive=False, in_pid=pid)
        setup(pid)  # step 7

        P.proceed(shell)  # step 8
        linx_otp.receive(("linx_process", "running"), timeout=5)
        outcome = tty.attach(shell) if interactive else P.wait(shell)
        print("container:", outcome)
        return 0 if outcome in (("exited", 0), "detached") else 1
    finally:
        shell.stop()  # step 9
        if cgroup is not None:
            Cgroup.destroy(cgroup, kill_first=True)
        if host is not None:
            Netlink.delete_link(host, veth, missing_ok=True)  # it may already be gone with the netns
            host.close()
        shutil.rmtree(rootfs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
