"""The seed's motivating use case: spawn into a fresh netns; while the child waits at the
checkpoint, create a macvlan on eth0, move it in as ct0, bring up lo and ct0, add an address
and a default route from the host; then proceed. The workload prints what it found.

    sudo python examples/netns_checkpoint.py
"""

import linx_otp
from linx_otp import netlink as Netlink
from linx_otp import process as P

# Spawn with a fresh netns; the child blocks at the checkpoint.
child = P.spawn(argv=["/bin/sh", "-c", "ip -4 -o addr show ct0; ip route"], namespaces=["net"])
_, _, host_pid = linx_otp.receive(("linx_process", "ready"), timeout=5)

# Host-side: create a macvlan and move it into the child's netns as ct0.
host = Netlink.open()
Netlink.create_macvlan(host, "ct0", "eth0", "bridge")
Netlink.move_to_netns(host, "ct0", host_pid)

# Inside the child's netns: configure ct0.
ns = Netlink.open(host_pid)
Netlink.set_up(ns, "lo")
Netlink.add_address(ns, "ct0", "10.0.0.5", 24)
Netlink.set_up(ns, "ct0")
Netlink.add_default_route(ns, "10.0.0.1")

# Advance the child past the checkpoint: it execs with its network already in place.
P.proceed(child)
print(linx_otp.receive(("linx_process", "running"), timeout=5))
print("outcome:", P.wait(child))
ns.close()
host.close()
child.stop()  # the netns, and ct0 with it, goes when the workload has gone
