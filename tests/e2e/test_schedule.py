"""Continuous learning on the local cluster: FineTuneSchedules whose triggers read MinIO.

Real parts throughout: control plane, the real node running the check pods and the training pod of the
image built from Dockerfile.trainer, MinIO, the operator process (restarted once). Every trigger starts
exactly one FineTuneJob with its reason; the feedback run trains on the prepared set and registers into a
Model, whose ConfigMap follows. The other runs' templates are suspended: what they show is the start
of a run, not another training. Promotion against a better or worse stable is the registry's gate
(tests/integration/test_model_registry.py); a tiny random model's scores could not show it here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import REPO_ROOT, apply_objects, wait_for
from devcluster.quickstart import BUCKET, Quickstart
from finetune_operator.api import FINETUNEJOB, FINETUNESCHEDULE, MODEL
from tests.e2e.resources import get, wait

pytestmark = pytest.mark.cluster
EXAMPLE = REPO_ROOT / "examples" / "quickstart" / "finetunejob.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(tmp_path_factory.mktemp("schedule")).start(say=lambda _: None)
    apply_schedule(started, "nightly", schedule="* * * * *")
    yield started
    started.stop()


def template(suspend: bool) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())["spec"]
    spec["training"].update(maxSteps=4, saveSteps=4, loggingSteps=2)
    spec["resources"]["cpu"] = "1"
    spec["suspend"] = suspend
    return spec


def apply_schedule(demo: Quickstart, name: str, *, suspend: bool = True, **spec: Any) -> None:
    assert demo.cluster
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneSchedule",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"jobTemplate": {"spec": template(suspend)}, **spec},
    }
    apply_objects(demo.cluster.api(), [body])


def upload(demo: Quickstart, tmp: Path, key: str, text: str) -> str:
    assert demo.minio
    path = tmp / key.replace("/", "_")
    path.write_text(text)
    return demo.minio.upload_file(BUCKET, key, path)


def runs(demo: Quickstart, schedule: str) -> list[dict[str, Any]]:
    assert demo.cluster
    listed = client.CustomObjectsApi(demo.cluster.api()).list_namespaced_custom_object(
        "finetune.dev", "v1alpha1", "default", FINETUNEJOB.plural, label_selector=f"{FINETUNESCHEDULE.label}={schedule}"
    )
    return list(listed["items"])


def status(demo: Quickstart, name: str) -> dict[str, Any]:
    return dict(get(demo, FINETUNESCHEDULE.plural, name).get("status") or {})


def one_run(demo: Quickstart, schedule: str, timeout: float) -> dict[str, Any]:
    wait_for(
        lambda: runs(demo, schedule), timeout, f"a run of {schedule}", describe=lambda: str(status(demo, schedule))
    )
    (run,) = runs(demo, schedule)
    return run


def feedback_line(ident: int, rating: int, correction: str | None = None) -> str:
    record: dict[str, Any] = {"id": f"r{ident}", "prompt": "How do I reset my password?", "rating": rating}
    record["response"] = "Call us." if rating < 3 else "Open Settings > Account > Reset password."
    if correction:
        record["correction"] = correction
    return json.dumps(record)


def test_negative_feedback_starts_one_run_that_trains_on_it_and_registers_into_the_model(
    demo: Quickstart, tmp_path: Path
) -> None:
    assert demo.cluster
    lines = [feedback_line(1, 1, "Open Settings > Account > Reset password."), feedback_line(2, 2), "{broken"]
    lines += [feedback_line(3, 5), json.dumps({"id": "r4", "prompt": "p", "response": "r", "rating": 9})]
    upload(demo, tmp_path, "feedback/day1.jsonl", "\n".join(lines) + "\n")
    model = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "loop", "namespace": "default"},
        "spec": {
            "baseModel": template(False)["baseModel"],
            "promotion": {"requireEvaluation": False},
            "serving": {"configMap": {"name": "loop-lora"}},
        },
    }
    apply_objects(demo.cluster.api(), [model])
    feedback = {"uri": f"s3://{BUCKET}/feedback/", "minNegative": 2}
    apply_schedule(demo, "loop", suspend=False, model="loop", triggers={"feedback": feedback, "pollSeconds": 5})
    run = one_run(demo, "loop", 120)
    name = run["metadata"]["name"]
    assert run["metadata"]["annotations"]["finetune.dev/run-reasons"] == "2 negative feedback records >= 2"
    assert run["spec"]["dataset"]["uri"].endswith("/runs/1/data/") and run["spec"]["output"]["model"] == "loop"
    # The training set in MinIO: the template's rows, then the feedback's (the correction, the 5-rated answer).
    assert demo.minio
    prefix = run["spec"]["dataset"]["uri"].removeprefix(f"s3://{BUCKET}/")
    stored = demo.minio.client().get_object(BUCKET, prefix + "feedback.jsonl").read().decode()
    assert [json.loads(line)["output"] for line in stored.splitlines()] == [
        "Open Settings > Account > Reset password.",
        "Open Settings > Account > Reset password.",
    ]
    manifest = json.loads(demo.minio.client().get_object(BUCKET, prefix + "manifest.json").read())
    assert set(manifest["files"]) == {"base/support.jsonl", "feedback.jsonl"}
    shown = status(demo, "loop")
    assert shown["feedback"]["pendingNegative"] in (0, 2) and shown["feedback"]["invalid"] == 2
    problems = {c["type"]: c for c in shown["conditions"]}["InputProblems"]
    assert problems["status"] == "True"
    assert (
        "day1.jsonl line 3: invalid JSON" in problems["message"]
        and "line 5: rating 9 is not on the 1-5" in problems["message"]
    )
    wait(demo, "Succeeded", f"ftj/{name}", 420)
    trained = get(demo, FINETUNEJOB.plural, name)["status"]
    print(f"feedback run {name}: {trained['metrics']}")
    # Later polls consumed nothing more: still one run.
    wait_for(lambda: status(demo, "loop").get("check", {}).get("number", 0) >= 3, 90, "two more polls of loop")
    assert len(runs(demo, "loop")) == 1
    assert status(demo, "loop")["feedback"]["pendingNegative"] == 0
    wait_for(lambda: (get(demo, MODEL.plural, "loop").get("status") or {}).get("stable") == 1, 120, "v1 stable")
    configmap = client.CoreV1Api(demo.cluster.api()).read_namespaced_config_map("loop-lora", "default")
    assert json.loads(configmap.data["stable.json"])["uri"] == trained["adapter"]["uri"]


def test_new_data_objects_start_a_run(demo: Quickstart, tmp_path: Path) -> None:
    row = json.dumps({"instruction": "How do I pay?", "input": "", "output": "By card."})
    upload(demo, tmp_path, "incoming/a.jsonl", row + "\n")
    new_data = {"uri": f"s3://{BUCKET}/incoming/", "minObjects": 2}
    apply_schedule(demo, "fresh", triggers={"newData": new_data, "pollSeconds": 10})
    wait_for(lambda: status(demo, "fresh").get("newObjects") == 1, 90, "the first check of fresh")
    assert runs(demo, "fresh") == []
    upload(demo, tmp_path, "incoming/b.jsonl", row + "\n")
    run = one_run(demo, "fresh", 90)
    assert run["metadata"]["annotations"]["finetune.dev/run-reasons"] == "2 new data objects >= 2"


def test_drifted_documents_start_a_run_and_undrifted_ones_do_not(demo: Quickstart, tmp_path: Path) -> None:
    assert demo.minio
    support = (Path(demo.workdir) / "assets").rglob("support.jsonl")
    same = " ".join(json.loads(line)["output"] for line in next(support).read_text().splitlines()[:40])
    upload(demo, tmp_path, "docs-same/manual.txt", same)
    drift = {"uri": f"s3://{BUCKET}/docs-same/", "threshold": 0.5}
    apply_schedule(demo, "calm", triggers={"drift": drift, "pollSeconds": 10})
    wait_for(lambda: status(demo, "calm").get("drift"), 90, "calm's drift score")
    calm = status(demo, "calm")["drift"]["score"]
    upload(demo, tmp_path, "docs-new/billing.md", "# Billing\nInvoices, refunds, VAT numbers and SEPA mandates.\n")
    drift = {"uri": f"s3://{BUCKET}/docs-new/", "threshold": 0.5}
    apply_schedule(demo, "drifting", triggers={"drift": drift, "pollSeconds": 10})
    run = one_run(demo, "drifting", 90)
    score = status(demo, "drifting")["drift"]["score"]
    print(f"drift: the dataset's own answers {calm:.3f}, a billing page {score:.3f} (threshold 0.5)")
    assert calm < 0.5 < score
    assert run["metadata"]["annotations"]["finetune.dev/run-reasons"] == f"drift {score:.2f} > 0.5"
    wait_for(lambda: status(demo, "calm")["check"]["number"] >= 3, 60, "three checks of calm")
    assert runs(demo, "calm") == []


def test_the_manual_trigger_survives_an_operator_restart_and_starts_exactly_one_run(demo: Quickstart) -> None:
    assert demo.cluster and demo.operator
    apply_schedule(demo, "by-hand")
    wait_for(lambda: status(demo, "by-hand").get("conditions"), 30, "by-hand to be reconciled")
    kubectl = demo.kubectl("annotate", "fts/by-hand", "finetune.dev/run-now=first", "--overwrite")
    assert kubectl.returncode == 0, kubectl.stderr
    wait_for(lambda: status(demo, "by-hand").get("check", {}).get("state") == "Checking", 30, "the check to start")
    demo.operator.stop()  # between the trigger and the run: the check finishes while no operator runs
    batch = client.BatchV1Api(demo.cluster.api())
    job = status(demo, "by-hand")["check"]["job"]
    wait_for(lambda: (batch.read_namespaced_job(job, "default").status.succeeded or 0) == 1, 120, "the check Job")
    demo.operator.start().wait_ready()
    run = one_run(demo, "by-hand", 60)
    assert run["metadata"]["name"] == "by-hand-1"
    assert run["metadata"]["annotations"]["finetune.dev/run-reasons"] == "manual"
    time.sleep(5)
    assert len(runs(demo, "by-hand")) == 1


def test_a_missing_prefix_is_named_and_the_schedule_keeps_checking(demo: Quickstart) -> None:
    feedback = {"uri": f"s3://{BUCKET}/nowhere/", "minNegative": 1}
    apply_schedule(demo, "missing", triggers={"feedback": feedback, "pollSeconds": 5})
    wait_for(lambda: status(demo, "missing").get("check", {}).get("number", 0) >= 2, 90, "two checks of missing")
    shown = status(demo, "missing")
    conditions = {c["type"]: c for c in shown["conditions"]}
    expected = f"triggers.feedback.uri: s3://{BUCKET}/nowhere/: no such object or prefix"
    assert shown["problems"] == [expected] and conditions["InputProblems"]["message"] == expected
    assert conditions["Scheduled"]["status"] == "True" and conditions["CheckFailed"]["status"] == "False"
    assert runs(demo, "missing") == []


def test_an_invalid_cron_expression_is_refused_at_admission(demo: Quickstart) -> None:
    with pytest.raises(ApiException) as refused:
        apply_schedule(demo, "bad-cron", schedule="61 * * * *")
    assert refused.value.status == 422
    assert "spec.schedule: Invalid value" in refused.value.body and "not a valid cron expression" in refused.value.body


def test_a_cron_time_starts_one_run(demo: Quickstart) -> None:
    # Applied by the fixture, first, so the wait for the next minute overlaps the other tests.
    run = one_run(demo, "nightly", 150)
    assert run["metadata"]["annotations"]["finetune.dev/run-reasons"] == "schedule"
    shown = status(demo, "nightly")
    assert shown["lastRun"]["name"] == run["metadata"]["name"] and shown["nextScheduleTime"]
