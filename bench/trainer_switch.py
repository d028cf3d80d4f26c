"""One trainer optimisation switched off and on, timed step by step in one process, interleaved.

    python bench/trainer_switch.py --switch loss-positions            # tiny model on CPU
    python bench/trainer_switch.py --switch fast-paths --batch-size 4
    python bench/trainer_switch.py --switch reentrant-checkpointing

gpu_qlora.py compares whole training runs one after another; on this 2-core VM, whose speed drifts by
+-15 % between minutes, that resolves 1.4x against 1.0x but not a 7 % switch. Here two models, the
same but for the switch (one of setup_model's flags; for reentrant-checkpointing, the checkpointing
of one model switched back to the GPU's flavour), train on the same packed batches in alternating
order (ABBA), so both see the same spell of the machine; each step is forward, backward and an AdamW
step. Printed: median seconds per step of each, and the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_qlora import examples, llama_config, load_ours, save_random_model
from record import record

SETUP_FLAGS = {"loss-positions": "loss_positions", "fast-paths": "fast_paths"}
# reentrant-checkpointing: one of the fast paths (the only one without packing), timed alone by
# switching the checkpointing of a model set up as ours back to the flavour used off the CPU.
SWITCHES = [*SETUP_FLAGS, "reentrant-checkpointing"]


def build(model_dir: Path, switch: str, on: bool) -> tuple[Any, Any, Any]:
    """(model, its collator, its optimizer) with `switch` set to `on` and everything else as ours."""
    import torch

    from finetune_trainer.model import make_collator, pick_device

    torch.manual_seed(0)
    flags = {SETUP_FLAGS[switch]: on} if switch in SETUP_FLAGS else {}
    setup = load_ours(model_dir, pick_device("auto", False, False), liger=False, packing=True, **flags)
    if switch == "reentrant-checkpointing" and not on:
        setup.model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if switch == "reentrant-checkpointing":
        layer = setup.model.get_base_model().model.layers[0]
        if layer._gradient_checkpointing_func.keywords["use_reentrant"] is not on:
            raise RuntimeError(f"checkpointing flavour not switched {'on' if on else 'off'}")
    setup.model.train()
    optimizer = torch.optim.AdamW([p for p in setup.model.parameters() if p.requires_grad], lr=2e-4)
    return setup.model, make_collator(True, None, setup.loss_logits_only), optimizer


def step_seconds(variant: tuple[Any, Any, Any], rows: list[dict[str, list[int]]]) -> float:
    model, collator, optimizer = variant
    batch = collator(rows)
    started = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switch", choices=sorted(SWITCHES), required=True)
    parser.add_argument("--batch-size", type=int, default=2, help="packed rows per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-record", action="store_true", help="do not append the figures to docs/benchmarks.md")
    args = parser.parse_args()
    from finetune_trainer.data.pack import pack_rows

    config = llama_config(tiny=True)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = Path(folder) / "model"
        save_random_model(config, model_dir, "cpu")
        data = examples(args.batch_size * 8 * 40, args.seq_len, config.vocab_size, seed=0)
        rows = pack_rows(data, args.seq_len)
        off, on = build(model_dir, args.switch, False), build(model_dir, args.switch, True)
        times: dict[bool, list[float]] = {False: [], True: []}
        batches = len(rows) // args.batch_size
        for index in range(args.warmup + args.steps):
            batch = rows[(index % batches) * args.batch_size :][: args.batch_size]
            order = (False, True) if index % 2 else (True, False)
            seconds = {flag: step_seconds(on if flag else off, batch) for flag in order}
            if index >= args.warmup:
                for flag in order:
                    times[flag].append(seconds[flag])
    ratio = statistics.median(a / b for a, b in zip(times[False], times[True], strict=True))
    off_s, on_s = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"CPU, tiny model, {args.batch_size} packed rows of {args.seq_len}, {args.steps} interleaved steps each: "
        f"{args.switch} off {off_s * 1000:.1f} ms/step, on {on_s * 1000:.1f} ms/step, "
        f"off/on {ratio:.3f} (median of per-pair ratios)"
    )
    record(
        "trainer_switch.py",
        {
            "switch": args.switch,
            "seq x batch": f"{args.seq_len} x {args.batch_size}",
            "off ms/step": round(off_s * 1000, 1),
            "on ms/step": round(on_s * 1000, 1),
            "speed-up": round(ratio, 3),
        },
        enabled=not args.no_record,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
