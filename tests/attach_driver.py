"""Run inside tmux by test_tty_tmux.py: attach the terminal to /bin/sh in a pty session and
record, as JSON in argv[1], what attach returned, the shell's stage afterwards, and the
terminal's settings (stty -g) before and after."""

import json
import os
import subprocess
import sys

import linx_otp
from linx_otp import process as P
from linx_otp import tty


def terminal_settings() -> str:
    return subprocess.run(["stty", "-g"], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    before = terminal_settings()
    shell = P.spawn(
        argv=["/bin/sh"], stdio="pty", auto_proceed=True, env={"PS1": "inside$ ", "PATH": os.environ["PATH"]}
    )
    linx_otp.receive(("linx_process", "running"), timeout=10)
    result = tty.attach(shell)
    record = {"result": result, "stage": P.info(shell).stage, "before": before, "after": terminal_settings()}
    print("driver: attach returned", result)
    with open(sys.argv[1], "w") as out:
        json.dump(record, out)
    shell.stop()


if __name__ == "__main__":
    main()
