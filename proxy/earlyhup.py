"""A SIGHUP that comes while a serving process starts: noted, then a reload once it is up.

Import-light (only `signal`) so the CLI can hold it before its own imports (~0.5 s).
"""

from __future__ import annotations

import signal

__all__ = ["hold_early_hup", "take_early_hup"]

_EARLY_HUP: list[bool] = []  # a SIGHUP came before the loop's handler was installed


def hold_early_hup() -> None:
    """From here on a SIGHUP is noted, not fatal (its default, exit 129): the reload runs
    once the proxy is up (`take_early_hup`). A worker is spawned with SIGHUP blocked
    (`_Workers.spawn`); one that came before this call is delivered now, to the handler."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _EARLY_HUP.append(True))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def take_early_hup() -> bool:
    """Whether a SIGHUP was held since `hold_early_hup` (then forgotten: one reload for all)."""
    held = bool(_EARLY_HUP)
    _EARLY_HUP.clear()
    return held
