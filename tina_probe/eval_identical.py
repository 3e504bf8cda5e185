"""Whether a LoRA checkpoint changes anything: the format table's `identical_to_base` rows (1.0 when the adapter is
all zeros, or when its greedy completions equal the base's on every problem) and eval's one warning line per such
checkpoint. (Seen elsewhere: lm-eval #2432, LoRA results identical to the base under vLLM.)"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from tina_probe.eval_units import Unit, sampling_label
from tina_probe.generate import SamplingSettings
from tina_probe.runs import lora_update_is_zero
from tina_probe.store import Store

log = logging.getLogger(__name__)

CHECKS = "adapter_checks"  # one part per LoRA unit (its unit key): whether its adapter's update B A is zero
METRIC = "identical_to_base"
_GROUP = ["run", "step", "benchmark", "sampling"]


def record_adapter_checks(store: Store, units: Sequence[Unit], s: SamplingSettings) -> None:
    """Each LoRA unit's check part (its adapter read once per checkpoint), or, when stored, marked as just written: the
    newest check of each group is then the current unit's, as for its samples (eval_sweep rules 3, 4 and 6)."""
    zero: dict[str, bool | None] = {}
    for u in units:
        if u.ckpt.kind != "lora":
            continue
        if store.has_part(CHECKS, u.key):
            store.touch_part(CHECKS, u.key)
            continue
        path = str(u.ckpt.path)
        if path not in zero:
            try:
                zero[path] = lora_update_is_zero(path)
            except Exception:  # unreadable (safetensors raises its own types): the sweep skipped it with a warning
                zero[path] = None
        if zero[path] is not None:
            row = {"run": u.ckpt.run, "step": int(u.ckpt.step), "benchmark": u.benchmark.name,
                   "sampling": sampling_label(s), "zero_update": zero[path]}
            store.write_part(CHECKS, u.key, pd.DataFrame([row]))


def _completions(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["problem_id", "sample_idx"])["completion"].sort_index()


def identical_to_base(samples: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """Per LoRA group (run, step, benchmark, sampling): zero_update (its adapter's check), greedy_same (temperature
    0 and the completions equal, problem by problem, those of the run's base under the same benchmark and sampling)
    and identical (either)."""
    cols = [*_GROUP, "kind", "zero_update", "greedy_same", "identical"]
    if samples.empty or not {"kind", "sampling", "temperature"} <= set(samples.columns):
        return pd.DataFrame(columns=cols)
    zero = {tuple(r[:4]): bool(r[4]) for r in checks[[*_GROUP, "zero_update"]].itertuples(index=False)} \
        if not checks.empty else {}
    bases = {key: _completions(f) for key, f in samples[samples["kind"] == "base"].groupby(_GROUP, sort=False)}
    rows = []
    for key, frame in samples[samples["kind"] == "lora"].groupby(_GROUP, sort=True):
        run, _, benchmark, sampling = key
        base = bases.get((run, 0, benchmark, sampling))
        greedy_same = bool((frame["temperature"] == 0).all() and base is not None
                           and _completions(frame).equals(base))
        zero_update = zero.get(tuple(key), False)
        rows.append((*key, "lora", zero_update, greedy_same, zero_update or greedy_same))
    return pd.DataFrame(rows, columns=cols)


def format_rows(identical: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """The format table's rows: metric identical_to_base, value 1.0 / 0.0, no CI."""
    out = identical[list(group_cols)].assign(metric=METRIC, value=identical["identical"].astype(float),
                                             ci_low=np.nan, ci_high=np.nan)
    return out.reset_index(drop=True)


def stored_checks(store: Store) -> pd.DataFrame:
    """The newest check part of each group (as for samples: eval_sweep rule 6), not written as a table."""
    return store.consolidate(CHECKS, newest_per_key_prefix=True, write=False)


def warn_identical(fmt: pd.DataFrame, checks: pd.DataFrame, units: Sequence[Unit]) -> None:
    """One warning line per LoRA checkpoint of this eval whose identical_to_base is 1 on some benchmark."""
    if fmt.empty or "metric" not in fmt.columns:
        return
    asked = {(u.ckpt.run, u.ckpt.step): u.ckpt.path for u in units if u.ckpt.kind == "lora"}
    hits = fmt[(fmt["metric"] == METRIC) & (fmt["value"] == 1.0)]
    zero = set() if checks.empty else {(r, int(s)) for r, s in checks.loc[checks["zero_update"], ["run", "step"]]
                                       .itertuples(index=False)}
    for (run, step), frame in hits.groupby(["run", "step"], sort=True):
        if (run, step) not in asked:
            continue
        why = ("its adapter is all zeros (B A = 0)" if (run, int(step)) in zero
               else "its greedy completions equal the base's on every problem")
        log.warning("%s: LoRA checkpoint identical to its base on %s: %s", asked[(run, step)],
                    ", ".join(sorted(frame["benchmark"].unique())), why)
