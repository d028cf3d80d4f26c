"""finetune-trainer: the process inside a FineTuneJob's pod (QLoRA/LoRA with transformers + peft + bitsandbytes)."""

__version__ = "0.1.0"
