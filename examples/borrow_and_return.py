"""The seed's "Handing off the owner": a long-lived `cat` service owned (and driven) by an
actor; this script borrows the session to attach the terminal, then hands it back.

    python examples/borrow_and_return.py      # type a line, then Ctrl-P Ctrl-Q to give it back

In Elixir:  :ok = P.set_owner(c, self()); try Linx.Tty.attach(:group_leader, c) after
P.set_owner(c, supervisor) end
"""

import time

import linx_otp
from linx_otp import process as P
from linx_otp import tty


class Service(linx_otp.Actor):
    """Owns the session and counts the output it sees while it is the owner."""

    def __init__(self) -> None:
        super().__init__()
        self.output = b""

    def on_receive(self, message):
        match message:
            case ("linx_process", "pty_out", data):
                self.output += data
            case "output":
                return self.output


service = Service.start()
c = P.spawn(argv=["/bin/cat"], stdio="pty", owner=service, auto_proceed=True)
while P.info(c).stage != "running":
    time.sleep(0.01)

P.set_owner(c, linx_otp.mailbox())  # borrow: events now come to this thread
try:
    print("attached to cat: type a line; Ctrl-P Ctrl-Q hands it back")
    result = tty.attach(c)  # attach also borrows and returns on its own; this shows the seed's pattern
finally:
    P.set_owner(c, service)  # hand it back
print("attach returned:", result)

P.pty_write(c, "back with the service\n")
while b"back with the service\r\nback with the service" not in service.ask("output"):
    time.sleep(0.01)
print("the service owns it again and saw:", service.ask("output").splitlines()[-1])
c.stop()
service.stop()
