"""`finetune-trainer train` with several ranks: torchrun under a PID 1 that keeps the contract.

The operator sets torchrun's own PET_* variables (manifests/launch.py); this process starts torchrun
with them, one worker per rank in this pod, and stays as the container's PID 1 for what torchrun
does not do for us:

- the termination message: each worker writes its result to `<workdir>/ranks/rank-<n>.json`, and
  this pod's result is its first failed rank's (named in the message), else its lowest rank's;
- the exit code: torchrun exits 1 for any failed worker, which would turn bad input (exit 2, not
  retried) into a retry; the failed rank's own code is kept;
- SIGTERM is passed on to torchrun, which passes it to the workers (they checkpoint and stop);
- pod 1 may start before pod 0 has a DNS name; it waits for it (up to the collective timeout).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune_operator.api.contract import TrainerResult

from .errors import EXIT_RETRIABLE, RendezvousFailed
from .report import write_result

log = logging.getLogger("finetune_trainer")
RANK_RESULTS_ENV = "FINETUNE_RANK_RESULTS"


def wanted_ranks(environ: Mapping[str, str]) -> int:
    """Ranks the operator asked for (PET_NNODES x PET_NPROC_PER_NODE); 1 when it set neither."""
    return int(environ.get("PET_NNODES", "1")) * int(environ.get("PET_NPROC_PER_NODE", "1"))


def is_worker(environ: Mapping[str, str]) -> bool:
    """Started by torchrun (which sets TORCHELASTIC_RUN_ID for its workers)."""
    return "TORCHELASTIC_RUN_ID" in environ


def rank_result_paths(directory: Path, rank: int) -> tuple[Path, Path]:
    return directory / f"rank-{rank}.json", directory / f"rank-{rank}.exit"


def wait_for_address(host: str, timeout_seconds: float, clock: Any = time.monotonic) -> None:
    """Until `host` resolves: a group's pods start in any order, and pod 0's DNS record appears
    only once it has an IP address."""
    deadline = clock() + timeout_seconds
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except OSError as error:
            if clock() >= deadline:
                raise RendezvousFailed(
                    f"the rendezvous host {host} did not resolve within {timeout_seconds:.0f}s "
                    f"(distributed.timeoutSeconds): {error}"
                ) from error
            time.sleep(1.0)


def pod_result(directory: Path, torchrun_code: int) -> tuple[TrainerResult, int]:
    """This pod's result and exit code, from its workers' result files and torchrun's exit code."""
    results: list[tuple[int, float, TrainerResult, int]] = []
    for path in directory.glob("rank-*.json"):
        rank = int(path.stem.removeprefix("rank-"))
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            raw = None  # a worker killed while writing: counted as one that wrote nothing
        exit_file = rank_result_paths(directory, rank)[1]
        code = int(exit_file.read_text()) if exit_file.exists() else EXIT_RETRIABLE
        if raw is not None:
            results.append((rank, path.stat().st_mtime, TrainerResult.model_validate(raw), code))
    failed = sorted((r for r in results if r[2].result == "failed"), key=lambda r: r[1])
    if failed:
        rank, _, result, code = failed[0]
        message = f"rank {rank}: {result.message or result.reason or 'failed'}"
        return result.model_copy(update={"message": message[:2048], "rank": rank}), code or EXIT_RETRIABLE
    if torchrun_code != 0 or not results:
        # A worker killed before it could write (SIGKILL, the OOM killer) leaves only torchrun's code.
        written = sorted(r[0] for r in results)
        message = f"a rank died without a result (torchrun exit code {torchrun_code}; results from ranks {written})"
        return TrainerResult(result="failed", message=message), torchrun_code or EXIT_RETRIABLE
    rank, _, result, _ = min(results, key=lambda r: r[0])
    return result, 0


def torchrun_command(argv: Sequence[str]) -> list[str]:
    # torchrun takes --nnodes, --nproc-per-node, --node-rank, --master-addr/port from PET_*; a failed
    # worker fails the pod (no in-pod restarts: the operator restarts the whole group).
    return [sys.executable, "-m", "torch.distributed.run", "--max-restarts", "0", "-m", "finetune_trainer.cli", *argv]


def run_ranks(
    argv: Sequence[str], workdir: Path, target: Path, environ: Mapping[str, str], timeout_seconds: int
) -> int:
    """Run this pod's ranks under torchrun; write the pod's result to `target`; the pod's exit code."""
    directory = workdir / "ranks"
    directory.mkdir(parents=True, exist_ok=True)
    master = environ.get("PET_MASTER_ADDR", "127.0.0.1")
    wait_for_address(master, timeout_seconds)
    log.info(
        "starting %s ranks in this pod (%s pods; rendezvous at %s:%s)",
        environ.get("PET_NPROC_PER_NODE", "1"),
        environ.get("PET_NNODES", "1"),
        master,
        environ.get("PET_MASTER_PORT", ""),
    )
    child = subprocess.Popen(torchrun_command(argv), env={**environ, RANK_RESULTS_ENV: str(directory)})

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    code = child.wait()
    result, exit_code = pod_result(directory, code)
    write_result(result, target)
    log.info("pod result (exit code %d): %s", exit_code, result.message or result.result)
    return exit_code
