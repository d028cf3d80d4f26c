"""Dataset build speed: pages/s of reading, chunking and template generation on 10,000 pages, and pairs/s
of model generation batched versus one chunk at a time, in one run.

    python bench/dataset_build.py                      # 10,000 PDF pages + 10,000 text pages; tiny model on CPU
    python bench/dataset_build.py --pages 2000 --model-chunks 32
    python bench/dataset_build.py --model-uri file:///models/Qwen2.5-1.5B-Instruct   # a real model (GPU)

Figures:
- `pdf`: the real command's pipeline (pypdf text extraction, chunking, template pairs, every filter) on a
  PDF of --pages pages written by fpdf2, one section of about 500 characters per page;
- `text`: the same on a text file of --pages pages of 3,000 characters (what a page counts as for text);
- `model`: pairs/s of self-instruct generation over --model-chunks chunks, batched (--batch-size) and one at
  a time, with the same model and prompts. On CPU with a random tiny model the replies are nonsense and pairs/s
  counts replies; the figure that matters is the ratio (the GPU figure needs a GPU machine and a real model).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image"), str(REPO / "hack")]


def build_seconds(documents: Path, out: Path, workdir: Path, **dataset: object) -> tuple[float, dict[str, object]]:
    from finetune_operator.api.contract import DatasetBuildRunSpec
    from finetune_trainer.recipes.build_dataset import build_dataset
    from finetune_trainer.report import ProgressReporter

    run = DatasetBuildRunSpec.model_validate(
        {
            "attempt": 1,
            "trainerImage": "bench",
            "dataset": {"documents": {"uri": f"file://{documents}/"}, **dataset},
            "outputUri": f"file://{out}/",
        }
    )
    started = time.perf_counter()
    result = build_dataset(run, workdir, {}, ProgressReporter(None))
    seconds = time.perf_counter() - started
    assert result.dataset is not None
    return seconds, result.dataset.to_json_dict()


def model_pairs_per_second(uri: str, chunks: int, batch_size: int, new_tokens: int) -> dict[str, float]:
    from finetune_operator.api.contract import DatasetBuildRunSpec
    from finetune_trainer.data.chunking import Chunk
    from finetune_trainer.recipes.build_dataset import Generator

    figures: dict[str, float] = {}
    passages = [
        Chunk(i, f"A returns request is a written message that asks the desk in Lyon to act within {i} days.", "", "")
        for i in range(chunks)
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, size in (("one at a time", 1), (f"batched ({batch_size})", batch_size)):
            generation = {
                "mode": "model",
                "model": {"model": {"uri": uri}, "batchSize": size, "maxNewTokens": new_tokens},
            }
            run = DatasetBuildRunSpec.model_validate(
                {
                    "attempt": 1,
                    "trainerImage": "bench",
                    "dataset": {"documents": {"uri": "file:///unused/"}, "generation": generation},
                    "outputUri": "file:///unused/",
                }
            )
            generator = Generator(run, Path(folder) / name.split()[0], {})
            generator.pairs(passages[:2])  # load and warm up
            generator.model.generation_config.min_new_tokens = new_tokens  # a random model must not stop early
            started = time.perf_counter()
            found = generator.pairs(passages)
            seconds = time.perf_counter() - started
            replies = len(found)
            figures[name] = round(replies / seconds, 2)
            print(f"model {name:>14}: {seconds:7.2f} s for {replies} chunks: {figures[name]:8.2f} replies/s")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=10_000)
    parser.add_argument("--model-uri", help="a model folder URI (default: a tiny random Llama made here)")
    parser.add_argument("--model-chunks", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from documents import write_large_text, write_pdf

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "pdf").mkdir()
        started = time.perf_counter()
        write_pdf(root / "pdf" / "book.pdf", pages=args.pages)
        print(f"wrote a {args.pages}-page PDF in {time.perf_counter() - started:.1f} s")
        (root / "text").mkdir()
        write_large_text(root / "text" / "book.txt", megabytes=max(1, args.pages * 3000 // 1_000_000))
        for name in ("pdf", "text"):
            seconds, found = build_seconds(root / name, root / f"{name}-out", root / f"{name}-work")
            pages = found["documents"]["pages"]  # type: ignore[index]
            figures[name] = {
                "pages": pages,
                "seconds": round(seconds, 2),
                "pages_per_s": round(pages / seconds, 1),
                "chunks": found["chunks"],
                "pairs_kept": found["pairs"]["kept"],  # type: ignore[index]
            }
            print(
                f"{name:>5}: {pages} pages in {seconds:.1f} s = {pages / seconds:.1f} pages/s, "
                f"pairs {json.dumps(found['pairs'])}"
            )
        uri = args.model_uri
        if uri is None:
            from tinymodel import corpus_of, make_tiny_model, support_rows

            uri = f"file://{make_tiny_model(root / 'model', corpus_of(support_rows()))}"
        model = model_pairs_per_second(uri, args.model_chunks, args.batch_size, args.new_tokens)
    one, batched = model.values()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model batched / one at a time: {batched / one:.2f}x on {device}")
    from record import record

    record(
        "dataset_build.py",
        {
            "PDF pages/s": figures["pdf"]["pages_per_s"],  # type: ignore[index]
            "text pages/s": figures["text"]["pages_per_s"],  # type: ignore[index]
            "pages": args.pages,
            f"model replies/s, one ({device})": one,
            f"batched ({args.batch_size})": batched,
            "x one at a time": round(batched / one, 2),
        },
        enabled=not args.no_record,
    )
    print(json.dumps({"args": vars(args), "figures": figures, "model": model, "device": device}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
