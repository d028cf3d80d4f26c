"""The lm-evaluation-harness process: `python -m finetune_trainer.recipes.harness REQUEST OUTCOME`.

Started by the evaluation recipe with the Hugging Face offline variables set (evaluate/lmeval.py says
why a process of its own). It loads the base model as every benchmark does (same quantization and
dtype), with the adapter through PEFT, and hands that one model to lm-eval's `HFLM`; the baseline is
the same weights under `disable_adapter()`. Each task is loaded once, by name, so a task that cannot
load is named, and both passes score the same documents.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..evaluate.lmeval import (
    SAMPLES_KEPT,
    HarnessBenchmark,
    HarnessOutcome,
    HarnessRequest,
    HarnessScores,
    TaskMetrics,
    hub_message,
    sample_row,
    task_metrics,
)
from ..model import device_for, load_base_model, load_tokenizer

log = logging.getLogger("finetune_trainer")


def load_model(request: HarnessRequest) -> tuple[Any, Any]:
    device = device_for(request.quantization)
    tokenizer = load_tokenizer(Path(request.tokenizer_dir), request.trust_remote_code)
    model = load_base_model(Path(request.model_dir), request.quantization, device, request.trust_remote_code)
    if request.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, request.adapter_dir)
    return model.eval(), tokenizer


def _dataset_path(manager: Any, name: str) -> str | None:
    """The `dataset_path` of a task's YAML, read without building the task (for the error message)."""
    entry = manager.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if not path:
        return None
    with contextlib.suppress(Exception):
        config = yaml.load(Path(path).read_text(), Loader=_LenientLoader)
        return str(config.get("dataset_path")) if isinstance(config, dict) and config.get("dataset_path") else None
    return None


class _LenientLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs, whose `!function` tags name Python code, as plain data."""


_LenientLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_manager(benchmark: HarnessBenchmark) -> Any:
    """The include folder's tasks alone when they are all the benchmark names: indexing the ~15,000 task
    YAMLs lm-eval ships takes seconds (docs/benchmarks.md, "lm-evaluation-harness process")."""
    from lm_eval.tasks import TaskManager

    if benchmark.include is not None:
        own = TaskManager(include_path=benchmark.include, include_defaults=False)
        if all(name in own.task_index for name in benchmark.tasks):
            return own
    return TaskManager(include_path=benchmark.include)


def load_tasks(manager: Any, benchmark: HarnessBenchmark) -> list[Any]:
    """Every leaf task the benchmark names (a group brings its members), each loaded once."""
    tasks: list[Any] = []
    for name in benchmark.tasks:
        if name not in manager.task_index:
            raise InputError(
                f"benchmark {benchmark.name}: lmEval.tasks names {name!r}, which is neither a task shipped with "
                "lm-eval nor one defined by a YAML file under lmEval.include"
            )
        try:
            with contextlib.chdir(benchmark.include or "."):
                loaded = manager.load([name])
        except Exception as error:  # lm-eval and datasets raise many types; each becomes a named message
            message = hub_message(name, _dataset_path(manager, name), error)
            raise InputError(f"benchmark {benchmark.name}: {message}") from error
        tasks.extend(loaded["tasks"].values())
    return tasks


def _score(
    lm: Any, manager: Any, tasks: list[Any], benchmark: HarnessBenchmark
) -> tuple[TaskMetrics, dict[str, list[Any]], int]:
    from lm_eval import simple_evaluate

    result = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,  # without it, each call indexes every task lm-eval ships again (~9 s)
        num_fewshot=benchmark.num_fewshot,
        limit=benchmark.limit,
        log_samples=True,
        bootstrap_iters=0,
    )
    assert result is not None  # None only on ranks other than 0; this process is the only one
    names = [t.task_name for t in tasks]
    metrics = {name: task_metrics(result["results"], name, benchmark.metrics) for name in names}
    samples = {name: list(result["samples"].get(name, []))[:SAMPLES_KEPT] for name in names}
    documents = sum(len(result["samples"].get(name, [])) for name in names)
    return metrics, samples, documents


def evaluate(request: HarnessRequest) -> HarnessOutcome:
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_model(request)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=request.batch_size)
    outcome = HarnessOutcome()
    for benchmark in request.benchmarks:
        manager = task_manager(benchmark)
        tasks = load_tasks(manager, benchmark)
        log.info("benchmark %s: lm-eval tasks %s (tuned)", benchmark.name, [t.task_name for t in tasks])
        tuned, tuned_samples, documents = _score(lm, manager, tasks, benchmark)
        baseline, baseline_samples = None, {}
        if request.baseline:
            log.info("benchmark %s: lm-eval tasks (baseline)", benchmark.name)
            with model.disable_adapter():
                baseline, baseline_samples, _ = _score(lm, manager, tasks, benchmark)
        samples = {
            task: [
                {**sample_row(s), "baselinePrediction": sample_row(b)["prediction"] if b else None}
                for s, b in zip(rows, baseline_samples.get(task) or [None] * len(rows), strict=False)
            ]
            for task, rows in tuned_samples.items()
        }
        outcome.benchmarks[benchmark.name] = HarnessScores(
            tuned=tuned, baseline=baseline, samples=samples, documents=documents
        )
    return outcome


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    request_path, outcome_path = Path(argv[0]), Path(argv[1])
    request = HarnessRequest.model_validate_json(request_path.read_text())
    try:
        outcome = evaluate(request)
    except InputError as error:
        outcome = HarnessOutcome(error=str(error))
        outcome_path.write_text(outcome.model_dump_json())
        return error.exit_code
    outcome_path.write_text(outcome.model_dump_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
