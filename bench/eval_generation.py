"""Eval throughput: batched, left-padded generation (what `finetune-trainer eval` does) vs one prompt at a
time, on the same model and prompts, in one run.

    python bench/eval_generation.py                   # CPU, a small random Llama, 64 prompts, batch 32
    python bench/eval_generation.py --batch-size 16 --prompts 128

Both variants call the trainer's own `generate()`; only the batch size differs. Every answer is forced
to exactly --new-tokens tokens (min_new_tokens), so a random model stopping early cannot flatter
either side. Prints prompts/s and generated tokens/s per variant and the ratio.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_operator.api.evaluation import GenerationSettings
    from finetune_trainer.evaluate.generate import Prompter, generate
    from tinymodel import capital_rows, corpus_of, make_tiny_model, support_rows

    torch.manual_seed(0)
    rows = support_rows(args.prompts)
    questions = [row["instruction"] for row in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = make_tiny_model(
            Path(folder) / "model",
            corpus_of(rows) + corpus_of(capital_rows()),
            hidden=args.hidden,
            layers=args.layers,
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.min_new_tokens = args.new_tokens
    settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    prompter = Prompter(tokenizer, chat_template=True)
    generate(model, prompter, questions[:4], settings, batch_size=4)  # warm-up
    figures = {}
    for name, size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        started = time.perf_counter()
        generate(model, prompter, questions, settings, batch_size=size)
        seconds = time.perf_counter() - started
        figures[name] = {
            "seconds": round(seconds, 3),
            "prompts_per_s": round(len(questions) / seconds, 2),
            "tokens_per_s": round(len(questions) * args.new_tokens / seconds, 1),
        }
        print(
            f"{name:>16}: {seconds:7.2f} s  {figures[name]['prompts_per_s']:8.2f} prompts/s  "
            f"{figures[name]['tokens_per_s']:9.1f} generated tokens/s"
        )
    first, second = figures.values()
    ratio = second["prompts_per_s"] / first["prompts_per_s"]
    print(f"batched / one at a time: {ratio:.2f}x")
    from record import record

    record(
        "eval_generation.py",
        {
            "one at a time prompts/s": first["prompts_per_s"],
            f"batched ({args.batch_size}) prompts/s": second["prompts_per_s"],
            "x one at a time": round(ratio, 2),
            "target": ">= 5x",
        },
        enabled=not args.no_record,
    )
    print(
        json.dumps(
            {"args": vars(args), "figures": figures, "ratio": round(ratio, 2), "threads": torch.get_num_threads()}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
