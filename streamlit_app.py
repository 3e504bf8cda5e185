"""tina-probe explorer: a Streamlit face over one results store (read only, nothing heavy computed here).

Started by `tina-probe app` as `streamlit run streamlit_app.py ... -- --out RESULTS`; every file it opens is
resolved and checked to lie inside RESULTS. `?store=SUB` (or `--store SUB`) picks a sub-store inside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

import tina_probe.explorer as explorer
from tina_probe.errors import TinaError
from tina_probe.explorer import tables, ui
from tina_probe.explorer.paths import parse_app_args, store_dir
from tina_probe.explorer.summaries import benchmark_choices, options

PAGES_DIR = Path(explorer.__file__).resolve().parent / "pages"
PAGES = [  # file, title, url path, icon
    ("runs.py", "Runs", "runs", ":material/table_chart:"),
    ("phases.py", "Phase transitions", "phases", ":material/timeline:"),
    ("passk.py", "pass@k", "passk", ":material/stacked_line_chart:"),
    ("dynamics.py", "Series dynamics", "dynamics", ":material/swap_vert:"),
    ("spectra.py", "Spectra", "spectra", ":material/grid_on:"),
    ("retention.py", "Retention", "retention", ":material/psychology:"),
    ("hypothesis.py", "Hypothesis", "hypothesis", ":material/fact_check:"),
]


STORE_KEY = "tina_probe_sub_store"


def requested_store(default: str) -> str:
    """The sub-store asked for: `?store=` wins, then this session's earlier choice, then `--store`."""
    value = st.query_params.get("store")
    return str(value) if value is not None else st.session_state.get(STORE_KEY, default)


def remember_store(sub: str) -> None:
    """Keep an accepted sub-store for this session and in the URL (page switches drop query parameters)."""
    st.session_state[STORE_KEY] = sub
    if sub and st.query_params.get("store") != sub:
        st.query_params["store"] = sub


def sidebar_choice(label: str, values: list, key: str):
    """A sidebar selectbox when there is a choice to make; the only value (or None) otherwise."""
    if len(values) <= 1:
        return values[0] if values else None
    return st.sidebar.selectbox(label, values, key=key)


def main() -> None:
    """Resolve the store, set the sidebar's global choices, run the chosen page."""
    st.set_page_config(page_title="tina-probe explorer", page_icon=":material/biotech:", layout="wide")
    args = parse_app_args(sys.argv[1:])
    sub = requested_store(args.store)
    try:
        store = store_dir(args.out, sub)
    except TinaError as exc:
        st.title("tina-probe explorer")
        st.error(f"{exc}. The explorer only reads files inside {args.out}.")
        st.stop()
    remember_store(sub)
    bare = ui.Context(args.out, store)
    scope = [ui.load(t, bare, scoped=False).df for t in ("passk", "format")]
    if all(df.empty for df in scope):  # the samples table is the big one: read it only when the summaries are missing
        scope = [ui.load("samples", bare, scoped=False).df]
    # opens on every run's test split (a held-out split first in name order would leave runs without it empty)
    benchmarks = benchmark_choices({b for df in scope for b in options(df, "benchmark")})
    samplings = sorted({s for df in scope for s in options(df, "sampling")})
    st.sidebar.caption(f"Results store: `{store}`")
    benchmark = sidebar_choice("Benchmark", benchmarks, "global_benchmark")
    sampling = sidebar_choice("Sampling settings", samplings, "global_sampling")
    if st.sidebar.button("Reload tables", key="reload", help="tables reload by themselves when their files change"):
        tables.clear_caches()
    ui.set_context(ui.Context(root=args.out, store=store, benchmark=benchmark, sampling=sampling))
    pages = [st.Page(PAGES_DIR / f, title=t, url_path=u, icon=i) for f, t, u, i in PAGES]
    # Streamlit serves its default page at "/" only, so a default Runs page would make "/runs" "Page not found":
    # the root is a hidden page that forwards to Runs, and every page keeps its own name in the URL.
    root = st.Page(lambda: st.switch_page(pages[0], query_params=dict(st.query_params)), title=PAGES[0][1],
                   url_path="home", default=True, visibility="hidden")
    page = st.navigation([root, *pages], position="sidebar")
    try:
        page.run()
    except Exception as exc:  # a page bug must show as a message, not a traceback
        st.error(f"This page could not be drawn ({type(exc).__name__}: {exc}). The store may hold tables from "
                 "another version: rerun the command that writes them.")


main()
