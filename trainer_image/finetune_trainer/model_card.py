"""A registered version's model card: README.md in the Hugging Face model-card format.

The YAML header is made by huggingface_hub's own ModelCardData (so it parses as the Hub expects:
base_model, library_name peft, datasets, tags, the evaluation as model-index), plus the
hyperparameters. The body tells the story a reviewer wants before shipping: state and verdict, the
evaluation table, the training loss curve (an SVG drawn from the Trainer's log history), provenance,
and how to load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from finetune_operator.api.model import ModelVersion

from .evaluate.reports import md_escape

LOSS_CURVE = "training_loss.svg"
TRAINER_STATE = "trainer_state.json"
"""The Trainer's state (its log history), which training publishes beside the adapter files."""


def hub_id(uri: str) -> str:
    """base_model as the Hub names models: `org/name` for hf://org/name[@revision], else the URI itself."""
    if uri.startswith("hf://"):
        return uri[len("hf://") :].split("@", 1)[0].strip("/")
    return uri


def loss_series(log_history: Iterable[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged entry that has `key` (`loss`: training, `eval_loss`: evaluation)."""
    points = []
    for entry in log_history:
        value, step = entry.get(key), entry.get("step")
        if isinstance(value, int | float) and isinstance(step, int):
            points.append((step, float(value)))
    return points


def loss_curve_svg(train: Sequence[tuple[int, float]], evaluation: Sequence[tuple[int, float]] = ()) -> str:
    """A line chart of loss against step: training in blue, evaluation (if logged) in orange."""
    width, height, left, bottom, top, right = 640, 320, 56, 36, 16, 16
    every = [*train, *evaluation]
    steps = [s for s, _ in every] or [0]
    values = [v for _, v in every] or [0.0]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    first, last = min(steps), max(steps)
    width_steps = (last - first) or 1

    def x(step: int) -> float:
        return left + (step - first) / width_steps * (width - left - right)

    def y(value: float) -> float:
        return top + (high - value) / span * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts.append("<title>training loss</title>")
    parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>')
    parts.append(
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#4a5568"/>'
    )
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#4a5568"/>')
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text x="4" y="{y(value) + 4:.1f}" font-size="11">{value:.3f}</text>')
    for step in sorted({first, last}):
        parts.append(f'<text x="{x(step) - 8:.1f}" y="{height - bottom + 16}" font-size="11">{step}</text>')
    parts.append(f'<text x="{width / 2 - 12:.0f}" y="{height - 4}" font-size="12">step</text>')
    for series, colour, name in ((train, "#2b6cb0", "train loss"), (evaluation, "#dd6b20", "eval loss")):
        if not series:
            continue
        line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in series)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"><title>{name}</title>')
        parts.append("</polyline>")
    parts.append(f'<text x="{width - right - 150}" y="{top + 12}" font-size="12" fill="#2b6cb0">train loss</text>')
    if evaluation:
        parts.append(f'<text x="{width - right - 70}" y="{top + 12}" font-size="12" fill="#dd6b20">eval loss</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell_of(value: object) -> str:
    return md_escape(str(value))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def card_metadata(model: str, version: ModelVersion) -> Any:
    """The header, as huggingface_hub's ModelCardData (its own checks run as it is built)."""
    from huggingface_hub import EvalResult, ModelCardData

    hyper = version.hyperparameters
    results = version.evaluation.results if version.evaluation else []
    eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=r.benchmark,
            dataset_name=r.benchmark,
            metric_type=r.metric,
            metric_value=r.value,
        )
        for r in results
    ]
    return ModelCardData(
        base_model=hub_id(version.base_model),
        library_name="peft",
        pipeline_tag="text-generation",
        datasets=[version.dataset_uri],
        tags=["finetune-operator", hyper.method, hyper.objective, "lora"],
        model_name=f"{model}-v{version.version}",
        eval_results=eval_results or None,
        hyperparameters=hyper.to_json_dict(),
        ignore_metadata_errors=False,
    )


def render_card(model: str, namespace: str, version: ModelVersion, *, has_curve: bool) -> str:
    """README.md: the YAML header, then the story of the version."""
    from huggingface_hub import ModelCard

    data = card_metadata(model, version)
    job = version.fine_tune_job
    lines = [
        f"# {model} v{version.version}",
        "",
        f"A LoRA adapter of `{version.base_model}`, registered as version {version.version} of the Model "
        f"`{namespace}/{model}` by finetune-operator.",
        "",
        "| | |",
        "| --- | --- |",
        f"| state | {_cell_of(version.state)} ({_cell_of(version.reason)}) |",
        f"| verdict | {_cell_of(version.verdict or 'not decided')}: {_cell_of(version.verdict_reason or '')} |",
        f"| adapter | `{_cell_of(version.adapter.uri)}` (manifest sha256 `{version.sha256 or 'unknown'}`) |",
        f"| made by | FineTuneJob `{_cell_of(job.name)}` (uid {job.uid}), attempt {job.attempt} |",
        f"| dataset | `{_cell_of(version.dataset_uri)}` |",
        f"| registered | {version.registered_time} |",
        "",
        "## Evaluation",
        "",
    ]
    results = version.evaluation.results if version.evaluation else []
    if results and version.evaluation is not None:
        lines += [f"EvalRun `{_cell_of(version.evaluation.eval_run)}`.", ""]
        lines += ["| benchmark | metric | score | baseline | delta |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {_cell_of(r.benchmark)} | {_cell_of(r.metric)} | {_number(r.value)} | {_number(r.baseline)} "
            f"| {_number(r.delta)} |"
            for r in results
        ]
    else:
        lines.append("No evaluation scored this version.")
    lines += ["", "## Training", ""]
    lines.append(f"![training loss]({LOSS_CURVE})" if has_curve else "The training run logged no loss.")
    lines += ["", "| hyperparameter | value |", "| --- | --- |"]
    lines += [f"| {_cell_of(k)} | {_cell_of(v)} |" for k, v in version.hyperparameters.to_json_dict().items()]
    if version.provenance is not None:
        lines += ["", "## Provenance", "", "| | |", "| --- | --- |"]
        lines += [f"| {_cell_of(k)} | `{_cell_of(v)}` |" for k, v in version.provenance.to_json_dict().items()]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{hub_id(version.base_model)}")',
        'model = PeftModel.from_pretrained(base, "<this folder>")',
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
