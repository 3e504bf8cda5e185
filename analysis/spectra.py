"""Update spectra of LoRA adapters (exact, via QR of A and B) and full fine-tunes (SVD of W_t − W_0) -> `spectra` table."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from analysis import spectra_math as sm
from analysis.path_not_taken import GEOMETRY_COLUMNS, module_geometry
from tina_probe.errors import TinaError
from tina_probe.runs import checkpoint_identity
from tina_probe.shards import block
from tina_probe.store import Store, atomic_write_bytes, stable_key

log = logging.getLogger(__name__)

TABLE = "spectra"
INTRUDER_K = 10
PART_VERSION = "columns-2"  # in every part key: parts written before the Path-Not-Taken columns are analysed again
DEFAULT_PAIR_RANK = 8
PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
# PEFT's LoRA of an nn.Embedding: lora_embedding_A (r x vocab), lora_embedding_B (dim x r), no `.weight` suffix;
# ΔW of the (vocab x dim) weight is scale·(B·A)ᵀ
_LORA_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")
EMBEDDING, LM_HEAD = "embed_tokens", "lm_head"
TIED_NOTE = "tied embeddings: lm_head is this same matrix; its update is counted once, here"
_LAYER = re.compile(r"(?:^|\.)(?P<suffix>layers\.(?P<layer>\d+)\..+)$")


# ----------------------------------------------------------------------------- records


@dataclass
class SpectrumRow:
    """One row of the `spectra` table: the update spectrum of one module of one checkpoint."""

    run: str
    step: int
    kind: str
    layer: int            # -1 for modules outside the decoder layers
    module: str           # last name of the module path: q_proj, ..., down_proj
    singular_values: list[float]
    fro_norm: float
    rel_norm: float | None = None
    stable_rank: float = math.nan
    effective_rank: float = math.nan
    energy_rank90: int | None = None
    topr_energy: float = math.nan
    rank_r: int = 0       # the r of topr_energy / principal angles / subspace similarity
    complete_spectrum: bool = True  # False with method="randomized": energy metrics use the top-k only
    intruders: int | None = None
    intruders_eps03: int | None = None
    intruders_eps05: int | None = None
    intruders_eps07: int | None = None
    intruders_eps09: int | None = None
    principal_angle_mean_deg: float | None = None
    spectral_drift: float | None = None
    sparsity: float | None = None
    sparsity_bf16: float | None = None
    subspace_sim_prev: float | None = None
    # The Path Not Taken columns (analysis/path_not_taken.py rules G1-G4; with W_t formed: intruders on)
    sparsity_rel: float | None = None
    rotation_max_deg_u: float | None = None
    rotation_max_deg_v: float | None = None
    spectral_shift: float | None = None
    principal_overlap: float | None = None
    principal_baseline: float | None = None
    principal_k: int | None = None
    module_path: str = ""  # layers.N.<...>.<module> (the key that pairs modules across checkpoints)
    tied: bool = False    # the matrix is shared by two modules (tied embeddings: embed_tokens is lm_head)
    note: str = ""        # what a reader must know about the row (e.g. the tie, counted once)


COLUMNS = [f for f in SpectrumRow.__dataclass_fields__]
_INT_COLUMNS = ["energy_rank90", "intruders", "intruders_eps03", "intruders_eps05", "intruders_eps07",
                "intruders_eps09", "principal_k"]


@dataclass
class CheckpointSpectra:
    """A checkpoint's spectra rows and its top-r left ΔW subspaces (for the next checkpoint's subspace_sim_prev)."""

    frame: pd.DataFrame
    subspaces: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class LoraSettings:
    """The parts of a PEFT LoraConfig (adapter_config.json) that fix ΔW = scale·B·A."""

    r: int
    alpha: float
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    fan_in_fan_out: bool = False
    use_dora: bool = False
    base: str | None = None

    def rank_alpha(self, module_name: str) -> tuple[int, float]:
        """(r, alpha) for a module, rank_pattern / alpha_pattern first, as PEFT resolves them."""
        r_key = pattern_key(self.rank_pattern, module_name)
        a_key = pattern_key(self.alpha_pattern, module_name)
        r = self.rank_pattern[r_key] if r_key is not None else self.r
        alpha = self.alpha_pattern[a_key] if a_key is not None else self.alpha
        return int(r), float(alpha)

    def scale(self, module_name: str) -> float:
        """The LoRA scale of a module: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        r, alpha = self.rank_alpha(module_name)
        return sm.lora_scaling(r, alpha, self.use_rslora)


def pattern_key(patterns: dict, module_name: str) -> str | None:
    """The first pattern key matching the module name, as peft.utils.other.get_pattern_key does (None if none)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return key
    return None


def read_lora_settings(folder: Path) -> LoraSettings:
    """LoraSettings from a checkpoint's adapter_config.json."""
    path = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise TinaError(f"{path}: missing (not a LoRA checkpoint?)") from None
    except (OSError, ValueError) as exc:
        raise TinaError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise TinaError(f"{path}: no LoRA rank 'r'")
    return LoraSettings(
        r=int(cfg["r"]), alpha=float(cfg.get("lora_alpha", 8)), use_rslora=bool(cfg.get("use_rslora", False)),
        rank_pattern=dict(cfg.get("rank_pattern") or {}), alpha_pattern=dict(cfg.get("alpha_pattern") or {}),
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)), use_dora=bool(cfg.get("use_dora", False)),
        base=cfg.get("base_model_name_or_path"),
    )


def split_module(module_path: str) -> tuple[int, str, str]:
    """(layer, module, canonical path from 'layers.N.' on) of a module path; layer -1 outside the decoder layers."""
    name = module_path[len(PEFT_PREFIX):] if module_path.startswith(PEFT_PREFIX) else module_path
    m = _LAYER.search(name)
    if m:
        return int(m.group("layer")), name.rsplit(".", 1)[-1], m.group("suffix")
    return -1, name.rsplit(".", 1)[-1], name


# ----------------------------------------------------------------------------- weights on disk


class SafetensorsWeights:
    """Lazy float32 reader of one safetensors file or an index of shards (`<stem>.safetensors[.index.json]`)."""

    def __init__(self, folder: Path, stem: str = "model"):
        self.folder = Path(folder)
        single = self.folder / f"{stem}.safetensors"
        index = self.folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise TinaError(f"{index}: unreadable shard index ({exc})") from None
            self._where = {k: self.folder / v for k, v in weight_map.items()}
        elif single.is_file():
            self._where = None
            self._single = single
        else:
            others = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt"))
            found = f" (found {', '.join(others)}; only safetensors are read, never pickles)" if others else ""
            raise TinaError(f"{self.folder}: no {stem}.safetensors{found}")
        self._handles: dict[Path, Any] = {}
        if self._where is None:
            self._where = {k: single for k in self._open(single).keys()}

    def _open(self, path: Path):
        if path not in self._handles:
            if not path.is_file():
                raise TinaError(f"{path}: shard missing")
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as exc:
                raise TinaError(f"{path}: not a readable safetensors file ({exc})") from None
        return self._handles[path]

    def keys(self) -> list[str]:
        """All tensor names."""
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        return tuple(self._open(self._where[key]).get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        """A tensor as float32 numpy (bf16/fp16 widened exactly through torch, which numpy cannot read)."""
        if key not in self._where:
            raise TinaError(f"{self.folder}: tensor {key} missing")
        try:
            return self._open(self._where[key]).get_tensor(key).float().numpy()
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise TinaError(f"{self._where[key]}: cannot read {key} ({exc})") from None


def _weight_index(weights: SafetensorsWeights, *, layers_only: bool = True) -> dict[str, str]:
    """canonical module path ('layers.N.<...>.<module>') -> key of its 2-D `.weight` tensor.

    Full fine-tunes are read inside the decoder layers only (embeddings and lm_head are vocab-sized);
    LoRA bases index every matrix so an adapted lm_head still finds its base."""
    out = {}
    for key in weights.keys():
        if not key.endswith(".weight"):
            continue
        layer, _, canon = split_module(key[: -len(".weight")])
        if (layer >= 0 or not layers_only) and len(weights.shape(key)) == 2:
            out[canon] = key
    return out


def _base_folder(ckpt, base_dir, settings: LoraSettings | None) -> Path | None:
    """The local base-model folder: base_dir, else the checkpoint's base, else the adapter's base; None if not local.
    A real base named `real:NAME` is its cached folder (tina_probe.real; built on first use)."""
    from tina_probe.real import is_real_name, resolve_model

    for cand in (base_dir, getattr(ckpt, "base", None), settings.base if settings else None):
        if cand and is_real_name(str(cand)):
            cand = resolve_model(str(cand))
        if cand and Path(cand).expanduser().is_dir():
            return Path(cand).expanduser()
    return None


class BaseSVDCache:
    """Thin SVDs (U, σ) of base weights, kept as npz files in cache_dir keyed by a hash of the tensor bytes."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def get(self, W0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(U0, σ0) of W0, from the cache or computed (and stored) once."""
        W0 = np.ascontiguousarray(W0, dtype=np.float32)
        digest = hashlib.blake2b(W0.tobytes(), digest_size=16)
        digest.update(repr(W0.shape).encode())
        path = self.cache_dir / f"base-svd-{digest.hexdigest()}.npz" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    return z["U"].astype(np.float32), z["s"]
            except (OSError, ValueError, KeyError):
                log.info("%s: unreadable cache entry, recomputing", path)
        U, s = sm.dense_svd(W0)
        # U is stored as float16: half the disk of a 1.5B model's bases, and cosines against eps >= 0.3 do not
        # notice its 1e-3 rounding. It is returned rounded too, so that a checkpoint's rows do not depend on whether
        # this process computed the base or read it back (resumed, or another shard's cache).
        U16 = U.astype(np.float16)
        if path is not None:
            buf = io.BytesIO()
            np.savez(buf, U=U16, s=s)
            atomic_write_bytes(path, buf.getvalue())
        return U16.astype(np.float32), s


# ----------------------------------------------------------------------------- per-module metrics


def update_metrics(U: np.ndarray, s: np.ndarray, fro: float, *, r: int, top: int, complete: bool = True) -> dict:
    """Base-free metrics of one update from its left singular vectors U, singular values s and Frobenius norm."""
    total = fro**2
    return dict(
        singular_values=[float(x) for x in s[:top]],
        fro_norm=float(fro),
        stable_rank=sm.stable_rank(s, fro),
        effective_rank=sm.effective_rank(s),
        energy_rank90=sm.energy_rank(s, 0.9, total),
        topr_energy=sm.top_energy(s, r, total),
        rank_r=int(r),
        complete_spectrum=bool(complete),
    )


def base_metrics(U: np.ndarray, r: int, *, W0: np.ndarray, U0: np.ndarray, s0: np.ndarray, fro: float,
                 W_t: np.ndarray | None = None, delta: np.ndarray | None = None) -> dict:
    """Metrics against the base weights: relative norm, principal angles, and (given dense W_t) intruders,
    spectral drift and sparsity."""
    out: dict[str, Any] = dict(
        rel_norm=float(fro / np.linalg.norm(W0)),
        principal_angle_mean_deg=float(np.mean(sm.principal_angles_deg(U[:, :r], U0[:, :r]))),
    )
    if W_t is not None:
        U_t, s_t = sm.top_vectors_and_values(W_t, INTRUDER_K)
        cos = sm.max_abs_cosines(U_t[:, :INTRUDER_K], U0)
        for eps in sm.INTRUDER_EPS:
            out[f"intruders_eps{int(round(eps * 10)):02d}"] = int(np.sum(cos < eps))
        out["intruders"] = out["intruders_eps05"]
        out["spectral_drift"] = sm.spectral_drift(s_t, s0)
        out.update(module_geometry(W0, W_t))
    if delta is not None and W_t is not None:
        out["sparsity"] = sm.sparsity(delta)
        out["sparsity_bf16"] = sm.sparsity_bf16(W_t, W0)
    return out


# ----------------------------------------------------------------------------- per checkpoint


def _lora_modules(adapter: SafetensorsWeights, path: Path) -> dict[str, tuple[str, str, bool]]:
    """module path -> (A key, B key, is an embedding LoRA); a half pair is an error."""
    halves: dict[str, dict[str, str]] = {}
    embedding: set[str] = set()
    for key in adapter.keys():
        m = _LORA_KEY.match(key)
        if m is None:
            m = _LORA_EMBEDDING_KEY.match(key)
            if m is not None:
                embedding.add(m.group("module"))
        if m:
            halves.setdefault(m.group("module"), {})[m.group("ab")] = key
    if not halves:
        raise TinaError(f"{path}: no lora_A / lora_B tensors in adapter_model.safetensors")
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            if module in embedding:
                missing = missing.replace("lora_", "lora_embedding_")
            raise TinaError(f"{path}: {module}.{missing}{'' if module in embedding else '.weight'} missing")
    return {m: (p["A"], p["B"], m in embedding) for m, p in halves.items()}


def _tied_config(*folders: Path | None) -> bool | None:
    """tie_word_embeddings from the first config.json that says (a nested text_config too); None if none does."""
    for folder in folders:
        if folder is None:
            continue
        try:
            cfg = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError):
            continue
        for part in (cfg, cfg.get("text_config") if isinstance(cfg, dict) else None):
            if isinstance(part, dict) and isinstance(part.get("tie_word_embeddings"), bool):
                return part["tie_word_embeddings"]
    return None


def _embedding_keys(weights: SafetensorsWeights) -> dict[str, str]:
    """'embed_tokens' / 'lm_head' -> the key of that 2-D matrix outside the decoder layers (those present)."""
    out = {}
    for key in weights.keys():
        if not key.endswith(".weight") or len(weights.shape(key)) != 2:
            continue
        layer, module, _ = split_module(key[: -len(".weight")])
        if layer < 0 and module in (EMBEDDING, LM_HEAD):
            out.setdefault(module, key)
    return out


def _canon_of(key: str) -> str:
    return split_module(key[: -len(".weight")])[2]


def embedding_pairs(weights: SafetensorsWeights, base: SafetensorsWeights, *, tied: bool | None
                    ) -> list[tuple[str, str, str, bool]]:
    """(canonical path, checkpoint key, base key, tied) of the vocabulary matrices a full fine-tune changed.

    Tied (config's tie_word_embeddings, or only one of the two matrices saved): one matrix, whichever name the file
    kept (transformers saves embed_tokens and drops lm_head), so its update is analysed once, as embed_tokens.
    Untied: embed_tokens and lm_head each. A matrix missing on one side is left out."""
    mine, theirs = _embedding_keys(weights), _embedding_keys(base)
    if tied is None:
        tied = len(mine) < 2 and len(theirs) < 2 and bool(mine) and bool(theirs)
    if tied:
        key_t = mine.get(EMBEDDING) or mine.get(LM_HEAD)
        key_0 = theirs.get(EMBEDDING) or theirs.get(LM_HEAD)
        if key_t is None or key_0 is None:
            return []
        canon = _canon_of(key_0) if EMBEDDING in theirs and EMBEDDING not in mine else _canon_of(key_t)
        return [(canon, key_t, key_0, True)]
    return [(_canon_of(mine[m]), mine[m], theirs[m], False) for m in (EMBEDDING, LM_HEAD) if m in mine and m in theirs]


def _lora_rows(ckpt, *, base_dir, cache: BaseSVDCache, top: int, intruders: bool) -> list[tuple[dict, np.ndarray]]:
    """(row fields, top-r left basis) per adapted module of a LoRA checkpoint."""
    path = Path(ckpt.path)
    settings = read_lora_settings(path)
    if settings.use_dora:
        raise TinaError(f"{path}: DoRA adapters (use_dora) are not supported: ΔW is not scale·B·A")
    adapter = SafetensorsWeights(path, "adapter_model")
    pairs = _lora_modules(adapter, path)
    base_folder = _base_folder(ckpt, base_dir, settings)
    base = SafetensorsWeights(base_folder) if base_folder else None
    base_index = _weight_index(base, layers_only=False) if base else {}
    if base is not None and LM_HEAD not in base_index and _tied_config(base_folder) is not False:
        vocab = _embedding_keys(base)  # a tied base saves one vocabulary matrix: an adapted lm_head finds it there
        if EMBEDDING in vocab:
            base_index[LM_HEAD] = vocab[EMBEDDING]
    out = []
    for module_path, (key_a, key_b, is_embedding) in sorted(pairs.items()):
        name = module_path[len(PEFT_PREFIX):] if module_path.startswith(PEFT_PREFIX) else module_path
        A, B = adapter.get(key_a), adapter.get(key_b)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise TinaError(f"{path}: {name}: lora_A {A.shape} and lora_B {B.shape} do not pair")
        r_cfg, _ = settings.rank_alpha(name)
        if r_cfg != A.shape[0]:
            raise TinaError(f"{path}: {name}: tensors have rank {A.shape[0]} but adapter_config says r={r_cfg}")
        scale = settings.scale(name)
        U, s, V = sm.lora_svd(A, B, scale)
        # Conv1D layout (fan_in_fan_out) and embeddings store the weight as (in, out): ΔW_weight = (s·B·A)ᵀ
        transposed = settings.fan_in_fan_out or is_embedding
        if transposed:
            U, V = V, U
        fro = float(np.sqrt(np.sum(s**2)))
        layer, module, canon = split_module(name)
        r = len(s)
        row = dict(layer=layer, module=module, module_path=canon)
        row.update(update_metrics(U, s, fro, r=r, top=top))
        if base is not None:
            key0 = base_index.get(canon)
            if key0 is None:
                raise TinaError(f"{base_folder}: no base weight for adapted module {name}")
            W0 = base.get(key0)
            out_dim, in_dim = (B.shape[0], A.shape[1]) if not transposed else (A.shape[1], B.shape[0])
            if W0.shape != (out_dim, in_dim):
                raise TinaError(f"{path}: {name}: ΔW is {(out_dim, in_dim)} but the base weight is {W0.shape}")
            U0, s0 = cache.get(W0)
            W_t = delta = None
            if intruders:
                delta = (scale * (B @ A)).astype(np.float32)
                delta = delta.T if transposed else delta
                W_t = W0 + delta
            row.update(base_metrics(U, r, W0=W0, U0=U0, s0=s0, fro=fro, W_t=W_t, delta=delta))
        out.append((row, U[:, :r]))
    return out


def _full_rows(ckpt, *, base_dir, cache: BaseSVDCache, top: int, intruders: bool, method: str,
               pair_rank: int) -> list[tuple[dict, np.ndarray]]:
    """(row fields, top-r left basis) per matrix of a full fine-tune, ΔW = W_t − W_0: every decoder-layer matrix,
    then the vocabulary matrices (embed_tokens, lm_head; once when tied, see embedding_pairs)."""
    path = Path(ckpt.path)
    weights = SafetensorsWeights(path)
    base_folder = _base_folder(ckpt, base_dir, None)
    if base_folder is None:
        raise TinaError(f"{path}: base model {getattr(ckpt, 'base', None)!r} is not a local folder; "
                        "a full fine-tune's update needs the base weights")
    base = SafetensorsWeights(base_folder)
    index, base_index = _weight_index(weights), _weight_index(base)
    if not index:
        raise TinaError(f"{path}: no decoder-layer weight matrices (layers.N.*.weight)")
    missing = sorted(set(base_index) - set(index))
    if missing:
        raise TinaError(f"{path}: {len(missing)} weight(s) of the base missing, e.g. {missing[0]}.weight")
    jobs = []  # (canonical path, checkpoint key, base key, tied)
    for canon, key in sorted(index.items()):
        key0 = base_index.get(canon)
        if key0 is None:
            raise TinaError(f"{base_folder}: base has no weight for {key}")
        jobs.append((canon, key, key0, False))
    tied = _tied_config(path, base_folder)
    for canon, key, key0, is_tied in embedding_pairs(weights, base, tied=tied):
        if weights.shape(key) != base.shape(key0):  # a resized vocabulary: no update to take
            log.warning("spectra: %s: %s is %s but the base's %s is %s (vocabulary resized); left out", path, key,
                        weights.shape(key), key0, base.shape(key0))
            continue
        jobs.append((canon, key, key0, is_tied))
    out = []
    for canon, key, key0, is_tied in jobs:
        W_t, W0 = weights.get(key), base.get(key0)
        if W_t.shape != W0.shape:
            raise TinaError(f"{path}: {key} is {W_t.shape} but the base's is {W0.shape}")
        delta = W_t - W0
        fro = math.sqrt(float(np.einsum("ij,ij->", delta, delta, dtype=np.float64)))
        r = min(pair_rank, *delta.shape)
        k = max(top, r)
        U, s = sm.dense_svd(delta, top=k, method=method)
        layer, module, _ = split_module(canon)
        row = dict(layer=layer, module=module, module_path=canon, tied=is_tied, note=TIED_NOTE if is_tied else "")
        row.update(update_metrics(U, s, fro, r=r, top=top, complete=method == "dense"))
        U0, s0 = cache.get(W0)
        row.update(base_metrics(U, r, W0=W0, U0=U0, s0=s0, fro=fro, W_t=W_t if intruders else None, delta=delta))
        if not intruders:
            row.update(sparsity=sm.sparsity(delta), sparsity_bf16=sm.sparsity_bf16(W_t, W0))
        out.append((row, U[:, :r]))
    return out


def _frame(rows: list[dict]) -> pd.DataFrame:
    """A typed DataFrame in the table's column order (nullable ints, NaN -> null in parquet)."""
    df = pd.DataFrame([asdict(SpectrumRow(**r)) for r in rows], columns=COLUMNS)
    df["tied"] = df["tied"].astype(bool)
    df["note"] = df["note"].astype(str)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ["rel_norm", "principal_angle_mean_deg", "spectral_drift", "sparsity", "sparsity_bf16",
                "subspace_sim_prev", *[c for c in GEOMETRY_COLUMNS if c != "principal_k"]]:
        df[col] = df[col].astype("float64")
    return df


def checkpoint_spectra(ckpt, *, base_dir: Path | str | None = None, cache_dir: Path | str | None = None,
                       top: int = 64, intruders: bool = True, method: str = "dense",
                       pair_rank: int = DEFAULT_PAIR_RANK,
                       prev_subspaces: dict[str, np.ndarray] | None = None) -> CheckpointSpectra:
    """Spectra rows and top-r ΔW subspaces of one Checkpoint-like object (run, step, kind, path, base).

    Raises TinaError for missing tensors, mismatched shapes or a weights file that is not safetensors."""
    if method not in ("dense", "randomized"):
        raise TinaError(f"method {method!r}: expected dense or randomized")
    cache = BaseSVDCache(Path(cache_dir) if cache_dir is not None else None)
    path = Path(ckpt.path)
    if not path.is_dir():
        raise TinaError(f"{path}: checkpoint folder missing")
    kind = ckpt.kind if ckpt.kind in ("lora", "full") else (
        "lora" if (path / "adapter_config.json").exists() else "full")
    if kind == "lora":
        pieces = _lora_rows(ckpt, base_dir=base_dir, cache=cache, top=top, intruders=intruders)
    else:
        pieces = _full_rows(ckpt, base_dir=base_dir, cache=cache, top=top, intruders=intruders, method=method,
                            pair_rank=pair_rank)
    rows, subspaces = [], {}
    for fields, basis in pieces:
        fields.update(run=ckpt.run, step=int(ckpt.step), kind=kind)
        rows.append(fields)
        subspaces[fields["module_path"]] = basis
    frame = with_subspace_similarity(_frame(rows), subspaces, prev_subspaces)
    return CheckpointSpectra(frame=frame, subspaces=subspaces)


def with_subspace_similarity(frame: pd.DataFrame, subspaces: dict[str, np.ndarray],
                             prev: dict[str, np.ndarray] | None) -> pd.DataFrame:
    """The frame with subspace_sim_prev filled for modules whose previous top-r ΔW basis is known."""
    if not prev:
        return frame
    frame = frame.copy()
    frame["subspace_sim_prev"] = [
        sm.subspace_similarity(subspaces[p], prev[p]) if p in prev else math.nan for p in frame["module_path"]]
    return frame


def spectra_for_checkpoint(ckpt, *, base_dir: Path | str | None = None, cache_dir: Path | str | None = None,
                           top: int = 64, **kwargs) -> pd.DataFrame:
    """The `spectra` rows of one checkpoint (see checkpoint_spectra for the options)."""
    return checkpoint_spectra(ckpt, base_dir=base_dir, cache_dir=cache_dir, top=top, **kwargs).frame


# ----------------------------------------------------------------------------- a series of checkpoints


def _discover_runs(paths: list[str]):
    """Runs through tina_probe.runs (imported late so the module stays importable without it)."""
    from tina_probe.runs import discover_runs
    return discover_runs(paths)


def _paired_rank(runs) -> int:
    """The LoRA rank that full-FT rows compare against: the smallest r among the LoRA runs given, else 8."""
    ranks = []
    for run in runs:
        for ck in run.checkpoints:
            if ck.kind == "lora":
                try:
                    ranks.append(read_lora_settings(Path(ck.path)).r)
                except TinaError:
                    continue
                break
    return min(ranks) if ranks else DEFAULT_PAIR_RANK


def _part_key(ckpt, prev, settings: tuple) -> str:
    """The resume key of one checkpoint: run@step, then a hash of what its rows depend on: its files (and an
    adapter's base's), the previous checkpoint's files (subspace_sim_prev) and the analysis settings; a checkpoint
    saved again, or another --top, is analysed again (and its new part outranks the old one: newest_last)."""
    files = (*checkpoint_identity(ckpt), None if prev is None else (str(prev.path), checkpoint_identity(prev)[0]))
    return f"{ckpt.run}@{int(ckpt.step)}.{stable_key('spectra', PART_VERSION, str(ckpt.path), files, *settings)}"


def _subspace_file(cache_dir: Path, ckpt) -> Path:
    """Where a checkpoint's top-r ΔW bases are cached (for a resumed series' subspace_sim_prev)."""
    tag = hashlib.sha256(f"{ckpt.run}\0{int(ckpt.step)}\0{Path(ckpt.path).resolve()}".encode()).hexdigest()[:20]
    return cache_dir / f"subspaces-{tag}.npz"


def _save_subspaces(cache_dir: Path, ckpt, subspaces: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.astype(np.float32) for k, v in subspaces.items()})
    atomic_write_bytes(_subspace_file(cache_dir, ckpt), buf.getvalue())


def _load_subspaces(cache_dir: Path, ckpt) -> dict[str, np.ndarray] | None:
    path = _subspace_file(cache_dir, ckpt)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None


def _previous_subspaces(ckpt, **kwargs) -> dict[str, np.ndarray] | None:
    """The top-r ΔW bases of an already finished checkpoint: from the cache, else recomputed (None if unreadable)."""
    cached = _load_subspaces(kwargs["cache_dir"], ckpt)
    if cached is not None:
        return cached
    try:
        return checkpoint_spectra(ckpt, intruders=False, **kwargs).subspaces
    except TinaError:
        return None


def run_spectra(ckpt_paths: list[str], out: Path, top: int = 64, *, intruders: bool = True,
                method: str = "dense", cache_dir: Path | None = None,
                shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """Spectra of every non-base checkpoint of the given runs -> <out>/spectra.parquet; resumable per checkpoint.

    A checkpoint that cannot be analysed gives one warning line and is skipped; the series goes on. `shard` (i, N):
    only the i-th contiguous block of the checkpoints (tina_probe/shards.py rule S3: a block's first checkpoint
    recomputes its predecessor's subspaces once); the table is consolidated from every part present either way,
    and the cross-run update_overlap is left to a run without a shard."""
    out = Path(out)
    store = Store(out)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / ".cache" / "spectra"
    runs = _discover_runs([str(p) for p in ckpt_paths])
    pair_rank = _paired_rank(runs)
    todo = [(run, [c for c in run.checkpoints if c.kind != "base" and int(c.step) != 0]) for run in runs]
    everything = [(run.name, int(c.step)) for run, cks in todo for c in sorted(cks, key=lambda c: int(c.step))]
    mine = set(block(sorted(everything), shard))  # sorted: every shard deals the same list, whatever --ckpts' order
    with tqdm(total=len(mine), desc="spectra", unit="ckpt") as bar:
        for run, ckpts in todo:
            prev, prev_ckpt = None, None
            ordered = sorted(ckpts, key=lambda c: int(c.step))
            for before, ck in zip([None, *ordered], ordered):
                if (run.name, int(ck.step)) not in mine:  # another shard's: its successor loads or recomputes it
                    prev, prev_ckpt = None, ck
                    continue
                bar.set_postfix_str(f"{ck.run}@{int(ck.step)}")
                key = _part_key(ck, before, (top, method, intruders, pair_rank))
                if store.has_part(TABLE, key):
                    store.touch_part(TABLE, key)  # asked for now: its rows win over an older part of this step
                    prev, prev_ckpt = None, ck
                    bar.update(1)
                    continue
                try:
                    result = checkpoint_spectra(ck, cache_dir=cache_dir, top=top, intruders=intruders,
                                                method=method, pair_rank=pair_rank)
                except TinaError as exc:
                    log.warning("spectra: skipped run %s step %s: %s", ck.run, ck.step, exc)
                    bar.update(1)
                    continue
                if prev is None and prev_ckpt is not None:  # resumed: the previous checkpoint was done before
                    prev = _previous_subspaces(prev_ckpt, cache_dir=cache_dir, top=top, method=method,
                                               pair_rank=pair_rank)
                frame = with_subspace_similarity(result.frame, result.subspaces, prev)
                _save_subspaces(cache_dir, ck, result.subspaces)
                if prev_ckpt is not None:  # only the latest bases of a run are needed to resume
                    _subspace_file(cache_dir, prev_ckpt).unlink(missing_ok=True)
                store.write_part(TABLE, key, frame)
                prev, prev_ckpt = result.subspaces, ck
                bar.update(1)  # after the work: the bar counts checkpoints done, not started
    keys = ["run", "step", "layer", "module", "module_path"]
    # sorted by its keys: shards and one process write the same table, whatever order the parts came in
    df = store.consolidate(TABLE, key_cols=keys, sort_by=keys, newest_last=True)
    if df.empty:
        df = pd.DataFrame(columns=COLUMNS)
    if intruders and len(runs) > 1 and shard is None:  # cross-run changed-mask overlap (rule G5), each run at its last checkpoint
        from analysis.update_overlap import update_overlap_table

        try:
            overlap = update_overlap_table(runs)
        except TinaError as exc:
            log.warning("spectra: no update_overlap table: %s", exc)
        else:
            if not overlap.empty:
                with store.lock():
                    store.write("update_overlap", overlap)
    return df
