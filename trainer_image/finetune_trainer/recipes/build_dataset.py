"""`finetune-trainer build-dataset`: a Dataset's documents -> chunks -> pairs -> filters -> splits, published.

One pod per attempt, with the documents (role DOCUMENTS), the generating model in model mode (GENERATOR)
and the output (OUTPUT). Documents are read one at a time as a stream of blocks; chunks, pairs and rows
go to local files as they come, so memory follows the pairs kept (the filters' memory), not the documents.
A document that cannot be used (corrupt, empty, not UTF-8, an unsupported type) is named in the result and
contributes nothing; the others are used. Rows are split by chunk: the pairs of one chunk stay together, so
no test question comes from a chunk the model trained on (neighbouring chunks share `overlap` tokens).

Published like an adapter: the files first, manifest.json last with every file's sha256 and every source
document's (provenance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from finetune_operator.api.common import SPLITS
from finetune_operator.api.contract import DOCUMENTS_ROLE, GENERATOR_ROLE, DatasetBuildRunSpec, TrainerResult
from finetune_operator.api.dataset import DatasetArtifact, DatasetOutcome, DocumentProblem, Sample

from ..data.chunking import Chunk, chunk_blocks
from ..data.documents import PAGE_CHARS, Block, DocumentError, read_blocks
from ..data.pair_filters import PairFilter
from ..data.synth import Pair, parse_reply, template_pairs
from ..errors import InputError
from ..report import ProgressReporter
from ..storage import MANIFEST, publish, sha256_file, store_for

log = logging.getLogger(__name__)
LISTED_FAILURES = 10
REPORT_SECONDS = 5.0
GENERATE_BATCH_CHUNKS = 256
"""Chunks gathered before a model generates for them (in batches of generation.model.batchSize)."""


class Generator:
    """Pairs for a list of chunks: the templates, or a model's replies (the model loaded once, lazily)."""

    def __init__(self, run: DatasetBuildRunSpec, workdir: Path, environ: Mapping[str, str]) -> None:
        self.run = run
        self.workdir = workdir
        self.environ = environ
        self.model: Any = None
        self.prompter: Any = None
        self.unparsed = 0
        self.calls = 0

    def pairs(self, chunks: Sequence[Chunk]) -> list[list[Pair]]:
        generation = self.run.dataset.generation
        if generation.model is None:
            return [template_pairs(chunk, generation.template) for chunk in chunks]
        return self._generate(chunks)

    def _load(self) -> None:
        from ..evaluate.generate import Prompter
        from ..inputs import fetch_model
        from ..model import device_for, load_base_model, load_tokenizer

        settings = self.run.dataset.generation.model
        assert settings is not None
        source = settings.model
        store = store_for(source.uri, GENERATOR_ROLE, self.run.storage, self.environ)
        fetched = fetch_model(store, source.uri, self.workdir / "generator")
        device = device_for(settings.quantization)
        self.model = load_base_model(fetched.path, settings.quantization, device, source.trust_remote_code)
        self.model.eval()
        self.prompter = Prompter(load_tokenizer(fetched.path, source.trust_remote_code), chat_template=True)

    def _generate(self, chunks: Sequence[Chunk]) -> list[list[Pair]]:
        from ..data.synth import render_prompt

        settings = self.run.dataset.generation.model
        assert settings is not None
        prompts = [render_prompt(settings.prompt, chunk, settings.pairs_per_chunk) for chunk in chunks]
        found = [parse_reply(reply)[: settings.pairs_per_chunk] for reply in self.replies(prompts)]
        self.unparsed += sum(1 for pairs in found if not pairs)
        return found

    def replies(self, prompts: Sequence[str]) -> list[str]:
        """The model's reply to each prompt, generated generation.model.batchSize at a time."""
        from finetune_operator.api.evaluation import GenerationSettings

        from ..evaluate.generate import generate

        settings = self.run.dataset.generation.model
        assert settings is not None
        if self.model is None:
            self._load()
        options = GenerationSettings(
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, batch_size=settings.batch_size
        )

        def counted(_: int) -> None:
            self.calls += 1

        return generate(self.model, self.prompter, list(prompts), options, on_batch=counted)


@dataclass
class Tally:
    """What one document gave; added to the build's outcome only once the whole document was read."""

    chunks: int = 0
    generated: int = 0
    kept: int = 0
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    samples: list[Sample] = field(default_factory=list)
    pages: int = 0
    characters: int = 0

    def add_to(self, outcome: DatasetOutcome, limit: int) -> None:
        outcome.chunks += self.chunks
        outcome.pairs.generated += self.generated
        outcome.pairs.kept += self.kept
        for split, rows in self.splits.items():
            setattr(outcome.splits, split, getattr(outcome.splits, split) + rows)
        outcome.samples += self.samples[: max(0, limit - len(outcome.samples))]
        outcome.documents.pages += self.pages or -(-self.characters // PAGE_CHARS)


@dataclass
class Build:
    """One build: its run spec, scratch folder, output files and what it counted."""

    run: DatasetBuildRunSpec
    workdir: Path
    environ: Mapping[str, str]
    reporter: ProgressReporter
    outcome: DatasetOutcome = field(default_factory=DatasetOutcome)
    problems: list[DocumentProblem] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    generator: Generator | None = None
    """Makes the pairs (default: the spec's templates or model)."""

    def __post_init__(self) -> None:
        self.filter = PairFilter(self.run.dataset.filters)
        self.maker = self.generator or Generator(self.run, self.workdir, self.environ)
        self.out = self.workdir / "dataset"
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        self.started = time.monotonic()
        self.bytes_total = 0
        self.done = 0
        self.total = 0
        self.reported = self.started

    def execute(self) -> TrainerResult:
        documents = self.fetch_documents()
        self.total = len(documents)
        self.bytes_total = sum(path.stat().st_size for _, path in documents) or 1
        with ExitStack() as stack:
            files = {split: stack.enter_context((self.out / f"{split}.jsonl").open("w")) for split in SPLITS}
            chunk_file = stack.enter_context((self.out / "chunks.jsonl").open("w"))
            for number, (name, path) in enumerate(documents):
                self.done = number
                self.read_document(name, path, files, chunk_file)
                self.report(number + 1, len(documents))
        found = self.outcome
        unparsed = {"unparsed": self.maker.unparsed} if self.maker.unparsed else {}
        found.pairs.dropped = {**dict(self.filter.dropped), **unparsed}
        found.failures = self.problems[:LISTED_FAILURES]
        found.documents.failed = len(self.problems)
        if found.documents.read == 0:
            uri = self.run.dataset.documents.uri
            raise InputError(f"documents.uri: no usable document under {uri}: {_named(self.problems)}")
        if found.pairs.kept == 0:
            raise InputError(f"no pair passed the filters (dropped: {found.pairs.dropped}); loosen spec.filters")
        if found.splits.train == 0:
            raise InputError(
                f"none of the {found.pairs.kept} pairs kept landed in the train split (validation "
                f"{found.splits.validation}, test {found.splits.test}): add documents, or lower spec.splits"
            )
        metadata = {
            "kind": "dataset",
            "attempt": self.run.attempt,
            "sources": self.sources,
            "spec": self.run.dataset.to_json_dict(),
            "counts": {k: v for k, v in found.to_json_dict().items() if k not in ("samples", "failures", "output")},
        }
        store = store_for(self.run.output_uri, "OUTPUT", self.run.storage, self.environ)
        published = publish(store, self.out, self.run.output_uri, metadata)
        found.output = DatasetArtifact(
            uri=published.uri, manifest_sha256=published.manifest_sha256, size_bytes=published.size_bytes
        )
        message = (
            f"{found.pairs.kept} pairs from {found.chunks} chunks of {found.documents.read} documents, "
            f"published to {published.uri}"
        )
        return TrainerResult(result="succeeded", message=message, dataset=found)

    def fetch_documents(self) -> list[tuple[str, Path]]:
        uri = self.run.dataset.documents.uri
        local = self.workdir / "documents"
        shutil.rmtree(local, ignore_errors=True)
        try:
            store_for(uri, DOCUMENTS_ROLE, self.run.storage, self.environ).download_prefix(uri, local)
        except InputError as error:
            raise InputError(f"documents.uri: {error}") from None
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST)
        return [(p.relative_to(local).as_posix(), p) for p in files]

    def read_document(self, name: str, path: Path, files: Mapping[str, IO[str]], chunk_file: IO[str]) -> None:
        """One document into the split files; nothing of it if it fails (its rows go to scratch files first)."""
        bad_lines: list[str] = []
        tally = Tally()
        scratch_dir = self.workdir / "scratch"
        scratch_dir.mkdir(exist_ok=True)
        parts = {split: scratch_dir / f"{split}.part" for split in (*SPLITS, "chunks")}
        try:
            with ExitStack() as stack:
                scratch = {split: stack.enter_context(path_.open("w")) for split, path_ in parts.items()}
                blocks = self.counted(_parsed(read_blocks(path, bad_lines)), tally)
                self.write_pairs(name, blocks, scratch, tally)
        except DocumentError as error:
            for part in parts.values():
                part.unlink(missing_ok=True)
            self.fail(name, error.reason, str(error))
            return
        for line in bad_lines:
            log.warning("%s: %s (the line is skipped)", name, line)
        if tally.chunks == 0:
            scanned = " (a scanned PDF has no text layer)" if path.suffix.lower() == ".pdf" else ""
            self.fail(name, "Empty", "no text found" + scanned)
            return
        for split in SPLITS:
            _append(files[split], parts[split])
        _append(chunk_file, parts["chunks"])
        tally.add_to(self.outcome, self.run.dataset.samples)
        self.outcome.documents.read += 1
        self.outcome.documents.bytes += path.stat().st_size
        self.sources[name] = sha256_file(path)

    @staticmethod
    def counted(blocks: Iterator[Block], tally: Tally) -> Iterator[Block]:
        for block in blocks:
            tally.pages += block.kind == "page"
            tally.characters += len(block.text)
            yield block

    def write_pairs(self, name: str, blocks: Iterator[Block], files: Mapping[str, IO[str]], tally: Tally) -> None:
        spec = self.run.dataset
        pending: list[Chunk] = []
        size = GENERATE_BATCH_CHUNKS if spec.generation.model is not None else 1
        for chunk in chunk_blocks(blocks, spec.chunking.max_tokens, spec.chunking.overlap):
            pending.append(chunk)
            if len(pending) >= size:
                self.emit_and_report(name, pending, files, tally)
                pending = []
        if pending:
            self.emit(name, pending, files, tally)

    def emit_and_report(self, name: str, chunks: Sequence[Chunk], files: Mapping[str, IO[str]], tally: Tally) -> None:
        self.emit(name, chunks, files, tally)
        if time.monotonic() - self.reported >= REPORT_SECONDS:
            self.reported = time.monotonic()
            self.report(self.done, self.total, tally)

    def emit(self, name: str, chunks: Sequence[Chunk], files: Mapping[str, IO[str]], tally: Tally) -> None:
        spec = self.run.dataset
        for chunk, pairs in zip(chunks, self.maker.pairs(chunks), strict=True):
            chunk_id = f"{name}#{chunk.index}"
            key = int.from_bytes(hashlib.blake2b(chunk_id.encode(), digest_size=8).digest(), "big")
            source = f"{name} {chunk.place}".strip()
            record = {"id": chunk_id, "source": source, "heading": chunk.heading, "text": chunk.text}
            files["chunks"].write(json.dumps(record, ensure_ascii=False) + "\n")
            tally.chunks += 1
            split = _split(chunk_id, spec.splits.validation, spec.splits.test, spec.splits.seed)
            for pair in pairs:
                tally.generated += 1
                if self.filter.drop(pair, chunk.text, key) is not None:
                    continue
                tally.kept += 1
                tally.splits[split] += 1
                row = {
                    "instruction": pair.question,
                    "input": "",
                    "output": pair.answer,
                    "context": chunk.text,
                    "source": source,
                    "chunk": chunk_id,
                }
                files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
                if len(tally.samples) < spec.samples:
                    tally.samples.append(
                        Sample(question=pair.question[:160], answer=pair.answer[:160], source=source[:200])
                    )

    def fail(self, name: str, reason: str, message: str) -> None:
        log.warning("%s skipped: %s: %s", name, reason, message)
        self.problems.append(DocumentProblem(document=name[:200], reason=reason, message=message[:160]))

    def report(self, done: int, total: int, reading: Tally | None = None) -> None:
        """Progress so far; `reading`: the document being read (its characters count towards the share read, so a
        single large document shows progress too). The reporter sends at most one patch every few seconds."""
        found = self.outcome
        elapsed = max(time.monotonic() - self.started, 1e-6)
        partial = reading or Tally()
        read = found.documents.bytes + partial.characters
        share = min(0.99, read / self.bytes_total) if done < total else 1.0
        pages = found.documents.pages + (partial.pages or partial.characters // PAGE_CHARS)
        progress = {
            "documentsDone": done,
            "documentsTotal": total,
            "percent": int(100 * share),
            "chunks": found.chunks + partial.chunks,
            "pairs": found.pairs.generated + partial.generated,
            "pagesPerSecond": round(pages / elapsed, 2),
            "message": f"read {done} of {total} documents",
        }
        if 0 < share < 1:
            progress["etaSeconds"] = int(elapsed * (1 - share) / share)
        self.reporter.report(progress, force=done == total)


def _parsed(blocks: Iterator[Block]) -> Iterator[Block]:
    """The blocks, with a parser library's own failure on a corrupt file as the document's Unreadable. Only what
    the parsing raises lands here: a failure of the generation (a model that does not load) fails the build."""
    try:
        yield from blocks
    except DocumentError:
        raise
    except Exception as error:
        raise DocumentError("Unreadable", f"{type(error).__name__}: {error}") from error


def _append(target: IO[str], part: Path) -> None:
    with part.open() as source:
        shutil.copyfileobj(source, target)
    part.unlink()


def _split(chunk_id: str, validation: float, test: float, seed: int) -> str:
    """The split of a chunk's pairs: a uniform draw from its id and the seed (same seed, same splits)."""
    digest = hashlib.sha256(f"{seed}:{chunk_id}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if draw < test else "validation" if draw < test + validation else "train"


def _named(problems: Sequence[DocumentProblem]) -> str:
    return "; ".join(f"{p.document}: {p.reason}: {p.message}" for p in problems[:5]) or "no files"


def build_dataset(
    run: DatasetBuildRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
) -> TrainerResult:
    return Build(run, workdir, environ, reporter).execute()
