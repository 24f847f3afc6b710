"""Spawning into fresh namespaces, and where the host pid and the child's own pid differ.

sudo python examples/namespaces.py
"""

import os

import linx_otp
from linx_otp import process as P

child = P.spawn(argv=["/bin/sleep", "30"], namespaces=["net", "uts", "ipc", "pid"])
_, _, host_pid = linx_otp.receive(("linx_process", "ready"), timeout=5)
for kind in ("net", "uts", "ipc", "pid"):
    print(f"{kind:4} ours {os.readlink(f'/proc/self/ns/{kind}')}  child's {os.readlink(f'/proc/{host_pid}/ns/{kind}')}")
info = P.info(child)
print(info, "child_pid:", info.child_pid)  # child_pid 1 in its fresh pid namespace
P.abort(child)
print(linx_otp.receive(timeout=5))  # ('linx_process', 'aborted')
child.stop()
