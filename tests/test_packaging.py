"""`pip install .` (with its usual build isolation) builds the agent into the package, and the package runs the agent it ships
(or the one LINX_OTP_AGENT names)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import linx_otp
from linx_otp import process as P

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_ships_an_executable_agent_that_sessions_use(tmp_path, monkeypatch):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("linx_otp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "linx_otp/py.typed" in names
        modules = {str(path.relative_to(ROOT)) for path in (ROOT / "linx_otp").rglob("*.py")}
        assert modules <= set(names), f"modules missing from the wheel: {sorted(modules - set(names))}"
        assert "linx_otp/trees/demo.toml" in names, "linx-otp run's default tree ships in the wheel"
        entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        assert "linx-otp = linx_otp.cli:main" in archive.read(entry_points).decode()
        member = archive.getinfo("linx_otp/_bin/linx-agent")
        assert (member.external_attr >> 16) & 0o111, "the agent must be installed executable"
        agent = tmp_path / "linx-agent-from-wheel"
        agent.write_bytes(archive.read(member))
    agent.chmod(0o755)

    monkeypatch.setenv("LINX_OTP_AGENT", str(agent))
    session = P.spawn(argv=["/bin/sleep", "60"], owner=linx_otp.Mailbox())
    workload = wait_for_host_pid(session)
    agent_pid = int(Path(f"/proc/{workload}/stat").read_text().rsplit(")", 1)[1].split()[1])
    # agents run from a sealed in-memory copy of the file (linx_otp/agent_image.py)
    assert os.readlink(f"/proc/{agent_pid}/exe") == f"/memfd:{agent.name} (deleted)", "the override is the agent"
    assert Path(f"/proc/{agent_pid}/exe").read_bytes() == agent.read_bytes()
    P.abort(session)
    assert P.wait(session) == ("aborted",)


def wait_for_host_pid(session) -> int:
    from support import wait_until

    assert wait_until(lambda: P.info(session).host_pid is not None)
    return P.host_pid(session)
