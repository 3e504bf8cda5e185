"""Sharded work on one store: shard assignment, concurrent consolidation under the store's lock, and eval / spectra /
retention shards run as concurrent processes (one killed with SIGKILL) that end in the tables of one process."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tina_probe.errors import TinaError
from tina_probe.shards import block, parse_shard, round_robin
from tina_probe.store import Store

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


# ----------------------------------------------------------------------------- assignment


@pytest.mark.parametrize("n_items", [0, 1, 5, 12])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_every_item_in_exactly_one_shard(n_items, n_shards):
    items = list(range(n_items))
    for deal in (round_robin, block):
        got = [x for i in range(n_shards) for x in deal(items, (i, n_shards))]
        assert sorted(got) == items, deal.__name__
    blocks = [block(items, (i, n_shards)) for i in range(n_shards)]
    assert [x for b in blocks for x in b] == items  # contiguous, in order
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "-1/2", "1", "a/b", "1/2/3"):
        with pytest.raises(TinaError, match=f"--shard {bad}: expected i/N"):
            parse_shard(bad)


# ----------------------------------------------------------------------------- the lock under contention


def _writer(root: str, who: int, n_parts: int) -> None:
    """Write parts one by one, consolidating after each (as shards finishing at once do)."""
    store = Store(root)
    for j in range(n_parts):
        rows = pd.DataFrame({"who": [who] * 50, "part": [j] * 50, "i": range(50)})
        store.write_part("t", f"w{who}-p{j}", rows)
        store.consolidate("t", key_cols=["who", "part", "i"], sort_by=["who", "part", "i"])


def test_concurrent_consolidation_loses_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), who, 12)) for who in range(4)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):  # a reader meanwhile: the table is always whole (atomic replace)
        if (tmp_path / "t.parquet").exists():
            df = Store(tmp_path).read("t")  # the product's reader: one handle, never a torn table
            assert len(df) % 50 == 0 and not df.duplicated().any()
            seen += 1
        time.sleep(0.01)
    assert all(p.exitcode == 0 for p in procs)
    final = pd.read_parquet(tmp_path / "t.parquet")
    # the last consolidation started after every part was written: every row, once
    assert len(final) == 4 * 12 * 50 and not final.duplicated().any()
    assert seen > 0


def test_lock_is_reentrant_and_exclusive(tmp_path):
    store = Store(tmp_path)
    with store.lock(), store.lock():  # consolidate inside summarize: no self-deadlock
        store.write_part("t", "a", pd.DataFrame({"x": [1]}))
        assert len(store.consolidate("t")) == 1
        probe = subprocess.run([sys.executable, "-c", (
            "import fcntl, sys; fh = open(sys.argv[1], 'a+b')\n"
            "try:\n    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
            "    sys.exit(3)\n"), str(tmp_path / ".lock")])
        assert probe.returncode == 3  # another process cannot take it while held
    free = subprocess.run([sys.executable, "-c", "import fcntl, sys; fh = open(sys.argv[1], 'a+b'); "
                           "fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / ".lock")])
    assert free.returncode == 0  # released at the outer exit


# ----------------------------------------------------------------------------- real processes on one store


def _cli(*args) -> list[str]:
    """`tina-probe ARGS` as a subprocess command line."""
    return [sys.executable, "-m", "tina_probe.cli", *map(str, args)]


def _run(args, cwd: Path) -> None:
    done = subprocess.run(_cli(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _together(arg_lists, cwd: Path) -> None:
    """Start every command at once; all must succeed."""
    procs = [subprocess.Popen(_cli(*a), cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for a in arg_lists]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]


def _killed_midway(args, cwd: Path, parts: Path) -> None:
    """Start a command, SIGKILL it once its first part is written (it must still be working), wait for it."""
    proc = subprocess.Popen(_cli(*args), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(parts.glob("*.parquet")):
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be killed: give it more work"
    assert any(parts.glob("*.parquet"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _tables(out: Path, names) -> dict[str, pd.DataFrame]:
    return {n: pd.read_parquet(out / f"{n}.parquet") for n in names}


def _assert_same(got: dict, want: dict, drop=()) -> None:
    for name in want:
        a, b = got[name].drop(columns=list(drop), errors="ignore"), want[name].drop(columns=list(drop), errors="ignore")
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), obj=name)


@pytest.fixture
def bench(tmp_path) -> str:
    """Two benchmark files with enough problems that a shard is still working when its first unit is stored."""
    paths = []
    for name in ("bench_a", "bench_b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"p{i}", "question": f"{i}+{i + 1}=?", "answer": str(2 * i + 1)})
                                + "\n" for i in range(24)))
        paths.append(str(path))
    return ",".join(paths)


def test_eval_shards_concurrent_and_killed_equal_one_process(runs_dir, tmp_path, bench):
    runs = [runs_dir / "lab-lora", runs_dir / "lab-full"]
    common = ["--ckpts", *runs, "--benchmarks", bench, "--n", "4", "--max-tokens", "16",
              "--seed", "5"]
    _run(["eval", *common, "--out", tmp_path / "one"], tmp_path)
    tables = ("samples", "passk", "format")
    want = _tables(tmp_path / "one", tables)

    # two shards started at once on one store, then a consolidating run that has nothing left to generate
    _together([["eval", *common, "--shard", f"{i}/2", "--out", tmp_path / "two"] for i in range(2)], tmp_path)
    _assert_same(_tables(tmp_path / "two", tables), want)
    _run(["eval", *common, "--out", tmp_path / "two"], tmp_path)
    _assert_same(_tables(tmp_path / "two", tables), want)

    # shard 0 killed with SIGKILL after its first unit, shard 1 alongside; shard 0 rerun
    killed = tmp_path / "killed"
    shard1 = subprocess.Popen(_cli("eval", *common, "--shard", "1/2", "--out", killed), cwd=tmp_path,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _killed_midway(["eval", *common, "--shard", "0/2", "--out", killed], tmp_path, killed / ".parts" / "samples")
    assert shard1.wait(timeout=600) == 0
    # a kill can land inside an atomic write: its temporary file stays (nothing runs after SIGKILL), under a dot
    # name the store never lists; every part under its own name is whole...
    for part in (killed / ".parts").rglob("*"):
        if not part.is_file() or part.name.startswith(".") and part.name.endswith(".tmp"):
            continue
        assert part.suffix in (".parquet", ".json"), part
        pq.read_table(part) if part.suffix == ".parquet" else json.loads(part.read_text())  # raise on a torn file
    _run(["eval", *common, "--shard", "0/2", "--out", killed], tmp_path)
    _assert_same(_tables(killed, tables), want)  # ...and the rerun loses and duplicates nothing


def test_spectra_and_retention_shards_equal_one_process(runs_dir, tmp_path):
    runs = [runs_dir / "lab-lora", runs_dir / "lab-full"]
    text = tmp_path / "ref.txt"
    text.write_text(" ".join(f"{i}+{i + 1}={2 * i + 1}." for i in range(200)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": f"{i}+{i}=?"}) + "\n" for i in range(6)))
    spectra = ["spectra", "--ckpts", *runs, "--top", "8"]
    retention = ["retention", "--ckpts", *runs, "--probes", f"kl_general={text},ppl_general={text},kl_task={prompts}",
                 "--limit", "4"]
    for args, table in ((spectra, "spectra"), (retention, "retention")):
        _run([*args, "--out", tmp_path / f"one-{table}"], tmp_path)
        want = _tables(tmp_path / f"one-{table}", [table])
        assert len(want[table]) > 0
        two = tmp_path / f"two-{table}"
        _together([[*args, "--shard", f"{i}/2", "--out", two] for i in range(2)], tmp_path)
        _assert_same(_tables(two, [table]), want)  # every column, bit for bit
    # spectra: three blocks (two of them start mid-run, recomputing their predecessor), then a run without a shard
    # that only consolidates and writes the cross-run table
    three = tmp_path / "three-spectra"
    _together([[*spectra, "--shard", f"{i}/3", "--out", three] for i in range(3)], tmp_path)
    assert not (three / "update_overlap.parquet").exists()
    _run([*spectra, "--out", three], tmp_path)
    _assert_same(_tables(three, ["spectra", "update_overlap"]),
                 _tables(tmp_path / "one-spectra", ["spectra", "update_overlap"]))
    # retention: shard 0 killed with SIGKILL after its first part, then rerun
    killed = tmp_path / "killed-retention"
    _killed_midway([*retention, "--shard", "0/2", "--out", killed], tmp_path, killed / ".parts" / "retention")
    _run([*retention, "--shard", "1/2", "--out", killed], tmp_path)
    _run([*retention, "--shard", "0/2", "--out", killed], tmp_path)
    _assert_same(_tables(killed, ["retention"]), _tables(tmp_path / "one-retention", ["retention"]))
