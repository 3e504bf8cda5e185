"""The distribution probes: KL(base || ckpt) and perplexity on a reference text, and the task KL(ckpt || base) of
RL's Razor on the checkpoint's own completions for the task's prompts (sampled here, or stored by `eval`:
analysis/task_completions.py). Pure tensor helpers and the two measurements; retention.py runs them per checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.kl import TokenMean, masked_sums, token_kl, token_mean, token_nll
from analysis.retention_probes import read_prompts
from analysis.task_completions import TaskCompletions, completion_rows
from tina_probe.errors import TinaError
from tina_probe.generate.hf import batch_seed, split_completion
from tina_probe.slow_paths import slow_paths

if TYPE_CHECKING:  # annotations only: retention.py imports this module
    from analysis.retention import ProbeModels, RetentionSettings

# float32 logits held at once by one forward of the KL / perplexity probes (a 49k vocabulary x 256 tokens is 50 MB
# per row, and the KL makes ~4 copies): batches are cut to fit, whatever --batch-size says
LOGITS_BUDGET_BYTES = 256 * 2**20
# float32 logits of the base on a reference text kept for the next checkpoint of the same base (the lab's 25 windows
# x 256 tokens x 106 symbols: 3 MB); a larger text (a real model's 49k vocabulary) is scored again per checkpoint
REFERENCE_MEMO_BYTES = 512 * 2**20


def text_windows(token_ids: list[int], window: int, bos_id: int | None = None,
                 limit: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens (a BOS prepended to each when the model has one); the
    first `limit` windows when given; a final window shorter than 2 tokens is dropped (nothing to predict)."""
    if window < 2:
        raise TinaError(f"window {window}: needs at least 2 tokens")
    step = window - (1 if bos_id is not None else 0)
    out = []
    for start in range(0, len(token_ids), step):
        chunk = list(token_ids[start : start + step])
        if bos_id is not None:
            chunk = [bos_id] + chunk
        if len(chunk) >= 2:
            out.append(chunk)
    return out[:limit] if limit is not None else out


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of sequences padded on the right: real tokens keep positions 0..n-1."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float().cpu()


def _policy_is_reference(models: ProbeModels) -> bool:
    """Whether the active checkpoint is the base itself, so one forward serves as both (not on the old paths)."""
    return models.current is not None and models.current.kind == "base" and not slow_paths()


@torch.inference_mode()
def reference_stats(models: ProbeModels, path: Path, *, limit: int | None,
                    settings: RetentionSettings) -> dict[str, TokenMean]:
    """KL(base || ckpt) and the checkpoint's NLL per token over a reference text, windows as clusters.

    The base's logits on the text are the same for every checkpoint of it: kept in `models.memo` (within
    REFERENCE_MEMO_BYTES) and reused, so a series costs one base pass instead of one per checkpoint; the same
    forward on the same batches, so the values are bit for bit those of a pass per checkpoint (the old path)."""
    tok = models.tokenizer
    ids = tok(Path(path).read_text(), add_special_tokens=False, verbose=False)["input_ids"]  # windowed below
    longest = getattr(models.base_model.config, "max_position_embeddings", None) or settings.window
    width = min(settings.window, int(longest))
    windows = text_windows(ids, width, text_start_token(tok), limit)
    if not windows:
        raise TinaError(f"{path}: too short for one window")
    kl_s, kl_n, nll_s, nll_n = [], [], [], []
    vocab = _vocab_size(models.base_model)
    rows = rows_per_pass(settings.batch_size, width, vocab)
    memo_key = ("reference_logits", str(Path(path).resolve()), width, rows, len(windows))
    keep = not slow_paths() and len(windows) * width * vocab * 4 <= REFERENCE_MEMO_BYTES
    kept = models.memo.get(memo_key) if keep else None
    fresh = []
    for i, start in enumerate(range(0, len(windows), rows)):
        batch, mask = right_pad(windows[start : start + rows], tok.pad_token_id)
        if kept is not None:
            lb = kept[i]
        else:
            with models.reference() as b:
                lb = _logits(b, batch, mask)[:, :-1]
            fresh.append(lb)
        if _policy_is_reference(models):
            lp = lb
        else:
            with models.policy() as m:
                lp = _logits(m, batch, mask)[:, :-1]
        target_mask = mask[:, 1:]  # position t predicts token t+1; padding predicts nothing
        for sums, counts, values in ((kl_s, kl_n, token_kl(lb, lp, target_mask)),
                                     (nll_s, nll_n, token_nll(lp, batch[:, 1:], target_mask))):
            s, n = masked_sums(values, target_mask)
            sums.extend(s)
            counts.extend(n)
    if keep and kept is None:
        models.memo[memo_key] = fresh
    return {"kl": token_mean(kl_s, kl_n), "nll": token_mean(nll_s, nll_n)}


def text_start_token(tokenizer) -> int | None:
    """The token the tokenizer itself puts before a text (Llama-2's <s>), else None.

    A bos_token that the tokenizer does not add is left out: SmolLM2-Instruct's is <|im_start|>, a chat-turn
    opener that never starts plain text. lm-eval's HFLM encodes its contexts the same way (the tokenizer's own
    add_special_tokens default), so the KL windows and the multiple-choice probes see text alike."""
    probe = "a"
    own = tokenizer(probe, verbose=False)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    if len(own) == len(plain) + 1 and own[1:] == plain:
        return int(own[0])
    return None


def _vocab_size(model) -> int:
    return int(getattr(model.config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0])


def rows_per_pass(batch_size: int, width: int, vocab: int, budget: int | None = None) -> int:
    """How many rows of `width` tokens one forward may score so that its float32 logits stay within `budget`
    (default LOGITS_BUDGET_BYTES)."""
    budget = LOGITS_BUDGET_BYTES if budget is None else budget
    return max(1, min(int(batch_size), budget // max(1, width * vocab * 4)))


def render_prompt(tokenizer, prompt: str) -> tuple[str, bool]:
    """(text, add_special_tokens): the chat template with a generation prompt when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return text, False
    return prompt, True


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(i) for i in ids}


def completion_mask(prompt_lens: list[int], total_lens: list[int], width: int) -> torch.Tensor:
    """Mask over logit positions [B, width-1] that predict completion tokens (position t predicts t+1)."""
    mask = torch.zeros((len(prompt_lens), width - 1), dtype=torch.long)
    for i, (p, t) in enumerate(zip(prompt_lens, total_lens)):
        mask[i, p - 1 : t - 1] = 1
    return mask


def _score_task_rows(models: ProbeModels, rows: list[list[int]], prompt_lens: list[int], *, forward: bool = False,
                     kept: list[torch.Tensor] | None = None, fresh: list[torch.Tensor] | None = None
                     ) -> tuple[list[float], list[float]]:
    """Per row: the KL summed over its completion tokens, and their number; KL(ckpt || base), or with `forward`
    KL(base || ckpt) (RL's Razor's direction, on the base's own completions). `kept`: the base's logits of each pass
    from an earlier checkpoint (same rows, same passes); `fresh` collects this call's for the next one."""
    tok = models.tokenizer
    ids, mask = right_pad(rows, tok.pad_token_id)
    cmask = completion_mask(prompt_lens, [len(r) for r in rows], ids.shape[1])
    step = rows_per_pass(len(rows), ids.shape[1], _vocab_size(models.base_model))
    sums, counts = [], []
    for i, lo in enumerate(range(0, len(rows), step)):
        part = slice(lo, lo + step)
        with models.policy() as m:
            lp = _logits(m, ids[part], mask[part])[:, :-1]
        if _policy_is_reference(models):  # the base's own completions: the same forward twice
            lb = lp
        elif kept is not None:
            lb = kept[i]
        else:
            with models.reference() as ref:
                lb = _logits(ref, ids[part], mask[part])[:, :-1]
        if fresh is not None:
            fresh.append(lb)
        kl = token_kl(lb, lp, cmask[part]) if forward else token_kl(lp, lb, cmask[part])
        s, n = masked_sums(kl, cmask[part])
        sums.extend(s)
        counts.extend(n)
    return sums, counts


def _per_cluster(sums, counts, clusters) -> tuple[list[float], list[float]]:
    """Row sums and counts added up per cluster (a problem), in first-seen order."""
    total: dict = {}
    for s, n, c in zip(sums, counts, clusters):
        acc = total.setdefault(c, [0.0, 0.0])
        acc[0] += float(s)
        acc[1] += float(n)
    return [v[0] for v in total.values()], [v[1] for v in total.values()]


@torch.inference_mode()
def sampled_task_rows(models: ProbeModels, path: Path, *, limit: int | None, settings: RetentionSettings,
                      from_base: bool = False) -> tuple[list[list[int]], list[int], list[int]]:
    """(token rows prompt + completion, prompt lengths, prompt index per row): `task_samples` completions per prompt
    sampled from the active checkpoint, or with `from_base` from the base (kept in models.memo: the same for every
    checkpoint of the base)."""
    from transformers import GenerationConfig

    memo_key = ("base_task_rows", str(Path(path).resolve()), limit, settings)
    from_base = from_base or _policy_is_reference(models)  # the base's own samples either way: drawn once
    if from_base and memo_key in models.memo:
        return models.memo[memo_key]
    tok = models.tokenizer
    prompts = read_prompts(path)[:limit] if limit is not None else read_prompts(path)
    per_batch = max(1, settings.batch_size // max(1, settings.task_samples))
    rows, prompt_lens, clusters = [], [], []
    for b, start in enumerate(range(0, len(prompts), per_batch)):
        rendered = [render_prompt(tok, p) for p in prompts[start : start + per_batch]]
        add_special = rendered[0][1]
        enc = tok([r[0] for r in rendered], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=add_special)
        with (models.reference() if from_base else models.policy()) as m:
            eos = _eos_ids(m, tok)
            config = GenerationConfig(
                do_sample=settings.temperature > 0, temperature=max(settings.temperature, 1e-5), top_p=1.0,
                top_k=0, num_beams=1, max_new_tokens=settings.task_max_tokens, min_new_tokens=0,
                num_return_sequences=settings.task_samples, repetition_penalty=1.0,
                pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos))
            torch.manual_seed(batch_seed(settings.seed, b))
            dev = next(m.parameters()).device
            seqs = m.generate(**{k: v.to(dev) for k, v in enc.items()}, generation_config=config).cpu()
        width_in = enc["input_ids"].shape[1]
        for j in range(seqs.shape[0]):
            src = j // settings.task_samples
            prompt = enc["input_ids"][src][enc["attention_mask"][src].bool()].tolist()
            new = seqs[j, width_in:].tolist()
            _, n_tok, _ = split_completion(new, eos, settings.task_max_tokens)  # n_tok counts the EOS
            if n_tok == 0:
                continue
            rows.append(prompt + new[:n_tok])
            prompt_lens.append(len(prompt))
            clusters.append(start + src)
    if from_base:
        models.memo[memo_key] = (rows, prompt_lens, clusters)
    return rows, prompt_lens, clusters


@torch.inference_mode()
def task_kl(models: ProbeModels, path: Path, *, limit: int | None, settings: RetentionSettings,
            stored: TaskCompletions | None = None, forward: bool = False
            ) -> tuple[TokenMean, list[float], list[float]]:
    """The task KL per completion token, with the per-problem KL sums and token counts (the bootstrap resamples
    problems). Default: KL(ckpt || base) on the checkpoint's own completions; `forward`: KL(base || ckpt) on the
    base's completions, RL's Razor's E_x[KL(pi_0 || pi)]. `stored`: those completions as `eval` stored them
    (analysis/task_completions.py, rules K1-K5); None: sampled here, `task_samples` per prompt."""
    if stored is not None:
        rows, prompt_lens, clusters = completion_rows(models.tokenizer, stored, render_prompt,
                                                      cap=settings.task_max_tokens)
    else:
        rows, prompt_lens, clusters = sampled_task_rows(models, path, limit=limit, settings=settings,
                                                        from_base=forward)
    # the forward direction scores the base's completions: the base's logits on them are the same for every
    # checkpoint of the base, so they are kept (within REFERENCE_MEMO_BYTES) as reference_stats keeps the text's
    size = len(rows) * max(map(len, rows), default=0) * _vocab_size(models.base_model) * 4  # padded logits, at most
    keep = forward and not slow_paths() and size <= REFERENCE_MEMO_BYTES
    memo_key = ("base_task_logits", str(Path(path).resolve()), settings.batch_size, tuple(map(tuple, rows)),
                tuple(prompt_lens)) if keep else None
    kept_all = models.memo.get(memo_key) if keep else None
    fresh_all: list[list[torch.Tensor]] = []
    sums, counts = [], []
    for b, lo in enumerate(range(0, len(rows), settings.batch_size)):
        fresh = [] if keep and kept_all is None else None
        s, n = _score_task_rows(models, rows[lo : lo + settings.batch_size],
                                prompt_lens[lo : lo + settings.batch_size], forward=forward,
                                kept=kept_all[b] if kept_all is not None else None, fresh=fresh)
        sums.extend(s)
        counts.extend(n)
        if fresh is not None:
            fresh_all.append(fresh)
    if keep and kept_all is None:
        models.memo[memo_key] = fresh_all
    sums, counts = _per_cluster(sums, counts, clusters)
    return token_mean(sums, counts), sums, counts
