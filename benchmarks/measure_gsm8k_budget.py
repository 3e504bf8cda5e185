"""How many of the real base's GSM8K answers a completion budget cuts off: the share of samples still running at
each budget (one sampled completion per problem at T=1, the study's sampling), for the real study's GSM8K choice.

    python benchmarks/measure_gsm8k_budget.py [--problems 8] [--max-tokens 512] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tina_probe.benchmarks import resolve_spec, render_prompt
    from tina_probe.real import ensure_base

    folder = ensure_base("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bench = resolve_spec("gsm8k-head100")
    rows = [json.loads(x) for x in (ROOT / "data" / "real" / "gsm8k-test-head100.jsonl").read_text().splitlines()]
    prompts = [tok.apply_chat_template([{"role": "user", "content": render_prompt(bench.template, r["question"])}],
                                       add_generation_prompt=True, tokenize=False) for r in rows[:args.problems]]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=args.max_tokens, pad_token_id=tok.eos_token_id)
    seconds = time.time() - t0
    new = out[:, enc["input_ids"].shape[1]:]
    lengths = []
    for row in new.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), None)
        lengths.append(n)  # None: still running at max_tokens
    budgets = [b for b in (64, 128, 192, 256, 384, 512) if b <= args.max_tokens]
    cut = {b: sum(1 for n in lengths if n is None or n > b) / len(lengths) for b in budgets}
    result = {"problems": len(lengths), "lengths": lengths, "cut_off_share": cut, "seconds": round(seconds, 1),
              "tokens_per_s": round(sum(n or args.max_tokens for n in lengths) / seconds, 1)}
    for b, share in cut.items():
        print(f"budget {b:4d} tokens: {share:.0%} of {len(lengths)} base completions cut off")
    print(f"generation {seconds:.0f} s ({result['tokens_per_s']} tokens/s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
