"""API models of FineTuneJob, EvalRun, Model, FineTuneSchedule and Dataset (group finetune.dev, version v1alpha1).

Importable without kopf, kubernetes or torch: the trainer validates its run spec with these models.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from .common import TERMINAL_PHASES, Condition, Phase
from .dataset import DatasetSpec, DatasetStatus
from .evalrun import EvalRunSpec, EvalRunStatus
from .finetunejob import FineTuneJobSpec
from .model import ModelSpec, ModelStatus
from .schedule import FineTuneScheduleSpec, FineTuneScheduleStatus
from .schema import API_VERSION, GROUP, VERSION, ApiModel
from .training_status import FineTuneJobStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    """Everything the operator, crdgen, the chart's RBAC and the tests know about one custom resource kind.

    The one place a kind's facts are typed: a new kind is a new entry here (and a controller in
    `kinds/`), never a string literal in another module."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[ApiModel]
    status_model: type[ApiModel]
    description: str
    columns: tuple[PrinterColumn, ...]
    label: str
    """Label on every child object, valued with the owner's name (`kubectl get jobs -l <label>=<name>`)."""
    attempt_neutral: tuple[str, ...]
    """Spec fields (dotted, camelCase) that may change while an attempt runs and so never start a new
    one: the CRD's CEL freeze rule allows exactly these, and the spec hash leaves exactly these out."""
    metrics_family: str
    """Prometheus family of the kind's resources by phase."""
    attempts: bool = True
    """Whether it runs its work in attempts (Jobs): its CRD freezes the spec while one is in flight, and
    /metrics counts its resources by phase. A kind of pure control (Model) has neither."""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since creation.")
_PHASE = PrinterColumn("Phase", ".status.phase", "string", "Pending, Queued, Running, Succeeded, Failed or Suspended.")

FINETUNEJOB = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    singular="finetunejob",
    short_names=("ftj",),
    spec_model=FineTuneJobSpec,
    status_model=FineTuneJobStatus,
    description="FineTuneJob fine-tunes a base model with QLoRA/LoRA on a dataset and publishes the adapter "
    "to an object store; progress, loss, conditions and the adapter URI appear in its status.",
    columns=(
        _PHASE,
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Training progress in percent."),
        PrinterColumn("Loss", ".status.progress.loss", "number", "Latest training loss."),
        PrinterColumn("Adapter", ".status.adapter.uri", "string", "URI of the published adapter."),
        PrinterColumn("Eval", ".status.evaluation.passed", "boolean", "Whether the adapter passed its evaluation.", 1),
        PrinterColumn("Objective", ".spec.objective", "string", "sft, dpo or orpo.", 1),
        PrinterColumn("Ranks", ".status.worldSize", "integer", "Training processes: nodes x processes per pod.", 1),
        PrinterColumn("Tokens/s", ".status.progress.tokensPerSecond", "number", "Throughput summed over ranks.", 1),
        _AGE,
    ),
    label=f"{GROUP}/finetunejob",
    # Pausing; a new benchmark or threshold (re-runs the evaluation, not the training); what deletion
    # does to the stored objects.
    attempt_neutral=("suspend", "evaluation", "output.deletePolicy", "output.model"),
    metrics_family="finetune_jobs",
)

EVALRUN = Kind(
    kind="EvalRun",
    plural="evalruns",
    singular="evalrun",
    short_names=("evr",),
    spec_model=EvalRunSpec,
    status_model=EvalRunStatus,
    description="EvalRun benchmarks an adapter (and its base model as baseline) on QA, completion and "
    "perplexity tasks, gates on thresholds and publishes a report.",
    columns=(
        _PHASE,
        PrinterColumn("Score", ".status.score", "number", "Headline score."),
        PrinterColumn("Passed", ".status.passed", "boolean", "Whether every threshold was met."),
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Scoring progress in percent.", 1),
        PrinterColumn("Report", ".status.report.uri", "string", "Where the report was published.", 1),
        _AGE,
    ),
    label=f"{GROUP}/evalrun",
    attempt_neutral=("suspend",),
    metrics_family="finetune_evalruns",
)

MODEL = Kind(
    kind="Model",
    plural="models",
    singular="model",
    short_names=("ftm",),
    spec_model=ModelSpec,
    status_model=ModelStatus,
    description="Model registers the adapters FineTuneJobs publish into it (spec.output.model) as numbered "
    "versions, promotes one to stable only when its evaluation passes the gate, rolls back with spec.pin, and "
    "keeps a serving ConfigMap pointing at the stable version.",
    columns=(
        PrinterColumn("Stable", ".status.stable", "integer", "The stable version (what serving uses)."),
        PrinterColumn("Candidate", ".status.candidate", "integer", "The newest version not (yet) stable."),
        PrinterColumn("Versions", ".status.latest", "integer", "Versions registered."),
        PrinterColumn("Pinned", ".spec.pin", "integer", "spec.pin: the version held stable by hand.", 1),
        PrinterColumn("Base", ".spec.baseModel.uri", "string", "The base model every version adapts.", 1),
        _AGE,
    ),
    label=f"{GROUP}/model",
    attempt_neutral=(),
    metrics_family="finetune_models",
    attempts=False,
)

FINETUNESCHEDULE = Kind(
    kind="FineTuneSchedule",
    plural="finetuneschedules",
    singular="finetuneschedule",
    short_names=("fts",),
    spec_model=FineTuneScheduleSpec,
    status_model=FineTuneScheduleStatus,
    description="FineTuneSchedule retrains the way a CronJob repeats Jobs: on a cron schedule, when new data, "
    "negative feedback or drifted documents pile up in the store, or by hand (annotation finetune.dev/run-now), "
    "it creates a FineTuneJob from its template on a training set with the feedback folded in, registered into "
    "a Model whose gate promotes it only if it beats stable.",
    columns=(
        PrinterColumn("Schedule", ".spec.schedule", "string", "Cron schedule."),
        PrinterColumn("Suspend", ".spec.suspend", "boolean", "Whether new runs are held."),
        PrinterColumn("Last Run", ".status.lastRun.name", "string", "The latest run's FineTuneJob."),
        PrinterColumn("Reason", ".status.lastRun.reasons[0]", "string", "Why the latest run started."),
        PrinterColumn("Next", ".status.nextScheduleTime", "date", "The next cron time."),
        PrinterColumn("Drift", ".status.drift.score", "number", "The last drift score.", 1),
        PrinterColumn(
            "Negative", ".status.feedback.pendingNegative", "integer", "Negative feedback not consumed yet.", 1
        ),
        PrinterColumn("Model", ".spec.model", "string", "The Model runs register into.", 1),
        _AGE,
    ),
    label=f"{GROUP}/finetuneschedule",
    attempt_neutral=(),
    metrics_family="finetune_schedules",
    attempts=False,
)

DATASET = Kind(
    kind="Dataset",
    plural="datasets",
    singular="dataset",
    short_names=("ftd",),
    spec_model=DatasetSpec,
    status_model=DatasetStatus,
    description="Dataset turns raw documents (text, markdown, HTML, PDF, docx, JSONL) into instruction pairs: "
    "it chunks them along headings and paragraphs, generates question-answer pairs from templates or with a "
    "model, filters them (duplicates, length, grounding in the chunk, language) and publishes train, validation "
    "and test splits with their source chunks; a FineTuneJob trains on it with spec.dataset.datasetRef.",
    columns=(
        _PHASE,
        PrinterColumn("Docs", ".status.documents.read", "integer", "Documents read."),
        PrinterColumn("Failed", ".status.documents.failed", "integer", "Documents skipped (status.failures)."),
        PrinterColumn("Chunks", ".status.chunks", "integer", "Chunks cut from the documents."),
        PrinterColumn("Pairs", ".status.pairs.kept", "integer", "Pairs kept after the filters."),
        PrinterColumn("Train", ".status.splits.train", "integer", "Rows in the train split.", 1),
        PrinterColumn("Test", ".status.splits.test", "integer", "Rows in the test split.", 1),
        PrinterColumn("Mode", ".spec.generation.mode", "string", "template or model.", 1),
        PrinterColumn("Output", ".status.output.uri", "string", "Where the splits were published.", 1),
        _AGE,
    ),
    label=f"{GROUP}/dataset",
    attempt_neutral=("suspend",),
    metrics_family="finetune_datasets",
)

KINDS: tuple[Kind, ...] = (FINETUNEJOB, EVALRUN, MODEL, FINETUNESCHEDULE, DATASET)
_BY_NAME = {k.kind: k for k in KINDS}


def kind_named(name: str) -> Kind:
    """The registry entry of a kind by its name (`body["kind"]`); KeyError for a kind that is not ours."""
    return _BY_NAME[name]


def is_custom_kind(name: str) -> bool:
    return name in _BY_NAME


def kind_of_spec(spec: ApiModel) -> Kind:
    """The kind whose spec model `spec` is an instance of."""
    return next(k for k in KINDS if isinstance(spec, k.spec_model))


CATEGORY = "finetune"


def format_validation_error(error: ValidationError, root: str = "spec") -> str:
    """One line per problem, each naming the field the way the user wrote it (camelCase path)."""
    lines = []
    for item in error.errors():
        parts = [root, *(str(part) for part in item["loc"])]
        field = (item.get("ctx") or {}).get("field") if item["type"] == "cross_field" else None
        if field:
            parts.append(field)
        path = ".".join(parts)
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "; ".join(lines)


__all__ = [
    "API_VERSION",
    "CATEGORY",
    "DATASET",
    "EVALRUN",
    "FINETUNEJOB",
    "FINETUNESCHEDULE",
    "GROUP",
    "KINDS",
    "MODEL",
    "TERMINAL_PHASES",
    "VERSION",
    "Condition",
    "DatasetSpec",
    "DatasetStatus",
    "EvalRunSpec",
    "EvalRunStatus",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "FineTuneScheduleSpec",
    "FineTuneScheduleStatus",
    "Kind",
    "ModelSpec",
    "ModelStatus",
    "Phase",
    "PrinterColumn",
    "format_validation_error",
    "is_custom_kind",
    "kind_named",
    "kind_of_spec",
]
