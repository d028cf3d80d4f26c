"""The whole flow, as a user runs it: kubectl apply -> operator -> Job -> pod -> real QLoRA -> MinIO -> status."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import tool_path
from devcluster.quickstart import BUCKET, Quickstart
from tests.plugin_runner import browser_page, dashboard

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    demo = Quickstart(tmp_path_factory.mktemp("quickstart")).start(say=lambda _: None)
    yield demo
    demo.stop()


def test_the_dashboard_shows_the_quickstart_live_in_headless_chromium(
    quickstart: Quickstart, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Before the other test applies it: the page is open while the quickstart job is created and trains.

    Proves the page follows a real job through its steps from watches alone and draws the status
    history; it does not judge the look of the page (the screenshots are for people)."""
    assert quickstart.cluster
    shots = Path(os.environ.get("FINETUNE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with dashboard(quickstart.cluster.kubeconfig, "-n", "default") as url, browser_page(url) as (page, outside):
        quickstart.apply_example()
        card = '.job[data-name="quickstart"]'
        seen: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            phase = page.get_attribute(card, "data-phase") if page.query_selector(card) else None
            current = page.query_selector(f"{card} li.current")
            where = f"{phase}:{current.get_attribute('data-step') if current else '-'}"
            if phase and (not seen or seen[-1] != where):
                seen.append(where)
                page.screenshot(path=str(shots / f"dashboard-{len(seen):02d}-{where.replace(':', '-')}.png"))
            if phase in {"Succeeded", "Failed"}:
                break
            time.sleep(0.5)
        status = quickstart.finetunejob()["status"]
        assert status["phase"] == "Succeeded", (seen, status.get("conditions"))
        page.wait_for_function(
            f"document.querySelector('{card} svg.curve').dataset.points == {len(status['progress']['history'])}"
        )
        page.screenshot(path=str(shots / "dashboard-final.png"), full_page=True)
        states = {
            li.get_attribute("data-step"): li.get_attribute("data-state")
            for li in page.query_selector_all(f"{card} li")
        }
        circles = len(page.query_selector_all(f"{card} svg.curve circle"))
        points = status["progress"]["history"]
        drawn_points = int(page.get_attribute(f"{card} svg.curve", "data-points") or 0)
        adapter = page.text_content(f"{card} .adapter")
    print(f"dashboard: states seen {seen}; {len(points)} history points; screenshots in {shots}")
    # It moved through its steps as it ran, seen live (a watch, not a reload).
    assert len(seen) >= 3 and any(s.endswith(":running") for s in seen) and seen[-1] == "Succeeded:-", seen
    assert states == {
        "validated": "done",
        "queued": "done",
        "running": "done",
        "publishing": "done",
        "evaluating": "skipped",
        "registered": "skipped",
    }
    # One circle per loss and per eval loss of each history point: as many points as the status keeps.
    assert drawn_points == len(points) > 5
    assert circles == sum(("loss" in p) + ("evalLoss" in p) for p in points)
    assert adapter == status["adapter"]["uri"]
    assert outside == [], "the page fetched something from outside the dashboard"


def test_quickstart_finetunejob_succeeds_with_its_adapter_in_minio(quickstart: Quickstart) -> None:
    assert quickstart.cluster and quickstart.minio
    kubectl = [str(tool_path("kubectl")), "--kubeconfig", str(quickstart.cluster.kubeconfig)]
    quickstart.apply_example()
    wait = subprocess.run(
        [*kubectl, "wait", "--for=condition=Succeeded", "ftj/quickstart", "--timeout=300s"],
        capture_output=True,
        text=True,
    )
    status = quickstart.finetunejob()["status"]
    assert wait.returncode == 0, (
        f"{wait.stderr}\n{status}\n{quickstart.operator.log()[-3000:] if quickstart.operator else ''}"
    )
    uid = quickstart.finetunejob()["metadata"]["uid"]
    adapter = status["adapter"]["uri"]
    assert adapter == f"s3://{BUCKET}/adapters/default/quickstart/{uid}/attempt-1/adapter/"
    prefix = adapter.removeprefix(f"s3://{BUCKET}/")
    names = {
        o.object_name.removeprefix(prefix)
        for o in quickstart.minio.client().list_objects(BUCKET, prefix=prefix, recursive=True)
    }
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= names
    # The trainer reported progress itself (its own ServiceAccount), and the operator kept it.
    assert status["progress"]["step"] == 100 and status["progress"]["percent"] == 100
    assert status["checkpoint"]["uri"].endswith("/checkpoints/checkpoint-00000100/")
    assert status["metrics"]["evalLoss"] < 5.0  # from ~5.8 for the untrained model
    table = subprocess.run([*kubectl, "get", "ftj"], capture_output=True, text=True).stdout
    assert "Succeeded" in table and adapter in table
