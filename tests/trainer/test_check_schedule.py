"""`finetune-trainer check-schedule` on file:// stores: the feedback, new-data and drift triggers, the
training set a run gets, consumption (never counted twice) and bad input (named, the good lines kept).

Real files through the real command; no model is involved (a check trains nothing). The drift figures are
those of the documents written here, quoted in the assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import ScheduleCheckRunSpec, TrainerResult
from finetune_trainer.cli import main
from finetune_trainer.data.drift import jensen_shannon, words
from finetune_trainer.data.load import read_rows

BASE = [{"instruction": f"How do I reset device {i}?", "input": "", "output": f"Hold button {i}."} for i in range(6)]


def write_jsonl(path: Path, rows: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def feedback(ident: str, rating: int, correction: str | None = None) -> dict[str, Any]:
    record = {"id": ident, "prompt": f"question {ident}", "response": f"answer {ident}", "rating": rating}
    if correction:
        record["correction"] = correction
    return record


def check(
    tmp_path: Path, run: int, triggers: dict[str, Any], due: list[str] | None = None, **spec: Any
) -> TrainerResult:
    body = {
        "resource": {
            "group": "finetune.dev",
            "version": "v1alpha1",
            "plural": "finetuneschedules",
            "namespace": "team-a",
            "name": "support",
            "uid": "u",
        },
        "run": run,
        "due": due or [],
        "uri": f"file://{tmp_path}/store/",
        "dataset": {"uri": f"file://{tmp_path}/base/train.jsonl", **spec.get("dataset", {})},
        "objective": spec.get("objective", "sft"),
        "triggers": triggers,
    }
    path = tmp_path / f"check-{run}.json"
    path.write_text(json.dumps(ScheduleCheckRunSpec.model_validate(body).to_json_dict()))
    result_file = tmp_path / f"result-{run}.json"
    code = main(
        [
            "check-schedule",
            "--spec",
            str(path),
            "--workdir",
            str(tmp_path / f"work-{run}"),
            "--result",
            str(result_file),
        ]
    )
    assert code == 0, result_file.read_text()
    return TrainerResult.model_validate_json(result_file.read_text())


def test_negative_feedback_starts_one_run_with_corrections_and_good_answers_as_rows_then_is_consumed(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "base" / "train.jsonl", BASE)
    records = [feedback("a", 1, "the right answer a"), feedback("b", 2), feedback("c", 5), feedback("d", 1)]
    write_jsonl(tmp_path / "feedback" / "day1.jsonl", [*records, "{not json", {**feedback("e", 7)}, {"id": "f"}])
    triggers = {"feedback": {"uri": f"file://{tmp_path}/feedback/", "minNegative": 3}}

    first = check(tmp_path, 1, triggers)
    found = first.schedule
    assert found is not None
    assert found.reasons == ["3 negative feedback records >= 3"]
    assert found.feedback is not None and (found.feedback.records, found.feedback.negative) == (4, 3)
    assert (found.feedback.corrections, found.feedback.positive, found.feedback.invalid) == (1, 1, 3)
    assert found.problems == [
        "day1.jsonl line 5: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "day1.jsonl line 6: rating 7 is not on the 1-5 scale (an integer from 1, worst, to 5, best)",
        "day1.jsonl line 7: field 'prompt' must be a non-empty string",
    ]
    # The training set: the base rows, then the correction and the 5-rated answer in the base's alpaca layout.
    folder = Path(str(found.dataset_uri).removeprefix("file://"))
    assert folder == tmp_path / "store" / "runs" / "1" / "data"
    rows = [row.data for row in read_rows(folder)]
    assert found.rows == len(rows) == 8
    assert rows[-2:] == [
        {"instruction": "question a", "input": "", "output": "the right answer a"},
        {"instruction": "question c", "input": "", "output": "answer c"},
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"base/train.jsonl", "feedback.jsonl"}

    # Polled again: the three negatives are consumed, so nothing is due; one new negative is not enough.
    second = check(tmp_path, 2, triggers)
    assert second.schedule is not None and second.schedule.reasons == []
    assert second.schedule.feedback is not None and second.schedule.feedback.pending_negative == 0
    write_jsonl(tmp_path / "feedback" / "day2.jsonl", [feedback("g", 1), feedback("a", 1)])  # "a" again: once
    third = check(tmp_path, 3, triggers)
    assert third.schedule is not None and third.schedule.feedback is not None
    assert third.schedule.feedback.pending_negative == 1 and third.schedule.reasons == []

    # A pod retried after it recorded run 1 answers what it recorded, and consumes nothing more.
    again = check(tmp_path, 1, triggers)
    assert again.schedule == found


def test_dpo_turns_corrections_into_pairs_and_only_counts_low_ratings_without_one(tmp_path: Path) -> None:
    pairs = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    write_jsonl(tmp_path / "base" / "train.jsonl", pairs)
    write_jsonl(tmp_path / "feedback" / "f.jsonl", [feedback("a", 1, "fixed a"), feedback("b", 1), feedback("c", 5)])
    triggers = {"feedback": {"uri": f"file://{tmp_path}/feedback/", "minNegative": 2}}
    found = check(tmp_path, 1, triggers, objective="dpo").schedule
    assert found is not None and found.rows == 4
    rows = [row.data for row in read_rows(Path(str(found.dataset_uri).removeprefix("file://")))]
    assert rows[-1] == {"prompt": "question a", "chosen": "fixed a", "rejected": "answer a"}


def test_new_data_objects_start_a_run_and_join_the_training_set_once(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "base" / "train.jsonl", BASE)
    triggers = {"newData": {"uri": f"file://{tmp_path}/incoming/", "minObjects": 2}}
    write_jsonl(tmp_path / "incoming" / "a.jsonl", BASE[:2])
    first = check(tmp_path, 1, triggers).schedule
    assert first is not None and first.new_objects == 1 and first.reasons == []
    write_jsonl(tmp_path / "incoming" / "b.jsonl", BASE[2:3])
    second = check(tmp_path, 2, triggers).schedule
    assert second is not None and second.reasons == ["2 new data objects >= 2"] and second.rows == 6 + 3
    third = check(tmp_path, 3, triggers).schedule
    assert third is not None and third.new_objects == 0 and third.reasons == []


def test_drifted_documents_start_a_run_and_undrifted_ones_do_not(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "base" / "train.jsonl", BASE * 3)
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "doc.txt").write_text(
        " ".join(f"How do I reset device {i}? Hold button {i}." for i in range(6))
    )
    triggers = {"drift": {"uri": f"file://{tmp_path}/same/", "threshold": 0.25}}
    calm = check(tmp_path, 1, triggers).schedule
    assert calm is not None and calm.drift is not None
    assert calm.drift.score < 0.05 and calm.reasons == []
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "doc.md").write_text("# Billing\nInvoices, refunds and VAT numbers for enterprise customers.\n")
    triggers = {"drift": {"uri": f"file://{tmp_path}/new/", "threshold": 0.25}}
    drifted = check(tmp_path, 2, triggers).schedule
    assert drifted is not None and drifted.drift is not None and drifted.drift.score > 0.9
    assert drifted.reasons == [f"drift {drifted.drift.score:.2f} > 0.25"]
    print(f"drift: same words {calm.drift.score:.4f}, new topic {drifted.drift.score:.4f}")
    # Consumed: the drifted documents are not scored again.
    assert check(tmp_path, 3, triggers).schedule.drift is None  # type: ignore[union-attr]


def test_a_missing_prefix_is_a_named_problem_and_a_due_run_still_gets_its_training_set(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "base" / "train.jsonl", BASE)
    triggers = {"feedback": {"uri": f"file://{tmp_path}/nowhere/"}}
    found = check(tmp_path, 1, triggers, due=["manual"]).schedule
    assert found is not None and found.reasons == ["manual"] and found.rows == 6
    assert found.problems == [f"triggers.feedback.uri: file://{tmp_path}/nowhere/: no such file or folder"]


def test_jensen_shannon_is_zero_for_the_same_words_and_one_for_disjoint_ones() -> None:
    assert jensen_shannon(words(["a b c"]), words(["c b a a b c"])) == 0.0
    assert jensen_shannon(words(["a b"]), words(["c d"])) == 1.0
    assert 0.0 < jensen_shannon(words(["a b"]), words(["a c"])) < 1.0


def test_a_bad_data_object_is_named_and_left_out_while_the_good_ones_train(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "base" / "train.jsonl", BASE)
    write_jsonl(tmp_path / "incoming" / "good.jsonl", BASE[:2])
    write_jsonl(tmp_path / "incoming" / "broken.jsonl", [BASE[0], "{oops"])
    write_jsonl(tmp_path / "incoming" / "other.jsonl", [{"text": "raw text, not alpaca"}])
    (tmp_path / "incoming" / "notes.txt").write_text("not a data file")
    triggers = {"newData": {"uri": f"file://{tmp_path}/incoming/", "minObjects": 1}}
    found = check(tmp_path, 1, triggers).schedule
    assert found is not None and found.new_objects == 4 and found.rows == 6 + 2
    assert found.problems == [
        "triggers.newData.uri: broken.jsonl: broken.jsonl line 2: invalid JSON (Expecting property name "
        "enclosed in double quotes at column 2)",
        "triggers.newData.uri: notes.txt: notes.txt: unsupported file type '.txt' (use .jsonl, .json, .csv, .parquet)",
        "triggers.newData.uri: other.jsonl: rows in the text layout, the dataset's is alpaca",
    ]
    manifest = json.loads((tmp_path / "store" / "runs" / "1" / "data" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"base/train.jsonl", "new-data/good.jsonl"}
