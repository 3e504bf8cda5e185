"""vLLM vs transformers+peft: greedy tokens agree on a tiny Qwen2 and its LoRAs; no adapter leaks into the base."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from reference import fresh_greedy_tokens, save_random_lora, vllm_forced_tokens

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # before vllm starts: it misreads free memory here
if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (pip install 'tina-probe[vllm]')", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[1]
LAB_BASE = ROOT / "data" / "lab" / "base"
LAB_TEST = ROOT / "data" / "lab" / "test.jsonl"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_TOKENS = 24
GREEDY = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=0)


def lab_rows(k: int = 6) -> list[dict]:
    """The first k lab test problems."""
    return [json.loads(line) for line in LAB_TEST.read_text().splitlines()[:k]]


def save_tiny_base(folder: Path) -> Path:
    """A random Qwen2 (hidden 64, 2 heads of dim 32, 2 layers) with the lab tokenizer, saved as safetensors.

    initializer_range 0.3 keeps greedy choices clear (top-2 logit gaps >= 1e-2) and the text varied; the
    default 0.02 makes this tied-embedding model echo its last prompt token forever."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tina_probe.lab.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=None, initializer_range=0.3,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def save_lora(base: Path, folder: Path, seed: int, r: int = 8) -> Path:
    """A PEFT LoRA (r=8, every projection) of `base` with random non-zero lora_B, saved as safetensors."""
    return save_random_lora(base, folder, seed=seed, r=r, target_modules=PROJECTIONS, scale=0.3)


def fresh_forced_tokens(base: Path, adapter: Path | None, prompts: list[str], length: int) -> list[list[int]]:
    """Ground truth: a fresh transformers (+ peft) model, one prompt at a time, greedy, exactly `length` tokens."""
    return fresh_greedy_tokens(base, adapter, prompts, max_new_tokens=length, min_new_tokens=length)


def fresh_hf(base: Path, adapter: Path | None, prompts: list[str]):
    """A fresh single-model HFGenerator run (the base alone, or one adapter alone)."""
    from tina_probe.generate.hf import HFGenerator

    gen = HFGenerator(device="cpu", batch_size=8)
    gen.load_base(str(base))
    try:
        return gen.generate(prompts, adapter=adapter, **GREEDY)
    finally:
        gen.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """The tiny base, a run folder with two LoRA checkpoints of it, and a 4-problem lab benchmark file."""
    root = tmp_path_factory.mktemp("vllm").resolve()
    base = save_tiny_base(root / "base")
    run = root / "runs" / "tiny-lora"
    rows = lab_rows(6)
    bench = root / "lab4.jsonl"
    bench.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"]}) + "\n"
                             for r in rows[:4]))
    adapters = [save_lora(base, run / f"checkpoint-{step}", seed=step) for step in (1, 2)]
    run.joinpath("tina_run.json").write_text(json.dumps(
        {"name": "tiny-lora", "kind": "lora", "base": str(base), "eval_benchmark": str(bench)}))
    return SimpleNamespace(base=base, run=run, adapters=adapters, bench=bench,
                           prompts=[r["question"] for r in rows])


@pytest.fixture(scope="module")
def vgen(tiny):
    """The file's one LLM: the tiny base with both adapters, capped at 2 LoRA slots (every slot fills)."""
    pytest.importorskip("vllm")
    from tina_probe.generate.vllm_backend import VLLMGenerator

    gen = VLLMGenerator(max_loras=2)
    gen.load_base(str(tiny.base), adapters=tiny.adapters)
    yield gen
    gen.close()


def test_prompt_tokens_match_transformers(tiny, vgen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny.base))
    for p in tiny.prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        assert vgen.render(p) == text == f"<|user|>{p}\n<|assistant|>"
        assert vgen._token_prompt(p)["prompt_token_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_greedy_tokens_match_transformers_and_peft(tiny, vgen):
    got = {}
    for adapter in (None, *tiny.adapters):
        ref = fresh_forced_tokens(tiny.base, adapter, tiny.prompts, MAX_TOKENS)
        got[adapter] = vllm_forced_tokens(vgen, adapter, tiny.prompts, MAX_TOKENS)
        assert got[adapter] == ref, f"vLLM and transformers disagree ({adapter or 'base'})"
        assert all(len(ids) == MAX_TOKENS for ids in ref)
    a1, a2 = tiny.adapters
    assert got[None] != got[a1] and got[None] != got[a2] and got[a1] != got[a2], "adapters must change outputs"


def test_backends_agree_through_the_generator_protocol(tiny, vgen):
    from tina_probe.generate.hf import HFGenerator

    hf = HFGenerator(device="cpu", batch_size=4)  # batches of 4 with left padding vs vLLM's own batching
    hf.load_base(str(tiny.base))
    for adapter in (None, tiny.adapters[0], tiny.adapters[1], None):
        ours = vgen.generate(tiny.prompts, adapter=adapter, **GREEDY)
        theirs = hf.generate(tiny.prompts, adapter=adapter, **GREEDY)
        assert ours == theirs  # text (special tokens skipped), token count and truncation, per prompt
    assert all(c.text and c.n_tokens == MAX_TOKENS and c.truncated for g in ours for c in g)
    hf.close()


def test_sampling_is_seeded(tiny, vgen):
    kw = dict(adapter=tiny.adapters[0], n=3, temperature=1.0, top_p=0.9, max_tokens=8)
    first = vgen.generate(tiny.prompts[:2], seed=7, **kw)
    assert first == vgen.generate(tiny.prompts[:2], seed=7, **kw)
    assert first != vgen.generate(tiny.prompts[:2], seed=8, **kw)
    assert [len(g) for g in first] == [3, 3] and len({c.text for c in first[0]}) > 1


def test_one_sweep_leaks_no_adapter_into_the_base(tiny, vgen, tmp_path):
    """Guards vLLM's CPU LoRA bug: in a batch mixing base and LoRA prompts with every LoRA slot filled (2 slots,
    2 adapters here), the base prompts get the last slot's adapter. One sweep over base and both adapters must
    give the base alone's outputs and each adapter's fresh single-adapter outputs."""
    from tina_probe.evaluate import run_eval

    a1, a2 = tiny.adapters
    alone = {a: fresh_hf(tiny.base, a, tiny.prompts) for a in (None, a1, a2)}
    assert alone[None] != alone[a1] and alone[None] != alone[a2], "a leak must be visible in the outputs"

    requests = [(p, a) for p in tiny.prompts for a in (None, a1, a2, None)]  # interleaved, base twice
    got = vgen.generate_many(requests, **GREEDY)
    for (p, a), completions in zip(requests, got):
        assert completions == alone[a][tiny.prompts.index(p)], f"{a or 'base'} on {p!r}"

    llm = vgen.llm
    tables = run_eval([str(tiny.run)], n=1, temperature=0.0, max_tokens=MAX_TOKENS, backend="vllm",
                      out=tmp_path / "results", generator=vgen, show=False)
    assert vgen.llm is llm, "the sweep reloaded the model"
    samples = tables["samples"].sort_values(["step", "problem_id"])
    n_problems = len(tiny.bench.read_text().splitlines())
    assert sorted(samples["step"].unique()) == [0, 1, 2]
    for step, adapter in ((0, None), (1, a1), (2, a2)):
        rows = samples[samples["step"] == step]
        want = [g[0] for g in alone[adapter][:n_problems]]
        assert list(rows["completion"]) == [c.text for c in want], f"step {step}"
        assert list(rows["n_tokens"]) == [c.n_tokens for c in want]


def test_shipped_lab_base_agrees_with_transformers(tmp_path):
    """The shipped model organism (real EOS-terminated completions) and a LoRA of it: a second LLM load."""
    if not (LAB_BASE / "config.json").is_file():
        pytest.skip(f"{LAB_BASE} is not there yet (the shipped lab base model); the tiny-model tests cover vLLM")
    from tina_probe.generate.hf import HFGenerator
    from tina_probe.generate.vllm_backend import VLLMGenerator

    adapter = save_lora(LAB_BASE, tmp_path / "lab-lora", seed=3)
    prompts = [r["question"] for r in lab_rows(6)]
    gen = VLLMGenerator()
    gen.load_base(str(LAB_BASE), adapters=[adapter])
    hf = HFGenerator(device="cpu", batch_size=8)
    hf.load_base(str(LAB_BASE))
    try:
        for a in (None, adapter):
            assert vllm_forced_tokens(gen, a, prompts, 32) == fresh_forced_tokens(LAB_BASE, a, prompts, 32)
            kw = dict(GREEDY, max_tokens=64)
            assert gen.generate(prompts, adapter=a, **kw) == hf.generate(prompts, adapter=a, **kw)
    finally:
        gen.close()
        hf.close()
