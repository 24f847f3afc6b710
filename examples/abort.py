"""Aborting a parked session: the child never runs. Also the abort state table.

python examples/abort.py
"""

import linx_otp
from linx_otp import process as P

child = P.spawn(argv=["/bin/sleep", "60"])
linx_otp.receive(("linx_process", "ready"), timeout=5)
# ... suppose host-side setup failed here ...
P.abort(child)
print(linx_otp.receive(timeout=5))  # ('linx_process', 'aborted')
print(P.wait(child))  # ('aborted',)

try:
    P.abort(child)
except linx_otp.LinxError as error:
    print("abort once terminal:", error.reason)  # no_process
child.stop()

running = P.spawn(argv=["/bin/sleep", "60"], auto_proceed=True)
linx_otp.receive(("linx_process", "running"), timeout=5)
try:
    P.abort(running)
except linx_otp.LinxError as error:
    print("abort once running:", error.reason)  # running: use signal()
running.stop()
linx_otp.flush()
