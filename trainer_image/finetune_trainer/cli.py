"""`finetune-trainer train|eval|cleanup|publish-model|check-schedule|build-dataset|prepare`: the trainer image's
entry points (contract: exit codes, results)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping
from pathlib import Path

from finetune_operator.api.contract import (
    CleanupRunSpec,
    DatasetBuildRunSpec,
    EvaluationRunSpec,
    ModelPublishRunSpec,
    ScheduleCheckRunSpec,
    TrainerResult,
)

from .distributed import Ranks
from .errors import EXIT_RETRIABLE, TrainerError
from .launcher import RANK_RESULTS_ENV, is_worker, rank_result_paths, run_ranks, wanted_ranks
from .report import ProgressReporter, result_path, write_result
from .runspec import load_run_spec
from .storage import store_for

log = logging.getLogger("finetune_trainer")


def _workdir(value: str | None) -> Path:
    path = Path(value or os.environ.get("FINETUNE_WORKDIR") or tempfile.mkdtemp(prefix="finetune-"))
    if is_worker(os.environ):
        path = path / f"rank-{Ranks.from_env(os.environ).rank}"  # ranks in one pod never share a folder
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rank_results(environ: Mapping[str, str]) -> tuple[Path, Path] | None:
    """Where a torchrun worker of launcher.run_ranks writes its result and exit code; None otherwise."""
    if is_worker(environ) and RANK_RESULTS_ENV in environ:
        return rank_result_paths(Path(environ[RANK_RESULTS_ENV]), Ranks.from_env(environ).rank)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer", description="Fine-tune an LLM with QLoRA/LoRA.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "run the whole pipeline and publish the adapter"),
        ("eval", "benchmark a model (and adapter) and publish the report"),
        ("cleanup", "delete everything a deleted FineTuneJob published (output.deletePolicy: Delete)"),
        ("publish-model", "copy a Model's versions into its store folder with their model cards, then stable.json"),
        (
            "check-schedule",
            "check a FineTuneSchedule's store triggers; when a run is due, write its training set",
        ),
        ("build-dataset", "turn a Dataset's documents into chunks and instruction pairs, and publish its splits"),
        ("prepare", "only load, check and tokenise the dataset; print what training would see"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--spec", type=Path, help="run spec file (JSON/YAML); default: $FINETUNE_RUN_SPEC")
        command.add_argument("--workdir", help="scratch folder (default: a new temporary folder)")
        command.add_argument(
            "--result",
            type=Path,
            help="where the result JSON goes (default: $FINETUNE_TERMINATION_LOG; in a pod /dev/termination-log; "
            "else <workdir>/result.json)",
        )
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = _workdir(args.workdir)
    rank_results = _rank_results(os.environ)
    target = rank_results[0] if rank_results else result_path(os.environ, workdir, args.result)
    code = _main(args, arguments, workdir, target)
    if rank_results:
        rank_results[1].write_text(str(code))
    return code


def _main(args: argparse.Namespace, arguments: list[str], workdir: Path, target: Path) -> int:
    try:
        if args.command == "train" and wanted_ranks(os.environ) > 1 and not is_worker(os.environ):
            timeout = load_run_spec(args.spec, os.environ).job.distributed.timeout_seconds
            return run_ranks(arguments, workdir, target, os.environ, timeout)
        result = _run(args, workdir)
    except TrainerError as error:
        log.error("%s: %s", error.reason, error)
        failed = TrainerResult(result="failed", reason=error.reason, message=str(error)[:2048])
        log.error("result written to %s", write_result(failed, target))
        return error.exit_code
    except Exception as error:  # unexpected: retriable, with the traceback in the log
        traceback.print_exc()
        failed = TrainerResult(result="failed", message=f"{type(error).__name__}: {error}"[:2048])
        log.error("result written to %s", write_result(failed, target))
        return EXIT_RETRIABLE
    if result is None:
        return 0
    path = write_result(result, target)
    if result.evaluation is not None:
        for item in result.evaluation.summary:
            print(
                f"{item.metric}: {item.value:.4f}"
                + (f" (baseline {item.baseline:.4f})" if item.baseline is not None else "")
            )
        print(f"report published to {result.evaluation.report.uri} (result written to {path})")
    elif result.adapter is not None:
        print(f"adapter published to {result.adapter.uri} (result written to {path})")
    else:
        print(f"{result.message} (result written to {path})")
    return 0


def _run(args: argparse.Namespace, workdir: Path) -> TrainerResult | None:
    """The command's result; None for `prepare`, which publishes nothing."""
    if args.command == "cleanup":
        cleanup = load_run_spec(args.spec, os.environ, CleanupRunSpec)
        store = store_for(cleanup.uri, "OUTPUT", cleanup.storage, os.environ)
        deleted = store.delete_prefix(cleanup.uri)
        return TrainerResult(
            result="succeeded", message=f"deleted {deleted} objects under {cleanup.uri}", deleted_objects=deleted
        )
    if args.command == "publish-model":
        from .recipes.publish_model import publish_model

        return publish_model(load_run_spec(args.spec, os.environ, ModelPublishRunSpec), workdir, os.environ)
    if args.command == "check-schedule":
        from .recipes.check_schedule import check_schedule

        return check_schedule(load_run_spec(args.spec, os.environ, ScheduleCheckRunSpec), workdir, os.environ)
    if args.command == "build-dataset":
        from .recipes.build_dataset import build_dataset

        build = load_run_spec(args.spec, os.environ, DatasetBuildRunSpec)
        return build_dataset(build, workdir, os.environ, ProgressReporter(build.resource))
    if args.command == "eval":
        evaluation = load_run_spec(args.spec, os.environ, EvaluationRunSpec)
        from .recipes.evaluate import EvaluationRecipe

        reporter = ProgressReporter(evaluation.resource)
        return EvaluationRecipe(evaluation, workdir, os.environ, reporter).run()
    run = load_run_spec(args.spec, os.environ)
    from .recipes.preference import PreferenceRecipe
    from .recipes.sft import SFTRecipe

    # Only global rank 0 reports progress: one writer, and the figures are the group's (tokens summed).
    reporter = ProgressReporter(run.resource if Ranks.from_env(os.environ).main else None)
    recipe = (SFTRecipe if run.job.objective == "sft" else PreferenceRecipe)(run, workdir, os.environ, reporter)
    if args.command == "prepare":
        print(recipe.setup_data().summary())
        return None
    return recipe.run()


if __name__ == "__main__":
    sys.exit(main())
