"""``python -m dynbench.cli``: the same as ``bench``."""

import sys

from dynbench.cli import main

sys.exit(main())
