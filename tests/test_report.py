"""The report: a markdown file whose figures exist, and sections that name the command for a missing table."""

import re

from analysis.dynamics import run_dynamics
from analysis.hypothesis import run_hypothesis
from analysis.phase import run_phase
from analysis.rules import VerdictRules
from analysis.report import write_report
from analysis.simulate import write_planted_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _planted_retention(out) -> None:
    """Retention rows for every checkpoint of the store's runs: task KL (both directions) growing with the step and
    a facts accuracy falling with it, so that dynamics writes razor rows and their points."""
    import pandas as pd

    from tina_probe.store import Store

    store = Store(out)
    steps = store.read("passk")[["run", "step", "kind"]].drop_duplicates()
    rows = []
    for r in steps.itertuples():
        kl = 0.01 * r.step
        rows += [{"run": r.run, "step": r.step, "kind": r.kind, "probe": "kl_task", "metric": m, "value": kl,
                  "stderr": 0.001} for m in ("kl", "kl_forward")]
        rows.append({"run": r.run, "step": r.step, "kind": r.kind, "probe": "facts", "metric": "acc",
                     "value": 0.9 - kl, "stderr": 0.01})
    store.write("retention", pd.DataFrame(rows))


def test_report_on_the_planted_study_links_real_figures(tmp_path):
    run_dirs = write_planted_study(tmp_path, seed=1, n_problems=80, n_boot=50)
    out = tmp_path / "results"
    run_phase([str(d) for d in run_dirs], out, n_boot=20)
    run_hypothesis(out, rules=VerdictRules(n_boot=100))
    _planted_retention(out)
    run_dynamics(out, n_boot=50)
    md_path = write_report(out)
    assert md_path == out / "report" / "report.md"
    text = md_path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(images) == {"training_curves.png", "pass1.png", "format_rate.png", "gain_decomposition.png",
                           "support.png", "gpassk.png", "razor.png"}  # no weights here: no Path-Not-Taken figure
    assert "No Path-Not-Taken columns in `spectra`" in text
    for name in images:
        data = (md_path.parent / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert "| planted | format_adaptation" in text and "failed" not in text
    assert "No `" not in text  # every table was there


def test_report_on_an_empty_store_says_what_to_run(tmp_path):
    md_path = write_report(tmp_path)
    text = md_path.read_text()
    for cmd in ("tina-probe hypothesis", "tina-probe phase --runs runs/*", "tina-probe eval --ckpts runs/*"):
        assert cmd in text
    assert "![" not in text
    assert list((tmp_path / "report").glob("*.png")) == []
