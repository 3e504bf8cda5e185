"""Cross-run consistency of where updates land (rule G5 of analysis/path_not_taken.py) -> `update_overlap` table.

For every pair of runs on the same base, each at its last checkpoint: per weight matrix both runs changed, the
Jaccard index of their changed masks (rule G1's relative tolerance) beside the independent-masks baseline
pq / (p + q - pq); and one `overall` row pooling every entry. LoRA's W_t = W_0 + s*B*A is formed one matrix at a
time; masks are kept bit-packed (1.5B parameters: ~190 MB per checkpoint).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import spectra as sp
from analysis.path_not_taken import RTOL, changed_mask, independent_jaccard
from tina_probe.errors import TinaError

COLUMNS = ["run_a", "run_b", "step_a", "step_b", "kind_a", "kind_b", "module_path", "n_entries", "changed_a",
           "changed_b", "jaccard", "baseline", "ratio"]


def changed_masks(ckpt, *, base_dir=None, rtol: float = RTOL) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    """module path -> (bit-packed changed mask, shape) of every matrix the checkpoint updates."""
    path = Path(ckpt.path)
    out = {}
    if ckpt.kind == "lora":
        settings = sp.read_lora_settings(path)
        adapter = sp.SafetensorsWeights(path, "adapter_model")
        base_folder = sp._base_folder(ckpt, base_dir, settings)
        if base_folder is None:
            raise TinaError(f"{path}: no base weights found; the changed mask needs W_0")
        base = sp.SafetensorsWeights(base_folder)
        index = sp._weight_index(base, layers_only=False)
        for module_path, (key_a, key_b, is_embedding) in sorted(sp._lora_modules(adapter, path).items()):
            name = module_path[len(sp.PEFT_PREFIX):] if module_path.startswith(sp.PEFT_PREFIX) else module_path
            canon = sp.split_module(name)[2]
            if canon not in index:
                continue
            delta = (settings.scale(name) * (adapter.get(key_b) @ adapter.get(key_a))).astype(np.float32)
            if settings.fan_in_fan_out or is_embedding:
                delta = delta.T
            W0 = base.get(index[canon])
            mask = changed_mask(W0 + delta, W0, rtol)
            out[canon] = (np.packbits(mask, axis=None), mask.shape)
        return out
    weights = sp.SafetensorsWeights(path)
    base_folder = sp._base_folder(ckpt, base_dir, None)
    if base_folder is None:
        raise TinaError(f"{path}: base model is not a local folder; the changed mask needs W_0")
    base = sp.SafetensorsWeights(base_folder)
    mine, theirs = sp._weight_index(weights), sp._weight_index(base)
    pairs = [(canon, key, theirs[canon]) for canon, key in sorted(mine.items()) if canon in theirs]
    pairs += [(canon, k_t, k_0) for canon, k_t, k_0, _ in
              sp.embedding_pairs(weights, base, tied=sp._tied_config(path, base_folder))]
    for canon, key, key0 in pairs:
        W_t, W0 = weights.get(key), base.get(key0)
        if W_t.shape == W0.shape:
            mask = changed_mask(W_t, W0, rtol)
            out[canon] = (np.packbits(mask, axis=None), mask.shape)
    return out


def _share(bits: np.ndarray, n: int) -> int:
    return int(np.unpackbits(bits, count=n).sum())


def pair_rows(a, b, masks_a: dict, masks_b: dict) -> list[dict]:
    """Per module both runs changed, and overall: Jaccard of the masks vs the independent baseline (rule G5)."""
    rows, tot = [], np.zeros(4)  # entries, |a|, |b|, |a and b|
    for module in sorted(set(masks_a) & set(masks_b)):
        (bits_a, shape_a), (bits_b, shape_b) = masks_a[module], masks_b[module]
        if shape_a != shape_b:
            continue
        n = int(np.prod(shape_a))
        ca, cb = _share(bits_a, n), _share(bits_b, n)
        both = int(np.unpackbits(bits_a & bits_b, count=n).sum())
        tot += (n, ca, cb, both)
        rows.append(_row(a, b, module, n, ca, cb, both))
    if rows:
        rows.append(_row(a, b, "overall", *(int(x) for x in tot)))
    return rows


def _row(a, b, module, n, ca, cb, both) -> dict:
    union = ca + cb - both
    jac = both / union if union else np.nan
    base = independent_jaccard(ca / n, cb / n)
    return {"run_a": a.run, "run_b": b.run, "step_a": int(a.step), "step_b": int(b.step), "kind_a": a.kind,
            "kind_b": b.kind, "module_path": module, "n_entries": n, "changed_a": ca / n, "changed_b": cb / n,
            "jaccard": jac, "baseline": base, "ratio": jac / base if base and base > 0 else np.nan}


def update_overlap_table(runs, *, base_dir=None) -> pd.DataFrame:
    """Every pair of runs on the same base, each at its last trained checkpoint (one row per module + overall)."""
    last = {}
    for run in runs:
        trained = [c for c in run.checkpoints if c.kind != "base" and int(c.step) > 0]
        if trained:
            last[run.name] = max(trained, key=lambda c: int(c.step))
    by_base: dict[str, list] = {}
    for ck in last.values():
        by_base.setdefault(str(ck.base), []).append(ck)
    rows, cache = [], {}
    for cks in by_base.values():
        for a, b in itertools.combinations(sorted(cks, key=lambda c: c.run), 2):
            for ck in (a, b):
                if ck.run not in cache:
                    cache[ck.run] = changed_masks(ck, base_dir=base_dir)
            rows += pair_rows(a, b, cache[a.run], cache[b.run])
    return pd.DataFrame(rows, columns=COLUMNS)
