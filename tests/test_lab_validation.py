"""The hypothesis test validated on real lab runs (reduced): GRPO on the planted organism, which can only learn
the format, must read "supported"; GRPO with an accuracy-only reward on the well-formatted control must read
"not supported". Trains both (60 steps each, side by side), evaluates, runs phase / hypothesis / report: the
slowest test in the suite on purpose (it is the method's ground truth).

The study runs as a user runs it: `tina-probe lab validate` in a subprocess, from a folder outside the repository,
with relative --out and --runs (issue 15: everything lands under the user's folder, exactly where asked, and the
summary printed to a pipe is whole). One study serves both checks; a second one (`lab --quick`) would add minutes to
the suite and test the same path."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from tina_probe.lab.study import ROOT
from tina_probe.store import Store

pytestmark = pytest.mark.slow

RUNS = ("lab-planted-validate", "lab-control-validate")


def _repo_runs() -> list:
    """What the repository's own runs/ folder holds (the study must add nothing there)."""
    return sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    """`tina-probe lab validate --limit 48 --out rel --runs relruns`, run from a temporary folder."""
    for base in ("data/lab/planted", "data/lab/control"):
        if not (ROOT / base / "model.safetensors").is_file():
            pytest.skip(f"{base} is not shipped in this checkout")
    user = tmp_path_factory.mktemp("elsewhere")
    repo_runs_before = _repo_runs()
    env = dict(os.environ, COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "tina_probe.cli", "lab", "validate", "--limit", "48",
                           "--out", "rel", "--runs", "relruns"],
                          cwd=user, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return SimpleNamespace(user=user, store=user / "rel", proc=proc, repo_runs_before=repo_runs_before,
                           repo_runs_after=_repo_runs())


def _verdict(hyp: pd.DataFrame, run: str, claim: str) -> pd.Series:
    rows = hyp[(hyp["run"] == run) & (hyp["claim"] == claim)]
    assert len(rows) == 1, (run, claim, hyp[["run", "claim", "verdict"]])
    return rows.iloc[0]


def test_planted_runs_read_supported(validation):
    hyp = Store(validation.store).read("hypothesis")
    overall = _verdict(hyp, "lab-planted-validate", "format_adaptation")
    assert overall["verdict"] == "supported", overall["detail"]
    gd = _verdict(hyp, "lab-planted-validate", "gain_decomposition")
    assert gd["ci_low"] > 0.5  # the format part carries the strict gain
    assert _verdict(hyp, "lab-planted-validate", "format_first")["verdict"] == "supported"
    kept = hyp[(hyp["run"] == "lab-planted-validate") & (hyp["claim"] == "knowledge_kept")]
    assert len(kept) and (kept["verdict"] == "supported").all() and kept["detail"].str.contains("paired over").all()


def test_control_runs_read_not_supported(validation):
    hyp = Store(validation.store).read("hypothesis")
    overall = _verdict(hyp, "lab-control-validate", "format_adaptation")
    assert overall["verdict"] == "not supported", overall["detail"]
    ff = _verdict(hyp, "lab-control-validate", "format_first")
    assert ff["verdict"] != "supported", ff["detail"]  # the control's format was good from the start
    assert "correctness carries the gain" in _verdict(hyp, "lab-control-validate", "gain_decomposition")["detail"]


def test_report_shows_both_conditions(validation):
    store = validation.store
    text = (store / "report" / "report.md").read_text()
    for run in RUNS:
        assert f"| {run} | format_adaptation" in text
    summary = Store(store).read("phase_summary").set_index("run")
    assert summary.loc["lab-planted-validate", "transition_metric"] in ("format_rate", "format_reward")


def test_study_from_another_folder_writes_where_asked(validation):
    for run in RUNS:
        assert sorted((validation.user / "relruns" / run).glob("checkpoint-*")), f"no checkpoints of {run} there"
    store = validation.store
    for table in ("samples", "passk", "format", "phases", "retention", "hypothesis"):
        assert (store / f"{table}.parquet").is_file(), table
    assert not (store / "validate").exists()  # written where asked, not in a subfolder
    passk = pd.read_parquet(store / "passk.parquet")
    assert set(passk["run"]) == set(RUNS)
    assert (passk["step"] == 0).any() and (passk["step"] == 60).any()
    assert validation.repo_runs_after == validation.repo_runs_before  # nothing in the repository's own runs/
    share = max(1, (os.cpu_count() or 2) // 2)  # two runs side by side split the cores (forked children too)
    for run in RUNS:
        assert json.loads((validation.user / "relruns" / run / "tina_run.json").read_text())["torch_threads"] == share
    assert "results -> " + str(store) in validation.proc.stdout


def test_summary_to_a_pipe_is_a_whole_plain_table(validation):
    """stdout is a pipe: the summary is a plain table with whole run names and verdicts, not cut at 80 columns;
    no library progress bars or git noise inside ours."""
    proc = validation.proc
    summary = proc.stdout.split("tina-probe lab: best checkpoint per run")[-1]
    lines = [line for line in summary.splitlines() if line.startswith("| lab-")]
    assert {line.split(" | ")[0][2:] for line in lines} == set(RUNS)
    hyp = pd.read_parquet(validation.store / "hypothesis.parquet")
    verdicts = dict(hyp[hyp.claim == "format_adaptation"][["run", "verdict"]].values)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == verdicts[cells[0]]
    shown = proc.stdout + proc.stderr
    for library_output in ("Loading weights", "Running loglikelihood requests", "not a git repository"):
        assert library_output not in shown
