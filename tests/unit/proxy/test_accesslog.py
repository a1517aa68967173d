"""The access log: what reaches a line (personal data in paths never does)."""

from __future__ import annotations

import io

import orjson
import pytest

from proxy.accesslog import AccessLog
from shadow.redact import Redactor


@pytest.mark.parametrize(
    "secret",
    ["4111111111111111", "4111 1111 1111 1111", "4111.1111.1111.1111", "ann@shop.example"],
)
def test_personal_data_in_a_path_is_redacted_in_the_line(secret: str) -> None:
    # A card written with dots passed the log's cheap pre-filter and so never reached the
    # redactor, although the redactor knows that shape.
    out = io.BytesIO()
    log = AccessLog(out)
    log.redact = Redactor(key=b"k" * 32).redact_text
    log.log("r1", "cards", "legacy", "GET", f"/api/v1/cards/{secret}", 200, 1.0)
    log.flush()
    line = orjson.loads(out.getvalue())
    assert secret not in line["path"], line["path"]
    assert "REDACTED:" in line["path"]
