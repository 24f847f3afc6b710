"""The ``linx-otp`` command: run a declared tree as a daemon, control it, or spawn a one-off
workload through the checkpoint.

    linx-otp [--name NAME] [--control PATH] run [TREE.toml] [--json] [--metrics HOST:PORT]
    linx-otp [--name NAME] run --ray ADDRESS TREE.toml;  linx-otp status --ray ADDRESS --name NAME
    linx-otp [--name NAME] [--control PATH] status | restart ID | stop ID | start ID | attach ID | shutdown | reload [--json]
    linx-otp [--name NAME] [--control PATH] logs ID [-f] [-n N] [--json]
    linx-otp spawn [--ns net,pid,...] [--pty] [--hostname H] [--mount-proc] [-r] [--rootfs DIR]
                   [--user U] [--group G] [--cap NAME...] [--profile container] -- ARGV...

``--name`` and ``--control`` go before or after the subcommand. This module parses arguments
and talks to the daemon (checking, before it sends anything, that the socket's server runs as
root or as the caller); the daemon is the ``daemon`` package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LinxError

DEMO_TREE = Path(__file__).resolve().parent / "trees" / "demo.toml"


def main(argv: list[str] | None = None) -> int:
    open_missing_standard_fds()
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        status = arguments.action(arguments)
        sys.stdout.flush()  # here, where a closed stdout is caught, not at the interpreter's exit
        return status
    except LinxError as error:
        print(f"linx-otp: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed (``status | head -3``): what a process killed by SIGPIPE ends with
        return _stdout_closed()


def open_missing_standard_fds() -> None:
    """Started with fd 0, 1 or 2 closed (``linx-otp run >&- 2>&-``), the next file the command
    opens would take that number: the daemon's lock file or its control socket would become its
    console. Put ``/dev/null`` on each closed one first, as init systems and daemons do, and give
    Python the streams it left as None for them."""
    while True:
        fd = os.open(os.devnull, os.O_RDWR)  # the lowest free number
        if fd > 2:
            os.close(fd)
            break
        os.set_inheritable(fd, True)  # a standard fd, as workloads that inherit them expect
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


STDOUT_CLOSED = 128 + signal.SIGPIPE
"""The exit status when stdout's reader has gone: a shell's for a process killed by SIGPIPE (141)."""


def _stdout_closed() -> int:
    """Quietly, as ``yes | head -1`` ends: nothing more is written, and Python's flush of stdout
    at exit must not fail again (it would print a traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return STDOUT_CLOSED


def _parser() -> argparse.ArgumentParser:
    instance = argparse.ArgumentParser(add_help=False)  # accepted before and after the subcommand
    instance.add_argument(
        "--name", default=argparse.SUPPRESS, help="the daemon instance (default: 'default', or $LINX_OTP_NAME)"
    )
    instance.add_argument(
        "--control", default=argparse.SUPPRESS, help="the control socket's path (overrides the instance's)"
    )
    parser = argparse.ArgumentParser(
        prog="linx-otp",
        description="Run Linux workloads in fresh namespaces under OTP-style supervision.",
        parents=[instance],
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run a supervision tree declared in TOML (default: the bundled demo)", parents=[instance]
    )
    run.add_argument("tree", nargs="?", default=str(DEMO_TREE), help="the tree file (default: the demo tree)")
    run.add_argument("--json", action="store_true", help="one JSON object per event instead of readable lines")
    run.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics (extra [metrics])"
    )
    run.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the tree across a Ray cluster (extra [ray]; placement by each child's node = {...})",
    )
    run.set_defaults(action=_run)

    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument(
        "--json", action="store_true", help='print the reply as one JSON object: {"ok": true, "result": ...}'
    )
    as_json.add_argument(
        "--timeout",
        type=_seconds,
        default=ANSWER_SECONDS,
        metavar="SECONDS",
        help=f"wait at most this long for the daemon's answer (default: {ANSWER_SECONDS:g})",
    )
    for verb, text in [
        ("status", "show every child"),
        ("shutdown", "stop the tree gracefully"),
        ("reload", "re-read the tree file: start added children, stop removed ones, restart changed ones"),
    ]:
        command = commands.add_parser(verb, help=text, parents=[instance, as_json])
        command.set_defaults(action=_control, verb=verb)
        if verb == "status":
            command.add_argument(
                "--ray", metavar="ADDRESS", help="a tree run with --ray: its children and their nodes (NAME: --name)"
            )
    for verb, text in [
        ("restart", "stop and start a child"),
        ("stop", "stop a child"),
        ("start", "start a stopped child"),
        ("attach", "attach this terminal to a pty child"),
    ]:
        command = commands.add_parser(verb, help=text, parents=[instance, as_json])
        command.add_argument("id")
        command.set_defaults(action=_control, verb=verb)

    logs = commands.add_parser(
        "logs", help="show a child's last output (-f: and follow it)", parents=[instance, as_json]
    )
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true", help="go on showing new output until Ctrl-C")
    logs.add_argument("-n", "--lines", type=_count, default=None, help="only the last N lines (default: all kept)")
    logs.set_defaults(action=_logs)

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
    spawn.add_argument("--user", help="run it as this user (a name or a uid)")
    spawn.add_argument("--group", help="run it with this group (a name or a gid)")
    spawn.add_argument(
        "--cap",
        action="append",
        help="keep this capability (net_bind_service, ...; repeat or comma-separate; 'none' for none at all)",
    )
    spawn.add_argument(
        "--profile",
        choices=["container"],
        help="harden it: Docker's capabilities minus mknod, a strict seccomp filter, no_new_privs, a masked "
        "/proc, a read-only /sys, and pid, mount, net, uts, ipc and cgroup namespaces",
    )
    spawn.add_argument("--rootfs", help="pivot_root into this directory at the checkpoint (adds mount)")
    spawn.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the program and its arguments")
    spawn.set_defaults(action=_spawn)
    return parser


def _instance_name(arguments: argparse.Namespace) -> str:
    from .daemon.instance import check_instance_name

    name = getattr(arguments, "name", None)  # given, even empty (`--name "$UNSET"`), it is checked as given
    if name is None:
        name = os.environ.get("LINX_OTP_NAME") or "default"
    return check_instance_name(name)


def _control_path(arguments: argparse.Namespace) -> str:
    from .daemon.instance import default_control_path

    return getattr(arguments, "control", None) or default_control_path(_instance_name(arguments))


def _run(arguments: argparse.Namespace) -> int:
    if arguments.ray is not None:
        from . import cluster

        return cluster.run_tree(arguments.ray, arguments.tree, name=getattr(arguments, "name", None))
    from .daemon import Daemon, Instance
    from .daemon.metrics import parse_address
    from .daemon.tree import parse_file

    name = _instance_name(arguments)
    tree = parse_file(arguments.tree, instance=name)
    metrics = parse_address(arguments.metrics) if arguments.metrics is not None else None
    return Daemon(tree, Instance(name, _control_path(arguments)), json_output=arguments.json, metrics=metrics).run()


_CREDENTIALS = struct.Struct("3i")


def check_server(connection: socket.socket, path: str) -> None:
    """Refuse a server that is neither root nor the caller (SO_PEERCRED), before sending it
    anything: a socket someone else planted must not get a request, let alone a terminal."""
    _, uid, _ = _CREDENTIALS.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    if uid not in (0, os.geteuid()):
        raise LinxError(
            ("untrusted_server", uid),
            f"the server at {path} runs as uid {uid}, neither root nor you (uid {os.geteuid()}); not talking to it",
        )


ANSWER_SECONDS = 600.0
SECONDS_MAX = 86400.0
"""How long the command waits for the daemon's answer unless ``--timeout`` says: a reload or a
start waits for its children's readiness checks, so generously (a wedged daemon is not waited
for forever). An attach, once attached, lasts as long as it lasts."""


def request(
    control: str, message: dict, fds: list[int] | None = None, on_note: Any = None, timeout: float = ANSWER_SECONDS
) -> Any:
    """Send one request to the daemon at ``control``; returns its result or raises LinxError,
    also when it closes the connection or does not answer within ``timeout`` seconds. Notes the
    daemon sends before its answer (attach's "attached") go to ``on_note``, and after one the
    answer is waited for without a limit."""
    path = control
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(path)
        except TimeoutError:
            raise _no_answer(path, message, timeout) from None
        except OSError as error:
            raise LinxError("no_daemon", f"no linx-otp daemon at {path}: {error.strerror}") from None
        check_server(connection, path)
        try:
            socket.send_fds(connection, [json.dumps(message).encode() + b"\n"], fds or [])
        except TimeoutError:
            raise _no_answer(path, message, timeout) from None
        except OSError:
            pass  # closed before it was sent: its reason, if it gave one, is there to read
        answer = _answer(connection, path, message, timeout, on_note)
    if not answer["ok"]:
        raise LinxError("refused", answer["error"])
    return answer["result"]


def _answer(connection: socket.socket, path: str, message: dict, timeout: float, on_note: Any) -> dict:
    lines = connection.makefile("rb")
    while True:
        try:
            reply = lines.readline()
        except TimeoutError:
            raise _no_answer(path, message, timeout) from None
        except OSError as error:
            reply = b""
            why = f" ({error.strerror})"
        else:
            why = ""
        if not reply:
            raise LinxError(
                "no_answer", f"the daemon at {path} closed the connection without an answer{why}; try again"
            )
        answer = json.loads(reply)
        if "note" not in answer:
            return answer
        connection.settimeout(None)  # attached: as long as the session lasts
        if on_note is not None:
            on_note(answer["note"])


def _no_answer(path: str, message: dict, timeout: float) -> LinxError:
    return LinxError(
        ("timeout", timeout),
        f"the daemon at {path} did not answer {message['verb']} within {timeout:g} s (--timeout SECONDS to wait "
        "longer; a reload or start waits for readiness checks); it may be wedged",
    )


def _control(arguments: argparse.Namespace) -> int:
    if getattr(arguments, "ray", None) is not None:
        from . import cluster

        return cluster.status(arguments.ray, _instance_name(arguments))
    message = {"verb": arguments.verb, "id": getattr(arguments, "id", None)}
    try:
        result = (
            _attach(arguments, message)
            if arguments.verb == "attach"
            else request(_control_path(arguments), message, timeout=arguments.timeout)
        )
    except LinxError as error:
        if not arguments.json:
            raise
        print(json.dumps({"ok": False, "error": str(error), "reason": _jsonable(error.reason)}))
        return 2
    if arguments.json:
        print(json.dumps({"ok": True, "result": result}))
    elif arguments.verb == "status":
        _print_status(result)
    elif arguments.verb == "attach":
        print(f"\r\nlinx-otp: {result}", file=sys.stderr)
    elif arguments.verb == "reload":
        from .daemon.run import describe_reload

        print(describe_reload(result))
    else:
        print(result)
    if arguments.verb == "reload" and result.get("failed"):
        return RELOAD_PARTLY_FAILED
    return 0


RELOAD_PARTLY_FAILED = 1
"""The exit status of a reload that applied the file but some of whose children did not start
(the reply names them and why; the next reload tries them again): a script must not take it
for success."""


def _attach(arguments: argparse.Namespace, message: dict) -> Any:
    try:
        terminal = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise LinxError("no_local_tty", "attach needs a terminal") from None

    def announce(note: str) -> None:
        print(f"{note} to {arguments.id}; Ctrl-P Ctrl-Q detaches\r", file=sys.stderr)

    try:
        return request(_control_path(arguments), message, [terminal], on_note=announce, timeout=arguments.timeout)
    finally:
        os.close(terminal)


FOLLOW_SECONDS = 0.2
"""How often ``logs -f`` asks the daemon for what came after the last line it showed."""


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= SECONDS_MAX:
        raise argparse.ArgumentTypeError(f"expected seconds, more than 0 and at most {SECONDS_MAX:g}, not {text!r}")
    return seconds


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of lines (0 or more), not {text!r}")
    return int(text)


def _logs(arguments: argparse.Namespace) -> int:
    """``logs ID [-f] [-n N]``: the child's last lines from the daemon's ring; with ``-f``, ask
    again every ``FOLLOW_SECONDS`` for the lines after the last one shown, until Ctrl-C or the
    daemon's end."""
    control = _control_path(arguments)
    message: dict[str, Any] = {"verb": "logs", "id": arguments.id, "lines": arguments.lines}
    try:
        reply = request(control, message, timeout=arguments.timeout)
    except LinxError as error:
        if not arguments.json:
            raise
        print(json.dumps({"ok": False, "error": str(error), "reason": _jsonable(error.reason)}))
        return 2
    if arguments.json and not arguments.follow:
        print(json.dumps({"ok": True, "result": reply}))
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C ends -f, even if started with SIGINT ignored
    try:
        while True:
            _show_lines(reply, arguments.json)
            if not arguments.follow:
                return 0
            time.sleep(FOLLOW_SECONDS)
            try:
                reply = request(
                    control, {"verb": "logs", "id": arguments.id, "after": reply["next"]}, timeout=arguments.timeout
                )
            except LinxError as error:
                if str(error).startswith("busy: "):  # other clients' unread replies: ask again
                    reply = {"lines": [], "missed": 0, "next": reply["next"]}
                    continue
                print(f"linx-otp: {error}", file=sys.stderr)
                return 0  # the daemon has gone: nothing more will come, as docker logs -f ends
    except KeyboardInterrupt:
        return 0


def _show_lines(reply: dict, as_json: bool) -> None:
    if reply["missed"]:
        print(f"linx-otp: {reply['missed']} lines were missed (the daemon keeps the last 1 MiB)", file=sys.stderr)
    for line in reply["lines"]:
        if as_json:
            print(json.dumps(line))
        else:
            print(f"{line['time']} {'!' if line['stream'] == 'stderr' else '|'} {line['text']}")
    sys.stdout.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def describe_seconds(seconds: float) -> str:
    """An uptime for people.

    >>> describe_seconds(5.4), describe_seconds(192), describe_seconds(3900), describe_seconds(200000)
    ('5s', '3m12s', '1h05m', '2d07h')
    """
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // smaller_size:02d}{smaller}"
    return f"{whole}s"


def _print_status(rows: list[dict]) -> None:
    header = ("ID", "KIND", "STATE", "READY", "READINESS", "HOST PID", "RESTARTS", "UPTIME", "LAST EXIT", "LOG")
    table = [header] + [
        (
            row["id"],
            row["kind"],
            row["state"],
            "yes" if row["ready"] else "no",
            row["readiness"] or "-",
            str(row["host_pid"] or "-"),
            str(row["restarts"]),
            describe_seconds(row["uptime"]) if row["uptime"] is not None else "-",
            str(row["last_exit"] or "-"),
            row["log"] or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())


def spawn_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """``linx-otp spawn``'s flags as ``P.spawn`` options, its set-up a ``linx_otp.Setup``.
    Checks everything ``P.spawn`` does not: raises ``LinxError`` before anything starts."""
    from .checkpoint import profiles
    from .checkpoint.setup import Setup

    argv = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
    if not argv:
        raise LinxError("argv_required", "usage: linx-otp spawn [options] -- PROGRAM [ARGS...]")
    options: dict[str, Any] = profiles.container() if arguments.profile == "container" else {"namespaces": []}
    setup = options.pop("setup", Setup())
    namespaces = options["namespaces"]
    namespaces += [name for name in arguments.ns.split(",") if name and name not in namespaces]
    wanted = ((arguments.hostname, "uts"), (arguments.map_root_user, "user"), (arguments.rootfs, "mount"))
    namespaces += [namespace for flag, namespace in wanted if flag and namespace not in namespaces]
    if arguments.mount_proc and not {"pid", "mount"} <= set(namespaces):
        raise LinxError("bad_mount_proc", "--mount-proc needs the pid and mount namespaces (--ns pid,mount,...)")
    if arguments.rootfs is not None and not os.path.isdir(arguments.rootfs):
        raise LinxError(("bad_rootfs", arguments.rootfs), f"--rootfs {arguments.rootfs}: not a directory")
    mapped = arguments.map_root_user
    setup = dataclasses.replace(
        setup,
        hostname=arguments.hostname,
        uid_map=[(0, os.geteuid(), 1)] if mapped else None,
        gid_map=[(0, os.getegid(), 1)] if mapped else None,
        proc=setup.proc or arguments.mount_proc,
        rootfs=arguments.rootfs or setup.rootfs,
    )
    for flag in ("user", "group"):
        value = getattr(arguments, flag)
        if value is not None:
            options[flag] = int(value) if value.isdigit() else value
    if arguments.cap is not None:
        names = [name for given in arguments.cap for name in given.split(",") if name]
        options["capabilities"] = [] if names == ["none"] else names
    stdio = "pty" if arguments.pty else "inherit"
    return {**options, "argv": argv, "setup": setup or None, "auto_proceed": True, "stdio": stdio}


def _spawn(arguments: argparse.Namespace) -> int:
    import linx_otp

    from . import process as P
    from . import tty

    options = spawn_options(arguments)
    reports = logging.StreamHandler(sys.stderr)  # why a set-up failed, say, in one line each
    reports.setFormatter(_OneLine("linx-otp: %(message)s"))
    logging.getLogger("linx_otp").addHandler(reports)
    session = P.spawn(**options)
    try:
        if arguments.pty:
            started = linx_otp.receive(lambda message: message[:2] == ("linx_process", "running") or _ended(message))
            outcome = started[1:] if _ended(started) else tty.attach(session, detach_key=None)
        else:
            outcome = P.wait(session)
    finally:
        session.stop()
    if outcome[0] == "error":
        print(f"linx-otp: {_describe_failure(options['argv'][0], outcome)}", file=sys.stderr)
    return exit_status(outcome)


class _OneLine(logging.Formatter):
    """A log record and its exception on one line each, without the traceback."""

    def formatException(self, exc_info: Any) -> str:  # noqa: N802 (logging's name)
        return f"linx-otp: {exc_info[1]}"


def _ended(message: Any) -> bool:
    from .process import TERMINAL_EVENTS

    return isinstance(message, tuple) and message[:1] == ("linx_process",) and message[1] in TERMINAL_EVENTS


def _describe_failure(program: str, outcome: tuple) -> str:
    """What a shell would say: ``PROGRAM: No such file or directory`` for a failed exec."""
    from .daemon.state import describe_exit

    match outcome:
        case ("error", number, "execve") if isinstance(number, int) and number > 0:
            return f"{program}: {os.strerror(number)}"
    return describe_exit(outcome)


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
