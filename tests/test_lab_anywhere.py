"""`tina-probe lab --quick` run from a folder outside the repository, with relative --out and --runs: everything
lands under the user's folder, exactly where asked, and the summary printed to a pipe is whole (issue 15)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tina_probe.console import plain_table
from tina_probe.lab.study import ROOT, study_folders

pytestmark = pytest.mark.slow


def test_study_folders_are_absolute_and_exactly_as_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert study_folders("quick", Path("rel"), Path("r")) == (tmp_path / "rel", tmp_path / "r")
    assert study_folders("quick", None, None) == (tmp_path / "results" / "quick", tmp_path / "runs" / "quick")
    assert study_folders("full", None, None) == (tmp_path / "results", tmp_path / "runs")
    assert study_folders("validate", None, Path("x")) == (tmp_path / "results" / "validate", tmp_path / "x")


def test_plain_table_keeps_every_cell_whole():
    row = ("lab-lora-r8-quick-with-a-long-name", "lora", "18.2%", "16", "60.2% [52.0%, 68.3%]", "86.0%",
           "86 [30, 90]", "not supported")
    text = plain_table("title", ("run", "kind", "a", "b", "c", "d", "e", "format adaptation"), [row])
    assert "| " + " | ".join(row) + " |" in text.splitlines()


def test_quick_study_from_another_folder(tmp_path):
    user = tmp_path / "elsewhere"
    user.mkdir()
    repo_runs_before = sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "tina_probe.cli", "lab", "--quick", "--out", "rel", "--runs", "relruns"],
                          cwd=user, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for run in ("lab-lora-r8-quick", "lab-full-quick"):
        assert sorted((user / "relruns" / run).glob("checkpoint-*")), f"no checkpoints of {run} under the user's folder"
    store = user / "rel"
    for table in ("samples", "passk", "format", "phases", "retention", "hypothesis"):
        assert (store / f"{table}.parquet").is_file(), table
    assert not (store / "quick").exists()  # written where asked, not in a subfolder
    passk = pd.read_parquet(store / "passk.parquet")
    assert set(passk["run"]) == {"lab-lora-r8-quick", "lab-full-quick"}
    assert (passk["step"] == 0).any() and (passk["step"] == 16).any()
    # nothing went to the repository's own runs folder
    assert (sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []) == repo_runs_before
    # stdout is a pipe: the summary is a plain table with whole run names and verdicts, not cut at 80 columns
    summary = proc.stdout.split("tina-probe lab: best checkpoint per run")[-1]
    lines = [line for line in summary.splitlines() if line.startswith("| lab-")]
    assert {line.split(" | ")[0][2:] for line in lines} == {"lab-lora-r8-quick", "lab-full-quick"}
    hyp = pd.read_parquet(store / "hypothesis.parquet")
    verdicts = dict(hyp[hyp.claim == "format_adaptation"][["run", "verdict"]].values)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[-1] == verdicts[cells[0]]
    assert "results -> " + str(store) in proc.stdout
    shown = proc.stdout + proc.stderr
    for library_output in ("Loading weights", "Running loglikelihood requests", "not a git repository"):
        assert library_output not in shown  # no library bars (transformers, lm-eval) or git noise inside ours
