"""Signals (sent while running, or buffered before) and synchronous waits with timeouts.

python examples/signals_and_waits.py
"""

import linx_otp
from linx_otp import process as P

# SIGTERM to a running workload
child = P.spawn(argv=["/bin/sleep", "60"])
linx_otp.receive(("linx_process", "ready"), timeout=5)
P.proceed(child)
linx_otp.receive(("linx_process", "running"), timeout=5)
P.signal(child, 15)
print(linx_otp.receive(("linx_process", "signaled"), timeout=5))  # ('linx_process', 'signaled', 15)
child.stop()

# buffered before running, flushed at running
child = P.spawn(argv=["/bin/sleep", "60"])
linx_otp.receive(("linx_process", "ready"), timeout=5)
P.signal(child, 15)
P.proceed(child)
print(P.wait(child), linx_otp.flush())  # ('signaled', 15) [running, signaled 15]
child.stop()

# wait with a timeout leaves the session alone
child = P.spawn(argv=["/bin/sleep", "60"], auto_proceed=True)
try:
    P.wait(child, 0.1)
except TimeoutError as error:
    print("still running:", error)
P.signal(child, 9)
print(P.wait(child))  # ('signaled', 9)
child.stop()
