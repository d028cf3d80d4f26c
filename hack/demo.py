"""`make demo`: the quickstart FineTuneJob end to end on the local control plane.

The trainer (`finetune-trainer`) is not built yet, so there is nothing real to demo; say so plainly
instead of faking a run.
"""

import sys

print(
    "make demo needs the trainer image (finetune-trainer), which is not in the repository yet.\n"
    "What works today: `make test` runs the operator against a real local control plane.",
    file=sys.stderr,
)
sys.exit(2)
