"""An interactive shell in fresh pid, mount, uts, ipc and net namespaces, attached to this
terminal like `docker run -it`. Inside, `ps` and `/proc` show only the shell's own processes,
`hostname` is its own, and `ip link` shows only `lo`.

    sudo python examples/interactive_shell.py        # type `exit` to leave, Ctrl-P Ctrl-Q to detach

The workload mounts its own /proc before starting the shell (a fresh pid namespace needs a
proc mounted from inside it).
"""

import os

import linx_otp
from linx_otp import process as P
from linx_otp import tty

shell = P.spawn(
    argv=["/bin/sh", "-c", "mount -t proc proc /proc && hostname linx-shell && exec /bin/sh -i"],
    namespaces=["pid", "mount", "uts", "ipc", "net"],
    stdio="pty",
    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": "linx# ", "TERM": os.environ.get("TERM", "xterm")},
)
_, _, host_pid = linx_otp.receive(("linx_process", "ready"), timeout=5)
print(f"shell parked at the checkpoint as host pid {host_pid}; proceeding")
P.proceed(shell)
linx_otp.receive(("linx_process", "running"), timeout=5)

outcome = tty.attach(shell)  # seeds the window size, raw mode, restores the terminal on return
print("attach returned:", outcome)
if outcome == "detached":
    print("the shell still runs:", P.info(shell), "- stopping it")
shell.stop()
