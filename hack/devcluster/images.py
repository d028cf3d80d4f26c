"""The images the real node runs: built from our Dockerfiles by hack/build-images.sh, cached by content."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .controlplane import CACHE_DIR, REPO_ROOT


@dataclass(frozen=True)
class BuiltImages:
    operator: str
    trainer: str
    pause: str
    stand_in_trainer: str
    """The integration tests' stand-in trainer (tests/integration/stand-in.Dockerfile), not a product image."""
    kueue: str
    """Kueue's manager, built from its Go module (hack/devcluster/kueue.py runs it)."""
    archives: dict[str, Path]
    """Reference -> `docker save` archive, which the node imports unless containerd has it."""
    ids: dict[str, str]
    """Reference -> image ID (its config's digest): what the kubelet reports as a container's imageID
    for an image without a registry digest."""


def built_images(log: Path | None = None) -> BuiltImages:
    """Build what changed (nothing, for an unchanged tree) and return the references.

    The build's progress goes to `log` (or this process's stderr); a failure raises with its tail."""
    sink = log.open("ab") if log else None
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-images.sh")],
        stdout=subprocess.PIPE,
        stderr=sink,
        env={**os.environ, "FINETUNE_CACHE": str(CACHE_DIR)},
        check=False,
    )
    if sink:
        sink.close()
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"hack/build-images.sh failed ({done.returncode}):\n{tail}")
    refs = dict(line.split("=", 1) for line in done.stdout.decode().splitlines() if "=" in line)
    names = ("OPERATOR", "TRAINER", "PAUSE", "STAND_IN", "KUEUE")
    return BuiltImages(
        operator=refs["OPERATOR_IMAGE"],
        trainer=refs["TRAINER_IMAGE"],
        pause=refs["PAUSE_IMAGE"],
        stand_in_trainer=refs["STAND_IN_IMAGE"],
        kueue=refs["KUEUE_IMAGE"],
        archives={refs[f"{n}_IMAGE"]: Path(refs[f"{n}_ARCHIVE"]) for n in names},
        ids={refs[f"{n}_IMAGE"]: refs[f"{n}_ID"] for n in names},
    )
