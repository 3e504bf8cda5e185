"""One switch back to the code paths as they were before the speed work (issue 22), read here and nowhere else.

`benchmarks/bench_study.py --before` sets it so the old and new paths are timed side by side in one run; tests set
it to check that a fast path gives the same results as the reference path it replaces."""

from __future__ import annotations

import os

ENV = "TINA_PROBE_SLOW_PATHS"


def slow_paths() -> bool:
    """True when TINA_PROBE_SLOW_PATHS=1: math-verify grades every answer (grading), resume keys read each
    checkpoint's file identity again (runs.checkpoint_identity), and retention runs lm-eval's environment report
    (`pip list`) on every call, the base's forward on the reference text and on its own task completions for every
    checkpoint, and the same forward twice where the checkpoint is the base (analysis.retention); RL's Razor
    bootstraps call spearmanr once per resample (analysis.razor); training scores every position through TRL's LM
    head on CPU, not only the completions, and samples with generate, every row to the end (train.grpo); eval
    prefills every row, not each distinct prompt once (generate.decode); the lab
    starts each child as a subprocess that imports everything itself, not forked from the preloaded server
    (lab.workers, lab.forked)."""
    return os.environ.get(ENV, "") == "1"
