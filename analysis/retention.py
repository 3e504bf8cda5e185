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

from analysis.kl import TokenMean, masked_sums, perplexity, token_kl, token_mean, token_nll
from analysis.retention_probes import Probe, read_prompts, resolve_probes
from tina_probe.errors import TinaError
from tina_probe.generate.hf import adapter_name, batch_seed, split_completion
from tina_probe.runs import Checkpoint, checkpoint_identity, discover_runs
from tina_probe.shards import round_robin
from tina_probe.slow_paths import slow_paths
from tina_probe.store import Store, stable_key

log = logging.getLogger(__name__)

TABLE = "retention"
COLUMNS = ["run", "step", "kind", "probe", "metric", "value", "stderr"]
KEY_COLS = ["run", "step", "kind", "probe", "metric"]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# float32 logits held at once by one forward of the KL / perplexity probes (a 49k vocabulary x 256 tokens is 50 MB
# per row, and the KL makes ~4 copies): batches are cut to fit, whatever --batch-size says
LOGITS_BUDGET_BYTES = 256 * 2**20
# float32 logits of the base on a reference text kept for the next checkpoint of the same base (the lab's 25 windows
# x 256 tokens x 106 symbols: 3 MB); a larger text (a real model's 49k vocabulary) is scored again per checkpoint
REFERENCE_MEMO_BYTES = 512 * 2**20


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


# ----------------------------------------------------------------------------- distribution probes


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


@torch.inference_mode()
def task_kl(models: ProbeModels, path: Path, *, limit: int | None, settings: RetentionSettings
            ) -> tuple[TokenMean, list[float], list[float]]:
    """KL(ckpt || base) per completion token on completions the checkpoint samples for the task's prompts, with the
    per-completion KL sums and token counts (for a bootstrap over problems)."""
    from transformers import GenerationConfig

    tok = models.tokenizer
    prompts = read_prompts(path)[:limit] if limit is not None else read_prompts(path)
    per_batch = max(1, settings.batch_size // max(1, settings.task_samples))
    sums, counts = [], []
    for b, start in enumerate(range(0, len(prompts), per_batch)):
        rendered = [render_prompt(tok, p) for p in prompts[start : start + per_batch]]
        add_special = rendered[0][1]
        enc = tok([r[0] for r in rendered], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=add_special)
        with models.policy() as m:
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
        rows, prompt_lens = [], []
        for j in range(seqs.shape[0]):
            src = j // settings.task_samples
            prompt = enc["input_ids"][src][enc["attention_mask"][src].bool()].tolist()
            new = seqs[j, width_in:].tolist()
            _, n_tok, _ = split_completion(new, eos, settings.task_max_tokens)  # n_tok counts the EOS
            if n_tok == 0:
                continue
            rows.append(prompt + new[:n_tok])
            prompt_lens.append(len(prompt))
        if not rows:
            continue
        ids, mask = right_pad(rows, tok.pad_token_id)
        cmask = completion_mask(prompt_lens, [len(r) for r in rows], ids.shape[1])
        step = rows_per_pass(len(rows), ids.shape[1], _vocab_size(models.base_model))
        for lo in range(0, len(rows), step):
            part = slice(lo, lo + step)
            with models.policy() as m:
                lp = _logits(m, ids[part], mask[part])[:, :-1]
            if _policy_is_reference(models):  # the base's own completions: the same forward twice
                lb = lp
            else:
                with models.reference() as ref:
                    lb = _logits(ref, ids[part], mask[part])[:, :-1]
            s, n = masked_sums(token_kl(lp, lb, cmask[part]), cmask[part])
            sums.extend(s)
            counts.extend(n)
    return token_mean(sums, counts), sums, counts


# ----------------------------------------------------------------------------- one probe on one checkpoint


def run_probe(models: ProbeModels, probe: Probe, *, limit: int | None, settings: RetentionSettings,
              cache: dict) -> list[MetricValue]:
    """The metrics of one probe on the active checkpoint; `cache` shares one reference-text pass between
    kl_general and ppl_general of the same checkpoint."""
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

        kl, sums, counts = task_kl(models, probe.data, limit=limit, settings=settings)
        # resampling unit: one completion, which is one problem with the default task_samples = 1
        _, lo, hi = ratio_ci(sums, counts, n_boot=1000, seed=settings.seed) if sums else (float("nan"),) * 3
        return [MetricValue("kl", kl.value, kl.stderr, ci_low=lo, ci_high=hi)]
    raise TinaError(f"{probe.name}: unknown probe family {probe.family!r}")


# ----------------------------------------------------------------------------- the sweep


def _unit_key(ck: Checkpoint, probe: Probe, limit: int | None, settings: RetentionSettings) -> str:
    """Resume key of one (checkpoint path, probe) unit; the checkpoint's files (and an adapter's base's) are part of
    it, so a checkpoint saved again under the same path is probed again."""
    files = checkpoint_identity(ck)
    return f"{probe.name}-{stable_key('retention', str(ck.path), ck.kind, probe.key, limit, asdict(settings), files)}"


def _rows(cks: list[Checkpoint], probe: str, values: list[MetricValue]) -> pd.DataFrame:
    """Table rows of one unit: every checkpoint that shares the path (a base shared by runs) gets them."""
    rows = [{"run": ck.run, "step": int(ck.step), "kind": ck.kind, "probe": probe, "metric": v.metric,
             "value": float(v.value), "stderr": float(v.stderr), "path": str(ck.path),
             "items": [float(x) for x in v.items], "ci_low": float(v.ci_low), "ci_high": float(v.ci_high)}
            for ck in cks for v in values]
    return pd.DataFrame(rows, columns=COLUMNS + ["path", "items", "ci_low", "ci_high"])


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
    mine = {id(g) for g in round_robin([g for _, groups in plan for g in groups], shard)}
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
        values = [MetricValue(r.metric, r.value, r.stderr, _as_items(getattr(r, "items", None)))
                  for r in part.drop_duplicates("metric").itertuples(index=False)]
        store.write_part(TABLE, key, pd.concat([part, _rows(missing, probe, values)], ignore_index=True))
    return True


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
        with tqdm(total=total, desc="retention", unit="probe") as bar:
            for _base, groups in plan:
                for cks in groups:
                    ck = cks[0]
                    todo = []
                    for probe in checked:
                        key = _unit_key(ck, probe, limit, settings)
                        if _resumed(store, key, cks, probe.name):
                            store.touch_part(TABLE, key)  # asked for now: its rows win over other settings'
                            bar.update(1)
                        else:
                            todo.append((probe, key))
                    if not todo:
                        continue
                    try:
                        models.activate(ck)
                    except TinaError as exc:
                        log.warning("retention: skipped %s (run %s, step %s): %s", ck.path, ck.run, ck.step, exc)
                        bar.update(len(todo))
                        continue
                    cache: dict = {}
                    for probe, key in todo:
                        bar.set_postfix_str(f"{ck.run}@{ck.step} {probe.name}")
                        values = run_probe(models, probe, limit=limit, settings=settings, cache=cache)
                        store.write_part(TABLE, key, _rows(cks, probe.name, values))
                        bar.update(1)
        models.close()
    # the parts asked for last win: another --limit or settings replaces the rows of the same checkpoint and probe
    # sorted by its keys: shards and one process write the same table, whatever order the parts came in
    df = store.consolidate(TABLE, key_cols=KEY_COLS, sort_by=KEY_COLS, newest_last=True)
    return df if not df.empty else pd.DataFrame(columns=COLUMNS)
