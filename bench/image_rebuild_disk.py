"""Disk an image rebuild needs: how far free space falls below where it started while
`hack/build-images.sh` rebuilds the images for a source change, for two versions of the script side by
side from the same cache.

    python bench/image_rebuild_disk.py --before 7732aab   # that commit's script, then this tree's

Each version runs in a throwaway clone (this tree's uncommitted changes applied for "after") with one
line added to README.md, which every image's content hash takes in, so the operator, trainer and
stand-in images are rebuilt as after any source change. Free space on the cache's filesystem is
sampled every 0.5 s. The figures depend on what the cache holds when it starts (above all, whether
the node's containerd holds a previous trainer build), so compare rows of one run only. Needs root
and the tools `make test` builds; it rebuilds the trainer image twice (about 4 min each here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune-operator"))
GB = 1e9


def clone(rev: str | None, into: Path, marker: str) -> Path:
    """A clone of HEAD (with this tree's changes when `rev` is None) or of `rev`, README marked."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(into)], check=True)
    if rev:
        subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    else:
        diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True, check=True).stdout
        if diff:
            subprocess.run(["git", "-C", str(into), "apply"], input=diff, check=True)
    with (into / "README.md").open("a") as readme:
        readme.write(f"\n<!-- {marker} -->\n")
    return into


def measure(tree: Path) -> dict[str, float]:
    """Run the tree's build script; wall time, the worst fall in free space, and the change at the end."""
    start = shutil.disk_usage(CACHE).free
    lowest = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            lowest[0] = min(lowest[0], shutil.disk_usage(CACHE).free)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    env = {**os.environ, "PY": sys.executable, "FINETUNE_CACHE": str(CACHE)}
    subprocess.run(["bash", str(tree / "hack" / "build-images.sh")], cwd=tree, env=env, check=True)
    wall = time.monotonic() - began
    done.set()
    sampler.join()
    end = shutil.disk_usage(CACHE).free
    return {
        "wall_s": round(wall),
        "worst_gb": round((start - min(lowest[0], end)) / GB, 1),
        "freed_gb": round((end - start) / GB, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit whose hack/build-images.sh to compare with")
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="rebuild-disk-") as scratch:
        for label, rev in (("before", args.before), ("after", None)):
            tree = clone(rev, Path(scratch) / label, f"bench/image_rebuild_disk.py {label} {time.time()}")
            rows[label] = measure(tree)
            print(
                f"{label}: {rows[label]['wall_s']:.0f} s, free space at worst {rows[label]['worst_gb']} GB"
                f" below the start, {rows[label]['freed_gb']:+} GB at the end",
                flush=True,
            )
    sys.path.insert(0, str(REPO / "bench"))
    from record import record

    figures = {f"{label} {key}": value for label, row in rows.items() for key, value in row.items()}
    record("image_rebuild_disk.py", {"before": args.before, **figures}, enabled=not args.no_record)


if __name__ == "__main__":
    main()
