"""The README's commands and code, run as written, so that a stale section fails here.

How the README's blocks are read (the rules are also in a comment at the top of README.md):

- A ``console`` block is a terminal session, run in order in a scratch directory with ``linx-otp``
  on ``PATH``: each ``$ `` line is a command for ``bash``, the lines up to the next ``$ `` are its
  expected output, where ``...`` alone on a line stands for any number of lines and ``...`` inside
  a line for any text. A command ending in ``&`` runs in the background, and the command after
  it is retried until its output matches (a user looks again until the daemon is up); every
  background job must have ended with status 0 by the end of the block. A command whose output
  holds a key line (``^C``, ``^P^Q``) runs on a real terminal (tmux) and the key is pressed there
  once the lines above it have shown. ``--name NAME`` is given this run's own instance name.
- A ``toml`` block after ``<!-- file: NAME -->`` is written to NAME in that scratch directory.
- A ``python`` block runs as a script of its own; a line ``EXPRESSION  # VALUE`` whose comment
  is a Python literal asserts that the expression equals it. A block after
  ``<!-- excerpt: PATH -->`` must appear in that file word for word (the examples run in
  tests/test_examples.py) instead.
- A ``toml`` block is a valid tree file.
- A ``sh`` block is a synopsis: every ``linx-otp VERB`` in it must be run by a console block.

Also checked: ``.ci/run`` runs exactly the quick start's test command, every ``status --json``
the console blocks print follows the schema table, examples/linx-otp.service passes
``systemd-analyze verify`` and has the settings the systemd section names, and both
"Coming from supervisord" tables name only tree keys and verbs that exist (the verbs run above)."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from support import needs_root, run_scoped_name, wait_until

from linx_otp import readiness
from linx_otp.daemon import tree as Tree

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 30
KEYS = {"^C": ("C-c",), "^P^Q": ("C-p", "C-q")}
"""Key lines in a console block's output, and the tmux keys that press them."""
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


@dataclass
class Block:
    language: str
    text: str
    line: int  # where it starts in README.md, for messages
    tag: str | None  # the ``<!-- name: value -->`` comment just before it, if any


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, with the tag comment just before it."""
    blocks = []
    pattern = re.compile(r"(?:^<!-- ([^>\n]*?) -->\n)?^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
    source = README.read_text() if text is None else text
    for match in pattern.finditer(source):
        tag, language, body = match.groups()
        blocks.append(Block(language, body, source.count("\n", 0, match.start()) + 1, tag))
    return blocks


def section(title: str) -> str:
    """A README section's text, from its heading to the next heading."""
    text = README.read_text()
    start = text.index(f"\n### {title}\n") if f"\n### {title}\n" in text else text.index(f"\n## {title}\n")
    end = text.find("\n#", start + 1)
    return text[start : end if end != -1 else None]


# -- console blocks: parsing and matching -------------------------------------------------------------


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return bool(re.search(r"&\s*(#.*)?$", self.line)) and not self.line.rstrip().endswith("&&")

    @property
    def keys(self) -> list[str]:
        return [line for line in self.expected if line in KEYS]


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:]))
        else:
            assert commands, f"README line {block.line}: output before the first command: {line!r}"
            commands[-1].expected.append(line)
    return commands


def line_pattern(expected: str) -> re.Pattern:
    """An expected output line as a pattern: ``...`` is any text; runs of spaces are at least one
    space (a table's column widths follow its content)."""
    parts = [re.sub(r"\\ (\\ )+", r" +", re.escape(part)) for part in expected.split("...")]
    return re.compile(".*".join(parts) + r"\s*")


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether the output lines ``actual`` are ``expected``, with ``...`` lines as any number of lines."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "...":
        return any(matches(rest, actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and line_pattern(head).fullmatch(actual[0]) is not None and matches(rest, actual[1:])


def test_the_output_matcher():
    assert matches(["a", "...", "c"], ["a", "b", "b", "c"]) and matches(["...", "x ... y"], ["x 12 y"])
    assert matches(["ID   KIND"], ["ID  KIND"]) and not matches(["ID   KIND"], ["IDKIND"])
    assert not matches(["a"], ["a", "b"]) and not matches(["a", "..."], []) and matches(["..."], [])


# -- the session a console block runs in ----------------------------------------------------------


class Terminal:
    """A scratch directory with ``linx-otp`` (this tree's) on PATH, as after the quick start."""

    def __init__(self, directory: Path, instance: str) -> None:
        self.directory = directory
        self.instance = instance
        tools = directory / ".bin"
        tools.mkdir()
        command = tools / "linx-otp"
        command.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m linx_otp "$@"\n')
        command.chmod(0o755)
        self.environment = dict(os.environ, PATH=f"{tools}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
        self.environment.pop("LINX_OTP_CONTROL", None)
        self.background: list[tuple[str, subprocess.Popen]] = []
        self.statuses: list[dict] = []

    def own(self, line: str) -> str:
        """The command with this run's instance name instead of the README's."""
        return re.sub(r"--name \S+", f"--name {self.instance}", line)

    def run(self, command: Command, retry: bool) -> None:
        line = self.own(command.line)
        if command.background:
            job = subprocess.Popen(
                ["bash", "-c", re.sub(r"&\s*(#.*)?$", "", line)], cwd=self.directory, env=self.environment
            )
            self.background.append((line, job))
        elif command.keys:
            self.run_on_a_terminal(line, command)
        else:
            outcome: list[subprocess.CompletedProcess] = []

            def ran_as_shown() -> bool:
                outcome[:] = [
                    subprocess.run(
                        ["bash", "-c", line],
                        cwd=self.directory,
                        env=self.environment,
                        capture_output=True,
                        text=True,
                        timeout=TIMEOUT,
                    )
                ]
                return outcome[0].returncode == 0 and matches(command.expected, outcome[0].stdout.splitlines())

            assert wait_until(ran_as_shown, TIMEOUT if retry else 0, interval=0.2), (
                f"$ {line}\nexit {outcome[0].returncode}\nexpected:\n"
                + "\n".join(command.expected)
                + f"\nstdout:\n{outcome[0].stdout}\nstderr:\n{outcome[0].stderr}"
            )
            if re.search(r"\bstatus\b.*--json", line):
                self.statuses.append(json.loads(outcome[0].stdout))

    def run_on_a_terminal(self, line: str, command: Command) -> None:
        """On a real terminal: wait for the lines above each key line, press it, then the rest.
        ``logs -f`` must also have shown a line written after it started before a key is pressed."""
        from test_tty_tmux import Tmux

        started = datetime.now().astimezone()
        follows = re.search(r"\blogs\b.*(-f|--follow)", line) is not None
        environment = " ".join(f"{name}={shlex.quote(self.environment[name])}" for name in ("PATH", "PYTHONPATH"))
        script = self.directory / ".terminal.sh"  # tmux's command is quoted simply: the line goes in a file
        script.write_text(f"cd {shlex.quote(str(self.directory))}\nexport {environment}\n{line}\necho readme-exit=$?\n")
        terminal = Tmux(self.directory, ["bash", str(script)])

        def shown_so_far(before: list[str]) -> bool:
            rows = self.screen(terminal)
            times = [datetime.fromisoformat(found.group()) for row in rows if (found := STAMP.match(row))]
            return matches([*before, "..."], rows) and (not follows or any(time > started for time in times))

        try:
            for index, expected in enumerate(command.expected):
                if expected in KEYS:
                    before = [row for row in command.expected[:index] if row not in KEYS]
                    assert wait_until(lambda: shown_so_far(before), TIMEOUT, 0.1), (  # noqa: B023 (called at once)
                        f"$ {line}\nexpected before {expected}"
                        + " (and a line newer than the command)" * follows
                        + ":\n"
                        + "\n".join(before)
                        + "\nscreen:\n"
                        + terminal.screen()
                    )
                    terminal.type(*KEYS[expected])
            assert terminal.shows("readme-exit=", TIMEOUT), terminal.screen()
            screen = [row for row in self.screen(terminal) if row not in KEYS]
            expected = [row for row in command.expected if row not in KEYS]
            assert screen[-1] == "readme-exit=0" and matches(expected, screen[:-1]), (
                f"$ {line}\nexpected:\n" + "\n".join(command.expected) + "\nscreen:\n" + terminal.screen()
            )
        finally:
            terminal.close()

    @staticmethod
    def screen(terminal) -> list[str]:
        rows = [row.rstrip() for row in terminal.screen().splitlines() if not row.startswith("Pane is dead")]
        while rows and not rows[-1]:
            rows.pop()
        return [row.replace("^C", "") for row in rows if row.replace("^C", "") or not row]  # the key's echo

    def finish(self) -> None:
        """Every background job ends, with status 0 (stopped as the block says, or stopped here)."""
        for line, job in self.background:
            try:
                code = job.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                job.terminate()
                job.wait(TIMEOUT)
                raise AssertionError(f"$ {line} & was still running at the end of its block") from None
            assert code == 0, f"$ {line} & ended with status {code}"

    def stop(self) -> None:
        for _, job in self.background:
            if job.poll() is None:
                subprocess.run(["bash", "-c", f"linx-otp --name {self.instance} shutdown"], env=self.environment)
                try:
                    job.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    job.kill()
                    job.wait()


CONSOLE_BLOCKS = [block for block in readme_blocks() if block.language == "console"]


@needs_root
@pytest.mark.timeout(300)  # a dozen commands, each a Python start-up: a minute or more on a loaded machine
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux: run scripts/system-deps.sh")
@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=[f"line {block.line}" for block in CONSOLE_BLOCKS])
def test_a_console_session_runs_as_shown(block, tmp_path):
    for tagged in readme_blocks():
        if tagged.tag and tagged.tag.startswith("file: "):
            (tmp_path / tagged.tag.removeprefix("file: ")).write_text(tagged.text)
    terminal = Terminal(tmp_path, run_scoped_name("readme"))
    try:
        retry = False
        for command in console_commands(block):
            terminal.run(command, retry)
            retry = command.background
        terminal.finish()
    finally:
        terminal.stop()
    keys = readme_status_keys()
    assert terminal.statuses, "a console block shows status --json: its rows are checked against the schema"
    for reply in terminal.statuses:
        assert reply["ok"] is True
        for row in reply["result"]:
            assert list(row) == list(keys), (row, keys)
            for key, value in row.items():
                assert any(
                    isinstance(value, kind) and not (kind is int and isinstance(value, bool)) for kind in keys[key]
                ), f"{key}: {value!r} is not {keys[key]}"


def readme_status_keys() -> dict[str, tuple[type, ...]]:
    """The status schema table of "Machine-readable replies": each key and the types it may have."""
    types = {"string": (str,), "int": (int,), "bool": (bool,), "number": (int, float), "null": (type(None),)}
    table = re.findall(r"^\| `(\w+)` \| ([a-z ]+) \|", section("Machine-readable replies: `--json`"), re.MULTILINE)
    assert table, "the status schema table is missing"
    return {key: sum((types[word] for word in kinds.split(" or ")), ()) for key, kinds in table}


def verbs_run() -> set[str]:
    """The ``linx-otp`` verbs the console blocks run."""
    return {
        verb
        for block in CONSOLE_BLOCKS
        for command in console_commands(block)
        for verb in re.findall(r"\blinx-otp (?:--name \S+ )?([a-z]+)", command.line)
    }


def test_every_verb_of_the_synopsis_is_run_by_a_console_block():
    run = verbs_run()
    synopsis = {
        alternative.removeprefix("linx-otp ").split()[0]
        for block in readme_blocks()
        if block.language == "sh"
        for line in block.text.splitlines()
        if line.startswith("linx-otp ")
        for alternative in re.sub(r"--name \S+ ", "", line.split("  #")[0]).split(" | ")
    }
    assert {"run", "status", "logs", "attach", "reload", "restart", "stop", "start", "shutdown"} <= synopsis
    assert synopsis - run <= {"spawn"}, f"verbs in the synopsis no console block runs: {synopsis - run - {'spawn'}}"


# -- python blocks ------------------------------------------------------------------------------


def checked(source: str) -> str:
    """``EXPRESSION  # VALUE`` lines (VALUE a literal) become ``assert EXPRESSION == VALUE``."""
    lines = []
    for line in source.splitlines():
        code, _, comment = line.partition("  # ")
        try:
            value = ast.literal_eval(comment.strip())
            ast.parse(code.strip(), mode="eval")
        except (ValueError, SyntaxError):
            lines.append(line)
            continue
        indent = code[: len(code) - len(code.lstrip())]
        lines.append(f"{indent}assert ({code.strip()}) == {value!r}, {code.strip()!r}")
    return "\n".join(lines) + "\n"


def test_value_comments_become_assertions():
    assert (
        checked("x = 1\nx + 1  # 2\ny  # not a literal\n")
        == "x = 1\nassert (x + 1) == 2, 'x + 1'\ny  # not a literal\n"
    )


def is_excerpt(part: str, whole: str) -> bool:
    r"""Every line of ``part`` is a line of ``whole``, in the same order (comments and blank lines
    of ``whole`` may be left out).

    >>> is_excerpt("a\nc", "a\n# b\nc\n"), is_excerpt("c\na", "a\nc\n")
    (True, False)
    """
    remaining = iter(whole.splitlines())
    return all(any(line == candidate for candidate in remaining) for line in part.splitlines())


PYTHON_BLOCKS = [block for block in readme_blocks() if block.language == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"line {block.line}" for block in PYTHON_BLOCKS])
def test_a_python_block_runs_or_is_an_example_word_for_word(block, tmp_path):
    if block.tag and block.tag.startswith("excerpt: "):
        example = ROOT / block.tag.removeprefix("excerpt: ")
        assert is_excerpt(block.text, example.read_text()), f"README line {block.line} is no longer in {example}"
        return
    if os.geteuid() != 0:
        pytest.skip("the README's examples make namespaces: run the tests as root (CI does)")
    script = tmp_path / "block.py"
    script.write_text(checked(block.text))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ)
    )
    assert result.returncode == 0, f"README line {block.line}:\n{script.read_text()}\n{result.stdout}{result.stderr}"


# -- quick start, systemd, supervisord ----------------------------------------------------------------


def test_ci_runs_exactly_the_quick_start_test_command():
    (block,) = [block for block in readme_blocks() if block.language == "sh" and "pytest" in block.text]
    (command,) = [line.split("  #")[0].strip() for line in block.text.splitlines() if "pytest" in line]
    steps = (ROOT / ".ci" / "run").read_text().splitlines()
    assert steps[-1] == command, f".ci/run ends with {steps[-1]!r}, the README says {command!r}"


def test_the_systemd_unit_verifies_and_has_what_the_section_says(tmp_path):
    unit = (ROOT / "examples" / "linx-otp.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z]\w*=", line))
    for claim in re.findall(r"`([A-Z][a-z]\w+)=([^`]*)`", section("Running it under systemd")):
        name, value = claim
        assert name in settings, f"the section names {name}= and the unit has none"
        if value:
            assert settings[name] == value, (name, settings[name], value)
    assert settings["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]  # "ExecReload= sending SIGHUP"
    program, *arguments = shlex.split(settings["ExecStart"])
    assert program.endswith("/linx-otp") and arguments[arguments.index("run") - 2 : arguments.index("run")] == [
        "--name",
        "default",
    ]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing: the unit's keys were checked, not the unit")
    installed = tmp_path / "linx-otp.service"  # its ExecStart must exist for verify: this tree's command
    command = tmp_path / "linx-otp"
    command.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m linx_otp "$@"\n')
    command.chmod(0o755)
    installed.write_text(unit.replace(f"ExecStart={program}", f"ExecStart={command}"))
    result = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "linx-otp.service" not in result.stderr, result.stderr  # unknown keys warn


def supervisord_tables() -> tuple[list[list[str]], list[list[str]]]:
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section("Coming from supervisord").splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]
    split = next(index for index, row in enumerate(rows) if row[0] == "supervisorctl")
    return rows[1:split], rows[split + 1 :]


def test_the_supervisord_tables_name_tree_keys_and_verbs_that_exist():
    keys, commands = supervisord_tables()
    known = Tree.WORKLOAD_KEYS | Tree.NESTED_KEYS | Tree.LOG_KEYS | set(readiness.KEYS) | {"child"}
    named = {
        word
        for _, ours in keys
        for quoted in re.findall(r"`([^`]*)`", ours)
        for word in re.findall(
            r"(?:^|[{,]\s*|\[supervisor\] )([a-z_]+)(?=\s*(?:[=,}]|$))", quoted.replace("[child.", "[child ")
        )
    }
    named |= {"setup"} if any("[child.setup]" in ours for _, ours in keys) else set()
    assert {"argv", "restart", "shutdown", "log", "stdio", "restart_delay", "max_restarts", "setup"} <= named, named
    assert named <= known, f"not tree keys: {named - known}"
    verbs = {
        match
        for _, ours in commands
        for quoted in re.findall(r"`([^`]*)`", ours)
        for match in re.findall(r"^(?:linx-otp )?([a-z]+)", quoted)
    }
    run = verbs_run()
    assert verbs and verbs <= run, f"verbs of the supervisorctl table that no console block runs: {verbs - run}"


def test_the_readme_stands_alone():
    text = README.read_text()
    assert "../shared" not in text and "SPEC" not in text
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for name in tracked if tracked else []:  # a clone: nothing points outside it (a tarball has no git)
        if name.endswith((".py", ".md", ".c", ".h", ".toml", ".service")) and name != "tests/test_readme.py":
            found = re.search(r"\.\./shared|\bSPEC\b|reference §", (ROOT / name).read_text())
            assert not found, f"{name} cites {found and found.group()!r}, which a clone does not have"
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not re.match(r"https?://", target):
            assert (ROOT / target).exists(), f"the README links {target}, which is not in the repository"
    for path in re.findall(r"`((?:examples|benchmarks|scripts|docs|tests|native|linx_otp)/[\w./-]+)`", text):
        assert (ROOT / path).exists() or (ROOT / path.rstrip("/")).exists(), f"the README names {path}, not here"


TOML_BLOCKS = [block for block in readme_blocks() if block.language == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[f"line {block.line}" for block in TOML_BLOCKS])
def test_a_toml_block_is_a_valid_tree_file(block):
    Tree.parse_text(block.text, f"README.md line {block.line}")


def test_the_tagged_files_exist():
    for block in readme_blocks():
        if block.tag:
            kind, _, value = block.tag.partition(": ")
            assert kind in {"file", "excerpt"}, f"README line {block.line}: unknown tag {block.tag!r}"
            if kind == "excerpt":
                assert (ROOT / value).is_file(), value
            else:
                assert re.fullmatch(r"[\w.-]+", value), value
