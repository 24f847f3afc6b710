"""The ``linx-otp`` command: run a declared tree as a daemon, control it, or spawn a one-off
workload through the checkpoint.

    linx-otp run [TREE.toml] [--json] [--control PATH]
    linx-otp status | restart ID | stop ID | start ID | attach ID | shutdown   [--control PATH]
    linx-otp spawn [--ns net,pid,...] [--pty] [--hostname H] [--mount-proc] [-r] -- ARGV...

This module parses arguments and talks to the daemon; the daemon is ``daemon.py`` and tree
files are ``tree.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .errors import LinxError

DEMO_TREE = Path(__file__).resolve().parent / "trees" / "demo.toml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.action(arguments)
    except LinxError as error:
        print(f"linx-otp: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linx-otp", description="Run Linux workloads in fresh namespaces under OTP-style supervision."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a supervision tree declared in TOML (default: the bundled demo)")
    run.add_argument("tree", nargs="?", default=str(DEMO_TREE), help="the tree file (default: the demo tree)")
    run.add_argument("--json", action="store_true", help="one JSON object per event instead of readable lines")
    run.add_argument("--control", help="the control socket's path")
    run.set_defaults(action=_run)

    for verb, text in [("status", "show every child"), ("shutdown", "stop the tree gracefully")]:
        command = commands.add_parser(verb, help=text)
        command.add_argument("--control")
        command.set_defaults(action=_control, verb=verb)
    for verb, text in [
        ("restart", "stop and start a child"),
        ("stop", "stop a child"),
        ("start", "start a stopped child"),
        ("attach", "attach this terminal to a pty child"),
    ]:
        command = commands.add_parser(verb, help=text)
        command.add_argument("id")
        command.add_argument("--control")
        command.set_defaults(action=_control, verb=verb)

    spawn = commands.add_parser("spawn", help="run one workload in fresh namespaces, like unshare")
    spawn.add_argument("--ns", default="", help="comma-separated namespaces: net,pid,mount,uts,ipc,user,cgroup,time")
    spawn.add_argument("--pty", action="store_true", help="give it a pty and attach this terminal")
    spawn.add_argument("--hostname", help="set its hostname at the checkpoint (adds the uts namespace)")
    spawn.add_argument(
        "--mount-proc", action="store_true", help="mount a fresh /proc for its pid namespace (needs pid and mount)"
    )
    spawn.add_argument(
        "-r", "--map-root-user", action="store_true", help="root inside a new user namespace is you outside (adds user)"
    )
    spawn.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    spawn.set_defaults(action=_spawn)
    return parser


def _run(arguments: argparse.Namespace) -> int:
    from .daemon import Daemon
    from .tree import parse_file

    tree = parse_file(arguments.tree)
    return Daemon(tree, json_output=arguments.json, control_path=arguments.control).run()


def request(control: str | None, message: dict, fds: list[int] | None = None, on_note: Any = None) -> Any:
    """Send one request to a running daemon; returns its result or raises LinxError. Notes
    the daemon sends before its answer (attach's "attached") go to ``on_note``."""
    from .daemon import default_control_path

    path = control or default_control_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.connect(path)
        except OSError as error:
            raise LinxError("no_daemon", f"no linx-otp daemon at {path}: {error.strerror}") from None
        socket.send_fds(connection, [json.dumps(message).encode()], fds or [])
        lines = connection.makefile("rb")
        while True:
            reply = lines.readline()
            if not reply:
                raise LinxError("no_answer", "the daemon closed the connection without an answer")
            answer = json.loads(reply)
            if "note" not in answer:
                break
            if on_note is not None:
                on_note(answer["note"])
    if not answer["ok"]:
        raise LinxError("refused", answer["error"])
    return answer["result"]


def _control(arguments: argparse.Namespace) -> int:
    message = {"verb": arguments.verb, "id": getattr(arguments, "id", None)}
    if arguments.verb == "attach":
        try:
            terminal = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            raise LinxError("no_local_tty", "attach needs a terminal") from None

        def announce(note: str) -> None:
            print(f"{note} to {arguments.id}; Ctrl-P Ctrl-Q detaches\r", file=sys.stderr)

        try:
            result = request(arguments.control, message, [terminal], on_note=announce)
        finally:
            os.close(terminal)
        print(f"\r\nlinx-otp: {result}", file=sys.stderr)
        return 0
    result = request(arguments.control, message)
    if arguments.verb == "status":
        _print_status(result)
    else:
        print(result)
    return 0


def _print_status(rows: list[dict]) -> None:
    header = ("ID", "KIND", "STATE", "HOST PID", "RESTARTS", "UPTIME", "LAST EXIT")
    table = [header] + [
        (
            row["id"],
            row["kind"],
            row["state"],
            str(row["host_pid"] or "-"),
            str(row["restarts"]),
            f"{row['uptime']:.0f}s" if row["uptime"] is not None else "-",
            str(row["last_exit"] or "-"),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())


def _spawn(arguments: argparse.Namespace) -> int:
    import linx_otp

    from . import mount, tty, user
    from . import process as P

    argv = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
    if not argv:
        raise LinxError("argv_required", "usage: linx-otp spawn [options] -- PROGRAM [ARGS...]")
    namespaces = [name for name in arguments.ns.split(",") if name]
    for flag, namespace in ((arguments.hostname, "uts"), (arguments.map_root_user, "user")):
        if flag and namespace not in namespaces:
            namespaces.append(namespace)
    if arguments.mount_proc and not {"pid", "mount"} <= set(namespaces):
        raise LinxError("bad_mount_proc", "--mount-proc needs the pid and mount namespaces (--ns pid,mount,...)")
    session = P.spawn(argv=argv, namespaces=namespaces, stdio="pty" if arguments.pty else "inherit")
    try:
        _, _, pid = linx_otp.receive(("linx_process", "ready"), timeout=10)
        if arguments.map_root_user:
            user.map_self(pid)
        if arguments.hostname:
            mount.hostname(arguments.hostname, in_pid=pid)
        if arguments.mount_proc:
            mount.mount_proc(pid)
        P.proceed(session)
        if arguments.pty:
            linx_otp.receive(("linx_process", "running"), timeout=10)
            outcome = tty.attach(session, detach_key=None)
        else:
            outcome = P.wait(session)
    finally:
        session.stop()
    return exit_status(outcome)


def exit_status(outcome: Any) -> int:
    """A shell's view of an outcome: the code, 128+signal, 126/127 for exec failures."""
    match outcome:
        case ("exited", code):
            return code
        case ("signaled", signum):
            return 128 + signum
        case ("error", 2, _):
            return 127
        case _:
            return 126 if outcome[0] == "error" else 1


if __name__ == "__main__":
    sys.exit(main())
