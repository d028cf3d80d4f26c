"""What a recipe reads before it runs: one store per credential role, models checked against their manifests.

Shared by every recipe, so a base model, an adapter or a dataset is fetched and verified the same
way whichever objective asked for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import SecretRole, StorageSettings

from .errors import InputError
from .storage import Store, fetch, fetch_verified, read_manifest, store_for


class Stores:
    """One store per credential role (BASE_MODEL, DATASET, OUTPUT, ...), made on first use and reused."""

    def __init__(self, settings: StorageSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = environ
        self._stores: dict[str, Store] = {}

    def __call__(self, role: SecretRole, uri: str) -> Store:
        if role not in self._stores:
            self._stores[role] = store_for(uri, role, self._settings, self._environ)
        return self._stores[role]


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    revision: str
    """What identifies the weights: the manifest's digest, the hub revision, or the files' hash."""


def _digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def fetch_model(store: Store, uri: str, dest: Path) -> FetchedModel:
    """A Hugging Face model folder: verified file by file when it was published with a manifest (ours),
    as it is otherwise (hf://, a folder a user uploaded)."""
    manifest = read_manifest(store, uri)
    if manifest is not None:
        fetch_verified(store, uri, dest)
        revision = _digest(manifest)
    else:
        revision = fetch(store, uri, dest)
        if uri.startswith("hf://") and "@" in uri:
            revision = uri.rsplit("@", 1)[1].split("/", maxsplit=1)[0]
    if not (dest / "config.json").exists():
        raise InputError(f"{uri}: not a Hugging Face model folder (no config.json)")
    return FetchedModel(dest, revision)
