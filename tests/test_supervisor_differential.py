"""linx_otp's supervisor against Erlang/OTP's own, scenario by scenario (issue 12).

A seeded generator writes random scenarios: a strategy, a restart intensity, children of
every restart type, and steps (a child stops itself with a reason of each class, several
stop while the supervisor is busy so their exits queue up together, and the dynamic verbs).
Each scenario runs on Erlang's ``supervisor`` (tests/erlang/supervisor_oracle.erl, one VM for
all scenarios, gen_server children) and on ``linx_otp.supervisor`` (``linx_otp.Actor``
children); after every step both sides print the same line: the step's result, the children's
starts and ends in order, ``which_children``, ``count_children``, or the supervisor's exit
reason. The lines must be equal. Observation is synchronous: no sleeps, a window of an hour.

The one difference kept on purpose (README): OTP's ``which_children`` lists the newest child
first (its internal termination order); README, "Supervision" says start order. ``linx_order`` turns OTP's
line into start order, and a test below shows the raw difference.

Long run: ``LINX_OTP_DIFFERENTIAL_SCENARIOS=10000 python -m pytest -s tests/test_supervisor_differential.py``
(prints the count and the agreement).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import linx_otp
from linx_otp import supervisor as S
from linx_otp.actor import exit_actor
from linx_otp.errors import LinxError

ORACLE_SOURCE = Path(__file__).parent / "erlang" / "supervisor_oracle.erl"
SEED = 20261129
SCENARIOS = int(os.environ.get("LINX_OTP_DIFFERENTIAL_SCENARIOS", "500"))
WINDOW_SECONDS = 3600  # so large that no restart ever leaves the window during a scenario

RESTART_TYPES = ("permanent", "transient", "temporary")
REASON_CLASSES = ("normal", "shutdown", "shutdown_tuple", "abnormal")
REASONS = {"normal": "normal", "shutdown": "shutdown", "shutdown_tuple": ("shutdown", "planned")}
REASONS["abnormal"] = ("crash", "planned")
DYNAMIC_VERBS = ("start_child", "terminate_child", "restart_child", "delete_child")
MAX_RESTARTS_CHOICES = (0, 1, 2, 3, 5, 10, 100)


# -- the scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    strategy: str
    max_restarts: int
    restart_types: dict[str, str]  # every id the scenario uses -> its restart type
    initial: tuple[str, ...]  # the children the supervisor starts with, in start order
    steps: tuple[tuple, ...] = field(default=())

    def as_erlang(self) -> str:
        """The scenario as one line of Erlang term text."""
        children = ", ".join(f"{{{child}, {self.restart_types[child]}}}" for child in self.initial)
        return f"{{scenario, {self.strategy}, {self.max_restarts}, [{children}], [{', '.join(map(_step_term, self.steps))}]}}.\n"


def _step_term(step: tuple) -> str:
    match step:
        case ("exit_many", hold, exits):
            return f"{{exit_many, {hold}, [{', '.join(f'{{{child}, {reason}}}' for child, reason in exits)}]}}"
        case _:
            return "{" + ", ".join(step) + "}"


def generate(seed: int, count: int) -> list[Scenario]:
    """``count`` scenarios from ``seed``, the same ones on every machine."""
    chooser = random.Random(seed)
    return [_scenario(chooser) for _ in range(count)]


def _scenario(chooser: random.Random) -> Scenario:
    initial_count = chooser.randint(1, 5)
    ids = [f"c{number}" for number in range(1, initial_count + 3)]  # two more for start_child
    restart_types = {child: chooser.choice(RESTART_TYPES) for child in ids}
    steps: list[tuple] = []
    for _ in range(chooser.randint(3, 14)):
        kind = chooser.choices(("exit", "exit_many", "dynamic"), weights=(6, 1, 3))[0]
        if kind == "exit":
            steps.append(("exit", chooser.choice(ids), chooser.choice(REASON_CLASSES)))
        elif kind == "exit_many":
            hold, *others = chooser.sample(ids, min(len(ids), chooser.randint(2, 4)))
            steps.append(("exit_many", hold, tuple((child, chooser.choice(REASON_CLASSES)) for child in others)))
        else:
            verb, child = chooser.choice(DYNAMIC_VERBS), chooser.choice(ids)
            steps.append((verb, child, restart_types[child]) if verb == "start_child" else (verb, child))
    return Scenario(
        strategy=chooser.choice(S.STRATEGIES),
        max_restarts=chooser.choice(MAX_RESTARTS_CHOICES),
        restart_types=restart_types,
        initial=tuple(ids[:initial_count]),
        steps=tuple(steps),
    )


# -- the linx_otp side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """Arm a worker: asked to shut down, it tells ``holding`` and waits for ``release``."""

    holding: linx_otp.Mailbox
    release: threading.Event


class Worker(linx_otp.Actor):
    """The twin of the oracle's gen_server: reports its start and its end to ``observer``."""

    def __init__(self, child_id: str, observer: linx_otp.Mailbox) -> None:
        super().__init__()
        self.child_id = child_id
        self.observer = observer
        self.hold: Hold | None = None

    def on_start(self) -> None:
        self.observer.tell(("started", self.child_id))

    def on_receive(self, message: Any) -> Any:
        match message:
            case Hold():
                self.hold = message
        return None

    def terminate(self, reason: Any) -> None:
        if self.hold is not None:
            self.hold.holding.tell(("holding", self.child_id))
            self.hold.release.wait()
        self.observer.tell(("ended", self.child_id))


class LinxRun:
    """One scenario on ``linx_otp.supervisor``, printing the oracle's lines."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.events = linx_otp.Mailbox()
        self.control = linx_otp.Mailbox()
        self.lines: list[str] = []

    def spec(self, child: str) -> linx_otp.ChildSpec:
        restart = self.scenario.restart_types[child]
        return Worker.child_spec(child, self.events, id=child, restart=restart, shutdown=None)

    def run(self) -> list[str]:
        scenario = self.scenario
        self.supervisor = S.start(
            [self.spec(child) for child in scenario.initial],
            strategy=scenario.strategy,
            max_restarts=scenario.max_restarts,
            max_seconds=WINDOW_SECONDS,
        )
        linx_otp.monitor(self.supervisor, self.control)
        if not self.observe("start", "ok"):
            return self.lines
        for number, step in enumerate(scenario.steps, 1):
            if not self.observe(str(number), self.step(step)):
                return self.lines
        S.stop(self.supervisor)
        reason = self.control.receive(("DOWN", self.supervisor), timeout=10)[2]
        self.lines.append(f"stop ok | {self.drain_events()} | exit:{reason}")
        return self.lines

    def running(self) -> dict[str, Any]:
        return {child: ref for child, ref, _ in S.which_children(self.supervisor) if ref is not None}

    def step(self, step: tuple) -> str:
        match step:
            case ("exit", child, reason):
                ref = self.running().get(child)
                if ref is None:
                    return "not_running"
                self.stop_worker(ref, reason)
                return "ok"
            case ("exit_many", hold, exits):
                return self.exit_many(hold, exits)
            case ("start_child", child, _):
                return self.verb(S.start_child, self.spec(child))
            case (verb, child):
                return self.verb(getattr(S, verb), child)
        raise AssertionError(f"unknown step {step!r}")

    def stop_worker(self, ref: Any, reason_class: str) -> None:
        """The worker ends itself with a reason of the class; returns once it is gone (its
        DOWN reaches the supervisor first, so the next call is served after it)."""
        gone = linx_otp.Mailbox()
        linx_otp.monitor(ref, gone)
        exit_actor(ref, REASONS[reason_class])
        gone.receive(("DOWN", ref), timeout=10)

    def exit_many(self, hold: str, exits: tuple) -> str:
        running = self.running()
        if hold not in running:
            return "not_running"
        release = threading.Event()
        running[hold].ask(Hold(self.control, release))
        terminator = threading.Thread(target=S.terminate_child, args=(self.supervisor, hold))
        terminator.start()
        self.control.receive(("holding", hold), timeout=10)
        results = []
        for child, reason_class in exits:
            ref = running.get(child)
            if child == hold or ref is None:
                results.append("not_running")
                continue
            self.stop_worker(ref, reason_class)
            results.append("ok")
        release.set()
        terminator.join(10)
        return ",".join(results)

    def verb(self, function: Any, argument: Any) -> str:
        try:
            function(self.supervisor, argument)
        except LinxError as error:
            reason = error.reason[0] if isinstance(error.reason, tuple) else error.reason
            return f"error:{reason}"
        return "ok"

    def observe(self, label: str, result: str) -> bool:
        try:
            children = S.which_children(self.supervisor)
            counts = S.count_children(self.supervisor)
        except LinxError as error:
            assert error.reason == "no_process", error
            reason = self.control.receive(("DOWN", self.supervisor), timeout=10)[2]
            self.lines.append(f"{label} {result} | {self.drain_events()} | exit:{reason}")
            return False
        listing = " ".join(f"{child}={int(ref is not None)}" for child, ref, _ in children)
        totals = ",".join(str(counts[key]) for key in ("specs", "active", "supervisors", "workers"))
        self.lines.append(f"{label} {result} | {self.drain_events()} | {listing} | {totals}")
        return True

    def drain_events(self) -> str:
        return " ".join(f"{kind}:{child}" for kind, child in self.events.flush())


def run_on_linx(scenario: Scenario) -> list[str]:
    return LinxRun(scenario).run()


# -- the Erlang/OTP side ---------------------------------------------------------------------------


class Oracle:
    """One Erlang VM running supervisor_oracle.erl; ``run`` sends a scenario, returns its lines."""

    def __init__(self) -> None:
        load = (
            f'F="{ORACLE_SOURCE}", {{ok,M,B}}=compile:file(F,[binary,report,warnings_as_errors]), '
            "{module,M}=code:load_binary(M,F,B), M:main()."
        )
        self.vm = subprocess.Popen(
            ["erl", "-noshell", "-eval", load], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, scenario: Scenario) -> list[str]:
        assert self.vm.stdin is not None and self.vm.stdout is not None
        self.vm.stdin.write(scenario.as_erlang())
        self.vm.stdin.flush()
        lines = []
        while (line := self.vm.stdout.readline()) != "end\n":
            assert line, f"the Erlang VM ended (exit status {self.vm.poll()}) on {scenario}"
            lines.append(line.rstrip("\n"))
        return lines

    def close(self) -> None:
        assert self.vm.stdin is not None
        self.vm.stdin.close()
        assert self.vm.wait(10) == 0

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exception: object) -> None:
        if exception[0] is None:
            self.close()
        else:
            self.vm.kill()
            self.vm.wait()


def linx_order(otp_line: str) -> str:
    """The documented difference: OTP's ``which_children`` lists the newest child first;
    linx_otp lists children in start order (README, "Supervision"). Everything else is compared as is."""
    fields = otp_line.split(" | ")
    if len(fields) == 4:
        fields[2] = " ".join(reversed(fields[2].split()))
    return " | ".join(fields)


def compare(scenarios: list[Scenario]) -> list[tuple[Scenario, list[str], list[str]]]:
    """Run every scenario on both: (scenario, OTP's lines in linx_otp's order, linx_otp's lines)."""
    with Oracle() as oracle:
        return [
            (scenario, [linx_order(line) for line in oracle.run(scenario)], run_on_linx(scenario))
            for scenario in scenarios
        ]


def coverage(scenario: Scenario, lines: list[str]) -> set[tuple]:
    """What the scenario exercised, read from the reference's lines: (strategy, restart type,
    reason class) of every exit that happened, and every dynamic verb that succeeded."""
    results = {line.split(" | ")[0].split(" ", 1)[0]: line.split(" | ")[0].split(" ", 1)[1] for line in lines}
    exercised: set[tuple] = set()
    for number, step in enumerate(scenario.steps, 1):
        result = results.get(str(number))
        if result is None:
            break
        match step:
            case ("exit", child, reason) if result == "ok":
                exercised.add((scenario.strategy, scenario.restart_types[child], reason))
            case ("exit_many", _, exits):
                done = [exit for exit, outcome in zip(exits, result.split(","), strict=False) if outcome == "ok"]
                exercised.update((scenario.strategy, scenario.restart_types[child], reason) for child, reason in done)
                if len(done) >= 2:
                    exercised.add(("queued exits", scenario.strategy))
            case (verb, *_) if result == "ok":
                exercised.add((verb,))
        if any(part.startswith("exit:") for part in lines[number].split(" | ")):
            exercised.add(("gave up", scenario.strategy))
    return exercised


EXPECTED_COVERAGE = (
    {(strategy, restart, reason) for strategy in S.STRATEGIES for restart in RESTART_TYPES for reason in REASON_CLASSES}
    | {(verb,) for verb in DYNAMIC_VERBS}
    | {("queued exits", strategy) for strategy in S.STRATEGIES}
    | {("gave up", strategy) for strategy in S.STRATEGIES}
)


# -- the tests ------------------------------------------------------------------------------------

needs_erlang = pytest.mark.skipif(shutil.which("erl") is None, reason="erl not installed (scripts/system-deps.sh)")


def test_the_generator_is_seeded_and_writes_every_kind_of_step():
    assert generate(SEED, 50) == generate(SEED, 50)
    scenarios = generate(SEED, SCENARIOS)
    steps = [step for scenario in scenarios for step in scenario.steps]
    written = {
        (scenario.strategy, scenario.restart_types[step[1]], step[2])
        for scenario in scenarios
        for step in scenario.steps
        if step[0] == "exit"
    }
    assert written == {(s, r, c) for s in S.STRATEGIES for r in RESTART_TYPES for c in REASON_CLASSES}
    assert {step[0] for step in steps} == {"exit", "exit_many", *DYNAMIC_VERBS}
    assert {scenario.max_restarts for scenario in scenarios} == set(MAX_RESTARTS_CHOICES)


@needs_erlang
def test_otp_lists_the_newest_child_first_and_linx_otp_in_start_order():
    """The one kept difference, seen on both: ``linx_order`` is what makes them equal."""
    scenario = Scenario(
        "one_for_one", 3, {"c1": "permanent", "c2": "permanent"}, ("c1",), (("start_child", "c2", "permanent"),)
    )
    with Oracle() as oracle:
        otp = oracle.run(scenario)
    linx = run_on_linx(scenario)
    assert otp[1] == "1 ok | started:c2 | c2=1 c1=1 | 2,2,0,2"
    assert linx[1] == "1 ok | started:c2 | c1=1 c2=1 | 2,2,0,2"
    assert [linx_order(line) for line in otp] == linx


@needs_erlang
def test_a_temporary_child_stopped_by_a_sibling_is_removed_on_both():
    scenario = Scenario(
        "rest_for_one",
        3,
        {"c1": "permanent", "c2": "temporary", "c3": "transient"},
        ("c1", "c2", "c3"),
        (("exit", "c1", "abnormal"),),
    )
    with Oracle() as oracle:
        otp = [linx_order(line) for line in oracle.run(scenario)]
    assert otp[1] == "1 ok | ended:c1 ended:c3 ended:c2 started:c1 started:c3 | c1=1 c3=1 | 2,2,0,2"
    assert run_on_linx(scenario) == otp


@needs_erlang
@pytest.mark.timeout(max(60, SCENARIOS // 5))
def test_linx_otp_supervisor_agrees_with_erlang_otp():
    scenarios = generate(SEED, SCENARIOS)
    started = time.monotonic()
    runs = compare(scenarios)
    disagreements = [run for run in runs if run[1] != run[2]]
    print(report(runs, time.monotonic() - started))
    assert not disagreements, f"{len(disagreements)} of {len(scenarios)} scenarios differ"
    exercised = set().union(*(coverage(scenario, expected) for scenario, expected, _ in runs))
    assert EXPECTED_COVERAGE <= exercised, f"not exercised: {sorted(EXPECTED_COVERAGE - exercised)}"


def report(runs: list[tuple[Scenario, list[str], list[str]]], elapsed: float) -> str:
    """The agreement, and the first differences side by side."""
    disagreements = [run for run in runs if run[1] != run[2]]
    agreed = len(runs) - len(disagreements)
    lines = [
        f"{agreed}/{len(runs)} scenarios agree with Erlang/OTP ({100 * agreed / len(runs):.2f}%), seed {SEED}, {elapsed:.1f} s"
    ]
    for scenario, expected, seen in disagreements[:3]:
        lines += [scenario.as_erlang().rstrip(), "OTP:", *expected, "linx_otp:", *seen]
    return "\n".join(lines)
