"""What every kind's controller shares: the shape of a controller, and how it reads kopf's indices.

A controller is pure: `gather(body, indices, settings)` picks what it needs out of the indices (never
the API), `plan(inputs, now)` decides. The generic loop (reconciler.py) reads the resource, runs
both, executes the plan and schedules a recheck.

The indices (kopf keeps them up to date from its watches, handlers/indices.py registers them):
trainer Jobs and Pods by their owner's uid, every resource of our kinds by (namespace, name) as
watched, EvalRuns by the FineTuneJob their fineTuneJobRef names, and FineTuneJobs by the one whose
adapter they start from (spec.adapter.fineTuneJobRef), FineTuneJobs by the Model they publish into
(spec.output.model), FineTuneJobs by the FineTuneSchedule whose run they are (its label), and FineTuneJobs
and EvalRuns by the Datasets their datasetRefs name. One more
"index" is not kopf's: `observed`, the objects of other projects
a controller reads (Controller.observe: a KServe LLMInferenceService, whose CRD may not be installed,
so no watch could be set up for it at start), read by the reconcile loop just before gather.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from pydantic import ValidationError

from ..api import KINDS, Kind
from ..api.common import AdapterSource, ResolvedDataset, SecretRef
from ..api.dataset import DatasetSpec, split_uri
from ..api.finetunejob import FineTuneJobSpec
from ..config import OperatorSettings
from ..plan import Plan
from ..status import Outcome

TRAINER_JOBS = "trainer_jobs"
TRAINER_PODS = "trainer_pods"
EVALRUNS_BY_JOB = "evalruns_by_job"
FINETUNEJOBS_BY_ADAPTER_JOB = "finetunejobs_by_adapter_job"
FINETUNEJOBS_BY_MODEL = "finetunejobs_by_model"
FINETUNEJOBS_BY_SCHEDULE = "finetunejobs_by_schedule"
FINETUNEJOBS_BY_DATASET = "finetunejobs_by_dataset"
EVALRUNS_BY_DATASET = "evalruns_by_dataset"
OBSERVED = "observed"


def watched_index(kind: Kind) -> str:
    """The index of a kind's resources as watched, keyed by (namespace, name)."""
    return f"watched_{kind.plural}"


Indices = Mapping[str, Mapping[Any, Iterable[Any]]]
"""kopf's indices by name: key -> the values indexed under it (a live view, read when a reconcile runs)."""


@dataclass(frozen=True, slots=True)
class Packed:
    """An indexed body kept as its compact JSON, decoded when a reconcile reads it.

    The indices hold a body per trainer Job, Pod and resource for as long as these live; decoded,
    each costs about five times its JSON in Python objects (every key a string of its own), which
    was most of the operator's memory per live resource. A reconcile reads a handful of them."""

    text: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Packed:
        return cls(json.dumps(body, separators=(",", ":")))

    def unpack(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.text))


def children_of(indices: Indices, body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The trainer Jobs and Pods indexed under this resource's uid."""
    uid = body["metadata"]["uid"]
    jobs, pods = indices[TRAINER_JOBS].get(uid, []), indices[TRAINER_PODS].get(uid, [])
    return [job.unpack() for job in jobs], [pod.unpack() for pod in pods]


def watched(indices: Indices, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
    """A resource of ours as last watched, or None when the watch has not seen it (or it is gone)."""
    packed = next(iter(indices[watched_index(kind)].get((namespace, name), [])), None)
    return packed.unpack() if packed is not None else None


@dataclass(frozen=True)
class Gathered:
    """What every kind that runs Jobs plans from: the resource, its trainer Jobs and Pods, the settings.
    A kind's own Inputs add what else it reads (another resource, as watched)."""

    body: Mapping[str, Any]
    jobs: Sequence[Mapping[str, Any]]
    pods: Sequence[Mapping[str, Any]]
    settings: OperatorSettings


InputsT = TypeVar("InputsT")


@dataclass(frozen=True)
class Controller(Generic[InputsT]):
    """One kind's policy, as the generic reconcile loop and the handlers use it."""

    kind: Kind
    gather: Callable[[Mapping[str, Any], Indices, OperatorSettings], InputsT]
    plan: Callable[[InputsT, datetime], Plan]
    plan_deletion: Callable[[InputsT, datetime], Plan] | None = None
    """The finalizer's work on a resource being deleted; None: the garbage collector's alone."""
    finalizer: str | None = None
    """The finalizer whose holder's deletion must be planned (its deletion events wake a reconcile)."""
    mirrored: Callable[[Mapping[str, Any]], tuple[object, ...]] = lambda _: ()
    """What other resources read of this one: only a change of it wakes `dependents`."""
    dependents: Callable[[str | None, Mapping[str, Any], Indices], list[tuple[Kind, str]]] = lambda *_: []
    """(kind, name) in the same namespace of the resources to wake when `mirrored` changed,
    given the event type and body."""
    pending: Callable[[Mapping[str, Any]], bool] = lambda _: False
    """Whether an event of the resource carries news that a new spec generation does not show (a
    FineTuneSchedule's run-now annotation): it then wakes a reconcile too."""
    observe: Callable[[Mapping[str, Any]], Sequence[tuple[str, str]]] = lambda _: ()
    """(kind name, name) in the resource's namespace of objects no watch covers that its plan reads:
    the loop GETs each before gather and hands them over as the `observed` index."""


def observed(indices: Indices, kind: str, name: str) -> dict[str, Any] | None:
    """An object Controller.observe asked for, as just read; None when it does not exist."""
    return next(iter(indices.get(OBSERVED, {}).get((kind, name), [])), None)


def needs_reconcile(event_type: str | None, body: Mapping[str, Any], finalizer: str | None = None) -> bool:
    """Whether a watch event of the resource itself calls for a reconcile.

    Level-triggered: everything after the first reconcile of a spec generation is driven by the
    children's events (and timed rechecks), so the resource's own events matter only when it is
    listed (operator start: anything may have happened meanwhile), when its spec generation is not
    yet observed (created, or changed), or when it is being deleted holding our finalizer. Its
    other events are our own status patches and the trainer's progress reports: no reconcile,
    which is also why kopf's change-detecting handlers (and their annotation patches) are not used.
    """
    if event_type == "DELETED":
        return False
    meta = body.get("metadata") or {}
    if event_type is None:
        return True
    if meta.get("deletionTimestamp"):
        return finalizer is not None and finalizer in (meta.get("finalizers") or [])
    observed = (body.get("status") or {}).get("observedGeneration")
    return observed is None or observed != meta.get("generation")


INDEX_NAMES: tuple[str, ...] = (
    TRAINER_JOBS,
    TRAINER_PODS,
    EVALRUNS_BY_JOB,
    FINETUNEJOBS_BY_ADAPTER_JOB,
    FINETUNEJOBS_BY_MODEL,
    FINETUNEJOBS_BY_SCHEDULE,
    FINETUNEJOBS_BY_DATASET,
    EVALRUNS_BY_DATASET,
    *(watched_index(k) for k in KINDS),
)
"""Every index a reconcile reads (handlers/ registers each under this name)."""


def indices_in(handler_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's indices out of a handler's arguments. They are live views, read by the queued
    reconcile when it runs; the rest of the arguments (the event's body) must not be kept for it."""
    return {index: handler_kwargs[index] for index in INDEX_NAMES}


@dataclass(frozen=True)
class PublishedAdapter:
    """A referenced FineTuneJob's current adapter, as the resources that read it use it."""

    source: AdapterSource
    job: FineTuneJobSpec
    attempt: int | None


def published_adapter(name: str, ftj: Mapping[str, Any] | None) -> PublishedAdapter | Outcome:
    """The adapter FineTuneJob `name` published, or why there is none yet (Pending) or will be none (Failed);
    what an EvalRun's fineTuneJobRef and a FineTuneJob's spec.adapter.fineTuneJobRef wait for."""
    if ftj is None:
        return Outcome("Pending", "WaitingForFineTuneJob", f"FineTuneJob {name} does not exist (yet)")
    status = ftj.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        why = next((c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Failed"), "")
        return Outcome("Failed", "FineTuneJobFailed", f"FineTuneJob {name} failed: {why}"[:2048])
    adapter = (status.get("adapter") or {}).get("uri")
    if phase != "Succeeded" or not adapter:
        return Outcome(
            "Pending", "WaitingForFineTuneJob", f"waiting for FineTuneJob {name} to succeed (it is {phase or 'new'})"
        )
    try:
        job = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
    except ValidationError:
        return Outcome("Failed", "FineTuneJobFailed", f"FineTuneJob {name} has an invalid spec")
    return PublishedAdapter(AdapterSource(uri=adapter, secret_ref=job.output.secret_ref), job, status.get("attempt"))


@dataclass(frozen=True)
class DatasetSplit:
    """A datasetRef resolved: the split file, the Secret that reads it, and what the status records."""

    uri: str
    secret_ref: SecretRef | None
    record: ResolvedDataset


def _failed_message(status: Mapping[str, Any]) -> str:
    return str(next((c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Failed"), ""))


def dataset_split(
    name: str,
    split: str,
    dataset: Mapping[str, Any] | None,
    recorded: ResolvedDataset | None = None,
    benchmark: str | None = None,
) -> DatasetSplit | Outcome:
    """The split of Dataset `name` to read, or why there is none yet (Pending) or will be none (Failed); what a
    FineTuneJob's and an EvalRun's datasetRef wait for. `recorded`: what the reader's attempt in flight resolved
    before, which it keeps even if the Dataset is being rebuilt meanwhile."""
    secret = None
    if dataset is not None:
        try:
            secret = DatasetSpec.model_validate(dataset.get("spec") or {}).output.secret_ref
        except ValidationError:
            return Outcome("Failed", "DatasetFailed", f"Dataset {name} has an invalid spec")
    if recorded is not None and recorded.name == name:
        return DatasetSplit(recorded.uri, secret, recorded)
    if dataset is None:
        return Outcome("Pending", "WaitingForDataset", f"Dataset {name} does not exist (yet)")
    status = dataset.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed":
        return Outcome("Failed", "DatasetFailed", f"Dataset {name} failed: {_failed_message(status)}"[:2048])
    prefix = (status.get("output") or {}).get("uri")
    if phase != "Succeeded" or not prefix:
        why = f"waiting for Dataset {name} to be Ready (it is {phase or 'new'})"
        return Outcome("Pending", "WaitingForDataset", why)
    uri = split_uri(prefix, split)
    record = ResolvedDataset(name=name, uri=uri, attempt=status.get("attempt"), benchmark=benchmark)
    return DatasetSplit(uri, secret, record)
