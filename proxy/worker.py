"""`python -m proxy.worker CONFIG`: one data-plane worker under `strangler serve --workers N`."""

from __future__ import annotations

import sys

from proxy.serve import run_worker

if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1]))
