"""Append a benchmark's figures as a dated row to docs/benchmarks.md, with the exact command.

Every run leaves a trace next to the analysed sections above it, so a regression (or a claim) can be
checked against the command that produced it. One table per benchmark under "## Results log";
a table is created with the first row's columns; later rows fill the same columns (missing: "-"),
and a figure a benchmark starts reporting later becomes a new column ("-" in the rows before it).
Set FINETUNE_BENCH_NO_RECORD=1 (or pass --no-record) for a run that should leave no trace.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
LOG_HEADING = "## Results log (appended by the benchmarks)"


def command_line() -> str:
    """The command as typed from the repository root (interpreter path shortened to `python`)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(DOC.parents[1]).as_posix()
    except ValueError:
        shown = str(script)
    return " ".join(["python", shown, *map(shlex.quote, sys.argv[1:])])


def code_version() -> str:
    """The commit measured, with -dirty when anything but this log differs from it."""
    root = DOC.parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", f":!{DOC.relative_to(root).as_posix()}"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if changed else "")


def _cell(value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def add_row(text: str, benchmark: str, row: Mapping[str, object], command: str, date: str) -> str:
    """`text` (the document) with the row appended to `benchmark`'s table, creating what is missing."""
    if LOG_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{LOG_HEADING}\n"
    heading = f"### {benchmark}"
    head, _, log = text.partition(LOG_HEADING)
    if heading not in log:
        columns = ["date", "command", *row]
        log = log.rstrip("\n") + (
            f"\n\n{heading}\n\n| {' | '.join(columns)} |\n| {' | '.join('---' for _ in columns)} |\n"
        )
    before, _, rest = log.partition(heading)
    section, marker, after = rest.partition("\n### ")
    lines = section.split("\n")
    values = {"date": date, "command": f"`{command}`", **{k: _cell(v) for k, v in row.items()}}
    columns = _widen(lines, values)
    new = "| " + " | ".join(values.get(c, "-") for c in columns) + " |"
    last = max(i for i, line in enumerate(lines) if line.startswith("|"))
    lines.insert(last + 1, new)
    return head + LOG_HEADING + before + heading + "\n".join(lines) + marker + after


def _widen(lines: list[str], values: Mapping[str, str]) -> list[str]:
    """The table's columns, after appending (in place) those of `values` it lacks."""
    at = next(i for i, line in enumerate(lines) if line.startswith("| date |"))
    columns = [c.strip() for c in lines[at].strip("|").split("|")]
    new = [key for key in values if key not in columns]
    if new:
        lines[at] += " " + " | ".join(new) + " |"
        lines[at + 1] += " " + " | ".join("---" for _ in new) + " |"
        for i in range(at + 2, len(lines)):
            if lines[i].startswith("|"):
                lines[i] += " " + " | ".join("-" for _ in new) + " |"
    return columns + new


def record(benchmark: str, row: Mapping[str, object], enabled: bool = True) -> None:
    if not enabled or os.environ.get("FINETUNE_BENCH_NO_RECORD"):
        return
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    DOC.write_text(add_row(DOC.read_text(), benchmark, {"commit": code_version(), **row}, command_line(), date))
    print(f"recorded in {DOC.relative_to(DOC.parents[1])} ({benchmark})")
