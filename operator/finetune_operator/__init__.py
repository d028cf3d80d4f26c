"""finetune-operator: fine-tune and benchmark LLMs with `kubectl apply`.

`finetune_operator.api` imports without kopf or torch so that the trainer image can validate its run
spec with the very models the operator uses.
"""

__version__ = "0.1.0"
