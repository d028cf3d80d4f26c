"""bench/record.py: every benchmark run appends a dated row with its command to docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _record() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_record", REPO / "bench" / "record.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_go_under_their_benchmark_in_the_log_and_nothing_else_moves() -> None:
    record = _record()
    doc = "# Benchmarks\n\nAnalysis stays here.\n"
    once = record.add_row(doc, "pod_start.py", {"first step s": 6.14}, "python bench/pod_start.py", "2026-11-23")
    twice = record.add_row(once, "eval_generation.py", {"x": 11.9}, "python bench/eval_generation.py", "2026-11-23")
    thrice = record.add_row(twice, "pod_start.py", {"first step s": 5.9, "new": 1}, "python bench/pod_start.py", "d2")
    assert thrice.startswith(doc.rstrip("\n"))
    assert thrice.count(record.LOG_HEADING) == 1
    pod = thrice.split("### pod_start.py")[1].split("###")[0]
    assert "| date | command | first step s |" in pod
    assert pod.index("| 2026-11-23 | `python bench/pod_start.py` | 6.14 |") < pod.index(
        "| d2 | `python bench/pod_start.py` | 5.9 |"
    )
    assert "| 2026-11-23 | `python bench/eval_generation.py` | 11.9 |" in thrice.split("### eval_generation.py")[1]


def test_a_figure_reported_later_becomes_a_column() -> None:
    record = _record()
    once = record.add_row("", "b", {"x": 1}, "python bench/b.py", "d1")
    twice = record.add_row(once, "b", {"x": 2, "y": 3}, "python bench/b.py", "d2")
    table = [line for line in twice.splitlines() if line.startswith("|")]
    assert table == [
        "| date | command | x | y |",
        "| --- | --- | --- | --- |",
        "| d1 | `python bench/b.py` | 1 | - |",
        "| d2 | `python bench/b.py` | 2 | 3 |",
    ]


def test_cells_cannot_break_the_table() -> None:
    record = _record()
    text = record.add_row("", "b", {"note": "a|b\nc", "ratio": 1.23456789}, "python bench/b.py --x 'a b'", "d")
    assert "| d | `python bench/b.py --x 'a b'` | a\\|b c | 1.235 |" in text
