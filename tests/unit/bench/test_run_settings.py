"""Command line and environment settings of `python -m bench.run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import HALT_POLL_NS, guest_halt_poll, settings_from


def test_defaults_run_every_target_for_seven_rounds_of_one_second() -> None:
    settings = settings_from([], {})
    assert (settings.rounds, settings.slice_s, settings.pin) == (7, 1, True)
    assert settings.profile is None
    assert settings.targets[0] == "direct"
    assert "strangler-1w" in settings.targets


def test_quick_and_environment_overrides() -> None:
    assert settings_from(["--quick"], {}).rounds == 2
    settings = settings_from(["--quick"], {"BENCH_ROUNDS": "3", "BENCH_SLICE": "2"})
    assert (settings.rounds, settings.slice_s) == (3, 2)


def test_profile_defaults_to_the_one_worker_strangler() -> None:
    assert settings_from(["--profile"], {}).profile == "strangler-1w"
    assert settings_from(["--profile", "nginx-1w"], {}).profile == "nginx-1w"


def test_target_subset_and_unknown_target() -> None:
    assert settings_from(["--targets", "direct,nginx-1w"], {}).targets == ("direct", "nginx-1w")
    with pytest.raises(SystemExit):
        settings_from(["--targets", "direct,haproxy"], {})


def test_slices_shorter_than_a_second_are_refused() -> None:
    with pytest.raises(SystemExit):
        settings_from([], {"BENCH_SLICE": "0"})


def test_section_subset_and_unknown_section() -> None:
    assert settings_from([], {}).only_sections == ()
    assert settings_from(["--sections", "shadow,routes"], {}).only_sections == ("shadow", "routes")
    with pytest.raises(SystemExit):
        settings_from(["--sections", "shadow,nope"], {})


def test_halt_poll_is_raised_for_the_run_and_restored(tmp_path: Path) -> None:
    param = tmp_path / "guest_halt_poll_ns"
    param.write_text("0\n")
    with guest_halt_poll(True, param) as note:
        assert param.read_text() == str(HALT_POLL_NS)
        assert "restored afterwards" in note
    assert param.read_text() == "0"


def test_halt_poll_is_left_alone_when_asked_or_already_on(tmp_path: Path) -> None:
    param = tmp_path / "guest_halt_poll_ns"
    param.write_text("0")
    with guest_halt_poll(False, param) as note:
        assert param.read_text() == "0"
        assert "as the machine has it" in note
    param.write_text("400000")
    with guest_halt_poll(True, param):
        assert param.read_text() == "400000"
    with guest_halt_poll(True, tmp_path / "missing") as note:
        assert "not applicable" in note


def test_no_halt_poll_flag() -> None:
    assert settings_from(["--no-halt-poll"], {}).halt_poll is False
    assert settings_from([], {}).halt_poll is True
