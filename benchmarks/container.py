"""A workload with its network, cgroup and namespaces set up at the checkpoint, against the
tools people would otherwise use to start a sandboxed /bin/true.

    sudo python benchmarks/container.py [--runs 200]

linx_otp row: spawn `/bin/true` into fresh net, pid, mount, uts and ipc namespaces; at the
checkpoint create a veth whose peer is made directly in the child's netns, bring up both ends
and lo, give the peer an address and a default route (``netlink.setup_veth``, which opens the
child's netns while the host creates the pair),
and place the child in a cgroup; then proceed and wait for the exit. Baselines, alternating
with it in one loop: `bwrap --unshare-all --dev-bind / / /bin/true` (no network setup), and
`crun run` / `runc run` of a busybox bundle where they run (crun refuses hybrid cgroup hosts
like this project's machines: the table says so). Needs root; bwrap, crun and runc come from
Debian (`apt-get install bubblewrap crun runc`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median_and_p99

import linx_otp
from linx_otp import cgroup as Cgroup
from linx_otp import netlink as Netlink
from linx_otp import process as P

NAMESPACES = ["net", "pid", "mount", "uts", "ipc"]
BWRAP = ["bwrap", "--unshare-all", "--dev-bind", "/", "/", "/bin/true"]


class LinxContainer:
    def __init__(self) -> None:
        self.events = linx_otp.Mailbox()
        self.host = Netlink.open()
        self.cgroup = Cgroup.create(f"linx-bench-{os.getpid()}", pids_max=100)
        self.names = (f"lxb{n}" for n in itertools.count())

    def run(self) -> None:
        session = P.spawn(argv=["/bin/true"], namespaces=NAMESPACES, owner=self.events)
        pid = self.events.receive(("linx_process", "ready"), timeout=10)[2]
        Netlink.setup_veth(
            pid, host_name=next(self.names), address="10.232.0.2", prefixlen=30, gateway="10.232.0.1", host=self.host
        )
        Cgroup.add_process(self.cgroup, pid)
        P.proceed(session)
        outcome = P.wait(session, 10)
        assert outcome == ("exited", 0), outcome
        session.stop()
        self.events.flush()

    def close(self) -> None:
        self.host.close()
        deadline = time.monotonic() + 10
        while Cgroup.events(self.cgroup)["populated"] and time.monotonic() < deadline:
            time.sleep(0.01)
        Cgroup.destroy(self.cgroup)


def busybox_bundle(directory: Path, runtime: str) -> Path:
    (directory / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", directory / "rootfs" / "bin" / "busybox")
    (directory / "rootfs" / "bin" / "true").symlink_to("busybox")
    subprocess.run([runtime, "spec"], cwd=directory, check=True, capture_output=True)
    config = json.loads((directory / "config.json").read_text())
    config["process"]["args"], config["process"]["terminal"] = ["/bin/true"], False
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def runtime_command(runtime: str, bundle: Path):
    counter = itertools.count()
    return lambda: subprocess.run(
        [runtime, "run", "--bundle", str(bundle), f"linx-bench-{next(counter)}"], check=True, capture_output=True
    )


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")

    candidates = {
        "bwrap --unshare-all --dev-bind / / /bin/true (no network setup)": lambda: subprocess.run(BWRAP, check=True)
    }
    unavailable = []
    with tempfile.TemporaryDirectory() as scratch:
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
            candidates[f"`{runtime} run` of a busybox bundle"] = command

        ours = LinxContainer()
        rows = []
        try:
            for _ in range(5):
                ours.run()
            for name, action in candidates.items():
                linx_samples, baseline_samples = [], []
                for _ in range(arguments.runs):
                    linx_samples.append(timed(ours.run))
                    baseline_samples.append(timed(action))
                rows.append((name, linx_samples, baseline_samples))
        finally:
            ours.close()

    print(
        f"container setup benchmark: {arguments.runs} runs per pair, {os.cpu_count()} cores, Python {sys.version.split()[0]}\n"
    )
    print("| baseline | baseline ms (median / p99) | linx_otp ms, same loop (median / p99) | linx_otp ÷ baseline |")
    print("|---|---|---|---|")
    for name, linx_samples, baseline_samples in rows:
        print(
            f"| {name} | {median_and_p99(baseline_samples)} | {median_and_p99(linx_samples)} "
            f"| {statistics.median(linx_samples) / statistics.median(baseline_samples):.2f}× |"
        )
    for line in unavailable:
        print(f"| {line} | | | |")


if __name__ == "__main__":
    main()
