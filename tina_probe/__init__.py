"""tina-probe: LoRA vs full fine-tuning of small GRPO-trained reasoning models."""

__version__ = "0.1.0"
