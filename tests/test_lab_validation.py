"""The hypothesis test validated on real lab runs (reduced): GRPO on the planted organism, which can only learn
the format, must read "supported"; GRPO with an accuracy-only reward on the well-formatted control must read
"not supported". Trains both (60 steps each, side by side), evaluates, runs phase / hypothesis / report:
about 5 minutes on 2 cores, the slowest test in the suite on purpose (it is the method's ground truth)."""

import pandas as pd
import pytest

from tina_probe.lab.study import ROOT, run_lab
from tina_probe.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    for base in ("data/lab/planted", "data/lab/control"):
        if not (ROOT / base / "model.safetensors").is_file():
            pytest.skip(f"{base} is not shipped in this checkout")
    root = tmp_path_factory.mktemp("validate")
    run_lab(out=root / "results", runs_root=root / "runs", plan_name="validate", eval_limit=48)
    return root / "results"  # written where asked (no validate/ subfolder under an explicit --out)


def _verdict(hyp: pd.DataFrame, run: str, claim: str) -> pd.Series:
    rows = hyp[(hyp["run"] == run) & (hyp["claim"] == claim)]
    assert len(rows) == 1, (run, claim, hyp[["run", "claim", "verdict"]])
    return rows.iloc[0]


def test_planted_runs_read_supported(validation):
    hyp = Store(validation).read("hypothesis")
    overall = _verdict(hyp, "lab-planted-validate", "format_adaptation")
    assert overall["verdict"] == "supported", overall["detail"]
    gd = _verdict(hyp, "lab-planted-validate", "gain_decomposition")
    assert gd["ci_low"] > 0.5  # the format part carries the strict gain
    assert _verdict(hyp, "lab-planted-validate", "format_first")["verdict"] == "supported"
    kept = hyp[(hyp["run"] == "lab-planted-validate") & (hyp["claim"] == "knowledge_kept")]
    assert len(kept) and (kept["verdict"] != "not supported").all()


def test_control_runs_read_not_supported(validation):
    hyp = Store(validation).read("hypothesis")
    overall = _verdict(hyp, "lab-control-validate", "format_adaptation")
    assert overall["verdict"] == "not supported", overall["detail"]
    assert "no format transition" in _verdict(hyp, "lab-control-validate", "format_first")["detail"]


def test_report_shows_both_conditions(validation):
    text = (validation / "report" / "report.md").read_text()
    for run in ("lab-planted-validate", "lab-control-validate"):
        assert f"| {run} | format_adaptation" in text
    summary = Store(validation).read("phase_summary").set_index("run")
    assert summary.loc["lab-planted-validate", "transition_metric"] in ("format_rate", "format_reward")
