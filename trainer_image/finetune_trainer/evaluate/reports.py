"""The published report: results.json (everything, machine-readable), report.md and report.html.

The HTML page is self-contained (inline CSS and SVG, no scripts or external assets) so it opens
from an object-store console or an air-gapped laptop as it is.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune_operator.api.evaluation import LOWER_IS_BETTER, MetricResult, MetricSummary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


SAMPLES_SHOWN = 20
CELL_LIMIT = 200
_LINE_BREAKS = str.maketrans(dict.fromkeys("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def _clip(text: str) -> str:
    return text if len(text) <= CELL_LIMIT else text[: CELL_LIMIT - 3] + "..."


def md_cell(text: str) -> str:
    """Text a model or a dataset wrote, safe in one Markdown table cell, and clipped to CELL_LIMIT."""
    return md_escape(_clip(text))


def md_escape(text: str) -> str:
    """Text safe in one Markdown table cell: no character that ends the row (any line break, carriage
    returns included), starts a new cell (`|`, and a backslash that would escape the next cell's `|`) or
    opens raw HTML."""
    text = text.translate(_LINE_BREAKS)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def threshold_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each summary metric with its threshold (`>= x` or `<= x` for lower-is-better) and whether it was met."""
    rows = []
    for row in document["summary"]:
        limit = document["thresholds"].get(row["metric"])
        lower = row["metric"] in LOWER_IS_BETTER
        gate = f"{'<=' if lower else '>='} {limit:g}" if limit is not None else ""
        met = None if limit is None else (row["value"] <= limit if lower else row["value"] >= limit)
        rows.append({**row, "threshold": gate, "met": met})
    return rows


_SAMPLE_KEYS = ("input", "reference", "prediction", "baselinePrediction")


def render_markdown(document: Mapping[str, Any]) -> str:
    lines = [
        f"# Evaluation report: {document['title']}",
        "",
        f"- Base model: `{document['model']['baseModel']}`",
        f"- Adapter: `{document['model'].get('adapter') or 'none (base model alone)'}`",
        f"- Verdict: **{document['verdict']}**",
        "",
        "## Summary (mean over benchmarks)",
        "",
        "| metric | tuned | baseline | delta | threshold |",
        "|---|---|---|---|---|",
    ]
    for row in threshold_rows(document):
        gate = row["threshold"] + ("" if row["met"] is None else " (met)" if row["met"] else " (**missed**)")
        lines.append(
            f"| {row['metric']} | {_fmt(row['value'])} | {_fmt(row.get('baseline'))} | "
            f"{_delta(row.get('delta'))} | {gate} |"
        )
    lines += ["", "## Per benchmark", "", "| benchmark | metric | tuned | baseline | delta |", "|---|---|---|---|---|"]
    for row in document["results"]:
        lines.append(
            f"| {row['benchmark']} | {row['metric']} | {_fmt(row['value'])} | {_fmt(row.get('baseline'))} | "
            f"{_delta(row.get('delta'))} |"
        )
    if tasks := lm_eval_rows(document):
        lines += [
            "",
            "## lm-eval tasks",
            "",
            "| benchmark | task | metric | tuned | baseline |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['benchmark']} | {md_escape(r['task'])} | {r['metric']} | {_fmt(r['value'])} | "
            f"{_fmt(r['baseline'])} |"
            for r in tasks
        ]
    for name, counts, verdicts in judge_rows(document):
        lines += ["", f"## Judge verdicts: {name}", "", ", ".join(f"{k} {v}" for k, v in counts.items()), ""]
        lines += ["| question | about | read | raw verdict |", "|---|---|---|---|"]
        lines += [
            "| " + " | ".join(md_cell(v[k]) for k in ("question", "about", "read", "raw")) + " |" for v in verdicts
        ]
    if document["missed"]:
        lines += ["", "## Missed thresholds", "", *(f"- {m}" for m in document["missed"])]
    lines += ["", f"## Samples (first {SAMPLES_SHOWN} per benchmark)", ""]
    for name, samples in document["samples"].items():
        lines += [f"### {name}", "", "| input | reference | tuned | baseline |", "|---|---|---|---|"]
        for sample in samples[:SAMPLES_SHOWN]:
            cells = [sample.get(k) or "" for k in _SAMPLE_KEYS]
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def bar_chart(summary: Sequence[Mapping[str, Any]]) -> str:
    """Grouped horizontal bars, tuned vs baseline, per metric (0-1 metrics; perplexity scaled to its max)."""
    row_height, width, label = 44, 640, 130
    height = row_height * max(len(summary), 1) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for index, row in enumerate(summary):
        top = 10 + index * row_height
        values = [row["value"], row.get("baseline")]
        scale = max((v for v in values if v is not None), default=1.0) if row["metric"] in LOWER_IS_BETTER else 1.0
        scale = scale or 1.0
        parts.append(f'<text x="0" y="{top + 18}" font-size="13">{html.escape(row["metric"])}</text>')
        for offset, (value, colour, name) in enumerate(
            ((row["value"], "#2b6cb0", "tuned"), (row.get("baseline"), "#a0aec0", "baseline"))
        ):
            if value is None:
                continue
            bar = max(0.0, min(1.0, value / scale)) * (width - label - 80)
            y = top + offset * 16
            parts.append(
                f'<rect x="{label}" y="{y}" width="{bar:.1f}" height="14" fill="{colour}"><title>{name}</title></rect>'
            )
            parts.append(f'<text x="{label + bar + 4:.1f}" y="{y + 12}" font-size="11">{value:.3f}</text>')
    legend = height - 12
    parts.append(f'<rect x="{label}" y="{legend - 10}" width="12" height="12" fill="#2b6cb0"/>')
    parts.append(f'<text x="{label + 16}" y="{legend}" font-size="12">tuned</text>')
    parts.append(f'<rect x="{label + 70}" y="{legend - 10}" width="12" height="12" fill="#a0aec0"/>')
    parts.append(f'<text x="{label + 86}" y="{legend}" font-size="12">baseline</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(document: Mapping[str, Any]) -> str:
    def table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(_fmt(v) if isinstance(v, float) else str(v if v is not None else '-'))}</td>"
                for v in (row.get(k) for k in keys)
            )
            + "</tr>"
            for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    def mark(met: bool | None) -> str:
        return "" if met is None else "<span class='met'>met</span>" if met else "<span class='missed'>missed</span>"

    gates = "".join(
        f"<tr><td>{html.escape(r['metric'])}</td><td>{_fmt(r['value'])}</td><td>{_fmt(r.get('baseline'))}</td>"
        f"<td>{_delta(r.get('delta'))}</td><td>{html.escape(r['threshold'])}</td><td>{mark(r['met'])}</td></tr>"
        for r in threshold_rows(document)
    )
    summary = (
        "<table><tr><th>metric</th><th>tuned</th><th>baseline</th><th>delta</th><th>threshold</th><th></th></tr>"
        f"{gates}</table>"
    )
    samples = "".join(
        f"<h3>{html.escape(name)}</h3><table><tr><th>prompt</th><th>reference</th><th>tuned</th><th>baseline</th></tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(_clip(sample.get(k) or ''))}</td>" for k in _SAMPLE_KEYS) + "</tr>"
            for sample in rows[:SAMPLES_SHOWN]
        )
        + "</table>"
        for name, rows in document["samples"].items()
    )
    title = html.escape(document["title"])
    verdict = html.escape(document["verdict"])
    missed = "".join(f"<li>{html.escape(m)}</li>" for m in document["missed"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation report: {title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#1a202c}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd5e0;padding:4px 8px;text-align:left}"
        "th{background:#edf2f7}.met{color:#276749;font-weight:bold}.missed{color:#c53030;font-weight:bold}"
        "</style></head><body>"
        f"<h1>Evaluation report: {title}</h1>"
        f"<p>Base model <code>{html.escape(document['model']['baseModel'])}</code>, adapter "
        f"<code>{html.escape(document['model'].get('adapter') or 'none')}</code>. Verdict: <b>{verdict}</b></p>"
        f"<h2>Tuned vs baseline</h2>{bar_chart(document['summary'])}"
        f"<h2>Summary (mean over benchmarks) and thresholds</h2>{summary}"
        f"<h2>Per benchmark</h2>"
        f"{table(document['results'], ['benchmark', 'metric', 'value', 'baseline', 'delta'])}"
        + (
            f"<h2>lm-eval tasks</h2>{table(tasks, ['benchmark', 'task', 'metric', 'value', 'baseline'])}"
            if (tasks := lm_eval_rows(document))
            else ""
        )
        + "".join(
            f"<h2>Judge verdicts: {html.escape(name)}</h2><p>"
            + html.escape(", ".join(f"{k} {v}" for k, v in counts.items()))
            + f"</p>{table(verdicts, ['question', 'about', 'read', 'raw'])}"
            for name, counts, verdicts in judge_rows(document)
        )
        + (f"<h2>Missed thresholds</h2><ul>{missed}</ul>" if missed else "")
        + f"<h2>Samples (first {SAMPLES_SHOWN} per benchmark)</h2>{samples}"
        + "</body></html>\n"
    )


def build_document(
    *,
    title: str,
    model: Mapping[str, Any],
    results: Sequence[MetricResult],
    summary: Sequence[MetricSummary],
    thresholds: Mapping[str, float],
    missed: Sequence[str],
    samples: Mapping[str, list[dict[str, Any]]],
    details: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`details`: per benchmark, what its metrics alone do not show (lm-eval's per-task scores, a judge's
    counts); the samples of a judge benchmark carry every raw verdict."""
    verdict = "no thresholds set" if not thresholds else ("passed" if not missed else "failed")
    return {
        "title": title,
        "model": dict(model),
        "verdict": verdict,
        "thresholds": dict(thresholds),
        "missed": list(missed),
        "summary": [s.to_json_dict() for s in summary],
        "results": [r.to_json_dict() for r in results],
        "details": {name: dict(d) for name, d in (details or {}).items()},
        "samples": dict(samples),
    }


def judge_rows(document: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], list[dict[str, str]]]]:
    """Per judge benchmark: its counts, and the verdicts on its first samples (which order or model each
    was about, what was read from it, the raw text clipped)."""
    rows = []
    for name, detail in document.get("details", {}).items():
        if "judge" not in detail:
            continue
        verdicts = [
            {
                "question": _clip(sample.get("input") or ""),
                "about": str(v.get("order") or v.get("model")),
                "read": str(_read(v)),
                "raw": _clip(v.get("raw") or ""),
            }
            for sample in document["samples"].get(name, [])[:SAMPLES_SHOWN]
            for v in sample.get("verdicts", [])
        ]
        rows.append((name, dict(detail["judge"]["counts"]), verdicts))
    return rows


def _read(verdict: Mapping[str, Any]) -> Any:
    """What was read from one verdict: a pairwise outcome or a rating, else `unparsed`."""
    read = verdict.get("verdict", verdict.get("rating"))
    return "unparsed" if read is None else read


def lm_eval_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each lm-eval task's own scores, tuned and baseline, under its benchmark."""
    rows = []
    for name, detail in document.get("details", {}).items():
        tasks = detail.get("tasks")
        if not tasks:
            continue
        baseline = tasks.get("baseline") or {}
        for task, metrics in tasks["tuned"].items():
            for metric, value in metrics.items():
                before = baseline.get(task, {}).get(metric)
                rows.append({"benchmark": name, "task": task, "metric": metric, "value": value, "baseline": before})
    return rows


def write_reports(document: Mapping[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "results.json": json.dumps(document, indent=2, ensure_ascii=False),
        "report.md": render_markdown(document),
        "report.html": render_html(document),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]
