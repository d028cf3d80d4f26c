"""`finetune-trainer eval`: score an adapter (and its base model as baseline) on benchmarks, publish a report.

    recipe = EvaluationRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # fetch -> tokenizer -> model (+ adapter) -> benchmarks (tuned, baseline) -> report

The baseline is the same loaded model with the adapter switched off (peft's `disable_adapter`), so
both passes share weights, quantization and prompts, and differ only by the adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import EvaluationOutcome, EvaluationRunSpec, TrainerResult
from finetune_operator.api.evalrun import Report
from finetune_operator.api.evaluation import Benchmark, MetricResult, judge, summarize

from ..data.load import read_rows
from ..errors import InputError
from ..report import ProgressReporter
from ..storage import Store, fetch, fetch_verified, publish, read_manifest, store_for
from ..train import load_base_model, pick_device
from .generate import Prompter, generate, negative_log_likelihood
from .metrics import perplexity, score_generations
from .reports import build_document, write_reports

log = logging.getLogger("finetune_trainer")


@dataclass(frozen=True)
class Rows:
    """One benchmark's inputs, read from its dataset."""

    inputs: list[str]
    references: list[str]
    sources: list[str] | None


def read_benchmark(path: Path, benchmark: Benchmark) -> Rows:
    """Questions/answers (or texts) of a benchmark; a missing column is bad input that names the row."""
    data = benchmark.dataset
    wanted = [data.text_column] if benchmark.task == "perplexity" else [data.question_column, data.answer_column]
    if data.context_column:
        wanted.append(data.context_column)
    columns: dict[str, list[str]] = {name: [] for name in wanted}
    for count, row in enumerate(read_rows(path)):
        if benchmark.max_samples is not None and count >= benchmark.max_samples:
            break
        for name in wanted:
            value = row.data.get(name)
            if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
                raise InputError(
                    f"benchmark {benchmark.name}: {row.where()}: column {name!r} is missing or not text "
                    f"(set dataset.{'textColumn' if name == data.text_column else 'questionColumn/answerColumn'})"
                )
            columns[name].append(str(value))
    first = columns[wanted[0]]
    if not first:
        raise InputError(f"benchmark {benchmark.name}: {benchmark.dataset.uri} has no rows")
    if benchmark.task == "perplexity":
        return Rows(inputs=first, references=[], sources=None)
    sources = columns[data.context_column] if data.context_column else None
    # A source passage goes into the prompt the way the trainer renders alpaca `input`.
    inputs = [f"{q}\n\n{s}" for q, s in zip(first, sources, strict=True)] if sources else first
    return Rows(inputs=inputs, references=columns[data.answer_column], sources=sources)


class EvaluationRecipe:
    def __init__(
        self, run: EvaluationRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
    ) -> None:
        import torch

        self.run_spec = run
        self.spec = run.evaluation
        self.workdir = workdir
        self.environ = environ
        self.reporter = reporter
        quantization = run.model.quantization
        cuda = torch.cuda.is_available()
        self.device = pick_device(
            quantization.compute_dtype if quantization else "auto", cuda, cuda and torch.cuda.is_bf16_supported()
        )
        self.stores: dict[str, Store] = {}
        self.done = 0
        self.total = 0
        self.started = time.monotonic()

    def _store(self, role: str, uri: str) -> Store:
        if role not in self.stores:
            self.stores[role] = store_for(uri, role, self.run_spec.storage, self.environ)
        return self.stores[role]

    def _progress(self, message: str, benchmark: str | None = None, model: str | None = None) -> None:
        log.info("%s", message)
        elapsed = time.monotonic() - self.started
        fields: dict[str, Any] = {"message": message[:1024], "samplesDone": self.done, "samplesTotal": self.total}
        if self.total:
            fields["percent"] = min(100, int(100 * self.done / self.total))
        if benchmark:
            fields["benchmark"] = benchmark
        if model:
            fields["model"] = model
        if self.done and elapsed > 0:
            fields["samplesPerSecond"] = round(self.done / elapsed, 3)
        self.reporter.report(fields)

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> TrainerResult:
        self._progress("fetching the model, adapter and benchmarks")
        self._fetch_inputs()
        self._setup_model()
        results, samples = self._score_all()
        return self._publish(results, samples)

    def _fetch_inputs(self) -> None:
        model = self.run_spec.model
        self.model_dir = self.workdir / "base-model"
        base_store = self._store("BASE_MODEL", model.base_model.uri)
        if read_manifest(base_store, model.base_model.uri) is not None:
            fetch_verified(base_store, model.base_model.uri, self.model_dir)
        else:
            fetch(base_store, model.base_model.uri, self.model_dir)
        if not (self.model_dir / "config.json").exists():
            raise InputError(f"{model.base_model.uri}: not a Hugging Face model folder (no config.json)")
        self.adapter_dir: Path | None = None
        if model.adapter is not None:
            self.adapter_dir = self.workdir / "adapter"
            fetch_verified(self._store("ADAPTER", model.adapter.uri), model.adapter.uri, self.adapter_dir)
        self.benchmark_dirs = []
        for index, benchmark in enumerate(self.spec.benchmarks):
            folder = self.workdir / "benchmarks" / benchmark.name
            fetch(self._store(f"BENCHMARK_{index}", benchmark.dataset.uri), benchmark.dataset.uri, folder)
            self.benchmark_dirs.append(folder)
        self.rows = [read_benchmark(path, b) for path, b in zip(self.benchmark_dirs, self.spec.benchmarks, strict=True)]
        passes = 2 if self.with_baseline else 1
        self.total = passes * sum(len(r.inputs) for r in self.rows)

    @property
    def with_baseline(self) -> bool:
        return self.spec.baseline and self.run_spec.model.adapter is not None

    def _setup_model(self) -> None:
        from transformers import AutoTokenizer

        self._progress("loading the model")
        model = self.run_spec.model
        # The adapter folder carries the tokenizer (and chat template) the model was trained with.
        source = (
            self.adapter_dir if self.adapter_dir and (self.adapter_dir / "tokenizer_config.json").exists() else None
        )
        self.tokenizer = AutoTokenizer.from_pretrained(
            source or self.model_dir, trust_remote_code=model.base_model.trust_remote_code
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = load_base_model(self.model_dir, model.quantization, self.device, model.base_model.trust_remote_code)
        if self.adapter_dir is not None:
            from peft import PeftModel

            base = PeftModel.from_pretrained(base, self.adapter_dir)
        self.model = base.eval()

    # --- scoring -------------------------------------------------------------------------------

    def _score(self, benchmark: Benchmark, rows: Rows, label: str) -> tuple[dict[str, float], list[str]]:
        def advance(count: int) -> None:
            self.done += count
            self._progress(f"scoring {benchmark.name} ({label})", benchmark.name, label)

        if benchmark.task == "perplexity":
            nll, tokens = negative_log_likelihood(
                self.model, self.tokenizer, rows.inputs, self.spec.generation.batch_size, advance
            )
            return {"perplexity": perplexity(nll, tokens)}, []
        prompter = Prompter(self.tokenizer, benchmark.chat_template)
        predictions = generate(self.model, prompter, rows.inputs, self.spec.generation, on_batch=advance)
        totals, _ = score_generations(benchmark.metrics, predictions, rows.references, rows.sources)
        return totals, predictions

    def _score_all(self) -> tuple[list[MetricResult], dict[str, list[dict[str, Any]]]]:
        results: list[MetricResult] = []
        samples: dict[str, list[dict[str, Any]]] = {}
        for benchmark, rows in zip(self.spec.benchmarks, self.rows, strict=True):
            tuned, predictions = self._score(benchmark, rows, "tuned")
            baseline: dict[str, float] = {}
            baseline_predictions: list[str] = []
            if self.with_baseline:
                with self.model.disable_adapter():
                    baseline, baseline_predictions = self._score(benchmark, rows, "baseline")
            for metric in benchmark.metrics:
                value, before = tuned[metric], baseline.get(metric)
                results.append(
                    MetricResult(
                        benchmark=benchmark.name,
                        metric=metric,
                        value=round(value, 6),
                        baseline=round(before, 6) if before is not None else None,
                        delta=round(value - before, 6) if before is not None else None,
                    )
                )
            samples[benchmark.name] = [
                {
                    "input": text,
                    "reference": rows.references[i] if rows.references else None,
                    "prediction": predictions[i] if predictions else None,
                    "baselinePrediction": baseline_predictions[i] if baseline_predictions else None,
                }
                for i, text in enumerate(rows.inputs)
            ]
            log.info("benchmark %s: %s", benchmark.name, [r.to_json_dict() for r in results[-len(benchmark.metrics) :]])
        return results, samples

    def _publish(self, results: list[MetricResult], samples: dict[str, list[dict[str, Any]]]) -> TrainerResult:
        self._progress("publishing the report")
        summary = summarize(results)
        thresholds = {str(k): v for k, v in self.spec.thresholds.items()}
        missed = judge(summary, thresholds)
        model = self.run_spec.model
        resource = self.run_spec.resource
        document = build_document(
            title=f"{resource.namespace}/{resource.name}" if resource else "evaluation",
            model={"baseModel": model.base_model.uri, "adapter": model.adapter.uri if model.adapter else None},
            results=results,
            summary=summary,
            thresholds=thresholds,
            missed=missed,
            samples=samples,
        )
        local = self.workdir / "report"
        write_reports(document, local)
        uri = self.run_spec.report_uri
        publish(self._store("OUTPUT", uri), local, uri, {"kind": "evaluation-report"})
        self.reporter.report(
            {"percent": 100, "samplesDone": self.total, "samplesTotal": self.total, "message": "report published"},
            force=True,
        )
        return TrainerResult(
            result="succeeded",
            evaluation=EvaluationOutcome(
                summary=summary,
                results=results,
                report=Report(uri=uri.rstrip("/") + "/"),
                samples=sum(len(r.inputs) for r in self.rows),
            ),
        )
