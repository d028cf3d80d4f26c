"""The two benchmark kinds that bring their own machinery: lm-evaluation-harness tasks and an LLM judge.

Both run inside the evaluation pod like the other benchmarks, against the same loaded model (the
baseline is the same weights with the adapter switched off), and their metrics join the summary, the
thresholds and the reports.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import URI_HELP, ModelSource, SecretRef, Uri, remote_secret_rule
from .schema import ApiModel, Rule, exactly_one

LmEvalTask = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]

SCALE_MIN, SCALE_MAX = 1, 10
DEFAULT_RUBRIC = (
    "Judge how helpful, correct and relevant the answer is to the user's question, and how clearly it is "
    "written. Do not let the length of an answer or its position influence you."
)


class LmEvalSettings(ApiModel):
    """Tasks of EleutherAI's lm-evaluation-harness, run offline in the evaluation pod."""

    tasks: list[LmEvalTask] = Field(
        min_length=1,
        max_length=32,
        description="Task names: tasks that ship with lm-eval, or tasks defined by YAML files under `include`. "
        "The pod runs offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE), so a task must read local data: a shipped "
        "task whose dataset lives on the Hugging Face Hub fails, naming the task and its dataset, unless a task "
        "YAML under `include` points at the same data in the store. The benchmark's value of a metric is the "
        "unweighted mean over these tasks; the report lists each task.",
    )
    include: Uri | None = Field(
        default=None,
        description="Store prefix with task YAML files and their data, fetched into the pod; lm-eval registers "
        "every task YAML in it. Relative `dataset_kwargs.data_files` paths resolve against this prefix (e.g. "
        "`dataset_path: json` with `data_files: {test: data/test.jsonl}`). " + URI_HELP,
    )
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `include`.")
    num_few_shot: int | None = Field(
        default=None, ge=0, le=64, description="Few-shot examples per prompt (unset: each task's own default)."
    )
    limit: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Score at most this many examples of each task."
    )

    __rules__ = (remote_secret_rule("include", optional=True),)


class JudgeEndpoint(ApiModel):
    """An OpenAI-compatible chat completions server (vLLM, TGI, llama.cpp, a hosted API)."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)] = Field(
        description="Base URL of the API, up to and including `/v1` (e.g. `http://vllm.serving:8000/v1`); the "
        "pod posts to `<url>/chat/completions`."
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="Model name the server serves the judge under (the request's `model` field)."
    )
    secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret whose `OPENAI_API_KEY` is sent as the bearer token (unset: no Authorization header).",
    )
    timeout_seconds: int = Field(default=120, ge=1, le=3600, description="Time allowed for one verdict.")


class JudgeScale(ApiModel):
    """The rating scale of single-answer grading."""

    min: int = Field(default=SCALE_MIN, ge=0, le=100, description="Lowest rating.")
    max: int = Field(default=SCALE_MAX, ge=1, le=100, description="Highest rating.")

    __rules__ = (
        Rule(
            # The CRD's `default: {}` for scale is checked as it is, before its fields' defaults fill in.
            cel=f"(has(self.min) ? self.min : {SCALE_MIN}) < (has(self.max) ? self.max : {SCALE_MAX})",
            message="scale.min must be below scale.max",
            check=lambda s: s.min < s.max,
            field="max",
        ),
    )


class JudgeSettings(ApiModel):
    """An LLM judge that grades the answers the model under test generates for the dataset's questions."""

    mode: Literal["pairwise", "single"] = Field(
        default="pairwise",
        description="`pairwise`: the judge sees the tuned and the baseline answer to the same question and picks "
        "the better one or a tie, once in each order (tuned first, then baseline first) to cancel position bias; "
        "metrics `win_rate` and `tie_rate` (of the tuned model, over all parsed verdicts), `order_disagreement` "
        "(share of questions whose two verdicts disagree once mapped back to the models: high means the judge "
        "follows position, not quality) and `judge_unparsed`. Needs `baseline: true` and an adapter. `single`: "
        "the judge rates each answer on `scale`; metric `judge_score` (mean rating, with the baseline's beside "
        "it) and `judge_unparsed`.",
    )
    model: ModelSource | None = Field(
        default=None,
        description="A judge model loaded in the evaluation pod from the store (greedy decoding). Set this or "
        "`endpoint`.",
    )
    endpoint: JudgeEndpoint | None = Field(
        default=None, description="An OpenAI-compatible server that hosts the judge. Set this or `model`."
    )
    rubric: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        default=DEFAULT_RUBRIC, description="What the judge weighs; it goes into every judge prompt."
    )
    scale: JudgeScale = Field(default_factory=JudgeScale, description="Rating scale (single mode).")
    max_new_tokens: int = Field(
        default=256,
        ge=1,
        le=8192,
        description="Tokens the judge may write per verdict (its reasoning, then `[[A]]`, `[[B]]`, `[[C]]` for a "
        "tie, or `[[rating]]`). A verdict with no such mark, or a rating outside the scale, is counted as "
        "unparsed and kept, raw, in the report.",
    )

    __rules__ = (exactly_one("model", "endpoint", named="judge."),)
