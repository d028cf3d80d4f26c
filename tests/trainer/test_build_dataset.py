"""`finetune-trainer build-dataset` on files: every document type, bad documents, the filters, model mode.

What this proves: the readers get the text out of real files of each type (the PDF and the .docx are made
by fpdf2 and python-docx, not hand-written); template pairs are grounded in their chunk and unique; a bad
document is named and costs only itself; memory does not follow the document's size; model mode batches
its chunks with the real tiny model, and (with its replies scripted through `Generator.replies`, the seam the
recipe defines) parses them and counts what the filters drop. What it cannot prove: that a model's generated
pairs are any good. The tiny random model writes nonsense, so model mode is tested for plumbing only.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from documents import write_bad_documents, write_documents, write_large_text, write_text
from finetune_operator.api.contract import DatasetBuildRunSpec
from finetune_operator.api.dataset import Filters
from finetune_trainer.cli import main
from finetune_trainer.data.chunking import chunk_blocks, count_tokens
from finetune_trainer.data.documents import Block
from finetune_trainer.data.pair_filters import PairFilter, language
from finetune_trainer.data.synth import Pair, parse_reply
from finetune_trainer.recipes.build_dataset import Generator


def build(tmp_path: Path, documents: Path, **dataset: Any) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "out"
    spec = {
        "kind": "DatasetBuildRun",
        "attempt": 1,
        "trainerImage": "test",
        "dataset": {"documents": {"uri": f"file://{documents}/"}, **dataset},
        "outputUri": f"file://{out}/",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = tmp_path / "result.json"
    code = main(
        [
            "build-dataset",
            "--spec",
            str(tmp_path / "spec.json"),
            "--workdir",
            str(tmp_path / "work"),
            "--result",
            str(result),
        ]
    )
    found = json.loads(result.read_text())
    assert code == 0, found
    return found["dataset"], out


def rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_every_document_type_gives_grounded_unique_pairs_published_with_provenance(tmp_path: Path) -> None:
    docs = write_documents(tmp_path / "docs")
    found, out = build(tmp_path, tmp_path / "docs", splits={"test": 0.2, "validation": 0.1})
    assert found["documents"]["read"] == len(docs) and found["documents"]["failed"] == 0
    assert found["documents"]["pages"] >= 3  # the PDF's three pages at least
    every = [row for split in ("train", "validation", "test") for row in rows(out, split)]
    assert len(every) == found["pairs"]["kept"] > 0
    assert {r["source"].split()[0] for r in every} == set(docs), "every document gave pairs"
    # Template quality: every answer is a span of the chunk it came from, and no pair repeats.
    assert all(r["output"] in r["context"] for r in every)
    assert len({(r["instruction"], r["output"]) for r in every}) == len(every)
    chunks = {
        json.loads(line)["id"]: json.loads(line)["text"] for line in (out / "chunks.jsonl").read_text().splitlines()
    }
    assert all(chunks[r["chunk"]] == r["context"] for r in every)
    assert found["splits"] == {s: len(rows(out, s)) for s in ("train", "validation", "test")}
    # Pairs of one chunk stay in one split.
    where = {(r["chunk"], split) for split in ("train", "validation", "test") for r in rows(out, split)}
    assert len({chunk for chunk, _ in where}) == len(where)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"] == {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in docs.items()}
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    assert found["output"]["manifestSha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    headings = [r for r in every if r["instruction"].startswith("What does the document say about")]
    assert any("Rule" in r["instruction"] or "rule" in r["instruction"] for r in headings)  # md, html, docx headings


def test_bad_documents_are_named_and_the_good_ones_still_used(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write_documents(docs)
    expected = write_bad_documents(docs)
    (docs / "slides.pptx").write_bytes(b"PK\x03\x04")
    (docs / "records.jsonl").write_text(
        '{"text": "A first record is a line of JSON with text in it."}\nnot json\n{"x": 1}\n'
    )
    found, out = build(tmp_path, docs)
    named = {f["document"]: f["reason"] for f in found["failures"]}
    assert named == {**expected, "slides.pptx": "Unsupported"}
    assert found["documents"]["failed"] == 4 and found["documents"]["read"] == 6
    assert "line 1" in next(f["message"] for f in found["failures"] if f["document"] == "latin1.txt")
    sources = {r["source"].split()[0] for s in ("train", "validation", "test") for r in rows(out, s)}
    assert not sources & set(named)
    published = {p.name for p in out.iterdir()}
    assert published == {"train.jsonl", "validation.jsonl", "test.jsonl", "chunks.jsonl", "manifest.json"}


def test_a_generator_failure_fails_the_build_instead_of_blaming_the_document(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_text(docs / "notes.txt", count=2)
    spec = {
        "kind": "DatasetBuildRun",
        "attempt": 1,
        "trainerImage": "t",
        "dataset": {
            "documents": {"uri": f"file://{docs}/"},
            "generation": {"mode": "model", "model": {"model": {"uri": f"file://{tmp_path}/no-model/"}}},
        },
        "outputUri": f"file://{tmp_path}/out/",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = main(["build-dataset", "--spec", str(tmp_path / "spec.json"), "--result", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert code != 0 and "no-model" in result["message"] and "dataset" not in result, result


def test_a_folder_of_only_bad_documents_fails_naming_them(tmp_path: Path) -> None:
    write_bad_documents(tmp_path / "docs")
    spec = {
        "kind": "DatasetBuildRun",
        "attempt": 1,
        "trainerImage": "t",
        "dataset": {"documents": {"uri": f"file://{tmp_path}/docs/"}},
        "outputUri": f"file://{tmp_path}/out/",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = main(["build-dataset", "--spec", str(tmp_path / "spec.json"), "--result", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 2 and result["reason"] == "DataError"
    assert "documents.uri: no usable document" in result["message"] and "latin1.txt: NotUtf8" in result["message"]


def test_a_build_whose_train_split_is_empty_fails_saying_so(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one.md").write_text(
        "# Warranty\n\nA warranty is a promise that the product works for two years.\n"
    )
    spec = {
        "kind": "DatasetBuildRun",
        "attempt": 1,
        "trainerImage": "t",
        "dataset": {"documents": {"uri": f"file://{tmp_path}/docs/"}, "splits": {"test": 0.5, "validation": 0.49}},
        "outputUri": f"file://{tmp_path}/out/",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))  # seed 0 draws the one chunk into test (0.99 of draws)
    code = main(["build-dataset", "--spec", str(tmp_path / "spec.json"), "--result", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 2 and "landed in the train split" in result["message"], result
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_chunks_keep_to_sections_budget_and_overlap() -> None:
    sentence = "The desk answers every request within ten working days of arrival."
    blocks = [
        Block("heading", "Returns", "line 1", 2),
        *(Block("paragraph", " ".join([sentence] * 3), f"line {n}") for n in range(2, 8)),
        Block("heading", "Shipping", "line 9", 2),
        Block("paragraph", "Parcels leave the warehouse daily.", "line 10"),
    ]
    chunks = list(chunk_blocks(blocks, max_tokens=60, overlap=13))
    assert all(count_tokens(c.text) <= 60 for c in chunks)
    assert [c.heading for c in chunks][-1] == "Shipping" and chunks[-1].text == "Parcels leave the warehouse daily."
    returns = [c for c in chunks if c.heading == "Returns"]
    assert len(returns) > 2 and all(b.text.startswith(sentence) for b in returns[1:])  # the overlap sentence
    assert "Parcels" not in " ".join(c.text for c in returns)


def test_filters_count_each_reason() -> None:
    promise = (
        "A warranty is a promise that the product works as described for two full years after delivery, covering "
        "defects in materials and workmanship in every part of the product that the customer bought from us."
    )
    chunk = promise + " Batteries are excluded from it."
    rules = PairFilter(Filters(languages=["en"]))
    pairs = [
        Pair("What is a warranty here?", promise),
        Pair("What is a warranty, here?", promise + "!"),  # the same words: a duplicate
        Pair("What is a warranty here then?", promise),  # one word more: a near duplicate
        Pair("Why?", "Batteries are excluded."),
        Pair("What does the warranty cover?", "Everything including accidental damage and theft."),
    ]
    kept = [rules.drop(p, chunk, 1) is None for p in pairs]
    assert kept == [True, False, False, False, False]
    assert dict(rules.dropped) == {"duplicate": 1, "nearDuplicate": 1, "shortQuestion": 1, "ungrounded": 1}
    german = "Die Garantie ist ein Versprechen, dass das Produkt zwei Jahre lang funktioniert und nicht kaputt geht."
    assert rules.drop(Pair("Was ist die Garantie genau?", "Die Garantie ist ein Versprechen"), german, 2) == "language"
    assert language(german) == "de" and language(chunk) == "en"


def test_model_replies_are_read_as_pairs() -> None:
    reply = (
        "Here you go.\nQ: How long is the warranty?\nA: Two years.\n\n"
        "2. Question: What is excluded?\nAnswer: Batteries,\nand cables.\nQ: dangling"
    )
    assert parse_reply(reply) == [
        Pair("How long is the warranty?", "Two years."),
        Pair("What is excluded?", "Batteries, and cables."),
    ]
    assert parse_reply("no pairs at all") == []


def test_model_mode_batches_chunks_and_counts_drops(tmp_path: Path, tiny_model: Path) -> None:
    docs = tmp_path / "docs"
    write_documents(docs)
    for name in ("terms.pdf", "service.docx", "policies.html", "records.jsonl", "handbook.md"):
        (docs / name).unlink()
    generation = {
        "mode": "model",
        "model": {"model": {"uri": f"file://{tiny_model}"}, "batchSize": 2, "maxNewTokens": 24, "pairsPerChunk": 2},
    }
    run = DatasetBuildRunSpec.model_validate(
        {
            "attempt": 1,
            "trainerImage": "t",
            "dataset": {
                "documents": {"uri": f"file://{docs}/"},
                "generation": generation,
                "chunking": {"maxTokens": 48, "overlap": 0},
            },
            "outputUri": f"file://{tmp_path}/out/",
        }
    )
    from finetune_trainer.data.chunking import Chunk

    generator = Generator(run, tmp_path / "work", {})
    chunks = [Chunk(i, f"The desk in Lyon answers request {i} within ten days.", "Desk", "line 1") for i in range(5)]
    found = generator.pairs(chunks)
    assert len(found) == 5 and generator.calls == 3  # ceil(5 / batchSize 2) generate calls
    assert generator.unparsed == sum(1 for pairs in found if not pairs)
    # The whole command: the random model's replies hold no Q:/A: pair, so every chunk counts as unparsed and
    # the build fails saying so (exit 2, not retried) instead of publishing an empty dataset.
    spec = {
        "kind": "DatasetBuildRun",
        **run.to_json_dict(),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code = main(["build-dataset", "--spec", str(tmp_path / "spec.json"), "--result", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    chunks = sum(1 for _ in chunk_blocks(_blocks(docs / "notes.txt"), 48, 0))
    assert code == 2 and f"'unparsed': {chunks}" in result["message"], result


class ScriptedReplies(Generator):
    """Model mode with the model's replies scripted (the seam `Generator.replies`): a grounded pair, an
    ungrounded one, and every third chunk a reply with no pair at all."""

    def replies(self, prompts: Sequence[str]) -> list[str]:
        self.calls += 1
        out = []
        for number, prompt in enumerate(prompts):
            passage = prompt.split("Passage:\n", 1)[1].strip()
            first = passage.split(". ")[0].rstrip(".") + "."
            if number % 3 == 2:
                out.append("I cannot think of a question.")
            else:
                grounded = f"Q: What does this passage say first?\nA: {first}"
                out.append(f"{grounded}\nQ: Who wrote it?\nA: Nobody knows anything here.")
        return out


def test_model_mode_filters_and_counts_what_the_model_wrote(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_text(docs / "notes.txt", count=6)
    run = DatasetBuildRunSpec.model_validate(
        {
            "attempt": 1,
            "trainerImage": "t",
            "dataset": {
                "documents": {"uri": f"file://{docs}/"},
                "generation": {"mode": "model", "model": {"model": {"uri": "file:///unused"}}},
                "chunking": {"maxTokens": 64, "overlap": 0},
                "splits": {"test": 0.0, "validation": 0.0},
            },
            "outputUri": f"file://{tmp_path}/out/",
        }
    )
    scripted = ScriptedReplies(run, tmp_path / "work", {})
    found = build_dataset_with(run, tmp_path / "work", scripted)
    chunks = found.chunks
    unparsed = sum(1 for n in range(chunks) if n % 3 == 2)
    assert found.pairs.dropped["unparsed"] == unparsed
    assert found.pairs.generated == 2 * (chunks - unparsed)
    assert found.pairs.dropped["ungrounded"] == chunks - unparsed  # "Nobody knows anything here."
    assert found.pairs.kept == found.pairs.generated - sum(v for k, v in found.pairs.dropped.items() if k != "unparsed")
    assert scripted.calls == 1  # one document's chunks went to the model together
    kept = rows(tmp_path / "out", "train")
    assert all(r["instruction"] == "What does this passage say first?" and r["output"] in r["context"] for r in kept)


def build_dataset_with(run: DatasetBuildRunSpec, workdir: Path, generator: Generator) -> Any:
    from finetune_trainer.recipes.build_dataset import Build
    from finetune_trainer.report import ProgressReporter

    result = Build(run, workdir, {}, ProgressReporter(None), generator=generator).execute()
    assert result.dataset is not None
    return result.dataset


def _blocks(path: Path) -> Any:
    from finetune_trainer.data.documents import read_blocks

    return read_blocks(path, [])


def _peak_rss_mb(tmp_path: Path, document: Path, name: str, filters: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Peak resident memory of the real command (a child process) reading one document."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / document.name).symlink_to(document)
    spec = {
        "kind": "DatasetBuildRun",
        "attempt": 1,
        "trainerImage": "t",
        "dataset": {"documents": {"uri": f"file://{folder}/"}, "filters": filters},
        "outputUri": f"file://{tmp_path}/{name}-out/",
    }
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    script = (
        "import resource, sys; from finetune_trainer.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    args = ["build-dataset", "--spec", str(tmp_path / f"{name}.json"), "--workdir", str(tmp_path / f"{name}-work")]
    args += ["--result", str(tmp_path / f"{name}-result.json")]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    result = json.loads((tmp_path / f"{name}-result.json").read_text())["dataset"]
    return int(done.stdout.strip().splitlines()[-1]) / 1024, result


def test_memory_does_not_follow_the_document_size(tmp_path: Path) -> None:
    """A 40 MB document and a 4 MB one, with the pair-remembering filters off: the same peak memory, so the
    document is streamed. (With dedupe on, memory grows with the pairs kept: the soak test below.)"""
    small = write_large_text(tmp_path / "small.txt", 4)
    large = write_large_text(tmp_path / "large.txt", 40)
    off = {"dedupe": False, "nearDedupe": None}
    small_mb, _ = _peak_rss_mb(tmp_path, small, "small", off)
    large_mb, found = _peak_rss_mb(tmp_path, large, "large", off)
    assert found["documents"]["bytes"] >= 40_000_000 and found["pairs"]["kept"] > 50_000
    assert large_mb - small_mb < 20, f"peak RSS {small_mb:.0f} MB for 4 MB, {large_mb:.0f} MB for 40 MB"


@pytest.mark.soak
def test_a_200_mb_document_within_the_default_memory_limit(tmp_path: Path) -> None:
    """The default filters on a 200 MB document: peak memory stays far below the build pod's 4Gi default."""
    document = write_large_text(tmp_path / "huge.txt", 200)
    peak_mb, found = _peak_rss_mb(tmp_path, document, "huge", {})
    print(f"200 MB document: peak RSS {peak_mb:.0f} MB, {found['pairs']['kept']} pairs kept, {found['chunks']} chunks")
    assert found["documents"]["bytes"] >= 200_000_000
    assert peak_mb < 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < 4096
