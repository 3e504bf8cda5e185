"""Knowledge-retention probes per checkpoint -> the `retention` table (run, step, kind, probe, metric, value, stderr).

lm-eval tasks (facts recall / recognition, MMLU-style multiple choice, forgetting benchmarks) run through
`lm_eval.simple_evaluate` on an already loaded model; KL(base || ckpt) and perplexity on a reference text;
KL(ckpt || base) on completions the checkpoint samples for the RL task's prompts (RL's Razor, Shenfeld et al.
2025). One base load per base model: LoRA adapters are swapped on one PeftModel, full checkpoints load alone.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from analysis.distribution_probes import reference_stats, task_kl
from analysis.kl import perplexity
from analysis.retention_probes import Probe, resolve_probes
from analysis.task_completions import TaskCompletions, limited_prompts, read_eval_samples, stored_completions
from tina_probe.errors import TinaError
from tina_probe.generate.hf import adapter_name
from tina_probe.runs import Checkpoint, checkpoint_identity, discover_runs
from tina_probe.shards import round_robin
from tina_probe.slow_paths import slow_paths
from tina_probe.store import Store, stable_key

log = logging.getLogger(__name__)

TABLE = "retention"
COLUMNS = ["run", "step", "kind", "probe", "metric", "value", "stderr"]
KEY_COLS = ["run", "step", "kind", "probe", "metric"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class RetentionSettings:
    """How the probes run; part of every resume key."""

    batch_size: int = 16
    window: int = 256  # tokens per reference-text window (non-overlapping)
    task_max_tokens: int = 64  # completion length cap for kl_task
    task_samples: int = 1  # completions sampled per prompt for kl_task
    temperature: float = 1.0  # kl_task samples from the checkpoint's own distribution
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class MetricValue:
    """One metric of one probe on one checkpoint."""

    metric: str
    value: float
    stderr: float = float("nan")
    items: tuple[float, ...] = ()  # per-item scores in document order (lm-eval probes): paired tests use them
    ci_low: float = float("nan")  # 95% percentile bootstrap over problems (the task KL of RL's Razor)
    ci_high: float = float("nan")
    source: str = ""  # task KL: which completions it scored (`eval:<benchmark>/<sampling>` or `sampled`)


# ----------------------------------------------------------------------------- models


def _load_causal_lm(path: str, device: str):
    """A causal LM in float32 from safetensors (no remote code), with max_new_tokens cleared from its
    generation config (a saved one would override lm-eval's max_gen_toks)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TinaError(f"{path}: cannot load model ({str(exc).splitlines()[0]})") from None
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.max_new_tokens = None
    return model.to(device).eval()


def load_tokenizer(path: str):
    """The tokenizer saved beside a model, loaded as every other tool loads it (AutoTokenizer; the lab's
    tokenizer is laid out so that transformers' Qwen2Tokenizer reproduces it exactly)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise TinaError(f"{path}: no tokenizer files beside the model")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise TinaError(f"{path}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None


class ProbeModels:
    """The models one checkpoint needs: itself (the policy) and its base (the reference), base loaded once."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.base: str | None = None
        self.base_model = None
        self.tokenizer = None
        self.peft = None  # the base wrapped in place by peft once an adapter is used
        self.full = None  # (path, model) of the current full checkpoint
        self.current: Checkpoint | None = None
        self.memo: dict = {}  # what the base computes once for every checkpoint of it (reference_stats)

    def load_base(self, base: str) -> None:
        """Make `base` the reference model (no-op when it already is); its tokenizer serves every checkpoint."""
        if self.base == base and self.base_model is not None:
            return
        self.close()
        model = _load_causal_lm(base, self.device)
        tok = load_tokenizer(base)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.base, self.base_model, self.tokenizer = base, model, tok

    def activate(self, ck: Checkpoint) -> None:
        """Make `ck` the policy: the base itself, a LoRA adapter set on the shared PeftModel, or a full model."""
        self.current = None
        self.load_base(ck.base)
        if ck.kind == "lora":
            self._set_adapter(Path(ck.path))
        elif ck.kind == "full":
            key = str(Path(ck.path).resolve())
            if self.full is None or self.full[0] != key:
                self.full = None
                gc.collect()
                model = _load_causal_lm(key, self.device)
                if model.config.vocab_size != self.base_model.config.vocab_size:
                    raise TinaError(f"{ck.path}: vocabulary size {model.config.vocab_size} differs from the base's "
                                    f"{self.base_model.config.vocab_size}")
                self.full = (key, model)
        self.current = ck

    def _set_adapter(self, folder: Path) -> None:
        """Load (once) and activate one adapter; older adapters are deleted so memory stays flat."""
        from peft import PeftModel

        if not (folder / "adapter_model.safetensors").is_file():
            raise TinaError(f"{folder}: no adapter_model.safetensors (only safetensors adapters are read)")
        name, key = adapter_name(folder), str(folder.resolve())
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base_model, key, adapter_name=name,
                                                      is_trainable=False).eval()
            elif name not in self.peft.peft_config:
                self.peft.load_adapter(key, adapter_name=name, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise TinaError(f"{folder}: cannot load adapter ({str(exc).splitlines()[0]})") from None
        self.peft.set_adapter(name)
        for old in [n for n in list(self.peft.peft_config) if n != name]:
            self.peft.delete_adapter(old)

    @contextmanager
    def reference(self):
        """The base model (adapters disabled while inside)."""
        if self.peft is not None:
            with self.peft.disable_adapter():
                yield self.peft
        else:
            yield self.base_model

    @contextmanager
    def policy(self):
        """The current checkpoint's model."""
        ck = self.current
        if ck is None:
            raise RuntimeError("ProbeModels: activate() a checkpoint first")
        if ck.kind == "lora":
            yield self.peft
        elif ck.kind == "full":
            yield self.full[1]
        else:
            with self.reference() as model:
                yield model

    def close(self) -> None:
        """Drop every model."""
        self.base = self.base_model = self.tokenizer = self.peft = self.full = self.current = None
        self.memo = {}
        gc.collect()


# ----------------------------------------------------------------------------- lm-eval probes


def lmeval_metrics(task_results: dict) -> list[MetricValue]:
    """MetricValues from one task's entry of lm-eval's results ({'acc,none': .., 'acc_stderr,none': ..})."""
    out = []
    for key, value in task_results.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        se = task_results.get(f"{metric}_stderr,{filt}")
        try:
            se = float(se)
        except (TypeError, ValueError):
            se = float("nan")  # lm-eval writes "N/A" where it has no error
        out.append(MetricValue(metric if filt == "none" else f"{metric}_{filt}", v, se))
    return out


@contextmanager
def _quiet(logger_name: str):
    """Raise one logger's level to ERROR while inside."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _SilentBar(tqdm):
    """A tqdm that never draws, whatever `disable` its caller passes."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


@contextmanager
def _lmeval_silenced():
    """lm-eval's own bars (per task and per request batch), its `git describe` and its environment report off while
    inside.

    Written by hand because simple_evaluate has no switch for any of them: its modules bind `tqdm` at import, it shells
    out to git in the user's folder (printing "fatal: not a git repository" outside one), and after scoring it runs
    torch's collect_env (`pip list` and more in subprocesses: 0.5-0.9 s per call here, per checkpoint and probe). All
    three only fill results["git_hash"] / ["pretty_env_info"], which tina-probe never reads; the scores come before.
    TINA_PROBE_SLOW_PATHS=1 keeps the environment report (the path as it was, for bench_study)."""
    import sys

    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("lm_eval") and isinstance(getattr(module, "tqdm", None), type):
            patched.append((module, "tqdm", module.tqdm))
            module.tqdm = _SilentBar
    evaluator = sys.modules.get("lm_eval.evaluator")
    if evaluator is not None and hasattr(evaluator, "get_git_commit_hash"):
        patched.append((evaluator, "get_git_commit_hash", evaluator.get_git_commit_hash))
        evaluator.get_git_commit_hash = lambda: None
    if evaluator is not None and hasattr(evaluator, "add_env_info") and not slow_paths():
        patched.append((evaluator, "add_env_info", evaluator.add_env_info))
        evaluator.add_env_info = lambda results: None
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


@contextmanager
def _no_retie(model):
    """HFLM calls model.tie_weights() on the model it is given; on a PeftModel whose lm_head carries a LoRA (a tied
    Llama such as SmolLM2) transformers 5.19 then fails ("attribute 'weight' already exists"). The weights were tied
    when the base loaded, so tying again is skipped while HFLM is built."""
    model.tie_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del model.tie_weights


def run_lmeval(model, tokenizer, probe: Probe, *, limit: int | None, settings: RetentionSettings) -> list[MetricValue]:
    """One lm-eval task on an already loaded model (a PeftModel with its active adapter, or a plain one)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with _quiet("lm_eval.models.huggingface"), _no_retie(model):  # it warns that the model came as an object
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, device=settings.device)
    manager = TaskManager(include_defaults=False, include_path=str(probe.include_path))
    try:
        with _lmeval_silenced():
            res = simple_evaluate(model=lm, tasks=[probe.task], task_manager=manager, limit=limit,
                                  log_samples=True,  # per-item scores: paired base-vs-checkpoint tests
                                  bootstrap_iters=1000, random_seed=settings.seed, numpy_random_seed=settings.seed,
                                  torch_random_seed=settings.seed, fewshot_random_seed=settings.seed)
    except (ConnectionError, OSError) as exc:
        raise TinaError(f"{probe.name}: lm-eval could not read its data ({str(exc).splitlines()[0]})") from None
    results = res["results"]
    if probe.task not in results:
        raise TinaError(f"{probe.name}: lm-eval returned no results for task {probe.task}")
    items = lmeval_items(res.get("samples", {}).get(probe.task, []))
    return [MetricValue(m.metric, m.value, m.stderr, items.get(m.metric, ()))
            for m in lmeval_metrics(results[probe.task])]


def lmeval_items(samples: list[dict]) -> dict[str, tuple[float, ...]]:
    """metric -> per-item scores in doc_id order, from lm-eval's logged samples (named as lmeval_metrics names
    them: the filter appended unless it is 'none'); metrics whose per-item value is not a number are left out."""
    per: dict[str, dict[int, float]] = {}
    for s in samples:
        filt = s.get("filter", "none")
        for metric in s.get("metrics", []):
            try:
                v = float(s.get(metric))
            except (TypeError, ValueError):
                continue
            per.setdefault(metric if filt == "none" else f"{metric}_{filt}", {})[int(s["doc_id"])] = v
    return {m: tuple(v for _, v in sorted(d.items())) for m, d in per.items()}


# ----------------------------------------------------------------------------- one probe on one checkpoint


def run_probe(models: ProbeModels, probe: Probe, *, limit: int | None, settings: RetentionSettings,
              cache: dict, stored: tuple[TaskCompletions | None, TaskCompletions | None] = (None, None)
              ) -> list[MetricValue]:
    """The metrics of one probe on the active checkpoint; `cache` shares one reference-text pass between
    kl_general and ppl_general of the same checkpoint; `stored`: a task-KL probe's eval completions to score, the
    checkpoint's and the base's (None: sampled)."""
    if probe.family == "lmeval":
        with models.policy() as m:
            return run_lmeval(m, models.tokenizer, probe, limit=limit, settings=settings)
    if probe.family in ("kl_ref", "ppl_ref"):
        key = ("ref", str(probe.data))
        if key not in cache:
            cache[key] = reference_stats(models, probe.data, limit=limit, settings=settings)
        stats = cache[key]
        if probe.family == "kl_ref":
            return [MetricValue("kl", stats["kl"].value, stats["kl"].stderr)]
        ppl, ppl_se = perplexity(stats["nll"])
        return [MetricValue("ppl", ppl, ppl_se), MetricValue("nll", stats["nll"].value, stats["nll"].stderr)]
    if probe.family == "kl_task":
        from tina_probe.passk import ratio_ci

        values = []
        # kl: KL(ckpt || base) on the checkpoint's completions; kl_forward: KL(base || ckpt) on the base's, the
        # direction RL's Razor defines (E_x[KL(pi_0 || pi)], its section 1)
        for metric, forward, completions in (("kl", False, stored[0]), ("kl_forward", True, stored[1])):
            kl, sums, counts = task_kl(models, probe.data, limit=limit, settings=settings, stored=completions,
                                       forward=forward)
            # resampling unit: one problem (its completions' KL sums and token counts added up)
            _, lo, hi = ratio_ci(sums, counts, n_boot=1000, seed=settings.seed) if sums else (float("nan"),) * 3
            values.append(MetricValue(metric, kl.value, kl.stderr, ci_low=lo, ci_high=hi,
                                      source=completions.source if completions is not None else "sampled"))
        return values
    raise TinaError(f"{probe.name}: unknown probe family {probe.family!r}")


# ----------------------------------------------------------------------------- the sweep


def _unit_key(ck: Checkpoint, probe: Probe, limit: int | None, settings: RetentionSettings,
              stored: tuple = (None, None)) -> str:
    """Resume key of one (checkpoint path, probe) unit; the checkpoint's files (and an adapter's base's) are part of
    it, so a checkpoint saved again under the same path is probed again."""
    files = checkpoint_identity(ck)
    fields = ["retention", str(ck.path), ck.kind, probe.key, limit, asdict(settings), files]
    if probe.family == "kl_task":  # both directions; stored eval completions' identity (or "sampled")
        fields.append(["kl+kl_forward", *(c.fingerprint if c is not None else "sampled" for c in stored)])
    return f"{probe.name}-{stable_key(*fields)}"


def _rows(cks: list[Checkpoint], probe: str, values: list[MetricValue]) -> pd.DataFrame:
    """Table rows of one unit: every checkpoint that shares the path (a base shared by runs) gets them."""
    rows = [{"run": ck.run, "step": int(ck.step), "kind": ck.kind, "probe": probe, "metric": v.metric,
             "value": float(v.value), "stderr": float(v.stderr), "path": str(ck.path),
             "items": [float(x) for x in v.items], "ci_low": float(v.ci_low), "ci_high": float(v.ci_high),
             "source": v.source}
            for ck in cks for v in values]
    return pd.DataFrame(rows, columns=COLUMNS + ["path", "items", "ci_low", "ci_high", "source"])


def _plan(runs, shard: tuple[int, int] | None = None) -> list[tuple[str, list[list[Checkpoint]]]]:
    """Per base model: groups of checkpoints sharing one path, base first, then LoRA adapters, then full ones;
    with a shard (i, N), only the groups dealt to it round robin over the whole plan (tina_probe/shards.py S2)."""
    order = {"base": 0, "lora": 1, "full": 2}
    by_base: dict[str, dict[tuple[str, str], list[Checkpoint]]] = {}
    for run in runs:
        for ck in run.checkpoints:
            groups = by_base.setdefault(ck.base, {})
            groups.setdefault((ck.kind, str(ck.path)), []).append(ck)
    plan = []
    for base, groups in by_base.items():
        ordered = sorted(groups.values(), key=lambda g: (order.get(g[0].kind, 3), g[0].run, g[0].step))
        plan.append((base, ordered))
    if shard is None:
        return plan
    # dealt from one order, whatever the order of --ckpts: by base, then the order above
    dealt = sorted(((base, i, g) for base, groups in plan for i, g in enumerate(groups)), key=lambda t: (t[0], t[1]))
    mine = {id(g) for _, _, g in round_robin(dealt, shard)}
    return [(base, kept) for base, groups in plan if (kept := [g for g in groups if id(g) in mine])]


def _as_items(value) -> tuple[float, ...]:
    """Per-item scores read back from a part (a list or array; None in parts written before items were kept)."""
    if value is None or isinstance(value, (float, str)):  # absent (None, or NaN beside rows that have items)
        return ()
    return tuple(float(x) for x in value)


def _resumed(store: Store, key: str, cks: list[Checkpoint], probe: str) -> bool:
    """Whether a unit is done; a done unit missing some run's labels (a base shared by a new run) is relabelled."""
    if not store.has_part(TABLE, key):
        return False
    part = store.read_part(TABLE, key)
    have = set(zip(part["run"], part["step"].astype(int), part["kind"]))
    missing = [ck for ck in cks if (ck.run, int(ck.step), ck.kind) not in have]
    if missing:
        values = [MetricValue(r.metric, r.value, r.stderr, _as_items(getattr(r, "items", None)),
                              float(getattr(r, "ci_low", float("nan"))), float(getattr(r, "ci_high", float("nan"))),
                              str(getattr(r, "source", "") or ""))
                  for r in part.drop_duplicates("metric").itertuples(index=False)]
        store.write_part(TABLE, key, pd.concat([part, _rows(missing, probe, values)], ignore_index=True))
    return True


class _StoredTaskCompletions:
    """Each checkpoint's eval completions for a task-KL probe, from the store's samples table read once."""

    def __init__(self, store: Store, limit: int | None, checkpoints: list[str]):
        self.samples = read_eval_samples(store, checkpoints)
        self.limit = limit
        self.benchmarks: dict = {}
        self.prompts: dict = {}

    def get(self, ck: Checkpoint, probe: Probe, base_path: str | None) -> tuple:
        """(the checkpoint's completions, its base's completions), each None where none fit."""
        if self.samples.empty:
            return None, None
        if probe.data not in self.prompts:
            self.prompts[probe.data] = limited_prompts(probe.data, self.limit)
        found = [stored_completions(self.samples, path, self.prompts[probe.data], self.benchmarks, probe.data)
                 if path is not None else None for path in (str(ck.path), base_path)]
        return tuple(found)


def run_retention(ckpt_paths: list[str], probes: list[str] | None = None, out: Path = Path("results"),
                  limit: int | None = None, *, settings: RetentionSettings | None = None,
                  shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """Every probe on every checkpoint of the given runs (the base as step 0) -> <out>/retention.parquet.

    Resumable per (checkpoint path, probe); probes are checked (names, task files, data, hub) before any
    model loads. `limit`: first N documents / windows / prompts of each probe. `shard` (i, N): this process probes
    only its share of the checkpoints (_plan); the table is consolidated from every part present. Returns it."""
    settings = settings or RetentionSettings()
    if limit is not None and int(limit) < 1:
        raise TinaError(f"--limit {limit}: must be at least 1")
    store = Store(Path(out))
    runs = discover_runs([str(p) for p in ckpt_paths])
    with tempfile.TemporaryDirectory(prefix="tina-retention-") as workdir:
        checked = resolve_probes(probes, Path(workdir))
        plan = _plan(runs, shard)
        total = sum(len(groups) for _, groups in plan) * len(checked)
        models = ProbeModels(settings.device)
        paths = [str(c.path) for r in runs for c in r.checkpoints]
        reuse = _StoredTaskCompletions(store, limit, paths) if any(p.family == "kl_task" for p in checked) else None
        base_paths = {r.name: str(c.path) for r in runs for c in r.checkpoints if c.kind == "base"}
        with tqdm(total=total, desc="retention", unit="probe") as bar:
            for _base, groups in plan:
                for cks in groups:
                    ck = cks[0]
                    todo = []
                    for probe in checked:
                        stored = (reuse.get(ck, probe, base_paths.get(ck.run))
                                  if reuse is not None and probe.family == "kl_task" else (None, None))
                        key = _unit_key(ck, probe, limit, settings, stored)
                        if _resumed(store, key, cks, probe.name):
                            store.touch_part(TABLE, key)  # asked for now: its rows win over other settings'
                            bar.update(1)
                        else:
                            todo.append((probe, key, stored))
                    if not todo:
                        continue
                    try:
                        models.activate(ck)
                    except TinaError as exc:
                        log.warning("retention: skipped %s (run %s, step %s): %s", ck.path, ck.run, ck.step, exc)
                        bar.update(len(todo))
                        continue
                    cache: dict = {}
                    for probe, key, stored in todo:
                        bar.set_postfix_str(f"{ck.run}@{ck.step} {probe.name}")
                        values = run_probe(models, probe, limit=limit, settings=settings, cache=cache, stored=stored)
                        store.write_part(TABLE, key, _rows(cks, probe.name, values))
                        bar.update(1)
        models.close()
    # the parts asked for last win: another --limit or settings replaces the rows of the same checkpoint and probe
    # sorted by its keys: shards and one process write the same table, whatever order the parts came in
    df = store.consolidate(TABLE, key_cols=KEY_COLS, sort_by=KEY_COLS, newest_last=True)
    return df if not df.empty else pd.DataFrame(columns=COLUMNS)
