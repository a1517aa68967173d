"""`strangler check` and `strangler explain`, through the real command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.check import format_duration, run_explain
from proxy.cli import main
from tests.support import free_port
from tests.unit.proxy.test_settings import FIVE_MISTAKES

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "config" / "routes.yaml"
VALID = [DEMO, *sorted((ROOT / "config" / "examples").glob("*.yaml"))]
STRANGLER = Path(sys.executable).with_name("strangler")
ISSUE = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


def strangler(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run(
        [str(STRANGLER), *args], capture_output=True, text=True, timeout=60, check=False
    )


def cli(*args: str) -> tuple[int, str]:
    """Run the click command in-process; exit code and stdout."""
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout


def test_five_mistakes_print_five_located_lines_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(FIVE_MISTAKES, encoding="utf-8")
    proc = strangler("check", "--config", str(f))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5, proc.stdout
    parsed = [ISSUE.match(line) for line in lines]
    assert all(m is not None and m["path"] == str(f) for m in parsed), lines
    assert [int(m["line"]) for m in parsed if m] == [5, 16, 21, 23, 29]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_files_exit_0(path: Path) -> None:
    code, out = cli("check", "--config", str(path))
    assert code == 0
    assert re.fullmatch(
        rf"{re.escape(str(path))}: ok \(\d+ routes, version [0-9a-f]{{12}}\)\n", out
    )


def test_demo_check_through_the_console_script() -> None:
    proc = strangler("check", "--config", str(DEMO))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok (5 routes" in proc.stdout


def test_malformed_yaml_gives_file_line_col_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("backends:\n  legacy: {url: x\ndefault_backend: legacy\n", encoding="utf-8")
    proc = strangler("check", "--config", str(f))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stdout.splitlines()
    m = ISSUE.match(line)
    assert m is not None and m["path"] == str(f) and m["line"] == "3"
    assert "invalid YAML" in m["message"]


def test_missing_file_exits_2(tmp_path: Path) -> None:
    code, out = cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert out.startswith(f"{tmp_path / 'nope.yaml'}:1:1: cannot read config")


SPEC_BACKENDS = """\
backends:
  legacy:
    url: http://127.0.0.1:8081
  orders:
    handlers: {handlers}
default_backend: legacy
routes:
  - {{name: show, match: {{path: "/api/v1/orders/{{order_id}}"}}, candidate: orders}}
"""


@pytest.mark.parametrize(
    ("handlers", "message"),
    [
        (  # the spec's own example: `serve` failed with TypeError, missing db_url
            "extracted.app",
            "backends.orders.handlers: extracted.app.create_app(db_url) needs a database URL:"
            " set backends.orders.db",
        ),
        (
            "extracted.app\n    db: sqlite+aiosqlite:///x.db\n    timeout: 1s",
            None,
        ),
        ("json", "backends.orders.handlers: module 'json' has no create_app"),
        ("nosuchmod_xyz", "backends.orders.handlers: no module named 'nosuchmod_xyz'"),
    ],
)
def test_check_calls_a_handlers_factory_as_serve_will(
    tmp_path: Path, handlers: str, message: str | None
) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(SPEC_BACKENDS.format(handlers=handlers), encoding="utf-8")
    code, out = cli("check", "--config", str(f))
    if message is None:
        assert code == 0 and ": ok (1 routes" in out, out
        return
    assert code == 2, out
    assert out == f"{f}:5:15: {message}\n"


def test_a_factory_that_takes_no_database_is_not_given_one(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    text = SPEC_BACKENDS.format(handlers="tests.unit.proxy.test_check\n    db: sqlite:///x.db")
    f.write_text(text, encoding="utf-8")
    code, out = cli("check", "--config", str(f))
    assert code == 2
    assert "tests.unit.proxy.test_check.create_app() takes no database URL: remove" in out


def create_app() -> object:
    """A handlers factory without parameters (for the test above)."""
    return object()


def test_explain_a_canary_route() -> None:
    code, out = cli("explain", "--config", str(DEMO), "get", "/api/v1/orders/42")
    assert code == 0
    assert "route:      order-show" in out
    assert "pattern:    /api/v1/orders/{order_id} [GET]" in out
    assert "params:     order_id=42" in out
    assert "mode:       canary" in out
    assert "primary:    legacy (http://127.0.0.1:8081)" in out
    assert "candidate:  orders (in-process handlers extracted.app" in out
    assert "5% of keys served by the candidate, keyed by header x-user-id" in out
    assert "100% of requests" in out


@pytest.mark.parametrize(
    ("url_path", "reading"),
    [
        ("/api/v1/orders/%2e%2e", "/api/v1/"),
        ("/api/v1/orders/x/../42", "/api/v1/orders/42"),
        ("//api/v1/orders/1", "/api/v1/orders/1"),
        ("/api/v1/orders%2F1", "/api/v1/orders/1"),
    ],
)
def test_explain_says_the_proxy_refuses_an_ambiguous_path(url_path: str, reading: str) -> None:
    """explain named a route for paths the data plane answers with 400 ambiguous_path."""
    code, out = cli("explain", "--config", str(DEMO), "GET", url_path)
    assert code == 0
    assert "refused:    400 ambiguous_path" in out, out
    assert f"read as {reading} " in out, out
    assert "route:" not in out and "backend:" not in out


def test_explain_refuses_exactly_what_the_data_plane_refuses() -> None:
    from proxy.pathguard import ambiguous_reading, is_suspicious, other_reading
    from proxy.routes import RouteTable
    from proxy.settings import load
    from tests.integration.hostile.test_paths import HOSTILE, PLAIN

    table = RouteTable(load(str(DEMO)))
    paths = [t.partition("?")[0] for t, _ in HOSTILE + PLAIN] + ["//", "/api/v1/orders/%2e%2e"]
    for path in paths:
        route = table.match("GET", path, "", [])
        match = lambda p: table.match("GET", p, "", [])  # noqa: E731
        # the data plane's test, as proxy.dataplane applies it
        refused = is_suspicious(path) and other_reading(path, route, match) is not None
        reading = ambiguous_reading(path, match)
        assert refused == (reading is not None), path


def test_explain_routes_a_suspicious_path_every_reading_agrees_on() -> None:
    code, out = cli("explain", "--config", str(DEMO), "GET", "/api/v1/orders/%34%32")
    assert code == 0 and "refused" not in out
    assert "route:      order-show" in out


def test_explain_shadow_extracted_and_legacy_routes() -> None:
    _, shadow = cli("explain", "--config", str(DEMO), "GET", "/api/v1/orders?status=paid")
    assert "route:      order-list" in shadow and "50% of requests (by request id)" in shadow
    assert "timeout 2s" in shadow
    _, extracted = cli("explain", "--config", str(DEMO), "GET", "/api/v1/orders/7/events")
    assert "mode:       extracted" in extracted and "serves:     candidate" in extracted
    _, legacy = cli("explain", "--config", str(DEMO), "POST", "/api/v1/orders/7/ship")
    assert "params:     order_id=7, action=ship" in legacy
    assert "candidate is not called" in legacy


def test_explain_no_match_goes_to_the_default_backend() -> None:
    code, out = cli("explain", "--config", str(DEMO), "DELETE", "/api/v1/orders/42")
    assert code == 0
    assert "skipped:    order-show" in out and "methods GET" in out
    assert "no route matches: default backend legacy (untouched)" in out


def test_explain_with_a_bad_config_prints_issues_and_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(FIVE_MISTAKES, encoding="utf-8")
    code, out = cli("explain", "--config", str(f), "GET", "/")
    assert code == 2
    assert len(out.splitlines()) == 5


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (2.0, "2s"), (1.5, "1.5s"), (60.0, "1m"), (7200.0, "2h")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_explain_header_and_query_matchers(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(ROOT / "config" / "examples" / "shadow.yaml")
    url = "/api/v1/orders/9?expand=events"
    assert run_explain(example, "GET", url, [("X-Internal-Client", "reporting")]) == 0
    out = capsys.readouterr().out
    assert "route:      order-show-internal" in out
    assert "requires:   header x-internal-client: reporting" in out
    assert "requires:   query expand=events" in out
    assert run_explain(example, "GET", url) == 0
    out = capsys.readouterr().out
    assert "skipped:    order-show-internal" in out and "needs header" in out
    assert "route:      order-show (" in out


def test_explain_a_canary_without_a_sticky_key_says_the_primary_serves(tmp_path: Path) -> None:
    """Without `sticky` every request stays on legacy; explain said the share went by request
    id, so a canary step looked live while it served nobody from the candidate."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "backends:\n  legacy: {url: 'http://127.0.0.1:8081'}\n  orders: {url: 'http://127.0.0.1:8082'}\n"
        "default_backend: legacy\nroutes:\n  - name: r\n    match: {path: /x}\n"
        "    mode: canary\n    candidate: orders\n    canary: {percent: 50}\n"
    )
    code, out = cli("explain", "--config", str(config), "GET", "/x")
    assert code == 0, out
    assert "no sticky key set: every request is served by the primary" in out


def test_explain_takes_request_headers(tmp_path: Path) -> None:
    """explain had no way to pass headers: a route matched on a header, and a canary's side
    for a sticky key, could not be explained from the command line."""
    example = str(ROOT / "config" / "examples" / "shadow.yaml")
    url = "/api/v1/orders/9?expand=events"
    code, out = cli(
        "explain", "--config", example, "--header", "X-Internal-Client: reporting", "GET", url
    )
    assert code == 0, out
    assert "route:      order-show-internal" in out
    config = tmp_path / "c.yaml"
    config.write_text(
        "backends:\n  legacy: {url: 'http://127.0.0.1:8081'}\n  orders: {url: 'http://127.0.0.1:8082'}\n"
        "default_backend: legacy\nroutes:\n  - name: r\n    match: {path: /x}\n"
        "    mode: canary\n    candidate: orders\n"
        "    canary: {percent: 50, sticky: {header: X-User-Id}}\n"
    )
    sides = set()
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        code, out = cli("explain", "--config", str(config), "-H", f"x-user-id:{user}", "GET", "/x")
        assert code == 0, out
        [line] = [x for x in out.splitlines() if x.startswith("this key:")]
        assert f"header x-user-id {user!r}" in line
        sides.add(line.rsplit(" ", 1)[1])
    assert sides == {"candidate", "legacy"}  # 8 keys at 50 %: both sides
    code, out = cli("explain", "--config", str(config), "GET", "/x")
    assert "this key:   none in this request: served by legacy" in out
    bad = CliRunner().invoke(
        main, ["explain", "--config", str(config), "-H", "no-colon", "GET", "/x"]
    )
    assert bad.exit_code == 2 and "expected 'Name: value'" in bad.stderr


_ONE_BACKEND = 'backends:\n  legacy: {url: "http://127.0.0.1:1"}\ndefault_backend: legacy\n'


@pytest.mark.parametrize(
    ("head", "where"),
    [
        ("listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{port}}}\n", (2, 17)),
        ("listen: localhost:{port}\nadmin: {{listen: 127.0.0.1:{port}}}\n", (2, 17)),
        ("listen: 0.0.0.0:{port}\nadmin: {{listen: 127.0.0.1:{port}}}\n", (2, 17)),
        ("listen: 127.0.0.1:9090\n", (1, 9)),  # the admin listener's default port
    ],
)
def test_check_rejects_an_admin_listener_on_the_proxys_address(
    tmp_path: Path, head: str, where: tuple[int, int]
) -> None:
    """`check` said ok and `serve` could never start (address already in use, exit 2)."""
    port = free_port()
    f = tmp_path / "routes.yaml"
    f.write_text(head.format(port=port) + _ONE_BACKEND, encoding="utf-8")
    code, out = cli("check", "--config", str(f))
    assert code == 2, out
    m = ISSUE.match(out.strip())
    assert m is not None, out
    assert (int(m["line"]), int(m["col"])) == where
    assert "admin.listen" in m["message"] and "listen" in m["message"]
    if head.startswith("listen: 127.0.0.1:{port}"):  # serve says the same, with its place
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from proxy.cli import main; main()",
                "serve",
                "--config",
                str(f),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
        assert proc.returncode == 2
        assert f"{f}:2:17: " in proc.stderr, proc.stderr


def test_check_accepts_distinct_or_unbound_listen_addresses(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    for head in (
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n",
        "listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.2:8080}\n",
        "listen: 0.0.0.0:8080\nadmin: {listen: '[::1]:8080'}\n",
    ):
        f.write_text(head + _ONE_BACKEND, encoding="utf-8")
        code, out = cli("check", "--config", str(f))
        assert code == 0, (head, out)


@pytest.mark.parametrize(
    ("listen", "url", "loops"),
    [
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}", True),
        ("0.0.0.0:{port}", "http://localhost:{port}/", True),
        ("'[::]:{port}'", "http://[::1]:{port}", True),
        ("0.0.0.0:{port}", "http://10.1.2.3:{port}", False),  # the monolith's own host
        ("127.0.0.1:{port}", "http://127.0.0.2:{port}", False),
        # localhost may bind ::1 too; IPv6 listeners are IPv6-only ([::] is not 127.0.0.1)
        ("localhost:{port}", "http://[::1]:{port}", True),
        ("'[::]:{port}'", "http://127.0.0.1:{port}", False),
        ("0.0.0.0:{port}", "http://[::1]:{port}", False),
    ],
)
def test_check_rejects_a_backend_that_is_the_proxy_itself(
    tmp_path: Path, listen: str, url: str, loops: bool
) -> None:
    """Every request went round the proxy until its connections ran out, then 502: `check`
    said ok and `serve` started (e.g. the monolith's old port given to the proxy)."""
    port = 18080
    f = tmp_path / "routes.yaml"
    f.write_text(
        f"listen: {listen.format(port=port)}\nadmin: {{listen: 127.0.0.1:0}}\n"
        f"backends:\n  legacy: {{url: '{url.format(port=port)}'}}\ndefault_backend: legacy\n",
        encoding="utf-8",
    )
    code, out = cli("check", "--config", str(f))
    if not loops:
        assert code == 0, out
        return
    assert code == 2, out
    m = ISSUE.match(out.strip())
    assert m is not None, out
    assert (int(m["line"]), int(m["col"])) == (4, 17)
    assert m["message"].startswith("backends.legacy.url: ") and "loop" in m["message"]


def test_check_warns_of_a_capture_path_in_a_missing_directory(tmp_path: Path) -> None:
    """`check` said nothing, and the proxy then failed every capture write at run time. A
    warning on stderr, not an error: CI may check a config meant for another machine."""
    f = tmp_path / "routes.yaml"
    missing = tmp_path / "no-such-dir" / "traffic.jsonl"
    f.write_text(_ONE_BACKEND + f"capture:\n  percent: 5\n  path: {missing}\n", encoding="utf-8")

    def check() -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["check", "--config", str(f)])
        assert "Traceback" not in result.output
        assert ": ok (0 routes" in result.stdout, result.stdout
        return result.exit_code, result.stdout, result.stderr

    code, _, err = check()
    assert code == 0
    assert err == (
        f"{f}:6:9: warning: capture.path: directory {tmp_path / 'no-such-dir'} does not exist"
        " on this machine (captures would be lost)\n"
    ), err
    (tmp_path / "no-such-dir").write_text("")  # a file where the directory should be
    code, _, err = check()
    assert code == 0 and f"{f}:6:9: warning: capture.path: {tmp_path / 'no-such-dir'} is not" in err
    (tmp_path / "no-such-dir").unlink()
    (tmp_path / "no-such-dir").mkdir()
    code, _, err = check()
    assert code == 0 and err == "", err
    missing.mkdir()  # the file itself cannot be a directory
    code, _, err = check()
    assert code == 0 and f"{f}:6:9: warning: capture.path: {missing} is a directory" in err, err
