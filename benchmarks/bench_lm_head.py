"""Benchmark: TRL's fused LM head on CPU in a LoRA GRPO step, every position (TRL's way) against the completion
tokens only (`train.grpo.completion_only_head_on_cpu`), side by side in one process.

The loss forward and backward of one real-lora batch (SmolLM2-135M-Instruct, LoRA r16 on all seven projections, 16
sequences: the real recipe's prompts, completions of the real step's lengths) run alternately with the switch off and
on, `--repeats` times each; it prints the median seconds of each, their ratio, and whether the per-token
log-probabilities and every LoRA gradient are equal bit for bit. Whole GRPO steps are too noisy here to show a change
of this size (two runs side by side moved by 20% between steps of the same code). Needs the cached real base
(`tina-probe lab real-base`); without it, one line says so. Run: python benchmarks/bench_lm_head.py [--repeats N]."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def real_batch(tokenizer, lengths: list[int], seed: int = 0) -> dict:
    """A GRPO batch as TRL builds it: each chat-templated real-task prompt 4 times, left-padded, then a completion of
    the given length (random tokens; the arithmetic does not depend on them) right-padded to the longest."""
    rows = [json.loads(line) for line in (ROOT / "data" / "real" / "train.jsonl").read_text().splitlines()[:4]]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows for _ in range(4)]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    completion = torch.randint(0, len(tokenizer), (len(prompts), width), generator=g)
    completion_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = torch.cat([enc["input_ids"], completion], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], completion_mask], dim=1)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-width] = -100  # only the completions are scored, as in GRPOTrainer._get_per_token_logps_and_entropies
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, width=width)


def loss_step(model, batch: dict, completion_only: bool) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """Seconds of one loss forward + backward, the completion log-probs and the LoRA gradients."""
    from train.grpo import completion_only_head_on_cpu

    switch = completion_only_head_on_cpu(model) if completion_only else contextlib.nullcontext(False)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with switch as on:
        assert bool(on) == completion_only
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                    fused_lm_head=True)
        logps = out.log_probs[:, -batch["width"]:]
        logps.sum().backward()
    seconds = time.perf_counter() - t
    grads = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    return seconds, logps.detach(), grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="forward+backward passes per side (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: as the study trains)")
    args = ap.parse_args()
    from tina_probe.real.models import model_dir, why_broken

    base = model_dir("smollm2-135m-instruct")
    if why_broken(base):
        print(f"bench_lm_head: skipped: no cached real base at {base} (`tina-probe lab real-base` makes it)")
        return
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))  # as GRPOTrainer does
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    torch.manual_seed(0)
    for name, p in model.named_parameters():  # PEFT starts B at 0; nonzero B gives nonzero gradients for A too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    # completion lengths of a real step: one per row of its 4 prompts x 4 generations, some cut off at the recipe's
    # 64-token limit, as TRL logs them
    lengths = [64, 12, 40, 64, 9, 33, 64, 21, 50, 64, 11, 27, 64, 45, 18, 64]
    batch = real_batch(tokenizer, lengths)
    scored = int((batch["labels"] != -100).sum())
    print(f"bench_lm_head: {args.threads} thread(s); batch {tuple(batch['input_ids'].shape)} "
          f"({batch['input_ids'].numel()} positions, {scored} completion tokens scored), vocabulary {len(tokenizer)}")
    times: dict[bool, list[float]] = {False: [], True: []}
    reference: dict[bool, tuple] = {}
    loss_step(model, batch, False)  # warm-up
    for _ in range(args.repeats):
        for completion_only in (False, True):
            seconds, logps, grads = loss_step(model, batch, completion_only)
            times[completion_only].append(seconds)
            reference[completion_only] = (logps, grads)
    same = torch.equal(reference[False][0], reference[True][0]) and all(
        torch.equal(a, b) for a, b in zip(reference[False][1], reference[True][1]))
    every, only = statistics.median(times[False]), statistics.median(times[True])
    print(f"loss forward + backward, every position (TRL on CPU): {every:.2f} s (median of {args.repeats})")
    print(f"loss forward + backward, completion tokens only:      {only:.2f} s")
    print(f"every position / completions only: {every / only:.2f}x; saved {every - only:.2f} s per step")
    print(f"log-probs and LoRA gradients equal bit for bit: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
