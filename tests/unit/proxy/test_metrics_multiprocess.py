"""The config-version info metric across reloads in Prometheus multiprocess mode (--workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# prometheus-client picks its value class when it is imported, so multiprocess mode needs a
# process of its own, started with PROMETHEUS_MULTIPROC_DIR set.
_SCRIPT = """
import warnings
warnings.simplefilter("error", UserWarning)  # "Removal of labels ..." fails the run
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from proxy.metrics import Metrics

metrics = Metrics()
metrics.set_config_version("aaa")
metrics.set_config_version("bbb")
metrics.set_config_version("bbb")
scrape = CollectorRegistry()
multiprocess.MultiProcessCollector(scrape)
print(generate_latest(scrape).decode())
"""


def _python(mp_dir: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a Python process of its own with PROMETHEUS_MULTIPROC_DIR=mp_dir."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={"PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_reload_under_workers_keeps_one_version_at_one_without_a_warning(
    tmp_path: Path,
) -> None:
    done = _python(tmp_path, _SCRIPT)
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if x.startswith("strangler_config_info{")]
    values = {x.split('version="')[1].split('"')[0]: float(x.rsplit(" ", 1)[1]) for x in lines}
    assert values == {"aaa": 0.0, "bbb": 1.0}, done.stdout


_SEES_AN_OPEN_BREAKER = """
from proxy.metrics import Metrics

metrics = Metrics()
metrics.breaker_state.labels("orders").set(1)
metrics.auto_rollback.labels("order-show").set(1)
"""

_SCRAPE_AFTER_ITS_DEATH = """
import sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

multiprocess.mark_process_dead(int(sys.argv[1]))
scrape = CollectorRegistry()
multiprocess.MultiProcessCollector(scrape)
print(generate_latest(scrape).decode())
"""


def test_gauges_of_a_dead_worker_leave_the_scrape(tmp_path: Path) -> None:
    """A breaker that a worker (or helper) saw open stayed at 1 after it died (max mode)."""

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = _python(tmp_path, script, *args)
        assert done.returncode == 0, done.stderr
        return done

    worker = subprocess.Popen(
        [sys.executable, "-c", _SEES_AN_OPEN_BREAKER],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[3],
    )
    assert worker.wait(60) == 0
    text = run(_SCRAPE_AFTER_ITS_DEATH, str(worker.pid)).stdout
    held = [
        line
        for line in text.splitlines()
        if line.startswith(("strangler_breaker_state{", "strangler_auto_rollback{"))
    ]
    assert held == [], text


_SCRAPE_WITH = """
import sys
from prometheus_client import generate_latest
from proxy.metrics import Metrics, scrape_registry

Metrics().requests.labels("r", "legacy", "legacy", "2xx").inc()
print(generate_latest(scrape_registry(sys.argv[1])).decode())
"""


def test_a_metrics_file_not_yet_sized_does_not_fail_the_scrape(tmp_path: Path) -> None:
    """A process that has just created its file (or was killed before sizing it) left it
    empty, and the supervisor's /-/metrics answered 500 (struct.error) to every scrape."""
    (tmp_path / "counter_424242.db").write_bytes(b"")
    done = _python(tmp_path, _SCRAPE_WITH, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "strangler_requests_total{" in done.stdout, done.stdout


_SCRAPE_ONLY = """
import sys
from prometheus_client import generate_latest
from proxy.metrics import scrape_registry

print(generate_latest(scrape_registry(sys.argv[1])).decode())
"""


def test_live_gauges_of_a_process_nobody_marked_dead_leave_the_scrape(tmp_path: Path) -> None:
    """The helper of a SIGKILLed worker: its worker, which marks it dead, died first, and
    the supervisor only knows its workers. The breaker it saw open stayed at 1 for good."""
    gone = subprocess.Popen(
        [sys.executable, "-c", _SEES_AN_OPEN_BREAKER],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[3],
    )
    assert gone.wait(60) == 0
    assert list(tmp_path.glob(f"gauge_livemax_{gone.pid}.db")), "no live gauge file written"
    done = _python(tmp_path, _SCRAPE_ONLY, str(tmp_path))
    assert done.returncode == 0, done.stderr
    held = [
        line
        for line in done.stdout.splitlines()
        if line.startswith(("strangler_breaker_state{", "strangler_auto_rollback{"))
    ]
    assert held == [], done.stdout


def test_live_gauges_of_a_running_process_stay_in_the_scrape(tmp_path: Path) -> None:
    script = _SEES_AN_OPEN_BREAKER + "\n" + _SCRAPE_ONLY
    done = _python(tmp_path, script, str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert 'strangler_breaker_state{backend="orders"} 1.0' in done.stdout, done.stdout
