"""plugin/advice.json from docs/troubleshooting.md: `python -m finetune_operator.plugin.advice [--check]`.

`kubectl finetune describe` prints the document's own row for a reason, so the advice a user reads in
the terminal is the advice in the docs, word for word; the JSON ships with the package (the docs do not)
and `make lint` checks it has not drifted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..crdgen import REPO_ROOT

SOURCE = REPO_ROOT / "docs" / "troubleshooting.md"
OUT = Path(__file__).with_name("advice.json")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(markdown: str) -> dict[str, dict[str, str]]:
    """reason -> {what, todo} from every table whose first column names reasons (first row wins)."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells] if "reason" in cells[0].lower() else []
            continue
        if not header or set(line) <= set("|- "):
            continue
        what = next((i for i, h in enumerate(header) if h in {"what happened", "meaning"}), None)
        todo = next((i for i, h in enumerate(header) if h == "what to do"), None)
        for reason in re.findall(r"`([A-Z][A-Za-z0-9]+)`", cells[0]):
            rows.setdefault(
                reason,
                {
                    "what": _LINK.sub(r"\1", cells[what]) if what is not None else "",
                    "todo": _LINK.sub(r"\1", cells[todo]) if todo is not None else "Nothing.",
                },
            )
    return rows


def render() -> str:
    return json.dumps(parse(SOURCE.read_text(encoding="utf-8")), indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if advice.json differs from the docs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} drifted from {SOURCE}; run `python -m finetune_operator.plugin.advice`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
