"""Collection for the whole repository. The old import paths of the checkpoint modules
(``linx_otp/netlink.py`` and its siblings) are aliases of ``linx_otp/checkpoint/*``: their
doctests are collected once, from the checkpoint package, not again through the alias."""

from pathlib import Path

PACKAGE = Path(__file__).parent / "linx_otp"

collect_ignore = [
    str(alias.relative_to(PACKAGE.parent))
    for alias in PACKAGE.glob("*.py")
    if (PACKAGE / "checkpoint" / alias.name).exists()
]
