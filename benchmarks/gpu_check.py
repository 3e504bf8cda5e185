"""The prepared GPU check (`make gpu-check`): the lab base on CUDA, two LoRA-GRPO and two full-FT GRPO steps in bf16
through the project's trainer, `eval` (hf) with a greedy hf == transformers+peft check, `spectra` and a KL retention
probe; with --real the same on the real base (SmolLM2-135M) with `eval --backend vllm`.

It prints one line per step (time, PASS | FAIL | SKIP, what was checked), then a summary; the exit code is 1 when a
step failed. Without CUDA it prints one line and exits 0, untested. `--device cpu` runs the same steps on CPU, in
float32: for testing the check itself, not a GPU result.

Made for a bare GPU machine without network: the repository runs from its folder (PYTHONPATH, no install); modules
that do not import are installed from wheels/ (`make gpu-wheels`) into the work folder when wheels/ has them, and
steps that still miss one are SKIPped with its name. Where LoRA training cannot run, a random LoRA adapter stands in
for the steps after it. Every step runs in a child process with a timeout, within an overall budget (default 470 s).

Run: python benchmarks/gpu_check.py [--real] [--device cuda|cpu] [--budget SECONDS] [--work DIR] [--keep]"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "wheels"
RECIPES = ROOT / "train" / "recipes"
LAB_BASE = ROOT / "data" / "lab" / "base"
REAL_NAME = "smollm2-135m-instruct"
NO_CUDA = "gpu-check: no CUDA device (torch.cuda.is_available() is False): nothing run, untested on this machine"
# what the lab steps import (the train step needs them all); vllm only for --real
NEEDED = ("torch", "transformers", "peft", "accelerate", "safetensors", "yaml", "pandas", "pyarrow", "typer",
          "rich", "tqdm", "trl", "datasets", "math_verify")
CLI_NEEDS = ("typer", "rich", "tqdm", "yaml", "pandas", "pyarrow", "torch", "transformers", "safetensors")
TRAIN_NEEDS = CLI_NEEDS + ("peft", "accelerate", "trl", "datasets", "math_verify")
EVAL_NEEDS = CLI_NEEDS + ("peft", "math_verify")
GREEDY_NEEDS = ("torch", "transformers", "peft", "pandas", "yaml", "safetensors")
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# step timeouts are sized for a GPU; on CPU (testing the check itself) they are this many times longer
CPU_TIMEOUT_SCALE = 3
# the real recipes' GRPO steps take ~1 min each on 2 CPU cores; --device cpu makes them smaller (GPU runs keep them)
REAL_CPU_SHRINK = ("grpo.num_generations=2", "grpo.prompts_per_step=2", "grpo.max_completion_length=16",
                   "reward_options.max_completion_length=16")


# ----------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Result:
    """One step's outcome: PASS, FAIL or SKIP, its wall seconds and a short account of what was seen."""

    name: str
    status: str
    seconds: float
    detail: str = ""


class CheckFailed(Exception):
    """A step ran and what it produced is wrong (the message says what)."""


def format_result(r: Result) -> str:
    """The step's line, e.g. `[ 12.3s] PASS  lora-grpo-2-steps-bf16  (loss finite, 2 checkpoints)`."""
    detail = f"  ({r.detail})" if r.detail else ""
    return f"[{r.seconds:5.1f}s] {r.status:<4}  {r.name}{detail}"


def summary_line(results: list[Result], device: str, seconds: float) -> str:
    """The last line: counts per status, total time, and a reminder when the run was not on a GPU."""
    count = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    note = "  (CPU run: for testing the check itself, not a GPU result)" if device == "cpu" else ""
    return (f"gpu-check on {device}: {count['PASS']} passed, {count['FAIL']} failed, {count['SKIP']} skipped "
            f"in {seconds:.1f}s{note}")


def exit_code(results: list[Result]) -> int:
    """1 when any step failed, else 0 (skipped steps do not fail the check)."""
    return int(any(r.status == "FAIL" for r in results))


def missing_for(needs: tuple[str, ...], imports: dict[str, str | None]) -> list[str]:
    """The needed modules that did not import (`imports`: module -> None when it imported, else the error)."""
    return [m for m in needs if imports.get(m, "not checked") is not None]


def absent_name(module: str, error: str) -> str:
    """A module that did not import, as the report names it: the bare name when it is simply not installed."""
    return module if error.startswith(f"ModuleNotFoundError: No module named '{module}'") else f"{module} ({error})"


def package_report(imports: dict[str, str | None], installed: list[str], have_wheels: bool) -> tuple[str, str]:
    """(status, detail) of the packages step: PASS when every module imports, else SKIP naming the absent ones."""
    absent = [absent_name(m, err) for m, err in imports.items() if err is not None]
    parts = [f"{len(imports) - len(absent)}/{len(imports)} import"]
    if installed:
        parts.append(f"installed from wheels/: {', '.join(installed)}")
    if absent:
        parts.append("absent: " + ", ".join(absent) + ("" if have_wheels else " (no wheels/: make gpu-wheels)"))
    return ("SKIP" if absent else "PASS"), "; ".join(parts)


def wheels_to_install(wheel_files: list[Path], installed: set[str]) -> list[str]:
    """Distribution names that wheels/ offers and this Python lacks (canonical names, each once, sorted)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    names = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheel_files}
    return sorted(names - {canonicalize_name(n) for n in installed})


def last_line(text: str) -> str:
    """The last non-empty line of a child's output (where a CLI prints its error, or a child its JSON answer)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_overrides(name: str, bf16: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """`--set` arguments for a 2-step run saved at every step, bf16 on or off, under its own name."""
    sets = [f"name={name}", "grpo.max_steps=2", "grpo.save_steps=1", f"grpo.bf16={str(bf16).lower()}", *extra]
    return [a for s in sets for a in ("--set", s)]


def finite(values) -> bool:
    """True when every value is a finite float."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------- children


def run_child(cmd: list[str], ctx: "Ctx", timeout: float, log_name: str) -> str:
    """Run a child in its own process group (killed whole on timeout); its output goes to a log; returns stdout."""
    proc = subprocess.Popen(cmd, cwd=ctx.work, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise CheckFailed(f"timed out after {timeout:.0f}s; log {ctx.log(log_name, out, err)}") from None
    log = ctx.log(log_name, out, err)
    if proc.returncode != 0:
        raise CheckFailed(f"exit {proc.returncode}: {(last_line(err) or last_line(out))[:200]}; log {log}")
    return out


def cli(ctx: "Ctx", args: list[str], timeout: float, log_name: str) -> str:
    """`tina-probe ARGS` run as `python -m tina_probe.cli` from the repository (no install needed)."""
    return run_child([ctx.python, "-m", "tina_probe.cli", *args], ctx, timeout, log_name)


def inner(ctx: "Ctx", what: str, args: list[str], timeout: float) -> str:
    """Run one of this script's in-child checks (--inner WHAT); returns its detail or raises CheckFailed."""
    out = run_child([ctx.python, str(Path(__file__).resolve()), "--inner", what, "--device", ctx.device, *args],
                    ctx, timeout, what)
    answer = json.loads(last_line(out) or "{}")
    if not answer.get("ok"):
        raise CheckFailed(answer.get("detail", "no answer from the child"))
    return answer["detail"]


# ----------------------------------------------------------------------------- the context and the steps


@dataclass
class Ctx:
    """Where a check runs: device, work folder, the children's Python and environment, imports, time left."""

    device: str
    work: Path
    deadline: float
    python: str = sys.executable
    env: dict = field(default_factory=dict)
    imports: dict = field(default_factory=dict)
    passed: set = field(default_factory=set)

    @property
    def bf16(self) -> bool:
        return self.device == "cuda"

    def log(self, name: str, out: str, err: str) -> Path:
        path = self.work / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"--- stdout\n{out or ''}\n--- stderr\n{err or ''}")
        return path


@dataclass(frozen=True)
class Step:
    """A named check: what it must import, the steps one of which must have passed first, its time limit, its body,
    and when it is wanted at all (only_if; a stand-in is made only when training did not pass)."""

    name: str
    body: Callable[[Ctx, float], str]
    needs: tuple[str, ...] = ()
    after_any: tuple[str, ...] = ()
    timeout: float = 120.0
    only_if: Callable[[Ctx], bool] | None = None


def run_step(step: Step, ctx: Ctx) -> Result:
    """Run one step within its timeout and the overall budget; SKIP when an import or an earlier step is missing."""
    start = time.monotonic()
    missing = missing_for(step.needs, ctx.imports)
    blocked = list(step.after_any) if step.after_any and not set(step.after_any) & ctx.passed else []
    timeout = min(step.timeout * (CPU_TIMEOUT_SCALE if ctx.device == "cpu" else 1), ctx.deadline - start)
    if missing:
        return Result(step.name, "SKIP", 0.0, f"needs {', '.join(missing)}: not importable")
    if blocked:
        return Result(step.name, "SKIP", 0.0, f"needs one of {', '.join(blocked)} to pass first")
    if timeout < 5:
        return Result(step.name, "SKIP", 0.0, "out of the time budget")
    try:
        detail, status = step.body(ctx, timeout), "PASS"
        ctx.passed.add(step.name)
    except CheckFailed as exc:
        detail, status = str(exc), "FAIL"
    except Exception as exc:  # a bug in the check itself is a failure too, named
        detail, status = f"{type(exc).__name__}: {exc}", "FAIL"
    return Result(step.name, status, time.monotonic() - start, detail)


def check_run(run_dir: Path, kind: str, bf16: bool) -> str:
    """A 2-step run is whole: manifest complete, checkpoint-1 and -2, two finite losses, weights of the right dtype."""
    from safetensors import safe_open

    manifest = json.loads((run_dir / "tina_run.json").read_text())
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if manifest.get("status") != "complete" or [c.name for c in ckpts] != ["checkpoint-1", "checkpoint-2"]:
        raise CheckFailed(f"status {manifest.get('status')}, checkpoints {[c.name for c in ckpts]}")
    history = json.loads((ckpts[-1] / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    if len(losses) != 2 or not finite(losses):
        raise CheckFailed(f"losses {losses}")
    weights = ckpts[-1] / ("adapter_model.safetensors" if kind == "lora" else "model.safetensors")
    with safe_open(str(weights), framework="pt") as fh:
        dtypes = sorted({str(fh.get_slice(k).get_dtype()) for k in fh.keys()})
    if kind == "full" and dtypes != (["BF16"] if bf16 else ["F32"]):
        raise CheckFailed(f"full-FT weights saved as {dtypes}, expected {'BF16' if bf16 else 'F32'}")
    return (f"losses {losses[0]:.4g}, {losses[1]:.4g} finite, 2 checkpoints, {weights.name} {'/'.join(dtypes)}, "
            f"{manifest.get('train_seconds')}s training")


def read_table(results: Path, name: str):
    """A store table as a DataFrame (the children wrote it; pandas and pyarrow imported there too)."""
    import pandas as pd

    path = results / f"{name}.parquet"
    if not path.is_file():
        raise CheckFailed(f"{path} was not written")
    return pd.read_parquet(path)


def expected_models(runs: list[Path]) -> set[tuple[str, int]]:
    """(kind, step) of every checkpoint-N in the run folders: lora where an adapter_config.json is, else full."""
    return {("lora" if (c / "adapter_config.json").is_file() else "full", int(c.name.split("-")[1]))
            for run in runs for c in Path(run).glob("checkpoint-*")}


def check_samples(results: Path, runs: list[Path]) -> str:
    """Every model (the base and each checkpoint of the runs) has graded samples."""
    df = read_table(results, "samples")
    seen = set(zip(df["kind"], df["step"].astype(int)))
    want = {("base", 0)} | expected_models(runs)
    if not want <= seen or df["correct_lenient"].isna().any():
        raise CheckFailed(f"samples for {sorted(seen)}, want {sorted(want)} all graded")
    acc = df.groupby("kind")["correct_lenient"].mean()
    return (f"{len(df)} samples graded over {len(seen)} models; lenient accuracy "
            + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))


def check_spectra(results: Path, runs: list[Path]) -> str:
    """Spectra rows for every checkpoint of the runs, with finite positive Frobenius norms."""
    df = read_table(results, "spectra")
    seen = set(zip(df["kind"], df["step"].astype(int)))
    if not expected_models(runs) <= seen:
        raise CheckFailed(f"spectra for {sorted(seen)}, want {sorted(expected_models(runs))}")
    if not finite(df["fro_norm"].tolist()) or not (df["fro_norm"] > 0).all():
        raise CheckFailed("non-finite or zero Frobenius norms")
    return f"{len(df)} matrices over {len(seen)} checkpoint(s), norms finite"


def check_retention(results: Path, probe: str, runs: list[Path]) -> str:
    """The KL probe has a finite value for the runs' kinds of checkpoint."""
    df = read_table(results, "retention")
    df = df[df["probe"] == probe]
    kinds = set(df["kind"])
    if not {k for k, _ in expected_models(runs)} <= kinds or not finite(df["value"].tolist()):
        raise CheckFailed(f"{probe}: kinds {sorted(kinds)}, values {df['value'].tolist()}")
    last = df.sort_values("step").groupby("kind").last()
    return f"{probe} at the last step: " + ", ".join(f"{k} {row.metric} {row.value:.3g}" for k, row in last.iterrows())


@dataclass(frozen=True)
class Study:
    """The part of the check that one base goes through (the lab organism, or the real base)."""

    prefix: str  # "" for the lab, "real-" for the real base
    base: Path
    lora_recipe: str
    full_recipe: str
    benchmark: str
    backend: str
    probe: str
    shrink: tuple[str, ...] = ()  # extra overrides on CPU

    def folder(self, ctx: Ctx, sub: str) -> Path:
        return ctx.work / (self.prefix.rstrip("-") or "lab") / sub

    def run_dir(self, ctx: Ctx, kind: str) -> Path:
        """A trained run's folder (kind lora | full), or the stand-in adapter's run (kind standin)."""
        return self.folder(ctx, "runs") / f"{self.prefix}gpu-check-{kind}"

    def train_step(self, ctx: Ctx, kind: str) -> str:
        return f"{self.prefix}{kind}-grpo-2-steps-{'bf16' if ctx.bf16 else 'fp32'}"

    def standin_step(self) -> str:
        return f"{self.prefix}standin-lora-adapter"

    def ready_runs(self, ctx: Ctx) -> list[Path]:
        """The runs the later steps read: each trained run that passed, the stand-in where LoRA training did not."""
        ready = {k: self.train_step(ctx, k) in ctx.passed for k in ("lora", "full")}
        ready["standin"] = self.standin_step() in ctx.passed and not ready["lora"]
        return [self.run_dir(ctx, k) for k in ("lora", "standin", "full") if ready[k]]

    def lora_checkpoint(self, ctx: Ctx) -> Path:
        """The last LoRA checkpoint there is: the trained run's checkpoint-2, else the stand-in's checkpoint-1."""
        trained = self.train_step(ctx, "lora") in ctx.passed
        return self.run_dir(ctx, "lora") / "checkpoint-2" if trained else self.run_dir(ctx, "standin") / "checkpoint-1"


def step_base(s: Study, c: Ctx, t: float) -> str:
    """The base loads on the device and gives finite logits."""
    return inner(c, "base-load", ["--model", str(s.base)], t)


def step_train(s: Study, kind: str, c: Ctx, t: float) -> str:
    """Two GRPO steps of the study's recipe through `tina-probe train`, saved at each step."""
    recipe = RECIPES / (s.lora_recipe if kind == "lora" else s.full_recipe)
    shrink = s.shrink if c.device == "cpu" else ()
    cli(c, ["train", "--recipe", str(recipe), "--out", str(s.folder(c, "runs")),
            *run_overrides(s.run_dir(c, kind).name, c.bf16, shrink)], t, s.train_step(c, kind))
    return check_run(s.run_dir(c, kind), kind, c.bf16)


def step_standin(s: Study, c: Ctx, t: float) -> str:
    """Where LoRA training could not run: a random LoRA adapter of the recipe's shape, for the checks after it."""
    out = s.run_dir(c, "standin") / "checkpoint-1"
    return inner(c, "standin", ["--model", str(s.base), "--adapter", str(out),
                                "--recipe", str(RECIPES / s.lora_recipe)], t)


def step_eval(s: Study, c: Ctx, t: float) -> str:
    """`tina-probe eval` over the base and every checkpoint; each has graded samples."""
    runs, results = s.ready_runs(c), s.folder(c, "results")
    cli(c, ["eval", "--ckpts", *map(str, runs), "--benchmarks", s.benchmark, "--n", "2", "--limit", "8",
            "--max-tokens", "32" if c.device == "cpu" and s.shrink else "64", "--backend", s.backend,
            "--out", str(results)], t, f"{s.prefix}eval")
    return check_samples(results, runs)


def step_greedy(s: Study, c: Ctx, t: float) -> str:
    """hf greedy output of the project's generator equals plain transformers + peft (float32, LoRA applied)."""
    return inner(c, "greedy", ["--model", str(s.base), "--adapter", str(s.lora_checkpoint(c)),
                               "--benchmark", s.benchmark], t)


def step_spectra(s: Study, c: Ctx, t: float) -> str:
    """`tina-probe spectra` over every checkpoint."""
    runs, results = s.ready_runs(c), s.folder(c, "results")
    cli(c, ["spectra", "--ckpts", *map(str, runs), "--out", str(results)], t, f"{s.prefix}spectra")
    return check_spectra(results, runs)


def step_retention(s: Study, c: Ctx, t: float) -> str:
    """`tina-probe retention` with the study's KL probe on 8 documents."""
    runs, results = s.ready_runs(c), s.folder(c, "results")
    cli(c, ["retention", "--ckpts", *map(str, runs), "--probes", s.probe, "--limit", "8", "--out", str(results)],
        t, f"{s.prefix}retention")
    return check_retention(results, s.probe, runs)


def study_steps(s: Study, ctx: Ctx) -> list[Step]:
    """One study's steps: base on the device, 2+2 GRPO steps (or a stand-in adapter), eval, greedy equality,
    spectra, retention."""
    lora, full, standin = s.train_step(ctx, "lora"), s.train_step(ctx, "full"), s.standin_step()
    any_run = (lora, full, standin)
    vllm = ("vllm",) if s.backend == "vllm" else ()
    return [
        Step(f"{s.prefix}base-on-{ctx.device}", partial(step_base, s), ("torch", "transformers", "safetensors"),
             timeout=90),
        Step(lora, partial(step_train, s, "lora"), TRAIN_NEEDS, timeout=200),
        Step(full, partial(step_train, s, "full"), TRAIN_NEEDS, timeout=200),
        Step(standin, partial(step_standin, s), ("torch", "transformers", "peft", "yaml"), timeout=90,
             only_if=lambda c: lora not in c.passed),
        Step(f"{s.prefix}eval-{s.backend}", partial(step_eval, s), EVAL_NEEDS + vllm, any_run, timeout=200),
        Step(f"{s.prefix}hf-greedy-equals-peft-fp32", partial(step_greedy, s), GREEDY_NEEDS, (lora, standin),
             timeout=120),
        Step(f"{s.prefix}spectra", partial(step_spectra, s), CLI_NEEDS, any_run, timeout=150),
        Step(f"{s.prefix}retention-{s.probe}", partial(step_retention, s), CLI_NEEDS + ("peft",), any_run,
             timeout=150),
    ]


LAB = Study("", LAB_BASE, "lab-lora-r8.yaml", "lab-full.yaml", "lab-test", "hf", "kl_general")


def real_study() -> Study:
    """The real base's study (SmolLM2-135M-Instruct from the tina-probe cache; eval with vLLM)."""
    from tina_probe.real.models import model_dir

    return Study("real-", model_dir(REAL_NAME), "real-lora.yaml", "real-full.yaml", "real-test", "vllm", "kl_real",
                 shrink=REAL_CPU_SHRINK)


def real_unavailable(imports: dict[str, str | None]) -> str | None:
    """Why the real steps cannot run here (vllm does not import, the real base is not in the cache), or None."""
    from tina_probe.real.models import model_dir, why_broken

    why = []
    if imports.get("vllm") is not None:
        why.append(f"vllm not importable ({imports['vllm']})")
    broken = why_broken(model_dir(REAL_NAME))
    if broken:
        why.append(f"real base not in the cache ({model_dir(REAL_NAME)}: {broken}; `tina-probe lab real-base` "
                   "makes it where there is network)")
    return "; ".join(why) or None


# ----------------------------------------------------------------------------- packages


def import_report(ctx: Ctx, modules: tuple[str, ...], timeout: float = 240) -> dict[str, str | None]:
    """Import each module in a child with the children's environment: module -> None, or the error's first line."""
    code = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(m); out[m] = None\n    except Exception as e:\n"
            "        out[m] = (type(e).__name__ + ': ' + str(e)).splitlines()[0][:120]\nprint(json.dumps(out))")
    out = run_child([ctx.python, "-c", code, *modules], ctx, timeout, "imports")
    return json.loads(last_line(out))


def install_wheels(ctx: Ctx, site: Path, timeout: float = 120) -> list[str]:
    """Install from wheels/ (no network, no deps) into `site` whatever distributions this Python lacks."""
    from importlib import metadata

    wheels = sorted(WHEELS.glob("*.whl"))
    have = {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
    names = wheels_to_install(wheels, have)
    if not names:
        return []
    pip = [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELS), "--no-deps",
           "--disable-pip-version-check", "--target", str(site)]
    done = []
    try:  # all at once; where one has no wheel for this Python, one by one
        run_child(pip + names, ctx, timeout, "pip")
        done = names
    except CheckFailed:
        for name in names:
            try:
                run_child(pip + [name], ctx, timeout, f"pip-{name}")
                done.append(name)
            except CheckFailed:
                pass
    return done


def prepare(ctx: Ctx, real: bool) -> Result:
    """Children's environment (repository and installed wheels on PYTHONPATH, offline, device) and the imports."""
    start = time.monotonic()
    site = ctx.work / "site"
    paths = [str(site), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ctx.env = {**os.environ, **CHILD_ENV, "PYTHONPATH": os.pathsep.join(paths)}
    if ctx.device == "cpu":  # children see no GPU even where there is one; one BLAS thread unless told otherwise
        ctx.env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    sys.path[:0] = [str(site), str(ROOT)]
    modules = NEEDED + (("vllm",) if real else ())
    try:
        ctx.imports, installed = import_report(ctx, modules), []
        if missing_for(modules, ctx.imports):
            installed = install_wheels(ctx, site)
            ctx.imports = import_report(ctx, modules) if installed else ctx.imports
    except CheckFailed as exc:
        return Result("packages", "FAIL", time.monotonic() - start, str(exc))
    status, detail = package_report(ctx.imports, installed, any(WHEELS.glob("*.whl")))
    return Result("packages", status, time.monotonic() - start, detail)


# ----------------------------------------------------------------------------- in-child checks (--inner)


def inner_base_load(device: str, model: str) -> str:
    """Load a base on the device (bf16 on CUDA, float32 on CPU), one forward pass: finite logits, right device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, use_safetensors=True).to(device).eval()
    enc = tok(["Solve (7+2)-1."], return_tensors="pt").to(device)
    with torch.inference_mode():
        logits = lm(**enc).logits
    where = {p.device.type for p in lm.parameters()}
    if where != {device} or not bool(torch.isfinite(logits).all()):
        raise CheckFailed(f"parameters on {where}, logits finite: {bool(torch.isfinite(logits).all())}")
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    n = sum(p.numel() for p in lm.parameters())
    return f"{n / 1e6:.1f}M params, {str(dtype).replace('torch.', '')}, logits finite, on {name}"


def benchmark_prompts(benchmark: str, k: int = 4) -> list[str]:
    """The first k prompts of a shipped benchmark, rendered as eval renders them."""
    from tina_probe.benchmarks import load_benchmark

    return [p.prompt for p in load_benchmark(benchmark, limit=k).problems]


def plain_greedy(device: str, model: str, adapter: str, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy completions by plain transformers + peft generate in float32 (chat template, left padding)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
    lm = PeftModel.from_pretrained(lm, adapter).to(device).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    eos = lm.generation_config.eos_token_id
    eos = {tok.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    with torch.inference_mode():
        out = lm.generate(**enc, do_sample=False, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)
    texts = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return texts


def inner_greedy(device: str, model: str, adapter: str, benchmark: str, max_tokens: int = 48) -> str:
    """The project's hf generator at temperature 0 (float32, LoRA applied) equals plain transformers + peft."""
    import torch

    from tina_probe.generate.hf import HFGenerator

    prompts = benchmark_prompts(benchmark)
    gen = HFGenerator(device=device, dtype=torch.float32)
    gen.load_base(model, adapters=[Path(adapter)])
    ours = [g[0].text for g in gen.generate(prompts, adapter=Path(adapter), n=1, temperature=0.0, top_p=1.0,
                                             max_tokens=max_tokens, seed=0)]
    gen.close()
    plain = plain_greedy(device, model, adapter, prompts, max_tokens)
    differ = [i for i, (a, b) in enumerate(zip(ours, plain)) if a != b]
    if differ:
        i = differ[0]
        raise CheckFailed(f"{len(differ)}/{len(prompts)} differ; prompt {i}: ours {ours[i]!r} vs plain {plain[i]!r}")
    where = f"{Path(adapter).parent.name}/{Path(adapter).name}"
    return f"{len(prompts)}/{len(prompts)} prompts identical, up to {max_tokens} tokens, LoRA {where}"


def inner_standin(model: str, out: str, recipe: str) -> str:
    """A LoRA adapter of the recipe's rank and modules with random A and small random B (seed 0), saved to `out`."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = yaml.safe_load(Path(recipe).read_text())["peft"]
    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], target_modules=spec["target_modules"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(0)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), config)
    with torch.no_grad():  # B ~ 1% of its random init: an update of a trained adapter's size, not noise
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    lm.save_pretrained(out)
    return f"LoRA training did not pass: random r{spec['r']} adapter on {len(spec['target_modules'])} modules"


def inner_main(args) -> int:
    """Child mode: run one in-child check and print its answer as one JSON line."""
    try:
        if args.inner == "base-load":
            detail = inner_base_load(args.device, args.model)
        elif args.inner == "standin":
            detail = inner_standin(args.model, args.adapter, args.recipe)
        else:
            detail = inner_greedy(args.device, args.model, args.adapter, args.benchmark)
        print(json.dumps({"ok": True, "detail": detail}))
    except Exception as exc:  # the parent prints it as the step's FAIL
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}))
    return 0


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", action="store_true", help="also the real base (SmolLM2-135M; eval with vLLM)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="cpu: the same steps on CPU in float32, for testing the check itself, not a GPU result")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole check (default 470)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder even when every step passed")
    p.add_argument("--inner", choices=("base-load", "greedy", "standin"), help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    p.add_argument("--benchmark", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def choose_device(asked: str | None) -> str | None:
    """The device to check: as asked, else cuda when torch sees one, else None (nothing to check)."""
    if asked:
        return asked
    import torch

    return "cuda" if torch.cuda.is_available() else None


def torch_error() -> str | None:
    """Why torch does not import here (every step needs it), or None."""
    try:
        import torch  # noqa: F401
    except Exception as exc:  # a broken install raises more than ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


def report(result: Result, results: list[Result]) -> None:
    results.append(result)
    print(format_result(result), flush=True)


def run_steps(steps: list[Step], ctx: Ctx, results: list[Result]) -> None:
    """Run the steps in order, each reported as it ends; steps not wanted here (only_if false) leave no line."""
    for step in steps:
        if step.only_if is None or step.only_if(ctx):
            report(run_step(step, ctx), results)


def check(args, device: str) -> int:
    """Every step in order, one line each, then the summary; returns the exit code."""
    start = time.monotonic()
    work = (args.work or Path(tempfile.mkdtemp(prefix="tina-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(device=device, work=work, deadline=start + args.budget)
    results: list[Result] = []
    print(f"gpu-check: device {device}, work folder {work}, budget {args.budget:.0f}s", flush=True)
    report(prepare(ctx, args.real), results)
    run_steps(study_steps(LAB, ctx), ctx, results)
    if args.real:
        why = real_unavailable(ctx.imports)
        if why:
            report(Result("real", "SKIP", 0.0, why), results)
        else:
            run_steps(study_steps(real_study(), ctx), ctx, results)
    print(summary_line(results, device, time.monotonic() - start), flush=True)
    code = exit_code(results)
    if code == 0 and not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.inner:
        return inner_main(args)
    if why := torch_error():
        print(f"gpu-check: torch does not import ({why}): nothing run")
        return 1
    device = choose_device(args.device)
    if device is None:
        print(NO_CUDA)
        return 0
    return check(args, device)


if __name__ == "__main__":
    sys.exit(main())
