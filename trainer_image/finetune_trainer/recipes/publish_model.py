"""`finetune-trainer publish-model`: a Model's store copy.

For each version: fetch its adapter (checked against its own manifest), add the model card and the
loss curve, publish the folder under `<store>/models/<ns>/<model>/v<N>/` (files first, manifest.json
last), and only then point stable.json at the stable version, so a reader never follows a pointer to
a folder without a manifest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from finetune_operator.api.contract import (
    STABLE_POINTER,
    ModelPublishRunSpec,
    TrainerResult,
    version_folder,
    version_role,
)
from finetune_operator.api.model import ModelVersion

from ..model_card import LOSS_CURVE, TRAINER_STATE, loss_curve_svg, loss_series, render_card
from ..storage import MANIFEST, Store, fetch_verified, join, publish, store_for


def add_card(local: Path, run: ModelPublishRunSpec, version: ModelVersion) -> None:
    """Add the card (and the curve, if the run logged a loss) to a fetched adapter folder."""
    (local / MANIFEST).unlink(missing_ok=True)  # the adapter's own; the version's is written last
    state_file = local / TRAINER_STATE
    history = json.loads(state_file.read_text()).get("log_history", []) if state_file.is_file() else []
    train, evaluation = loss_series(history, "loss"), loss_series(history, "eval_loss")
    if train:
        (local / LOSS_CURVE).write_text(loss_curve_svg(train, evaluation))
    card = render_card(run.resource.name, run.resource.namespace, version, has_curve=bool(train))
    (local / "README.md").write_text(card)


def publish_version(
    store: Store, adapter_store: Store, run: ModelPublishRunSpec, version: ModelVersion, workdir: Path
) -> str:
    local = workdir / f"v{version.version}"
    shutil.rmtree(local, ignore_errors=True)
    fetch_verified(adapter_store, version.adapter.uri, local)
    add_card(local, run, version)
    folder = version_folder(run.uri, version.version)
    metadata = {
        "kind": "model-version",
        "model": run.resource.name,
        "namespace": run.resource.namespace,
        "version": version.version,
        "adapter": {"uri": version.adapter.uri, "sha256": version.sha256},
        "registry": version.to_json_dict(),
    }
    publish(store, local, folder, metadata)
    shutil.rmtree(local, ignore_errors=True)
    return folder


def publish_model(run: ModelPublishRunSpec, workdir: Path, environ: Mapping[str, str]) -> TrainerResult:
    store = store_for(run.uri, "OUTPUT", run.storage, environ)
    done = []
    for index, version in enumerate(run.versions):
        adapter_store = store_for(version.adapter.uri, version_role(index), run.storage, environ)
        publish_version(store, adapter_store, run, version, workdir)
        done.append(version.version)
    if run.stable is not None:
        store.write_text(join(run.uri, STABLE_POINTER), json.dumps(run.stable.to_json_dict(), indent=2, sort_keys=True))
    listed = ", ".join(f"v{n}" for n in done) or "no version"
    pointer = f"; stable.json -> v{run.stable.version}" if run.stable else ""
    return TrainerResult(
        result="succeeded",
        message=f"published {listed} under {run.uri}{pointer}",
        published_versions=done,
        stable_version=run.stable.version if run.stable else None,
    )
