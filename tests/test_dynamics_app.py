"""The explorer's Series dynamics page and the Runs page's held-out selection, driven with streamlit's AppTest over
a store with a held-out benchmark and the `tina-probe dynamics` tables; plus the page's pure views."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tina_probe.explorer import dynamics_view as dv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_results import write_dynamics_store  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
PAGE = "tina_probe/explorer/pages/dynamics.py"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_dynamics_store(tmp_path_factory.mktemp("results"))


def open_page(monkeypatch, out: Path, page: str | None = PAGE, benchmark: str | None = "lab-test") -> AppTest:
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--out", str(out)])
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    if benchmark is not None and any(s.key == "global_benchmark" for s in at.selectbox):
        at.selectbox(key="global_benchmark").set_value(benchmark).run()
    if page is not None and not at.exception:
        at.switch_page(page).run()
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def captions(at: AppTest) -> list[str]:
    return [c for im in at.image for c in im.captions]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


def test_page_draws_every_section(monkeypatch, store):
    at = open_page(monkeypatch, store)
    assert_clean(at)
    assert texts(at.title) == ["Series dynamics"]
    shown = captions(at)
    assert len(shown) == 6, shown  # heatmap, crossover, maj@k, support, G-Pass@k, training dynamics
    assert any("per problem and step" in c for c in shown) and any("k* dashed" in c for c in shown)
    assert any("maj@k" in c for c in shown) and any("training dynamics" in c for c in shown)
    assert any("support vs the base" in c for c in shown) and any("G-Pass@" in c for c in shown)
    assert sum(b.label == "Download PNG" for b in at.download_button) == 6
    assert sum(b.label == "Download CSV" for b in at.download_button) == len(at.dataframe)
    # the crossover line shows the stored k* of the chosen run, step and grading
    cross = pd.read_parquet(store / "crossover.parquet")
    run, step = at.selectbox(key="dy_run").value, at.selectbox(key="dy_step").value
    row = cross[(cross.run == run) & (cross.step == step) & (cross.grading == "strict")
                & (cross.benchmark == "lab-test")].iloc[0]
    k = "beyond n" if pd.isna(row.k_star) else str(int(row.k_star))
    assert any(f"k\\* = {k}**" in m for m in texts(at.markdown))


def test_label_filter_and_sort_follow_the_choice(monkeypatch, store):
    at = open_page(monkeypatch, store)
    dyn = pd.read_parquet(store / "problem_dynamics.parquet")
    run = at.selectbox(key="dy_run").value
    mine = dyn[(dyn.run == run) & (dyn.grading == "strict") & (dyn.benchmark == "lab-test")]
    table = next(d.value for d in at.dataframe if "problem_id" in d.value.columns and "label" in d.value.columns)
    assert sorted(table["problem_id"]) == sorted(mine["problem_id"])
    order = [dv.LABEL_ORDER.index(lab) for lab in table["label"]]
    assert order == sorted(order)  # sorted by label
    keep = mine["label"].value_counts().index[0]
    at.multiselect(key="dy_labels").set_value([keep]).run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "problem_id" in d.value.columns and "label" in d.value.columns)
    assert set(table["label"]) == {keep} and len(table) == int((mine["label"] == keep).sum())
    at.selectbox(key="dy_sort").set_value("base_rate").run()
    table = next(d.value for d in at.dataframe if "problem_id" in d.value.columns and "label" in d.value.columns)
    assert list(table["base_rate"]) == sorted(table["base_rate"], reverse=True)


def test_runs_page_shows_the_held_out_choice(monkeypatch, store):
    at = open_page(monkeypatch, store, page=None)
    assert_clean(at)
    sel = pd.read_parquet(store / "selection.parquet")
    shown = next(d.value for d in at.dataframe if "selected_on" in d.value.columns)
    assert shown.set_index("run")["selected_step"].to_dict() == sel.set_index("run")["selected_step"].to_dict()
    assert set(shown["selected_on"]) == {"lab-probe"} and set(shown["benchmark"]) == {"lab-test"}


def test_empty_store_names_the_command(monkeypatch, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    at = open_page(monkeypatch, out, benchmark=None)
    assert_clean(at)
    assert texts(at.title) == ["Series dynamics"]
    assert "tina-probe dynamics" in " ".join(texts(at.info)) and not captions(at)


def test_rate_grid_is_the_share_of_correct_samples_in_label_order():
    samples = pd.DataFrame({"run": "r", "step": [0, 0, 10, 10] * 2, "problem_id": ["a"] * 4 + ["b"] * 4,
                            "correct_strict": [1, 0, 1, 1, 0, 0, 0, 0]})
    dyn = pd.DataFrame({"run": "r", "grading": "strict", "problem_id": ["a", "b"], "label": ["learned", "forgotten"],
                        "base_rate": [0.5, 0.0], "final_rate": [1.0, 0.0]})
    grid, labels = dv.rate_grid(samples, dyn, "r", "strict")
    assert list(grid.index) == ["a", "b"] and grid.loc["a"].tolist() == [0.5, 1.0]
    assert list(labels) == ["learned", "forgotten"]
    grid, labels = dv.rate_grid(samples, dyn, "r", "strict", labels=["forgotten"])
    assert list(grid.index) == ["b"]
