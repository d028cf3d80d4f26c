"""Fixtures shared by the suites that run pods on the local cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def trainer_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the stand-in `finetune-trainer` the local node runs for trainer pods."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "finetune-trainer"
    script.write_text(f"#!{sys.executable}\n" + (HERE / "integration" / "stand_in_trainer.py").read_text())
    script.chmod(0o755)
    return folder
