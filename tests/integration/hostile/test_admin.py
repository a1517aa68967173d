"""Admin listener: mutating calls need the bearer token; nothing shows secrets."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy.accesslog import AccessLog
from proxy.app import Proxy, create_proxy
from proxy.settings import AdminSettings, load, loads
from tests.integration.proxy.conftest import proxy_config
from tests.support import stop_after_test
from tests.upstreams import EchoUpstream

TOKEN = "tok-3f1c9a7e5b2d4c6e8a0b"  # a test value, not a credential
STORE_PASSWORD = "pw-in-store-url-71c2"
QUERY_PASSWORD = "pw-in-query-5e09"


@dataclass
class _Admin:
    proxy: Proxy
    path: Path
    log: io.BytesIO
    base: str

    def url(self, p: str) -> str:
        host, port = self.proxy.admin_address
        return f"http://{host}:{port}{p}"


def _config(upstream: EchoUpstream, store_url: str, version: int) -> str:
    return proxy_config(upstream.url, f"# version {version}\n", store_url=store_url)


@pytest.fixture
async def admin(
    tmp_path: Path, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[_Admin]:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    store = f"postgresql+psycopg://reporter:{STORE_PASSWORD}@127.0.0.1:1/test"
    path = tmp_path / "routes.yaml"
    path.write_text(_config(upstream, store, 0))
    log = io.BytesIO()
    proxy = create_proxy(load(str(path)), access_log=AccessLog(log, enabled=True))
    await proxy.start()
    yield _Admin(proxy, path, log, store)
    await stop_after_test(proxy, 1.0)


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    up = await EchoUpstream().start()
    yield up
    await up.close()


BAD_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}X",
    f"Basic {TOKEN}",
    TOKEN,
    f"Bearer  {TOKEN}",
]


@pytest.mark.parametrize("auth", BAD_AUTH, ids=range(len(BAD_AUTH)))
async def test_reload_without_the_right_token_is_401_and_changes_nothing(
    admin: _Admin, upstream: EchoUpstream, auth: str | None
) -> None:
    before = admin.proxy.settings.version
    admin.path.write_text(_config(upstream, admin.base, 1))
    headers = {} if auth is None else {"Authorization": auth}
    async with aiohttp.ClientSession() as s, s.post(admin.url("/-/reload"), headers=headers) as r:
        assert r.status == 401
        assert r.headers.get("WWW-Authenticate") == "Bearer"
    assert admin.proxy.settings.version == before
    assert TOKEN.encode() not in admin.log.getvalue()


async def test_reload_with_the_token_applies_the_new_file(
    admin: _Admin, upstream: EchoUpstream
) -> None:
    before = admin.proxy.settings.version
    admin.path.write_text(_config(upstream, admin.base, 2))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s, s.post(admin.url("/-/reload"), headers=headers) as r:
        assert r.status == 200
    assert admin.proxy.settings.version != before


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/-/reload", "/-/config", "/-/routes"])
async def test_no_other_method_mutates(admin: _Admin, method: str, path: str) -> None:
    async with aiohttp.ClientSession() as s, s.request(method, admin.url(path)) as r:
        assert r.status == 405


def test_admin_listens_on_loopback_unless_configured(
    upstream_url: str = "http://127.0.0.1:1",
) -> None:
    assert AdminSettings().host == "127.0.0.1"
    text = proxy_config(upstream_url).replace("admin:\n  listen: 127.0.0.1:0\n", "")
    assert loads(text, "t.yaml").admin.host == "127.0.0.1"
    text = proxy_config(upstream_url).replace("  listen: 127.0.0.1:0\n", "  token_env: X\n", 1)
    assert loads(text, "t.yaml").admin.host == "127.0.0.1"


async def test_config_endpoint_shows_no_store_password_or_token(admin: _Admin) -> None:
    async with aiohttp.ClientSession() as s, s.get(admin.url("/-/config")) as r:
        raw = await r.text()
    assert r.status == 200
    assert STORE_PASSWORD not in raw
    assert TOKEN not in raw
    assert "reporter:***@" in raw


async def test_config_endpoint_masks_a_password_in_the_query(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    store = f"postgresql+psycopg://reporter@127.0.0.1:1/test?password={QUERY_PASSWORD}"
    proxy = create_proxy(
        loads(_config(upstream, store, 0), "t.yaml"), access_log=AccessLog(enabled=False)
    )
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as s:
            host, port = proxy.admin_address
            async with s.get(f"http://{host}:{port}/-/config") as r:
                raw = await r.text()
    finally:
        await stop_after_test(proxy, 1.0)
    assert QUERY_PASSWORD not in raw


async def test_rejected_reload_logs_no_credentials(admin: _Admin, upstream: EchoUpstream) -> None:
    bad = _config(upstream, admin.base, 3).replace(
        upstream.url, upstream.url.replace("http://", "http://bob:pw-in-backend-url-9d@")
    )
    admin.path.write_text(bad)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s, s.post(admin.url("/-/reload"), headers=headers) as r:
        assert r.status == 422
    admin.proxy.access_log.flush()
    log = admin.log.getvalue()
    assert b"reload_rejected" in log
    assert b"pw-in-backend-url-9d" not in log


async def test_logs_show_no_store_password_or_token(admin: _Admin) -> None:
    async with aiohttp.ClientSession() as s:
        host, port = admin.proxy.address
        async with s.get(f"http://{host}:{port}/x?token={TOKEN}") as r:
            assert r.status == 200
        async with s.post(admin.url("/-/reload"), headers={"Authorization": f"Bearer {TOKEN}x"}):
            pass
    admin.proxy.access_log.flush()
    log = admin.log.getvalue()
    assert b'"path":"/x"' in log
    assert STORE_PASSWORD.encode() not in log
    assert TOKEN.encode() not in log
