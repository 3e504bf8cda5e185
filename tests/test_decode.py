"""decode_rows with finished rows leaving in groups of 4, and sample_like_generate: generate's own sampling, bit for bit.

Ground truth: F.linear on the full batch (the BLAS rule the groups rest on) and transformers' generate itself, with the
same global seed, on the lab base with LoRA adapters injected by peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tina_probe.generate.decode import decode_rows, exact_row_granule, sample_like_generate

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_in_groups_of_4_keep_every_row_of_the_full_batch(threads):
    """The rule decode_rows(row_granule=4) rests on, on this machine's BLAS: any multiple of 4 rows of a batch of a
    multiple of 4 rows gives those rows bit for bit, at the lab's and SmolLM2's widths (LoRA ranks included)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert exact_row_granule("cpu") == 4
        gen = torch.Generator().manual_seed(1)
        for k, n in ((192, 192), (192, 64), (768, 192), (192, 8), (8, 192), (192, 106), (576, 1536), (16, 576)):
            w = torch.randn(n, k, generator=gen)
            for batch in (8, 12, 64):
                x = torch.randn(batch, k, generator=gen)
                full = F.linear(x, w)
                for m in range(4, batch, 4):
                    rows = torch.randperm(batch, generator=gen)[:m].sort().values
                    assert torch.equal(F.linear(x[rows], w), full[rows]), (k, n, batch, m)
    finally:
        torch.set_num_threads(before)


def test_granule_is_off_where_no_rule_was_measured():
    assert exact_row_granule("cuda") == 0 and exact_row_granule("meta") == 0


@pytest.fixture(scope="module")
def lab_lora():
    """The lab base with random (non-zero) LoRA r8 adapters on every projection, in train mode as TRL samples."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(LAB / "base")
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(LAB / "base", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.train()
    questions = [json.loads(line)["question"] for line in (LAB / "train.jsonl").read_text().splitlines()[:4]]
    return model, tok, questions


def _batch(tok, questions, per_prompt):
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions for _ in range(per_prompt)]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _config(tok, **over):
    from transformers import GenerationConfig

    settings = dict(max_new_tokens=48, do_sample=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=[tok.eos_token_id], temperature=1.0, top_p=1.0, top_k=0, min_p=None,
                    repetition_penalty=1.0, cache_implementation=None, disable_compile=True)  # TRL's, as it sets them
    return GenerationConfig(**(settings | over))


class _BatchSizes:
    """The batch size of every forward call of a module."""

    def __init__(self, module):
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(
            lambda mod, args, kwargs, out: self.sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)


@pytest.mark.parametrize("per_prompt, over", [(8, {}), (4, {"temperature": 0.7, "top_p": 0.9})])
def test_sample_like_generate_is_generate_bit_for_bit(lab_lora, per_prompt, over):
    """Same tokens, same shape, and the global random stream left where generate leaves it; finished rows left the
    batch in groups of 4."""
    model, tok, questions = lab_lora
    enc = _batch(tok, questions, per_prompt)
    config = _config(tok, **over)
    with torch.no_grad():
        torch.manual_seed(7)
        want = model.generate(**enc, generation_config=config)
        want_next = torch.rand(4)
        sizes = _BatchSizes(model.get_base_model())
        torch.manual_seed(7)
        got = sample_like_generate(model.get_base_model(), enc["input_ids"], enc["attention_mask"], config)
        got_next = torch.rand(4)
        sizes.handle.remove()
    assert got is not None and torch.equal(got, want) and torch.equal(got_next, want_next)
    batch = enc["input_ids"].shape[0]
    assert sizes.sizes[0] == len(questions) and sizes.sizes[1] == batch  # one prefill per distinct prompt
    assert min(sizes.sizes[1:]) < batch and all(s % 4 == 0 for s in sizes.sizes)  # rows left, 4 at a time


@pytest.mark.parametrize("over", [{"top_k": None}, {"top_k": 50}, {"repetition_penalty": 1.1}, {"do_sample": False},
                                  {"num_beams": 2}, {"min_p": 0.1}, {"no_repeat_ngram_size": 2}])
def test_sample_like_generate_leaves_other_configs_to_generate(lab_lora, over):
    """A config entry that makes HF apply another processor or search (top_k None is HF's default 50) is declined."""
    model, tok, questions = lab_lora
    enc = _batch(tok, questions, 4)
    with torch.no_grad():
        assert sample_like_generate(model.get_base_model(), enc["input_ids"], enc["attention_mask"],
                                    _config(tok, **over)) is None


def test_rows_never_leave_a_batch_that_is_not_a_multiple_of_the_granule(lab_lora):
    """6 rows: the BLAS rule holds only for batches of a multiple of 4, so every row is computed to the end."""
    model, tok, questions = lab_lora
    enc = _batch(tok, questions[:3], 2)
    base = model.get_base_model()
    with torch.no_grad():
        sizes = _BatchSizes(base)
        torch.manual_seed(3)
        decode_rows(base, enc["input_ids"], enc["attention_mask"], max_tokens=48, eos_ids={tok.eos_token_id},
                    pad_id=tok.pad_token_id, row_granule=4)
        sizes.handle.remove()
    assert set(sizes.sizes) == {6} and len(sizes.sizes) > 1


def test_prefill_rows_share_a_prefill_in_groups_the_blas_rule_covers():
    """Rows that repeat a prompt (same ids and mask) map to its first row, in batch order, padded with repeated rows up
    to a multiple of the granule; no sharing where that is the whole batch, where the batch is not a multiple of the
    granule, or with granule 1."""
    from tina_probe.generate.decode import _prefill_rows

    prompts = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4], [1, 2, 3]])
    masks = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]])
    order = torch.tensor([2, 2, 0, 1, 3, 0, 1, 3, 2, 0, 1, 3, 0, 1, 2, 3])

    def shared(ids, mask):
        prefilled, copies = _prefill_rows(ids, mask, 4)
        assert torch.equal(ids[prefilled][copies], ids) and torch.equal(mask[prefilled][copies], mask)
        assert torch.equal(prefilled, prefilled.sort().values) and len(prefilled) % 4 == 0
        return prefilled.tolist()

    assert shared(prompts[order], masks[order]) == [0, 2, 3, 4]
    assert shared(prompts[order][:12], masks[order][:12]) == [0, 2, 3, 4]
    assert shared(prompts[[1, 1, 1, 1, 3, 3, 3, 3]], masks[[1, 1, 1, 1, 3, 3, 3, 3]]) == [0, 1, 2, 4]  # 2 + 2 padding
    three = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    assert shared(prompts[three], masks[three]) == [0, 1, 4, 8]  # 3 + 1 padding
    same_ids = masks[order].clone()
    same_ids[0] = 1  # row 0's ids equal rows 1 and 8's, its mask does not: a fifth distinct prompt, 8 rows prefilled
    assert shared(prompts[order], same_ids) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert _prefill_rows(prompts[order][:6], masks[order][:6], 4) is None  # batch of 6
    assert _prefill_rows(prompts, masks, 4) is None  # nothing repeats
    assert _prefill_rows(prompts[[0, 1, 2, 3, 0, 1, 2]], masks[[0, 1, 2, 3, 0, 1, 2]], 4) is None
    assert _prefill_rows(prompts[order], masks[order], 1) is None


def test_a_shared_prefill_is_the_full_batch_prefill_bit_for_bit(lab_lora):
    """The distinct prompts' prefill, copied to every row, gives the full batch's last logits and cache bit for bit (the
    BLAS rule at a prefill's shapes), and decode_rows samples the same tokens with it as without (eval: 4 samples)."""
    from transformers import DynamicCache

    from tina_probe.generate.decode import BlockSampler, _prefill_rows

    model, tok, questions = lab_lora
    base = model.get_base_model()
    enc = _batch(tok, questions, 4)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    prefilled, copies = _prefill_rows(ids, mask, exact_row_granule("cpu"))
    with torch.no_grad():
        full_cache, shared_cache = (DynamicCache(config=base.config) for _ in range(2))
        full = base(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=full_cache,
                    use_cache=True, logits_to_keep=1).logits
        shared = base(input_ids=ids[prefilled], attention_mask=mask[prefilled], position_ids=positions[prefilled],
                      past_key_values=shared_cache, use_cache=True, logits_to_keep=1).logits[copies]
        shared_cache.batch_select_indices(copies)
        assert torch.equal(full, shared)
        for a, b in zip(full_cache.layers, shared_cache.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        runs = []
        for once in (True, False):
            sampler = BlockSampler([5], ids.shape[0], 1.0, 1.0, "cpu")
            runs.append(decode_rows(base, ids, mask, max_tokens=32, eos_ids={tok.eos_token_id},
                                    pad_id=tok.pad_token_id, sampler=sampler, prefill_once=once))
        assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_lora_products_keep_rows_in_groups_of_4(threads):
    """The rule for LoraBankLinear's batched products (bmm over blocks): a multiple of 4 rows of every block gives
    those rows bit for bit, at the lab's and SmolLM2's LoRA shapes and a prefill's row counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(2)
        for k_in, n_out in ((192, 8), (8, 192), (576, 16), (16, 1536)):
            for blocks, rows in ((2, 64), (3, 12 * 33), (5, 48)):
                x, w = torch.randn(blocks, rows, k_in, generator=gen), torch.randn(blocks, k_in, n_out, generator=gen)
                full = torch.bmm(x, w)
                for m in (4, 8, rows // 2 - rows // 2 % 4):
                    picked = torch.randperm(rows, generator=gen)[:m].sort().values
                    assert torch.equal(torch.bmm(x[:, picked], w), full[:, picked]), (k_in, n_out, blocks, rows, m)
    finally:
        torch.set_num_threads(before)


def test_a_stack_of_adapters_shares_each_blocks_prefill_bit_for_bit():
    """Eval's stacks of several adapters (a row plan, equal blocks of the same prompts): each block prefills the same
    distinct rows, and the prefill's logits and cache, then the sampled tokens, equal the unshared batch's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from tina_probe.generate.decode import BlockSampler, _shared_prefill
    from tina_probe.generate.lora_bank import PlainLora, lora_bank

    tok = AutoTokenizer.from_pretrained(LAB / "base")
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(LAB / "base", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(4)
    kinds = ("q_proj", "v_proj", "down_proj")
    targets = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in kinds]
    loras = [PlainLora(f"a{j}", {name: (torch.randn(8, model.get_submodule(name).in_features, generator=gen) * 0.1,
                                        torch.randn(model.get_submodule(name).out_features, 8, generator=gen) * 0.1)
                                 for name in targets}, {name: 2.0 for name in targets}) for j in range(2)]
    questions = [json.loads(line)["question"] for line in (LAB / "test.jsonl").read_text().splitlines()[:6]]
    enc = _batch(tok, questions, 2)  # 12 rows a block, 6 distinct: 8 prefilled in each block
    ids, mask = enc["input_ids"].repeat(3, 1), enc["attention_mask"].repeat(3, 1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    blocks = [None, *loras]  # the base joins as a zero adapter, as in HFGenerator's stacks
    with torch.no_grad():
        with lora_bank(model, blocks) as (stacked, plan):
            prefilled, copies = _shared_prefill(ids, mask, plan, 12)
            assert len(prefilled) == 24 and torch.equal(ids[prefilled][copies], ids)
            caches = [DynamicCache(config=model.config) for _ in range(2)]
            full = stacked(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=caches[0],
                           use_cache=True, logits_to_keep=1).logits
            shared = stacked(input_ids=ids[prefilled], attention_mask=mask[prefilled],
                             position_ids=positions[prefilled], past_key_values=caches[1], use_cache=True,
                             logits_to_keep=1).logits[copies]
            caches[1].batch_select_indices(copies)
            assert torch.equal(full, shared)
            for a, b in zip(caches[0].layers, caches[1].layers):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        runs = []
        for once in (True, False):
            with lora_bank(model, blocks) as (stacked, plan):
                sampler = BlockSampler([1, 2, 3], 12, 1.0, 1.0, "cpu")
                runs.append(decode_rows(stacked, ids, mask, max_tokens=32, eos_ids={tok.eos_token_id},
                                        pad_id=tok.pad_token_id, sampler=sampler, plan=plan, rows_per_block=12,
                                        prefill_once=once))
        assert torch.equal(runs[0], runs[1])
