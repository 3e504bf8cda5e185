"""Run and checkpoint discovery: runs/<name>/checkpoint-N folders, their kind, base model and training log."""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from tina_probe.errors import TinaError
from tina_probe.slow_paths import slow_paths

log = logging.getLogger(__name__)

MANIFEST = "tina_run.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """One evaluable model of a run: the base (step 0) or a LoRA / full checkpoint."""

    run: str
    step: int
    kind: str  # "base" | "lora" | "full"
    path: Path  # checkpoint folder; for the base: the base model folder or hub id
    base: str  # base model path or hub id of the run
    # identity, read once at discovery (weights_identity): resume keys are built from it without touching the disk
    files: tuple = ()  # (file, size, mtime) of this folder's weights and configs; the base's own for step 0
    base_files: tuple | None = None  # LoRA only: the base's files (an adapter's output depends on its base)


@dataclass(frozen=True)
class Run:
    """A training run: its manifest and its checkpoints, the base first as step 0."""

    name: str
    path: Path
    kind: str  # "lora" | "full"
    base: str
    manifest: dict = field(default_factory=dict)
    checkpoints: tuple[Checkpoint, ...] = ()


# ----------------------------------------------------------------------------- small readers


def _read_json(path: Path) -> dict:
    """A JSON object from a file, or a TinaError naming the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TinaError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise TinaError(f"{path}: expected a JSON object")
    return obj


def _safetensors_ok(path: Path) -> str | None:
    """None when the safetensors header parses and the file is long enough for it; else the reason."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError for every parse failure
        return f"{path.name}: {exc}"
    return None


_LORA_TENSOR = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from safetensors headers (no tensor data is read)."""
    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def _model_weight_files(folder: Path) -> list[Path] | None:
    """The safetensors files of a model folder (sharded or not), or None when it is not a local model folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            return [folder / s for s in sorted(set(_read_json(index).get("weight_map", {}).values()))]
        except TinaError:
            return None
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None


@lru_cache(maxsize=8)
def _base_shapes(base: str) -> dict[str, tuple[int, ...]] | None:
    """The base model's tensor shapes (cached: every adapter of a run is checked against the same base)."""
    files = _model_weight_files(Path(base))
    try:
        return _tensor_shapes(files) if files else None
    except Exception:  # an unreadable base is reported when it is loaded, not as a fault of the adapter
        return None


def _adapter_problem(folder: Path, base: str | None) -> str | None:
    """Why an adapter cannot be applied to `base`, or None: its config must parse, every lora_A/lora_B pair must
    agree with the config's rank (else peft would load it with another scale) and with the base's module shapes (else
    loading fails mid-sweep). Only safetensors headers are read."""
    try:
        shapes = _tensor_shapes([folder / "adapter_model.safetensors"])
    except Exception as exc:  # missing or truncated: safetensors raises its own error type for every parse failure
        return f"adapter_model.safetensors: {exc}"
    try:
        cfg = _read_json(folder / "adapter_config.json")
    except TinaError as exc:
        return f"adapter_config.json: {str(exc).split(': ', 1)[-1]}"
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        m = _LORA_TENSOR.match(key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = shape
    ranks = {int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())}
    base_shapes = _base_shapes(base) if base and Path(base).is_dir() else None
    for module, ab in sorted(pairs.items()):
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            return f"{module}: lora_A {a} and lora_B {b} do not make a LoRA pair"
        if a[0] not in ranks:
            return f"{module}: LoRA rank {a[0]} in the weights, but adapter_config.json says r={sorted(ranks)}"
        weight = (base_shapes or {}).get(f"{module}.weight")  # absent: e.g. a tied lm_head, saved once as embeddings
        if weight is not None and len(weight) == 2:
            fits = (a[1], b[0]) if cfg.get("fan_in_fan_out") else (b[0], a[1])  # Conv1D stores [in, out]
            if fits != weight:
                return f"{module}: adapter shape {fits[0]}x{fits[1]} does not fit the base's {weight[0]}x{weight[1]}"
    return None


def lora_update_is_zero(folder: Path | str) -> bool:
    """Whether an adapter leaves its base unchanged: every lora_A/lora_B pair has an all-zero factor (B A = 0) and
    it holds no other tensors (modules_to_save, DoRA magnitudes or embedding LoRAs change the model on their own).
    Reads the tensors, so it is asked only when eval records its checks."""
    pairs: dict[str, list[bool]] = {}
    with safe_open(str(Path(folder) / "adapter_model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            m = _LORA_TENSOR.match(key)
            if not m:
                return False
            pairs.setdefault(m.group(1), []).append(not bool(fh.get_tensor(key).any()))
    return bool(pairs) and all(any(zero) for zero in pairs.values())


def _weights_problem(folder: Path, kind: str, base: str | None = None) -> str | None:
    """Why a checkpoint's weights are unusable (missing, truncated, missing or broken config, an adapter that does
    not fit `base`), or None when fine."""
    if kind == "lora":
        if not (folder / "adapter_config.json").is_file():
            return "adapter_config.json missing"
        return _adapter_problem(folder, base)  # reads the safetensors header once: a truncated file fails there
    if not (folder / "config.json").is_file():
        return "config.json missing"
    try:
        _read_json(folder / "config.json")
    except TinaError as exc:
        return f"config.json: {str(exc).split(': ', 1)[-1]}"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        except TinaError as exc:
            return str(exc)
        if not shards:
            return "model.safetensors.index.json has no weight_map"
        for shard in shards:
            if not (folder / shard).is_file():
                return f"shard {shard} missing"
            problem = _safetensors_ok(folder / shard)
            if problem:
                return problem
        return None
    return _safetensors_ok(folder / "model.safetensors")


def checkpoint_kind(folder: Path) -> str | None:
    """'lora' or 'full' from the files in a folder, or None when it holds no weights at all."""
    folder = Path(folder)
    if (folder / "adapter_model.safetensors").exists() or (folder / "adapter_config.json").exists():
        return "lora"
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return "full"
    return None


def resolve_base(base: str, anchors: list[Path]) -> str:
    """An absolute path for a relative base that exists under cwd or an anchor folder; else unchanged (hub id)."""
    p = Path(base).expanduser()
    if p.is_absolute():
        return str(p.resolve())
    for anchor in [Path.cwd(), *anchors]:
        candidate = anchor / p
        if candidate.exists():
            return str(candidate.resolve())
    return base


def _adapter_base(folder: Path) -> str | None:
    """base_model_name_or_path of an adapter folder (None when absent or unreadable)."""
    try:
        return _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
    except TinaError:
        return None


def _step_of(folder: Path) -> int | None:
    """Step from a checkpoint-N folder name, else from its trainer_state.json global_step."""
    m = _CKPT_RE.match(folder.name)
    if m:
        return int(m.group(1))
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            return int(_read_json(state).get("global_step"))
        except (TinaError, TypeError, ValueError):
            return None
    return None


_IDENTITY_FILES = ("adapter_config.json", "config.json", "generation_config.json")


def weights_identity(path: Path | str) -> tuple:
    """(file, size, mtime) of a model or adapter folder's weights and configs: a checkpoint saved again or replaced
    under the same path gets a new identity, so its stored results are not reused. Stat calls only (hashing a
    1.5B checkpoint on every sweep would take seconds); a hub id has no files and is its own identity."""
    folder = Path(path)
    if not folder.is_dir():
        return (str(path),)
    files = sorted(f for f in folder.iterdir() if f.suffix == ".safetensors" or f.name in _IDENTITY_FILES)
    return tuple((f.name, st.st_size, st.st_mtime_ns) for f in files if (st := f.stat()))


def checkpoint_identity(ck: Checkpoint) -> tuple[tuple, tuple | None]:
    """(a checkpoint's files, its base's files for LoRA else None) as discovery read them, so resume keys touch no
    disk; read now only for a Checkpoint built without them, or with TINA_PROBE_SLOW_PATHS=1 (the old per-call path).
    Equal in value to weights_identity(ck.path), weights_identity(ck.base)."""
    slow = slow_paths()
    files = ck.files
    if slow or not files:
        files = weights_identity(ck.path)
    elif len(files) == 1 and isinstance(files[0], str):  # not a folder (a hub id): named by its path, as
        files = (str(ck.path),)                           # weights_identity(ck.path) names it
    if ck.kind != "lora":
        return files, None
    base_files = ck.base_files if ck.base_files is not None and not slow else weights_identity(ck.base)
    return files, base_files


# ----------------------------------------------------------------------------- discovery


def _expand(paths) -> list[Path]:
    """Paths with globs expanded, in the given order, without repeats."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for raw in paths:
        raw = str(raw)
        matches = sorted(glob.glob(raw)) if any(ch in raw for ch in "*?[") else [raw]
        if not matches:
            raise TinaError(f"{raw}: no file or folder matches")
        for m in matches:
            p = Path(m).expanduser()
            if not p.exists():
                raise TinaError(f"{p}: no such file or folder")
            p = p.resolve()
            if p not in out:
                out.append(p)
    return out


def _is_run_dir(p: Path) -> bool:
    """A run folder: has a manifest or checkpoint-N subfolders."""
    return (p / MANIFEST).is_file() or any(_CKPT_RE.match(c.name) and c.is_dir() for c in p.iterdir())


def _checkpoint_folders(run_dir: Path) -> list[Path]:
    """The checkpoint-N subfolders of a run, sorted by step."""
    found = [c for c in run_dir.iterdir() if c.is_dir() and _CKPT_RE.match(c.name)]
    return sorted(found, key=lambda c: int(_CKPT_RE.match(c.name).group(1)))


def _run_base(run_dir: Path, manifest: dict, folders: list[Path]) -> str:
    """The run's base: the manifest's `base`, else the first readable adapter_config's base_model_name_or_path."""
    anchors = [run_dir, run_dir.parent]
    if manifest.get("base"):
        return resolve_base(str(manifest["base"]), anchors)
    for f in folders:
        b = _adapter_base(f)
        if b:
            return resolve_base(b, [*anchors, f])
    raise TinaError(f"{run_dir}: cannot tell the base model (no {MANIFEST} with 'base', no adapter_config.json)")


def _checkpoint_of(run: str, base: str, base_files: tuple, folder: Path, run_dir: Path) -> Checkpoint | None:
    """A checked Checkpoint for one folder (its identity read here), or None (with one warning line) when it is
    incomplete or corrupt."""
    kind = checkpoint_kind(folder)
    if kind is None:
        log.warning("skipping %s: no weights (incomplete checkpoint)", folder)
        return None
    if kind == "lora":
        own = _adapter_base(folder)
        if own and resolve_base(own, [run_dir, run_dir.parent, folder]) != base:
            log.warning("skipping %s: adapter was made for base %r, not the run's base %r", folder, own, base)
            return None
    problem = _weights_problem(folder, kind, base)
    if problem:
        log.warning("skipping %s: %s", folder, problem)
        return None
    step = _step_of(folder)
    if step is None:
        log.info("%s: no step in its name or trainer_state.json; calling it step 1", folder)
        step = 1
    return Checkpoint(run=run, step=step, kind=kind, path=folder, base=base, files=weights_identity(folder),
                      base_files=base_files if kind == "lora" else None)


def _load_run(run_dir: Path, only: list[Path] | None, steps) -> Run:
    """A Run from its folder; `only` restricts to some checkpoint folders; `steps` to some steps."""
    manifest = _read_json(run_dir / MANIFEST) if (run_dir / MANIFEST).is_file() else {}
    folders = only if only is not None else _checkpoint_folders(run_dir)
    name = str(manifest.get("name") or run_dir.name)
    base = _run_base(run_dir, manifest, folders)
    base_files = weights_identity(base)
    ckpts = [c for f in folders if (c := _checkpoint_of(name, base, base_files, f, run_dir)) is not None]
    if steps is not None:
        wanted = {int(s) for s in steps}
        ckpts = [c for c in ckpts if c.step in wanted]
    ckpts.sort(key=lambda c: c.step)
    kinds = {c.kind for c in ckpts}
    kind = str(manifest.get("kind") or (kinds.pop() if len(kinds) == 1 else "lora" if "lora" in kinds else "full"))
    base_ckpt = Checkpoint(run=name, step=0, kind="base", path=Path(base), base=base, files=base_files)
    include_base = steps is None or 0 in {int(s) for s in steps}
    ckpts = [c for c in ckpts if c.step != 0]  # step 0 is the base by convention
    return Run(
        name=name, path=run_dir, kind=kind, base=base, manifest=manifest,
        checkpoints=tuple(([base_ckpt] if include_base else []) + ckpts),
    )


def discover_runs(paths, steps=None) -> list[Run]:
    """Runs from run folders, single checkpoint folders and globs; the base is prepended as step 0.

    Corrupt or incomplete checkpoints are skipped with one warning line each."""
    run_dirs: dict[Path, list[Path] | None] = {}
    inputs = _expand(paths)
    alone = len(inputs) == 1  # a path given alone must be evaluable; among several (runs/*), others are skipped

    def not_evaluable(p: Path, why: str) -> None:
        if alone:
            raise TinaError(f"{p}: {why}")
        log.warning("skipping %s: %s", p, why)

    for p in inputs:
        if not p.is_dir():
            not_evaluable(p, "not a folder (expected a run folder or a checkpoint folder)")
            continue
        if not _CKPT_RE.match(p.name) and _is_run_dir(p):
            # a run folder (the trainer's final save may also sit at its top: checkpoint-N are what count)
            run_dirs[p] = None
        elif checkpoint_kind(p) is not None or _CKPT_RE.match(p.name):
            # a checkpoint-N folder (or one beside a manifest) belongs to its parent run; a lone model
            # folder (e.g. a downloaded adapter) is a run of its own
            in_run = _CKPT_RE.match(p.name) or (p.parent / MANIFEST).is_file()
            parent = p.parent if in_run else p
            if run_dirs.get(parent, []) is None:
                continue  # the whole run was asked for already
            run_dirs.setdefault(parent, []).append(p)
        elif inside := [c for c in sorted(p.iterdir()) if c.is_dir() and _is_run_dir(c)]:
            if alone:  # a folder of runs (runs/, runs/validate/): its runs
                run_dirs.update({c: None for c in inside})
            else:
                not_evaluable(p, "a folder of runs, not a run (pass it alone to evaluate the runs inside)")
        else:
            not_evaluable(p, f"neither a run folder ({MANIFEST} or checkpoint-N inside) nor a checkpoint")
    if not run_dirs:
        raise TinaError(f"{', '.join(map(str, inputs))}: no run or checkpoint folder among these paths")
    runs = [_load_run(d, only, steps) for d, only in run_dirs.items()]
    names = [r.name for r in runs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise TinaError(f"{sorted(dupes)[0]}: two run folders share this run name")
    return runs


# ----------------------------------------------------------------------------- training log

_RENAMES = {  # one name per metric, whichever TRL wrote the log (0.14-0.16 names included)
    "completions/mean_length": "completion_length",  # TRL >= 0.17; 0.14-0.16 logged completion_length
    "completion_length": "completion_length",
    "completions/clipped_ratio": "clipped_ratio",  # share of completions cut at max length (TRL >= 0.17)
    "clip_ratio/region_mean": "clip_ratio",  # share of tokens whose policy ratio was clipped; 0.16: clip_ratio
    "objective/entropy": "entropy",  # TRL's PPO-style trainers; GRPOTrainer >= 0.19 logs entropy
    "objective/kl": "kl",
}


def unify_metric_name(name: str) -> str:
    """One name per metric across TRL versions (rewards/<f>/mean and rewards/<f> -> <f>_reward, ...)."""
    if name in _RENAMES:
        return _RENAMES[name]
    m = re.fullmatch(r"rewards/(.+?)(/mean|/std)?", name)
    if m:
        func = m.group(1)
        stem = func if func.endswith("_reward") else f"{func}_reward"
        return stem + ("_std" if m.group(2) == "/std" else "")
    if name.startswith("completions/"):
        return "completion_" + name.split("/", 1)[1]
    return name


def _newest_state(run_dir: Path) -> Path | None:
    """The trainer_state.json with the largest global_step among the run folder and its checkpoints."""
    candidates = [run_dir / "trainer_state.json"] + [c / "trainer_state.json" for c in _checkpoint_folders(run_dir)]
    best, best_step = None, -1
    for c in candidates:
        if not c.is_file():
            continue
        try:
            step = int(_read_json(c).get("global_step", -1))
        except (TinaError, TypeError, ValueError):
            log.warning("skipping %s: unreadable trainer state", c)
            continue
        if step >= best_step:
            best, best_step = c, step
    return best


def log_history_frame(log_history: list[dict]) -> pd.DataFrame:
    """Tidy (step, metric, value) rows from a trainer log_history, metric names unified; last value wins."""
    rows = []
    for entry in log_history:
        if "step" not in entry:
            continue
        for key, value in entry.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rows.append((int(entry["step"]), unify_metric_name(key), float(value)))
    df = pd.DataFrame(rows, columns=["step", "metric", "value"])
    df = df.drop_duplicates(subset=["step", "metric"], keep="last")
    return df.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)


def training_log(run_dir) -> pd.DataFrame:
    """The run's training curves from the newest trainer_state.json: DataFrame[step, metric, value]."""
    run_dir = Path(run_dir)
    state = _newest_state(run_dir)
    if state is None:
        raise TinaError(f"{run_dir}: no trainer_state.json in the run or its checkpoints")
    history = _read_json(state).get("log_history", [])
    if not isinstance(history, list):
        raise TinaError(f"{state}: log_history is not a list")
    return log_history_frame(history)
