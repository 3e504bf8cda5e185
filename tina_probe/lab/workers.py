"""`tina-probe` children run a few at a time, each on its share of the cores, with one progress bar each: the study's
training runs, and its eval, spectra and retention split into `--shard i/N` processes.

Why processes: at the lab's shapes a second torch thread buys little (per-op overhead, not arithmetic, is the cost),
while two one-thread processes keep both cores busy. Each child writes to its own log; a failed child stops the rest
and is named with its log's last lines.

Scheduling rules (run_children):
W1 Order: a child starts when its `after` children have all ended and its threads fit in what the running ones leave
   free, in the order listed (a study lists its children in priority order); a child whose `after` have ended but
   whose threads do not fit yet holds back those listed after it, so that a child on every core is not starved by
   one-thread children started before it.
W2 No idle core waits on a barrier: a child needs only what it reads (its `after`), not a whole stage before it.
W3 A freed core is seen within WAKE_S; progress bars redraw every POLL_S."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from tina_probe.errors import TinaError
from tina_probe.lab import forked
from tina_probe.slow_paths import slow_paths

POLL_S = 2.0  # progress bars redraw this often (rule W3)
WAKE_S = 0.1  # finished children are looked for this often, so that a freed core takes the next one at once (W3)
_TQDM_COUNT = re.compile(rb"(\d+)/(\d+) \[")  # tqdm's "n/total [" in a child's log


def cli(*args: str, threads: int = 2, log: Path | None = None):
    """Start `tina-probe ARGS` as a child with its own thread budget, output to `log` when given: forked from the
    preloaded server (lab/forked.py) where it can, else a subprocess. Returns a `subprocess.Popen`, or a
    `ForkedChild` with the same poll / wait / terminate interface."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    if not slow_paths() and forked.available():
        return forked.ForkedChild(args, log, threads, env)
    out = open(log, "w") if log else None
    try:
        # Every path in ARGS is absolute (run_lab resolves them against the user's folder), so the subprocess runs
        # in the user's folder like the command that started it.
        return subprocess.Popen([sys.executable, "-m", "tina_probe.cli", *args], env=env,
                                stdout=out or None, stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()  # the child has its own copy of the file descriptor


def log_progress(log: Path) -> tuple[int, int] | None:
    """(done, total) of the last tqdm bar a child wrote to its log; None before its first bar."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 4096))
            hits = _TQDM_COUNT.findall(f.read())
    except OSError:
        return None
    return (int(hits[-1][0]), int(hits[-1][1])) if hits else None


@dataclass(frozen=True)
class Child:
    """One `tina-probe` command of a batch: its bar's label, arguments and log; `progress` gives (done, total) so far
    (default: read from the child's own tqdm line in its log)."""

    label: str
    args: tuple[str, ...]
    log: Path
    total: int | None = None
    progress: Callable[[], tuple[int, int] | None] | None = None
    after: tuple[str, ...] = ()  # labels of the children that must end before this one starts (rule W1)
    threads: int | None = None  # its thread count; None: run_children's

    def done(self) -> tuple[int, int] | None:
        return self.progress() if self.progress is not None else log_progress(self.log)


def shard_children(stage: str, args: Sequence[str], logs: Path, shards: int, tag: str = "") -> list[Child]:
    """`tina-probe STAGE ARGS --shard i/N` for every i < N (rules S1-S3 of tina_probe/shards.py split the work); `tag`
    tells apart several calls of one stage (their labels and logs)."""
    return [Child(f"{stage}{tag} {i + 1}/{shards}", (stage, *args, "--shard", f"{i}/{shards}"),
                  logs / f"{stage}{tag}-{i}of{shards}.log") for i in range(shards)]


def _check_graph(children: Sequence[Child]) -> None:
    """Refuse a batch that cannot run: two children writing one log, a label twice, an unknown `after` label."""
    logs = [c.log for c in children]
    if len(set(logs)) < len(logs):
        raise ValueError(f"two children would write one log: {sorted(str(x) for x in logs if logs.count(x) > 1)}")
    labels = [c.label for c in children]
    if any(c.after for c in children) and len(set(labels)) < len(labels):
        raise ValueError(f"two children share a label: {sorted({x for x in labels if labels.count(x) > 1})}")
    unknown = {a for c in children for a in c.after} - set(labels)
    if unknown:
        raise ValueError(f"children wait for unknown labels: {sorted(unknown)}")


def run_children(children: Sequence[Child], parallel: int, threads: int | None = None) -> None:
    """Run every child to its end on `parallel` x `threads` threads (default threads: the cores split `parallel`
    ways), each child on its own `threads` or the default; which starts when is rules W1-W3. The first failure
    stops the others and raises with the failed child's log tail."""
    from tina_probe.children import stop

    _check_graph(children)
    threads = threads or max(1, (os.cpu_count() or 2) // max(1, parallel))
    capacity = parallel * threads
    pending = list(enumerate(children))
    ended: set[str] = set()
    active: dict[int, tuple[Child, subprocess.Popen]] = {}
    bars: dict[int, tqdm] = {}
    next_redraw = 0.0
    try:
        while pending or active:
            for i, child in list(pending):  # rule W1
                if not set(child.after) <= ended:
                    continue
                need = min(child.threads or threads, capacity)
                if sum(min(c.threads or threads, capacity) for c, _ in active.values()) + need > capacity:
                    break
                pending.remove((i, child))
                child.log.parent.mkdir(parents=True, exist_ok=True)
                bars[i] = tqdm(total=child.total, desc=child.label, position=len(bars), leave=True,
                               dynamic_ncols=True)
                active[i] = (child, cli(*child.args, threads=need, log=child.log))
            if not active:
                raise ValueError(f"children wait for one another: {[c.label for _, c in pending]}")
            time.sleep(WAKE_S)
            redraw = time.monotonic() >= next_redraw
            if redraw:
                next_redraw = time.monotonic() + POLL_S
            for i, (child, proc) in list(active.items()):
                finished = proc.poll() is not None
                bar = bars[i]
                if redraw or finished:
                    seen = child.done()
                    if seen is not None:
                        if bar.total != seen[1]:
                            bar.total = seen[1]
                            bar.refresh()
                        if seen[0] > bar.n:  # only real progress redraws (in a log file every redraw is a new line)
                            bar.update(seen[0] - bar.n)
                if not finished:
                    continue
                del active[i]
                if proc.returncode != 0:
                    tail = child.log.read_text(errors="replace").replace("\r", "\n").splitlines()[-3:]
                    raise TinaError(f"{child.log}: tina-probe {child.args[0]} ({child.label}) failed (exit "
                                    f"{proc.returncode}): {' | '.join(tail)}; rerun to resume")
                ended.add(child.label)
                if bar.total:
                    bar.update(bar.total - bar.n)
    finally:
        for _, proc in active.values():  # an interrupted study ends its children too
            stop(proc)
        for bar in bars.values():
            bar.close()
