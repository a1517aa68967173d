"""Process tree discovery and CPU accounting from /proc."""

from __future__ import annotations

import os

from bench.procs import cpu_delta_ns, parse_stat_line, process_tree, tree_cpu_ns


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
