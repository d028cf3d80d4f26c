"""Reporting to the FineTuneJob or EvalRun: live progress patches (best effort) and the final result (contract)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import TERMINATION_MESSAGE_LIMIT, ResourceRef, TrainerResult

log = logging.getLogger("finetune_trainer")
TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class ProgressReporter:
    """Merge-patches status.progress (and status.checkpoint) of the trainer's own resource.

    At most one patch per `interval` seconds unless forced; a failed patch is logged and forgotten:
    progress is informative, never a reason to stop training.
    """

    def __init__(
        self, resource: ResourceRef | None, interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.resource = resource
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")
        self._api: Any = None
        self.sent = 0

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = client.CustomObjectsApi()
        return self._api

    def report(self, progress: dict[str, Any], checkpoint: dict[str, Any] | None = None, force: bool = False) -> bool:
        if self.resource is None:
            return False
        now = self.clock()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        status: dict[str, Any] = {
            "progress": {**progress, "updateTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        }
        if checkpoint:
            status["checkpoint"] = checkpoint
        r = self.resource
        try:
            self._client().patch_namespaced_custom_object_status(
                r.group, r.version, r.namespace, r.plural, r.name, {"status": status}
            )
        except Exception as error:  # never fatal: see the class docstring
            log.warning("progress report to %s/%s failed: %s", r.namespace, r.name, error)
            return False
        self.sent += 1
        return True


def last_logged(history: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    """The newest entry of a Trainer's log_history that has `key` ({} when none has): what progress
    reports while training and the result keeps at the end read from the same entries."""
    return next((entry for entry in reversed(history) if key in entry), {})


def encode_result(result: TrainerResult) -> str:
    """The result as JSON within the kubelet's 4 KiB termination-message limit, shedding detail if needed."""
    text = result.model_dump_json(by_alias=True, exclude_none=True)
    for drop in ("provenance", "metrics", "checkpoint"):
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            break
        result = result.model_copy(update={drop: None})
        text = result.model_dump_json(by_alias=True, exclude_none=True)
    evaluation = result.evaluation
    while len(text.encode()) > TERMINATION_MESSAGE_LIMIT and evaluation is not None and evaluation.results:
        # The summary (what thresholds check) always fits; per-benchmark rows stay in the report.
        evaluation = evaluation.model_copy(update={"results": evaluation.results[:-1], "results_truncated": True})
        result = result.model_copy(update={"evaluation": evaluation})
        text = result.model_dump_json(by_alias=True, exclude_none=True)
    dataset = result.dataset
    while (
        len(text.encode()) > TERMINATION_MESSAGE_LIMIT and dataset is not None and (dataset.samples or dataset.failures)
    ):
        # The counts and the output always fit; samples go first, then the named failures (the log lists all).
        field = "samples" if dataset.samples else "failures"
        dataset = dataset.model_copy(update={field: getattr(dataset, field)[:-1]})
        result = result.model_copy(update={"dataset": dataset})
        text = result.model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and result.message:
        result = result.model_copy(update={"message": result.message[:1000]})
        text = result.model_dump_json(by_alias=True, exclude_none=True)
    return text


def result_path(environ: Mapping[str, str], workdir: Path, requested: Path | None = None) -> Path:
    """Where the result goes: `--result`, else $FINETUNE_TERMINATION_LOG, else the kubelet's termination
    log when there is one (the kubelet mounts /dev/termination-log into every container), else the
    workdir. Outside a pod nothing is written under /dev: root could create the file on the host."""
    if requested is not None:
        return requested
    if environ.get(TERMINATION_LOG_ENV):
        return Path(environ[TERMINATION_LOG_ENV])
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else workdir / "result.json"


def write_result(result: TrainerResult, path: Path) -> Path:
    try:
        path.write_text(encode_result(result))
    except OSError as error:
        log.warning("could not write the result to %s: %s", path, error)
    return path
