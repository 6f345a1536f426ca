"""``python -m dynbench.harness.worker``: run one job (JSON on stdin) in this fresh process."""

import sys

from dynbench.harness.executors import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
