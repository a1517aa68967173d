"""Traffic capture: sampled proxied requests written as JSON lines for `strangler replay`.

The data plane calls `CaptureWriter.maybe_capture(...)` once per request whose whole body
has arrived. That call only samples, filters and queues a reference to the request (no
encoding, no redaction, no I/O), so it is cheap and never blocks or raises; a background
thread redacts, encodes and appends the queued requests every 250 ms, and rotates the file
by size (`path` -> `path.1` -> ... -> `path.3`, the oldest dropped). A line cut short at
the end of the file (a write stopped midway: the process killed, the disk full) is dropped
before anything is appended, so the lines after it stay readable.

One JSON object per line (UTF-8, keys in this order):

    {"ts": 1767225600.123,              # capture time, Unix seconds
     "method": "GET",
     "path": "/api/v1/orders/42",       # raw request path, without the query
     "query": "expand=events",          # raw query string without "?", "" when none
     "headers": [["accept", "application/json"]],   # only capture.headers, lower-case
     "body": null,                      # text, base64 text, or null when empty
     "body_encoding": null,             # "utf-8" | "base64" | null
     "request_id": "6f1c..."}           # the proxy's request id

Redaction follows the store's rules (`Redactor`): JSON bodies get `store.redact_json_paths`
plus the e-mail, card and IBAN detectors; other text bodies, the path and query values get
the detectors; credential headers become tokens; the values of secret-named query and form
parameters (`password=`, `token=`, ...) become `***`, as in the store's request URLs. A
body sent with a content-encoding is stored decoded (and that header is dropped). Sampling
hashes the request id, so the same request is captured in every worker and every run.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final
from urllib.parse import parse_qsl, urlencode

import orjson

from proxy.settings import CaptureSettings
from shadow.http_compare import BodyDecodeError, decode_body
from shadow.redact import Redactor, mask_secrets

__all__ = ["MAX_BODY_BYTES", "CaptureStats", "CaptureWriter", "capture_line"]

_log = logging.getLogger("strangler.capture")

MAX_BODY_BYTES: Final = 1 << 20  # a request with a larger body is not captured (and counted)
_MAX_DECODED: Final = 4 * MAX_BODY_BYTES  # a compressed body decoded past this is hidden whole
_MAX_FIELDS: Final = 1000  # query or form parameters redacted one by one; more: as a whole
_FLUSH_INTERVAL: Final = 0.25
_MAX_QUEUED: Final = 20_000  # lines waiting for the writer; beyond it requests are dropped
_MAX_QUEUED_BYTES: Final = 32 << 20
_KEEP: Final = 3  # rotated files kept: path.1 .. path.3
_FORM: Final = "application/x-www-form-urlencoded"

_Pending = tuple[float, str, str, str, list[tuple[str, str]], bytes | None, str]

# One lock per file: a reload's new writer must not append to (or repair) the file while
# the writer it replaces still drains into it.
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: str) -> threading.Lock:
    key = os.path.abspath(path)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.get(key)
        if lock is None:
            lock = _FILE_LOCKS[key] = threading.Lock()
        return lock


def _drop_partial_line(path: str) -> int:
    """Cut the file back to its last newline; the bytes dropped (0 when it ends whole).

    A write stopped midway (the process killed, the disk full) leaves part of a line at
    the end; appending to it would glue it to the next line and make both unreadable.
    """
    try:
        fh = open(path, "r+b")  # noqa: SIM115 - closed by the with below
    except OSError:  # none yet, or not ours to repair: appending says what is wrong
        return 0
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # a pipe, a device
            return 0
        end = fh.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            if pos == end and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                pos = start + newline + 1
                break
            pos = start
        fh.truncate(pos)
        return end - pos


class CaptureStats:
    """What the writer did: lines written, requests dropped by reason, write errors."""

    __slots__ = ("dropped", "errors", "rotations", "written")

    def __init__(self) -> None:
        self.written = 0
        self.rotations = 0
        self.errors = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        """Count one request not captured for `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _bucket(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % 10000


def _redact_pair(name: str, value: str, redactor: Redactor) -> tuple[str, str]:
    # Masked as the store masks a request URL: a secret-named parameter's value becomes
    # `***` (a replay sends that), a password in a URL given as a value too.
    if mask_secrets(f"{name}=x") != f"{name}=x":
        value = "***"
    return redactor.redact_text(name), redactor.redact_url(value)


def _redact_query(query: str, redactor: Redactor) -> str:
    if not query:
        return query
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError:  # too many to go one by one on the proxy's CPU: masked as a whole
        return redactor.redact_url(query)
    redacted = [_redact_pair(k, v, redactor) for k, v in pairs]
    # Re-encoding normalises the query, so do it only when something had to be hidden.
    return query if redacted == pairs else urlencode(redacted)


def _redact_form(body: bytes, redactor: Redactor) -> bytes | None:
    """A form body redacted parameter by parameter like a query, or None if it is not text."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _redact_query(text, redactor).encode()


def capture_line(
    redactor: Redactor,
    ts: float,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
    request_id: str,
) -> bytes:
    """One redacted capture line (with its newline) for a request."""
    content_type = next((v for k, v in headers if k == "content-type"), None)
    # The body is stored decoded: no Content-Encoding describes it any more.
    encoding = ", ".join(v for k, v in headers if k == "content-encoding") or None
    kept = [(k, v) for k, v in headers if k != "content-encoding"]
    text: str | None = None
    body_encoding: str | None = None
    if body:
        form = None
        try:  # decoded once, to a small bound: the writer shares the proxy's CPU and memory
            body = decode_body(body, encoding, _MAX_DECODED)
        except BodyDecodeError:  # corrupt, or a few KB that inflate past the bound
            form = redactor.token(body.decode("latin-1")).encode()  # hidden whole
        if form is None and (content_type or "").partition(";")[0].strip().lower() == _FORM:
            form = _redact_form(body, redactor)
        clean = redactor.redact_body(body, content_type, None) if form is None else form
        try:
            text, body_encoding = clean.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, body_encoding = base64.b64encode(clean).decode("ascii"), "base64"
    record = {
        "ts": round(ts, 3),
        "method": method,
        "path": redactor.redact_url(path),
        "query": _redact_query(query, redactor),
        "headers": [[k, v] for k, v in redactor.redact_headers(kept)],
        "body": text,
        "body_encoding": body_encoding,
        "request_id": request_id,
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class CaptureWriter:
    """Samples requests into a bounded queue; a daemon thread writes and rotates the file."""

    def __init__(
        self,
        settings: CaptureSettings,
        redactor: Redactor,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float = _FLUSH_INTERVAL,
        keep: int = _KEEP,
        max_queued: int = _MAX_QUEUED,
        path: str | None = None,
    ) -> None:
        """`path` overrides `settings.path` (e.g. one file per proxy worker process)."""
        self.settings = settings
        self.path = path or settings.path
        self.stats = CaptureStats()
        self._redactor = redactor
        self._clock = clock
        self._keep = max(1, keep)
        self._max_queued = max_queued
        self._threshold = round(settings.percent * 100)
        self._methods = frozenset(m.upper() for m in settings.methods)
        # Content-Encoding always: the body cannot be decoded (and redacted) without it.
        self._headers = frozenset(h.lower().encode("latin-1") for h in settings.headers) | {
            b"content-encoding"
        }
        self._queue: collections.deque[_Pending] = collections.deque()
        self._bytes_in = 0  # written only by the producer (the event loop's thread)
        self._bytes_out = 0  # written only by whoever drains (under the io lock)
        self._io_lock = _file_lock(self.path)
        self._file: BinaryIO | None = None
        self._size = 0
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(flush_interval,), name="strangler-capture", daemon=True
        )
        self._thread.start()

    # -- the data plane's calls -----------------------------------------------------------

    def wants(self, method: str, request_id: str) -> bool:
        """Whether `maybe_capture` would keep this request: lets the caller skip buffering
        the body of requests that will not be captured. Never raises."""
        try:
            if self._closed or method not in self._methods:
                return False
            return self._threshold >= 10000 or _bucket(request_id) < self._threshold
        except Exception:
            return False

    def maybe_capture(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes | None,
        request_id: str,
    ) -> None:
        """Queue this request for capture if it is sampled and its method chosen; never raises."""
        try:
            if not self.wants(method, request_id):
                return
            if body is not None and len(body) > MAX_BODY_BYTES:
                self.stats.drop("body_too_large")
                return
            size = len(body or b"") + len(path) + len(query)
            backlog = self._bytes_in - self._bytes_out
            if len(self._queue) >= self._max_queued or backlog >= _MAX_QUEUED_BYTES:
                self.stats.drop("queue_full")
                return
            wanted = self._headers
            picked = [
                (n.decode("latin-1").lower(), v.decode("latin-1"))
                for n, v in headers
                if n.lower() in wanted
            ]
            self._bytes_in += size
            self._queue.append(
                (self._clock(), method, path, query, picked, body or None, request_id)
            )
        except Exception:  # capture must never break the data plane
            self.stats.drop("error")

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every queued request now (in the calling thread); never raises."""
        with self._io_lock:
            self._drain()

    def close(self) -> None:
        """Stop the writer thread, write what is queued and close the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=5.0)
        with self._io_lock:
            self._drain()
            self._close_file()

    @property
    def queued(self) -> int:
        """Requests waiting to be written."""
        return len(self._queue)

    # -- the writer thread ----------------------------------------------------------------

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._io_lock:
                self._drain()

    def _drain(self) -> None:
        lines: list[bytes] = []
        while self._queue:
            ts, method, path, query, headers, body, request_id = self._queue.popleft()
            self._bytes_out += len(body or b"") + len(path) + len(query)
            try:
                lines.append(
                    capture_line(self._redactor, ts, method, path, query, headers, body, request_id)
                )
            except Exception:  # an unencodable request is skipped, not the whole batch
                self.stats.drop("error")
        if lines:
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        written = 0
        try:
            for line in lines:
                if self._file is None:
                    self._open()
                if self._size and self._size + len(line) > self.settings.max_bytes:
                    self._rotate()
                    self._open()
                assert self._file is not None
                self._file.write(line)
                self._size += len(line)
                written += 1
            if self._file is not None:
                self._file.flush()
        except (OSError, ValueError) as exc:
            self.stats.errors += 1
            lost = len(lines) - written
            self.stats.dropped["write_error"] = self.stats.dropped.get("write_error", 0) + lost
            _log.warning("capture: cannot write %s: %s", self.path, exc)
            self._close_file()
        self.stats.written += written

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                self.stats.errors += 1

    def _open(self) -> None:
        cut = _drop_partial_line(self.path)
        if cut:
            self.stats.drop("cut_short")
            _log.warning(
                "capture: %s ended in a line cut short (%d bytes): dropped", self.path, cut
            )
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._close_file()
        base = self.path
        for i in range(self._keep - 1, 0, -1):
            if os.path.exists(f"{base}.{i}"):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        os.replace(base, f"{base}.1")
        self.stats.rotations += 1
