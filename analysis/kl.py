"""Pure functions on logits: per-token KL divergence, per-token negative log-likelihood, and their summaries.

KL(p || q) at one position is sum_v p(v) (log p(v) - log q(v)) over the whole vocabulary (exact, not a
single-sample estimate), computed from log_softmax in float32 so that equal logits give exactly zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def _mask_like(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask as a float tensor shaped like `values` (all ones when None)."""
    if mask is None:
        return torch.ones_like(values, dtype=torch.float32)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != values shape {tuple(values.shape)}")
    return mask.to(torch.float32)


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) per position from logits [..., T, V]; masked-out positions are 0. Returns [..., T] float32."""
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits shapes differ: {tuple(logits_p.shape)} vs {tuple(logits_q.shape)}")
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)
    # tiny negative values from rounding are not divergences
    return kl.clamp_min(0.0) * _mask_like(kl, mask)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(target) per position from logits [..., T, V] and targets [..., T]; masked-out positions are 0."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return nll * _mask_like(nll, mask)


def masked_sums(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (sum of values over masked positions, number of masked positions) for a [B, T] tensor."""
    m = _mask_like(values, mask)
    return (values * m).sum(dim=-1).double().cpu().numpy(), m.sum(dim=-1).double().cpu().numpy()


@dataclass(frozen=True)
class TokenMean:
    """A per-token mean over clusters of tokens (windows or completions) and its cluster-robust standard error."""

    value: float
    stderr: float
    n_tokens: int
    n_clusters: int


def token_mean(sums, counts) -> TokenMean:
    """Token-weighted mean sum(s_i) / sum(n_i) over clusters, with the cluster-robust (ratio) standard error.

    Tokens of one window or completion are not independent, so the error treats each cluster as one draw:
    se = sqrt(k / (k - 1) * sum((s_i - m n_i)^2)) / sum(n_i); NaN with fewer than two clusters."""
    s = np.asarray(sums, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    keep = n > 0
    s, n = s[keep], n[keep]
    total = float(n.sum())
    if total == 0:
        return TokenMean(float("nan"), float("nan"), 0, 0)
    mean = float(s.sum() / total)
    k = len(n)
    if k < 2:
        return TokenMean(mean, float("nan"), int(total), k)
    se = math.sqrt(k / (k - 1) * float(((s - mean * n) ** 2).sum())) / total
    return TokenMean(mean, se, int(total), k)


def perplexity(nll: TokenMean) -> tuple[float, float]:
    """(exp(mean NLL), its delta-method standard error exp(m) * se(m))."""
    ppl = math.exp(nll.value) if math.isfinite(nll.value) else float("nan")
    return ppl, ppl * nll.stderr
