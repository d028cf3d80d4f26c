"""`finetune-trainer eval`: score an adapter (and its base model as baseline) on benchmarks, publish a report.

    recipe = EvaluationRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # setup (inputs, tokenizer, model + adapter) -> score (tuned, baseline) -> publish

The baseline is the same loaded model with the adapter switched off (peft's `disable_adapter`), so
both passes share weights, quantization and prompts, and differ only by the adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import EvaluationOutcome, EvaluationRunSpec, TrainerResult, benchmark_role
from finetune_operator.api.evalrun import Report
from finetune_operator.api.evaluation import Benchmark, MetricResult, judge, summarize

from ..evaluate.benchmarks import Rows, read_benchmark
from ..evaluate.generate import Prompter, answer_log_probs, generate, negative_log_likelihood
from ..evaluate.metrics import perplexity, preference_accuracy, preferred, score_generations
from ..evaluate.reports import build_document, write_reports
from ..inputs import Stores, fetch_model
from ..model import device_for, load_base_model, load_tokenizer
from ..report import ProgressReporter
from ..storage import fetch, fetch_verified, publish

log = logging.getLogger("finetune_trainer")


class EvaluationRecipe:
    def __init__(
        self, run: EvaluationRunSpec, workdir: Path, environ: Mapping[str, str], reporter: ProgressReporter
    ) -> None:
        self.run_spec = run
        self.spec = run.evaluation
        self.workdir = workdir
        self.reporter = reporter
        self.device = device_for(run.model.quantization)
        self.stores = Stores(run.storage, environ)
        self.with_baseline = self.spec.baseline and run.model.adapter is not None
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self.model_dir = workdir / "base-model"
        self.adapter_dir: Path | None = None
        self.rows: list[Rows] = []
        self.tokenizer: Any = None
        self.model: Any = None

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
        self.setup()
        results, samples = self.score()
        return self.publish(results, samples)

    def setup(self) -> None:
        self.setup_inputs()
        self.setup_model()

    def setup_inputs(self) -> None:
        """Fetch the base model, the adapter and every benchmark's data, and read the benchmarks."""
        self._progress("fetching the model, adapter and benchmarks")
        model = self.run_spec.model
        fetch_model(self.stores("BASE_MODEL", model.base_model.uri), model.base_model.uri, self.model_dir)
        if model.adapter is not None:
            self.adapter_dir = self.workdir / "adapter"
            fetch_verified(self.stores("ADAPTER", model.adapter.uri), model.adapter.uri, self.adapter_dir)
        folders = []
        for index, benchmark in enumerate(self.spec.benchmarks):
            folder = self.workdir / "benchmarks" / benchmark.name
            fetch(self.stores(benchmark_role(index), benchmark.dataset.uri), benchmark.dataset.uri, folder)
            folders.append(folder)
        self.rows = [read_benchmark(path, b) for path, b in zip(folders, self.spec.benchmarks, strict=True)]
        passes = 2 if self.with_baseline else 1
        self.total = passes * sum(len(r.inputs) for r in self.rows)

    def setup_model(self) -> None:
        self._progress("loading the model")
        model = self.run_spec.model
        # The adapter folder carries the tokenizer (and chat template) the model was trained with.
        source = (
            self.adapter_dir if self.adapter_dir and (self.adapter_dir / "tokenizer_config.json").exists() else None
        )
        self.tokenizer = load_tokenizer(source or self.model_dir, model.base_model.trust_remote_code)
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
        if benchmark.task == "preference":
            return self._preference(prompter, rows, advance)
        predictions = generate(self.model, prompter, rows.inputs, self.spec.generation, on_batch=advance)
        totals, _ = score_generations(benchmark.metrics, predictions, rows.references, rows.sources)
        return totals, predictions

    def _preference(
        self, prompter: Prompter, rows: Rows, advance: Callable[[int], None]
    ) -> tuple[dict[str, float], list[str]]:
        """Both preference accuracies, and which side the model preferred per pair (the report's samples)."""
        assert rows.rejected is not None
        size = self.spec.generation.batch_size
        chosen = answer_log_probs(self.model, prompter, rows.inputs, rows.references, batch_size=size)
        rejected = answer_log_probs(self.model, prompter, rows.inputs, rows.rejected, batch_size=size)
        advance(len(rows.inputs))
        sides = [
            "chosen" if preferred(c, r, normalised=True) >= 0.5 else "rejected"
            for c, r in zip(chosen, rejected, strict=True)
        ]
        totals = {
            "preference_accuracy": preference_accuracy(chosen, rejected, normalised=True),
            "preference_accuracy_raw": preference_accuracy(chosen, rejected, normalised=False),
        }
        return totals, sides

    def score(self) -> tuple[list[MetricResult], dict[str, list[dict[str, Any]]]]:
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

    def publish(self, results: list[MetricResult], samples: dict[str, list[dict[str, Any]]]) -> TrainerResult:
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
        publish(self.stores("OUTPUT", uri), local, uri, {"kind": "evaluation-report"})
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
