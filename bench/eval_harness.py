"""What running lm-evaluation-harness in a process of its own costs: an EvalRun's lmEval benchmark (the
offline harness process: start, imports, model load, task index, scoring) against lm-eval called in
this process on a model already loaded, on the same model, task and documents, in one run.

    python bench/eval_harness.py                      # CPU, a small random Llama, 600 multiple-choice documents
    python bench/eval_harness.py --documents 2400

Both score the same task YAML (hack/tinymodel.py's capitals_mc, its documents repeated) with the same
batch size, tuned model only. The difference is the fixed price of being offline in a fresh process
(docs/architecture.md says why it is paid); the scoring itself is lm-eval's either way.
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
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from finetune_trainer.evaluate.lmeval import HarnessBenchmark, HarnessRequest, run_harness
    from finetune_trainer.model import Device, load_base_model, load_tokenizer
    from tinymodel import (
        capital_choice_rows,
        capital_rows,
        corpus_of,
        make_tiny_model,
        write_jsonl,
        write_lm_eval_tasks,
    )

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model_dir = make_tiny_model(folder / "model", corpus_of(capital_rows()), hidden=args.hidden, layers=args.layers)
        tasks = write_lm_eval_tasks(folder / "tasks")
        rows = capital_choice_rows()
        write_jsonl([rows[i % len(rows)] for i in range(args.documents)], tasks / "data" / "capitals-mc.jsonl")
        benchmark = HarnessBenchmark(name="mc", tasks=["capitals_mc"], include=str(tasks), metrics=["acc"])
        request = HarnessRequest(
            model_dir=str(model_dir), tokenizer_dir=str(model_dir), batch_size=args.batch_size, benchmarks=[benchmark]
        )

        started = time.perf_counter()
        outcome = run_harness(request, folder / "harness")
        process = time.perf_counter() - started

        import contextlib

        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        model = load_base_model(model_dir, None, Device("cpu", "float32"), False).eval()
        lm = HFLM(pretrained=model, tokenizer=load_tokenizer(model_dir, False), batch_size=args.batch_size)
        manager = TaskManager(include_path=str(tasks))
        with contextlib.chdir(tasks):
            loaded = list(manager.load(["capitals_mc"])["tasks"].values())
        started = time.perf_counter()
        result = simple_evaluate(model=lm, tasks=loaded, task_manager=manager, bootstrap_iters=0, log_samples=False)
        in_process = time.perf_counter() - started

    assert result is not None
    same = outcome.benchmarks["mc"].tuned["capitals_mc"]["acc"] == result["results"]["capitals_mc"]["acc,none"]
    figures = {
        "documents": args.documents,
        "harness process s": round(process, 2),
        "lm-eval in process s": round(in_process, 2),
        "fixed cost s": round(process - in_process, 2),
        "x in process": round(process / in_process, 2),
        "same acc": same,
    }
    for name, value in figures.items():
        print(f"{name:>22}: {value}")
    from record import record

    record("eval_harness.py", figures, enabled=not args.no_record)
    print(json.dumps({"args": vars(args), "figures": figures, "threads": torch.get_num_threads()}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
