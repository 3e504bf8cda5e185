"""Measure a lab base model: sampled and greedy accuracy (strict / lenient), format compliance, facts recall.

These are the numbers a lab base's MODEL_CARD.md quotes; `tina-probe lab measure` reruns them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tina_probe.grading import grade
from tina_probe.lab import tasks

DATA = Path(__file__).resolve().parents[2] / "data" / "lab"


@dataclass
class BaseMeasure:
    """What a model card reports for one decoding setting."""

    model: str
    split: str
    temperature: float
    n_problems: int
    n_samples: int
    lenient: float
    strict: float
    format_rate: float
    mean_tokens: float
    truncated: float


def _problems(split: str, limit: int | None) -> list[tasks.Problem]:
    rows = tasks.read_problems(DATA / f"{split}.jsonl")
    return rows[:limit] if limit else rows


def measure_split(gen, model: str, split: str, *, n: int, temperature: float, max_tokens: int = 64,
                  seed: int = 0, limit: int | None = None) -> BaseMeasure:
    """Sample n completions per problem of a lab split and grade them."""
    probs = _problems(split, limit)
    outs = gen.generate([p.question for p in probs], adapter=None, n=n, temperature=temperature, top_p=1.0,
                        max_tokens=max_tokens, seed=seed)
    grades, toks, trunc = [], [], []
    for p, group in zip(probs, outs):
        for c in group:
            grades.append(grade(c.text, p.answer, truncated=c.truncated))
            toks.append(c.n_tokens)
            trunc.append(c.truncated)
    return BaseMeasure(model, split, temperature, len(probs), len(grades),
                       float(np.mean([g.correct_lenient for g in grades])),
                       float(np.mean([g.correct_strict for g in grades])),
                       float(np.mean([g.format.well_formatted for g in grades])),
                       float(np.mean(toks)), float(np.mean(trunc)))


def facts_recall(gen) -> float:
    """Greedy completion of each fact's prompt (raw text, no chat template) starts with its value."""
    import torch

    facts = tasks.make_facts()
    tok, model = gen.tokenizer, gen.model
    hits = 0
    with torch.inference_mode():
        for i in range(0, len(facts), 64):
            chunk = facts[i:i + 64]
            enc = tok([f.prompt for f in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += sum(t.strip().startswith(f.value) for t, f in zip(texts, chunk))
    return hits / len(facts)


def measure_base(model: Path, *, benchmark: str = "lab-test", n: int = 1, temperature: float = 1.0,
                 out: Path | None = None, limit: int | None = None) -> dict:
    """All model-card numbers for one lab base: sampled (n, temperature) and greedy, plus facts recall."""
    from rich.console import Console
    from rich.table import Table

    from tina_probe.generate.hf import HFGenerator

    split = {"lab-test": "test", "lab-test-hard": "test-hard"}.get(benchmark, benchmark)
    gen = HFGenerator(batch_size=128)
    gen.load_base(str(model))
    sampled = measure_split(gen, str(model), split, n=n, temperature=temperature, limit=limit)
    greedy = measure_split(gen, str(model), split, n=1, temperature=0.0, limit=limit)
    result = {"sampled": asdict(sampled), "greedy": asdict(greedy), "facts_recall": facts_recall(gen)}
    table = Table(title=f"lab base {model} on {split}")
    for col in ("decoding", "lenient", "strict", "format", "mean tokens", "truncated"):
        table.add_column(col)
    for name, m in (("sampled T=%g n=%d" % (temperature, n), sampled), ("greedy", greedy)):
        table.add_row(name, f"{m.lenient:.1%}", f"{m.strict:.1%}", f"{m.format_rate:.1%}", f"{m.mean_tokens:.1f}",
                      f"{m.truncated:.1%}")
    Console().print(table)
    Console().print(f"facts recall (greedy): {result['facts_recall']:.1%}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"measure-{Path(model).name}.json").write_text(json.dumps(result, indent=2))
    return result
