"""Generation backends behind one protocol: `hf` (transformers + peft hot-swap) and `vllm` (LoRARequest)."""

from __future__ import annotations

from tina_probe.errors import TinaError
from tina_probe.generate.base import Completion, Generator, SamplingSettings

BACKENDS = ("hf", "vllm")


def make_generator(backend: str = "hf", **options) -> Generator:
    """A generator for a backend name; vllm is imported only when asked for."""
    if backend == "hf":
        from tina_probe.generate.hf import HFGenerator

        return HFGenerator(**options)
    if backend == "vllm":
        from tina_probe.generate.vllm_backend import VLLMGenerator, _import_vllm

        _import_vllm()  # fail early, before any work, when vllm is missing
        options.pop("batch_size", None)  # vLLM schedules its own batches
        options.pop("merge", None)
        return VLLMGenerator(**options)
    raise TinaError(f"{backend}: unknown backend (choose one of {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Completion", "Generator", "SamplingSettings", "make_generator"]
