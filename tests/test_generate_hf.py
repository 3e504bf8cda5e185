"""The HF backend: adapter hot-swap equals a fresh PeftModel per checkpoint; batching, seeds, truncation."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tina_probe.errors import TinaError
from tina_probe.generate import make_generator
from tina_probe.generate.base import GenJob
from tina_probe.generate.hf import ADAPTER_CACHE, HFGenerator, batch_seed, split_completion
from tina_probe.generate.lora_bank import LoraBankLinear
from tina_probe.generate.vllm_backend import VLLMGenerator, lora_rank_slot, plan_batches

from reference import fresh_greedy_tokens

PROMPTS = ["1+2=?", "3+4=?", "12*3=?"]
GREEDY = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=8, seed=0)


def _fresh_greedy(base, adapter, prompts):
    """Reference: load the base and a PeftModel anew, generate each prompt alone (no padding)."""
    return fresh_greedy_tokens(base, adapter, prompts, max_new_tokens=8)


def test_split_completion_marks_truncation():
    assert split_completion([5, 6, 0, 7], {0}, 8) == ([5, 6], 3, False)
    assert split_completion([5, 6, 7, 8], {0}, 4) == ([5, 6, 7, 8], 4, True)
    assert split_completion([0], {0}, 4) == ([], 1, False)


def test_hot_swap_matches_fresh_peft_model(session_runs, tiny_base):
    a10 = session_runs / "lab-lora" / "checkpoint-10"
    a20 = session_runs / "lab-lora" / "checkpoint-20"
    gen = HFGenerator(batch_size=8)
    gen.load_base(str(tiny_base))
    # base, adapter, other adapter, back to the first, then base again: every answer equals a fresh load
    order = [None, a10, a20, a10, None]
    got = {}
    for adapter in order:
        res = gen.generate(PROMPTS, adapter=adapter, **GREEDY)
        texts = [c[0].text for c in res]
        if adapter in got:
            assert texts == got[adapter], "hot swap is not reversible"
        got[adapter] = texts
    assert got[None] != got[a10] != got[a20], "random non-zero LoRA B must change greedy outputs"
    tok = gen.tokenizer
    for adapter in (None, a10, a20):
        ref = _fresh_greedy(tiny_base, adapter, PROMPTS)
        for text, ids in zip(got[adapter], ref):
            eos = tok.eos_token_id
            kept = ids[: ids.index(eos)] if eos in ids else ids
            assert text == tok.decode(kept, skip_special_tokens=True)
    assert not any(isinstance(m, LoraBankLinear) for m in gen.model.modules()), "no LoRA wrapper stays in place"
    assert len(gen._loras) <= ADAPTER_CACHE
    gen.close()


def test_merge_mode_matches_hot_swap(session_runs, tiny_base):
    a20 = session_runs / "lab-lora" / "checkpoint-20"
    gens = {m: HFGenerator(merge=m) for m in (False, None, True)}  # never, default (auto), always
    for g in gens.values():
        g.load_base(str(tiny_base))
    for adapter in (a20, None):
        texts = {m: [c[0].text for c in g.generate(PROMPTS, adapter=adapter, **GREEDY)] for m, g in gens.items()}
        assert texts[False] == texts[None] == texts[True]


def test_default_merges_single_adapter_batches_only_in_float32(session_runs, tiny_base, monkeypatch):
    """merge=None: a batch with one adapter runs merged (float32 weights), several adapters share one batch through
    LoraBankLinear, and bf16 weights are never merged (their rounding would swallow small updates)."""
    import torch

    import tina_probe.generate.hf as hf

    used = []
    real_merged, real_bank = hf.merged_lora, hf.lora_bank
    monkeypatch.setattr(hf, "merged_lora", lambda *a: used.append("merged") or real_merged(*a))
    monkeypatch.setattr(hf, "lora_bank", lambda *a: used.append("bank") or real_bank(*a))
    a10, a20 = session_runs / "lab-lora" / "checkpoint-10", session_runs / "lab-lora" / "checkpoint-20"
    kw = {k: v for k, v in GREEDY.items() if k != "seed"}
    for dtype, single in ((torch.float32, "merged"), (torch.bfloat16, "bank")):
        gen = HFGenerator(dtype=dtype, batch_size=64)
        gen.load_base(str(tiny_base))
        used.clear()
        gen.generate(PROMPTS, adapter=a10, **GREEDY)
        assert used == [single], dtype
        used.clear()
        gen.generate_jobs([GenJob(tuple(PROMPTS), a, 0) for a in (a10, a20)], **kw)
        assert used == ["bank"], dtype
        assert not any(isinstance(m, LoraBankLinear) for m in gen.model.modules())
        gen.close()


def _old_path(base, adapter, prompts, *, n, temperature, top_p, max_tokens, seed, batch_size):
    """The generator's previous implementation, as reference: a fresh PeftModel, HF generate per batch of
    batch_size // n prompts after torch.manual_seed(batch_seed(seed, b)), HF's own sampling."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(base), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()
    eos = [tok.eos_token_id]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos, **sampling)
    per, out = max(1, batch_size // n), []
    for b, start in enumerate(range(0, len(prompts), per)):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                         tokenize=False) for p in prompts[start : start + per]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(batch_seed(seed, b))
        with torch.no_grad():
            seqs = model.generate(**enc, generation_config=config)[:, enc["input_ids"].shape[1] :].tolist()
        for i in range(len(texts)):
            group = []
            for row in seqs[i * n : (i + 1) * n]:
                kept, n_tok, truncated = split_completion(row, set(eos), max_tokens)
                group.append((tok.decode(kept, skip_special_tokens=True), n_tok, truncated))
            out.append(group)
    return out


@pytest.mark.parametrize("settings", [dict(n=1, temperature=0.0, top_p=1.0, max_tokens=8, seed=0),
                                      dict(n=3, temperature=1.0, top_p=1.0, max_tokens=6, seed=7),
                                      dict(n=2, temperature=0.7, top_p=0.8, max_tokens=6, seed=11)])
def test_batched_jobs_equal_the_old_per_batch_generate(session_runs, tiny_base, settings):
    """Jobs of several adapters (and the base) stacked into shared forward passes give, job for job, what the old
    implementation (fresh peft model, HF sampling with a global seed per batch) gave: same text, tokens, truncation."""
    adapters = [None, session_runs / "lab-lora" / "checkpoint-10", session_runs / "lab-lora" / "checkpoint-20"]
    prompts = PROMPTS + ["5+5=?", "7*2=?"]
    kw = {k: v for k, v in settings.items() if k != "seed"}
    gen = HFGenerator(batch_size=64)  # every job's batch fits: all three stack into one forward pass
    gen.load_base(str(tiny_base))
    jobs = [GenJob(tuple(prompts), a, settings["seed"]) for a in adapters]
    stacked = gen.generate_jobs(jobs, **kw)
    small = HFGenerator(batch_size=4)  # several batches per job, none stacked
    small.load_base(str(tiny_base))
    for a, got in zip(adapters, stacked):
        ref = _old_path(tiny_base, a, prompts, batch_size=64, **settings)
        assert [[(c.text, c.n_tokens, c.truncated) for c in g] for g in got] == ref, a
        assert gen.generate(prompts, adapter=a, **settings) == got
        ref_small = _old_path(tiny_base, a, prompts, batch_size=4, **settings)
        got_small = small.generate(prompts, adapter=a, **settings)
        assert [[(c.text, c.n_tokens, c.truncated) for c in g] for g in got_small] == ref_small, a


def test_generation_config_processors_keep_hf_generate(session_runs, tiny_base, tmp_path):
    """A model whose generation_config.json adds a logits processor (here no_repeat_ngram_size) is decoded by HF
    generate, which applies it, as before; a plain one by decode_rows."""
    import shutil

    from transformers import GenerationConfig

    from tina_probe.generate.decode import decodes_here

    folder = tmp_path / "ngram-base"
    shutil.copytree(tiny_base, folder)
    config = GenerationConfig.from_pretrained(str(folder))
    config.no_repeat_ngram_size = 2
    config.save_pretrained(str(folder))
    gen = HFGenerator(batch_size=8)
    gen.load_base(str(folder))
    assert not decodes_here(gen.model)
    a10 = session_runs / "lab-lora" / "checkpoint-10"
    settings = dict(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=4)
    for adapter in (None, a10):
        got = gen.generate(PROMPTS, adapter=adapter, **settings)
        ref = _old_path(folder, adapter, PROMPTS, batch_size=8, **settings)
        assert [[(c.text, c.n_tokens, c.truncated) for c in g] for g in got] == ref
    plain = HFGenerator()
    plain.load_base(str(tiny_base))
    assert decodes_here(plain.model)


def test_lora_bank_blocks_equal_single_adapter_layers():
    """k adapters over k blocks of rows (one batched matmul) equal each adapter's layer on its block, up to float
    rounding: which BLAS kernel runs depends on the batch shape and thread count, so bitwise equality is not
    promised (it often holds with one thread)."""
    import torch

    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40)
    a = [torch.randn(4, 24) for _ in range(3)]
    b = [torch.randn(40, 4) for _ in range(3)]
    scaling = [2.0, 0.5, 2.0]
    x = torch.randn(3 * 5, 7, 24)
    with torch.no_grad():
        together = LoraBankLinear(base, a, b, scaling)(x)
        for j in range(3):
            alone = LoraBankLinear(base, a[j : j + 1], b[j : j + 1], scaling[j : j + 1])(x[j * 5 : (j + 1) * 5])
            peft_math = base(x[j * 5 : (j + 1) * 5]) + torch.nn.functional.linear(
                torch.nn.functional.linear(x[j * 5 : (j + 1) * 5], a[j]), b[j]) * scaling[j]
            assert torch.allclose(together[j * 5 : (j + 1) * 5], alone, rtol=1e-5, atol=1e-5)
            assert torch.allclose(alone, peft_math, rtol=1e-5, atol=1e-5)
        # rows leave unevenly (block 1 empties): the layer pads the blocks back for its batched matmul
        bank = LoraBankLinear(base, a, b, scaling)
        rows = torch.tensor([0, 2, 3, 11, 12, 13, 14])
        bank.plan.keep(torch.div(rows, 5, rounding_mode="floor"))
        uneven = bank(x[rows])
        for i, row in enumerate(rows.tolist()):
            j = row // 5
            alone = LoraBankLinear(base, a[j : j + 1], b[j : j + 1], scaling[j : j + 1])(x[row : row + 1])
            assert torch.allclose(uneven[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def _lora_with(base, folder, seed, **config):
    """A saved LoRA of every attention/MLP projection with the given LoraConfig fields and random non-zero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or ("lora" in name and name.endswith("bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def varied_base(tmp_path_factory):
    """A tiny Qwen2 whose greedy text varies (initializer_range 0.3; the 0.02 default echoes a special token)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from conftest import make_tokenizer

    folder = tmp_path_factory.mktemp("varied") / "base"
    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      bos_token_id=None, initializer_range=0.3)
    Qwen2ForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("config", [
    dict(r=4, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
         rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 7}),
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], use_dora=True),
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "gate_proj"], lora_bias=True),
])
def test_other_lora_configs_match_a_fresh_peft_model(varied_base, tmp_path, config):
    """rsLoRA and rank/alpha patterns (read here), DoRA and LoRA biases (applied by peft itself): each equals a fresh
    peft model, and the base is untouched afterwards."""
    import torch

    adapter = _lora_with(varied_base, tmp_path / "adapter", seed=5, **config)
    gen = HFGenerator(batch_size=8)
    gen.load_base(str(varied_base))
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    base_texts = [c[0].text for c in gen.generate(PROMPTS, adapter=None, **GREEDY)]
    texts = [c[0].text for c in gen.generate(PROMPTS, adapter=adapter, **GREEDY)]
    assert texts != base_texts
    tok = gen.tokenizer
    for text, ids in zip(texts, _fresh_greedy(varied_base, adapter, PROMPTS)):
        kept = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
        assert text == tok.decode(kept, skip_special_tokens=True)
    assert [c[0].text for c in gen.generate(PROMPTS, adapter=None, **GREEDY)] == base_texts
    after = gen.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_in_place_merge_is_peft_merge_and_restores_the_base_bit_exactly(session_runs, tiny_base):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tina_probe.generate.lora_bank import merged_lora

    a20 = session_runs / "lab-lora" / "checkpoint-20"
    gen = HFGenerator(merge=True)
    gen.load_base(str(tiny_base))
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    peft_merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base), use_safetensors=True, dtype=torch.float32),
        str(a20)).merge_and_unload().state_dict()
    with merged_lora(gen.model, gen._lora(a20), gen._pristine) as model:
        merged = model.state_dict()
        assert all(torch.equal(merged[k], peft_merged[k]) for k in merged)
    gen.generate(PROMPTS, adapter=a20, **GREEDY)
    after = gen.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sampling_is_seeded_and_batch_padding_is_harmless(tiny_base):
    gen = HFGenerator(batch_size=64)
    gen.load_base(str(tiny_base))
    kw = dict(adapter=None, n=3, temperature=1.0, top_p=0.9, max_tokens=6)
    first = gen.generate(PROMPTS, seed=7, **kw)
    again = gen.generate(PROMPTS, seed=7, **kw)
    other = gen.generate(PROMPTS, seed=8, **kw)
    assert first == again
    assert first != other
    assert all(len(group) == 3 for group in first)
    for group in first:
        for c in group:
            assert 1 <= c.n_tokens <= 6
            assert (not c.truncated) or c.n_tokens == 6
    # greedy on a left-padded batch equals greedy one prompt at a time
    batched = [c[0].text for c in gen.generate(PROMPTS, adapter=None, **GREEDY)]
    single = [gen.generate([p], adapter=None, **GREEDY)[0][0].text for p in PROMPTS]
    assert batched == single


def test_render_uses_chat_template(tiny_base):
    gen = HFGenerator()
    gen.load_base(str(tiny_base))
    assert gen.render("2+2=?") == "<|user|>2+2=?\n<|assistant|>"


def test_full_checkpoint_takes_tokenizer_from_base(session_runs, tiny_base):
    full = session_runs / "lab-full" / "checkpoint-10"
    gen = HFGenerator()
    gen.load_base(str(full), tokenizer=str(tiny_base))
    out = gen.generate(PROMPTS[:1], adapter=None, **GREEDY)
    assert len(out) == 1 and out[0][0].n_tokens >= 1


def test_missing_model_is_a_tina_error(tmp_path):
    with pytest.raises(TinaError, match="cannot load model"):
        HFGenerator().load_base(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- vLLM guard (pure; no vllm needed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e"])), max_size=40),
       st.integers(min_value=2, max_value=6))
def test_vllm_plan_never_mixes_base_and_adapter_requests(adapters, max_loras):
    batches = plan_batches(adapters, max_loras)
    assert sorted(i for b in batches for i in b) == list(range(len(adapters)))  # each request exactly once
    for batch in batches:
        kinds = {adapters[i] is None for i in batch}
        assert len(kinds) == 1, "a batch mixes base and LoRA requests"
        distinct = {adapters[i] for i in batch} - {None}
        assert len(distinct) <= max_loras - 1, "a batch fills every LoRA slot"


def test_vllm_rank_slots():
    assert [lora_rank_slot([r]) for r in (1, 4, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    assert lora_rank_slot([4, 32, 16]) == 32
    with pytest.raises(TinaError):
        lora_rank_slot([1024])


def _fake_vllm(monkeypatch, calls):
    """A stand-in `vllm` module recording each LLM.generate call's LoRA requests."""
    import types

    class Out:
        def __init__(self, text):
            self.text, self.token_ids, self.finish_reason = text, [1, 2, 3], "length"

    class LLM:
        def __init__(self, **kw):
            calls.append(("init", kw))

        def get_tokenizer(self):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(calls[0][1]["model"])

        def generate(self, prompts, params, lora_request=None, use_tqdm=False):
            calls.append(("generate", lora_request))
            tag = lambda r, p: (r.lora_name if r is not None else "base") + f"/{p.seed}"  # noqa: E731
            reqs = lora_request if isinstance(lora_request, list) else [lora_request] * len(prompts)
            per = params if isinstance(params, list) else [params] * len(prompts)
            return [types.SimpleNamespace(outputs=[Out(tag(r, p))] * p.n) for r, p in zip(reqs, per)]

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.lora_name, self.lora_int_id, self.lora_path = name, int_id, path

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)


def test_vllm_backend_wiring_with_a_stand_in(monkeypatch, session_runs, tiny_base):
    calls = []
    _fake_vllm(monkeypatch, calls)
    a10 = session_runs / "lab-lora" / "checkpoint-10"
    a20 = session_runs / "lab-lora" / "checkpoint-20"
    gen = VLLMGenerator()
    gen.load_base(str(tiny_base), adapters=[a10, a20])
    init = calls[0][1]
    assert init["enable_lora"] and init["max_loras"] == 3 and init["max_lora_rank"] == 8
    assert init["dtype"] == "float32" and init["load_format"] == "safetensors" and not init["trust_remote_code"]
    reqs = [("1+2=?", None), ("1+2=?", a10), ("3+4=?", None), ("3+4=?", a20)]
    out = gen.generate_many(reqs, n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0)
    assert [o[0].text for o in out] == ["base/0", "checkpoint-10/0", "base/0", "checkpoint-20/0"]
    assert all(c.truncated and c.n_tokens == 3 for o in out for c in o)
    jobs = [GenJob(("1+2=?", "3+4=?"), a10, 5), GenJob(("1+2=?",), None, 6), GenJob(("3+4=?",), a20, 7)]
    got = gen.generate_jobs(jobs, n=2, temperature=1.0, top_p=1.0, max_tokens=4)
    assert [[g[0].text for g in job] for job in got] == [["checkpoint-10/5"] * 2, ["base/6"], ["checkpoint-20/7"]]
    assert all(len(g) == 2 for job in got for g in job)
    for kind, lora in calls[1:]:
        assert lora is None or all(r is not None for r in lora), "a vLLM call mixed base and LoRA prompts"


def test_missing_vllm_and_unknown_backend_are_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(TinaError, match="vllm: not installed"):
        make_generator("vllm")
    with pytest.raises(TinaError, match="nope: unknown backend"):
        make_generator("nope")
