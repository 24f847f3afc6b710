"""A nested tree that escalates: an inner supervisor whose worker crash-loops gives up after
its restart intensity, exits "shutdown", and its parent restarts the whole inner group; when
that keeps happening the parent gives up too.

    python examples/supervisors/escalation.py

    outer (one_for_one, max 1 restart in 5 s)
    ├── inner (rest_for_one, max 2 restarts in 5 s)
    │   ├── flaky   (exits 1 at once: a crash loop)
    │   └── helper  (sleeps)
    └── logger      (sleeps)
"""

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S

reports = linx_otp.Mailbox()
inner = S.child_spec(
    [
        P.child_spec(id="flaky", argv=["sh", "-c", "exit 1"], auto_proceed=True),
        P.child_spec(id="helper", argv=["sleep", "3600"], auto_proceed=True),
    ],
    id="inner",
    strategy="rest_for_one",
    max_restarts=2,
    events=reports,
)
outer = S.start(
    [inner, P.child_spec(id="logger", argv=["sleep", "3600"], auto_proceed=True)],
    id="outer",
    max_restarts=1,
    events=reports,
)
linx_otp.monitor(outer, reports)

while True:
    message = reports.receive(timeout=10)
    if message[0] == "DOWN":
        print("outer ended:", message[2])  # shutdown
        break
    _, kind, supervisor, child, detail = message
    if kind in ("exited", "restarted", "gave_up"):
        print(f"{supervisor:>5}: {kind:9} {child} {detail if kind != 'restarted' else ''}")
