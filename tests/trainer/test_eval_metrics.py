"""Evaluation metrics against hand-computed values and the reference libraries; reports as users read them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.api.evaluation import MetricResult, MetricSummary, judge, summarize
from finetune_trainer.evaluate.metrics import (
    bleu,
    exact_match,
    faithfulness,
    normalize_answer,
    perplexity,
    rouge_l,
    score_generations,
    token_f1,
)
from finetune_trainer.evaluate.reports import bar_chart, build_document, write_reports


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Eiffel Tower", "eiffel tower"),  # case and the article
        ("  Paris,\tFrance.  ", "paris france"),  # punctuation and whitespace
        ("an apple a day", "apple day"),  # every article
        ("theatre", "theatre"),  # 'the' only as a whole word
        ("A", ""),
    ],
)
def test_squad_normalisation(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_exact_match_ignores_case_articles_and_punctuation() -> None:
    assert exact_match("The Paris!", "paris") == 1.0
    assert exact_match("Paris France", "Paris") == 0.0


def test_token_f1_by_hand() -> None:
    # prediction "the cat sat down" -> [cat, sat, down]; reference "a cat sat" -> [cat, sat]
    # common 2: precision 2/3, recall 2/2, F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    assert token_f1("the cat sat down", "a cat sat") == pytest.approx(0.8)
    # repeated tokens count at most as often as in the reference: [red, red, red] vs [red, blue]
    # common 1: precision 1/3, recall 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    assert token_f1("red red red", "red blue") == pytest.approx(0.4)
    assert token_f1("", "") == 1.0  # both normalise to empty: the SQuAD v2.0 rule (v1.1 would score 0)
    assert token_f1("The.", "a") == 1.0 and exact_match("The.", "a") == 1.0
    assert token_f1("the", "paris") == 0.0  # normalises to nothing vs something
    assert token_f1("lyon", "paris") == 0.0


def test_the_empty_answer_rule_is_said_and_is_the_one_applied() -> None:
    """Two answers that both normalise to empty (a reference of just "The."): F1 1.0, SQuAD v2.0's rule,
    not v1.1's 0; the module says so, because it cites the script it follows."""
    from finetune_trainer.evaluate import metrics

    assert token_f1("An.", "the") == 1.0 and exact_match("An.", "the") == 1.0
    assert token_f1("", "paris") == 0.0 and token_f1("paris", "") == 0.0
    assert metrics.__doc__ is not None and "v2.0" in metrics.__doc__ and "both normalise to empty" in metrics.__doc__


def test_faithfulness_is_the_share_of_supported_tokens() -> None:
    source = "Paris is the capital and largest city of France."
    assert faithfulness("Paris, France", source) == 1.0
    # [paris, is, in, germany]: paris and is occur in the source -> 2/4
    assert faithfulness("Paris is in Germany", source) == pytest.approx(0.5)
    assert faithfulness("", source) == 1.0


def test_bleu_matches_sacrebleu() -> None:
    from sacrebleu.metrics import BLEU

    predictions = ["the cat sat on the mat", "a quick brown fox jumps"]
    references = ["the cat sat on a mat", "the quick brown fox jumps"]
    expected = BLEU(effective_order=True).corpus_score(predictions, [references]).score / 100
    assert bleu(predictions, references) == pytest.approx(expected)
    assert bleu(["exactly this text here"], ["exactly this text here"]) == pytest.approx(1.0)
    # one-word answers still score (effective order): one of two right -> unigram precision 1/2
    assert bleu(["Paris", "Tokyo"], ["Paris", "Lima"]) == pytest.approx(0.5)


def test_rouge_l_matches_rouge_score_and_a_hand_count() -> None:
    from rouge_score import rouge_scorer

    pred, ref = "the cat sat on the mat", "the cat was on the mat"
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l([pred], [ref]) == [pytest.approx(expected)]
    # LCS of [the, cat, sat, on, the, mat] and [the, cat, was, on, the, mat] is 5 of 6 tokens: F = 5/6
    assert expected == pytest.approx(5 / 6)


def test_perplexity_is_exp_of_the_mean_nll() -> None:
    assert perplexity(total_nll=2 * math.log(4), tokens=2) == pytest.approx(4.0)
    assert perplexity(0.0, 0) == math.inf


def test_score_generations_reports_corpus_means() -> None:
    totals, per_sample = score_generations(
        ["exact_match", "f1", "faithfulness"],
        ["Paris", "Lyon"],
        ["Paris", "Marseille"],
        ["Paris is in France", "Marseille is in France"],
    )
    assert totals == {"exact_match": 0.5, "f1": 0.5, "faithfulness": 0.5}
    assert per_sample[1] == {"exact_match": 0.0, "f1": 0.0, "faithfulness": 0.0}


def _result(benchmark: str, metric: str, value: float, baseline: float | None = None) -> MetricResult:
    return MetricResult(benchmark=benchmark, metric=metric, value=value, baseline=baseline)  # type: ignore[arg-type]


def test_summary_means_over_benchmarks_and_the_gate() -> None:
    summary = summarize(
        [
            _result("a", "exact_match", 0.9, 0.1),
            _result("b", "exact_match", 0.5, 0.3),
            _result("a", "perplexity", 12.0),
        ]
    )
    assert summary[0] == MetricSummary(metric="exact_match", value=0.7, baseline=0.2, delta=0.5)
    assert summary[1].baseline is None
    assert judge(summary, {"exact_match": 0.6, "perplexity": 15}) == []
    assert judge(summary, {"exact_match": 0.75}) == ["exact_match 0.7 < 0.75"]
    assert judge(summary, {"perplexity": 10}) == ["perplexity 12 > 10"]
    assert judge(summary, {"f1": 0.1}) == ["f1 was not computed"]


def _report(tmp_path: Path, samples: dict[str, list[dict[str, Any]]], thresholds: dict[str, float]) -> Path:
    results = [_result("capitals", "exact_match", 0.75, 0.0), _result("capitals", "f1", 0.8, 0.1)]
    summary = summarize(results)
    document = build_document(
        title="team-a/support-eval",
        model={"baseModel": "s3://models/tiny/", "adapter": "s3://adapters/x/"},
        results=results,
        summary=summary,
        thresholds=thresholds,
        missed=judge(summary, thresholds),
        samples=samples,
    )
    write_reports(document, tmp_path)
    return tmp_path


def test_reports_are_complete_and_self_contained(tmp_path: Path) -> None:
    samples = {"capitals": [{"input": "Capital of Peru?", "reference": "Lima", "prediction": "Lima"}]}
    files = list(_report(tmp_path, samples, {"exact_match": 0.9}).iterdir())
    assert sorted(f.name for f in files) == ["report.html", "report.md", "results.json"]
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["verdict"] == "failed"
    markdown = (tmp_path / "report.md").read_text()
    assert "| exact_match | 0.7500 | 0.0000 | +0.7500 | >= 0.9 (**missed**) |" in markdown
    assert "- exact_match 0.75 < 0.9" in markdown
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "<script" not in page.lower()
    assert not re.search(r"(src|href)=[\"']https?://", page)  # nothing fetched from elsewhere
    # one tuned and one baseline bar per metric
    assert bar_chart(document["summary"]).count("<rect") == 2 * len(document["summary"]) + 2  # + 2 legend swatches


def test_the_html_report_shows_each_threshold_and_the_samples(tmp_path: Path) -> None:
    """report.html says against what the model passed or failed, and what it wrote (as report.md does)."""
    sample = {"input": "Capital of <Peru>?", "reference": "Lima", "prediction": "Lima & co", "baselinePrediction": "x"}
    page = (_report(tmp_path, {"capitals": [sample]}, {"exact_match": 0.9, "f1": 0.5}) / "report.html").read_text()
    summary = page[page.index("<h2>Summary") : page.index("<h2>Per benchmark")]
    assert re.search(r"<td>exact_match</td>.*?<td>&gt;= 0.9</td><td><span class='missed'>missed</span>", summary)
    assert re.search(r"<td>f1</td>.*?<td>&gt;= 0.5</td><td><span class='met'>met</span>", summary)
    samples = page[page.index("<h2>Samples") :]
    assert "<th>prompt</th><th>reference</th><th>tuned</th><th>baseline</th>" in samples
    assert "<td>Capital of &lt;Peru&gt;?</td><td>Lima</td><td>Lima &amp; co</td><td>x</td>" in samples
    long = {"input": "q" * 5000, "reference": "r", "prediction": "p"}
    page = (_report(tmp_path, {"capitals": [long]}, {}) / "report.html").read_text()
    assert "q" * 5000 not in page and "q" * 197 + "..." in page  # cut to length


def test_markdown_cells_keep_one_row_whatever_the_model_wrote(tmp_path: Path) -> None:
    nasty = "a\r\nb\rc\nd\u2028e | f \\| <b>g</b> \\"
    sample = {"input": nasty, "reference": "ref", "prediction": nasty, "baselinePrediction": nasty}
    markdown = (_report(tmp_path, {"capitals": [sample]}, {}) / "report.md").read_text()
    table = markdown[markdown.index("### capitals") :].splitlines()
    rows = [line for line in table if line.startswith("|")]
    assert len(rows) == 3  # header, rule, one sample: no cell broke its row
    assert "\r" not in markdown
    cells = re.split(r"(?<!\\)\|", rows[2].strip())[1:-1]  # split on unescaped pipes only
    assert len(cells) == 4, cells
    assert "&lt;b>g&lt;/b>" in cells[0] and "\\\\" in cells[0]


def test_perplexity_pass_matches_the_models_own_loss(tiny_model: Path) -> None:
    """The batched, right-padded NLL sum equals the model's mean loss per text, padding excluded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.evaluate.generate import negative_log_likelihood

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    texts = ["How do I reset my password in Atlas?", "In Comet, open Billing, choose Plan, then Cancel."]
    total, tokens = negative_log_likelihood(model, tokenizer, texts, batch_size=2)
    expected_total, expected_tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            expected_total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            expected_tokens += ids.shape[1] - 1
    assert tokens == expected_tokens
    assert total == pytest.approx(expected_total, rel=1e-4)
    assert perplexity(total, tokens) == pytest.approx(math.exp(expected_total / expected_tokens), rel=1e-4)


def test_laptop_evaluation_from_the_shipped_example_spec(tiny_model: Path, tmp_path: Path) -> None:
    """examples/evaluation/eval-run-spec.yaml (documented in docs/evaluation.md), pointed at a temp folder.

    The adapter is an untrained LoRA (published with its manifest, as training publishes one): this
    proves the run spec, the command and the report; a tiny random model cannot show quality."""
    import os
    import subprocess
    import sys

    from finetune_operator.api.finetunejob import LoraSettings
    from finetune_trainer.model import Device, apply_lora, load_base_model
    from finetune_trainer.storage import LocalStore, publish
    from tinymodel import capital_rows, write_jsonl

    repo = Path(__file__).resolve().parents[2]
    write_jsonl(capital_rows(), tmp_path / "capitals-qa.jsonl")
    (tmp_path / "model").symlink_to(tiny_model)
    adapter = apply_lora(load_base_model(tiny_model, None, Device("cpu", "float32"), False), LoraSettings())
    adapter.save_pretrained(tmp_path / "lora")
    publish(LocalStore(), tmp_path / "lora", f"file://{tmp_path}/out/adapter/", {"kind": "adapter"})
    spec = (repo / "examples" / "evaluation" / "eval-run-spec.yaml").read_text()
    (tmp_path / "eval-run-spec.yaml").write_text(spec.replace("/tmp/finetune-quickstart", str(tmp_path)))
    done = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.cli", "eval", "--spec", str(tmp_path / "eval-run-spec.yaml")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FINETUNE_TERMINATION_LOG": str(tmp_path / "result.json")},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"report published to file://{tmp_path}/eval/report/" in done.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert [s["metric"] for s in result["evaluation"]["summary"]] == ["exact_match", "f1", "rouge_l"]
    assert all(s["baseline"] is not None for s in result["evaluation"]["summary"])
    assert {"report.html", "report.md", "results.json", "manifest.json"} <= {
        p.name for p in (tmp_path / "eval" / "report").iterdir()
    }
    assert "examples/evaluation/eval-run-spec.yaml" in (repo / "docs" / "evaluation.md").read_text()
