"""Entering an existing process's namespaces (like `nsenter --target` or `docker exec`).

sudo python examples/enter.py
"""

import linx_otp
from linx_otp import process as P

container = P.spawn(argv=["/bin/sleep", "60"], namespaces=["net"])
_, _, target = linx_otp.receive(("linx_process", "ready"), timeout=5)
P.proceed(container)
linx_otp.receive(("linx_process", "running"), timeout=5)

probe = P.enter(target, argv=["/bin/sh", "-c", "ip -o link | wc -l"])  # prints 1: only lo
linx_otp.receive(("linx_process", "ready"), timeout=5)
P.proceed(probe)
print("probe:", P.wait(probe))  # ('exited', 0)
probe.stop()

bogus = P.enter(99999999, argv=["/bin/true"])
print(linx_otp.receive(("linx_process", "error"), timeout=5))  # ('linx_process', 'error', 2, 'open_ns_proc')
bogus.stop()

P.signal(container, 9)
print(P.wait(container))  # ('signaled', 9)
container.stop()
linx_otp.flush()
