"""The trainer's identity: a ServiceAccount that may read and patch the status of its own resource, nothing else."""

from __future__ import annotations

from typing import Any

from ..api import GROUP, kind_named
from .names import Owner, child_metadata, trainer_account_name


def build_trainer_service_account(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_metadata(owner, trainer_account_name(owner), "trainer"),
        # The token is mounted only into the trainer pod, which sets automountServiceAccountToken itself.
        "automountServiceAccountToken": False,
    }


def build_trainer_role(owner: Owner) -> dict[str, Any]:
    """`resourceNames` pins the grant to this one object: a trainer cannot touch its neighbours."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_metadata(owner, trainer_account_name(owner), "trainer"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{kind_named(owner.kind).plural}/status"],
                "resourceNames": [owner.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def build_trainer_role_binding(owner: Owner) -> dict[str, Any]:
    name = trainer_account_name(owner)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_metadata(owner, name, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def build_trainer_identity(owner: Owner) -> list[dict[str, Any]]:
    return [build_trainer_service_account(owner), build_trainer_role(owner), build_trainer_role_binding(owner)]
