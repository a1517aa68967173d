"""Process tree discovery and CPU accounting from /proc."""

from __future__ import annotations

import os

from bench.procs import (
    cpu_busy_ns,
    cpu_delta_ns,
    parse_cpu_busy_ns,
    parse_stat_line,
    process_tree,
    tree_cpu_ns,
)


def test_stat_line_with_spaces_and_parens_in_comm() -> None:
    line = "1234 (we ird) (name)) S 99 1234 1234 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0"
    assert parse_stat_line(line) == (1234, 99)


def test_cpu_delta_counts_new_tasks_from_zero_and_ignores_gone_ones() -> None:
    before = {(1, 1): 1_000, (1, 2): 500, (1, 3): 700}
    after = {(1, 1): 1_600, (1, 2): 500, (1, 4): 300}
    assert cpu_delta_ns(before, after) == 900


def test_own_process_tree_and_cpu_are_visible() -> None:
    me = os.getpid()
    assert process_tree(me)[0] == me
    spent = tree_cpu_ns(me)
    assert (me, me) in spent
    assert spent[(me, me)] > 0


def test_cpu_busy_excludes_idle_and_iowait_and_guest_columns() -> None:
    stat = "cpu  9 9 9 9 9 9 9 9 9 9\ncpu0 10 1 5 1000 7 2 3 4 50 0\ncpu1 20 0 10 900 0 0 0 0 0 0\n"
    assert parse_cpu_busy_ns(stat, 0, 10_000_000) == (10 + 1 + 5 + 2 + 3 + 4) * 10_000_000
    assert parse_cpu_busy_ns(stat, 1, 1) == 30


def test_cpu_busy_of_a_live_cpu_is_positive() -> None:
    assert cpu_busy_ns(min(os.sched_getaffinity(0))) > 0
