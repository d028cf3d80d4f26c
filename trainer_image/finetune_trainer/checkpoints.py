"""Checkpoints in the store: naming, the resume point, and syncing each one as the Trainer saves it.

A checkpoint is complete only once its manifest is uploaded (storage.publish writes it last); the
newest complete one always survives a sync, so a pod that dies mid-upload loses nothing it had.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .storage import Store, fetch_verified, join, publish, read_manifest

log = logging.getLogger("finetune_trainer")
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(name: str) -> int | None:
    digits = name.removeprefix(CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def newest_checkpoint(store: Store, uri: str) -> tuple[int, str] | None:
    """(step, name) of the newest complete (manifest-bearing) checkpoint an earlier pod of this attempt synced."""
    steps = sorted((s, name) for name in store.list_children(uri) if (s := checkpoint_step(name)) is not None)
    for step, name in reversed(steps):
        if read_manifest(store, join(uri, name)) is not None:
            return step, name
        # upload interrupted before the manifest: not a checkpoint
    return None


def fetch_checkpoint(store: Store, uri: str, name: str, workdir: Path) -> Path:
    local = workdir / "resume" / name
    fetch_verified(store, join(uri, name), local)
    log.info("resuming from %s (step %s)", join(uri, name), checkpoint_step(name))
    return local


class CheckpointSyncer:
    """Uploads a checkpoint (manifest last), then drops older remote ones; tells `synced` where it went."""

    def __init__(self, store: Store, uri: str, synced: Callable[[str, int], None]) -> None:
        self.store = store
        self.uri = uri
        self.synced = synced

    def sync(self, local: Path, step: int) -> None:
        target = join(self.uri, checkpoint_name(step))
        publish(self.store, local, target, {"step": step, "kind": "checkpoint", "trainerVersion": __version__})
        for name in self.store.list_children(self.uri):
            older = checkpoint_step(name)
            if older is not None and older < step:
                self.store.delete_prefix(join(self.uri, name) + "/")
        self.synced(target + "/", step)
        log.info("checkpoint of step %d synced to %s", step, target)
