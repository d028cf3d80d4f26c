"""Model: a registry of adapter versions, the gate that promotes one to stable, and where serving reads it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import AdapterSource, Condition, ModelSource, Quantization, SecretRef
from .evaluation import Evaluation, Metric, MetricResult, MetricSummary
from .schema import ApiModel, ObjectName, Rule
from .training_status import Provenance

VersionState = Literal["Candidate", "Stable", "Superseded", "Rejected"]
Verdict = Literal["Passed", "Rejected"]


class MustBeat(ApiModel):
    """How much better than the stable version a candidate must score to replace it."""

    metric: Metric = Field(
        description="Metric compared, as the mean over the benchmarks that both the candidate's and the stable "
        "version's evaluations scored (perplexity: lower is better, every other metric higher)."
    )
    margin: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="The candidate must beat stable by more than this (0: by anything at all; a tie does not beat).",
    )


class Promotion(ApiModel):
    """When a new version replaces the stable one."""

    mode: Literal["Automatic", "Manual"] = Field(
        default="Automatic",
        description="`Automatic`: a version that passes the gate becomes stable at once. `Manual`: it stays "
        "Candidate, and stable moves only when spec.pin names a version (what a GitOps review approves).",
    )
    require_evaluation: bool = Field(
        default=True,
        description="A version passes the gate only with an evaluation: its FineTuneJob's own (spec.evaluation), "
        "or else the EvalRun the Model runs from `evaluation` below. A version with neither is Rejected. false: "
        "a version with neither passes as it is.",
    )
    must_beat: MustBeat | None = Field(
        default=None,
        description="Also beat the stable version's score on the same benchmarks (unset: passing the "
        "evaluation's thresholds is enough). The first version has nothing to beat.",
    )
    evaluation: Evaluation | None = Field(
        default=None,
        description="The gate's own evaluation, for versions whose FineTuneJob has no spec.evaluation: the Model "
        "runs an EvalRun `<model>-v<N>` of the version's adapter on baseModel with these benchmarks and "
        "thresholds. Every version gated by it is scored on the same benchmarks, so mustBeat always compares "
        "like with like.",
    )

    __rules__ = (
        Rule(
            cel="!has(self.mustBeat) || !has(self.evaluation) || "
            "self.evaluation.benchmarks.exists(b, self.mustBeat.metric in b.metrics)",
            message="mustBeat.metric must be a metric that some benchmark of evaluation computes",
            check=lambda p: (
                p.must_beat is None
                or p.evaluation is None
                or any(p.must_beat.metric in b.metrics for b in p.evaluation.benchmarks)
            ),
            field="mustBeat.metric",
        ),
    )


class ConfigMapTarget(ApiModel):
    """A ConfigMap, in the Model's namespace, that a vLLM Deployment mounts or reads its arguments from."""

    name: ObjectName = Field(description="Name of the ConfigMap; the operator creates and owns it.")
    adapter_root: Annotated[str, StringConstraints(pattern=r"^/[^\s]*$", max_length=512)] = Field(
        default="/adapters",
        description="Folder of the serving pod where the adapters are synced (vLLM's "
        "VLLM_LORA_RESOLVER_CACHE_DIR): the stable version is at `<adapterRoot>/<model>-v<N>/`.",
    )
    base_model_name: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        default=None,
        description="The name vLLM serves the base model under (`--served-model-name`), written as "
        "`base_model_name` in the lora-modules entry (unset: left out, vLLM uses its own).",
    )


class LLMInferenceServiceTarget(ApiModel):
    """A KServe LLMInferenceService (serving.kserve.io/v1alpha2) on this Model's base model."""

    name: ObjectName = Field(
        description="Its name, in the Model's namespace. The operator sets its `spec.model.lora.adapters` to the "
        "stable version, `[{name: <model>-v<N>, uri: <adapter URI>}]`, and touches nothing else of it; the list is "
        "the Model's (adapters listed there by hand are replaced). KServe's storage initializer pulls the adapter, "
        "so the URI must be one KServe can read (s3:// with its own credentials, pvc://)."
    )


class Serving(ApiModel):
    """What follows the stable version."""

    config_map: ConfigMapTarget | None = Field(
        default=None,
        description="A ConfigMap holding `lora-modules.json` (vLLM's `--lora-modules` JSON: name, path, "
        "base_model_name), `adapters.json` (the folder layout of vLLM's filesystem LoRA resolver: folder -> "
        "adapter URI, what an init container syncs) and `stable.json` (version, URI, sha256). Rewritten "
        "whenever stable moves.",
    )
    llm_inference_service: LLMInferenceServiceTarget | None = Field(
        default=None,
        description="A KServe LLMInferenceService whose LoRA adapters follow stable. If it (or KServe's CRD) is "
        "missing, Ready=False (ServingTargetMissing) names it, it is looked for again every 30 s, and the "
        "registry carries on.",
    )


class ModelStore(ApiModel):
    """Where the registry keeps its own copy of each version, for consumers outside Kubernetes."""

    enabled: bool = Field(
        default=True,
        description="Publish each decided version and the stable pointer to the store (false: status and the "
        "serving targets only).",
    )
    uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$", max_length=1024)] | None = Field(
        default=None,
        description="Prefix: version N lands in `<uri>/models/<namespace>/<name>/v<N>/` (the adapter files, a "
        "Hugging Face model card README.md with the evaluation table and the training loss curve, "
        "manifest.json last), and `<uri>/models/<namespace>/<name>/stable.json` points at the stable one. "
        "Unset: the operator's default output URI.",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with write credentials for `uri` (unset: the operator's default storage secret). The "
        "short publish pod that writes there reads each version's adapter with that version's own secretRef.",
    )


class ModelSpec(ApiModel):
    """A named model: its base, its registered adapter versions, and the rule that picks the stable one."""

    base_model: ModelSource = Field(
        description="The base model every version adapts. A FineTuneJob on another base is registered Rejected, "
        "with a reason naming spec.baseModel.uri."
    )
    promotion: Promotion = Field(default_factory=Promotion, description="When a version becomes stable.")
    pin: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Make this version stable, whatever the gate decided since: setting it is rollback (or, with "
        "promotion.mode Manual, promotion), removing it hands stable back to the gate's latest promotion. The "
        "version must exist and have passed its gate; otherwise the Pinned condition says why and stable "
        "stays where it is.",
    )
    serving: Serving = Field(default_factory=Serving, description="Serving targets that follow the stable version.")
    store: ModelStore = Field(
        default_factory=ModelStore, description="The registry's copy in the object store (model cards, stable.json)."
    )


class VersionJob(ApiModel):
    """The FineTuneJob attempt that made a version (kept after the job is deleted)."""

    name: ObjectName = Field(description="FineTuneJob name.")
    uid: Annotated[str, StringConstraints(max_length=64)] = Field(description="Its uid: a re-created job is another.")
    attempt: int = Field(ge=1, description="The attempt that published the adapter.")


class Hyperparameters(ApiModel):
    """What the version was trained with, as its FineTuneJob's spec said."""

    objective: Annotated[str, StringConstraints(max_length=16)] = Field(description="sft, dpo or orpo.")
    method: Annotated[str, StringConstraints(max_length=16)] = Field(description="qlora or lora.")
    lora_r: int | None = Field(default=None, description="LoRA rank (unset: the start adapter's own).")
    lora_alpha: int | None = Field(default=None, description="LoRA alpha (unset: the start adapter's own).")
    learning_rate: float = Field(description="Peak learning rate.")
    epochs: float | None = Field(default=None, description="Epochs (unset with maxSteps).")
    max_steps: int | None = Field(default=None, description="Optimizer steps (unset with epochs).")
    batch_size: int = Field(description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(description="Tokens per sequence.")
    seed: int = Field(description="Random seed.")


class VersionEvaluation(ApiModel):
    """The evaluation the gate judged a version on."""

    eval_run: Annotated[str, StringConstraints(max_length=253)] = Field(description="The EvalRun that scored it.")
    passed: bool | None = Field(default=None, description="Whether that EvalRun met its own thresholds.")
    results: list[MetricResult] = Field(
        default_factory=list, max_length=64, description="Scores per benchmark and metric (what mustBeat compares)."
    )
    summary: list[MetricSummary] = Field(
        default_factory=list, max_length=16, description="Each metric's mean over the benchmarks."
    )
    report_uri: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="The EvalRun's report."
    )


class ModelVersion(ApiModel):
    """One registered adapter: append-only, numbered in order of registration."""

    version: int = Field(ge=1, description="Version number: 1, 2, ...")
    adapter: AdapterSource = Field(description="The adapter (PEFT format) and the secret that reads it.")
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="sha256 of the adapter's manifest.json."
    )
    fine_tune_job: VersionJob = Field(description="The FineTuneJob attempt that made it.")
    base_model: Annotated[str, StringConstraints(max_length=2048)] = Field(description="Base model URI it adapts.")
    dataset_uri: Annotated[str, StringConstraints(max_length=2048)] = Field(description="Training data it saw.")
    output_uri: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None,
        description="Its job's output.uri (unset: the operator's default): where the gate's EvalRun writes its "
        "report, with the adapter's secretRef.",
    )
    hyperparameters: Hyperparameters = Field(description="How it was trained.")
    quantization: Quantization | None = Field(
        default=None, description="How the base was quantized in training; the gate's EvalRun loads it the same way."
    )
    provenance: Provenance | None = Field(
        default=None, description="Base revision, dataset sha256, trainer image and version, from the job."
    )
    evaluation: VersionEvaluation | None = Field(default=None, description="What the gate judged it on.")
    verdict: Verdict | None = Field(default=None, description="The gate's verdict (unset: not decided yet).")
    verdict_reason: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None,
        description="Why the gate decided so (e.g. `exact_match 0.61 <= stable v2 0.64 + 0.01`); kept as the "
        "state moves.",
    )
    state: VersionState = Field(
        description="`Candidate`: waiting for its gate, or passed and not (yet) stable. `Stable`: what serving "
        "uses. `Superseded`: was stable, or passed and was overtaken. `Rejected`: failed its gate."
    )
    reason: Annotated[str, StringConstraints(max_length=1024)] = Field(description="Why it is in this state.")
    registered_time: str = Field(
        description="When it was registered (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    promoted_time: str | None = Field(
        default=None,
        description="When it first became stable (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    store_uri: Annotated[str, StringConstraints(max_length=1100)] | None = Field(
        default=None,
        description="Its folder in the registry's store copy (adapter files, README.md model card, manifest.json); "
        "unset: not published there yet (a version is published once its gate decided).",
    )


class TargetStatus(ApiModel):
    """What one serving target shows now."""

    name: Annotated[str, StringConstraints(max_length=253)] = Field(description="The target's name.")
    version: int | None = Field(default=None, ge=1, description="The version it points at (unset: none yet).")
    update_time: str | None = Field(
        default=None, description="When it was last written (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class ServingStatus(ApiModel):
    """What the serving targets show now."""

    config_map: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="The ConfigMap written."
    )
    version: int | None = Field(default=None, ge=1, description="The version the ConfigMap points at.")
    update_time: str | None = Field(
        default=None,
        description="When the ConfigMap was last written (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    llm_inference_service: TargetStatus | None = Field(
        default=None, description="The KServe LLMInferenceService target (spec.serving.llmInferenceService)."
    )


class StablePointer(ApiModel):
    """stable.json: which version is stable, for consumers that read a file rather than the Model (the
    serving ConfigMap holds one, the store copy another)."""

    model: str = Field(description="The Model's name.")
    namespace: str = Field(description="Its namespace.")
    version: int = Field(ge=1, description="The stable version.")
    name: str = Field(description="The LoRA name serving loads it under: `<model>-v<N>`.")
    uri: str = Field(description="Where its adapter is (as its FineTuneJob published it).")
    sha256: str | None = Field(default=None, description="sha256 of the adapter's manifest.json.")
    base_model: str = Field(description="The base model it adapts.")
    folder: str | None = Field(default=None, description="Its folder in the store copy (the store's stable.json only).")


StoreState = Literal["Publishing", "Published", "Failed"]


class StoreStatus(ApiModel):
    """The registry's store copy: what is published, and the publish pod at work."""

    uri: Annotated[str, StringConstraints(max_length=1100)] = Field(
        description="`<store>/models/<namespace>/<name>/`: the versions' folders and stable.json."
    )
    stable: int | None = Field(default=None, ge=1, description="The version stable.json points at.")
    state: StoreState = Field(
        description="`Publishing`: a publish pod is writing. `Published`: the store shows every decided version "
        "and stable. `Failed`: the last publish failed (message); retried with backoff."
    )
    message: Annotated[str, StringConstraints(max_length=2048)] | None = Field(default=None, description="Detail.")
    round: int = Field(default=0, ge=0, description="Publish pods started (the Job is `<name>-publish-<round>`).")
    failures: int = Field(default=0, ge=0, description="Publishes failed in a row (the backoff grows with them).")
    update_time: str | None = Field(
        default=None, description="When the state last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class ModelStatus(ApiModel):
    """The registry: every version, the stable and candidate aliases, and what serving follows."""

    stable: int | None = Field(default=None, ge=1, description="The stable version: what serving uses.")
    candidate: int | None = Field(default=None, ge=1, description="The newest version in state Candidate.")
    promoted: int | None = Field(
        default=None,
        ge=1,
        description="The version the gate promoted last: stable whenever spec.pin is unset.",
    )
    latest: int | None = Field(
        default=None, ge=1, description="The newest version number, which is also how many versions there are."
    )
    versions: list[ModelVersion] = Field(
        default_factory=list,
        max_length=1000,
        description="Every registered version, oldest first; never rewritten or removed, also after its "
        "FineTuneJob is deleted (at most 1000).",
    )
    promotions: int | None = Field(default=None, ge=0, description="Times the gate moved stable (pins not counted).")
    serving: ServingStatus | None = Field(default=None, description="The serving ConfigMap's current version.")
    store: StoreStatus | None = Field(default=None, description="The registry's copy in the object store.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="Validated; Ready (True: a stable version exists and every serving target shows it); "
        "Pinned (with spec.pin: False names why the pin is refused); Published (the store copy: False names why "
        "the last publish failed).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last acted on.")
