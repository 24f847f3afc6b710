"""Stdio plumbing: silence a workload, or connect one of its fds to a UNIX listener.

python examples/stdio.py
"""

import os
import socket
import tempfile

import linx_otp
from linx_otp import process as P

quiet = P.spawn(argv=["/bin/echo", "this won't be seen"], stdio="devnull", auto_proceed=True)
print("devnull:", P.wait(quiet))
quiet.stop()
linx_otp.flush()  # its events, so the receive below sees the next session's

with tempfile.TemporaryDirectory() as directory:  # removed, with the socket in it, at the end
    path = os.path.join(directory, "linx-demo.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()

    child = P.spawn(argv=["/bin/echo", "hello from a workload"], stdio={"stdout": ("connect_unix", path)})
    linx_otp.receive(("linx_process", "ready"), timeout=5)
    connection, _ = listener.accept()  # connected by the agent while the child is still parked
    P.proceed(child)
    print("received:", connection.recv(100))  # b'hello from a workload\n'
    print(P.wait(child))  # ('exited', 0)
    child.stop()
    connection.close()
    listener.close()
linx_otp.flush()
