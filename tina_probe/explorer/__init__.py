"""The explorer's helpers: safe paths, cached table loading, pure summaries and figure builders.

They read the store's parquet tables only (never train/ or analysis/), so the Streamlit face stays thin.
"""
