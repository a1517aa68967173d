"""How the `serve --workers` supervisor hears each worker's answer to a reload: the real
heartbeat pipe (Pulse, Heartbeat) and the real `_Workers.reload_all`, with a worker that
answers from the test."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from proxy import serve
from proxy.lifeline import Heartbeat, Pulse, ReloadAnswer
from proxy.serve import _Workers
from proxy.settings import loads


class _Worker:
    """A live worker that, when SIGHUPed, answers from `on_hup` (through its real pipe)."""

    pid = 4242

    def __init__(
        self, heart: Heartbeat, on_hup: Sequence[tuple[bool, int | None]], reason: str
    ) -> None:
        self.heart = heart
        self.on_hup = on_hup
        self.reason = reason  # why it read no snapshot, said in each answer
        self.hups = 0

    def poll(self) -> int | None:
        return None

    def send_signal(self, sig: int) -> None:
        assert sig == signal.SIGHUP
        self.hups += 1
        for ok, generation in self.on_hup:
            self.heart.reloaded(ok, generation, self.reason)


async def _reload(
    answers: Sequence[tuple[bool, int | None]], generation: int = 7, reason: str = ""
) -> str | None:
    workers = _Workers("x.yaml", 1, {}, "/tmp")
    pulse = Pulse()
    try:
        heart = Heartbeat(pulse.fd, asyncio.get_running_loop())
        os.write(pulse.fd, b".")  # the worker is up and beating
        worker = _Worker(heart, answers, reason)
        workers._pulses = [pulse]
        workers.procs = [worker]  # type: ignore[list-item]
        workers.generation = generation
        result = await asyncio.wait_for(workers.reload_all(), 5)
        assert worker.hups == 1
        return result
    finally:
        pulse.close()


async def test_a_late_answer_of_an_earlier_reload_is_not_taken_for_this_one() -> None:
    """A worker still finishing reload 6 (its SIGHUP held while it started) said `+` just
    after reload 7 began; the supervisor took that byte as the answer to 7 and said
    "reloaded", then the worker refused 7 and nobody read it: users got two configs."""
    refused = await _reload([(True, 6), (False, 7)])
    assert refused is not None and "4242 could not apply it" in refused


async def test_the_answer_to_this_reload_counts_and_a_late_refusal_does_not() -> None:
    assert await _reload([(False, 6), (True, 7)]) is None
    assert await _reload([(True, 7)]) is None


async def test_an_answer_that_names_no_snapshot_is_a_refusal() -> None:
    refused = await _reload([(True, None)])
    assert refused is not None and "could not apply it" in refused


def test_answers_split_across_reads_are_put_back_together() -> None:
    pulse = Pulse()
    try:
        pulse._take(b".+1")
        assert pulse.reloads == []
        pulse._take(b"2\n..-13\n.")
        assert pulse.reloads == [(12, True, ""), (13, False, "")]
    finally:
        pulse.close()


def test_a_worker_reads_the_snapshot_generation_and_the_supervisors_version(
    tmp_path: Path,
) -> None:
    text = "backends:\r\n  legacy: {url: 'http://127.0.0.1:9'}\r\ndefault_backend: legacy\r\n"
    settings = loads(text, str(tmp_path / "c.yaml"))
    snapshot = tmp_path / "config.yaml"
    serve._write_snapshot(snapshot, settings, 41)
    os.environ[serve.SNAPSHOT_ENV] = str(snapshot)
    try:
        loaded = serve.load_config(settings.path)
        assert serve._snapshot_read.get() == 41
    finally:
        del os.environ[serve.SNAPSHOT_ENV]
    assert loaded.version == settings.version and loaded.source == settings.source


async def test_a_refusal_names_why_the_worker_read_no_snapshot() -> None:
    """A worker that could not read the snapshot loaded the file on disk and its answer
    named no generation: the reload failed with "see their reload_failed lines", and no
    line said why. The answer carries the reason, and the refusal names it."""
    why = "cannot read the config snapshot /tmp/m.d/config.yaml: Too many open files"
    refused = await _reload([(True, None)], reason=why)
    assert refused == f"the workers with pid 4242 could not apply it; pid 4242: {why}"


async def test_a_reason_with_dots_and_newlines_split_across_reads_is_kept_whole() -> None:
    pulse = Pulse()
    try:
        heart = Heartbeat(pulse.fd, asyncio.get_running_loop())
        heart.reloaded(False, None, "cannot read /a.b/c.yaml:\nIs a directory")
        heart.reloaded(True, 3)
        os.write(pulse.fd, b".")
        pulse.silent_s(0.0)
        assert pulse.reloads == [
            ReloadAnswer(None, False, "cannot read /a.b/c.yaml: Is a directory"),
            ReloadAnswer(3, True),
        ]
        pulse.reloads.clear()
        pulse._take(b".-4 x.y")
        pulse._take(b".z\n.")
        assert pulse.reloads == [ReloadAnswer(4, False, "x.y.z")]
    finally:
        pulse.close()
