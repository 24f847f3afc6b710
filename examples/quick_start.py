"""The seed's quick start and checkpoint: spawn, see `ready` with the host pid, proceed, see it end.

python examples/quick_start.py
"""

import linx_otp
from linx_otp import process as P

child = P.spawn(argv=["/bin/echo", "hello"])
print("spawned session", child)

ready = linx_otp.receive(("linx_process", "ready"), timeout=5)
print("checkpoint:", ready)  # ('linx_process', 'ready', <host pid>)

# ... host-side work would go here: netlink, cgroups, uid maps, mounts ...

P.proceed(child)
print("outcome:", P.wait(child))  # ('exited', 0)
print("events:", linx_otp.flush())  # running, then exited 0
child.stop()
