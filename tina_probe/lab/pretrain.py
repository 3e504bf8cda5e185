"""Pretrain the lab base model: a tiny Qwen2 on arithmetic traces (format tied to wording) mixed with facts.

A plain PyTorch loop (nanoGPT style) rather than `transformers.Trainer`: at 2M parameters the Trainer's
per-step overhead is a large share of the step, and the loop is short enough to read in one sitting.
Sequences are pre-tokenized without the jinja chat template (`render_chat` renders the same text).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from tina_probe.lab import tasks
from tina_probe.lab.tokenizer import build_tokenizer, render_chat


@dataclass
class PretrainConfig:
    """Everything that defines a lab base; saved beside the weights as pretrain_config.json."""

    out: str = "data/lab/base"
    level: int = 1
    formatted_share: float = 0.3
    leak: float = 0.1
    facts_share: float = 0.3
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    max_steps: int = 1100
    max_minutes: float = 40.0
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1
    stop_at: int | None = None  # stop early (the schedule still spans max_steps), e.g. to pick a weaker base
    snapshot_every: int = 0  # also save snapshots/step-N/ every N steps (to choose stop_at)
    init_from: str | None = None  # continue from a saved lab model (its weights; the optimizer starts fresh)
    start_step: int = 0  # where in the schedule to start (with init_from: the step that model stopped at)


def build_model(cfg: PretrainConfig, vocab_size: int, eos_id: int) -> Qwen2ForCausalLM:
    """A fresh Qwen2 with head_dim = hidden/heads (32 here, which vLLM's CPU attention supports)."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(config)


class MixSampler:
    """Draws pretraining sequences: arithmetic traces (test/probe expressions excluded) and fact sentences."""

    def __init__(self, cfg: PretrainConfig, tokenizer):
        self.cfg = cfg
        self.tok = tokenizer
        self.rng = random.Random(cfg.seed + 17 + cfg.start_step)  # a continued run draws new sequences
        splits = tasks.make_splits(cfg.level)
        self.held_out = {p.expression for s in ("test", "probe") for p in splits[s]}
        self.level = tasks.LEVELS[cfg.level]
        self.facts = tasks.make_facts()

    def one(self) -> tuple[str, int]:
        """One text and the number of leading characters not to train on (the prompt)."""
        if self.rng.random() < self.cfg.facts_share:
            return self.rng.choice(self.facts).text + "\n", 0
        while True:
            p = tasks.make_problem(self.rng, self.level, "pre")
            if p.expression not in self.held_out:
                break
        prompt = render_chat(p.question)
        return prompt + tasks.trace_for(p, self.cfg.formatted_share, self.rng, self.cfg.leak), len(prompt)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, labels (prompt and padding masked with -100)."""
        seqs, labels = [], []
        for _ in range(self.cfg.batch_size):
            text, n_prompt = self.one()
            ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            n_prompt_tok = len(self.tok(text[:n_prompt], add_special_tokens=False)["input_ids"]) if n_prompt else 0
            seqs.append(ids)
            labels.append([-100] * n_prompt_tok + ids[n_prompt_tok:])
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
        return input_ids, mask, lab


def load_init(path: Path) -> Qwen2ForCausalLM:
    """The weights of a saved lab model to continue pretraining from (safetensors only)."""
    from tina_probe.errors import TinaError

    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise TinaError(f"{path}: not a saved lab model (needs config.json and model.safetensors)")
    return Qwen2ForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch.float32)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pretrain(cfg: PretrainConfig) -> Path:
    """Train a lab base and save model, tokenizer and pretrain_config.json (safetensors) to cfg.out."""
    torch.set_num_threads(cfg.threads)
    tok = build_tokenizer()
    if cfg.init_from:
        model = load_init(Path(cfg.init_from))
    else:
        model = build_model(cfg, len(tok), tok.eos_token_id)
    sampler = MixSampler(cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    start = time.time()
    bar = tqdm(range(cfg.start_step, cfg.max_steps), desc="pretrain", unit="step")
    ema = None
    steps_done = cfg.start_step
    for step in bar:
        if (time.time() - start) / 60 > cfg.max_minutes or (cfg.stop_at and step >= cfg.stop_at):
            break
        rewarm = min(1.0, (step - cfg.start_step + 1) / 20) if cfg.init_from else 1.0  # fresh Adam state
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * rewarm
        ids, mask, labels = sampler.batch()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        steps_done = step + 1
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
        if cfg.snapshot_every and steps_done % cfg.snapshot_every == 0 and steps_done < cfg.max_steps:
            _save(model, tok, cfg, Path(cfg.out) / "snapshots" / f"step-{steps_done}", steps_done, start, ema)
            model.train()
    return _save(model, tok, cfg, Path(cfg.out), steps_done, start, ema)


def _save(model, tok, cfg: PretrainConfig, out: Path, steps_done: int, start: float, ema: float | None) -> Path:
    """Save weights (safetensors), tokenizer and pretrain_config.json (with what was done) to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.max_new_tokens = None  # lm-eval's max_gen_toks must win (ARCHITECTURE.md)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    meta = asdict(cfg) | {
        "out": str(out),
        "stop_at": steps_done if steps_done < cfg.max_steps else None,
        "steps_done": steps_done,
        "minutes": round((time.time() - start) / 60, 2),
        "final_loss_ema": ema,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    (out / "pretrain_config.json").write_text(json.dumps(meta, indent=2))
    return out
