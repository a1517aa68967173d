"""`python -m proxy.worker CONFIG SUPERVISOR_PID [SLOT]`: one data-plane worker under
`strangler serve --workers N`; SLOT (1..N, given when N > 1) names its capture file."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from proxy.lifeline import tie_to_parent

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    """Tie the worker to its supervisor first, then import and run it."""
    config_path, supervisor = argv[0], int(argv[1])
    slot = int(argv[2]) if len(argv) > 2 else None
    if not tie_to_parent(supervisor):
        return 1  # the supervisor died while this worker was being started
    from proxy.serve import run_worker  # ~0.3 s of imports: after the tie

    return run_worker(config_path, slot)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
