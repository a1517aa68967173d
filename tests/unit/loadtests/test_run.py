"""`python -m loadtests.run` options and the Locust command it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.run import _locust_command, parse_args, parse_duration


def test_durations() -> None:
    assert parse_duration("60s") == 60
    assert parse_duration("2m") == 120
    assert parse_duration(" 45 ") == 45
    for bad in ("0s", "1.5m", "soon", "-3s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_defaults_come_from_the_environment() -> None:
    assert parse_args([], env={}).users == 50
    opts = parse_args([], env={"LOADTEST_USERS": "7", "LOADTEST_DURATION": "1m"})
    assert (opts.users, opts.duration_s, opts.profile) == (7, 60, "demo")
    flags = parse_args(["--users", "3", "--duration", "5s", "--profile", "proxy-only"], env={})
    assert (flags.users, flags.duration_s, flags.profile) == (3, 5, "proxy-only")
    assert parse_args(["--profile", "direct"], env={}).profile == "direct"
    assert parse_args([], env={"LOADTEST_PROFILE": "proxy-only"}).profile == "proxy-only"


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--users", "0"], ["--duration", "forever"], ["--profile", "nginx"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv, env={})
        assert exc.value.code == 2
    assert "duration must look like" in capsys.readouterr().err


def test_locust_runs_headless_and_bounded_with_csv() -> None:
    opts = parse_args(["--users", "4", "--duration", "9s"], env={})
    cmd = _locust_command(opts, "http://127.0.0.1:1", Path("/r/demo"))
    assert cmd[1:3] == ["-m", "locust"]
    assert "--headless" in cmd
    assert cmd[cmd.index("--run-time") + 1] == "9s"
    assert cmd[cmd.index("--users") + 1] == "4"
    assert cmd[cmd.index("--csv") + 1] == "/r/demo"
    assert cmd[cmd.index("--host") + 1] == "http://127.0.0.1:1"
    assert cmd[cmd.index("--exit-code-on-error") + 1] == "1"
