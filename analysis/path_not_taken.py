"""Where in weight space an update lands (Zhu et al. 2025, "The Path Not Taken: RLVR Provably Learns Off the
Principals", arXiv 2511.08567), for full fine-tunes and LoRA alike (for LoRA, W_t = W_0 + s*B*A, one matrix at a time).

Rules, stated once (k and alpha are columns of every row):
- G1 changed mask. An entry is unchanged iff |w_t - w_0| <= RTOL * max(|w_t|, |w_0|), RTOL = 1e-3: a relative
  tolerance, which in bf16 (8 bits of mantissa, spacing 2^-7 relative) is bitwise equality; a fixed atol (the older
  `sparsity` column, 1e-5) misreports small and large weights alike. `sparsity_rel` is the unchanged share.
- G2 rotation. W_0's and W_t's own top-k left (and right) singular subspaces; cos(theta_i) = sigma_i(U0_k^T Ut_k);
  `rotation_max_deg_u` / `_v` is the largest angle (degrees).
- G3 spectral shift. ||sigma(W_t) - sigma(W_0)|| / ||sigma(W_0)|| over the *whole* spectra (the older
  `spectral_drift` column uses W_t's top 10 only).
- G4 principal overlap. W_0's principal weights are the top-alpha share of entries, by magnitude, of W_0's rank-k
  reconstruction U0_k S0_k V0_k^T; `principal_overlap` = |principal AND changed| / |changed|, beside its random
  baseline alpha (a mask that ignores W_0's principals overlaps alpha of the time). Below alpha: the update avoids
  the principals.
- G5 cross-run overlap. For two runs on the same base, the Jaccard index of their changed masks, against the
  baseline of independent masks with the same shares p and q: pq / (p + q - pq).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.linalg as sla

RTOL = 1e-3
PRINCIPAL_K = 16
PRINCIPAL_ALPHA = 0.05
GEOMETRY_COLUMNS = ["sparsity_rel", "rotation_max_deg_u", "rotation_max_deg_v", "spectral_shift",
                    "principal_overlap", "principal_baseline", "principal_k"]


def changed_mask(W_t: np.ndarray, W_0: np.ndarray, rtol: float = RTOL) -> np.ndarray:
    """True where an entry changed beyond the relative tolerance (rule G1)."""
    W_t, W_0 = np.asarray(W_t, np.float32), np.asarray(W_0, np.float32)
    return np.abs(W_t - W_0) > rtol * np.maximum(np.abs(W_t), np.abs(W_0))


def max_rotation_deg(Q_0: np.ndarray, Q_t: np.ndarray) -> float:
    """Largest principal angle (degrees) between two column spans (rule G2; scipy's subspace_angles)."""
    return float(np.degrees(sla.subspace_angles(np.asarray(Q_0, np.float64), np.asarray(Q_t, np.float64))[0]))


def spectral_shift(s_t: np.ndarray, s_0: np.ndarray) -> float:
    """||sigma_t - sigma_0|| / ||sigma_0|| over whole, sorted spectra (rule G3)."""
    s_t, s_0 = np.asarray(s_t, np.float64), np.asarray(s_0, np.float64)
    return float(np.linalg.norm(s_t - s_0) / np.linalg.norm(s_0))


def principal_mask(U0: np.ndarray, s0: np.ndarray, V0: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """The top-alpha share of entries of W_0's rank-k reconstruction, by magnitude (rule G4)."""
    recon = np.abs((U0[:, :k] * s0[:k]) @ V0[:, :k].T)
    n_top = max(1, int(round(alpha * recon.size)))
    cut = np.partition(recon.ravel(), recon.size - n_top)[recon.size - n_top]
    return recon >= cut


def overlap_share(principal: np.ndarray, changed: np.ndarray) -> float:
    """|principal AND changed| / |changed| (nan when nothing changed)."""
    n = int(changed.sum())
    return float(np.sum(principal & changed) / n) if n else math.nan


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a AND b| / |a OR b| of two boolean masks (nan when both are empty)."""
    union = int(np.sum(a | b))
    return float(np.sum(a & b) / union) if union else math.nan


def independent_jaccard(p: float, q: float) -> float:
    """Expected Jaccard of two independent masks with shares p and q: pq / (p + q - pq) (rule G5)."""
    den = p + q - p * q
    return float(p * q / den) if den > 0 else math.nan


def spectrum_and_top(W: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(all singular values, top-k left vectors, top-k right vectors) of W in float64, from the eigendecomposition
    of the smaller Gram matrix. Written by hand rather than a full LAPACK SVD with vectors: for the tall matrices of
    a 1.5B model (8960 x 1536) the Gram product and its eigh cost a quarter of it, and numpy/scipy have no SVD that
    gives the whole spectrum with only the top vectors. Squaring loses relative accuracy only in the smallest
    singular values, which barely weigh in the spectral shift's norm."""
    W = np.asarray(W, np.float64)
    tall = W.shape[0] >= W.shape[1]
    A = W if tall else W.T
    evals, vecs = np.linalg.eigh(A.T @ A)  # ascending
    evals, vecs = evals[::-1], vecs[:, ::-1]
    s = np.sqrt(np.clip(evals, 0.0, None))
    right = vecs[:, :k]
    left = (A @ right) / np.where(s[:k] > 0, s[:k], 1.0)
    return (s, left, right) if tall else (s, right, left)


_BASE_CACHE: dict[tuple, tuple] = {}  # base weights seen in this process -> their spectrum and top vectors
_BASE_CACHE_MAX = 1024


def _base_spectrum(W_0: np.ndarray, k: int):
    """spectrum_and_top of a base matrix, computed once per process (every checkpoint of a series shares W_0)."""
    key = (W_0.shape, k, hashlib.blake2b(np.ascontiguousarray(W_0).tobytes(), digest_size=16).hexdigest())
    if key not in _BASE_CACHE:
        if len(_BASE_CACHE) >= _BASE_CACHE_MAX:
            _BASE_CACHE.pop(next(iter(_BASE_CACHE)))
        _BASE_CACHE[key] = spectrum_and_top(W_0, k)
    return _BASE_CACHE[key]


def module_geometry(W_0: np.ndarray, W_t: np.ndarray, *, k: int = PRINCIPAL_K, alpha: float = PRINCIPAL_ALPHA,
                    rtol: float = RTOL) -> dict:
    """Rules G1-G4 for one weight matrix: its base W_0 and its fine-tuned W_t (both dense, same shape)."""
    k = int(min(k, *np.shape(W_0)))
    # float64 arithmetic: RL's rotations can be hundredths of a degree, below float32's noise in the angles
    s0, U0, V0 = _base_spectrum(np.asarray(W_0), k)
    st, Ut, Vt = spectrum_and_top(W_t, k)
    changed = changed_mask(W_t, W_0, rtol)  # the entries as stored (float32)
    return {
        "sparsity_rel": float(1.0 - changed.mean()),
        "rotation_max_deg_u": max_rotation_deg(U0, Ut),
        "rotation_max_deg_v": max_rotation_deg(V0, Vt),
        "spectral_shift": spectral_shift(st, s0),
        "principal_overlap": overlap_share(principal_mask(U0, s0, V0, k, alpha), changed),
        "principal_baseline": float(alpha),
        "principal_k": k,
    }
