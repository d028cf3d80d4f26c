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
    thresholds = document["thresholds"]
    for row in document["summary"]:
        limit = thresholds.get(row["metric"])
        sign = "<=" if row["metric"] in LOWER_IS_BETTER else ">="
        gate = f"{sign} {limit:g}" if limit is not None else ""
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
    if document["missed"]:
        lines += ["", "## Missed thresholds", "", *(f"- {m}" for m in document["missed"])]
    lines += ["", "## Samples (first 20 per benchmark)", ""]
    for name, samples in document["samples"].items():
        lines += [f"### {name}", "", "| input | reference | tuned | baseline |", "|---|---|---|---|"]
        for sample in samples[:20]:
            cells = [sample.get(k) or "" for k in ("input", "reference", "prediction", "baselinePrediction")]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")[:200] for c in cells) + " |")
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

    title = html.escape(document["title"])
    verdict = html.escape(document["verdict"])
    missed = "".join(f"<li>{html.escape(m)}</li>" for m in document["missed"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation report: {title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#1a202c}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd5e0;padding:4px 8px;text-align:left}"
        "th{background:#edf2f7}</style></head><body>"
        f"<h1>Evaluation report: {title}</h1>"
        f"<p>Base model <code>{html.escape(document['model']['baseModel'])}</code>, adapter "
        f"<code>{html.escape(document['model'].get('adapter') or 'none')}</code>. Verdict: <b>{verdict}</b></p>"
        f"<h2>Tuned vs baseline</h2>{bar_chart(document['summary'])}"
        f"<h2>Summary (mean over benchmarks)</h2>{table(document['summary'], ['metric', 'value', 'baseline', 'delta'])}"
        f"<h2>Per benchmark</h2>"
        f"{table(document['results'], ['benchmark', 'metric', 'value', 'baseline', 'delta'])}"
        + (f"<h2>Missed thresholds</h2><ul>{missed}</ul>" if missed else "")
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
) -> dict[str, Any]:
    verdict = "no thresholds set" if not thresholds else ("passed" if not missed else "failed")
    return {
        "title": title,
        "model": dict(model),
        "verdict": verdict,
        "thresholds": dict(thresholds),
        "missed": list(missed),
        "summary": [s.to_json_dict() for s in summary],
        "results": [r.to_json_dict() for r in results],
        "samples": dict(samples),
    }


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
