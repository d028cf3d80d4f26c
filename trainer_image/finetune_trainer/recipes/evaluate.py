"""`finetune-trainer eval`: score an adapter (and its base model as baseline) on benchmarks, publish a report.

    recipe = EvaluationRecipe(run, workdir, environ, reporter)
    result = recipe.run()   # setup (inputs, tokenizer, model + adapter) -> score (tuned, baseline) -> publish

The baseline is the same loaded model with the adapter switched off (peft's `disable_adapter`), so
both passes share weights, quantization and prompts, and differ only by the adapter. lm-evaluation-harness
benchmarks run first, in a process of their own (evaluate/lmeval.py), before this one loads the model;
a judge model is loaded once the answers it grades are written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import (
    EvaluationOutcome,
    EvaluationRunSpec,
    TrainerResult,
    benchmark_role,
    judge_role,
    secret_env_name,
)
from finetune_operator.api.evalrun import Report
from finetune_operator.api.evaluation import Benchmark, MetricResult, judge, summarize

from ..errors import InputError
from ..evaluate.benchmarks import Rows, read_benchmark
from ..evaluate.generate import Prompter, answer_log_probs, generate, negative_log_likelihood
from ..evaluate.judge import EndpointJudge, Grading, Judge, ModelJudge, grade_pairwise, grade_single
from ..evaluate.lmeval import HarnessBenchmark, HarnessOutcome, HarnessRequest, benchmark_means, run_harness
from ..evaluate.metrics import perplexity, preference_accuracy, preferred, score_generations
from ..evaluate.reports import build_document, write_reports
from ..inputs import Stores, fetch_model
from ..model import device_for, load_base_model, load_tokenizer
from ..report import ProgressReporter
from ..storage import fetch, fetch_verified, publish

log = logging.getLogger("finetune_trainer")

Pass = tuple[dict[str, float], list[str]]
"""One model's pass over a benchmark: its metrics, and its answers (or preferred sides) per example."""


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
        self.environ = environ
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self.model_dir = workdir / "base-model"
        self.adapter_dir: Path | None = None
        self.folders: list[Path | None] = []
        self.judge_dirs: dict[str, Path] = {}
        self.rows: list[Rows | None] = []
        self.harness = HarnessOutcome()
        self.details: dict[str, dict[str, Any]] = {}
        """Per benchmark, what its metrics alone do not show: lm-eval's per-task scores, a judge's counts."""
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
        self.check_benchmarks()
        self.setup_inputs()
        self.run_harness()
        if any(b.task != "lmEval" for b in self.spec.benchmarks):
            self.setup_model()

    def check_benchmarks(self) -> None:
        """What admission cannot know: whether the model resolved to one with an adapter."""
        for benchmark in self.spec.benchmarks:
            if benchmark.judge is not None and benchmark.judge.mode == "pairwise" and not self.with_baseline:
                raise InputError(
                    f"benchmark {benchmark.name}: a pairwise judge compares the tuned and the baseline answers, "
                    "but this run evaluates a base model with no adapter (use judge.mode: single)"
                )

    def setup_inputs(self) -> None:
        """Fetch the base model, the adapter, every benchmark's data and judge model, and read the benchmarks."""
        self._progress("fetching the model, adapter and benchmarks")
        model = self.run_spec.model
        fetch_model(self.stores("BASE_MODEL", model.base_model.uri), model.base_model.uri, self.model_dir)
        if model.adapter is not None:
            self.adapter_dir = self.workdir / "adapter"
            fetch_verified(self.stores("ADAPTER", model.adapter.uri), model.adapter.uri, self.adapter_dir)
        for index, benchmark in enumerate(self.spec.benchmarks):
            folder = None
            if (source := benchmark.source()) is not None:
                folder = self.workdir / "benchmarks" / benchmark.name
                fetch(self.stores(benchmark_role(index), source[0]), source[0], folder)
            self.folders.append(folder)
            if benchmark.judge is not None and benchmark.judge.model is not None:
                uri = benchmark.judge.model.uri
                self.judge_dirs[benchmark.name] = self.workdir / "judges" / benchmark.name
                fetch_model(self.stores(judge_role(index), uri), uri, self.judge_dirs[benchmark.name])
        self.rows = [
            read_benchmark(path, b) if path is not None and b.task != "lmEval" else None
            for path, b in zip(self.folders, self.spec.benchmarks, strict=True)
        ]
        passes = 2 if self.with_baseline else 1
        self.total = passes * sum(len(r.inputs) for r in self.rows if r is not None)

    def _tokenizer_dir(self) -> Path:
        """The adapter folder carries the tokenizer (and chat template) the model was trained with."""
        if self.adapter_dir and (self.adapter_dir / "tokenizer_config.json").exists():
            return self.adapter_dir
        return self.model_dir

    def run_harness(self) -> None:
        """Every lmEval benchmark, in one offline harness process, before this process loads a model."""
        wanted = [
            HarnessBenchmark(
                name=b.name,
                tasks=b.lm_eval.tasks,
                include=str(folder) if folder is not None else None,
                num_fewshot=b.lm_eval.num_few_shot,
                limit=b.lm_eval.limit,
                metrics=list(b.metrics),
            )
            for b, folder in zip(self.spec.benchmarks, self.folders, strict=True)
            if b.lm_eval is not None
        ]
        if not wanted:
            return
        self._progress(f"running lm-evaluation-harness: {', '.join(b.name for b in wanted)}")
        model = self.run_spec.model
        request = HarnessRequest(
            model_dir=str(self.model_dir),
            tokenizer_dir=str(self._tokenizer_dir()),
            adapter_dir=str(self.adapter_dir) if self.adapter_dir else None,
            quantization=model.quantization,
            trust_remote_code=model.base_model.trust_remote_code,
            batch_size=self.spec.generation.batch_size,
            baseline=self.with_baseline,
            benchmarks=wanted,
        )
        self.harness = run_harness(request, self.workdir / "harness")

    def setup_model(self) -> None:
        self._progress("loading the model")
        model = self.run_spec.model
        self.tokenizer = load_tokenizer(self._tokenizer_dir(), model.base_model.trust_remote_code)
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
        if benchmark.task == "judge":  # the judge scores them (_grade)
            return {}, predictions
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

    def _passes(self, benchmark: Benchmark, rows: Rows) -> tuple[Pass, Pass]:
        """The tuned model's scores and answers, and the baseline's (empty without one)."""
        tuned = self._score(benchmark, rows, "tuned")
        if not self.with_baseline:
            return tuned, ({}, [])
        with self.model.disable_adapter():
            return tuned, self._score(benchmark, rows, "baseline")

    def _judge(self, benchmark: Benchmark, index: int) -> Judge:
        settings = benchmark.judge
        assert settings is not None
        field = f"benchmarks[{index}].judge"
        if settings.endpoint is not None:
            key = self.environ.get(secret_env_name(judge_role(index), "OPENAI_API_KEY"))
            return EndpointJudge(settings.endpoint, key, settings.max_new_tokens, f"{field}.endpoint")
        assert settings.model is not None
        self._progress(f"loading the judge of {benchmark.name}", benchmark.name)
        folder, trust = self.judge_dirs[benchmark.name], settings.model.trust_remote_code
        model = load_base_model(folder, None, self.device, trust).eval()
        return ModelJudge(model, load_tokenizer(folder, trust), settings, self.spec.generation.batch_size)

    def _grade(self, benchmark: Benchmark, index: int, rows: Rows) -> tuple[Grading, list[str], list[str]]:
        """Answers from the model under test, then the judge's verdicts on them."""
        settings = benchmark.judge
        assert settings is not None
        (_, tuned), (_, baseline) = self._passes(benchmark, rows)
        judge_ = self._judge(benchmark, index)
        self._progress(f"judging {benchmark.name}", benchmark.name)
        references = rows.references or [None] * len(rows.inputs)
        if settings.mode == "pairwise":
            grading = grade_pairwise(
                judge_, settings, rows.inputs, tuned=tuned, baseline=baseline, references=references
            )
        else:
            answers = {"tuned": tuned, "baseline": baseline} if baseline else {"tuned": tuned}
            grading = grade_single(judge_, settings, rows.inputs, answers=answers, references=references)
        return grading, tuned, baseline

    def _benchmark(
        self, benchmark: Benchmark, index: int, rows: Rows | None
    ) -> tuple[dict[str, float], dict[str, float], list[dict[str, Any]]]:
        """(tuned metrics, baseline metrics, report samples) of one benchmark, whatever its task."""
        if benchmark.task == "lmEval":
            scores = self.harness.benchmarks[benchmark.name]
            baseline = benchmark_means(scores.baseline, benchmark.metrics) if scores.baseline else {}
            samples = [
                {**s, "input": f"[{task}] {s['input']}"} for task, rows_ in scores.samples.items() for s in rows_
            ]
            self.details[benchmark.name] = {"tasks": {"tuned": scores.tuned, "baseline": scores.baseline}}
            return benchmark_means(scores.tuned, benchmark.metrics), baseline, samples
        assert rows is not None
        if benchmark.task == "judge":
            grading, tuned, base = self._grade(benchmark, index, rows)
            self.details[benchmark.name] = {"judge": {"counts": grading.counts}}
            samples = self._samples(rows, tuned, base)
            for sample, verdicts in zip(samples, grading.verdicts, strict=True):
                sample["verdicts"] = verdicts
            return grading.tuned, grading.baseline, samples
        (tuned_scores, predictions), (baseline_scores, baseline_predictions) = self._passes(benchmark, rows)
        return tuned_scores, baseline_scores, self._samples(rows, predictions, baseline_predictions)

    @staticmethod
    def _samples(rows: Rows, predictions: list[str], baseline: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "input": text,
                "reference": rows.references[i] if rows.references else None,
                "prediction": predictions[i] if predictions else None,
                "baselinePrediction": baseline[i] if baseline else None,
            }
            for i, text in enumerate(rows.inputs)
        ]

    def score(self) -> tuple[list[MetricResult], dict[str, list[dict[str, Any]]]]:
        results: list[MetricResult] = []
        samples: dict[str, list[dict[str, Any]]] = {}
        for index, (benchmark, rows) in enumerate(zip(self.spec.benchmarks, self.rows, strict=True)):
            tuned, baseline, samples[benchmark.name] = self._benchmark(benchmark, index, rows)
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
            details=self.details,
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
                samples=sum(len(r.inputs) for r in self.rows if r is not None)
                + sum(h.documents for h in self.harness.benchmarks.values()),
            ),
        )
