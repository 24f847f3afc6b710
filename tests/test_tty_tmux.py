"""tty.attach on a real terminal: tmux runs a script that attaches, and the test types into
it with send-keys and reads the screen with capture-pane. Needs tmux (scripts/system-deps.sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import needs_root, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")


class Tmux:
    """A private tmux server (its own socket, no user config) with one 80x24 window."""

    def __init__(self, directory: Path, command: list[str]) -> None:
        self.socket = str(directory / "tmux.sock")
        config = directory / "tmux.conf"
        config.write_text("set -g status off\nset -g remain-on-exit on\nset -g history-limit 5000\n")
        shell_command = " ".join(f"'{part}'" for part in command)
        self.run("-f", str(config), "new-session", "-d", "-s", "test", "-x", "80", "-y", "24", shell_command)

    def run(self, *arguments: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *arguments], capture_output=True, text=True, check=True
        ).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "test", "-S", "-100")

    def shows(self, text: str, timeout: float = 10.0) -> bool:
        return wait_until(lambda: text in self.screen(), timeout, interval=0.05)

    def type(self, *keys: str) -> None:
        self.run("send-keys", "-t", "test", *keys)

    def resize(self, columns: int, rows: int) -> None:
        self.run("resize-window", "-t", "test", "-x", str(columns), "-y", str(rows))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_running(tmp_path):
    servers = []

    def start(command: list[str]) -> Tmux:
        server = Tmux(tmp_path, command)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_attach_on_a_real_terminal(tmp_path, tmux_running):
    record = tmp_path / "record.json"
    terminal = tmux_running([sys.executable, str(ROOT / "tests" / "attach_driver.py"), str(record)])
    assert terminal.shows("inside$"), terminal.screen()
    terminal.type("echo hello-$((6*7))", "Enter")
    assert terminal.shows("hello-42"), terminal.screen()
    terminal.type("stty size", "Enter")
    assert terminal.shows("24 80"), terminal.screen()
    terminal.resize(100, 30)

    def size_reached_the_workload() -> bool:  # the workload's pty lives in the driver: ask the shell
        terminal.type("clear; stty size", "Enter")
        return terminal.shows("30 100", timeout=0.5)

    assert wait_until(size_reached_the_workload, 10), terminal.screen()
    terminal.type("C-p", "C-q")
    assert terminal.shows("driver: attach returned detached"), terminal.screen()
    assert wait_until(record.exists)
    result = json.loads(record.read_text())
    assert result["result"] == "detached" and result["stage"] == "running"
    assert result["before"] == result["after"]


@needs_root
def test_the_interactive_shell_example(tmux_running):
    terminal = tmux_running([sys.executable, str(ROOT / "examples" / "interactive_shell.py")])
    assert terminal.shows("linx#"), terminal.screen()
    terminal.type("echo pid=$$ procs: /proc/[0-9]*", "Enter")  # echo and the glob are the shell's own: no fork
    assert terminal.shows("pid=1 procs: /proc/1\n"), terminal.screen()
    terminal.type("echo host=$(hostname) links=$(grep -c : /proc/net/dev)", "Enter")
    assert terminal.shows("host=linx-shell links=1\n"), terminal.screen()  # only lo
    terminal.type("exit 3", "Enter")
    assert terminal.shows("attach returned: ('exited', 3)"), terminal.screen()


def test_the_borrow_and_return_example(tmux_running):
    terminal = tmux_running([sys.executable, str(ROOT / "examples" / "borrow_and_return.py")])
    assert terminal.shows("Ctrl-P Ctrl-Q hands it back"), terminal.screen()
    terminal.type("typed while borrowed", "Enter")
    assert terminal.shows("typed while borrowed\ntyped while borrowed"), terminal.screen()
    terminal.type("C-p", "C-q")
    assert terminal.shows("the service owns it again and saw: b'back with the service'"), terminal.screen()
