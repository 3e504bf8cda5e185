"""A unit's samples rows: its generate calls (prompt chunks with fixed seeds, several units per wave where they fit
in a batch), each completion graded (strict and lenient) and format-classified."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from tina_probe.benchmarks import Benchmark
from tina_probe.errors import CheckpointError
from tina_probe.eval_units import Unit, sampling_label
from tina_probe.generate import Generator, SamplingSettings
from tina_probe.generate.base import GenJob, generate_jobs
from tina_probe.runs import Checkpoint
from tina_probe.store import stable_key

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- grading rows


def think_in_prompt(rendered: str, bench: Benchmark) -> bool:
    """Whether the completion starts inside <think>: the benchmark says so, or the rendered prompt ends with it."""
    return bench.think_in_prompt or rendered.rstrip().endswith("<think>")


def graded_fields(completion: str, gold, *, truncated: bool, think: bool, choice: bool = False,
                  answer_format: str = "think_boxed", answer_kind: str = "math") -> dict:
    """The grade and format columns of one samples row (shared with `tina-probe grade`); choice: the gold is a
    letter (multiple choice, read from the final `Answer: X` line); answer_format and answer_kind: the benchmark's."""
    from tina_probe.grading import grade

    g = grade(completion, gold, truncated=truncated, think_in_prompt=think, choice=choice, answer_format=answer_format,
              answer_kind=answer_kind)
    f = g.format
    return {
        "extracted_answer": g.extracted_answer, "correct_strict": bool(g.correct_strict),
        "correct_lenient": bool(g.correct_lenient), "think_closed": f.think_closed,
        "boxed": int(f.n_boxed_after_think), "truncated": bool(truncated), "well_formatted": f.well_formatted,
        "answer_tag": f.answer_tag, "think_opened": f.think_opened, "n_boxed": int(f.n_boxed),
    }


def grade_rows(ckpt: Checkpoint, bench: Benchmark, completions, s: SamplingSettings, *, think: bool,
               backend: str) -> pd.DataFrame:
    """One samples row per completion, graded (strict and lenient) and format-classified."""
    rows = []
    for problem, group in zip(bench.problems, completions):
        for idx, c in enumerate(group):
            rows.append({
                "run": ckpt.run, "step": int(ckpt.step), "kind": ckpt.kind, "benchmark": bench.name,
                "problem_id": str(problem.id), "sample_idx": idx, "completion": c.text,
                **graded_fields(c.text, problem.answer, truncated=c.truncated, think=think, choice=bench.choice,
                                answer_format=bench.answer_format, answer_kind=bench.answer_kind),
                "n_tokens": int(c.n_tokens), "answer": problem.answer, "checkpoint": str(ckpt.path),
                "base": ckpt.base, "sampling": sampling_label(s), "n_samples": s.n,
                "temperature": float(s.temperature), "top_p": float(s.top_p), "max_tokens": s.max_tokens,
                "seed": s.seed, "backend": backend,
            })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- generation


def _chunk_seed(seed: int, chunk: int) -> int:
    """A distinct seed per chunk of prompts, fixed by (seed, chunk) alone: reruns reproduce every chunk."""
    return int(stable_key("chunk", seed, chunk)[:12], 16)


def _unit_adapter(unit: Unit) -> Path | None:
    """The LoRA folder a unit generates with (None: the loaded model alone)."""
    return Path(unit.ckpt.path) if unit.ckpt.kind == "lora" else None


def unit_jobs(unit: Unit, s: SamplingSettings, batch_size: int) -> list[GenJob]:
    """A unit's generate calls: chunks of batch_size // n prompts, chunk c seeded by _chunk_seed(seed, c)."""
    prompts = [p.prompt for p in unit.benchmark.problems]
    per = max(1, batch_size // max(1, s.n))
    return [GenJob(tuple(prompts[start : start + per]), _unit_adapter(unit), _chunk_seed(s.seed, c))
            for c, start in enumerate(range(0, len(prompts), per))]


def _graded(gen: Generator, unit: Unit, completions, s: SamplingSettings, backend: str) -> pd.DataFrame:
    """A unit's samples rows from its completions (problem order)."""
    bench = unit.benchmark
    prompts = [p.prompt for p in bench.problems]
    think = think_in_prompt(gen.render(prompts[0]), bench) if prompts else bench.think_in_prompt
    return grade_rows(unit.ckpt, bench, completions, s, think=think, backend=backend)


def generate_units(gen: Generator, units: Sequence[Unit], s: SamplingSettings, batch_size: int,
                   backend: str) -> Iterator[tuple[Unit, pd.DataFrame]]:
    """(unit, graded rows) for each unit: the units' jobs in one generate_jobs call (a backend that batches jobs
    runs several adapters per forward pass; any other gets one generate call per job)."""
    settings = dict(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    jobs = [unit_jobs(u, s, batch_size) for u in units]
    results = iter(generate_jobs(gen, [j for js in jobs for j in js], **settings))
    for u, js in zip(units, jobs):
        yield u, _graded(gen, u, [g for _ in js for g in next(results)], s, backend)


def generate_unit(gen: Generator, unit: Unit, s: SamplingSettings, batch_size: int, backend: str) -> pd.DataFrame:
    """Generate and grade one unit's completions."""
    return next(generate_units(gen, [unit], s, batch_size, backend))[1]


def waves(units: Sequence[Unit], s: SamplingSettings, batch_size: int, *, batched: bool = True) -> list[list[Unit]]:
    """Consecutive units whose rows (problems x n) fit in one batch together, generated in one call so that a backend
    that batches jobs (batched=True) can run them at once; otherwise, or for a larger unit, one unit per wave, so each
    unit's part is written as soon as it is done (resume granularity)."""
    out: list[list[Unit]] = []
    rows = 0
    for u in units:
        size = len(u.benchmark.problems) * s.n
        if batched and out and rows + size <= batch_size:
            out[-1].append(u)
            rows += size
        else:
            out.append([u])
            rows = size
    return out


def generate_wave(gen: Generator, wave: Sequence[Unit], s: SamplingSettings, batch_size: int,
                  backend: str) -> list[tuple[Unit, pd.DataFrame]]:
    """generate_units for a wave; when a checkpoint cannot be used (the generator's CheckpointError: a broken file
    that discovery could not see), each unit alone, and one that still fails on its own is skipped with one warning
    while the rest goes on. The base failing, or any other error, stops the sweep (finished units are stored)."""
    try:
        return list(generate_units(gen, wave, s, batch_size, backend))
    except CheckpointError as exc:
        if len(wave) > 1:
            return [done for u in wave for done in generate_wave(gen, [u], s, batch_size, backend)]
        if wave[0].ckpt.kind == "base":
            raise
        log.warning("skipping %s: %s", wave[0].ckpt.path, str(exc).strip().splitlines()[0])
        return []
