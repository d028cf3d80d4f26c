"""`finetune-trainer` run by hand, outside a pod: where the result goes, and that it says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer import cli
from finetune_trainer.report import DEFAULT_TERMINATION_LOG, TERMINATION_LOG_ENV, result_path


def _cleanup_spec(tmp_path: Path) -> Path:
    prefix = tmp_path / "store" / "team-a" / "bot" / "uid"
    (prefix / "attempt-1").mkdir(parents=True)
    (prefix / "attempt-1" / "adapter.bin").write_bytes(b"x")
    spec = {"apiVersion": "finetune.dev/v1alpha1", "kind": "CleanupRun", "uri": f"file://{prefix}/"}
    path = tmp_path / "cleanup.json"
    path.write_text(json.dumps(spec))
    return path


def test_outside_a_pod_the_result_goes_to_the_workdir_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run as root on a host, the trainer used to create /dev/termination-log there."""
    monkeypatch.delenv(TERMINATION_LOG_ENV, raising=False)
    assert not Path(DEFAULT_TERMINATION_LOG).exists()  # this host is not a pod
    work = tmp_path / "work"
    assert cli.main(["cleanup", "--spec", str(_cleanup_spec(tmp_path)), "--workdir", str(work)]) == 0
    result = json.loads((work / "result.json").read_text())
    assert result["result"] == "succeeded" and result["deletedObjects"] == 1
    assert f"(result written to {work / 'result.json'})" in capsys.readouterr().out
    assert not Path(DEFAULT_TERMINATION_LOG).exists()


def test_result_goes_where_asked_first(tmp_path: Path) -> None:
    asked = tmp_path / "mine.json"
    assert result_path({TERMINATION_LOG_ENV: "/x/log"}, tmp_path, asked) == asked
    assert result_path({TERMINATION_LOG_ENV: "/x/log"}, tmp_path) == Path("/x/log")
    assert result_path({}, tmp_path) == tmp_path / "result.json"
    work = tmp_path / "w"
    code = cli.main(["cleanup", "--spec", str(_cleanup_spec(tmp_path)), "--workdir", str(work), "--result", str(asked)])
    assert code == 0 and json.loads(asked.read_text())["result"] == "succeeded"
    assert not (work / "result.json").exists()
