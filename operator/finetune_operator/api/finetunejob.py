"""FineTuneJob: fine-tune a base model with (Q)LoRA on a dataset and publish the adapter."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import (
    QUEUE_AND_SUSPEND,
    URI_HELP,
    AdapterSource,
    ImageRef,
    LocalRef,
    ModelSource,
    Quantization,
    Resources,
    SecretRef,
    Uri,
    remote_secret_rule,
)
from .evaluation import Evaluation
from .schema import DNS_LABEL, ApiModel, ObjectName, Rule, exactly_one

DEFAULT_EPOCHS = 3.0
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ColumnMapping(ApiModel):
    """Maps the dataset's own column names onto the fields the chosen format reads."""

    instruction: ColumnName | None = Field(default=None, description="Column holding the alpaca `instruction`.")
    input: ColumnName | None = Field(default=None, description="Column holding the alpaca `input` (optional context).")
    output: ColumnName | None = Field(default=None, description="Column holding the alpaca `output` (the target).")
    messages: ColumnName | None = Field(default=None, description="Column holding chat `messages` (role/content list).")
    prompt: ColumnName | None = Field(default=None, description="Column holding the completion-format `prompt`.")
    completion: ColumnName | None = Field(
        default=None, description="Column holding the completion-format `completion`."
    )
    text: ColumnName | None = Field(default=None, description="Column holding raw `text` for plain language modelling.")
    chosen: ColumnName | None = Field(
        default=None, description="Column holding the preferred response of a `preference` pair."
    )
    rejected: ColumnName | None = Field(
        default=None, description="Column holding the dispreferred response of a `preference` pair."
    )


class Refinement(ApiModel):
    """Cleaning applied before tokenisation; the trainer reports how many rows each rule dropped."""

    dedupe: bool = Field(default=True, description="Drop exact duplicate examples.")
    min_chars: int = Field(
        default=1, ge=0, le=1_000_000, description="Drop examples shorter than this many characters."
    )
    max_chars: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Drop examples longer than this many characters (unset: no limit).",
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=100_000_000, description="Keep at most this many examples after filtering (unset: all)."
    )

    __rules__ = (
        Rule(
            cel="!has(self.maxChars) || self.maxChars >= self.minChars",
            message="maxChars must be at least minChars",
            check=lambda r: r.max_chars is None or r.max_chars >= r.min_chars,
            field="maxChars",
        ),
    )


class DatasetSource(ApiModel):
    """The training data: a file or folder of JSONL, JSON, CSV or Parquet, or the train split of a Dataset."""

    uri: Uri | None = Field(default=None, description="Location of the dataset file or folder. " + URI_HELP)
    dataset_ref: LocalRef | None = Field(
        default=None,
        description="Train on the train split of this Dataset (same namespace), read with its output.secretRef: "
        "the job waits (Pending, WaitingForDataset) until the Dataset is Ready, fails if it failed, and trains "
        "again when it publishes anew. Set this or uri.",
    )
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")
    format: Literal["auto", "alpaca", "chat", "completion", "text", "preference"] = Field(
        default="auto",
        description="Example layout: `alpaca` (instruction/input/output), `chat` (messages), `completion` "
        "(prompt/completion), `text` (raw text), `preference` (prompt/chosen/rejected, for objective dpo or "
        "orpo; chosen and rejected may be message lists, and without a prompt column their shared leading "
        "turns are the prompt), or `auto` to detect it from the columns.",
    )
    columns: ColumnMapping | None = Field(
        default=None, description="Rename the dataset's columns onto the format's fields."
    )
    validation_split: float = Field(
        default=0.05, ge=0.0, le=0.5, description="Fraction of examples held out to compute evalLoss (0 disables)."
    )
    refine: Refinement = Field(default_factory=Refinement, description="Deduplication and length filters.")
    apply_chat_template: bool = Field(
        default=True,
        description="Render examples with the tokenizer's chat template (a built-in fallback template when the "
        "tokenizer has none); off trains on plain concatenated prompt and response.",
    )
    completion_only_loss: bool = Field(
        default=True, description="Compute the loss on response tokens only, not on the prompt."
    )

    __rules__ = (exactly_one("uri", "dataset_ref"), remote_secret_rule(optional=True))

    @property
    def location(self) -> str:
        """The URI read; only once a datasetRef is resolved (by the operator: kinds/finetunejob.py)."""
        assert self.uri is not None, "resolve datasetRef first"
        return self.uri


class LoraSettings(ApiModel):
    """The low-rank adapter that is trained; the base model stays frozen."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: int = Field(default=32, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["all-linear"],
        # pydantic leaves factory defaults out of the JSON schema; the CRD must carry it for the apiserver.
        json_schema_extra={"default": ["all-linear"]},
        min_length=1,
        max_length=64,
        description="Module names to adapt (e.g. `q_proj`, `v_proj`), or `all-linear` for every linear layer "
        "except the output head.",
    )


class TrainingSettings(ApiModel):
    """Optimisation hyperparameters, passed to the Hugging Face Trainer."""

    epochs: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=f"Passes over the training set. Set this or maxSteps, not both; {DEFAULT_EPOCHS:g} when "
        "neither is set.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Optimizer steps to run, instead of epochs: set one of the two, not both "
        "(unset: epochs, default 3).",
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate of the adapter weights.")
    batch_size: int = Field(default=4, ge=1, le=4096, description="Examples (or packed sequences) per device per step.")
    gradient_accumulation_steps: int = Field(
        default=4,
        ge=1,
        le=4096,
        description="Micro-batches accumulated per optimizer step (effective batch = batchSize x this x GPUs).",
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=131072, description="Tokens per sequence; longer examples are truncated."
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0, le=0.5, description="Fraction of steps spent warming up the learning rate."
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warm-up."
    )
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = Field(
        default="auto",
        description="Optimizer; `auto` picks paged 8-bit AdamW on GPUs and torch AdamW on CPU.",
    )
    packing: bool = Field(
        default=True,
        description="Pack examples into sequences without padding (padding-free, with per-example attention "
        "boundaries); faster and lighter, same loss. Objective sft only: dpo and orpo pad each pair (TRL's "
        "preference trainers).",
    )
    gradient_checkpointing: bool = Field(
        default=True, description="Recompute activations in the backward pass: much less memory, ~20-30% slower."
    )
    seed: int = Field(
        default=42, ge=0, le=2**32 - 1, description="Random seed for data order and adapter initialisation."
    )
    logging_steps: int = Field(
        default=10, ge=1, le=100_000, description="Report loss and progress every this many steps."
    )
    eval_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Compute evalLoss every this many steps (unset: once per epoch)."
    )
    save_steps: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Save and upload a checkpoint every this many steps; a restarted pod resumes from the newest one.",
    )

    __rules__ = (
        Rule(
            cel="!(has(self.epochs) && has(self.maxSteps))",
            message="set either epochs or maxSteps, not both",
            check=lambda t: t.epochs is None or t.max_steps is None,
            field="maxSteps",
        ),
    )

    @property
    def effective_epochs(self) -> float | None:
        """Epochs the trainer runs: the default applies only when maxSteps is not set either."""
        if self.max_steps is not None:
            return None
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS


class OutputSettings(ApiModel):
    """Where the adapter is published."""

    uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$", max_length=1024)] | None = Field(
        default=None,
        description="Prefix under which the run publishes; the adapter lands in "
        "`<uri>/<namespace>/<name>/<uid>/attempt-<n>/adapter/`. Unset: the operator's default output URI. "
        "Schemes: s3://, pvc://, file://.",
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with write credentials for `uri` (unset: the operator's default storage secret).",
    )
    merge: bool = Field(
        default=False, description="Also publish the base model with the adapter merged in, under `merged/`."
    )
    delete_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What happens to this job's objects in the store (`<uri>/<namespace>/<name>/<uid>/`: "
        "adapters, checkpoints and merged models of every attempt) when the FineTuneJob is deleted. `Retain`: "
        "they stay. `Delete`: a finalizer holds the FineTuneJob while a short cleanup pod (same image and "
        "secretRef) removes them; if the store stays unreachable through the cleanup's bounded retries, the "
        "finalizer is released anyway and a Warning event (ArtifactCleanupFailed) names what was left. May "
        "change at any time.",
    )
    model: ObjectName | None = Field(
        default=None,
        description="Register each adapter this job publishes as a new version of this Model (same namespace), "
        "where the Model's promotion gate decides whether it becomes stable. May change at any time: it "
        "retrains nothing.",
    )

    __rules__ = (
        Rule(
            cel="!has(self.secretRef) || !has(self.uri) || self.uri.startsWith('s3://')",
            message="secretRef is only used with s3:// output URIs",
            check=lambda o: o.secret_ref is None or o.uri is None or o.uri.startswith("s3://"),
            field="secretRef",
        ),
    )


class TrainingResources(Resources):
    """What each trainer pod asks of the cluster, and how many pods train together."""

    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Pods that train together, one per node (`gpus` is per pod). Above 1 the job runs as an "
        "Indexed Job with a headless Service: pod 0 hosts the torchrun rendezvous, and all pods are admitted, "
        "started and restarted together.",
    )


class Distributed(ApiModel):
    """How the ranks of one job train together: torch.distributed, launched by torchrun in every pod."""

    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="`ddp`: every rank holds the whole (4-bit) base and the gradients are averaged; an 8B model "
        "needs about 6 GiB per GPU. `fsdp`: the base is sharded across the ranks (QLoRA under FSDP, with a "
        "sharded state dict), for models that do not fit one GPU; needs GPUs and at least 2 ranks.",
    )
    processes_per_node: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Training processes (ranks) per pod (unset: `resources.gpus`, or 1 on CPU). With GPUs it "
        "must equal `resources.gpus`: each process drives one GPU. On CPU each process is a gloo rank.",
    )
    timeout_seconds: int = Field(
        default=300,
        ge=30,
        le=7200,
        description="Collective timeout: the longest a rank waits for a peer (a dead or stuck one) before it "
        "fails and the whole group restarts from the newest checkpoint. NCCL's own default is 30 minutes.",
    )


class StartAdapter(ApiModel):
    """A published adapter to train further: by its URI, or as the adapter another FineTuneJob published."""

    uri: Uri | None = Field(
        default=None, description="Prefix holding the adapter (with its manifest.json). " + URI_HELP
    )
    fine_tune_job_ref: LocalRef | None = Field(
        default=None,
        description="The adapter this FineTuneJob (same namespace) published: this job waits (Pending, "
        "WaitingForFineTuneJob) until that one succeeded, fails if it failed, and trains again when it publishes "
        "a new adapter. Its output.secretRef reads the adapter. What GitOps needs, where the URI is not known "
        "in advance.",
    )
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")

    __rules__ = (
        exactly_one("uri", "fine_tune_job_ref"),
        Rule(
            cel="!has(self.secretRef) || (has(self.uri) && self.uri.startsWith('s3://'))",
            message="secretRef is only used with an s3:// uri (a fineTuneJobRef brings its job's own)",
            check=lambda a: a.secret_ref is None or (a.uri or "").startswith("s3://"),
            field="secretRef",
        ),
    )

    def source(self) -> AdapterSource:
        """As a resolved source; only once `uri` is set (a fineTuneJobRef is resolved by the operator)."""
        assert self.uri is not None, "resolve fineTuneJobRef first"
        return AdapterSource(uri=self.uri, secret_ref=self.secret_ref)


Objective = Literal["sft", "dpo", "orpo"]
PREFERENCE_OBJECTIVES: frozenset[str] = frozenset({"dpo", "orpo"})


class PreferenceSettings(ApiModel):
    """How a preference objective (dpo, orpo) weighs chosen against rejected responses (TRL's trainers)."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=100,
        description="dpo: how far the tuned model may move from the reference (higher stays closer; TRL's "
        "default 0.1). orpo: the weight of the odds-ratio term beside the chosen response's language-model "
        "loss (the ORPO paper's lambda; 0.1 there, 0.5-1 for small preference sets).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "sppo_hard", "nca_pair"] | None = (
        Field(
            default=None,
            description="dpo only: the preference loss (unset: `sigmoid`, the DPO paper's). `ipo` regularises "
            "against overfitting a small set, `robust` tolerates noisy labels, `apo_zero`/`apo_down` anchor "
            "the chosen responses' likelihood.",
        )
    )
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        le=131072,
        description="Drop pairs whose prompt is longer than this many tokens (counted in the dataset summary); "
        "unset: pairs are only cut to training.maxSeqLength, at the end of the responses. Must be below "
        "training.maxSeqLength so every kept pair has response tokens.",
    )


def _ranks_per_node(spec: FineTuneJobSpec) -> int:
    return spec.distributed.processes_per_node or max(spec.resources.gpus, 1)


_RANKS_PER_NODE_CEL = (
    "(has(self.distributed.processesPerNode) ? self.distributed.processesPerNode : "
    "(self.resources.gpus > 0 ? self.resources.gpus : 1))"
)
DISTRIBUTED_RULES = (
    Rule(
        cel="self.distributed.strategy != 'fsdp' || self.resources.gpus > 0",
        message="distributed.strategy fsdp shards the model across GPUs; on CPU (resources.gpus 0) use ddp",
        check=lambda s: s.distributed.strategy != "fsdp" or s.resources.gpus > 0,
        field="distributed.strategy",
    ),
    Rule(
        cel=f"self.distributed.strategy != 'fsdp' || self.resources.nodes * {_RANKS_PER_NODE_CEL} >= 2",
        message="distributed.strategy fsdp needs at least 2 ranks (resources.nodes x resources.gpus >= 2); "
        "one GPU has nothing to shard across, use ddp",
        check=lambda s: s.distributed.strategy != "fsdp" or s.resources.nodes * _ranks_per_node(s) >= 2,
        field="distributed.strategy",
    ),
    Rule(
        cel="!has(self.distributed.processesPerNode) || self.resources.gpus == 0 || "
        "self.distributed.processesPerNode == self.resources.gpus",
        message="distributed.processesPerNode must equal resources.gpus: each process drives one GPU",
        check=lambda s: s.distributed.processes_per_node in (None, s.resources.gpus) or s.resources.gpus == 0,
        field="distributed.processesPerNode",
    ),
    Rule(
        cel="self.distributed.strategy != 'fsdp' || self.method != 'qlora' || !has(self.quantization) || "
        "self.quantization.bits == 4",
        message="quantization.bits 8 cannot be sharded by FSDP; use 4-bit (QLoRA) or distributed.strategy ddp",
        check=lambda s: s.distributed.strategy != "fsdp" or s.quantization is None or s.quantization.bits == 4,
        field="quantization.bits",
    ),
    Rule(
        cel="self.resources.nodes == 1 || !has(self.output.uri) || !self.output.uri.startsWith('file://')",
        message="output.uri file:// is a path inside one pod; with resources.nodes > 1 every pod resumes from the "
        "store, so use s3:// or pvc://",
        check=lambda s: s.resources.nodes == 1 or not (s.output.uri or "").startswith("file://"),
        field="output.uri",
    ),
)


PREFERENCE_RULES = (
    Rule(
        cel="!has(self.preference) || self.objective != 'sft'",
        message="preference settings apply only to objective dpo or orpo",
        check=lambda s: s.preference is None or s.objective != "sft",
        field="preference",
    ),
    Rule(
        cel="self.objective != 'sft' || self.dataset.format != 'preference'",
        message="dataset.format preference (chosen/rejected pairs) needs objective dpo or orpo",
        check=lambda s: s.objective != "sft" or s.dataset.format != "preference",
        field="dataset.format",
    ),
    Rule(
        cel="self.objective == 'sft' || self.dataset.format == 'auto' || self.dataset.format == 'preference'",
        message="objective dpo and orpo train on preference pairs: set dataset.format to preference (or auto)",
        check=lambda s: s.objective == "sft" or s.dataset.format in ("auto", "preference"),
        field="dataset.format",
    ),
    Rule(
        cel="!has(self.preference) || !has(self.preference.lossType) || self.objective == 'dpo'",
        message="preference.lossType applies only to objective dpo (orpo has one loss)",
        check=lambda s: s.preference is None or s.preference.loss_type is None or s.objective == "dpo",
        field="preference.lossType",
    ),
    Rule(
        cel="!has(self.preference) || !has(self.preference.maxPromptLength) || "
        "self.preference.maxPromptLength < self.training.maxSeqLength",
        message="preference.maxPromptLength must be below training.maxSeqLength, or no response token fits",
        check=lambda s: (
            s.preference is None
            or s.preference.max_prompt_length is None
            or s.preference.max_prompt_length < s.training.max_seq_length
        ),
        field="preference.maxPromptLength",
    ),
    Rule(
        cel="self.objective == 'sft' || self.distributed.strategy != 'fsdp'",
        message="objective dpo and orpo run on distributed.strategy ddp; fsdp is not supported with them yet",
        check=lambda s: s.objective == "sft" or s.distributed.strategy != "fsdp",
        field="distributed.strategy",
    ),
)


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what data, how, and on which hardware."""

    base_model: ModelSource = Field(description="The model to adapt.")
    adapter: StartAdapter | None = Field(
        default=None,
        description="Start from a published adapter (an earlier FineTuneJob's, by `fineTuneJobRef` or `uri`) "
        "instead of a new one, and train it further; its own shape (rank, alpha, target modules) is kept, so "
        "`lora` is not used. With objective dpo it is also the reference policy: SFT, then DPO from the SFT "
        "adapter, is the common recipe.",
    )
    dataset: DatasetSource = Field(description="The training data.")
    objective: Objective = Field(
        default="sft",
        description="What the adapter learns. `sft`: supervised fine-tuning on the responses. `dpo`: Direct "
        "Preference Optimization on chosen/rejected pairs; the reference model is the same loaded base with the "
        "starting adapter (no second copy in memory). `orpo`: Odds Ratio Preference Optimization, which needs no "
        "reference model at all. dpo and orpo run TRL's trainers.",
    )
    preference: PreferenceSettings | None = Field(
        default=None, description="Settings of objective dpo or orpo (unset: their defaults)."
    )
    method: Literal["qlora", "lora"] = Field(
        default="qlora",
        description="`qlora`: LoRA on a 4/8-bit quantized frozen base (least memory). `lora`: LoRA on the "
        "base in its own dtype.",
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Quantization of the base model; only with method qlora (defaults: 4-bit NF4, double quant).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter shape.")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="Optimisation hyperparameters.")
    resources: TrainingResources = Field(
        default_factory=TrainingResources,
        description="GPUs, CPU, memory and placement of each trainer pod, and how many pods train together.",
    )
    distributed: Distributed = Field(
        default_factory=Distributed,
        description="How the ranks train together when there are several (resources.nodes > 1, several GPUs, "
        "or distributed.processesPerNode > 1): strategy, processes per pod, collective timeout.",
    )
    output: OutputSettings = Field(default_factory=OutputSettings, description="Where the adapter is published.")
    image: ImageRef | None = Field(
        default=None, description="Trainer image to run (unset: the operator's default trainer image)."
    )
    queue_name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] | None = Field(
        default=None,
        description="Kueue LocalQueue to submit to: the Job is created suspended and Kueue admits it when quota "
        "allows.",
    )
    suspend: bool = Field(
        default=False,
        description="Suspend the job (its pod is stopped; phase Suspended); set back to false to continue.",
    )
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Pod retries for retriable failures (crashes, OOM, preemption does not count).",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=31_536_000, description="Fail the attempt (DeadlineExceeded) after this many seconds."
    )
    evaluation: Evaluation | None = Field(
        default=None,
        description="Benchmark the adapter once training succeeds: the operator creates an EvalRun named "
        "`<name>-eval` owned by this job and mirrors its verdict into status.evaluation and the Evaluated "
        "condition. Changing it re-runs only the evaluation, never the training.",
    )

    __rules__ = (
        Rule(
            cel="self.method == 'qlora' || !has(self.quantization)",
            message="quantization applies only to method qlora",
            check=lambda s: s.method == "qlora" or s.quantization is None,
            field="quantization",
        ),
        QUEUE_AND_SUSPEND,
        *DISTRIBUTED_RULES,
        *PREFERENCE_RULES,
    )

    @property
    def effective_preference(self) -> PreferenceSettings:
        return self.preference or PreferenceSettings()

    @property
    def ranks_per_node(self) -> int:
        """torchrun processes in each pod."""
        return _ranks_per_node(self)

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.ranks_per_node

    @property
    def effective_quantization(self) -> Quantization | None:
        if self.method != "qlora":
            return None
        return self.quantization or Quantization()
