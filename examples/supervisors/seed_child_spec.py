"""The seed's "Supervising a workload": a session as a supervised child, with an owner actor
receiving its lifecycle events, auto_proceed, and restart="transient".

    python examples/supervisors/seed_child_spec.py

In Elixir:  children = [{Linx.Process, argv: [...], owner: MyApp.Events, auto_proceed: true,
restart: :transient}];  Supervisor.start_link(children, strategy: :one_for_one)
"""

import tempfile
import time

import linx_otp
from linx_otp import process as P
from linx_otp import supervisor as S


class Events(linx_otp.Actor):
    """MyApp.Events: an actor that receives every lifecycle event of the workload."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def on_receive(self, message):
        if message == "seen":
            return list(self.seen)
        print("  event:", message)
        self.seen.append(message)  # after the print, so the main thread's lines never cut into it


events = Events.start()
with tempfile.TemporaryDirectory() as state:  # remembers the first run; removed at the end
    # "myd": fails with exit 7 on its first run (a transient child is restarted for that), then
    # finishes its work and exits 0 (a transient child stays down after that).
    myd = f"if [ -e {state}/crashed ]; then sleep 0.2; exit 0; fi; touch {state}/crashed; exit 7"

    children = [P.child_spec(argv=["sh", "-c", myd], owner=events, auto_proceed=True, restart="transient", id="myd")]
    tree = S.start(children, strategy="one_for_one")

    while not any(event[1:] == ("exited", 0) for event in events.ask("seen")):
        time.sleep(0.05)
    print("children after exit 0:", [(child_id, ref) for child_id, ref, _ in S.which_children(tree)])  # ref None
    S.stop(tree)
events.stop()
