"""Pure linear algebra for update spectra: exact LoRA SVD via QR, dense/randomized SVD, and spectrum metrics."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla
import scipy.stats
import torch
from scipy.sparse.linalg import svds

# Above this smaller side, the top singular vectors of a dense W_t come from ARPACK (svds) instead of a full SVD.
DENSE_SVD_LIMIT = 2048
INTRUDER_EPS = (0.3, 0.5, 0.7, 0.9)


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's LoRA scale: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lora_svd(A: np.ndarray, B: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact thin SVD (U, s, V) of s·B·A from QR of B and Aᵀ and the SVD of the small core; never forms B·A.

    B = Q_B R_B, Aᵀ = Q_A R_A  =>  s·B·A = Q_B (s R_B R_Aᵀ) Q_Aᵀ, so the core's singular values are ΔW's and
    its vectors lifted by Q_B / Q_A are ΔW's. Works for any rank, including r > min(m, n) and r = 1."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(f"lora_svd: A {A.shape} and B {B.shape} are not r x n and m x r")
    q_b, r_b = np.linalg.qr(B, mode="reduced")      # m x min(m,r), min(m,r) x r
    q_a, r_a = np.linalg.qr(A.T, mode="reduced")    # n x min(n,r), min(n,r) x r
    core = scale * (r_b @ r_a.T)
    u_c, s, vt_c = np.linalg.svd(core, full_matrices=False)
    return q_b @ u_c, s, q_a @ vt_c.T


def randomized_svd(M: np.ndarray, k: int, *, oversample: int = 10, n_iter: int = 4, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k thin SVD (U, s, Vt) by Halko-Martinsson-Tropp range finding with power iterations.

    Hand-written because scikit-learn's randomized_svd is not a declared dependency of tina-probe; QR
    re-orthonormalisation after every product keeps the power iterations stable in float32."""
    m, n = M.shape
    k = min(k, m, n)
    width = min(k + oversample, m, n)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(M @ rng.standard_normal((n, width)).astype(M.dtype, copy=False))
    for _ in range(n_iter):
        z, _ = np.linalg.qr(M.T @ q)
        q, _ = np.linalg.qr(M @ z)
    u_small, s, vt = np.linalg.svd(q.T @ M, full_matrices=False)
    return (q @ u_small)[:, :k], s[:k], vt[:k]


def dense_svd(M: np.ndarray, *, top: int | None = None, method: str = "dense", seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values of M (float32): all of them ("dense") or the top `top` ("randomized")."""
    M = np.asarray(M, dtype=np.float32)
    if method == "dense":
        u, s, _ = sla.svd(M, full_matrices=False, lapack_driver="gesdd", check_finite=False)
        return u, s.astype(np.float64)
    if method == "randomized":
        if top is None:
            raise ValueError("dense_svd: method='randomized' needs top")
        u, s, _ = randomized_svd(M, top, seed=seed)
        return u, s.astype(np.float64)
    raise ValueError(f"dense_svd: unknown method {method!r} (dense | randomized)")


def top_vectors_and_values(M: np.ndarray, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The top-k left singular vectors and *all* singular values of a dense float32 matrix (for intruders and drift)."""
    M = np.asarray(M, dtype=np.float32)
    if min(M.shape) <= DENSE_SVD_LIMIT:
        u, s, _ = sla.svd(M, full_matrices=False, lapack_driver="gesdd", check_finite=False)
        return u[:, :k], s.astype(np.float64)
    s = sla.svdvals(M, check_finite=False).astype(np.float64)
    k = min(k, min(M.shape) - 1)  # ARPACK needs k < min(m, n)
    u, s_top, _ = svds(M, k=k, rng=np.random.default_rng(seed))
    return u[:, np.argsort(s_top)[::-1]], s


def stable_rank(s: np.ndarray, fro: float | None = None) -> float:
    """‖ΔW‖_F² / σ1²: how many directions carry the update's energy, robust to tiny singular values."""
    s = np.asarray(s, dtype=np.float64)
    fro2 = float(np.sum(s**2)) if fro is None else float(fro) ** 2
    return fro2 / float(s[0]) ** 2 if s.size and s[0] > 0 else math.nan


def effective_rank(s: np.ndarray) -> float:
    """exp of the Shannon entropy of σ/Σσ (Roy & Vetterli 2007)."""
    s = np.asarray(s, dtype=np.float64)
    return float(np.exp(scipy.stats.entropy(s))) if s.size and s.sum() > 0 else math.nan


def energy_rank(s: np.ndarray, frac: float = 0.9, total: float | None = None) -> int | None:
    """Smallest k with Σ_{i≤k} σ_i² ≥ frac·total (total = Σσ² or ‖ΔW‖_F²); None when the given σ fall short."""
    s = np.asarray(s, dtype=np.float64)
    energy = np.cumsum(s**2)
    if total is None:
        total = float(energy[-1]) if energy.size else 0.0
    if total <= 0:
        return None
    # Relative slack so a sum that equals frac·total up to rounding still counts.
    k = int(np.searchsorted(energy, frac * total * (1 - 1e-12))) + 1
    return k if k <= s.size else None


def top_energy(s: np.ndarray, r: int, total: float | None = None) -> float:
    """Share of ΔW's energy in its top-r directions."""
    s = np.asarray(s, dtype=np.float64)
    total = float(np.sum(s**2)) if total is None else total
    return float(np.sum(s[:r] ** 2) / total) if total > 0 else math.nan


def max_abs_cosines(U_t: np.ndarray, U_0: np.ndarray) -> np.ndarray:
    """For each column of U_t, the largest |cosine| with any column of U_0 (columns are unit vectors)."""
    return np.max(np.abs(np.asarray(U_0, np.float32).T @ np.asarray(U_t, np.float32)), axis=0)


def intruder_count(U_t: np.ndarray, U_0: np.ndarray, eps: float = 0.5, k: int = 10) -> int:
    """Intruder dimensions (Shuttleworth et al. 2024): top-k singular vectors of W_t whose max |cos| with every
    singular vector of W_0 is below eps."""
    return int(np.sum(max_abs_cosines(U_t[:, :k], U_0) < eps))


def principal_angles_deg(U_1: np.ndarray, U_2: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, descending) between the column spans of U_1 and U_2."""
    return np.degrees(sla.subspace_angles(np.asarray(U_1, np.float64), np.asarray(U_2, np.float64)))


def subspace_similarity(U_1: np.ndarray, U_2: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between two column spans (1 = same span, 0 = orthogonal)."""
    angles = sla.subspace_angles(np.asarray(U_1, np.float64), np.asarray(U_2, np.float64))
    return float(np.mean(np.cos(angles) ** 2))


def spectral_drift(s_t: np.ndarray, s_0: np.ndarray) -> float:
    """‖σ(W_t) − σ(W_0)‖ / ‖σ(W_0)‖ over the full (sorted) spectra."""
    s_t, s_0 = np.asarray(s_t, np.float64), np.asarray(s_0, np.float64)
    n = min(s_t.size, s_0.size)
    return float(np.linalg.norm(s_t[:n] - s_0[:n]) / np.linalg.norm(s_0[:n]))


def sparsity(delta: np.ndarray, atol: float = 1e-5) -> float:
    """Share of entries of ΔW with |Δ| ≤ atol."""
    return float(np.mean(np.abs(delta) <= atol))


def to_bfloat16(W: np.ndarray) -> np.ndarray:
    """Round a float array to bfloat16 (round-to-nearest-even, via torch) and return it as float32."""
    return torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def sparsity_bf16(W_t: np.ndarray, W_0: np.ndarray, atol: float = 1e-5) -> float:
    """Share of entries with |bf16(W_t) − bf16(W_0)| ≤ atol: the update that survives bf16 storage."""
    return sparsity(to_bfloat16(W_t) - to_bfloat16(W_0), atol)
