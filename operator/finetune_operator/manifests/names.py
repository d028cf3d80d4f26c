"""Deterministic names and labels of everything the operator creates.

Names derive from the owner's name, uid and attempt, so a handler that runs twice (after a crash, a
retry, or on two replicas) computes the same name and adopts the existing object instead of creating
a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api import API_VERSION, kind_named

MANAGED_BY = "finetune-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER_UID = "finetune.dev/owner-uid"
LABEL_ATTEMPT = "finetune.dev/attempt"
LABEL_RESTART = "finetune.dev/restart"
"""Which group restart of its attempt a Job is (absent: 0, the first)."""
ANNOTATION_COUNTED_RESTARTS = "finetune.dev/counted-restarts"
"""Restarts before this Job that counted against spec.backoffLimit (a preempted group's restart does not)."""
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"
ANNOTATION_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ANNOTATION_SPEC_HASH = "finetune.dev/spec-hash"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ARTIFACTS_FINALIZER = "finetune.dev/delete-artifacts"
"""Held by a FineTuneJob with output.deletePolicy Delete until its stored objects are deleted."""
TRAINER_CONTAINER = "trainer"

_MAX_NAME = 63


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the children (FineTuneJob or EvalRun)."""

    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(kind=body["kind"], namespace=meta["namespace"], name=meta["name"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        """Controller owner reference: children are garbage-collected with the owner.

        Set here rather than with kopf.adopt(), which also copies the owner's labels onto children; a
        GitOps tool that tracks objects by label (Argo CD's app.kubernetes.io/instance) would then
        claim and prune the Jobs it never declared.
        """
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def bounded_name(base: str, suffix: str, limit: int = _MAX_NAME) -> str:
    room = limit - len(suffix)
    return base[:room].rstrip("-.") + suffix


def job_name(owner: Owner, attempt: int, restart: int = 0, limit: int = _MAX_NAME) -> str:
    """<name>-<uid5>-<attempt>[-r<restart>], at most `limit` (63) characters: the Job controller puts it
    in a pod label. An Indexed Job's pods take <job>-<index> as hostname, so theirs leave room for it."""
    suffix = f"-{owner.uid[:5]}-{attempt}" + (f"-r{restart}" if restart else "")
    return bounded_name(owner.name, suffix, limit)


def ranks_service_name(owner: Owner) -> str:
    """The headless Service whose subdomain gives a multi-node job's pods their DNS names."""
    return bounded_name(owner.name, f"-{owner.uid[:5]}-ranks")


def trainer_account_name(owner: Owner) -> str:
    """ServiceAccount, Role and RoleBinding of the trainer pods; one per owner, shared by attempts."""
    return bounded_name(owner.name, f"-{owner.uid[:5]}-trainer")


def child_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: component,
        kind_named(owner.kind).label: owner.name,
        LABEL_OWNER_UID: owner.uid,
    }


def child_metadata(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": child_labels(owner, component),
        "ownerReferences": [owner.reference()],
    }
