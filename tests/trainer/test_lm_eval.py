"""lm-evaluation-harness benchmarks: a task YAML over a local JSONL file, run offline on the tiny model
with an adapter, its tuned and baseline accuracy checked against a computation written here.

What this proves: the task folder is fetched and registered, the harness process runs offline with
our loaded base model and adapter (and the base alone as baseline), and its accuracy is the share of
questions whose right choice has the highest log-likelihood, as computed independently below. It says
nothing about any public benchmark or about the tiny model's knowledge: its weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer.errors import InputError
from finetune_trainer.evaluate.lmeval import task_metrics
from finetune_trainer.recipes.evaluate import EvaluationRecipe
from finetune_trainer.report import ProgressReporter
from tests.trainer.setups import evaluation_spec, published_adapter
from tinymodel import capital_choice_rows, write_lm_eval_tasks


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lm_eval_tasks(tmp_path_factory.mktemp("tasks"))


def expected_choices(model: Any, tokenizer: Any, docs: list[dict[str, Any]]) -> list[int]:
    """Per document, the choice with the highest summed log-probability as the continuation of
    `Question: ...\\nAnswer:` after a space (lm-eval's target delimiter), written without lm-eval."""
    picked = []
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
            scores.append(sum(float(logprobs[t - 1, whole[t]]) for t in range(len(context_ids), len(whole))))
        picked.append(scores.index(max(scores)))
    return picked


def accuracy(picked: list[int], docs: list[dict[str, Any]]) -> float:
    return sum(p == d["label"] for p, d in zip(picked, docs, strict=True)) / len(docs)


def _spec(model: Path, adapter: str, tasks: Path, work: Path, **lm_eval: Any) -> Any:
    benchmark = {
        "name": "capitals-mc",
        "task": "lmEval",
        "lmEval": {"tasks": ["capitals_mc"], "include": f"file://{tasks}/", **lm_eval},
        "metrics": ["acc", "acc_norm"],
    }
    return evaluation_spec(model, [benchmark], work / "report", adapter=adapter, thresholds={"acc": 0.0})


def test_a_local_task_yaml_scores_the_adapter_and_its_base_as_computed_by_hand(
    tiny_model: Path, task_folder: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = published_adapter(tiny_model, tmp_path / "published")
    result = EvaluationRecipe(
        _spec(tiny_model, adapter, task_folder, tmp_path / "work"), tmp_path / "work", {}, ProgressReporter(None)
    ).run()
    assert result.evaluation is not None
    rows = {r.metric: r for r in result.evaluation.results}

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    docs = capital_choice_rows()
    base_choices = expected_choices(base, tokenizer, docs)
    tuned = PeftModel.from_pretrained(base, tmp_path / "published" / "lora").eval()
    tuned_choices = expected_choices(tuned, tokenizer, docs)
    assert tuned_choices != base_choices, "the adapter changes no choice: tuned and baseline would look alike"
    report = json.loads((tmp_path / "work" / "report" / "results.json").read_text())
    samples = report["samples"]["capitals-mc"]
    # Document by document, the harness ranked the choices as computed here, for both models...
    assert [s["prediction"] for s in samples] == [f"choice {c}" for c in tuned_choices]
    assert [s["baselinePrediction"] for s in samples] == [f"choice {c}" for c in base_choices]
    # ...and its accuracy is the share of right ones.
    print(f"acc tuned {rows['acc'].value} baseline {rows['acc'].baseline}; by hand {tuned_choices} {base_choices}")
    assert rows["acc"].value == pytest.approx(accuracy(tuned_choices, docs), abs=1e-6)
    assert rows["acc"].baseline == pytest.approx(accuracy(base_choices, docs), abs=1e-6)
    assert 0.0 <= rows["acc_norm"].value <= 1.0 and rows["acc_norm"].baseline is not None
    assert result.evaluation.samples == len(docs)

    assert report["details"]["capitals-mc"]["tasks"]["tuned"]["capitals_mc"]["acc"] == pytest.approx(
        rows["acc"].value, abs=1e-6
    )
    assert report["samples"]["capitals-mc"][0]["input"].startswith("[capitals_mc] Question: What is the capital")
    markdown = (tmp_path / "work" / "report" / "report.md").read_text()
    assert "## lm-eval tasks" in markdown and "| capitals-mc | capitals_mc | acc |" in markdown


def test_limit_and_few_shot_reach_the_harness(tiny_model: Path, task_folder: Path, tmp_path: Path) -> None:
    adapter = published_adapter(tiny_model, tmp_path / "published")
    spec = _spec(tiny_model, adapter, task_folder, tmp_path / "work", limit=4, numFewShot=2)
    result = EvaluationRecipe(spec, tmp_path / "work", {}, ProgressReporter(None)).run()
    assert result.evaluation is not None and result.evaluation.samples == 4
    report = json.loads((tmp_path / "work" / "report" / "results.json").read_text())
    prompt = report["samples"]["capitals-mc"][0]["input"]
    assert prompt.count("Question:") == 3, prompt  # two worked examples, then the question


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (["capitals_mcq"], "lmEval.tasks names 'capitals_mcq', which is neither a task shipped with lm-eval"),
        (
            ["arc_easy"],
            "lmEval task arc_easy reads the dataset 'allenai/ai2_arc' from the Hugging Face Hub, which the "
            "evaluation pod does not reach (it runs offline); put the data in the store and a task YAML",
        ),
    ],
)
def test_a_task_that_cannot_run_offline_is_named_with_what_to_provide(
    tiny_model: Path, task_folder: Path, tmp_path: Path, tasks: list[str], message: str
) -> None:
    adapter = published_adapter(tiny_model, tmp_path / "published")
    spec = _spec(tiny_model, adapter, task_folder, tmp_path / "work")
    spec.evaluation.benchmarks[0].lm_eval.tasks = tasks  # type: ignore[union-attr]
    with pytest.raises(InputError) as caught:
        EvaluationRecipe(spec, tmp_path / "work", {}, ProgressReporter(None)).run()
    assert message in str(caught.value)
    assert str(caught.value).startswith("benchmark capitals-mc: ")


def test_a_metric_the_task_does_not_report_is_named_with_those_it_does() -> None:
    results = {"capitals_mc": {"acc,none": 0.5, "acc_stderr,none": "N/A", "acc_norm,none": 0.25, "alias": "x"}}
    assert task_metrics(results, "capitals_mc", ["acc", "acc_norm"]) == {"acc": 0.5, "acc_norm": 0.25}
    with pytest.raises(InputError, match=r"lmEval task capitals_mc reports no mcc \(it reports: acc, acc_norm\)"):
        task_metrics(results, "capitals_mc", ["mcc"])
    filtered = {"gsm": {"exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.3}}
    assert task_metrics(filtered, "gsm", ["exact_match"]) == {"exact_match": 0.1}  # the first filter listed
