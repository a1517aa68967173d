"""`strangler replay` end to end: exit codes 0/1/2/130, report output, progress lines."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sqlite3
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from proxy.cli import main
from shadow.replay_cli import Progress
from shadow.store import Store
from tests.integration.replay.stack import Stack, config_text, running_stack, write_traffic
from tests.support import free_port, wait_until

_CLI = [sys.executable, "-c", "from proxy.cli import main; main()"]


def _replay(*args: str) -> Result:
    return CliRunner().invoke(main, ["replay", *args], catch_exceptions=False)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _closed_stack() -> Stack:
    return Stack(primary_port=free_port(), candidate_port=free_port())


def _one_error_line(result: Result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_traffic_file_exits_2(tmp_path: Path) -> None:
    config = _config(tmp_path, config_text(_closed_stack(), "sqlite:///x.db"))
    result = _replay(str(tmp_path / "nope.jsonl"), "--config", str(config))
    _one_error_line(result, "nope.jsonl: no such traffic file")


def test_bad_json_line_exits_2_with_its_line_number(tmp_path: Path) -> None:
    config = _config(tmp_path, config_text(_closed_stack(), f"sqlite:///{tmp_path}/s.db"))
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 2)
    traffic.write_bytes(traffic.read_bytes() + b"\n{not json\n")
    result = _replay(str(traffic), "--config", str(config))
    _one_error_line(result, "traffic.jsonl:4: not valid JSON")
    assert not (tmp_path / "s.db").exists()  # checked before anything was opened or sent


def test_bad_config_exits_2_with_positions(tmp_path: Path) -> None:
    config = _config(tmp_path, "backends:\n  legacy: {url: http://x:1}\ndefault_backend: nope\n")
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 1)
    result = _replay(str(traffic), "--config", str(config))
    assert result.exit_code == 2
    assert re.search(rf"^{re.escape(str(config))}:3:\d+: .*unknown backend", result.stderr, re.M)
    assert "Traceback" not in result.stderr


def test_bad_store_url_exits_2(tmp_path: Path) -> None:
    config = _config(tmp_path, config_text(_closed_stack(), "sqlite:///x.db"))
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 1)
    result = _replay(str(traffic), "--config", str(config), "--store", "mysql://u@h/db")
    _one_error_line(result, "unsupported store URL")


@pytest.mark.parametrize(
    ("handlers", "needle"),
    [
        (
            "handlers: nosuchmod_xyz",
            "backend 'orders': cannot start handlers app 'nosuchmod_xyz': ModuleNotFoundError:",
        ),
        (  # a factory that needs `db` and was given none
            "handlers: tests.integration.replay.stack",
            "cannot start handlers app 'tests.integration.replay.stack': TypeError: ",
        ),
    ],
)
def test_a_handlers_app_that_cannot_start_exits_2(
    tmp_path: Path, handlers: str, needle: str
) -> None:
    """It printed a traceback and exited 1."""
    text = config_text(_closed_stack(), f"sqlite:///{tmp_path}/s.db")
    text = re.sub(r"(  orders:\n    )url: \S+", rf"\g<1>{handlers}", text)
    assert handlers in text
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 2)
    result = _replay(str(traffic), "--config", str(_config(tmp_path, text)))
    _one_error_line(result, needle)


def test_nothing_to_compare_exits_1(tmp_path: Path) -> None:
    config = _config(tmp_path, config_text(_closed_stack(), f"sqlite:///{tmp_path}/s.db"))
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_bytes(orjson.dumps({"method": "GET", "path": "/elsewhere"}) + b"\n")
    result = _replay(str(traffic), "--config", str(config))
    assert result.exit_code == 1
    assert "no request matched a route with a candidate" in result.stderr


async def _cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_exit_0_within_thresholds_and_1_over_them(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 400)
    store = f"sqlite:///{tmp_path}/store.db"
    async with running_stack() as stack:
        lenient = _config(tmp_path, config_text(stack, store))
        rc, out, err = await _cli(
            "replay", str(traffic), "--config", str(lenient), "--format", "junit"
        )
        assert rc == 0, err
        suite = ET.fromstring(out)
        cases = suite.findall(".//testcase")
        assert [c.get("name") for c in cases] == ["order-show"]
        assert "replayed 400 of 400 requests" in err
        assert re.search(r"^strangler replay: \d+/400 ", err, re.M)  # plain progress lines

        strict = _config(tmp_path, config_text(stack, store, max_mismatch_rate=0.01))
        other = f"sqlite:///{tmp_path}/other.db"
        rc, out, err = await _cli("replay", str(traffic), "--config", str(strict), "--store", other)
    assert rc == 1, err
    assert "order-show" in out and "$.total" in out
    assert (tmp_path / "other.db").exists()


async def test_ctrl_c_stops_cleanly_and_keeps_what_was_recorded(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 3000)
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    async with running_stack(candidate_delay=0.05) as stack:
        config = _config(tmp_path, config_text(stack, store))
        args = ["replay", str(traffic), "--config", str(config), "--concurrency", "8"]
        proc = await asyncio.create_subprocess_exec(
            *_CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            await wait_until(lambda: stack.candidate_hits.get("GET", 0) >= 40, timeout=20)
            proc.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10
    m = re.search(rb"interrupted: replayed (\d+) of 3000 requests; (\d+) recorded", err)
    assert m is not None, err
    replayed, recorded = int(m[1]), int(m[2])
    assert 40 <= recorded == replayed < 3000
    assert b"Traceback" not in err and out == b""
    async with Store(store) as s:
        assert await s.count() == recorded


def test_progress_on_a_terminal_redraws_one_line() -> None:
    clock = iter(float(i) for i in range(100))
    stream = io.StringIO()
    bar = Progress(stream, tty=True, clock=lambda: next(clock))
    for done in (10, 20, 40):
        bar(done, 40)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "40/40  100%" in text and "ETA" in text


def test_progress_off_a_terminal_prints_plain_lines_per_tenth() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = Progress(stream, tty=False, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.001
        bar(done, 100)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("strangler replay: 100/100")


async def test_a_last_line_cut_short_is_skipped_with_a_note(tmp_path: Path) -> None:
    """A proxy killed mid-write leaves its capture's last line cut short (no newline, not
    JSON). Replay refused the whole file (`not valid JSON`, exit 2); it replays the rest."""
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 20)
    whole = traffic.read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    traffic.write_bytes(whole + last[: len(last) // 2])
    async with running_stack() as stack:
        config = _config(tmp_path, config_text(stack, f"sqlite:///{tmp_path}/store.db"))
        rc, out, err = await _cli("replay", str(traffic), "--config", str(config))
    assert rc == 0, err
    assert "replayed 20 of 20 requests" in err
    assert f"{traffic}:21: cut short" in err
    assert stack.primary_hits == {"GET": 20}
    assert "order-show" in out


def test_a_cut_short_line_that_is_not_the_last_is_an_error(tmp_path: Path) -> None:
    config = _config(tmp_path, config_text(_closed_stack(), f"sqlite:///{tmp_path}/s.db"))
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 2)
    first, second = traffic.read_bytes().splitlines(keepends=True)
    traffic.write_bytes(first[:20] + b"\n" + second)
    result = _replay(str(traffic), "--config", str(config))
    _one_error_line(result, "traffic.jsonl:1: not valid JSON")


async def test_comparisons_the_store_did_not_take_fail_the_run(tmp_path: Path) -> None:
    """The store refused the mismatch rows (here a trigger; a full disk, a constraint): the
    report judged the matches alone and replay exited 0, so the CI recipe's report step,
    reading the same store, passed a regression. Now: exit 2, as for any store error."""
    traffic = tmp_path / "traffic.jsonl"
    write_traffic(traffic, 40)  # 4 mismatches ($.total), 2 candidate errors
    db = tmp_path / "store.db"
    store = f"sqlite:///{db}"
    async with Store(store) as s:
        await s.count()  # the schema exists
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON comparisons WHEN NEW.outcome = 'mismatch'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    async with running_stack() as stack:
        config = _config(tmp_path, config_text(stack, store, max_mismatch_rate=0.01))
        rc, out, err = await _cli("replay", str(traffic), "--config", str(config))
    assert rc == 2, err
    assert re.search(r"error: 4 of 40 comparisons were not stored", err), err
    assert out == "" and "Traceback" not in err
