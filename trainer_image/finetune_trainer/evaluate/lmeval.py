"""lm-evaluation-harness benchmarks: the request to the harness process, and reading its answer.

The harness runs in a process of its own (`python -m finetune_trainer.recipes.harness`) with the
Hugging Face offline variables set, as the issue of running public benchmarks in a closed cluster
asks: those variables are read once, when `huggingface_hub` and `datasets` are imported, so only a
fresh process can be offline for the harness while this one may still have fetched an `hf://` base
model. It runs before this process loads any model, so the pod never holds two copies of the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from finetune_operator.api.common import Quantization

from ..errors import InputError

log = logging.getLogger("finetune_trainer")

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
WORKER = "finetune_trainer.recipes.harness"
SAMPLES_KEPT = 20
"""Per task and model, the scored documents the report keeps (lm-eval logs them all)."""

TaskMetrics = dict[str, dict[str, float]]
"""task -> metric -> value, as one model scored."""


class HarnessBenchmark(BaseModel):
    name: str
    tasks: list[str]
    include: str | None = None
    """The local folder the benchmark's lmEval.include was fetched into."""
    num_fewshot: int | None = None
    limit: int | None = None
    metrics: list[str]


class HarnessRequest(BaseModel):
    model_dir: str
    tokenizer_dir: str
    adapter_dir: str | None = None
    quantization: Quantization | None = None
    trust_remote_code: bool = False
    batch_size: int = 16
    baseline: bool = False
    benchmarks: list[HarnessBenchmark]


class HarnessScores(BaseModel):
    tuned: TaskMetrics
    baseline: TaskMetrics | None = None
    samples: dict[str, list[dict[str, Any]]]
    """task -> the first scored documents: prompt, target, what each model answered, its score."""
    documents: int = 0
    """Documents scored over all tasks (each model)."""


class HarnessOutcome(BaseModel):
    benchmarks: dict[str, HarnessScores] = {}
    error: str | None = None
    """Bad input the harness found (an unknown task, one that needs the Hub, a missing metric)."""


def task_metrics(results: Mapping[str, Any], task: str, wanted: Sequence[str]) -> dict[str, float]:
    """The wanted metrics of one task from lm-eval's `results[task]` (keys `metric,filter`), the
    unfiltered value (`,none`) where there is one, else the task's first filter."""
    row = results.get(task) or {}
    found: dict[str, float] = {}
    for metric in wanted:
        keys = sorted((k for k in row if k.split(",", 1)[0] == metric), key=lambda k: not k.endswith(",none"))
        values = [row[k] for k in keys if isinstance(row[k], int | float) and not isinstance(row[k], bool)]
        if not values:
            reported = sorted({k.split(",", 1)[0] for k in row if "," in k and "_stderr" not in k})
            raise InputError(
                f"lmEval task {task} reports no {metric} (it reports: {', '.join(reported) or 'nothing'}); "
                "list only metrics every task of the benchmark reports"
            )
        found[metric] = float(values[0])
    return found


def benchmark_means(per_task: TaskMetrics, metrics: Sequence[str]) -> dict[str, float]:
    """Each metric's unweighted mean over the benchmark's tasks (lm-eval's own group mean, unweighted)."""
    return {m: math.fsum(t[m] for t in per_task.values()) / len(per_task) for m in metrics}


def hub_message(task: str, dataset_path: str | None, error: BaseException) -> str:
    """Why a task could not load, and what to provide instead."""
    if dataset_path and dataset_path not in LOCAL_BUILDERS:
        return (
            f"lmEval task {task} reads the dataset {dataset_path!r} from the Hugging Face Hub, which the evaluation "
            "pod does not reach (it runs offline); put the data in the store and a task YAML under lmEval.include "
            "that reads it (dataset_path: json, dataset_kwargs.data_files)"
        )
    return f"lmEval task {task} could not load: {type(error).__name__}: {str(error)[:400]}"


LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
"""`datasets` builders that read local files: a task using one brings its data with it."""


def sample_row(sample: Mapping[str, Any]) -> dict[str, Any]:
    """One scored document as the report shows it: the prompt, the target, the model's answer, its scores."""
    arguments = sample.get("arguments") or [[""]]
    first = arguments[0] if isinstance(arguments, list | tuple) and arguments else [""]
    prompt = first[0] if isinstance(first, list | tuple) and first else str(first)
    metrics = sample.get("metrics") or []
    return {
        "input": str(prompt),
        "reference": str(sample.get("target")),
        "prediction": _answer(sample.get("filtered_resps")),
        "scores": {m: sample[m] for m in metrics if isinstance(sample.get(m), int | float)},
    }


def _answer(responses: Any) -> str:
    """A generation's text, or for a multiple-choice task the index of the choice ranked first."""
    if isinstance(responses, list) and responses and all(isinstance(r, list | tuple) for r in responses):
        scores = [float(r[0]) for r in responses]
        return f"choice {scores.index(max(scores))}"
    if isinstance(responses, list) and len(responses) == 1:
        return str(responses[0])
    return str(responses)


def run_harness(request: HarnessRequest, workdir: Path) -> HarnessOutcome:
    """Run the harness process offline; bad input it reports becomes this process's InputError."""
    workdir.mkdir(parents=True, exist_ok=True)
    request_path, outcome_path = workdir / "request.json", workdir / "outcome.json"
    request_path.write_text(request.model_dump_json())
    # The pod's root filesystem is read-only: lm-eval's and datasets' caches go to the work folder.
    caches = {"HF_DATASETS_CACHE": str(workdir / "datasets-cache"), "LM_HARNESS_CACHE_PATH": str(workdir / "cache")}
    env = {**os.environ, **OFFLINE_ENV, **caches}
    command = [sys.executable, "-m", WORKER, str(request_path), str(outcome_path)]
    log.info("running lm-evaluation-harness offline: %s", ", ".join(t for b in request.benchmarks for t in b.tasks))
    done = subprocess.run(command, env=env, check=False)
    if not outcome_path.exists():
        raise RuntimeError(f"the lm-evaluation-harness process exited with {done.returncode} and no outcome")
    outcome = HarnessOutcome.model_validate(json.loads(outcome_path.read_text()))
    if outcome.error is not None:
        raise InputError(outcome.error)
    if done.returncode != 0:
        raise RuntimeError(f"the lm-evaluation-harness process exited with {done.returncode}")
    return outcome
