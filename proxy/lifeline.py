"""A child process's tie to the process that started it: it goes when its parent goes."""

from __future__ import annotations

import os
import signal

__all__ = ["tie_to_parent"]


def tie_to_parent(parent: int | None = None) -> bool:
    """Ask Linux to SIGTERM this process when its parent dies (even by SIGKILL). With
    `parent` (its pid), False if that parent is already gone: it died before the request,
    which then never fires, and the caller must exit rather than run as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return parent is None or os.getppid() == parent
