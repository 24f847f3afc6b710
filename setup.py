"""Builds the native agent (native/, with the system C compiler via make) into
linx_otp/_bin/linx-agent, for both `pip install .` and `pip install -e .`."""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()


class BuildWithAgent(build_py):
    def run(self):
        super().run()
        # Editable installs run the package from the source tree; others from build_lib.
        package = ROOT / "linx_otp" if self.editable_mode else Path(self.build_lib).resolve() / "linx_otp"
        target = package / "_bin" / "linx-agent"
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["make", "-C", str(ROOT / "native"), f"OUT={target}"], check=True)


setup(cmdclass={"build_py": BuildWithAgent})
