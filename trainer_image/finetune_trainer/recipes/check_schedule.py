"""`finetune-trainer check-schedule`: a FineTuneSchedule's store triggers, and a run's training set.

One short pod per check, with the schedule's store (role OUTPUT), the template dataset (DATASET) and each
trigger's prefix (NEW_DATA, FEEDBACK, DRIFT). It:

1. answers what it recorded if state.json already holds this run (a pod retried after it finished);
2. counts the new data objects (an object is its path and sha256: a changed file is new again), the
   feedback records not consumed yet, and the drift score of the documents not consumed yet;
3. when a reason holds (the operator's `due`, or a trigger), writes the run's training set under
   `runs/<run>/data/` (the template dataset's files, every data object, and `feedback.jsonl` with the
   rows the feedback gives, in the dataset's own layout), manifest last, and only then state.json, the
   consumed ids and objects and this run's outcome: a pod that dies in between leaves no consumed
   record without its training set.

Bad input never stops a check: a bad feedback line, a missing prefix or an unreadable reference is a
problem named in the result, and what is readable is used.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import (
    DRIFT_ROLE,
    FEEDBACK_ROLE,
    NEW_DATA_ROLE,
    SCHEDULE_STATE,
    ScheduleCheckOutcome,
    ScheduleCheckRunSpec,
    TrainerResult,
    schedule_run_folder,
)
from finetune_operator.api.schedule import DriftScore

from ..data.drift import file_texts, jensen_shannon, words
from ..data.feedback import Feedback, counts, read_feedback, training_rows
from ..data.formats import Format, detect_format
from ..data.load import read_rows
from ..errors import InputError
from ..storage import MANIFEST, join, publish, sha256_file, store_for

log = logging.getLogger(__name__)
FEEDBACK_ROWS = "feedback.jsonl"
Located = tuple[str, str, Path]
"""An object read from a trigger prefix: (the prefix, its name under it, the local copy)."""
LISTED_PROBLEMS = 6


@dataclass
class State:
    """state.json: what runs consumed, and each run's outcome."""

    feedback: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    runs: dict[str, Any] = field(default_factory=dict)
    last_dataset: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> State:
        raw = json.loads(text) if text else {}
        return cls(
            feedback=set(raw.get("feedback", [])),
            objects=set(raw.get("objects", [])),
            runs=dict(raw.get("runs", {})),
            last_dataset=raw.get("lastDataset"),
        )

    def dump(self) -> str:
        data = {
            "version": 1,
            "feedback": sorted(self.feedback),
            "objects": sorted(self.objects),
            "runs": self.runs,
            "lastDataset": self.last_dataset,
        }
        return json.dumps(data, indent=1, sort_keys=True)


def _files(root: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST]


class Check:
    """One check: the run spec, its stores and scratch folder, and the problems found on the way."""

    def __init__(self, run: ScheduleCheckRunSpec, workdir: Path, environ: Mapping[str, str]) -> None:
        self.run = run
        self.workdir = workdir
        self.environ = environ
        self.problems: list[str] = []
        self.store = store_for(run.uri, "OUTPUT", run.storage, environ)

    def fetch(self, role: str, uri: str, field_name: str, folder: str) -> list[tuple[str, Path]]:
        """The files under `uri` (name, local path); none, and a problem naming the field, if it cannot be read."""
        dest = self.workdir / folder
        shutil.rmtree(dest, ignore_errors=True)
        try:
            store_for(uri, role, self.run.storage, self.environ).download_prefix(uri, dest)
        except InputError as error:
            self.problems.append(f"{field_name}: {error}")
            return []
        return _files(dest)

    def execute(self) -> TrainerResult:
        state = State.parse(self.store.read_text(join(self.run.uri, SCHEDULE_STATE)))
        recorded = state.runs.get(str(self.run.run))
        if recorded is not None:
            found = ScheduleCheckOutcome.model_validate(recorded)
            message = f"run {self.run.run} was prepared before: {found.dataset_uri}"
            return TrainerResult(result="succeeded", message=message, schedule=found)
        found = ScheduleCheckOutcome()
        reasons = list(self.run.due)
        records = self.count_feedback(state, found, reasons)
        data = self.count_new_data(state, found, reasons)
        documents = self.score_drift(state, data, found, reasons)
        if not reasons:
            self.report_problems(found)
            return TrainerResult(result="succeeded", message=_summary(found, "no run is due"), schedule=found)
        found.reasons = reasons[:8]
        found.dataset_uri, found.rows = self.write_dataset([(n, p) for _, n, p in data], records)
        self.report_problems(found)
        state.feedback |= {r.id for r in records}
        state.objects |= {_key(prefix, n, p) for prefix, n, p in [*data, *documents]}
        state.runs[str(self.run.run)] = found.to_json_dict()
        state.last_dataset = found.dataset_uri
        self.store.write_text(join(self.run.uri, SCHEDULE_STATE), state.dump())
        return TrainerResult(result="succeeded", message=_summary(found, "; ".join(reasons)), schedule=found)

    def report_problems(self, found: ScheduleCheckOutcome) -> None:
        found.problem_count = len(self.problems)
        found.problems = [p[:300] for p in self.problems[:LISTED_PROBLEMS]]
        for problem in self.problems:
            log.warning("%s", problem)

    def count_feedback(self, state: State, found: ScheduleCheckOutcome, reasons: list[str]) -> list[Feedback]:
        """Every valid feedback record; the counts go into `found`, a reason if enough negatives are pending."""
        trigger = self.run.triggers.feedback
        if trigger is None:
            return []
        files = self.fetch(FEEDBACK_ROLE, trigger.uri, "triggers.feedback.uri", "feedback")
        records, bad = read_feedback([(name, path) for name, path in files if path.suffix.lower() == ".jsonl"])
        self.problems += bad
        found.feedback = counts(records, state.feedback, trigger, len(bad))
        if found.feedback.pending_negative >= trigger.min_negative:
            reasons.append(f"{found.feedback.pending_negative} negative feedback records >= {trigger.min_negative}")
        return records

    def count_new_data(self, state: State, found: ScheduleCheckOutcome, reasons: list[str]) -> list[Located]:
        """Every data object (prefix, name, local path); a reason if enough of them are new."""
        trigger = self.run.triggers.new_data
        if trigger is None:
            return []
        files = self.fetch(NEW_DATA_ROLE, trigger.uri, "triggers.newData.uri", "new-data")
        data = [(trigger.uri, name, path) for name, path in files]
        found.new_objects = sum(1 for located in data if _key(*located) not in state.objects)
        if found.new_objects >= trigger.min_objects:
            reasons.append(f"{found.new_objects} new data objects >= {trigger.min_objects}")
        return data

    def score_drift(
        self, state: State, data: list[Located], found: ScheduleCheckOutcome, reasons: list[str]
    ) -> list[Located]:
        """The drift documents (prefix, name, local path); their score goes into `found`, a reason if it is over."""
        triggers = self.run.triggers
        if triggers.drift is None:
            return []
        uri = triggers.drift.uri or (triggers.new_data.uri if triggers.new_data else "")
        if triggers.new_data is not None and uri == triggers.new_data.uri:
            documents = data
        else:
            documents = [(uri, n, p) for n, p in self.fetch(DRIFT_ROLE, uri, "triggers.drift.uri", "documents")]
        score = self.drift([p for *key, p in documents if _key(*key, p) not in state.objects], state)
        if score is not None:
            found.drift = score
            if score.score > triggers.drift.threshold:
                reasons.append(f"drift {score.score:.2f} > {triggers.drift.threshold:g}")
        return documents

    def drift(self, documents: list[Path], state: State) -> DriftScore | None:
        drift = self.run.triggers.drift
        assert drift is not None
        if not documents:
            return None
        reference = drift.reference_uri or state.last_dataset or self.run.dataset.uri
        role = DRIFT_ROLE if drift.reference_uri else ("OUTPUT" if state.last_dataset else "DATASET")
        files = self.fetch(role, reference, "triggers.drift.referenceUri", "reference")
        if not files:
            return None
        new = words(text for path in documents for text in file_texts(path))
        known = words(text for _, path in files for text in file_texts(path))
        score = jensen_shannon(new, known)
        log.info("drift of %d new documents against %s: %.4f", len(documents), reference, score)
        return DriftScore(
            score=round(score, 6), threshold=drift.threshold, documents=len(documents), reference=reference
        )

    def dataset_format(self, base: Path) -> tuple[Format, int]:
        rows = 0
        fmt: Format | None = None if self.run.dataset.format == "auto" else self.run.dataset.format
        for row in read_rows(base):
            if fmt is None:
                fmt = detect_format(row, self.run.dataset.columns)
            rows += 1
        if fmt is None:
            raise InputError(f"{self.run.dataset.uri}: the dataset has no rows")
        return fmt, rows

    def data_rows(self, name: str, path: Path, fmt: Format) -> int:
        """The rows of a data object if the whole file reads in the dataset's layout; else 0, and a problem
        naming it (the training set is built without it, so one bad object costs only itself)."""
        try:
            rows = list(read_rows(path))
            found = detect_format(rows[0], self.run.dataset.columns) if rows else None
        except InputError as error:
            self.problems.append(f"triggers.newData.uri: {name}: {error}")
            return 0
        if found is not None and found != fmt:
            self.problems.append(f"triggers.newData.uri: {name}: rows in the {found} layout, the dataset's is {fmt}")
            return 0
        return len(rows)

    def write_dataset(self, data: list[tuple[str, Path]], records: list[Feedback]) -> tuple[str, int]:
        """The run's training set, published with its manifest: (its URI, its rows)."""
        local = self.workdir / "training-set"
        shutil.rmtree(local, ignore_errors=True)
        base = local / "base"
        dataset_store = store_for(self.run.dataset.uri, "DATASET", self.run.storage, self.environ)
        dataset_store.download_prefix(self.run.dataset.uri, base)
        fmt, rows = self.dataset_format(base)
        for name, path in data:
            usable = self.data_rows(name, path, fmt)
            if usable:
                target = local / "new-data" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                rows += usable
        triggers = self.run.triggers
        if triggers.feedback is not None:
            extra = training_rows(records, triggers.feedback, fmt, self.run.dataset.columns)
            if extra:
                with (local / FEEDBACK_ROWS).open("w") as handle:
                    handle.writelines(json.dumps(row) + "\n" for row in extra)
                rows += len(extra)
        folder = schedule_run_folder(self.run.uri, self.run.run)
        sources = {name: sha256_file(path) for name, path in _files(local)}
        metadata = {"kind": "schedule-run", "run": self.run.run, "due": self.run.due, "sources": sources}
        publish(self.store, local, folder, metadata)
        return folder, rows


def _key(prefix: str, name: str, path: Path) -> str:
    return f"{prefix.rstrip('/')}/{name}@{sha256_file(path)}"


def _summary(found: ScheduleCheckOutcome, head: str) -> str:
    parts = [head]
    if found.feedback is not None:
        parts.append(f"{found.feedback.pending_negative} negative feedback records pending")
    if found.new_objects is not None:
        parts.append(f"{found.new_objects} new data objects")
    if found.drift is not None:
        parts.append(f"drift {found.drift.score:.3f}")
    if found.problem_count:
        parts.append(f"{found.problem_count} problems skipped")
    return "; ".join(parts)[:2048]


def check_schedule(run: ScheduleCheckRunSpec, workdir: Path, environ: Mapping[str, str]) -> TrainerResult:
    return Check(run, workdir, environ).execute()
