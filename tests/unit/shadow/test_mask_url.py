"""Store URLs in messages, /-/config and the dashboard never show a password."""

from __future__ import annotations

import pytest

from proxy.admin import redact_secrets
from shadow.store import Store, mask_url

CASES = [
    # a base64 password may hold "/": the whole of it is hidden, not what precedes the "/"
    ("postgresql+psycopg://app:kP3/9xQ+Lw==@db.internal/app", "kP3"),
    ("postgresql+psycopg://app@127.0.0.1:1/app?password=hunter2&sslmode=require", "hunter2"),
    ("postgresql://app:pw@h:5432/db", "pw@"),
]


@pytest.mark.parametrize(("url", "secret"), CASES)
def test_no_password_shows(url: str, secret: str) -> None:
    assert secret not in mask_url(url)
    assert secret not in Store(url).url
    assert secret not in redact_secrets(f"cannot read the store at {url}: refused")


def test_urls_without_a_password_are_unchanged() -> None:
    for url in ("sqlite+aiosqlite:///var/lib/s.db", "postgresql+psycopg://app@db/app?x=1"):
        assert mask_url(url) == url
