"""Preference training as a user runs it: examples/preference/ applied at once. The SFT job trains; the
DPO job waits for its adapter (spec.adapter.fineTuneJobRef), then trains it further with TRL's DPO
trainer; the EvalRun waits for the DPO job and scores held-out pairs against the base model.

Real parts throughout: control plane, operator process, MinIO, and the trainer image run by the
local node as the pods. What it proves is the chain and its status (waiting, startAdapter, the
reward figures in progress, the preference benchmark's result); the tiny model's scores are printed,
and tests/trainer/test_preference.py is where learning is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from devcluster import REPO_ROOT, apply_objects, wait_for
from devcluster.quickstart import Quickstart
from finetune_operator.api import EVALRUN, FINETUNEJOB
from tests.e2e.resources import get, wait

pytestmark = pytest.mark.cluster
EXAMPLES = REPO_ROOT / "examples" / "preference"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(tmp_path_factory.mktemp("preference")).start(say=lambda _: None)
    yield started
    started.stop()


def test_sft_then_dpo_then_evaluation_from_the_examples(demo: Quickstart) -> None:
    assert demo.cluster
    docs = [yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]
    for doc in docs:
        doc["metadata"]["namespace"] = "default"
    apply_objects(demo.cluster.api(), docs)

    # The DPO job waits for the SFT job's adapter, saying so.
    def waiting() -> bool:
        status = get(demo, FINETUNEJOB.plural, "support-dpo").get("status") or {}
        running = next((c for c in status.get("conditions") or [] if c["type"] == "Running"), {})
        return status.get("phase") == "Pending" and running.get("reason") == "WaitingForFineTuneJob"

    wait_for(waiting, 60, "support-dpo waiting for support-sft")
    wait(demo, "Succeeded", "ftj/support-sft", 420)
    sft = get(demo, FINETUNEJOB.plural, "support-sft")["status"]

    wait(demo, "Succeeded", "ftj/support-dpo", 420)
    dpo = get(demo, FINETUNEJOB.plural, "support-dpo")["status"]
    assert dpo["startAdapter"] == {"uri": sft["adapter"]["uri"], "fineTuneJob": "support-sft", "fineTuneJobAttempt": 1}
    assert dpo["adapter"]["uri"] != sft["adapter"]["uri"]
    assert 0 <= dpo["progress"]["rewardAccuracy"] <= 1 and "rewardMargin" in dpo["progress"]
    assert dpo["metrics"]["steps"] == 60 and 0 <= dpo["metrics"]["rewardAccuracy"] <= 1

    wait(demo, "Succeeded", "evr/support-dpo-eval", 420)
    evalrun = get(demo, EVALRUN.plural, "support-dpo-eval")["status"]
    assert evalrun["model"]["adapter"]["uri"] == dpo["adapter"]["uri"]
    results = {r["metric"]: r for r in evalrun["results"]}
    assert set(results) == {"preference_accuracy", "preference_accuracy_raw"}
    for result in results.values():
        assert 0 <= result["value"] <= 1 and 0 <= result["baseline"] <= 1
    passed = next(c for c in evalrun["conditions"] if c["type"] == "Passed")
    assert passed["status"] == ("True" if results["preference_accuracy"]["value"] >= 0.8 else "False")
    accuracy = results["preference_accuracy"]
    print(
        f"held-out pairwise accuracy: base {accuracy['baseline']:.3f} -> SFT+DPO adapter {accuracy['value']:.3f}; "
        f"DPO reward accuracy at the end {dpo['progress']['rewardAccuracy']:.2f}"
    )
