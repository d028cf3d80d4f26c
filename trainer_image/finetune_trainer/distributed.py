"""Rank roles under torchrun: global rank 0 reports, checkpoints and publishes; all ranks agree.

torchrun starts one process per rank, each running the same recipe on its share of the batches
(HF Trainer's DistributedSampler). What must not diverge between them is agreed here, over the
process group: which checkpoint they resume from, and whether to stop after this step (a SIGTERM
reaches one pod of a preempted group, and a rank that stopped alone would leave the others waiting
in the next all-reduce until the collective timeout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ranks torchrun started (one rank without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Ranks:
        return cls(
            rank=int(environ.get("RANK", "0")),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            world_size=int(environ.get("WORLD_SIZE", "1")),
        )

    @property
    def main(self) -> bool:
        """Global rank 0: the one that reports progress, syncs checkpoints and publishes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def backend(device_kind: str) -> str:
    return "nccl" if device_kind == "cuda" else "gloo"


def init(ranks: Ranks, device_kind: str, timeout_seconds: int) -> None:
    """The process group, before the Trainer would start it with NCCL's 30-minute timeout.

    accelerate (under the Trainer) finds it initialised and uses it as is."""
    import torch
    import torch.distributed as dist

    if not ranks.distributed or dist.is_initialized():
        return
    if device_kind == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    else:
        _restore_indexed_cpu_locations()
    dist.init_process_group(backend(device_kind), timeout=timedelta(seconds=timeout_seconds))


def _keep_on_cpu(obj: Any, location: str) -> Any:
    return obj if location.startswith("cpu:") else None


def _restore_indexed_cpu_locations() -> None:
    """Let torch.load read a `cpu:<n>` location as the CPU.

    Under several CPU ranks the Trainer's device is `cpu:<local rank>`, and it resumes the optimizer
    with that as map_location; torch's CPU deserializer knows only `cpu`, so every resumed group
    failed with "don't know how to restore data location ... (tagged with cpu:0)"
    (tests/trainer/test_training.py resumes two ranks)."""
    import torch.serialization

    torch.serialization.register_package(11, lambda _obj: None, _keep_on_cpu)


def agree(value: T) -> T:
    """Rank 0's `value` on every rank (a no-op with one rank)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


class StopFlag(Protocol):
    @property
    def requested(self) -> bool: ...


class AgreedStop:
    """A stop flag that is up on every rank once it is up on any, checked at the same step by all.

    Each read is one all-reduce of a single number, at a step's end, where the ranks already meet."""

    def __init__(self, local: StopFlag) -> None:
        self.local = local
        self.stopped = False
        """Whether a read said stop: the recipe checks this afterwards without another collective."""

    @property
    def requested(self) -> bool:
        import torch
        import torch.distributed as dist

        if self.stopped:
            return True
        wanted = self.local.requested
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1 if wanted else 0])
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        self.stopped = wanted
        return wanted


def trainable_sha256(model: Any) -> str:
    """sha256 over the trainable (LoRA) tensors, by name: equal on every rank when DDP kept them in step."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def strategy_arguments(strategy: str, device_kind: str, ranks: Ranks, timeout_seconds: int) -> dict[str, Any]:
    """TrainingArguments for the strategy; nothing for one rank.

    FSDP follows peft's FSDP+QLoRA guide: the 4-bit weights are stored in the compute dtype
    (model.load_base_model sets bnb_4bit_quant_storage) so FSDP can flatten and shard them, rank 0
    alone loads the weights (cpu_ram_efficient_loading) and the others receive them, and checkpoints
    are sharded."""
    if not ranks.distributed:
        return {}
    arguments: dict[str, Any] = {
        "ddp_backend": backend(device_kind),
        "ddp_timeout": timeout_seconds,
        # Only the LoRA weights train; the frozen base never gets a gradient.
        "ddp_find_unused_parameters": False,
    }
    if strategy == "fsdp":
        arguments["fsdp"] = "full_shard auto_wrap"
        arguments["fsdp_config"] = {
            "cpu_ram_efficient_loading": True,
            "sync_module_states": True,
            "use_orig_params": False,
            "state_dict_type": "SHARDED_STATE_DICT",
            "backward_prefetch": "backward_pre",
        }
    return arguments
