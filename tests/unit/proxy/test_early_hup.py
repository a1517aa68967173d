"""A SIGHUP while `strangler serve` is still starting is kept for later, never fatal."""

from __future__ import annotations

import asyncio
import os
import signal

from proxy import serve
from proxy.earlyhup import hold_early_hup, take_early_hup


def test_a_sighup_during_start_up_reloads_once_the_proxy_is_up() -> None:
    before = signal.getsignal(signal.SIGHUP)
    loop = asyncio.new_event_loop()
    try:
        hold_early_hup()
        os.kill(os.getpid(), signal.SIGHUP)  # the default action would end this process
        reloads: list[int] = []
        serve._hup_handler(loop, lambda: reloads.append(1))
        assert reloads == [1] and not take_early_hup()
        loop.remove_signal_handler(signal.SIGHUP)
    finally:
        loop.close()
        signal.signal(signal.SIGHUP, before)
