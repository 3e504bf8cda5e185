"""The explorer (streamlit_app.py) driven with streamlit's AppTest over a fixture store, an empty store and
hostile paths; plus its pure helpers (paths, cached loading, highlighting, summaries)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from tina_probe.explorer.highlight import escape
from streamlit.testing.v1 import AppTest

from tina_probe.errors import TinaError
from tina_probe.explorer import highlight, summaries, tables
from tina_probe.explorer.paths import parse_app_args, resolve_inside, store_dir
from tina_probe.explorer.report import is_remote, split_images
from tina_probe.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_results import write_results_store  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
PAGES = {"runs": "Runs", "phases": "Phase transitions", "passk": "pass@k", "spectra": "Spectra",
         "retention": "Retention", "hypothesis": "Hypothesis"}
FILLED_BY = {"runs": "tina-probe eval --ckpts runs/*", "phases": "tina-probe eval --ckpts runs/*",
             "passk": "tina-probe eval --ckpts runs/*", "spectra": "tina-probe spectra --ckpts runs/*",
             "retention": "tina-probe retention --ckpts runs/*", "hypothesis": "tina-probe hypothesis"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The two-run fixture store, written once for the module."""
    return write_results_store(tmp_path_factory.mktemp("results"))


def open_page(monkeypatch, out: Path, page: str = "runs", *args: str, query: dict | None = None) -> AppTest:
    """Run the app on `out` (as `tina-probe app` would start it) and open one page."""
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--out", str(out), *args])
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.query_params.update(query or {})
    at.run()
    if page != "runs" and not at.exception:
        at.switch_page(f"tina_probe/explorer/pages/{page}.py").run()
    return at


def texts(elements) -> list[str]:
    """The text values of a list of AppTest elements."""
    return [e.value for e in elements]


def captions(at: AppTest) -> list[str]:
    """Captions of every image on the page (figure titles)."""
    return [c for im in at.image for c in im.captions]


def labels(at: AppTest, label: str) -> int:
    """How many download buttons carry a label."""
    return sum(b.label == label for b in at.download_button)


def completions(at: AppTest) -> list[str]:
    """The highlighted completion blocks shown on the phases page."""
    return [m.value for m in at.markdown if "tp-completion" in m.value]


def assert_clean(at: AppTest) -> None:
    """No traceback and no error box."""
    assert not at.exception, texts(at.exception)
    assert not at.error, texts(at.error)


# ----------------------------------------------------------------------------- every page over the fixture


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_draws_over_the_fixture(monkeypatch, store, page):
    at = open_page(monkeypatch, store, page)
    assert_clean(at)
    assert not at.warning or page == "hypothesis", texts(at.warning)
    assert texts(at.title) == [PAGES[page]]
    figures_shown = [c for c in captions(at) if c != "pass@1"]  # the report's own figure has no download
    assert figures_shown, "no figure on the page"
    assert labels(at, "Download PNG") == len(figures_shown)
    assert labels(at, "Download CSV") == len(at.dataframe) >= 1


def test_runs_page_names_the_best_checkpoint_from_the_samples(monkeypatch, store):
    at = open_page(monkeypatch, store)
    overview = at.dataframe[0].value.set_index("run")
    samples = pd.read_parquet(store / "samples.parquet")
    for run, g in samples[samples["step"] > 0].groupby("run"):
        strict = g.groupby("step")["correct_strict"].mean()  # equal samples per problem: pass@1 = sample mean
        best = int(strict[strict == strict.max()].index.min())
        assert overview.loc[run, "best_step"] == best
        assert overview.loc[run, "strict_pass1_best"] == pytest.approx(strict.max())
        assert overview.loc[run, "kind"] == {"lab-lora-r8": "lora", "lab-full": "full"}[run]
        assert overview.loc[run, "steps"] == "0, 10, 20, 30"
    assert {m.label.split(" ")[0] for m in at.metric} == {"lab-full", "lab-lora-r8"}


def test_step_slider_changes_the_completions_shown(monkeypatch, store):
    at = open_page(monkeypatch, store, "phases")
    slider = at.select_slider(key="ph_step_lab-full")
    assert slider.value == 0
    before = completions(at)
    assert len(before) == 6
    slider.set_value(30).run()
    assert_clean(at)
    after = completions(at)
    assert after != before
    assert any("at step 30**: 32 samples" in m for m in texts(at.markdown))
    samples = pd.read_parquet(store / "samples.parquet")
    shown = samples[(samples["run"] == "lab-full") & (samples["step"] == 30)].sort_values(
        ["problem_id", "sample_idx"]).head(6)
    assert sum("strict ✓" in m for m in texts(at.markdown) if "tp-header" in m) == int(shown["correct_strict"].sum())
    assert all("tp-think_close" in c for c, wf in zip(after, shown["well_formatted"]) if wf)


def test_phases_page_places_the_best_checkpoint(monkeypatch, store):
    at = open_page(monkeypatch, store, "phases")
    assert_clean(at)
    assert "Best checkpoint vs the transitions" in texts(at.subheader)
    shown = [d.value for d in at.dataframe if "lag_steps" in d.value.columns]
    assert len(shown) == 1 and set(shown[0]["run"]) == {"lab-full", "lab-lora-r8"}
    summary = pd.read_parquet(store / "phase_summary.parquet").set_index("run")
    assert (shown[0].set_index("run")["lag_steps"] == summary["lag_steps"]).all()


def test_grade_filter_shows_only_matching_completions(monkeypatch, store):
    at = open_page(monkeypatch, store, "phases")
    at.select_slider(key="ph_step_lab-full").set_value(30)
    at.selectbox(key="ph_show").set_value("strict correct").run()
    headers = [m for m in texts(at.markdown) if "tp-header" in m]
    assert headers and all("strict ✓" in h for h in headers)
    at.selectbox(key="ph_show").set_value("wrong").run()
    headers = [m for m in texts(at.markdown) if "tp-header" in m]
    assert all("strict ✗" in h and "lenient ✗" in h for h in headers)


def test_choosing_a_metric_changes_the_heatmap(monkeypatch, store):
    at = open_page(monkeypatch, store, "spectra")
    assert captions(at)[0].startswith("effective_rank · lab-full")
    at.selectbox(key="sp_metric").set_value("stable_rank").run()
    assert_clean(at)
    assert captions(at)[0] == "stable_rank · lab-full (full) · step 30"
    spectra = pd.read_parquet(store / "spectra.parquet")
    want = spectra[(spectra["run"] == "lab-full") & (spectra["step"] == 30)].pivot(
        index="layer", columns="module", values="stable_rank")
    got = at.dataframe[0].value.set_index("layer")[want.columns]
    pd.testing.assert_frame_equal(got, want, check_names=False)
    at.selectbox(key="sp_run").set_value("lab-lora-r8").run()
    assert captions(at)[0] == "stable_rank · lab-lora-r8 (lora) · step 30"


def test_grading_choice_changes_the_passk_curves(monkeypatch, store):
    at = open_page(monkeypatch, store, "passk")
    assert captions(at)[0].startswith("strict pass@k")
    at.radio(key="pk_grading").set_value("lenient").run()
    assert captions(at)[0].startswith("lenient pass@k")
    wide = at.dataframe[0].value.set_index(["run", "step"])
    samples = pd.read_parquet(store / "samples.parquet")
    lenient = samples[(samples["run"] == "lab-lora-r8") & (samples["step"] == 30)]["correct_lenient"].mean()
    assert wide.loc[("lab-lora-r8", 30), "pass@1"] == pytest.approx(lenient)
    assert sorted(wide.index.get_level_values("step").unique()) == [0, 20, 30]  # base, best steps, last


def test_retention_scatter_follows_the_chosen_probe(monkeypatch, store):
    at = open_page(monkeypatch, store, "retention")
    assert captions(at)[1] == "strict pass@1 gain vs lab-facts / acc drop"
    pts = at.dataframe[1].value.set_index(["run", "step"])
    assert pts.loc[("lab-full", 30), "forgetting"] == pytest.approx(0.8 - (0.8 - 0.006 * 30))
    at.selectbox(key="rt_probe").set_value("lab-text / kl").run()
    assert_clean(at)
    assert captions(at)[1] == "strict pass@1 gain vs lab-text / kl rise"
    pts = at.dataframe[1].value.set_index(["run", "step"])
    assert pts.loc[("lab-full", 30), "forgetting"] == pytest.approx(0.006 * 30 * 2)  # KL rose from 0


def test_hypothesis_evidence_follows_the_claim(monkeypatch, store):
    at = open_page(monkeypatch, store, "hypothesis")
    table = at.dataframe[0].value
    assert len(table) == 10 and set(table["verdict"]) == {"supported", "not supported", "inconclusive"}
    # the headline is one overall verdict per run (format_adaptation), not a count of the 10 sub-claim rows
    overall = table[table["claim"] == "format_adaptation"]
    shown = " ".join(texts(at.markdown))
    for run, verdict in zip(overall["run"], overall["verdict"]):  # whole, with its reason: never "not suppo…"
        assert f"<b>{escape(run)}</b>: " in shown
        assert f">{escape(verdict)}</span> · {escape('not shown: lenient_kept')}" in shown
    assert escape("knowledge_kept supported") in shown
    at.selectbox(key="hy_claim").set_value("update_geometry").run()
    assert_clean(at)
    assert "evidence: intruders over modules at each run's last checkpoint" in captions(at)
    at.selectbox(key="hy_claim").set_value("format_first").run()
    assert any(c.startswith("evidence: format_rate change points") for c in captions(at))
    shown = " ".join(texts(at.markdown))
    assert "<b>not bold</b>" not in shown  # details are escaped, never raw HTML


def test_report_figures_come_only_from_inside_the_store(monkeypatch, store):
    at = open_page(monkeypatch, store, "hypothesis")
    assert "pass@1" in captions(at)  # report/pass1.png
    assert any("refused" in w for w in texts(at.warning))  # ../../../etc/passwd
    assert any("not shown" in c for c in texts(at.caption))  # the https image is never fetched


# ----------------------------------------------------------------------------- empty, partial, broken stores


@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.parametrize("which", ["empty", "missing"])
def test_empty_store_shows_guidance(monkeypatch, tmp_path, page, which):
    out = tmp_path / "results"
    if which == "empty":
        out.mkdir()
    at = open_page(monkeypatch, out, page)
    assert_clean(at)
    assert texts(at.title) == [PAGES[page]]
    guidance = " ".join(texts(at.info))
    assert FILLED_BY[page] in guidance
    assert not captions(at)


def test_partial_store_draws_what_it_has(monkeypatch, store, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    for name in ("samples", "passk", "format"):  # only `tina-probe eval` ran
        (out / f"{name}.parquet").write_bytes((store / f"{name}.parquet").read_bytes())
    for page, command in (("runs", None), ("phases", "tina-probe phase --runs runs/*"),
                          ("spectra", "tina-probe spectra --ckpts runs/*"), ("hypothesis", "tina-probe hypothesis"),
                          ("retention", "tina-probe retention --ckpts runs/*")):
        at = open_page(monkeypatch, out, page)
        assert_clean(at)
        if command:
            assert command in " ".join(texts(at.info) + texts(at.caption)), page
    at = open_page(monkeypatch, out, "phases")
    assert captions(at) and completions(at)  # eval curves and completions without training logs


def test_broken_tables_warn_instead_of_failing(monkeypatch, store, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "passk.parquet").write_bytes(b"not a parquet file")
    Store(out).write("format", pd.DataFrame({"run": ["a"], "value": [1.0]}))
    (out / "samples.parquet").write_bytes((store / "samples.parquet").read_bytes())
    at = open_page(monkeypatch, out, "runs")
    assert_clean(at)
    warnings = " ".join(texts(at.warning))
    assert "unreadable parquet" in warnings and "lacks columns" in warnings
    for page in ("passk", "phases", "retention"):
        at = open_page(monkeypatch, out, page)
        assert_clean(at)
    (out / "passk.parquet").write_bytes((store / "passk.parquet").read_bytes())
    Store(out).write("phases", pd.DataFrame(columns=["run", "metric", "change_step", "change_step_low",
                                                     "change_step_high"]))  # `phase` found nothing to analyse
    at = open_page(monkeypatch, out, "phases")
    assert_clean(at)
    assert any("`phases` table has no rows yet" in i for i in texts(at.info))


# ----------------------------------------------------------------------------- caches


def test_pages_show_new_numbers_after_the_store_changes(monkeypatch, store, tmp_path):
    out = tmp_path / "results"
    write_results_store(out)
    at = open_page(monkeypatch, out, "runs")
    assert set(at.dataframe[0].value["base"]) == {"data/lab/base"}
    runs = pd.read_parquet(out / "runs.parquet").assign(base="elsewhere/base-2")
    Store(out).write("runs", runs)
    at.run()
    assert set(at.dataframe[0].value["base"]) == {"elsewhere/base-2"}


def test_loader_reads_once_until_the_file_changes(monkeypatch, tmp_path):
    tables.clear_caches()
    reads = []
    real = tables.read_parquet_file
    monkeypatch.setattr(tables, "read_parquet_file", lambda p: reads.append(p) or real(p))
    Store(tmp_path).write("runs", pd.DataFrame({"run": ["a"], "kind": ["lora"]}))
    assert tables.load_table(tmp_path, "runs").df["kind"].tolist() == ["lora"]
    assert tables.load_table(tmp_path, "runs").df["kind"].tolist() == ["lora"]
    assert len(reads) == 1
    Store(tmp_path).write("runs", pd.DataFrame({"run": ["a"], "kind": ["full"]}))  # same size, new file
    assert tables.load_table(tmp_path, "runs").df["kind"].tolist() == ["full"]
    assert len(reads) == 2


def test_fingerprint_changes_with_mtime_even_at_equal_size(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"abcd")
    first = tables.fingerprint(path)
    path.write_bytes(b"wxyz")
    os.utime(path, ns=(first[0] + 10**9, first[0] + 10**9))
    assert tables.fingerprint(path) != first
    assert tables.fingerprint(tmp_path / "absent.parquet") is None


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("bad", ["..", "../", "../../etc", "/etc", "/", "sub/../../x", "~root"])
def test_store_query_param_outside_the_results_folder_is_refused(monkeypatch, store, bad):
    at = open_page(monkeypatch, store, query={"store": bad})
    assert not at.exception
    assert any("refused" in e for e in texts(at.error))
    assert not at.dataframe and not at.image and "Runs" not in texts(at.title)


def test_store_argument_outside_the_results_folder_is_refused(monkeypatch, store):
    at = open_page(monkeypatch, store, "runs", "--store", "../..")
    assert any("refused" in e for e in texts(at.error)) and not at.dataframe


def test_sub_store_inside_the_results_folder_is_read(monkeypatch, tmp_path):
    write_results_store(tmp_path / "results" / "quick")
    at = open_page(monkeypatch, tmp_path / "results", query={"store": "quick"})
    assert_clean(at)
    assert len(at.dataframe[0].value) == 2


def test_sub_store_is_kept_when_a_page_switch_drops_the_query(monkeypatch, tmp_path):
    write_results_store(tmp_path / "results" / "quick")
    at = open_page(monkeypatch, tmp_path / "results", query={"store": "quick"})
    assert at.query_params.get("store") == "quick"
    at.query_params.clear()
    at.switch_page("tina_probe/explorer/pages/passk.py").run()
    assert_clean(at)
    assert at.image and at.query_params.get("store") == "quick"


def test_table_symlinked_outside_the_store_is_not_read(monkeypatch, store, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    outside = tmp_path / "secret.parquet"
    Store(tmp_path).write("secret", pd.read_parquet(store / "passk.parquet"))
    (out / "passk.parquet").symlink_to(outside)
    got = tables.load_table(out, "passk")
    assert got.status == "bad" and "refused" in got.message and got.df.empty
    at = open_page(monkeypatch, out, "passk")
    assert_clean(at)
    assert any("refused" in w for w in texts(at.warning)) and not at.image


def test_resolve_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    assert resolve_inside(tmp_path, "sub/../a.parquet") == tmp_path.resolve() / "a.parquet"
    assert store_dir(tmp_path, "") == tmp_path.resolve()
    assert store_dir(tmp_path, "sub") == tmp_path.resolve() / "sub"
    (tmp_path / "sub" / "up").symlink_to(tmp_path.parent)
    for bad in ("../x", "/etc/passwd", str(tmp_path / "a"), "sub/../../x", "sub/up/x", "~/x", "a\x00b"):
        with pytest.raises(TinaError, match="refused"):
            resolve_inside(tmp_path, bad)


def test_parse_app_args_ignores_foreign_arguments(tmp_path):
    args = parse_app_args(["-q", "tests/x.py", "--out", str(tmp_path), "--store", "quick", "-k", "y"])
    assert args.out == tmp_path.resolve() and args.store == "quick"
    assert parse_app_args([]).out == Path("results").resolve()


# ----------------------------------------------------------------------------- highlighting and report


def test_segments_cover_the_text_and_find_format_parts():
    text = "<think>\n1/2 = \\frac{1}{2}\n</think>\n\\boxed{\\frac{1}{2}} and \\boxed{3"
    parts = highlight.segments(text)
    assert "".join(chunk for _, chunk in parts) == text
    assert [p for p, _ in parts if p != "text"] == ["think_open", "think_close", "boxed"]
    assert dict((p, c) for p, c in parts if p == "boxed")["boxed"] == "\\boxed{\\frac{1}{2}}"  # unclosed box: text


def test_completion_html_escapes_everything_but_its_own_markup():
    html = highlight.completion_html("<script>alert(1)</script> *a* $x$ `c` [l](u) \\boxed{5}\n</think>")
    for raw in ("<script", "</script", "*a*", "$x$", "`c`", "[l](u)", "\\"):
        assert raw not in html
    assert html.count("<span") == 2 and "tp-boxed" in html and "tp-think_close" in html and "<br>" in html


def test_report_images_are_split_out():
    parts = split_images("# R\n![a](fig.png)\ntext ![b]( <../x.png> )\n![c](https://e.com/x.png)")
    assert [(p[0], p[2]) for p in parts if p[0] == "image"] == [("image", "fig.png"), ("image", "../x.png"),
                                                                 ("image", "https://e.com/x.png")]
    assert is_remote("https://e.com/x.png") and is_remote("data:image/png;base64,x") and not is_remote("fig.png")


# ----------------------------------------------------------------------------- summaries


def test_best_checkpoint_prefers_the_earliest_of_ties():
    passk = pd.DataFrame({"run": ["r"] * 4, "step": [0, 10, 20, 30], "kind": ["base", "lora", "lora", "lora"],
                          "grading": "strict", "k": 1, "value": [0.9, 0.5, 0.7, 0.7]})
    best = summaries.best_checkpoints(passk)
    assert best.to_dict("records") == [{"run": "r", "best_step": 20, "best_strict": 0.7}]


def test_forgetting_sign_follows_the_metric():
    passk = pd.DataFrame({"run": "r", "step": [0, 10], "kind": ["base", "full"], "grading": "strict", "k": 1,
                          "value": [0.1, 0.4]})
    ret = pd.DataFrame({"run": "r", "step": [0, 10, 0, 10], "kind": ["base", "full"] * 2,
                        "probe": ["facts", "facts", "text", "text"], "metric": ["acc", "acc", "kl", "kl"],
                        "value": [0.8, 0.7, 0.0, 0.2]})
    acc = summaries.learning_vs_forgetting(passk, ret, "facts", "acc").iloc[0]
    kl = summaries.learning_vs_forgetting(passk, ret, "text", "kl").iloc[0]
    assert acc["strict_gain"] == pytest.approx(0.3)
    assert acc["forgetting"] == pytest.approx(0.1) and kl["forgetting"] == pytest.approx(0.2)


def test_intruder_columns_are_read_by_eps():
    df = pd.DataFrame({"run": ["a", "a"], "kind": "lora", "step": [10, 20], "intruders_eps03": [4, 6],
                       "intruders_eps09": [1, 2]})
    assert summaries.eps_columns(df) == {0.3: "intruders_eps03", 0.9: "intruders_eps09"}
    curves = summaries.intruder_curves(df, None)  # each run's last step
    assert curves[["step", "eps", "intruders"]].values.tolist() == [[20, 0.3, 6.0], [20, 0.9, 2.0]]


def test_sidebar_opens_on_every_runs_test_split():
    """lab-control's splits are *-hard: a sidebar opening on the first name (lab-probe) showed it empty."""
    import pandas as pd

    from tina_probe.explorer.summaries import TEST_SPLITS, benchmark_choices, filter_rows, phase_rows

    names = {"lab-probe", "lab-test", "lab-probe-hard", "lab-test-hard"}
    assert benchmark_choices(names) == [TEST_SPLITS, "lab-probe", "lab-probe-hard", "lab-test", "lab-test-hard"]
    assert benchmark_choices({"gsm8k"}) == ["gsm8k"]  # nothing held out: no extra choice
    df = pd.DataFrame({"run": ["r8", "r8", "control", "control"],
                       "benchmark": ["lab-test", "lab-probe", "lab-test-hard", "lab-probe-hard"]})
    assert set(filter_rows(df, benchmark=TEST_SPLITS)["benchmark"]) == {"lab-test", "lab-test-hard"}
    phases = pd.DataFrame({"metric": ["format_rate"] * 3, "benchmark": ["lab-test", "lab-probe", None],
                           "change_step": [10.0, 20.0, 30.0]})
    assert list(phase_rows(phases, "format_rate", TEST_SPLITS)["change_step"]) == [10.0, 30.0]
