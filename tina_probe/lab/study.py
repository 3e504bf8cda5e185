"""`tina-probe lab`: the whole LoRA vs full-FT study on the shipped model organism, resumable end to end.

The core never imports `train/` or `analysis/`, so the study drives those steps through the `tina-probe`
command line in child processes, which also lets two training runs share the two cores side by side, and eval, spectra
and retention run as processes side by side (lab/workers.py). Training, evaluation, retention, phase and spectra are
one batch (study_children) in which each child waits only for what it reads, so a core freed by one run's training
evaluates that run while the other still trains. Every step skips what the store or the runs folder already hold.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from tina_probe.console import print_table
from tina_probe.errors import TinaError
from tina_probe.lab.workers import Child, cli, run_children, shard_children

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "train" / "recipes"
console = Console()


@dataclass(frozen=True)
class StudyPlan:
    """What one study trains and how it evaluates; `quick` shrinks every knob."""

    recipes: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    name_suffix: str = ""
    eval_n: int = 4
    eval_limit: int | None = None
    parallel: int = 2  # training runs side by side, the cores split between them
    shards: int = 2  # eval, spectra and retention as this many `--shard` processes side by side, one thread each
    #                  (1: one process on every core)
    probes: tuple[str, ...] = ("lab_facts_gen", "lab_facts_mc", "kl_general", "ppl_general", "kl_task")
    probe_limit: int | None = 64
    spectra: bool = True
    spectra_intruders: bool = True  # intruders, drift, sparsity: an SVD of every updated matrix per checkpoint
    geometry_at: str = "none"  # with spectra_intruders off: "last" still gives each run's last checkpoint the
    #                            intruder and Path-Not-Taken columns (an SVD of W_t per matrix)
    retention_at: str = "all"  # "all" checkpoints, or only each run's "best" (strict pass@1) and its base
    held_out: bool = True  # also evaluate each run's held-out split (its benchmark with "probe" for "test"), on
    #                        which `phase`, `dynamics` and `hypothesis` pick the best checkpoint
    extra_benchmarks: tuple[str, ...] = ()  # evaluated beside each run's own benchmark (e.g. a real benchmark)
    extra_limit: int | None = None  # problems of each extra benchmark (None: eval_limit)
    max_tokens: int = 64
    extra: dict = field(default_factory=dict)


FULL = StudyPlan(
    recipes=("lab-lora-r8", "lab-full", "lab-lora-r1", "lab-control", "lab-lora-hot", "lab-full-hot"),
    eval_n=4, eval_limit=100,
)
QUICK = StudyPlan(
    recipes=("lab-lora-r8", "lab-full"),
    overrides=("grpo.max_steps=16", "grpo.save_steps=2"),
    name_suffix="-quick", eval_n=2, eval_limit=24, probes=("lab_facts_mc", "kl_general", "kl_task"), probe_limit=16,
)

# Ground truth for the hypothesis test: the planted organism can only learn the format (verdict "supported"), the
# control only correctness (verdict "not supported"); both shortened to 60 steps, a checkpoint every 5.
VALIDATE = StudyPlan(
    recipes=("lab-planted", "lab-control"),
    overrides=("grpo.max_steps=60", "grpo.save_steps=5"),
    # all 120 facts: "knowledge kept" within 0.05 needs the items (paired), and 32 could not show it (rule R7)
    name_suffix="-validate", eval_n=4, eval_limit=60, probes=("lab_facts_mc",), probe_limit=120, spectra=False,
    retention_at="best",
)
# A real pretrained model (SmolLM2-135M-Instruct, converted once into the cache: tina_probe/real/) through the same
# study: a matched LoRA and full-FT run on the real task (data/real/), evaluated on its test and held-out splits;
# retention on real text (an MMLU-STEM slice through lm-eval, KL to the base and perplexity on GSM8K solution text)
# and the task KL of RL's Razor on the task's held-out prompts (kl_task_real).
# The letters form of MMLU is left out: the 135M base answers "A" to almost everything (acc 0.14, below chance), so it
# cannot show forgetting; the cloze form and KL / perplexity on real text can. Probed at the base and each run's best.
REAL_PROBES = ("real_mmlu_stem_cloze", "kl_real", "ppl_real", "kl_task_real")
# Sized for 2 cores from costs measured on a quiet machine: one GRPO step (4 prompts x 4 samples x <= 64 tokens) takes
# ~36 s per run with the two runs side by side (data/real/lr-sweep.json), and the learning rates are the sweep's
# (`tina-probe lab real-sweep`: LoRA 5e-4, full FT 2e-5, in the recipes). The recipes' 30 steps with a checkpoint
# every 3 give 11 evaluated points per run (base included), 16 problems x 4 samples on each split. No GSM8K: the
# base's GSM8K answers still run past 512 tokens in 38% of samples (data/real/gsm8k-budget.json), far beyond what
# fits per checkpoint here. Spectra skip the SVD of every W_t except at each run's last checkpoint (intruders and
# the Path-Not-Taken geometry there).
REAL = StudyPlan(
    recipes=("real-lora", "real-full"), overrides=("grpo.max_steps=30", "grpo.save_steps=3"),
    eval_n=4, eval_limit=16, probes=REAL_PROBES, probe_limit=24, max_tokens=64, retention_at="best",
    spectra_intruders=False, geometry_at="last", shards=1,
)
# --quick: one GRPO step of 2 prompts x 4 samples per run, a few problems, spectra without intruders (which need an
# SVD of every updated matrix: ~35 s per checkpoint here); a smoke test of every step, not a result.
REAL_QUICK = StudyPlan(
    recipes=("real-lora", "real-full"), overrides=("grpo.max_steps=1", "grpo.save_steps=1", "grpo.prompts_per_step=2"),
    name_suffix="-quick", eval_n=2, eval_limit=6,
    probes=REAL_PROBES, probe_limit=8, max_tokens=64, retention_at="best", spectra_intruders=False, shards=1,
)
PLANS = {"full": FULL, "quick": QUICK, "validate": VALIDATE, "real": REAL, "real-quick": REAL_QUICK}
# default folders under results/ and runs/ (an explicit --out / --runs is used as given)
SUBFOLDER = {"full": "", "quick": "quick", "validate": "validate", "real": "real", "real-quick": "real-quick"}


def run_cli(*args: str, threads: int = 2) -> None:
    """Run one `tina-probe` step to completion; a failure stops the study with the step named, and a study stopped
    from outside stops the step too."""
    from tina_probe.children import stop

    proc = cli(*args, threads=threads)
    try:
        proc.wait()
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise TinaError(f"tina-probe {' '.join(args[:1])}: step failed (exit {proc.returncode}); rerun to resume")


def _recipe(recipe: str) -> dict:
    import yaml

    return yaml.safe_load((RECIPES / f"{recipe}.yaml").read_text())


def eval_benchmarks(recipe: str, plan: StudyPlan) -> tuple[str, ...]:
    """What a run of the plan is evaluated on: its recipe's benchmark, that benchmark's held-out split (the
    `probe` split that selection pairs with `test`: analysis/selection.py), and the plan's extra benchmarks."""
    test = _recipe(recipe).get("eval_benchmark", "lab-test")
    held = (test.replace("test", "probe"),) if plan.held_out and "test" in test else ()
    return tuple(dict.fromkeys((test, *held, *plan.extra_benchmarks)))


def eval_calls(plan: StudyPlan, run_dirs: list[Path]) -> list[tuple[list[str], list[str], int | None, int]]:
    """(run folders, benchmarks, problem limit, samples per problem) of each `eval` call: runs with the same
    benchmarks together; the extra benchmarks in a call of their own when their limit differs. The held-out split
    is sampled like the test split: the analyses pair them under one sampling label (n included)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for recipe, run_dir in zip(plan.recipes, run_dirs):
        groups.setdefault(eval_benchmarks(recipe, plan), []).append(str(run_dir))
    calls = []
    for benches, dirs in groups.items():
        extra = [b for b in benches if b in plan.extra_benchmarks]
        own = [b for b in benches if b not in extra]
        if plan.extra_limit is None or plan.extra_limit == plan.eval_limit or not extra:
            calls.append((dirs, own + extra, plan.eval_limit, plan.eval_n))
        else:
            calls.append((dirs, own, plan.eval_limit, plan.eval_n))
            calls.append((dirs, extra, plan.extra_limit, plan.eval_n))
    return [c for c in calls if c[1]]


def _manifest(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "tina_run.json").read_text())
    except (OSError, ValueError):
        return {}


def _done(run_dir: Path, max_steps: int) -> bool:
    m = _manifest(run_dir)
    return m.get("status") == "complete" and m.get("global_step") == max_steps


def _latest_step(run_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps, default=0)


@dataclass(frozen=True)
class TrainJob:
    """One training run: a shipped recipe, the run's name and its `--set` overrides."""

    recipe: str
    name: str
    overrides: tuple[str, ...] = ()

    @property
    def max_steps(self) -> int:
        steps = _recipe(self.recipe)["grpo"]["max_steps"]
        for o in self.overrides:
            if o.startswith("grpo.max_steps="):
                steps = int(o.split("=", 1)[1])
        return steps


def train_jobs(jobs: list[TrainJob], runs_root: Path, parallel: int = 2) -> list[Path]:
    """Train each job in a `tina-probe train` subprocess, `parallel` at a time (the cores split between them);
    skip finished runs; a failed run stops the rest with its log's last lines."""
    children, run_dirs = train_children(jobs, runs_root)
    run_children(children, parallel)
    return run_dirs


def train_label(run_dir: Path) -> str:
    return f"train {run_dir.name}"


def train_children(jobs: list[TrainJob], runs_root: Path, threads: int | None = None) -> tuple[list[Child],
                                                                                                list[Path]]:
    """(a `tina-probe train` child for each unfinished job, every job's run folder)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    children, run_dirs = [], []
    for job in jobs:
        run_dir = runs_root / job.name
        run_dirs.append(run_dir)
        if _done(run_dir, job.max_steps):
            console.print(f"[green]✓[/] {job.name}: already trained")
            continue
        args = ["train", "--recipe", str(RECIPES / f"{job.recipe}.yaml"), "--out", str(runs_root),
                "--set", f"name={job.name}"]
        for o in job.overrides:
            args += ["--set", o]
        children.append(Child(train_label(run_dir), tuple(args), run_dir / "train.log", total=job.max_steps,
                              progress=lambda d=run_dir, t=job.max_steps: (_latest_step(d), t), threads=threads))
    return children, run_dirs


def stage_children(plan: StudyPlan, out: Path, stage: str, *args: str, tag: str = "") -> list[Child]:
    """`tina-probe STAGE ARGS --out OUT` as plan.shards `--shard` processes (one when plan.shards is 1), logs under
    OUT/.logs/ (`tag` tells apart several calls of one stage). Each shard consolidates every part present when it
    ends, so the last one leaves the tables whole."""
    if plan.shards <= 1:
        return [one_child(out, stage, *args, tag=tag)]
    return shard_children(stage, (*args, "--out", str(out)), out / ".logs", plan.shards, tag)


def one_child(out: Path, stage: str, *args: str, tag: str = "") -> Child:
    """`tina-probe STAGE ARGS --out OUT` as one process, its log OUT/.logs/STAGE[TAG].log."""
    return Child(stage + tag, (stage, *args, "--out", str(out)), out / ".logs" / f"{stage}{tag}.log")


def eval_children(plan: StudyPlan, out: Path, run_dirs: list[Path]) -> list[Child]:
    """Every eval call (eval_calls) as stage_children over all its runs (the plans with one analysis process, whose
    eval needs every core: study_children; the lab plans split each call by run, per_run_eval_children)."""
    calls = eval_calls(plan, run_dirs)
    children: list[Child] = []
    for k, (dirs, benches, limit, n) in enumerate(calls):
        children += stage_children(plan, out, "eval", "--ckpts", *dirs, *eval_sampling_args(plan, benches, limit, n),
                                   tag=f"-{k + 1}" if len(calls) > 1 else "")
    return children


def eval_sampling_args(plan: StudyPlan, benches: list[str], limit: int | None, n: int) -> tuple[str, ...]:
    """An eval call's benchmarks and sampling options, as the study passes them to `tina-probe eval`."""
    return ("--benchmarks", ",".join(benches), "--n", str(n), "--temperature", "1.0", "--max-tokens",
            str(plan.max_tokens), "--seed", "0", *(("--limit", str(limit)) if limit is not None else ()))


def _run_base(recipe: str, plan: StudyPlan) -> str:
    """The base a run of the plan trains from (a `base=` override wins over the recipe's)."""
    bases = [o.split("=", 1)[1] for o in plan.overrides if o.startswith("base=")]
    return bases[-1] if bases else str(_recipe(recipe)["base"])


def per_run_eval_children(plan: StudyPlan, out: Path, run_dirs: list[Path], threads: int | None = None) -> list[Child]:
    """Every eval call (eval_calls) split by run, each run's part as plan.shards `--shard` children after that run's
    training only (rule W2 of lab/workers.py), so a run is evaluated while others still train. Where runs of a call
    share a base, the base's completions come first, in children of their own after the first such run's training:
    eval generates a base once and copies its rows to every run (rule 2 of tina_probe/eval_sweep.py), and children
    side by side would each generate it. These children write samples only (--no-summary); then the whole call runs
    once more, after every eval child, finds every unit done and writes the tables from all parts, once per call
    instead of once per child (a summary reads the whole store: ~6 s each in the lab study). Every unit is computed
    as in one call over all runs: one unit per generate wave, merged adapters restored bit-exactly."""
    recipe_of = dict(zip(map(str, run_dirs), plan.recipes))
    parts: list[Child] = []
    tables: list[Child] = []
    calls = eval_calls(plan, run_dirs)
    for k, (dirs, benches, limit, n) in enumerate(calls):
        tag = f"-{k + 1}" if len(calls) > 1 else ""
        common = eval_sampling_args(plan, benches, limit, n)

        def part(what: str, args: tuple[str, ...], after: tuple[str, ...]) -> list[Child]:
            kids = shard_children("eval", (*args, *common, "--no-summary", "--out", str(out)), out / ".logs",
                                  plan.shards, f"{tag}-{what}")
            return [replace(c, label=f"eval{tag} {what} {c.label.rsplit(' ', 1)[1]}", after=after,
                            threads=threads) for c in kids]

        by_base: dict[str, list[Path]] = {}
        for d in dirs:
            by_base.setdefault(_run_base(recipe_of[d], plan), []).append(Path(d))
        for group in by_base.values():
            base: tuple[str, ...] = ()
            if len(group) > 1:
                first = group[0]
                kids = part(f"base-{first.name}", ("--ckpts", str(first), "--steps", "0"), (train_label(first),))
                parts += kids
                base = tuple(c.label for c in kids)
            for d in group:
                parts += part(d.name, ("--ckpts", str(d)), (train_label(d), *base))
        tables.append(Child(f"eval{tag} tables", ("eval", "--ckpts", *dirs, *common, "--out", str(out)),
                            out / ".logs" / f"eval{tag}-tables.log", threads=threads))
    done = tuple(c.label for c in parts)
    return [*parts, *(replace(c, after=done) for c in tables)]


def study_children(plan: StudyPlan, out: Path, runs_root: Path) -> tuple[list[Child], list[Path]]:
    """Training, evaluation and the after-eval pool of a study as one batch for run_children, in priority order,
    each child after only what it reads (rules W1-W2 of lab/workers.py): a run's eval starts as soon as that run is
    trained, while the others still train; spectra after every run is trained; phase and retention after every
    eval (the task KL reads eval's completions).
    Plans with one analysis process (shards=1) keep one eval call over all runs. Returns (children, run folders)."""
    cores = os.cpu_count() or 2
    jobs = [TrainJob(recipe, recipe + plan.name_suffix, plan.overrides) for recipe in plan.recipes]
    trains, run_dirs = train_children(jobs, runs_root, threads=max(1, cores // plan.parallel))
    analysis = max(1, cores // plan.shards)
    trained = tuple(c.label for c in trains)
    if plan.shards > 1:
        evals = per_run_eval_children(plan, out, run_dirs, analysis)
    else:
        evals = [replace(c, after=trained, threads=analysis) for c in eval_children(plan, out, run_dirs)]
    evaluated = tuple(c.label for c in evals)
    # spectra read only the checkpoints; phase reads the eval tables, and so does retention (the task KL compares
    # each checkpoint's stored eval completions with its base's). Phase spreads its curves over every core (the same
    # rows): it runs last, after the long retention shards, when nothing else is left to run beside it.
    pool = [replace(c, after=trained if c.args[0] == "spectra" else (*trained, *evaluated), threads=analysis)
            if c.args[0] != "phase" else
            replace(c, args=(*c.args, "--workers", str(cores)), after=(*trained, *evaluated), threads=cores)
            for c in after_eval_pool(plan, out, [str(d) for d in run_dirs])]
    children = [*trains, *evals, *pool]
    known = {c.label for c in children}  # a finished run has no train child: nothing to wait for
    return [replace(c, after=tuple(a for a in c.after if a in known)) for c in children], run_dirs


def retention_args(plan: StudyPlan) -> tuple[str, ...]:
    return "--probes", ",".join(plan.probes), "--limit", str(plan.probe_limit)


def spectra_args(plan: StudyPlan) -> tuple[str, ...]:
    return () if plan.spectra_intruders else ("--no-intruders",)


def after_eval_pool(plan: StudyPlan, out: Path, ckpts: list[str]) -> list[Child]:
    """What needs only the checkpoints and the eval tables: retention when it probes every checkpoint (the longest:
    minutes per shard in the lab study), spectra (about 15 s a shard), phase (study_children adds what each waits
    for). Phase comes last: the study runs it on every core, and listed before the one-thread spectra shards it would
    hold them back (rule W1 of lab/workers.py) while one core waits for the other to finish its retention shard.
    Retention at the best checkpoints waits for phase, which chooses them, after this batch."""
    pool = stage_children(plan, out, "retention", "--ckpts", *ckpts, *retention_args(plan)) \
        if plan.retention_at != "best" else []
    if plan.spectra:
        pool += stage_children(plan, out, "spectra", "--ckpts", *ckpts, *spectra_args(plan))
    pool.append(one_child(out, "phase", "--runs", *ckpts))  # phase has no shards
    return pool


def run_sharded(plan: StudyPlan, out: Path, stage: str, *args: str) -> None:
    """One stage's children (stage_children), plan.shards side by side."""
    run_children(stage_children(plan, out, stage, *args), plan.shards)


def summarize(out: Path, run_dirs: list[Path]) -> None:
    """Print the study's summary: the best checkpoint per run as `phase` chose it (on the held-out split where the
    store has one, scored on the test split), the format transition, the verdicts."""
    import pandas as pd

    from tina_probe.store import Store

    store = Store(out)
    passk, summary, hyp = store.read("passk"), store.read("phase_summary"), store.read("hypothesis")
    title = "tina-probe lab: best checkpoint per run (strict pass@1 on the test split, sampled)"
    columns = ("run", "kind", "base strict", "best step (chosen on)", "strict pass@1 [95% CI]",
               "lenient pass@1 [95% CI]", "format transition", "format adaptation")
    rows: list[tuple[str, ...]] = []
    for run in [d.name for d in run_dirs]:
        p1 = passk[(passk.get("run") == run) & (passk.get("k") == 1)] if not passk.empty else passk
        if p1.empty:
            continue
        ph = summary[summary.run == run] if not summary.empty else summary
        chosen = ph.dropna(subset=["best_step"]).iloc[0] if not ph.empty and ph["best_step"].notna().any() else None
        bench = chosen["benchmark"] if chosen is not None else sorted(p1.benchmark.unique())[0]
        p1 = p1[p1.benchmark == bench]
        strict = p1[p1.grading == "strict"].set_index("step").sort_index()
        lenient = p1[p1.grading == "lenient"].set_index("step")
        trained = strict[strict.index > 0]
        step = int(chosen["best_step"]) if chosen is not None else int(trained.value.idxmax()) if len(trained) else 0
        on = str(chosen.get("best_chosen_on", bench)) if chosen is not None else bench
        best, len_row = strict.loc[step], lenient.loc[step]
        base = strict.value.get(0)
        trans = "-"
        if chosen is not None and pd.notna(chosen.get("transition_step")):  # as `tina-probe phase` placed it
            trans = f"{chosen.transition_step:.0f} [{chosen.transition_low:.0f}, {chosen.transition_high:.0f}]"
        verdict = "-"
        if not hyp.empty:
            v = hyp[(hyp.run == run) & (hyp.claim == "format_adaptation")]
            verdict = v.verdict.iloc[0] if not v.empty else "-"
        rows.append((run, str(best.kind), f"{base:.1%}" if base is not None else "-", f"{step} ({on})",
                     f"{best.value:.1%} [{best.ci_low:.1%}, {best.ci_high:.1%}]",
                     f"{len_row.value:.1%} [{len_row.ci_low:.1%}, {len_row.ci_high:.1%}]", trans, verdict))
    print_table(title, columns, rows, console)


def best_checkpoints(out: Path, run_dirs: list[Path]) -> list[str]:
    """Each run's best checkpoint folder as `tina-probe phase` chose it (phase_summary's best_step: max strict
    pass@1); the run folder itself where the summary has no best step for it."""
    from tina_probe.store import Store

    summary = Store(out).read("phase_summary")
    known = summary.dropna(subset=["best_step"]) if not summary.empty else summary
    best = dict(zip(known["run"], known["best_step"])) if not known.empty else {}
    picked = []
    for run_dir in run_dirs:
        folder = run_dir / f"checkpoint-{int(best[run_dir.name])}" if run_dir.name in best else run_dir
        picked.append(str(folder if folder.is_dir() else run_dir))
    return picked


def _bases(plan: StudyPlan) -> set[str]:
    """The bases a plan's recipes train from: shipped lab folders (relative to the project root) or real:NAME."""
    return {_run_base(r, plan) for r in plan.recipes}


def ensure_bases(plan: StudyPlan) -> None:
    """Stop at once when a shipped lab base is missing; fetch and convert a real base on first use (cached)."""
    from tina_probe.real import ensure_base, is_real_name

    for need in sorted(_bases(plan)):
        if is_real_name(need):
            folder = ensure_base(need.split(":", 1)[1], progress=lambda m: console.print(m, soft_wrap=True))
            console.print(f"real base {need}: {folder}", soft_wrap=True)
        elif not (ROOT / need / "model.safetensors").is_file():
            raise TinaError(f"{ROOT / need}: the shipped lab base is missing (rebuild: see its MODEL_CARD.md)")


def study_folders(name: str, out: Path | None, runs_root: Path | None) -> tuple[Path, Path]:
    """Where a study writes, as absolute paths: exactly OUT and RUNS when given; otherwise results[/SUB] and
    runs[/SUB] in the current folder (SUB = quick | validate keeps reduced studies apart from the full one)."""
    sub = SUBFOLDER[name]
    out = Path(out) if out is not None else Path("results") / sub
    runs_root = Path(runs_root) if runs_root is not None else Path("runs") / sub
    return out.expanduser().resolve(), runs_root.expanduser().resolve()


def run_lab(**kwargs) -> None:
    """The study (see _run_lab); SIGTERM ends it like Ctrl-C, so its training and analysis children end too."""
    from tina_probe.children import sigterm_as_exit

    with sigterm_as_exit():
        _run_lab(**kwargs)


def _run_lab(*, quick: bool = False, out: Path | None = None, runs_root: Path | None = None,
             plan_name: str | None = None, eval_limit: int | None = None) -> None:
    """Train, evaluate, analyse and report the lab study; every step resumes from what exists.

    plan_name picks FULL, QUICK or VALIDATE (default: by `quick`); results go to OUT and the runs to RUNS (defaults
    in `study_folders`), relative paths taken from the current folder; eval_limit overrides the plan's number of
    problems."""
    name = plan_name or ("quick" if quick else "full")
    plan = PLANS[name]
    if eval_limit is not None:
        plan = StudyPlan(**{**plan.__dict__, "eval_limit": eval_limit})
    ensure_bases(plan)
    out, runs_root = study_folders(name, out, runs_root)
    t0 = time.time()
    console.print(f"results -> {out}\nruns    -> {runs_root}", soft_wrap=True)
    children, run_dirs = study_children(plan, out, runs_root)
    stages = ", ".join(dict.fromkeys(c.args[0] for c in children))
    console.rule(f"tina-probe lab{'' if name == 'full' else ' ' + name}: {stages}")
    run_children(children, parallel=1, threads=os.cpu_count() or 2)  # each child carries its own thread count
    ckpts = [str(d) for d in run_dirs]
    if plan.spectra:
        if plan.shards > 1:  # nothing left to compute: consolidates and writes the cross-run update_overlap
            run_cli("spectra", "--ckpts", *ckpts, "--out", str(out), *spectra_args(plan))
        last = [str(d / f"checkpoint-{_latest_step(d)}") for d in run_dirs if _latest_step(d) > 0]
        if not plan.spectra_intruders and plan.geometry_at == "last" and last:
            console.rule("intruders and Path-Not-Taken geometry at each run's last checkpoint")
            run_cli("spectra", "--ckpts", *last, "--out", str(out))
    if plan.retention_at == "best":
        console.rule("retention at each run's best checkpoint (as phase chose it) and its base")
        run_sharded(plan, out, "retention", "--ckpts", *best_checkpoints(out, run_dirs), *retention_args(plan))
    console.rule("series dynamics, hypothesis, report")
    run_cli("dynamics", "--out", str(out), "--workers", str(os.cpu_count() or 2))  # alone: every core
    run_cli("hypothesis", "--out", str(out))
    run_cli("report", "--out", str(out))
    summarize(out, run_dirs)
    console.print(f"done in {(time.time() - t0) / 60:.1f} min. Report: {out / 'report' / 'report.md'}", soft_wrap=True)
    console.print(f"Open the explorer: [bold]tina-probe app --out {out}[/]", soft_wrap=True)
