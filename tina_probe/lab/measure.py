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


def write_model_card(model: Path, result: dict, *, title: str, purpose: str, benchmark: str) -> Path:
    """Write MODEL_CARD.md beside a lab base: how it was built (the exact command) and what it measured."""
    model = Path(model)
    cfg = json.loads((model / "pretrain_config.json").read_text())
    flags = (f"--level {cfg['level']} --formatted-share {cfg['formatted_share']:g} --leak {cfg['leak']:g} "
             f"--max-steps {cfg['max_steps']} --seed {cfg['seed']}"
             + (f" --stop-at {cfg['stop_at']}" if cfg.get("stop_at") else "")
             + (f" --init-from {cfg['init_from']} --start-step {cfg['start_step']}" if cfg.get("init_from") else ""))
    continued = (f" Continued from {cfg['init_from']} (its weights, a fresh optimizer with a 20-step re-warmup) at "
                 f"step {cfg['start_step']} of the schedule; the minutes are the continuation's."
                 if cfg.get("init_from") else "")
    s, g = result["sampled"], result["greedy"]
    lines = [
        f"# {title}", "", purpose, "",
        "## Architecture",
        f"Qwen2, {cfg['n_params'] / 1e6:.2f}M parameters: hidden {cfg['hidden_size']}, {cfg['num_layers']} layers, "
        f"{cfg['num_heads']} query heads / {cfg['num_kv_heads']} KV heads of dim "
        f"{cfg['hidden_size'] // cfg['num_heads']}, intermediate {cfg['intermediate_size']}, tied embeddings; "
        "character-level tokenizer (one token per digit; `<think>`, `</think>`, `<answer>`, `\\boxed` ordinary "
        "tokens) with a chat template. Weights in safetensors.", "",
        "## How it was built",
        "```", f"OMP_NUM_THREADS=1 tina-probe lab pretrain --out {model.as_posix()} {flags}", "```",
        f"Pretraining mix: arithmetic traces of level {cfg['level']} (test and probe expressions held out) whose "
        f"format is tied to the prompt wording ({cfg['formatted_share']:.0%} of wordings well formatted, "
        f"{cfg['leak']:.0%} of traces in a random style), and {cfg['facts_share']:.0%} synthetic facts "
        f"(data/lab/facts.jsonl). {cfg['steps_done']} steps of batch {cfg['batch_size']}, lr {cfg['lr']:g} "
        f"cosine, {cfg['threads']} thread(s), {cfg['minutes']} min on this project's 2-core machine "
        f"(final loss {cfg['final_loss_ema']:.3f}).{continued}", "",
        "## Measured",
        f"On {benchmark} ({s['n_problems']} problems), measured by "
        f"`tina-probe lab measure --model {model.as_posix()} --benchmark {benchmark} --n {s['n_samples'] // max(1, s['n_problems'])}`:", "",
        "| decoding | lenient accuracy | strict accuracy | format compliance | mean tokens | truncated |",
        "|---|---|---|---|---|---|",
        f"| sampled, T={s['temperature']:g} | {s['lenient']:.1%} | {s['strict']:.1%} | {s['format_rate']:.1%} | "
        f"{s['mean_tokens']:.1f} | {s['truncated']:.1%} |",
        f"| greedy | {g['lenient']:.1%} | {g['strict']:.1%} | {g['format_rate']:.1%} | {g['mean_tokens']:.1f} | "
        f"{g['truncated']:.1%} |", "",
        f"Facts recall (greedy completion of each fact's prompt starts with its value): "
        f"{result['facts_recall']:.1%} of {len(tasks.make_facts())} facts.", "",
        "Strict = closed think block and exactly one `\\boxed{}` after it, holding the right answer; lenient = "
        "math-verify finds the right answer anywhere.", "",
    ]
    path = model / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
