"""The HF backend: adapter hot-swap equals a fresh PeftModel per checkpoint; batching, seeds, truncation."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tina_probe.errors import TinaError
from tina_probe.generate import make_generator
from tina_probe.generate.hf import HFGenerator, split_completion
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
    assert len(gen._peft.peft_config) == 1, "only the active adapter stays loaded"
    gen.close()


def test_merge_mode_matches_hot_swap(session_runs, tiny_base):
    a20 = session_runs / "lab-lora" / "checkpoint-20"
    hot, merged = HFGenerator(), HFGenerator(merge=True)
    for g in (hot, merged):
        g.load_base(str(tiny_base))
    for adapter in (a20, None):
        a = [c[0].text for c in hot.generate(PROMPTS, adapter=adapter, **GREEDY)]
        b = [c[0].text for c in merged.generate(PROMPTS, adapter=adapter, **GREEDY)]
        assert a == b


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
            tag = lambda r: r.lora_name if r is not None else "base"  # noqa: E731
            reqs = lora_request if isinstance(lora_request, list) else [lora_request] * len(prompts)
            return [types.SimpleNamespace(outputs=[Out(tag(r))] * params.n) for r in reqs]

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
    assert [o[0].text for o in out] == ["base", "checkpoint-10", "base", "checkpoint-20"]
    assert all(c.truncated and c.n_tokens == 3 for o in out for c in o)
    for kind, lora in calls[1:]:
        assert lora is None or all(r is not None for r in lora), "a vLLM call mixed base and LoRA prompts"


def test_missing_vllm_and_unknown_backend_are_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(TinaError, match="vllm: not installed"):
        make_generator("vllm")
    with pytest.raises(TinaError, match="nope: unknown backend"):
        make_generator("nope")
