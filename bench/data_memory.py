"""Peak memory of data preparation: a normal dataset against one 50 MB row, with this tree's code and,
side by side in the same run, another checkout's.

    python bench/data_memory.py                          # this tree: the quickstart data vs one 50 MB row
    python bench/data_memory.py --against /tmp/before    # and the same two with that checkout's code

Each case runs `finetune_trainer.data.prepare` (load -> normalise -> refine -> tokenise -> pack) in a
fresh interpreter and reports its peak RSS (ru_maxrss) and wall time. The tokenizer is the tiny
byte-level BPE one the tests use; maxSeqLength is 512.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

ROW_MB = 50
MAX_LENGTH = 512
CHILD = """
import json, resource, sys, time
from pathlib import Path
from finetune_operator.api.finetunejob import DatasetSource
from finetune_trainer.data import prepare
from tinymodel import corpus_of, make_tokenizer, support_rows
path = Path(sys.argv[1])
tokenizer = make_tokenizer(corpus_of(support_rows()))
started = time.perf_counter()
data = prepare(path, DatasetSource(uri=f"file://{path}"), tokenizer, max_length=int(sys.argv[2]), batch_size=4,
               seed=0, packing=True)
print(json.dumps({"seconds": time.perf_counter() - started, "summary": data.summary(),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def datasets(folder: Path) -> dict[str, Path]:
    from tinymodel import support_rows, write_jsonl

    huge = {"instruction": "Summarise the log below.", "input": "", "output": "line " * (ROW_MB * 1024 * 1024 // 5)}
    return {
        "quickstart (32 rows)": write_jsonl(support_rows(), folder / "normal.jsonl"),
        f"one {ROW_MB} MB row": write_jsonl([huge], folder / "huge.jsonl"),
    }


def revision(tree: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def measure(tree: Path, dataset: Path) -> dict[str, object]:
    paths = [tree / "trainer_image", tree / "operator", REPO / "hack"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(dataset), str(MAX_LENGTH)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--against", type=Path, help="another checkout whose code is measured beside this one")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    from record import record

    trees = {
        "this tree": REPO,
        **({f"{revision(args.against)} ({args.against})": args.against} if args.against else {}),
    }
    with tempfile.TemporaryDirectory() as folder:
        cases = datasets(Path(folder))
        print(f"{'code':<22} {'dataset':<22} {'peak RSS MB':>12} {'seconds':>8}  summary")
        for label, tree in trees.items():
            for name, path in cases.items():
                result = measure(tree, path)
                peak, seconds = result.get("peak_mb"), result.get("seconds")
                shown = f"{peak:12.0f} {seconds:8.1f}" if isinstance(peak, float) and isinstance(seconds, float) else ""
                print(f"{label:<22} {name:<22} {shown}  {result.get('summary') or result.get('error')}")
                record(
                    "data_memory.py",
                    {"code": label, "dataset": name, "peak RSS MB": peak or "-", "seconds": seconds or "-"},
                    enabled=not args.no_record,
                )


if __name__ == "__main__":
    main()
