"""The task KL on a checkpoint's stored eval completions (analysis/task_completions.py rules K1-K5): which samples are
reused, and the KL they give against a plain transformers + peft computation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from analysis.distribution_probes import render_prompt
from analysis.retention import RetentionSettings, load_tokenizer, run_retention
from analysis.task_completions import read_eval_samples, stored_completions
from tina_probe.benchmarks import Problem
from tina_probe.evaluate import run_eval
from tina_probe.store import Store

PROMPTS = ["1+2=?", "2+3=?", "3+4=?"]


def _problems(questions):
    return [Problem(id=f"p{i}", question=q, answer="0", prompt=f"Solve: {q}") for i, q in enumerate(questions)]


def _samples(ckpt="ck", bench="b", sampling="n2", n=2, problems=3, temperature=1.0, top_p=1.0, max_tokens=16,
             run="r"):
    return pd.DataFrame([{"run": run, "checkpoint": ckpt, "benchmark": bench, "sampling": sampling,
                          "problem_id": f"p{i}", "sample_idx": j, "completion": f"c{i}{j}", "truncated": j == 1,
                          "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n_samples": n,
                          "answer": "0", "n_tokens": 3}
                         for i in range(problems) for j in range(n)])


def test_rules_k2_to_k4_pick_fitting_samples():
    cache = {"b": _problems(PROMPTS), "other": _problems(["9+9=?", *PROMPTS[1:]]), "c": _problems(PROMPTS)}
    got = stored_completions(_samples(), "ck", PROMPTS[:2], dict(cache))
    assert got.source == "eval:b/n2" and got.problems == ("p0", "p0", "p1", "p1")
    assert got.prompts[0] == "Solve: 1+2=?" and got.texts == ("c00", "c01", "c10", "c11")
    assert got.ended == (True, False, True, False)  # truncated samples end without their EOS
    assert stored_completions(_samples(), "elsewhere", PROMPTS, dict(cache)) is None
    assert stored_completions(_samples(bench="other"), "ck", PROMPTS, dict(cache)) is None  # K2: other questions
    assert stored_completions(_samples(problems=2), "ck", PROMPTS, dict(cache)) is None  # K3: a prompt not covered
    both = pd.concat([_samples(), _samples(bench="c", sampling="n4", n=4)])
    assert stored_completions(both, "ck", PROMPTS, dict(cache)).source == "eval:c/n4"  # K4: most samples
    shared = pd.concat([_samples(run="a"), _samples(run="b")])  # a base stored once per run
    assert len(stored_completions(shared, "ck", PROMPTS, dict(cache)).texts) == 6
    assert stored_completions(_samples(), "ck", PROMPTS, {"b": None}) is None  # benchmark not loadable here
    other_golds = _samples().assign(answer="7")  # K2: same questions, other problems (a file that shares a name)
    assert stored_completions(other_golds, "ck", PROMPTS, dict(cache)) is None


def test_rule_k1_keeps_only_the_checkpoints_own_distribution(tmp_path):
    store = Store(tmp_path)
    assert read_eval_samples(store).empty
    store.write("samples", pd.concat([_samples(), _samples(sampling="t07", temperature=0.7),
                                      _samples(sampling="p09", top_p=0.9)]))
    assert set(read_eval_samples(store)["sampling"]) == {"n2"}
    assert read_eval_samples(store, ["elsewhere"]).empty and len(read_eval_samples(store, ["ck"])) == 6


@torch.inference_mode()
def _plain_task_kl(base_dir, adapter, rows, forward: bool = False) -> float:
    """KL(ckpt || base) per completion token (forward: KL(base || ckpt)) with plain transformers + peft, one
    completion at a time."""
    from peft import PeftModel
    from torch.distributions import Categorical, kl_divergence
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir), use_safetensors=True),
                                      str(adapter)).eval()
    total, tokens = 0.0, 0
    for prompt_ids, completion_ids in rows:
        ids = torch.tensor([prompt_ids + completion_ids])
        lp, lb = tuned(input_ids=ids).logits[0].double(), base(input_ids=ids).logits[0].double()
        pos = slice(len(prompt_ids) - 1, len(prompt_ids) + len(completion_ids) - 1)
        p, q = (lb, lp) if forward else (lp, lb)
        total += float(kl_divergence(Categorical(logits=p[pos]), Categorical(logits=q[pos])).sum())
        tokens += len(completion_ids)
    return total / tokens


def test_task_kl_on_stored_eval_completions_equals_plain_transformers(runs_dir, tmp_path, tiny_base):
    bench = tmp_path / "arith.jsonl"
    bench.write_text("".join(json.dumps({"id": f"a{i}", "question": q, "answer": "1"}) + "\n"
                             for i, q in enumerate(PROMPTS)))
    out = tmp_path / "res"
    runs = [str(runs_dir / "lab-lora")]
    run_eval(runs, benchmarks=[str(bench)], n=2, temperature=1.0, max_tokens=6, seed=1, out=out, show=False)
    settings = RetentionSettings(batch_size=4, task_max_tokens=6)
    df = run_retention(runs, probes=[f"kl_task={bench}"], out=out, settings=settings)
    rows = df[(df.probe == "kl_task") & (df.metric == "kl")].set_index("step")
    fwd = df[(df.probe == "kl_task") & (df.metric == "kl_forward")].set_index("step")
    label = pd.read_parquet(out / "samples.parquet")["sampling"].iloc[0]
    assert set(rows["source"]) == set(fwd["source"]) == {f"eval:arith/{label}"}
    assert rows.loc[0, "value"] == 0.0 and fwd.loc[0, "value"] == 0.0  # the base against itself

    # the same numbers from the stored text, tokenized as the generator does, scored by plain transformers + peft:
    # kl on the checkpoint's own completions, kl_forward (RL's Razor's direction) on the base's
    from tina_probe.benchmarks import load_benchmark

    tok = load_tokenizer(str(tiny_base))
    samples = pd.read_parquet(out / "samples.parquet")
    adapter = runs_dir / "lab-lora" / "checkpoint-20"
    problems = {p.id: p for p in load_benchmark(str(bench)).problems}

    def token_rows(checkpoint):
        mine = samples[samples.checkpoint == str(checkpoint)].drop_duplicates(["problem_id", "sample_idx"])
        out_rows = []
        for r in mine.sort_values(["problem_id", "sample_idx"]).itertuples():
            text, special = render_prompt(tok, problems[r.problem_id].prompt)
            ids = tok(text, add_special_tokens=special)["input_ids"]
            comp = tok(r.completion, add_special_tokens=False)["input_ids"] + ([] if r.truncated else
                                                                                [tok.eos_token_id])
            if comp:
                out_rows.append((ids, comp))
        return out_rows

    assert rows.loc[20, "value"] == pytest.approx(_plain_task_kl(tiny_base, adapter, token_rows(adapter)), rel=1e-4)
    assert fwd.loc[20, "value"] == pytest.approx(
        _plain_task_kl(tiny_base, adapter, token_rows(tiny_base), forward=True), rel=1e-4)
    for got in (rows, fwd):
        assert got.loc[20, "value"] > 1e-4  # the adapter moved the policy: a non-trivial match
        assert got.loc[20, "ci_low"] <= got.loc[20, "value"] <= got.loc[20, "ci_high"]

    # K1: an eval at temperature 0.7 is not the checkpoint's distribution: the probe samples (a new store)
    other = tmp_path / "res07"
    run_eval(runs, benchmarks=[str(bench)], n=2, temperature=0.7, max_tokens=6, seed=1, out=other, show=False)
    df07 = run_retention(runs, probes=[f"kl_task={bench}"], out=other, settings=settings)
    assert set(df07[df07.probe == "kl_task"]["source"]) == {"sampled"}
    sampled = df07[(df07.metric == "kl_forward")].set_index("step")
    assert sampled.loc[0, "value"] == 0.0 and sampled.loc[20, "value"] > 1e-4  # sampled from the base here


def test_completion_rows_cap_eos_and_length_check(tiny_base, caplog):
    from analysis.task_completions import TaskCompletions, completion_rows

    tok = load_tokenizer(str(tiny_base))
    long_text, short_text = "1+2=3. 3+4=7. 5+6=11.", "3"
    n_long = len(tok(long_text, add_special_tokens=False)["input_ids"])
    n_short = len(tok(short_text, add_special_tokens=False)["input_ids"])
    stored = TaskCompletions(source="eval:b/x", prompts=("Solve: 1+2=?",) * 2, texts=(long_text, short_text),
                             ended=(True, True), problems=("p0", "p1"), n_tokens=(n_long + 1, n_short + 5))
    cap = n_long - 2
    with caplog.at_level("WARNING"):
        rows, prompt_lens, clusters = completion_rows(tok, stored, render_prompt, cap=cap)
    assert clusters == ["p0", "p1"] and prompt_lens[0] == prompt_lens[1]
    assert len(rows[0]) - prompt_lens[0] == cap  # K6: cut at the cap, so its EOS is not scored
    assert rows[1][-1] == tok.eos_token_id and len(rows[1]) - prompt_lens[1] == n_short + 1  # ended: EOS scored
    assert "1 of 2 stored completions re-tokenize to another length" in caplog.text  # the second's n_tokens is off
