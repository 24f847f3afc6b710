"""Daemons restarted on crash: two long-running workloads under one_for_one; one is killed
from outside with SIGKILL and comes back as a new process, the other is untouched.

    python examples/supervisors/restart_on_crash.py
"""

import os
import signal
import time

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S

reports = linx_otp.Mailbox()
tree = S.start(
    [
        P.child_spec(id="web", argv=["sleep", "3600"], auto_proceed=True, namespaces=["uts", "ipc"]),
        P.child_spec(id="cache", argv=["sleep", "3600"], auto_proceed=True),
    ],
    strategy="one_for_one",
    max_restarts=5,
    max_seconds=10.0,
    events=reports,
)


def running_pid(child_id: str) -> int:
    session = dict((cid, ref) for cid, ref, _ in S.which_children(tree))[child_id]
    while P.info(session).stage != "running":
        time.sleep(0.01)
    return P.host_pid(session)


before = {child_id: running_pid(child_id) for child_id in ("web", "cache")}
print("running:", before)

os.kill(before["web"], signal.SIGKILL)  # a crash, as an operator's kill -9 would cause
print("report:", reports.receive(("linx_supervisor", "exited"), timeout=5)[3:])  # ('web', ('signaled', 9))
print("report:", reports.receive(("linx_supervisor", "restarted"), timeout=5)[3])

after = {child_id: running_pid(child_id) for child_id in ("web", "cache")}
print("running:", after)
assert after["web"] != before["web"] and after["cache"] == before["cache"]
print("restarts:", S.restart_counts(tree))
S.stop(tree)
