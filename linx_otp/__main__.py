"""``python -m linx_otp``: the ``linx-otp`` command."""

import sys

from .cli import main

sys.exit(main())
