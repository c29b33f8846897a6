"""``python -m labkit``: the same as the ``labkit`` console script."""

import sys

from labkit.cli import main

sys.exit(main())
