"""A dynamic worker pool: a supervisor started empty with max_children, jobs started as
temporary children (never restarted, forgotten when done), at most four at a time.

    python examples/supervisors/worker_pool.py
"""

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S
from linx_otp.errors import LinxError

pool = S.start([], max_children=4)
results = linx_otp.Mailbox()
jobs = [f"echo job {n} in $(hostname)" for n in range(10)]
waiting = list(enumerate(jobs))
running = 0

while waiting or running:
    while waiting:
        number, command = waiting[0]
        spec = P.child_spec(
            id=f"job-{number}",
            argv=["sh", "-c", command],
            namespaces=["uts"],  # each job in its own uts namespace
            auto_proceed=True,
            restart="temporary",
            owner=results,
        )
        try:
            S.start_child(pool, spec)
        except LinxError as error:
            assert error.reason == "max_children"
            break  # the pool is full: wait for a job to end
        waiting.pop(0)
        running += 1
    outcome = results.receive(lambda m: m[:2] in (("linx_process", "exited"), ("linx_process", "signaled")), timeout=10)
    running -= 1
    print(f"a job ended: {outcome[1:]} | pool: {S.count_children(pool)}")  # one write (and its newline)

S.stop(pool)
