"""Plain LoRA adapters read from their safetensors and applied without peft: several adapters in one batch
(one block of rows each, LoraBankLinear), or one merged into the base weights in place and restored bit-exactly.

Written here rather than through peft because peft's load_adapter costs ~40 ms per adapter on the lab model (reading
here ~2 ms) and its mixed-adapter batches (adapter_names=) were no faster than one adapter at a time; the math is
peft's, op for op, and tests/test_generate_hf.py checks it against peft models. Anything but plain LoRA goes to peft.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
# LoraConfig fields that do not change inference once the weights are given (which modules, rank, alpha, init
# method, dropout: identity in eval); any other field away from its default sends the adapter to peft itself
_PLAIN_LORA_FIELDS = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "use_rslora",
    "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "runtime_config",
    "megatron_core", "qalora_group_size",
}


@dataclass(frozen=True)
class PlainLora:
    """One plain LoRA adapter: per targeted module name, (A [r, in], B [out, r]) and peft's scaling for it."""

    key: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: dict[str, float]

    @property
    def signature(self) -> tuple:
        """Modules and shapes: adapters with equal signatures can share one batch."""
        return tuple((name, tuple(a.shape), tuple(b.shape)) for name, (a, b) in sorted(self.weights.items()))


def lora_compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype peft computes LoRA in: float32 for half-precision models (its autocast_adapter_dtype default)."""
    return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype


def _plain_config(folder: Path):
    """The adapter's LoraConfig when it is plain LoRA (no DoRA, biases, extra saved modules, ...), else None."""
    from peft import LoraConfig

    try:
        raw = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    if raw.get("peft_type") != "LORA" or raw.get("bias", "none") != "none":
        return None
    cfg, default = LoraConfig.from_pretrained(str(folder)), LoraConfig()
    for field in cfg.__dataclass_fields__:
        if field not in _PLAIN_LORA_FIELDS and getattr(cfg, field) != getattr(default, field, None):
            return None
    return cfg


def _scaling(cfg, name: str) -> float:
    """peft's scaling of one module (LoraModel._create_and_replace + LoraLayer.update_layer): alpha / r, or
    alpha / sqrt(r) with rsLoRA, r and alpha looked up in rank_pattern / alpha_pattern first."""
    from peft.utils.other import get_pattern_key

    r = cfg.rank_pattern.get(get_pattern_key(cfg.rank_pattern.keys(), name), cfg.r)
    alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
    return alpha / math.sqrt(r) if cfg.use_rslora else alpha / r


def read_plain_lora(folder: Path, model: torch.nn.Module, dtype: torch.dtype, device) -> PlainLora | None:
    """The adapter's weights when it is plain LoRA on nn.Linear modules of `model`; None when peft must apply it.

    Read here rather than through peft's load_adapter (~40 ms per adapter on the lab model, ~2 ms here) so that many
    adapters can be batched together; the math is peft's (same ops, same scaling): tests/test_generate_hf.py."""
    from safetensors.torch import load_file

    cfg = _plain_config(folder)
    if cfg is None:
        return None
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            return None
        parts.setdefault(m.group(1), {})[m.group(2)] = value
    weights, scaling = {}, {}
    for name, ab in parts.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return None
        a, b = ab.get("A"), ab.get("B")
        if type(module) is not torch.nn.Linear or a is None or b is None or a.shape[0] != b.shape[1] \
                or a.shape[1] != module.in_features or b.shape[0] != module.out_features:
            return None
        weights[name] = (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
        scaling[name] = _scaling(cfg, name)
    return PlainLora(str(folder), weights, scaling) if weights else None


class RowPlan:
    """Which adapter block each row of the running batch belongs to; shared by a stack's LoraBankLinear modules.

    Starts as k equal contiguous blocks; when finished rows leave the batch (decode_rows), the blocks shrink
    unequally and each layer pads them back to equal blocks for its batched matmul (padding rows are dropped after).
    """

    def __init__(self, k: int):
        self.k = k
        self.equal = True
        self.version = 0
        self.slots = self.pad_index = self.unpad_index = None
        self.rows_per_block = 0

    def keep(self, block_of_row: torch.Tensor) -> None:
        """The batch now holds rows of these blocks (ascending block index, one entry per row)."""
        slots, counts = torch.unique_consecutive(block_of_row, return_counts=True)
        m = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(len(block_of_row), device=block_of_row.device) - torch.repeat_interleave(starts, counts)
        slot_of_row = torch.repeat_interleave(torch.arange(len(slots), device=block_of_row.device), counts)
        self.unpad_index = slot_of_row * m + within  # row -> its place in the padded layout
        pad_index = torch.zeros(len(slots) * m, dtype=torch.long, device=block_of_row.device)  # padding reads row 0
        pad_index[self.unpad_index] = torch.arange(len(block_of_row), device=block_of_row.device)
        if self.slots is None or not torch.equal(slots, self.slots):
            self.version += 1  # the set of blocks changed: layers pick their adapters again
        self.pad_index, self.slots, self.rows_per_block = pad_index, slots, m
        self.equal = False


class LoraBankLinear(torch.nn.Module):
    """An nn.Linear plus k LoRA adapters, adapter j applied to the rows of block j (RowPlan; k = 1: every row).

    The output is peft's, op for op: base(x) + (B(A(x)) * scaling); with k > 1 the two small products run as one
    batched matmul over the blocks (equal to k separate F.linear calls up to float rounding: the BLAS kernel depends
    on the batch shape and thread count; tests/test_generate_hf.py).
    peft's own mixed-adapter batches (adapter_names=) loop over adapters in Python per layer and step: no faster
    than one adapter at a time here."""

    def __init__(self, base: torch.nn.Linear, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor],
                 scaling: Sequence[float], plan: RowPlan | None = None):
        super().__init__()
        self.base = base
        self.k = len(a)
        self.plan = plan or RowPlan(self.k)
        self.dtype = a[0].dtype
        if self.k == 1:
            self.a, self.b = a[0], b[0]
        else:
            self.at, self.bt = torch.stack(list(a)).transpose(1, 2), torch.stack(list(b)).transpose(1, 2)
        uniform = all(s == scaling[0] for s in scaling)
        self.scaling = scaling[0] if uniform else torch.tensor(scaling, dtype=self.dtype,
                                                               device=a[0].device).view(-1, 1, 1)
        self._selected: tuple = (-1, None)

    def _weights_for_plan(self):
        """(A^T, B^T, scaling) of the blocks that still have rows (cached until a block empties)."""
        plan = self.plan
        if self._selected[0] != plan.version:
            scaling = self.scaling if isinstance(self.scaling, float) else self.scaling[plan.slots]
            self._selected = (plan.version, (self.at[plan.slots], self.bt[plan.slots], scaling))
        return self._selected[1]

    def _lora(self, x: torch.Tensor) -> torch.Tensor:
        """(B(A(x)) * scaling) for every row of x, each row with its block's adapter."""
        if self.k == 1:
            return F.linear(F.linear(x, self.a), self.b).mul_(self.scaling)
        if self.plan.equal:
            blocks = x.reshape(self.k, -1, x.shape[-1])
            return torch.bmm(torch.bmm(blocks, self.at), self.bt).mul_(self.scaling).view(*x.shape[:-1], -1)
        at, bt, scaling = self._weights_for_plan()
        padded = x.index_select(0, self.plan.pad_index).reshape(len(at), -1, x.shape[-1])
        lora = torch.bmm(torch.bmm(padded, at), bt).mul_(scaling)
        return lora.view(-1, *x.shape[1:-1], lora.shape[-1]).index_select(0, self.plan.unpad_index)

    def _add_lora_fused(self, out: torch.Tensor, x: torch.Tensor) -> bool:
        """out += B(A(x)) * scaling with the second product and the add in one BLAS call (addmm_ / baddbmm_ with
        alpha=scaling): 2 ops per layer instead of 4, which is most of LoRA's cost on small models. Rounding: equal to
        the unfused sum up to float rounding. False where it does not apply (mixed dtypes, uneven blocks, per-block
        scaling): the caller adds the unfused product."""
        if x.dtype != self.dtype or out.dtype != self.dtype or not isinstance(self.scaling, float):
            return False
        if self.k == 1:
            xa = F.linear(x, self.a)
            out.view(-1, out.shape[-1]).addmm_(xa.view(-1, xa.shape[-1]), self.b.t(), alpha=self.scaling)
            return True
        if not self.plan.equal:
            return False
        blocks = x.reshape(self.k, -1, x.shape[-1])
        out.view(self.k, -1, out.shape[-1]).baddbmm_(torch.bmm(blocks, self.at), self.bt, alpha=self.scaling)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self._add_lora_fused(out, x):
            return out
        lora = self._lora(x if x.dtype == self.dtype else x.to(self.dtype))
        if lora.dtype == out.dtype:
            return out.add_(lora)
        return (out + lora).to(out.dtype)


def _set_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextmanager
def lora_bank(model: torch.nn.Module, loras: Sequence[PlainLora | None]):
    """(model, plan): the model with one adapter per block of rows (None: no adapter, zero weights) on its targeted
    modules; the plain nn.Linear modules are put back on exit, so the base runs without any wrapper."""
    first = next(lo for lo in loras if lo is not None)
    plan = RowPlan(len(loras))
    swapped = {}
    try:
        for name, (a0, b0) in first.weights.items():
            base = model.get_submodule(name)
            a = [lo.weights[name][0] if lo else torch.zeros_like(a0) for lo in loras]
            b = [lo.weights[name][1] if lo else torch.zeros_like(b0) for lo in loras]
            scaling = [lo.scaling[name] if lo else first.scaling[name] for lo in loras]
            _set_module(model, name, LoraBankLinear(base, a, b, scaling, plan))
            swapped[name] = base
        yield model, plan
    finally:
        for name, base in swapped.items():
            _set_module(model, name, base)


@contextmanager
def merged_lora(model: torch.nn.Module, lora: PlainLora, pristine: dict[str, torch.Tensor]):
    """The model with `lora` merged into its weights as peft merges (W += (B @ A) * scaling); on exit every merged
    weight is copied back from `pristine` (filled here with copies of only the targeted weights): bit-exact."""
    modules = {name: model.get_submodule(name) for name in lora.weights}
    try:
        for name, module in modules.items():
            if name not in pristine:
                pristine[name] = module.weight.detach().clone()
            a, b = lora.weights[name]
            module.weight.data.copy_(pristine[name])
            module.weight.data += (b @ a) * lora.scaling[name]
        yield model
    finally:
        for name, module in modules.items():
            if name in pristine:
                module.weight.data.copy_(pristine[name])
