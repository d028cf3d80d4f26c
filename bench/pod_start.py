"""Pod start to first optimizer step: how long `finetune-trainer train` takes from process start until
the first step is done, for the quickstart's tiny model, and where that time goes.

    python bench/pod_start.py            # 3 runs of examples/quickstart/run-spec.yaml on local files

The command is what the trainer pod runs (same entry point, same run spec), minus the image pull and
container start, which belong to the node. Each line the trainer prints is time-stamped on arrival;
phases are split at the trainer's own progress messages. Import costs of the heavy libraries are
measured apart, each in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack")]

MARKERS = (
    ("fetch", "fetching the base model and dataset"),
    ("data", "preparing the dataset"),
    ("model", "loading the base model"),
    ("train", "INFO training"),
    ("first step", "'loss'"),
)


def one_run(spec: Path, workdir: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FINETUNE_TERMINATION_LOG": str(workdir / "result.json")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.cli", "train", "--spec", str(spec), "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen: dict[str, float] = {}
    assert process.stdout is not None
    for line in process.stdout:
        now = time.perf_counter() - started
        for name, marker in MARKERS:
            if name not in seen and marker in line:
                seen[name] = now
        if "first step" in seen:
            process.kill()
            break
    process.wait()
    missing = [name for name, _ in MARKERS if name not in seen]
    if missing:
        raise RuntimeError(f"trainer output lacked {missing}")
    return seen


def import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()

    from tinymodel import make_quickstart

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_quickstart(root)
        spec = root / "run-spec.yaml"
        text = (REPO / "examples" / "quickstart" / "run-spec.yaml").read_text()
        spec.write_text(
            text.replace("/tmp/finetune-quickstart", str(root)).replace("loggingSteps: 5", "loggingSteps: 1")
        )
        runs = [one_run(spec, root / f"work-{i}") for i in range(args.runs)]
    phases = {name: statistics.median(run[name] for run in runs) for name, _ in MARKERS}
    imports = {m: round(import_seconds(m), 2) for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets")}
    print(f"median of {args.runs} runs, seconds since process start:")
    previous, before = 0.0, "process start"
    for name, _ in MARKERS:
        print(f"  {before + ' -> ' + name:<30} {phases[name] - previous:6.2f}   (at {phases[name]:6.2f})")
        previous, before = phases[name], name
    print("import in a fresh interpreter:", ", ".join(f"{k} {v:.2f}s" for k, v in imports.items()))
    from record import record

    record(
        "pod_start.py",
        {"first step s": round(phases["first step"], 2), **{f"at {k} s": round(v, 2) for k, v in phases.items()}},
        enabled=not args.no_record,
    )
    print(json.dumps({"first_step_seconds": round(phases["first step"], 2), "phases": phases, "imports": imports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
