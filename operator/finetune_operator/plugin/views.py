"""What `kubectl finetune` prints, as pure functions of the resources it read.

The tables take their columns from the Kind registry (the CRDs' printer columns), so `kubectl finetune
get` and `kubectl get ftj` never disagree; the pipeline steps are read off status the way
docs/troubleshooting.md explains it, and the advice for a reason is that document's own row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from ..api import Kind, PrinterColumn
from ..api.evaluation import LOWER_IS_BETTER, MetricSummary, judge

_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def pick(body: Mapping[str, Any], path: str) -> Any:
    """A printer column's value: the dotted `.a.b[0].c` JSONPath subset our columns use (None if absent)."""
    value: Any = body
    for part in path.strip(".").split("."):
        indexed = _INDEX.match(part)
        key, index = (indexed.group(1), int(indexed.group(2))) if indexed else (part, None)
        value = value.get(key) if isinstance(value, Mapping) else None
        if index is not None:
            value = value[index] if isinstance(value, list) and len(value) > index else None
        if value is None:
            return None
    return value


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 42s, 7m, 3h, 5d."""
    if not timestamp:
        return "<unknown>"
    seconds = int((now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def cell(column: PrinterColumn, body: Mapping[str, Any], now: datetime) -> str:
    value = pick(body, column.json_path)
    if column.type == "date":
        return age(value, now)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(rows: Sequence[Sequence[str]]) -> str:
    """kubectl's layout: left-aligned columns three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def kind_table(kind: Kind, items: Sequence[Mapping[str, Any]], now: datetime, *, namespaces: bool) -> str:
    """`kubectl get <kind>` as the CRD's printer columns would print it (priority-0 columns)."""
    columns = [c for c in kind.columns if c.priority == 0]
    head = [*(["NAMESPACE"] if namespaces else []), "NAME", *(c.name.upper() for c in columns)]
    rows = [
        [
            *([i["metadata"]["namespace"]] if namespaces else []),
            i["metadata"]["name"],
            *(cell(c, i, now) for c in columns),
        ]
        for i in sorted(items, key=lambda i: (i["metadata"].get("namespace", ""), i["metadata"]["name"]))
    ]
    return table([head, *rows])


@dataclass(frozen=True)
class Step:
    """One step of a FineTuneJob's pipeline: `state` is done, current, waiting, failed or skipped."""

    name: str
    state: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "state": self.state, "detail": self.detail}


def _condition(body: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    found = (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == kind)
    return next(found, {})


def _eta(seconds: int | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(int(seconds), 60)
    return f", ETA {minutes}m{rest:02d}s" if minutes else f", ETA {rest}s"


def _version_of(job: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Model version this job's adapter was registered as (None: not registered yet)."""
    name = (job.get("spec") or {}).get("output", {}).get("model")
    uid = job["metadata"].get("uid")
    for model in models:
        if model["metadata"]["name"] != name:
            continue
        for version in (model.get("status") or {}).get("versions") or []:
            made_by = version.get("fineTuneJob") or {}
            if made_by.get("name") == job["metadata"]["name"] and made_by.get("uid") == uid:
                return dict(version)
    return None


def steps(job: Mapping[str, Any], models: Sequence[Mapping[str, Any]] = ()) -> list[Step]:
    """validated -> queued -> running -> publishing -> evaluating -> registered, each with its state.

    A step is `done` once status shows the next one began (or its own outcome), `current` while it
    is the furthest the job got, `failed` where the Failed condition stopped it, `skipped` when the spec
    asks for no such step (no evaluation, no Model)."""
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    phase = status.get("phase")
    progress = status.get("progress") or {}
    validated = _condition(job, "Validated")
    failed = _condition(job, "Failed").get("status") == "True"
    started = bool(status.get("startTime")) or phase in {"Running", "Succeeded"} or bool(progress.get("step"))
    trained = bool(status.get("adapter"))
    evaluation = status.get("evaluation") or {}
    wants_eval = bool(spec.get("evaluation"))
    wants_model = bool((spec.get("output") or {}).get("model"))
    evaluated = evaluation.get("phase") == "Succeeded" and evaluation.get("passed") is not False
    evaluation_failed = evaluation.get("phase") == "Failed" or evaluation.get("passed") is False
    reached = [
        validated.get("status") == "True" or started,
        started,
        trained or progress.get("percent") == 100,
        trained,
        evaluated,
    ]
    percent = progress.get("percent")
    eta = _eta(progress.get("etaSeconds")) if percent is not None and percent < 100 else ""
    running = f"{percent}%{eta}" if percent is not None else ""
    version = _version_of(job, models)
    details = [
        validated.get("message", "") if validated.get("status") == "False" else "",
        _condition(job, "Running").get("message", "") if phase == "Queued" else "",
        running,
        (status.get("adapter") or {}).get("uri", ""),
        _eval_detail(evaluation),
    ]
    names = ["validated", "queued", "running", "publishing", "evaluating"]
    out: list[Step] = []
    for i, name in enumerate(names):
        if name == "evaluating" and not wants_eval:
            out.append(Step(name, "skipped", "no spec.evaluation"))
        elif reached[i]:
            out.append(Step(name, "done", details[i]))
        elif name == "evaluating" and evaluation_failed:
            out.append(Step(name, "failed", details[i]))
        elif failed and all(s.state != "failed" for s in out):
            out.append(Step(name, "failed", _condition(job, "Failed").get("reason", "")))
        elif all(s.state in {"done", "skipped"} for s in out):
            out.append(Step(name, "current", details[i]))
        else:
            out.append(Step(name, "waiting", details[i]))
    if not wants_model:
        out.append(Step("registered", "skipped", "no spec.output.model"))
    elif version is None:
        state = "current" if trained and not failed else "waiting"
        out.append(Step("registered", state, ""))
    else:
        promoted = version.get("state") == "Stable"
        detail = f"{spec['output']['model']} v{version['version']}: {version.get('state')}"
        out.append(Step("promoted" if promoted else "registered", "done", detail))
    return out


def _eval_detail(evaluation: Mapping[str, Any]) -> str:
    if not evaluation:
        return ""
    passed = evaluation.get("passed")
    verdict = "passed" if passed is True else "did not pass" if passed is False else str(evaluation.get("phase") or "")
    score = evaluation.get("score")
    return f"{evaluation.get('evalRun', '')} {verdict}" + (f", score {score:.4g}" if score is not None else "")


def thresholds(evalrun: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each summarised metric with its threshold (if any), which way it bounds (`>=`, or `<=` for a
    lower-is-better metric), and whether it met it, by the operator's own `judge`."""
    wanted = (evalrun.get("spec") or {}).get("thresholds") or {}
    rows = []
    for summary in (evalrun.get("status") or {}).get("summary") or []:
        metric, limit = summary["metric"], wanted.get(summary["metric"])
        met = None if limit is None else not judge([MetricSummary.model_validate(summary)], {metric: limit})
        bound = "<=" if metric in LOWER_IS_BETTER else ">="
        rows.append({**summary, "threshold": limit, "bound": bound, "met": met})
    return rows


def advice(reason: str) -> Mapping[str, str] | None:
    """docs/troubleshooting.md's row for a reason: {what, todo} (None for a reason it does not list)."""
    rows: dict[str, dict[str, str]] = json.loads(
        resources.files(__package__).joinpath("advice.json").read_text(encoding="utf-8")
    )
    return rows.get(reason)


_MARKS = {"done": "[x]", "current": "[>]", "waiting": "[ ]", "failed": "[!]", "skipped": "[-]"}


def describe(job: Mapping[str, Any], models: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """`kubectl finetune describe ftj/x`: the steps, then why it failed and what to do."""
    meta = job["metadata"]
    status = job.get("status") or {}
    lines = [
        f"Name:       {meta['name']}",
        f"Namespace:  {meta.get('namespace', '')}",
        f"Phase:      {status.get('phase') or 'Pending'}",
        f"Attempt:    {status.get('attempt') or '-'}",
        f"Age:        {age(meta.get('creationTimestamp'), now)}",
        "Steps:",
    ]
    lines += [
        f"  {_MARKS[s.state]} {s.name:<11}{(' ' + s.detail) if s.detail else ''}".rstrip() for s in steps(job, models)
    ]
    lines += _reasons(job)
    return "\n".join(lines)


def describe_other(kind: Kind, body: Mapping[str, Any], now: datetime) -> str:
    """describe for the kinds without a pipeline: printer columns, then conditions with advice."""
    lines = [f"Name:       {body['metadata']['name']}", f"Namespace:  {body['metadata'].get('namespace', '')}"]
    lines += [f"{c.name + ':':<12}{cell(c, body, now)}" for c in kind.columns]
    return "\n".join(lines + _reasons(body))


def _reasons(body: Mapping[str, Any]) -> list[str]:
    conditions = (body.get("status") or {}).get("conditions") or []
    lines = ["Conditions:"] + [
        f"  {c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}".rstrip(": ")
        for c in conditions
    ]
    # A failure first; else a condition that is False for a reason (waiting, a refused pin, not Ready).
    # Succeeded=False and Failed=False only say "not yet".
    failed = [c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"]
    held = [c for c in conditions if c.get("status") == "False" and c.get("type") not in {"Succeeded", "Failed"}]
    if (body.get("status") or {}).get("phase") == "Succeeded":
        held = []  # Running=False TrainingComplete is the good news, not something to fix
    for condition in failed + held:
        reason = str(condition.get("reason", ""))
        known = advice(reason)
        if known is None:
            continue
        return [
            *lines,
            f"Why ({reason}):  {known['what']}",
            f"What to do:  {known['todo']}",
            "(from docs/troubleshooting.md)",
        ]
    return lines


def previous_stable(model: Mapping[str, Any]) -> int | None:
    """The version that was stable before the current one: what `rollback` pins by default."""
    status = model.get("status") or {}
    before = [
        v
        for v in status.get("versions") or []
        if v.get("promotedTime") and v.get("version") != status.get("stable") and v.get("verdict") != "Rejected"
    ]
    return int(max(before, key=lambda v: (v["promotedTime"], v["version"]))["version"]) if before else None


def now_utc() -> datetime:
    return datetime.now(UTC)
