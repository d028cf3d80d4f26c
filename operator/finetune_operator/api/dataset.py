"""Dataset: raw documents (text, markdown, HTML, PDF, docx, JSONL) -> chunks -> instruction pairs -> splits.

A FineTuneJob trains on its train split (spec.dataset.datasetRef), an EvalRun scores its test split with
the chunks as the faithfulness sources (benchmarks[].dataset.datasetRef).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .common import (
    QUEUE_AND_SUSPEND,
    URI_HELP,
    Condition,
    ImageRef,
    ModelSource,
    Phase,
    Quantization,
    Resources,
    SecretRef,
    Uri,
    remote_secret_rule,
)
from .schema import DNS_LABEL, ApiModel, Quantity, Rule
from .training_status import AttemptFields

DOCUMENT_TYPES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl")
DATASET_COLUMNS = {"question": "instruction", "answer": "output", "context": "context"}
"""The columns of every split file (alpaca, plus the chunk the pair came from and where it lies): what a
FineTuneJob trains on and what an EvalRun's datasetRef reads as question, answer and faithfulness source."""
DEFAULT_PROMPT = (
    "Read the passage and write {pairs} question(s) a reader could answer from it alone, each with its answer "
    "taken from the passage.\nWrite each as two lines:\nQ: <question>\nA: <answer>\n\nPassage:\n{chunk}\n"
)


class DocumentSource(ApiModel):
    """Where the raw documents are: a store prefix (every supported file under it) or one file."""

    uri: Uri = Field(
        description="Prefix or file of documents: .txt and .md (UTF-8), .html/.htm, .pdf (text layer; no OCR), "
        ".docx, and .jsonl with a `text` field per line. Other files are listed as skipped. " + URI_HELP
    )
    secret_ref: SecretRef | None = Field(default=None, description="Secret with the credentials for `uri`.")

    __rules__ = (remote_secret_rule(),)


class Chunking(ApiModel):
    """How documents are cut into passages: along headings and paragraphs, within a token budget."""

    max_tokens: int = Field(
        default=256,
        ge=16,
        le=8192,
        description="Tokens per chunk at most, counted as words and punctuation marks (about 0.75 of a "
        "subword tokenizer's count for English prose). A chunk never spans two sections (headings); a paragraph "
        "longer than the budget is cut between sentences.",
    )
    overlap: int = Field(
        default=32,
        ge=0,
        le=4096,
        description="Tokens from the end of a chunk repeated at the start of the next one in the same section, so "
        "that a fact cut in two is whole in one of them.",
    )

    __rules__ = (
        Rule(
            cel="(has(self.overlap) ? self.overlap : 32) < (has(self.maxTokens) ? self.maxTokens : 256)",
            message="overlap must be smaller than maxTokens",
            check=lambda c: c.overlap < c.max_tokens,
            field="overlap",
        ),
    )


TemplateKind = Literal["heading", "cloze", "definition"]
TEMPLATE_KINDS: tuple[TemplateKind, ...] = ("heading", "cloze", "definition")


class TemplateGeneration(ApiModel):
    """Pairs from the document's own structure, without a model: deterministic, and every answer is a span of
    its chunk."""

    questions: list[TemplateKind] = Field(
        default_factory=lambda: list(TEMPLATE_KINDS),
        json_schema_extra={"default": list(TEMPLATE_KINDS)},
        min_length=1,
        max_length=3,
        description="`heading`: 'What does the document say about <section heading>?' answered by the chunk's "
        "first sentences. `cloze`: a sentence with one key term blanked, answered by the term. `definition`: "
        "'What is X?' for sentences of the form 'X is/are ...', answered by that sentence.",
    )
    per_chunk: int = Field(default=3, ge=1, le=32, description="Pairs per chunk at most, over all question kinds.")


class ModelGeneration(ApiModel):
    """Self-instruct generation: a model reads each chunk and writes question-answer pairs."""

    model: ModelSource = Field(description="The generating model: the base model itself, or a larger one.")
    quantization: Quantization | None = Field(
        default=None, description="Load it quantized with bitsandbytes (unset: in its own dtype)."
    )
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=8192)] = Field(
        default=DEFAULT_PROMPT,
        description="The instruction, rendered with the model's chat template; `{chunk}` is replaced by the "
        "passage and `{pairs}` by pairsPerChunk. The reply is read as `Q:` and `A:` lines.",
    )
    pairs_per_chunk: int = Field(default=2, ge=1, le=16, description="Pairs to ask for per chunk.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Chunks generated together (left-padded).")
    max_new_tokens: int = Field(default=256, ge=16, le=8192, description="Tokens generated per chunk at most.")
    temperature: float = Field(default=0.0, ge=0, le=5, description="Sampling temperature; 0 is greedy decoding.")

    __rules__ = (
        Rule(
            cel="!has(self.prompt) || self.prompt.contains('{chunk}')",
            message="prompt must contain {chunk}, where the passage goes",
            check=lambda m: "{chunk}" in m.prompt,
            field="prompt",
        ),
    )


class Generation(ApiModel):
    """How instruction pairs are made from chunks."""

    mode: Literal["template", "model"] = Field(
        default="template",
        description="`template`: deterministic pairs from structure (no model, CPU, fast). `model`: self-instruct "
        "question-answer generation with `model` (needs model).",
    )
    template: TemplateGeneration = Field(
        default_factory=TemplateGeneration, description="Template settings (mode template)."
    )
    model: ModelGeneration | None = Field(default=None, description="The generating model (mode model).")

    __rules__ = (
        Rule(
            cel="((has(self.mode) ? self.mode : 'template') == 'model') == has(self.model)",
            message="model is set exactly when mode is model",
            check=lambda g: (g.mode == "model") == (g.model is not None),
            field="model",
        ),
    )


class Filters(ApiModel):
    """Which generated pairs are kept; status.pairs.dropped counts each reason."""

    dedupe: bool = Field(default=True, description="Drop a pair whose question and answer repeat an earlier one.")
    near_dedupe: float | None = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Drop a pair whose question and answer share at least this Jaccard similarity of word "
        "3-grams with an earlier pair (estimated with MinHash); unset disables it.",
    )
    min_question_words: int = Field(default=3, ge=1, le=1000, description="Drop shorter questions.")
    min_answer_words: int = Field(default=1, ge=1, le=1000, description="Drop shorter answers.")
    max_answer_words: int = Field(default=300, ge=1, le=100_000, description="Drop longer answers.")
    grounding: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Keep a pair only if at least this share of its answer's words occurs in its chunk (the "
        "faithfulness metric of an EvalRun, applied to the training data); 0 disables it.",
    )
    languages: list[Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")]] = Field(
        default_factory=list,
        max_length=16,
        description="Keep only pairs whose chunk is in one of these languages (ISO 639-1: en, de, fr, es, it, nl, "
        "pt are recognised, by their most common words); empty keeps every language.",
    )


class Splits(ApiModel):
    """How kept pairs are divided: by chunk (all pairs of one chunk go to the same split, drawn from a hash of
    its id and the seed), so that no test question comes from a chunk the model trained on. Train gets the rest."""

    validation: float = Field(default=0.1, ge=0, le=0.5, description="Share of chunks for the validation split.")
    test: float = Field(default=0.1, ge=0, le=0.5, description="Share of chunks for the test split.")
    seed: int = Field(default=0, ge=0, description="Seed of the draw (same seed, same splits).")

    __rules__ = (
        Rule(
            cel="(has(self.validation) ? self.validation : 0.1) + (has(self.test) ? self.test : 0.1) < 1.0",
            message="validation + test must leave a share for train",
            check=lambda s: s.validation + s.test < 1.0,
            field="test",
        ),
    )


class DatasetOutput(ApiModel):
    """Where the splits are published."""

    uri: Annotated[str, StringConstraints(pattern=r"^(s3|pvc|file)://[^\s]+$", max_length=1024)] | None = Field(
        default=None,
        description="Prefix; the files land in `<uri>/<namespace>/<name>/<uid>/attempt-<n>/` (train.jsonl, "
        "validation.jsonl, test.jsonl, chunks.jsonl, manifest.json last). Unset: the operator's default output URI.",
    )
    secret_ref: SecretRef | None = Field(
        default=None, description="Secret with write credentials for uri (unset: the operator's storage secret)."
    )

    __rules__ = (remote_secret_rule(optional=True),)


class DatasetResources(Resources):
    """Resources of the build pod: CPU alone unless generation runs a model."""

    gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs for the build pod (limit of `gpuResourceName`); 0 runs on CPU, enough for template mode.",
    )
    cpu: Quantity = Field(default="2", description="CPU request and limit of the build pod.")
    memory: Quantity = Field(
        default="4Gi",
        description="Memory request and limit of the build pod. Documents are read in a streaming way, so this "
        "does not grow with their size; model mode needs the generating model's size on top.",
    )


class DatasetSpec(ApiModel):
    """Documents in, instruction pairs out: how to read, chunk, generate, filter and split."""

    documents: DocumentSource = Field(description="The raw documents.")
    chunking: Chunking = Field(default_factory=Chunking, description="How documents are cut into chunks.")
    generation: Generation = Field(default_factory=Generation, description="How pairs are made from chunks.")
    filters: Filters = Field(default_factory=Filters, description="Which pairs are kept.")
    splits: Splits = Field(default_factory=Splits, description="Validation and test shares (train: the rest).")
    output: DatasetOutput = Field(default_factory=DatasetOutput, description="Where the splits are published.")
    samples: int = Field(default=3, ge=0, le=10, description="Kept pairs shown in status.samples.")
    resources: DatasetResources = Field(
        default_factory=DatasetResources, description="CPU, memory, GPUs and placement of the build pod."
    )
    image: ImageRef | None = Field(default=None, description="Trainer image to run (unset: the operator's default).")
    queue_name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=63)] | None = Field(
        default=None, description="Kueue LocalQueue to submit to."
    )
    suspend: bool = Field(default=False, description="Suspend the build.")
    backoff_limit: int = Field(default=2, ge=0, le=100, description="Pod retries for retriable failures.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=31_536_000, description="Fail the build after this many seconds."
    )

    __rules__ = (QUEUE_AND_SUSPEND,)


# --- status ------------------------------------------------------------------------------------------


class DatasetProgress(ApiModel):
    """Live progress, patched by the build pod at most every few seconds."""

    documents_done: int | None = Field(default=None, ge=0, description="Documents read so far.")
    documents_total: int | None = Field(default=None, ge=0, description="Documents to read.")
    percent: int | None = Field(default=None, ge=0, le=100, description="Share of the documents' bytes read.")
    chunks: int | None = Field(default=None, ge=0, description="Chunks so far.")
    pairs: int | None = Field(default=None, ge=0, description="Pairs generated so far.")
    pages_per_second: float | None = Field(
        default=None, ge=0, description="Pages (a PDF page, or 3,000 characters of other text) read per second."
    )
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="What the pod is doing."
    )
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds left.")
    update_time: str | None = Field(
        default=None, description="When the pod last reported (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class DocumentProblem(ApiModel):
    """A document that was skipped, and why."""

    document: Annotated[str, StringConstraints(max_length=1024)] = Field(description="Its path under documents.uri.")
    reason: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="CamelCase: Unreadable (a corrupt file), Empty (no text), NotUtf8 (a text file in another "
        "encoding), Unsupported (a file type not read)."
    )
    message: Annotated[str, StringConstraints(max_length=512)] = Field(description="Detail, with the line or page.")


class DocumentCounts(ApiModel):
    """The documents read."""

    read: int = Field(default=0, ge=0, description="Documents that gave text.")
    failed: int = Field(default=0, ge=0, description="Documents skipped (status.failures names them).")
    pages: int = Field(default=0, ge=0, description="PDF pages, plus a page per 3,000 characters of other documents.")
    bytes: int = Field(default=0, ge=0, description="Bytes read.")


class PairCounts(ApiModel):
    """Pairs generated, kept, and dropped by each filter."""

    generated: int = Field(default=0, ge=0, description="Pairs generated.")
    kept: int = Field(default=0, ge=0, description="Pairs that passed every filter.")
    dropped: dict[Annotated[str, StringConstraints(max_length=64)], int] = Field(
        default_factory=dict,
        description="Dropped pairs per reason: duplicate, nearDuplicate, shortQuestion, shortAnswer, longAnswer, "
        "ungrounded, language, unparsed (a model reply with no Q:/A: pair).",
        json_schema_extra={"maxProperties": 16},
    )


class SplitCounts(ApiModel):
    """Rows per split."""

    train: int = Field(default=0, ge=0, description="Rows in train.jsonl.")
    validation: int = Field(default=0, ge=0, description="Rows in validation.jsonl.")
    test: int = Field(default=0, ge=0, description="Rows in test.jsonl.")


class DatasetArtifact(ApiModel):
    """The published dataset."""

    uri: Annotated[str, StringConstraints(max_length=2048)] = Field(
        description="Prefix with train.jsonl, validation.jsonl, test.jsonl, chunks.jsonl and manifest.json."
    )
    manifest_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="sha256 of manifest.json, which lists every file's sha256 and every source document's."
    )
    size_bytes: int = Field(default=0, ge=0, description="Bytes published.")


class Sample(ApiModel):
    """One kept pair, to see what the dataset looks like."""

    question: Annotated[str, StringConstraints(max_length=512)] = Field(description="The instruction.")
    answer: Annotated[str, StringConstraints(max_length=512)] = Field(description="The response.")
    source: Annotated[str, StringConstraints(max_length=1024)] = Field(description="Document and place it came from.")


class DatasetOutcome(ApiModel):
    """What a build produced (the trainer's result, and the status fields copied from it)."""

    documents: DocumentCounts = Field(default_factory=DocumentCounts, description="Documents read and failed.")
    failures: list[DocumentProblem] = Field(
        default_factory=list, max_length=10, description="Skipped documents, the first ten (the pod's log lists all)."
    )
    chunks: int = Field(default=0, ge=0, description="Chunks cut from the documents.")
    pairs: PairCounts = Field(default_factory=PairCounts, description="Pairs generated, kept and dropped.")
    splits: SplitCounts = Field(default_factory=SplitCounts, description="Rows per split.")
    output: DatasetArtifact | None = Field(default=None, description="The published dataset.")
    samples: list[Sample] = Field(default_factory=list, max_length=10, description="Some kept pairs.")


class DatasetStatus(DatasetOutcome, AttemptFields):
    """Observed state of the build."""

    phase: Phase | None = Field(default=None, description="Pending, Queued, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Validated, Running, Succeeded, Failed, and Ready (True once the splits are published: what a "
        "FineTuneJob's or EvalRun's datasetRef waits for).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: DatasetProgress | None = Field(default=None, description="Live progress reported by the build pod.")


def split_uri(dataset_uri: str, split: str) -> str:
    """The file of one split under a published Dataset's prefix (storage layout, a contract)."""
    return f"{dataset_uri.rstrip('/')}/{split}.jsonl"
