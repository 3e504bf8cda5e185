"""The generation protocol shared by the backends: prompts in, n completions per prompt out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Completion:
    """One sampled completion: decoded text (special tokens skipped), its token count, and whether it hit max_tokens."""

    text: str
    n_tokens: int
    truncated: bool


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings of one evaluation; part of every result key."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class GenJob:
    """One generate call's worth of work: prompts, the LoRA adapter (None: the model alone) and the call's seed."""

    prompts: tuple[str, ...]
    adapter: Path | None
    seed: int


@runtime_checkable
class Generator(Protocol):
    """A text-generation backend over one base model at a time, with LoRA adapters swapped in per call."""

    def load_base(self, base: str, *, adapters: Sequence[Path] = (), tokenizer: str | None = None) -> None:
        """Make `base` (a model folder or hub id) the current model; a no-op when it already is.

        `adapters` lists the LoRA folders that will be used with it (backends that size adapter slots up
        front need them); `tokenizer` names where to read the tokenizer when the model folder has none."""

    def render(self, prompt: str) -> str:
        """The exact text the model is conditioned on: the chat template applied when the tokenizer has one."""

    def generate(
        self,
        prompts: list[str],
        *,
        adapter: Path | None,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        """n completions for each raw prompt, with the LoRA `adapter` applied (None: the current model alone)."""

    def close(self) -> None:
        """Free the model(s)."""


def generate_jobs(gen, jobs: Sequence[GenJob], *, n: int, temperature: float, top_p: float,
                  max_tokens: int) -> list[list[list[Completion]]]:
    """Completions of several generate calls at once: the backend's own `generate_jobs` when it has one (it may batch
    jobs together, e.g. several adapters in one forward pass, with every job's result unchanged), else one
    `generate` call per job."""
    kw = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    many = getattr(gen, "generate_jobs", None)
    if many is not None:
        return many(jobs, **kw)
    return [gen.generate(list(j.prompts), adapter=j.adapter, seed=j.seed, **kw) for j in jobs]
