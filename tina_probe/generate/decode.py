"""A decoding loop equal to transformers' generate for plain decoder-only models, except that finished rows leave
the batch (generate computes every row until the last one ends), and sampling with one random stream per block of
rows so that a stacked batch samples each job as its own generate call would have (BlockSampler).

decodes_here() says when the loop reproduces generate; HFGenerator falls back to generate itself otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from tina_probe.generate.lora_bank import RowPlan


class BlockSampler(LogitsProcessor):
    """Multinomial sampling with one torch.Generator per block of rows, so that a batch of several jobs samples each
    job exactly as HF generate sampled a batch of its own after torch.manual_seed(seed) (one global RNG per call).

    Called by decode_rows on each step's float32 logits: applies HF's own warpers as HF's sampling path would for
    these settings, then softmax and torch.multinomial per block; returns scores whose argmax is the drawn token."""

    def __init__(self, seeds: Sequence[int], rows: int, temperature: float, top_p: float, device):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.rows = rows
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
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
    """The next token of each live row: greedy argmax, or BlockSampler over the whole original batch (rows that left
    get zero logits: they still draw, as they did in HF generate, so every block keeps its random stream)."""
    if sampler is None:
        return torch.argmax(logits, dim=-1)
    full = logits.new_zeros((batch, logits.shape[-1]))
    full[live] = logits
    return torch.argmax(sampler(None, full), dim=-1)[live]


def decode_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_tokens: int, eos_ids: set[int],
                pad_id: int, sampler: BlockSampler | None = None, plan: RowPlan | None = None,
                rows_per_block: int = 1) -> torch.Tensor:
    """[batch, max_tokens] new tokens (pad after EOS), decoded as HF generate's greedy loop does (same model inputs:
    position ids from the mask, an all-ones mask dropped, a DynamicCache, logits of the last position in float32),
    except that finished rows leave the batch; HF computes every row until the last one ends.

    Written here because generate cannot drop rows; per-row results are unchanged since every op is row-independent
    (checked against generate token for token in tests/test_generate_hf.py)."""
    from transformers import DynamicCache

    batch, device = input_ids.shape[0], input_ids.device
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    out = torch.full((batch, max_tokens), int(pad_id), dtype=torch.long, device=device)
    live, inputs = torch.arange(batch, device=device), input_ids
    for step in range(max_tokens):
        logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions[:, -inputs.shape[1]:],
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].to(torch.float32)
        tokens = _next_tokens(logits, live, batch, sampler)
        out[live, step] = tokens
        going = ~torch.isin(tokens, eos)
        if step == max_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)
            live, tokens, positions = live[keep], tokens[keep], positions[keep]
            mask = None if mask is None else mask[keep]
            cache.batch_select_indices(keep)
            if plan is not None:
                plan.keep(torch.div(live, rows_per_block, rounding_mode="floor"))
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        inputs = tokens[:, None]
    return out
