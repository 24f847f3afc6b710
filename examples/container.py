"""A small container built only from linx_otp's pieces, all applied at the checkpoint.

    sudo python examples/container.py                      # a shell in the container (needs a terminal)
    sudo python examples/container.py --command "ps; ip addr"

    python examples/container.py --command "id"       # unprivileged: adds a user namespace

Unprivileged, it adds a user namespace mapping root inside to you, and skips the cgroup and
the veth (both need root on the host); the mounts then go through the agent.

The workload is hardened with ``profiles.container()``: Docker's default capabilities minus
mknod, a seccomp profile at least as strict as Docker's (no mount, no namespaces, no module
loading, no ptrace, ...), no_new_privs, and a /proc with Docker's masks and a read-only /sys.

All of the set-up is one ``linx_otp.Setup`` value, which the session runs at the checkpoint
(``P.spawn(setup=...)``) before it lets the shell start; what it creates on the host (the
cgroup, the veth) is released when the shell ends.

Steps (each is a few lines below, in this order):
1. a busybox rootfs (Debian's busybox-static), made in a temporary directory;
2. the set-up, one ``Setup``: unprivileged, a map of root inside to our own uid and gid; the
   hostname; a cgroup with a memory and a pids limit (root only); a veth pair (root only), the
   peer created directly in the child's netns as eth0, addresses on both ends, lo up and a
   default route via the host end; device nodes bound into the rootfs; and the profile's part:
   a fresh /proc for the child's pid namespace with Docker's masks, a read-only /sys, then
   ``pivot_root`` into the rootfs, so that the workload sees only the rootfs;
3. spawn /bin/sh with the container profile's options into fresh pid, mount, uts, ipc and net
   namespaces (and user, unprivileged), with that set-up: the shell starts with all of it in
   place from its first instruction; attach the terminal, or run --command;
4. clean up: stop the session (its set-up's cgroup and veth go with it), remove the rootfs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import linx_otp
from linx_otp import process as P
from linx_otp import profiles, tty
from linx_otp.checkpoint.setup import Limits, MountEntry, Release, Veth

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

    # Step 2: the set-up. The cgroup and the veth are named by the child's host pid, so the
    # set-up is a function of it that applies the Setup with those names.
    hardening = profiles.container(rootfs)
    setup = dataclasses.replace(
        hardening.pop("setup"),
        hostname=arguments.hostname,
        uid_map=None if privileged else [(0, os.geteuid(), 1)],
        gid_map=None if privileged else [(0, os.getegid(), 1)],
        cgroup=Limits(memory_max=arguments.memory_max, pids_max=arguments.pids_max) if privileged else None,
        mounts=[MountEntry(target=f"/dev/{device}", source=f"/dev/{device}") for device in DEVICES],
    )
    if not privileged:
        print("unprivileged: no cgroup and no veth (they need root on the host)")

    def set_up(pid: int) -> Release:
        veth = Veth(f"lxc{pid}", CONTAINER_ADDRESS, PREFIX, gateway=HOST_ADDRESS, host_address=HOST_ADDRESS)
        container = dataclasses.replace(setup, veth=veth) if privileged else setup
        return container.apply(pid, cgroup_name=f"linx-container-{pid}")

    # Step 3: spawn with the container profile; the session runs the set-up, then the shell.
    hardening["namespaces"] = namespaces  # no cgroup namespace: /proc/self/cgroup shows the host's path
    shell = P.spawn(
        **hardening,
        setup=set_up,
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
    try:
        started = linx_otp.receive(lambda event: event[1] in ("running", *P.TERMINAL_EVENTS), timeout=10)
        if started[1] != "running":
            print("container:", started[1:])
            return 1
        outcome = tty.attach(shell) if interactive else P.wait(shell)
        print("container:", outcome)
        return 0 if outcome in (("exited", 0), "detached") else 1
    finally:
        shell.stop()  # step 4: the session released the set-up's cgroup and veth when the shell ended
        shutil.rmtree(rootfs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
