"""Study folders resolved from the user's folder, and the plain summary table (issue 15). The whole study run from a
folder outside the repository is tested in test_lab_validation.py (`lab validate`, whose study the ground-truth
tests share)."""
from __future__ import annotations

from pathlib import Path

from tina_probe.console import plain_table
from tina_probe.lab.study import study_folders


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
