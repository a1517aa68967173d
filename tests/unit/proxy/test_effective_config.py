"""`GET /-/config`: the effective config, every key of the file, secrets masked."""

from __future__ import annotations

from proxy.admin import redacted_config
from proxy.settings import load, loads

TEXT = """\
listen: 127.0.0.1:8080
backends:
  legacy: {url: "http://127.0.0.1:8081", idle_timeout: 10s, host_header: shop.example}
  orders: {handlers: extracted.app, db: "postgresql+psycopg://app:hunter2@127.0.0.1/orders"}
default_backend: legacy
store: {url: "postgresql+psycopg://reporter:s3cret@127.0.0.1/test?password=s3cret2"}
limits: {shadow_offload: true, body_timeout: 5s}
capture: {path: traffic.jsonl, percent: 5}
access_log: false
routes:
  - name: show
    match:
      path: /api/v1/orders/{order_id}
      methods: [GET]
      headers: {x-client: reporting, authorization: "Bearer sekrit", x-note: "token=sekrit"}
      query: {expand: events, api_key: sekrit}
    candidate: orders
    mode: canary
    canary: {percent: 5, sticky: {header: X-User-Id}}
    shadow: {percent: 50, timeout: 1s, writes: dry_run}
    compare:
      unordered_arrays: {"$.items": id}
      normalizers: {"$.created_at": timestamp_seconds}
      numeric_tolerance: 0.01
    promotion: {steps: [1, 50], min_samples: 10}
"""


def test_every_section_of_the_file_is_shown_with_secrets_masked() -> None:
    cfg = redacted_config(loads(TEXT, "t.yaml"))
    text = repr(cfg)
    assert "hunter2" not in text and "s3cret" not in text and "sekrit" not in text
    assert cfg["backends"]["orders"]["db"] == "postgresql+psycopg://app:***@127.0.0.1/orders"
    assert cfg["backends"]["legacy"]["idle_timeout"] == 10.0
    assert cfg["backends"]["legacy"]["host_header"] == "shop.example"
    assert cfg["limits"]["shadow_offload"] is True and cfg["limits"]["body_timeout"] == 5.0
    assert cfg["capture"]["percent"] == 5.0 and cfg["access_log"] is False
    [route] = cfg["routes"]
    assert route["match"]["headers"] == {
        "x-client": "reporting",
        "authorization": "***",
        "x-note": "token=***",
    }
    assert route["match"]["query"] == {"expand": "events", "api_key": "***"}
    assert route["canary"] == {"percent": 5.0, "sticky": {"header": "x-user-id"}}
    assert route["shadow"]["writes"] == "dry_run" and route["shadow"]["timeout"] == 1.0
    assert route["compare"]["unordered_arrays"] == {"$.items": "id"}
    assert route["compare"]["normalizers"] == {"$.created_at": "timestamp_seconds"}
    assert route["promotion"]["steps"] == [1.0, 50.0] and route["promotion"]["min_samples"] == 10
    # the flat keys the dashboard and older clients read
    assert (route["shadow_percent"], route["canary_percent"]) == (50.0, 5.0)
    assert route["path"] == "/api/v1/orders/{order_id}" and route["methods"] == ["GET"]


def test_the_demo_config_is_json_serialisable() -> None:
    import orjson

    assert orjson.loads(orjson.dumps(redacted_config(load("config/demo.yaml"))))["routes"]


def test_an_unset_shadow_offload_is_shown_as_what_serve_makes_of_it() -> None:
    """Unset, `limits.shadow_offload` is on when a shadow route has URL backends."""
    shadow = TEXT.replace("limits: {shadow_offload: true, body_timeout: 5s}\n", "")
    shadow = shadow.replace("mode: canary", "mode: shadow")
    in_process = loads(shadow, "t.yaml")  # its candidate is an in-process app: in the loop
    assert redacted_config(in_process)["limits"]["shadow_offload"] is False
    orders = '  orders: {handlers: extracted.app, db: "postgresql+psycopg://app:hunter2@127.0.0.1/orders"}'
    by_url = loads(shadow.replace(orders, '  orders: {url: "http://127.0.0.1:8082"}'), "t.yaml")
    assert redacted_config(by_url)["limits"]["shadow_offload"] is True
