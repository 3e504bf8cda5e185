"""The `tina-probe` command line: one typer app; the only core module that sees train/ and analysis/.

Every user error is a `TinaError`, printed as one line and exit code 2; heavy imports happen inside the
commands so that `tina-probe --help` stays fast.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from analysis.rules import PhaseRules, VerdictRules  # thresholds only (dataclasses): cheap at import
from tina_probe.errors import TinaError
from tina_probe.shards import parse_shard

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tina-probe shows its own progress (tqdm); library bars (transformers' "Loading weights", hub and datasets
# downloads) would interleave with it. Set before any of them is imported; a user's own setting wins.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Study LoRA vs full fine-tuning of small reasoning models trained with GRPO.")
lab_app = typer.Typer(add_completion=False, no_args_is_help=False, invoke_without_command=True,
                      help="The lab: the whole study on the shipped model organism, and its tools.")
app.add_typer(lab_app, name="lab")

OUT = typer.Option(Path("results"), "--out", help="results store folder")
_PHASE, _RULES = PhaseRules(), VerdictRules()  # the defaults shown in --help
# The shipped lab data is found from the package, never from the current folder (README "Paths").
SHIPPED_LAB = Path(__file__).resolve().parents[1] / "data" / "lab"


def user_errors(fn):
    """Turn TinaError (and a missing file) into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TinaError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is kept; rerun the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _expand(paths: List[str]) -> List[str]:
    """Expand globs the shell left alone (e.g. quoted 'runs/*')."""
    import glob

    out: list[str] = []
    for p in paths:
        hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not hits:
            raise TinaError(f"{p}: no such run or checkpoint folder")
        out.extend(hits)
    return out


@app.command()
@user_errors
def train(recipe: Path = typer.Option(..., "--recipe", help="recipe YAML (see train/recipes/)"),
          out: Path = typer.Option(Path("runs"), "--out", help="runs root; the run goes to OUT/<recipe name>/"),
          set_: List[str] = typer.Option([], "--set", help="override a recipe value: key.sub=value")):
    """Train one recipe with TRL's GRPOTrainer (LoRA or full FT) -> RUNS/<name>/checkpoint-N/."""
    from train.grpo import train as run_train
    from train.recipe import load_recipe

    r = load_recipe(recipe, set_)
    run_dir = run_train(r, out, source=str(recipe))
    if os.environ.get("RANK", "0") == "0":  # under accelerate / torchrun: the first process speaks for the run
        typer.echo(f"run written to {run_dir}")


@app.command("eval")
@user_errors
def eval_(ckpts: List[str] = typer.Option(..., "--ckpts", help="run folders, checkpoint folders or globs"),
          more: Optional[List[str]] = typer.Argument(None, hidden=True, help="more paths after --ckpts (shell globs)"),
          benchmarks: Optional[List[str]] = typer.Option(None, "--benchmarks", help="names or files, comma separated"),
          n: int = typer.Option(4, "--n", help="samples per problem"),
          temperature: float = typer.Option(1.0, "--temperature"),
          top_p: float = typer.Option(1.0, "--top-p"),
          max_tokens: int = typer.Option(64, "--max-tokens"),
          seed: int = typer.Option(0, "--seed"),
          backend: str = typer.Option("hf", "--backend", help="hf | vllm"),
          steps: Optional[str] = typer.Option(None, "--steps", help="comma separated steps to evaluate"),
          shard: Optional[str] = typer.Option(None, "--shard", help="i/N: this process's share of the units"),
          limit: Optional[int] = typer.Option(None, "--limit", help="first N problems of each benchmark"),
          merge: Optional[bool] = typer.Option(
              None, "--merge/--no-merge",
              help="hf: --merge merges every LoRA into the base weights in place, one checkpoint at a time (no "
                   "batching of checkpoints; bf16 weights round small updates away); --no-merge never merges. "
                   "Default: a batch with one adapter is merged where the weights are float32 (equal up to float "
                   "rounding, base speed), several adapters share a batch unmerged"),
          summary: bool = typer.Option(True, "--summary/--no-summary",
                                       help="--no-summary: write the graded samples only (one part of a sweep run in "
                                            "several calls); a later call without it writes the passk and format "
                                            "tables of the whole store"),
          out: Path = OUT):
    """Evaluate the base and every checkpoint: pass@k with CIs, strict/lenient grading, format, lengths."""
    from tina_probe.evaluate import run_eval

    try:
        step_set = {int(s) for s in steps.split(",") if s.strip()} if steps else None
    except ValueError:
        raise TinaError(f"--steps {steps}: expected comma separated integers (e.g. 0,50,100)") from None
    shard_t = parse_shard(shard)
    run_eval(_expand(ckpts + (more or [])), benchmarks=_split(benchmarks), n=n, temperature=temperature, top_p=top_p,
             max_tokens=max_tokens, seed=seed, backend=backend, out=out, steps=step_set, shard=shard_t,
             limit=limit, merge=merge, summary=summary)


@app.command()
@user_errors
def grade(samples: Path = typer.Option(..., "--samples", help="JSONL or parquet of completions made elsewhere"),
          map_: List[str] = typer.Option([], "--map", help="rename a field: new=old (e.g. completion=response)"),
          out: Path = OUT):
    """Grade completions made elsewhere and write the samples, passk and format tables."""
    from tina_probe.grade_samples import run_grade

    mapping = {}
    for m in map_:
        if "=" not in m:
            raise TinaError(f"--map {m!r}: expected new=old")
        new, old = m.split("=", 1)
        mapping[new.strip()] = old.strip()
    run_grade(samples, out, mapping)


@app.command()
@user_errors
def spectra(ckpts: List[str] = typer.Option(..., "--ckpts"), more: Optional[List[str]] = typer.Argument(None, hidden=True, help="more paths after --ckpts (shell globs)"), out: Path = OUT,
            top: int = typer.Option(64, "--top", help="singular values kept per matrix"),
            intruders: bool = typer.Option(True, "--intruders/--no-intruders", help="intruder dimensions, spectral "
                                           "drift and sparsity (an SVD of every updated matrix per checkpoint)"),
            shard: Optional[str] = typer.Option(None, "--shard", help="i/N: this process's block of checkpoints; "
                                                "a last run without --shard writes the cross-run update_overlap")):
    """Update spectra of LoRA adapters and full-FT deltas -> spectra table."""
    from analysis.spectra import run_spectra

    run_spectra(_expand(ckpts + (more or [])), out, top=top, intruders=intruders, shard=parse_shard(shard))


@app.command()
@user_errors
def retention(ckpts: List[str] = typer.Option(..., "--ckpts"), more: Optional[List[str]] = typer.Argument(None, hidden=True, help="more paths after --ckpts (shell globs)"),
              probes: Optional[List[str]] = typer.Option(None, "--probes", help="probe names, comma separated"),
              limit: Optional[int] = typer.Option(None, "--limit", help="first N documents / windows / prompts"),
              shard: Optional[str] = typer.Option(None, "--shard", help="i/N: this process's share of the "
                                                  "checkpoints (every probe of a checkpoint in one shard)"),
              out: Path = OUT):
    """Knowledge-retention probes (lm-eval tasks, KL to the base, perplexity) -> retention table."""
    from analysis.retention import run_retention

    run_retention(_expand(ckpts + (more or [])), probes=_split(probes), out=out, limit=limit,
                  shard=parse_shard(shard))


@app.command()
@user_errors
def phase(runs: List[str] = typer.Option(..., "--runs"), more: Optional[List[str]] = typer.Argument(None, hidden=True, help="more paths after --ckpts (shell globs)"), out: Path = OUT,
          min_points: int = typer.Option(_PHASE.min_points, help="curves with fewer points are not segmented"),
          min_size: int = typer.Option(_PHASE.min_size, help="shortest segment, in points"),
          penalty_c: float = typer.Option(_PHASE.penalty_c, help="penalty per change point: C x sigma^2 x log(n)"),
          n_boot: int = typer.Option(_PHASE.n_boot, help="bootstrap refits per curve for a change point's range"),
          ci_level: float = typer.Option(_PHASE.ci_level, help="a change point's range: central percent of its "
                                         "bootstrap positions"),
          workers: int = typer.Option(1, "--workers", help="processes the curves are spread over (the same rows)")):
    """Change points on training and eval curves, with bootstrap ranges -> phases, phase_status, phase_summary."""
    from analysis.phase import run_phase

    if min_points < 2 or min_size < 1 or penalty_c <= 0 or n_boot < 0 or not 0 < ci_level < 100 or workers < 1:
        raise TinaError("phase: --min-points >= 2, --min-size >= 1, --penalty-c > 0, --n-boot >= 0, "
                        "0 < --ci-level < 100 and --workers >= 1 are required")
    rules = PhaseRules(min_points=min_points, min_size=min_size, penalty_c=penalty_c, n_boot=n_boot,
                       ci_level=ci_level)
    run_phase(_expand(runs + (more or [])), out, rules=rules, workers=workers)


@app.command()
@user_errors
def hypothesis(out: Path = OUT,
               alpha: float = typer.Option(_RULES.alpha, help="level of every test (one-sided; R5 claims a gain on "
                                           "the two-sided 1 - alpha CI)"),
               accuracy_margin: float = typer.Option(_RULES.accuracy_margin, help="task accuracy equivalence / "
                                                     "non-inferiority margin, absolute (R3, R5, R6)"),
               min_rise: float = typer.Option(_RULES.min_rise, help="smallest format-rate rise that counts (R3)"),
               share_threshold: float = typer.Option(_RULES.share_threshold, help="format share of the strict gain "
                                                     "the format part must exceed (R4)"),
               min_formatted_base: int = typer.Option(_RULES.min_formatted_base, help="formatted base samples "
                                                      "below which P(correct|formatted) is read as lenient accuracy "
                                                      "(R4)"),
               min_split_problems: int = typer.Option(_RULES.min_split_problems, help="problems per half when the "
                                                      "test problems are split to choose the best (R1)"),
               retention_margin: float = typer.Option(_RULES.retention_margin, help="accuracy-like retention "
                                                      "metrics, absolute (R7)"),
               kl_margin: float = typer.Option(_RULES.kl_margin, help="retention KL to the base, nats/token (R7)"),
               nll_margin: float = typer.Option(_RULES.nll_margin, help="retention NLL rise, nats/token (R7)"),
               ppl_rel_margin: float = typer.Option(_RULES.ppl_rel_margin, help="retention perplexity rise, "
                                                    "relative, when no nll (R7)"),
               min_geometry_runs: int = typer.Option(_RULES.min_geometry_runs, help="runs per kind before "
                                                     "LoRA vs full FT is tested, not described (R8)"),
               n_boot: int = typer.Option(_RULES.n_boot, help="bootstrap resamples over problems (R4)"),
               task_probes: str = typer.Option(",".join(_RULES.task_probes), help="retention probes on the task's "
                                               "own prompts: shown, not tested as knowledge (R7)")):
    """Test the format-adaptation hypothesis per run -> hypothesis table with verdicts (rules R0-R9: README)."""
    from analysis.hypothesis import run_hypothesis

    if not 0 < alpha < 0.5:
        raise TinaError(f"hypothesis: --alpha {alpha} must lie in (0, 0.5)")
    if min(accuracy_margin, min_rise, retention_margin, kl_margin, nll_margin, ppl_rel_margin) <= 0:
        raise TinaError("hypothesis: margins and --min-rise must be positive")
    if not 0 < share_threshold < 1 or n_boot < 100:
        raise TinaError("hypothesis: --share-threshold must lie in (0, 1) and --n-boot be at least 100")
    rules = VerdictRules(alpha=alpha, accuracy_margin=accuracy_margin, min_rise=min_rise,
                         share_threshold=share_threshold, min_formatted_base=min_formatted_base,
                         min_split_problems=min_split_problems, retention_margin=retention_margin,
                         kl_margin=kl_margin, nll_margin=nll_margin, ppl_rel_margin=ppl_rel_margin,
                         min_geometry_runs=min_geometry_runs, n_boot=n_boot,
                         task_probes=tuple(p.strip() for p in task_probes.split(",") if p.strip()))
    run_hypothesis(out, rules=rules)


@app.command()
@user_errors
def report(out: Path = OUT):
    """Write a markdown report with seaborn figures and the verdict table."""
    from analysis.report import write_report

    path = write_report(out)
    typer.echo(f"report written to {path}")


@app.command("app")
@user_errors
def app_(out: Path = OUT, port: int = typer.Option(8501, "--port")):
    """Open the Streamlit explorer over a results store (bound to 127.0.0.1); ends its server when terminated."""
    from tina_probe.children import run_forwarding

    script = Path(__file__).resolve().parents[1] / "streamlit_app.py"
    if not script.is_file():
        raise TinaError(f"{script}: the explorer script is missing from this installation")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer",
           "--", "--out", str(out.resolve())]
    typer.echo(f"explorer at http://127.0.0.1:{port}  (results: {out})")
    raise typer.Exit(run_forwarding(cmd))


@app.command()
@user_errors
def dynamics(out: Path = OUT,
             select_on: Optional[List[str]] = typer.Option(None, "--select-on", help="HELD_OUT[=TEST]: pick the "
                                                           "best checkpoint on HELD_OUT, score it on TEST (default: "
                                                           "*-probe* -> *-test*)"),
             support_min_correct: int = typer.Option(1, "--support-min-correct", help="correct samples a problem "
                                                     "needs to be in a checkpoint's empirical support (threshold "
                                                     "= this / n)"),
             workers: int = typer.Option(1, "--workers", help="processes the runs are spread over (the same rows)")):
    """Series dynamics: per-problem labels, pass@k crossover, maj@k, held-out selection, support flows and answer
    entropy (Invisible Leash), G-Pass@k_tau -> seven tables."""
    from analysis.dynamics import run_dynamics

    if workers < 1:
        raise TinaError(f"dynamics: --workers {workers}: need at least 1")
    tables = run_dynamics(out, select_on=_split(select_on), min_correct=support_min_correct, workers=workers)
    typer.echo("dynamics: " + ", ".join(f"{name} ({len(df)} rows)" for name, df in tables.items()) + f" in {out}")


@lab_app.callback()
@user_errors
def lab(ctx: typer.Context,
        quick: bool = typer.Option(False, "--quick", help="a reduced study (~1.5 minutes on 2 cores)"),
        out: Optional[Path] = typer.Option(None, "--out", help="results store folder, used as given [default: "
                                           "results/, with --quick results/quick/]"),
        runs: Optional[Path] = typer.Option(None, "--runs", help="where the lab's runs go, used as given [default: "
                                            "runs/, with --quick runs/quick/]")):
    """The whole LoRA vs full-FT study on the shipped model organism, end to end (resumable)."""
    if ctx.invoked_subcommand is not None:
        return
    from tina_probe.lab.study import run_lab

    run_lab(quick=quick, out=out, runs_root=runs)


@lab_app.command("validate")
@user_errors
def lab_validate(out: Optional[Path] = typer.Option(None, "--out", help="results store folder, used as given "
                                                   "[default: results/validate/]"),
                 runs: Optional[Path] = typer.Option(None, "--runs", help="where the runs go, used as given "
                                                     "[default: runs/validate/]"),
                 limit: Optional[int] = typer.Option(None, "--limit", help="problems per evaluation (default 60)")):
    """Validate the hypothesis test on ground truth: planted organism ("supported") vs control ("not supported").

    Trains both for 60 steps, evaluates, runs phase / hypothesis / report into OUT (resumable)."""
    from tina_probe.lab.study import run_lab

    run_lab(out=out, runs_root=runs, plan_name="validate", eval_limit=limit)


@lab_app.command("real")
@user_errors
def lab_real(quick: bool = typer.Option(False, "--quick", help="a reduced study (a smoke test of every step)"),
             out: Optional[Path] = typer.Option(None, "--out", help="results store folder, used as given [default: "
                                                "results/real/, with --quick results/real-quick/]"),
             runs: Optional[Path] = typer.Option(None, "--runs", help="where the runs go, used as given [default: "
                                                 "runs/real/, with --quick runs/real-quick/]"),
             limit: Optional[int] = typer.Option(None, "--limit", help="problems per benchmark evaluation")):
    """The study on a real pretrained model (SmolLM2-135M-Instruct, fetched and converted once): matched LoRA and
    full-FT GRPO runs, eval on the real task and a GSM8K slice, spectra, retention on real text, phase, dynamics,
    hypothesis, report (resumable)."""
    from tina_probe.lab.study import run_lab

    run_lab(out=out, runs_root=runs, plan_name="real-quick" if quick else "real", eval_limit=limit)


@lab_app.command("real-sweep")
@user_errors
def lab_real_sweep(lora: str = typer.Option("5e-4,1e-3,2e-3", "--lora", help="LoRA learning rates, comma-separated"),
                   full: str = typer.Option("1e-5,2e-5,5e-5", "--full", help="full-FT learning rates"),
                   steps: int = typer.Option(8, "--steps", help="GRPO steps per run"),
                   out: Optional[Path] = typer.Option(None, "--out", help="the sweep's JSON [default: "
                                                      "results/real-sweep/lr-sweep.json]"),
                   runs: Optional[Path] = typer.Option(None, "--runs", help="[default: runs/real-sweep/]"),
                   recorded: Optional[Path] = typer.Option(None, "--from", help="apply the rule again to a recorded "
                                                           "sweep's JSON (no training); writes --out, else in place")):
    """Learning rates for the real study by measurement: each arm trained STEPS steps per rate, two runs side by
    side; per arm, among the rates under which no rewarded part falls, the one with the highest late total training
    reward is chosen (rule: tina_probe/lab/lr_sweep.py)."""
    from tina_probe.lab.lr_sweep import rechoose, run_sweep

    if recorded is not None:
        rechoose(recorded, out)
        return

    def rates(text: str, flag: str) -> tuple[float, ...]:
        try:
            return tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise TinaError(f"{flag} {text}: not a comma-separated list of numbers") from None

    run_sweep(lora_rates=rates(lora, "--lora"), full_rates=rates(full, "--full"), steps=steps, runs_root=runs,
              out=out)


@lab_app.command("pretrain")
@user_errors
def lab_pretrain(out: Optional[Path] = typer.Option(None, "--out", help="[default: the shipped data/lab/base]"),
                 level: int = typer.Option(1, "--level", help="task difficulty level"),
                 formatted_share: float = typer.Option(0.3, "--formatted-share",
                                                       help="share of prompt wordings with well-formatted traces"),
                 leak: float = typer.Option(0.1, "--leak", help="chance a trace ignores its wording's style"),
                 max_steps: int = typer.Option(900, "--max-steps"),
                 max_minutes: float = typer.Option(30.0, "--max-minutes"),
                 seed: int = typer.Option(0, "--seed"),
                 stop_at: Optional[int] = typer.Option(None, "--stop-at", help="stop early; the schedule spans --max-steps"),
                 snapshot_every: int = typer.Option(0, "--snapshot-every", help="also save snapshots/step-N/"),
                 init_from: Optional[Path] = typer.Option(None, "--init-from",
                                                          help="continue from this saved lab model"),
                 start_step: int = typer.Option(0, "--start-step", help="schedule step to start at (with --init-from)")):
    """Pretrain a lab base model (a tiny Qwen2) on arithmetic traces and facts."""
    from tina_probe.lab.pretrain import PretrainConfig, pretrain

    out = out if out is not None else SHIPPED_LAB / "base"
    path = pretrain(PretrainConfig(out=str(out), level=level, formatted_share=formatted_share, leak=leak,
                                   max_steps=max_steps, max_minutes=max_minutes, seed=seed, stop_at=stop_at,
                                   snapshot_every=snapshot_every,
                                   init_from=str(init_from) if init_from else None, start_step=start_step))
    typer.echo(f"base written to {path}")


@lab_app.command("data")
@user_errors
def lab_data(out: Optional[Path] = typer.Option(None, "--out", help="[default: the shipped data/lab]")):
    """Regenerate the lab's task splits, facts and reference text (deterministic)."""
    from tina_probe.lab.tasks import write_lab_data

    for name, path in write_lab_data(out if out is not None else SHIPPED_LAB).items():
        typer.echo(f"{name}: {path}")


@lab_app.command("measure")
@user_errors
def lab_measure(model: Optional[Path] = typer.Option(None, "--model", help="[default: the shipped data/lab/base]"),
                benchmark: str = typer.Option("lab-test", "--benchmark"),
                n: int = typer.Option(1, "--n"), temperature: float = typer.Option(1.0, "--temperature"),
                out: Path = typer.Option(Path("results/base-card"), "--out"),
                card: Optional[str] = typer.Option(None, "--card", help="write MODEL_CARD.md with this title")):
    """Measure a lab base (accuracy, format, facts recall): the numbers in its MODEL_CARD.md."""
    from tina_probe.lab.measure import measure_base, write_model_card

    model = model if model is not None else SHIPPED_LAB / "base"
    if not (model / "model.safetensors").is_file():
        raise TinaError(f"{model}: no model.safetensors (build one with `tina-probe lab pretrain`)")
    result = measure_base(model, benchmark=benchmark, n=n, temperature=temperature, out=out)
    if card:
        purposes = {
            "base": "The lab's shipped base: it solves most problems but often breaks the rewarded format, like the "
                    "paper's base before RL.",
            "control": "The control base: always well formatted, on harder problems, so that RL with an "
                       "accuracy-only reward has correctness (not format) to gain.",
            "planted": "The planted organism: the shipped base pretrained on to convergence on the same mix, so it "
                       "computes almost every answer right but still breaks the rewarded format; all GRPO can "
                       "teach it is the format, the ground truth for `tina-probe lab validate`.",
        }
        purpose = purposes.get(model.resolve().name, purposes["base" if benchmark == "lab-test" else "control"])
        typer.echo(f"model card: {write_model_card(model, result, title=card, purpose=purpose, benchmark=benchmark)}")


@lab_app.command("real-base")
@user_errors
def lab_real_base(name: str = typer.Option("smollm2-135m-instruct", "--name", help="a known real base"),
                  rebuild: bool = typer.Option(False, "--rebuild", help="convert again even if the cached copy is sound"),
                  gguf: Optional[Path] = typer.Option(None, "--gguf", help="convert this GGUF file instead (needs --out)"),
                  out: Optional[Path] = typer.Option(None, "--out", help="new folder for --gguf")):
    """Fetch and convert a real pretrained base into the cache (recipes name it real:NAME); print its folder."""
    from tina_probe.real.models import ensure_base, import_gguf

    if gguf is not None:
        if out is None:
            raise TinaError(f"{gguf}: --gguf needs --out DIR (a new folder to write the model into)")
        typer.echo(import_gguf(gguf, out))
        return
    typer.echo(ensure_base(name, rebuild=rebuild, progress=lambda m: typer.echo(m, err=True)))


@lab_app.command("real-task")
@user_errors
def lab_real_task(measure: bool = typer.Option(False, "--measure", help="sample every task candidate on the real "
                                               "base; write data/real/<base>.measure.json and its model card"),
                  write: bool = typer.Option(False, "--write", help="write the chosen task's splits to data/real/"),
                  name: str = typer.Option("smollm2-135m-instruct", "--name", help="the real base to measure"),
                  n_problems: int = typer.Option(64, "--problems"), n: int = typer.Option(4, "--n"),
                  max_tokens: int = typer.Option(64, "--max-tokens"),
                  tasks: Optional[list[str]] = typer.Option(None, "--task", help="measure only these task candidates "
                                                            "(repeatable) [default: all]"),
                  instructions: Optional[list[str]] = typer.Option(None, "--instruction", help="measure only these "
                                                                   "instructions (repeatable) [default: all]")):
    """The real base's RL task: measure the candidates (--measure) and/or rewrite the shipped splits (--write)."""
    if not (measure or write):
        raise TinaError("lab real-task: say --measure, --write or both")
    if write:
        from tina_probe.real.tasks import write_task_data

        for split, path in write_task_data().items():
            typer.echo(f"{split}: {path}")
    if measure:
        from tina_probe.real.measure import measure_and_record
        from tina_probe.real.tasks import INSTRUCTIONS, candidate

        for task in tasks or []:
            candidate(task)  # an unknown name is one line before the base loads
        unknown = [i for i in instructions or [] if i not in INSTRUCTIONS]
        if unknown:
            raise TinaError(f"lab real-task: unknown instruction {unknown[0]!r} (known: {', '.join(INSTRUCTIONS)})")
        measure_and_record(name, n_problems=n_problems, n=n, max_tokens=max_tokens, tasks=tasks or None,
                           instructions=instructions or None)


def main() -> None:  # pragma: no cover - console entry
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
