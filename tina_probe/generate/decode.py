"""A decoding loop equal to transformers' generate for plain decoder-only models, except that finished rows leave
the batch (generate computes every row until the last one ends), and sampling with one random stream per block of
rows so that a stacked batch samples each job as its own generate call would have (BlockSampler).

decodes_here() says when the loop reproduces generate; HFGenerator falls back to generate itself otherwise.
sample_like_generate() is generate's sampling call itself (torch's global random stream), bit for bit on CPU: the
GRPO trainer samples through it (train/grpo.py).

Rows and the BLAS (measured on this machine's MKL, torch 2.13, 1-8 threads; tests/test_decode.py): a row of F.linear
is the same bit for bit in any batch of at least 4 rows on one thread, but not in a batch of 1-3 rows (another
kernel); with several threads it also differs in batches of 5, 6, 7, 9, 10 or 11 rows, and a batch of 5-11 rows that
is not a multiple of 4 differs from its subsets of 4 or 8. A batch that is a multiple of 4 rows gives, for every
subset of a multiple of 4 rows, the same rows bit for bit. decode_rows(row_granule=4) keeps
the computed rows a multiple of 4 (finished rows stay as padding until a group of 4 can leave), which makes the loop
equal to generate bit for bit, not only token for token; row_granule=1 lets every finished row leave (HFGenerator:
tokens checked equal to generate). The same rule lets rows that share a prompt share its prefill (prefill_once: GRPO
samples each prompt num_generations times, eval n times): the distinct prompts' rows, padded with repeated rows to a
multiple of 4, are a multiple of 4 rows of the full batch's, so their keys, values and last logits are the full
batch's bit for bit.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from tina_probe.generate.lora_bank import RowPlan
from tina_probe.slow_paths import slow_paths


class BlockSampler(LogitsProcessor):
    """Multinomial sampling with one torch.Generator per block of rows, so that a batch of several jobs samples each
    job exactly as HF generate sampled a batch of its own after torch.manual_seed(seed) (one global RNG per call).

    Called by decode_rows on each step's float32 logits: applies HF's own warpers as HF's sampling path would for
    these settings, then softmax and torch.multinomial per block; returns scores whose argmax is the drawn token."""

    def __init__(self, seeds: Sequence[int] | None, rows: int, temperature: float, top_p: float, device):
        """seeds None: one block of `rows` rows drawn from torch's global random stream, as generate draws."""
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.rows = rows
        self.generators = [None] if seeds is None else \
            [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.warpers = []  # the conditions and order of GenerationMixin._get_logits_processor (top_k=0: none)
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(float(temperature)))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=float(top_p), min_tokens_to_keep=1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = F.softmax(scores, dim=-1)
        picks = torch.cat([
            torch.multinomial(probs[j * self.rows:(j + 1) * self.rows], num_samples=1, generator=g)
            for j, g in enumerate(self.generators)
        ])
        return torch.full_like(scores, -math.inf).scatter_(1, picks, 0.0)


# generation_config.json entries that cannot change what decode_rows computes: ids it reads, values that
# HFGenerator._generation_config sets itself, output switches. Any other entry (min_length, no_repeat_ngram_size,
# suppress_tokens, stop_strings, a static cache, ...) is applied by HF generate, so generation stays there.
_DECODE_SAFE_KEYS = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "_from_model_config",
    "transformers_version", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "num_beams",
    "num_return_sequences", "max_new_tokens", "min_new_tokens", "max_length", "length_penalty", "early_stopping",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
}


def _plain_generation_config(model) -> bool:
    """Whether the model's own generation_config adds nothing to HFGenerator's settings in HF generate."""
    config = getattr(model, "generation_config", None)
    items = config.to_dict().items() if config is not None else ()
    return all(v is None or k in _DECODE_SAFE_KEYS or (k == "use_cache" and v is True) for k, v in items)


def decodes_here(model) -> bool:
    """Whether decode_rows reproduces this model's HF generate: a decoder-only causal LM with GenerationMixin's own
    input preparation, position ids, logits_to_keep, attention layers only (a DynamicCache that can drop rows) and
    no generation_config entry that HF would turn into another logits processor or stopping rule."""
    import inspect

    from transformers import GenerationMixin

    config = getattr(model, "config", None)
    if not isinstance(model, GenerationMixin) or config is None or config.is_encoder_decoder:
        return False
    if type(model).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
        return False
    if not _plain_generation_config(model):
        return False
    params = inspect.signature(model.forward).parameters
    layers = getattr(config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"]
    return {"position_ids", "logits_to_keep"} <= set(params) and \
        set(layers) <= {"full_attention", "sliding_attention"}


def _next_tokens(logits: torch.Tensor, live: torch.Tensor, batch: int, sampler: BlockSampler | None) -> torch.Tensor:
    """The next token of each computed row (`live`: their batch rows): greedy argmax, or BlockSampler over the whole
    original batch (rows that left get zero logits: they still draw, as they did in HF generate, so every block keeps
    its random stream; torch.multinomial draws one exponential per entry whatever the probabilities)."""
    if sampler is None:
        return torch.argmax(logits, dim=-1)
    full = logits.new_zeros((batch, logits.shape[-1]))
    full[live] = logits
    return torch.argmax(sampler(None, full), dim=-1)[live]


def exact_row_granule(device) -> int:
    """decode_rows' row_granule that keeps every row's arithmetic bit for bit that of the full batch: 4 with MKL on
    CPU where a quick check on this process's BLAS and thread count confirms it (module docstring), else 0 (rows never
    leave): no such rule was measured elsewhere (cuBLAS picks its kernels by the batch size)."""
    if torch.device(device).type != "cpu" or not torch.backends.mkl.is_available():
        return 0
    return 4 if _rows_of_4_hold(torch.get_num_threads()) else 0


@functools.cache
def _rows_of_4_hold(threads: int) -> bool:
    """Whether F.linear gives every row of a 32-row batch bit for bit in subsets of 4, 8, ..., 28 rows, and a prefill's
    rows (16 prompts x 24 positions) in 4 of its prompts, on a few shapes (the lab's and a 0.1B model's widths)."""
    gen = torch.Generator().manual_seed(0)
    for k, n in ((8, 192), (192, 768), (576, 1536), (1536, 576)):
        x, w = torch.randn(32, k, generator=gen), torch.randn(n, k, generator=gen)
        full = F.linear(x, w)
        for m in range(4, 32, 4):
            rows = torch.randperm(32, generator=gen)[:m].sort().values
            if not torch.equal(F.linear(x[rows], w), full[rows]):
                return False
        prompts = torch.randn(16, 24, k, generator=gen)  # a prefill: 4 of 16 prompts, every position
        if not torch.equal(F.linear(prompts[::4], w), F.linear(prompts, w)[::4]):
            return False
    return True


def _rows_kept(done: torch.Tensor, live: int, row_granule: int, batch: int) -> torch.Tensor | None:
    """Which of the computed rows to keep (positions, ascending), or None to keep them all: the `live` unfinished
    rows, plus finished ones up to a multiple of row_granule (0: rows never leave; batch not a multiple: neither)."""
    if row_granule <= 0 or batch % row_granule or live == len(done):
        return None
    target = -(-live // row_granule) * row_granule
    if target >= len(done):
        return None
    keep = torch.argsort(done.to(torch.uint8), stable=True)[:target]  # unfinished first, each part in order
    return keep if target == live else torch.sort(keep).values


def _prefill_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, row_granule: int):
    """(the rows to prefill, in batch order; each row's index into them) where rows repeat a prompt: the first row of
    each distinct prompt, plus the next repeated rows up to a multiple of row_granule (exact_row_granule's 4: the BLAS
    rule in the module docstring), fewer than the batch, itself a multiple; else None."""
    batch, device = input_ids.shape[0], input_ids.device
    if row_granule < 4 or batch % row_granule:
        return None
    rows = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    target = -(-len(distinct) // row_granule) * row_granule
    if target >= batch:
        return None
    firsts = torch.full((len(distinct),), batch, dtype=torch.long, device=device)
    firsts = firsts.scatter_reduce(0, inverse, torch.arange(batch, device=device), reduce="amin")
    computed = torch.zeros(batch, dtype=torch.bool, device=device)
    computed[firsts] = True
    computed[torch.nonzero(~computed).flatten()[:target - len(distinct)]] = True  # padding to the granule
    prefilled = torch.nonzero(computed).flatten()  # ascending, and holds every first row
    return prefilled, torch.searchsorted(prefilled, firsts)[inverse]


def _shared_prefill(input_ids: torch.Tensor, attention_mask: torch.Tensor, plan: RowPlan | None, rows_per_block: int):
    """_prefill_rows of the batch, or with a row plan (a stack of adapters over equal blocks of the same prompts) of
    one block, the same rows in every block, so that the blocks stay equal (LoraBankLinear's batched products follow
    the same rule here: tests/test_decode.py). None where nothing is shared."""
    granule = exact_row_granule(input_ids.device)
    if plan is None:
        return _prefill_rows(input_ids, attention_mask, granule)
    k = plan.k
    if not plan.equal or input_ids.shape[0] != k * rows_per_block:
        return None
    ids, mask = input_ids.reshape(k, rows_per_block, -1), attention_mask.reshape(k, rows_per_block, -1)
    if not bool((ids == ids[:1]).all()) or not bool((mask == mask[:1]).all()):
        return None
    one = _prefill_rows(ids[0], mask[0], granule)
    if one is None:
        return None
    prefilled, copies = one
    blocks = torch.arange(k, device=input_ids.device)[:, None]
    return (prefilled + blocks * rows_per_block).flatten(), (copies + blocks * len(prefilled)).flatten()


def decode_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_tokens: int, eos_ids: set[int],
                pad_id: int, sampler: BlockSampler | None = None, plan: RowPlan | None = None,
                rows_per_block: int = 1, row_granule: int = 1, prefill_once: bool = False) -> torch.Tensor:
    """[batch, max_tokens] new tokens (pad after EOS), decoded as HF generate's greedy loop does (same model inputs:
    position ids from the mask, an all-ones mask dropped, a DynamicCache, logits of the last position in float32),
    except that finished rows leave the batch, in groups that keep it a multiple of row_granule rows (module
    docstring); HF computes every row until the last one ends. A finished row that stays is fed pad, as in HF.
    prefill_once: rows that repeat a prompt share one prefill, its cache copied to each, where the BLAS rule holds here
    (exact_row_granule, _shared_prefill), so that no row's logits change.

    Written here because generate cannot drop rows; every op is row-independent but the BLAS's choice of kernel for
    small batches (checked against generate token for token in tests/test_generate_hf.py, bit for bit with
    row_granule=4 in tests/test_decode.py)."""
    from transformers import DynamicCache

    batch, device = input_ids.shape[0], input_ids.device
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    out = torch.full((batch, max_tokens), int(pad_id), dtype=torch.long, device=device)
    rows, inputs = torch.arange(batch, device=device), input_ids  # rows: the batch rows computed this step
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # which computed rows have ended
    shared = _shared_prefill(input_ids, attention_mask, plan, rows_per_block) \
        if prefill_once and not slow_paths() else None
    for step in range(max_tokens):
        if shared is not None and step == 0:
            prefilled, copies = shared
            logits = model(input_ids=inputs[prefilled], attention_mask=None if mask is None else mask[prefilled],
                           position_ids=positions[prefilled], past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1].to(torch.float32)[copies]
            cache.batch_select_indices(copies)
        else:
            logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions[:, -inputs.shape[1]:],
                           past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].to(torch.float32)
        tokens = _next_tokens(logits, rows, batch, sampler).masked_fill(done, int(pad_id))
        out[rows, step] = tokens
        done = done | torch.isin(tokens, eos)
        live = int((~done).sum())
        if step == max_tokens - 1 or live == 0:
            break
        keep = _rows_kept(done, live, row_granule, batch)
        if keep is not None:
            rows, tokens, positions, done = rows[keep], tokens[keep], positions[keep], done[keep]
            mask = None if mask is None else mask[keep]
            cache.batch_select_indices(keep)
            if plan is not None:
                plan.keep(torch.div(rows, rows_per_block, rounding_mode="floor"))
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        inputs = tokens[:, None]
    return out


# Entries of generate's effective sampling config (GenerationMixin._prepare_generation_config: the caller's config,
# then the model's own, then HF's global defaults) at which HF adds no logits processor or stopping rule beyond the
# temperature and top-p warpers that BlockSampler applies (the conditions of GenerationMixin._get_logits_processor).
_SAMPLING_NEUTRAL = {"top_k": (None, 0), "min_p": (None,), "repetition_penalty": (None, 1.0), "num_beams": (None, 1),
                     "num_return_sequences": (None, 1), "cache_implementation": (None,), "min_new_tokens": (None, 0),
                     "min_length": (None, 0), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
                     "eta_cutoff": (None, 0.0)}
_SAMPLING_READ = {"max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "pad_token_id",
                  "eos_token_id", "bos_token_id", "disable_compile", "use_cache", "transformers_version",
                  "_from_model_config"}


def _sampling_settings(model, generation_config) -> tuple[int, float, float, set[int], int] | None:
    """(max_new_tokens, temperature, top_p, eos ids, pad id) of the config generate would sample with, where
    sample_like_generate reproduces it; else None. Any other entry must be None, False or HF's global default."""
    from transformers import GenerationConfig

    if generation_config is None:
        return None
    try:  # HF's own merge, so that nothing the model's generation_config adds is missed
        effective, model_kwargs = model._prepare_generation_config(generation_config)
        defaults = GenerationConfig._get_default_generation_params()
    except (AttributeError, TypeError, ValueError):
        return None
    if model_kwargs:
        return None
    for key, value in effective.to_dict().items():
        if key in _SAMPLING_NEUTRAL:
            if value not in _SAMPLING_NEUTRAL[key]:
                return None
        elif key not in _SAMPLING_READ and value not in (None, False) and value != defaults.get(key):
            return None
    eos = effective.eos_token_id
    eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
    if effective.do_sample is not True or effective.max_new_tokens is None or not eos_ids or \
            effective.pad_token_id is None or not effective.temperature or effective.temperature <= 0:
        return None
    return int(effective.max_new_tokens), float(effective.temperature), float(effective.top_p), eos_ids, \
        int(effective.pad_token_id)


def sample_like_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config):
    """What `model.generate(input_ids=..., attention_mask=..., generation_config=...)` returns for a plain sampling
    config (prompt and new tokens, pad after EOS, as many columns as generate's steps), drawn from torch's global
    random stream as generate draws, with finished rows leaving the batch in groups of exact_row_granule and rows that
    repeat a prompt sharing its prefill: equal bit for bit on CPU. None where it does not reproduce generate (another
    model kind, config entry or device): the caller then calls generate itself. `model` is the module whose forward
    generate would call (a PEFT model's base model, adapters injected)."""
    granule = exact_row_granule(input_ids.device)
    if granule == 0 or not decodes_here(model):
        return None
    settings = _sampling_settings(model, generation_config)
    if settings is None:
        return None
    max_new, temperature, top_p, eos_ids, pad_id = settings
    sampler = BlockSampler(None, input_ids.shape[0], temperature, top_p, input_ids.device)
    new = decode_rows(model, input_ids, attention_mask, max_tokens=max_new, eos_ids=eos_ids, pad_id=pad_id,
                      sampler=sampler, row_granule=granule, prefill_once=True)
    ended = torch.isin(new, torch.tensor(sorted(eos_ids), device=new.device))
    steps = max_new if not bool(ended.any(dim=1).all()) else int(ended.int().argmax(dim=1).max()) + 1
    return torch.cat([input_ids, new[:, :steps]], dim=1)
