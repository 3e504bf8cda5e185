"""Measure task candidates on a real base, sampled: lenient / strict accuracy, format compliance, lengths, speed.

These are the numbers that chose the study's task (target: 15-60% lenient, under 50% well formatted, so that
GRPO has both an accuracy and a format signal); `tina-probe lab real-task --measure` reruns them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from tina_probe.grading import grade
from tina_probe.real.tasks import (CANDIDATES, INSTRUCTION_FORMATS, REAL_ANSWER_KIND, SplitSizes, make_splits,
                                   prompt_for)

LENIENT_RANGE = (0.15, 0.60)
FORMAT_MAX = 0.50


@dataclass
class CandidateMeasure:
    """One candidate x instruction, sampled on its test split."""

    name: str
    task: str
    instruction: str
    what: str
    n_problems: int
    n_samples: int
    answer_format: str
    temperature: float
    max_tokens: int
    lenient: float
    strict: float
    format_rate: float
    think_closed: float
    boxed: float
    mean_tokens: float
    truncated: float
    tokens_per_s: float
    verdict: str = ""
    answer_kind: str = "math"  # grading.ANSWER_KINDS; measurements written before it existed were graded as math


def verdict(m: CandidateMeasure) -> str:
    """Whether a candidate fits the targets, and if not, which one it misses."""
    lo, hi = LENIENT_RANGE
    misses = []
    if m.lenient < lo:
        misses.append(f"lenient below {lo:.0%}")
    if m.lenient > hi:
        misses.append(f"lenient above {hi:.0%}")
    if m.format_rate >= FORMAT_MAX:
        misses.append(f"format at or above {FORMAT_MAX:.0%}")
    if m.format_rate == 0:
        misses.append("no well-formatted sample (no format signal)")
    return "fits" if not misses else "rejected: " + ", ".join(misses)


def _measure(task: str, instruction: str, probs, outs, *, n: int, temperature: float, max_tokens: int,
             tokens_per_s: float) -> CandidateMeasure:
    """Grade one candidate's completions (n per problem) into its CandidateMeasure."""
    grades, toks, trunc = [], [], []
    answer_format = INSTRUCTION_FORMATS.get(instruction, "think_boxed")
    for p, group in zip(probs, outs):
        for c in group:
            grades.append(grade(c.text, p.answer, truncated=c.truncated, answer_format=answer_format,
                                answer_kind=REAL_ANSWER_KIND))
            toks.append(c.n_tokens)
            trunc.append(c.truncated)
    m = CandidateMeasure(
        name=f"{task}/{instruction}", task=task, instruction=instruction, what=CANDIDATES[task].what,
        n_problems=len(probs), n_samples=n, answer_format=answer_format, temperature=temperature, max_tokens=max_tokens,
        lenient=float(np.mean([g.correct_lenient for g in grades])),
        strict=float(np.mean([g.correct_strict for g in grades])),
        format_rate=float(np.mean([g.format.well_formatted for g in grades])),
        think_closed=float(np.mean([g.format.think_closed for g in grades])),
        boxed=float(np.mean([g.format.n_boxed > 0 for g in grades])),
        mean_tokens=float(np.mean(toks)), truncated=float(np.mean(trunc)), tokens_per_s=tokens_per_s,
        answer_kind=REAL_ANSWER_KIND,
    )
    m.verdict = verdict(m)
    return m


def measure_candidates(model: str, pairs: list[tuple[str, str]], *, n_problems: int = 64, n: int = 4,
                       temperature: float = 1.0, max_tokens: int = 64, seed: int = 0, batch_size: int = 128,
                       samples_out=None) -> list[dict]:
    """Every (task, instruction) pair on one loaded base, all prompts in one generate call (fuller batches):
    n completions for each of the first n_problems test problems of each task."""
    from tina_probe.generate.hf import HFGenerator

    gen = HFGenerator(batch_size=batch_size)
    gen.load_base(model)
    groups = []
    for task, instruction in pairs:
        probs = make_splits(task, sizes=SplitSizes(train=0, test=n_problems, probe=0))["test"]
        groups.append((task, instruction, probs, [prompt_for(p.question, instruction) for p in probs]))
    prompts = [q for *_, ps in groups for q in ps]
    t0 = time.time()
    outs = gen.generate(prompts, adapter=None, n=n, temperature=temperature, top_p=1.0, max_tokens=max_tokens,
                        seed=seed)
    seconds = time.time() - t0
    tps = sum(c.n_tokens for group in outs for c in group) / max(seconds, 1e-9)
    print(f"{len(prompts)} prompts x {n} samples in {seconds:.0f} s ({tps:.0f} tokens/s, batch {batch_size})")
    result, at = [], 0
    for task, instruction, probs, ps in groups:
        chunk = outs[at:at + len(ps)]
        at += len(ps)
        if samples_out is not None:
            for p, q, group in zip(probs, ps, chunk):
                for c in group:
                    samples_out.append({"task": task, "instruction": instruction, "id": p.id, "prompt": q,
                                        "answer": p.answer, "completion": c.text, "n_tokens": c.n_tokens,
                                        "truncated": c.truncated})
        m = _measure(task, instruction, probs, chunk, n=n, temperature=temperature, max_tokens=max_tokens,
                     tokens_per_s=tps)
        print(f"{m.name}: lenient {m.lenient:.1%} strict {m.strict:.1%} format {m.format_rate:.1%} "
              f"(think closed {m.think_closed:.1%}, boxed {m.boxed:.1%}) tokens {m.mean_tokens:.0f} "
              f"truncated {m.truncated:.1%} -> {m.verdict}", flush=True)
        result.append(asdict(m))
    return result


def measure_and_record(name: str = "smollm2-135m-instruct", *, n_problems: int = 64, n: int = 4,
                       max_tokens: int = 64, tasks: list[str] | None = None,
                       instructions: list[str] | None = None) -> dict:
    """Measure every candidate (task x instruction) on real base `name`, write data/real/<name>.measure.json (the
    other entries there, e.g. training costs, are kept) and refresh the cached base's model card."""
    import json

    from tina_probe.real.card import measurements_path, write_card
    from tina_probe.real.gguf_import import MARKER
    from tina_probe.real.models import KNOWN, ensure_base
    from tina_probe.real.tasks import INSTRUCTIONS
    from tina_probe.store import atomic_write_json

    folder = ensure_base(name)
    pairs = [(t, i) for t in (tasks or list(CANDIDATES)) for i in (instructions or list(INSTRUCTIONS))]
    cands = measure_candidates(str(folder), pairs, n_problems=n_problems, n=n, max_tokens=max_tokens)
    path = measurements_path(name)
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["protocol"] = (
        f"Each candidate: the first {n_problems} test problems of the task (seeded), {n} samples each at T=1, top-p 1, "
        f"at most {max_tokens} new tokens, through the chat template (default system prompt); lenient = "
        "math-verify finds the answer anywhere, written as a number (answer kind `number`: the question's own "
        "expression does not count), strict = well formatted and right, format = one `\\boxed{}` "
        "answer (answer format `boxed`) or `</think>` closed once and one `\\boxed{}` after it (`think_boxed`), "
        "not truncated. Targets: lenient 15-60%, format under 50% "
        "(and above 0, or GRPO has no format signal). Measured by `tina-probe lab real-task --measure`.")
    # candidates measured now replace their earlier entries; the others are kept (their `answer_kind` says how
    # they were graded: none means math, from before the number kind existed)
    fresh = {c["name"] for c in cands}
    record["candidates"] = [c for c in record.get("candidates", []) if c["name"] not in fresh] + cands
    atomic_write_json(path, record)
    write_card(folder, KNOWN[name], json.loads((folder / MARKER).read_text()))
    return record
