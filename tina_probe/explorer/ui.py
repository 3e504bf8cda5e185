"""Streamlit glue shared by the explorer's pages: the session's store, guidance, tables and figures with
download buttons. Everything here only reads the store folder the app was started on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from tina_probe.explorer import figures, tables
from tina_probe.explorer.paths import safe_name
from tina_probe.explorer.summaries import filter_rows

CTX_KEY = "tina_probe_explorer_context"


@dataclass(frozen=True)
class Context:
    """What every page needs: the results root, the store read, and the sidebar's global choices."""

    root: Path
    store: Path
    benchmark: str | None = None
    sampling: str | None = None


def set_context(ctx: Context) -> None:
    """Remember this run's context for the page script that runs next."""
    st.session_state[CTX_KEY] = ctx


def context() -> Context:
    """This session's context (set by streamlit_app.py before the page runs)."""
    ctx = st.session_state.get(CTX_KEY)
    if ctx is None:
        st.error("Open the explorer through `tina-probe app` (streamlit_app.py sets up the results folder).")
        st.stop()
    return ctx


def load(name: str, ctx: Context | None = None, *, scoped: bool = True) -> tables.Loaded:
    """A table of the store, narrowed to the sidebar's benchmark and sampling when it has those columns."""
    ctx = ctx or context()
    got = tables.load_table(ctx.store, name)
    if not scoped or not got.ok:
        return got
    df = filter_rows(got.df, benchmark=ctx.benchmark, sampling=ctx.sampling).reset_index(drop=True)
    return tables.Loaded(got.name, df, got.status if not df.empty else "filtered", got.message, got.stamp)


def guidance(name: str) -> str:
    """The command that fills a table."""
    return f"run `{tables.FILLS.get(name, tables.EVAL)}` (or `{tables.LAB}` for the whole study on the lab organism)"


def need(*loaded: tables.Loaded, what: str = "this section") -> bool:
    """True when every table has rows; otherwise shows which command fills the missing ones and returns False."""
    ok = True
    for got in loaded:
        if got.ok:
            continue
        ok = False
        if got.status == "missing":
            st.info(f"No `{got.name}` table in the store yet, so {what} is empty: {guidance(got.name)}.")
        elif got.status == "bad":
            st.warning(f"The `{got.name}` table cannot be used ({got.message}); rerun "
                       f"`{tables.FILLS.get(got.name, tables.EVAL)}` to rewrite it.")
        elif got.status == "empty":
            st.info(f"The `{got.name}` table has no rows yet, so {what} is empty: {guidance(got.name)}.")
        else:
            st.info(f"The `{got.name}` table has no rows for the benchmark / sampling chosen in the sidebar, so "
                    f"{what} is empty: {guidance(got.name)} with them.")
    return ok


def show_table(df: pd.DataFrame, name: str, *, styled=None, height: int | str = "auto") -> None:
    """A table with a CSV download button for exactly the rows shown."""
    st.dataframe(styled if styled is not None else df, hide_index=True, height=height)
    st.download_button("Download CSV", df.to_csv(index=False).encode("utf-8"), file_name=f"{safe_name(name)}.csv",
                       mime="text/csv", key=f"csv-{name}", on_click="ignore")


@st.cache_data(show_spinner=False, max_entries=256)
def render_png(builder: str, args: tuple, kwargs: dict) -> bytes:
    """PNG bytes of figures.<builder>(*args, **kwargs), cached on the inputs so reruns skip the drawing."""
    return figures.png_bytes(getattr(figures, builder)(*args, **kwargs))


def show_figure(name: str, caption: str, builder: str, *args, **kwargs) -> None:
    """A figure (built by figures.<builder>) as a PNG image, caption = its title, with a PNG download button."""
    png = render_png(builder, args, kwargs)
    st.image(png, caption=caption, width="stretch")
    st.download_button("Download PNG", png, file_name=f"{safe_name(name)}.png", mime="image/png",
                       key=f"png-{name}", on_click="ignore")


def choose(label: str, values: list, key: str, default=None, **kw):
    """A selectbox over `values` (None when empty), starting at `default` when it is one of them."""
    if not values:
        return None
    index = values.index(default) if default in values else 0
    return st.selectbox(label, values, index=index, key=key, **kw)
