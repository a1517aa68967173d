"""A route's migration path: stages, the current one and the next."""

from __future__ import annotations

import pytest

from proxy.migrate import MigrateError, Stage, current_stage, next_stage, path_of, reload_target
from proxy.settings import CanarySettings, MatchSettings, PromotionSettings, RouteSettings


def _route(
    mode: str, percent: float = 0.0, steps: tuple[float, ...] = (1, 5, 25, 50, 100)
) -> RouteSettings:
    return RouteSettings(
        name="r",
        match=MatchSettings(path="/x"),
        mode=mode,  # type: ignore[arg-type]
        canary=CanarySettings(percent=percent),
        promotion=PromotionSettings(steps=steps),
    )


def test_path_walks_every_step_and_100_means_extracted() -> None:
    stages = [str(s) for s in path_of(_route("shadow"))]
    assert stages == [
        "legacy",
        "shadow",
        "canary 1%",
        "canary 5%",
        "canary 25%",
        "canary 50%",
        "extracted",
    ]
    assert [str(s) for s in path_of(_route("shadow", steps=(50, 10, 10)))] == [
        "legacy", "shadow", "canary 10%", "canary 50%", "extracted",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "percent", "expected"),
    [
        ("legacy", 0, "shadow"),
        ("shadow", 40, "canary 1%"),
        ("canary", 1, "canary 5%"),
        ("canary", 3, "canary 5%"),  # off the path: the next step up
        ("canary", 50, "extracted"),
        ("canary", 75, "extracted"),
        ("extracted", 0, None),
    ],
)
def test_next_stage(mode: str, percent: float, expected: str | None) -> None:
    nxt = next_stage(_route(mode, percent))
    assert (str(nxt) if nxt else None) == expected


def test_share_of_each_mode() -> None:
    assert current_stage(_route("shadow", 40)).share == 0
    assert current_stage(_route("canary", 40)).share == 40
    assert current_stage(_route("extracted", 40)).share == 100
    assert Stage("canary", 5).serves_candidate and not Stage("shadow").serves_candidate


def test_reload_target() -> None:
    assert reload_target("http://127.0.0.1:9090") == "http://127.0.0.1:9090/-/reload"
    assert reload_target("http://h:1/admin/") == "http://h:1/admin/-/reload"
    assert reload_target("http://h:1/-/reload") == "http://h:1/-/reload"
    with pytest.raises(MigrateError):
        reload_target("127.0.0.1:9090")
