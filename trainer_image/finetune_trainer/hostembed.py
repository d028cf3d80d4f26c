"""The frozen input embedding, kept in host memory while a GPU trains.

An input embedding is a lookup table: a step reads only the rows of its tokens (a 2 x 2048 batch of
an 8B Llama reads 4096 rows of 8 KiB, 32 MiB), yet the whole table sits in GPU memory for the run
(128256 x 4096 in bf16 is 0.98 GiB, 11 % of the 8.65 GiB peak measured for our QLoRA step of that
model, docs/benchmarks.md). LoRA never trains it, so the lookup can run in host memory and copy just
the looked-up rows to the GPU, once per forward pass (the backward needs nothing from it: the table
is frozen). Left on the GPU where that would not free memory or would change training: an embedding
tied to the output head (the head reads the same matrix on the GPU), one that trains (named in the
LoRA targets), and any subclass of ``nn.Embedding`` (Gemma scales its lookup, for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

EMBEDDING_NAMES = ("embed_tokens", "wte", "word_embeddings", "embed_in")


def applies(model: Any, device_kind: str, lora_targets: Sequence[str]) -> bool:
    """Whether moving the model's input embedding to host memory frees GPU memory and changes nothing else."""
    if device_kind != "cuda":
        return False  # on CPU it is in host memory already
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding:
        return False
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == embedding.weight.data_ptr():
        return False
    return not any(name in target for target in lora_targets for name in EMBEDDING_NAMES)


class HostEmbedding(torch.nn.Module):
    """``nn.Embedding`` whose table stays in host memory; its output lands on ``device``.

    The table is a plain attribute, not a parameter or buffer, so ``model.to(...)``, ``state_dict()``
    and the optimizer never see it: it was frozen, and the adapter never held it.
    """

    def __init__(self, embedding: torch.nn.Embedding, device: torch.device) -> None:
        super().__init__()
        self.table = embedding.weight.detach().to("cpu")
        self.padding_idx = embedding.padding_idx
        self.device = device

    @property
    def weight(self) -> torch.Tensor:
        """For callers that read the table's shape or dtype (e.g. vocabulary-size checks)."""
        return self.table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(input_ids.to(self.table.device), self.table, self.padding_idx)
        return rows.to(self.device, non_blocking=True)


def keep_on_host(model: Any) -> HostEmbedding:
    """Swap the model's input embedding for a HostEmbedding that outputs where the table was.

    The GPU copy is freed once nothing else holds it; emptying the CUDA cache takes the memory out
    of the process's reservation too (a no-op where CUDA was never initialised).
    """
    embedding = model.get_input_embeddings()
    host = HostEmbedding(embedding, embedding.weight.device)
    model.set_input_embeddings(host)
    del embedding
    torch.cuda.empty_cache()
    return host
