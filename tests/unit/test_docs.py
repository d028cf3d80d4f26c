"""The docs match the code: every reason the operator or trainer can report is explained."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PATTERNS = (
    r'Outcome\(\s*"\w+",\s*"(\w+)"',  # phase outcomes (status.py, kinds/)
    r'make_condition\(\s*"\w+",\s*[^,]+,\s*"(\w+)"',  # Passed / Evaluated
    r'Event\(\s*"\w+",\s*"(\w+)"',  # events
    r'reason\s*=\s*"(\w+)"',  # trainer errors
    r'_condition\(\s*"(SpecChangeDeferred)"',
    r'"(JobFailed)"',
)


def reasons_in_code() -> set[str]:
    found: set[str] = set()
    for path in [
        *REPO.glob("operator/finetune_operator/**/*.py"),
        *REPO.glob("trainer_image/finetune_trainer/**/*.py"),
    ]:
        text = path.read_text()
        for pattern in PATTERNS:
            found.update(re.findall(pattern, text, flags=re.S))
    return found


def test_every_reason_is_in_the_troubleshooting_guide() -> None:
    reasons = reasons_in_code()
    assert {"OutOfMemory", "DataError", "ThresholdsMissed", "WaitingForFineTuneJob", "StorageUnavailable"} <= reasons
    guide = (REPO / "docs" / "troubleshooting.md").read_text()
    missing = sorted(r for r in reasons if f"`{r}`" not in guide)
    assert not missing, f"reasons not explained in docs/troubleshooting.md: {missing}"
