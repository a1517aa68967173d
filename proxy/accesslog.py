"""JSON access log lines, buffered and written in batches off the per-request path."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

import orjson

__all__ = ["AccessLog"]

_FLUSH_BYTES = 64 << 10
_LINE = (
    b'{"ts":%.3f,"request_id":%b,"route":%b,"backend":%b,"method":%b,"path":%b,'
    b'"status":%d,"ms":%.3f%b}\n'
)
_json = orjson.dumps
_FLUSH_INTERVAL = 0.25
# What a path holding personal data looks like at a glance (an e-mail, something encoded,
# a long run of digits and separators, an IBAN); only such paths go through the redactor,
# whose detectors cost more than the rest of a line.
# (a superset, kept cheap: about 0.3 us per path here, a percent of a request's CPU).
_MAYBE_PERSONAL = re.compile(r"[@%]|[0-9 .-]{12}|[0-9][A-Za-z0-9]{11}")


class AccessLog:
    """One JSON object per finished request; flushed every 64 KB or 250 ms."""

    __slots__ = ("_buf", "_size", "_stream", "_timer", "enabled", "redact")

    def __init__(self, stream: BinaryIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self.enabled = enabled
        # the store's redactor (set by the proxy): e-mails, cards, IBANs never reach the log
        self.redact: Callable[[str], str] | None = None

    def log(
        self,
        request_id: str,
        route: str,
        backend: str,
        method: str,
        path: str,
        status: int,
        ms: float,
        upstream_error: str | None = None,
    ) -> None:
        """Queue one line."""
        if not self.enabled:
            return
        redact = self.redact
        if redact is not None and _MAYBE_PERSONAL.search(path):
            path = redact(path)
        # One %-format with pre-escaped strings: a dict + orjson per request costs twice this.
        line = _LINE % (
            time.time(),
            _json(request_id),
            _json(route),
            _json(backend),
            _json(method),
            _json(path),
            status,
            ms,
            b"" if upstream_error is None else b',"error":' + _json(upstream_error),
        )
        self._buf.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(_FLUSH_INTERVAL, self.flush)

    def event(self, **fields: object) -> None:
        """Write a non-request event line (reloads, errors) at once."""
        fields.setdefault("ts", round(time.time(), 3))
        self._buf.append(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
        self.flush()

    def flush(self) -> None:
        """Write what is buffered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must never break the data plane
