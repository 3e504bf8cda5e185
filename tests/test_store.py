"""The store: parquet tables and parts, atomic writes that survive kill -9, consolidation without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tina_probe.store import Store, atomic_write_bytes, atomic_write_parquet, atomic_write_text, safe_key

ROOT = Path(__file__).resolve().parents[1]


def test_read_missing_table_is_empty(tmp_path):
    assert Store(tmp_path / "nowhere").read("samples").empty
    assert Store(tmp_path).part_keys("samples") == set()
    assert Store(tmp_path).consolidate("samples").empty


def test_write_read_roundtrip(tmp_path):
    store = Store(tmp_path)
    df = pd.DataFrame({"run": ["a", "b"], "step": [0, 10], "value": [0.5, 0.25]})
    store.write("passk", df)
    assert (tmp_path / "passk.parquet").is_file()
    pd.testing.assert_frame_equal(store.read("passk"), df)


def test_parts_and_consolidate(tmp_path):
    store = Store(tmp_path)
    a = pd.DataFrame({"run": ["r"] * 2, "step": [0, 0], "problem_id": ["p1", "p2"], "x": [1, 2]})
    b = pd.DataFrame({"run": ["r"] * 2, "step": [10, 10], "problem_id": ["p1", "p2"], "x": [3, 4]})
    store.write_part("samples", "k1", a)
    store.write_part("samples", "k2", b)
    store.write_part("samples", "k2", b)  # rewriting a part replaces it
    assert store.part_keys("samples") == {"k1", "k2"}
    assert store.has_part("samples", "k1") and not store.has_part("samples", "k3")
    assert (tmp_path / ".parts" / "samples" / "k1.parquet").is_file()
    out = store.consolidate("samples")
    assert len(out) == 4
    pd.testing.assert_frame_equal(store.read("samples"), out)
    # a third part repeating rows of the first (e.g. two shards that both did a unit): no duplicate rows
    store.write_part("samples", "k3", a.assign(x=[9, 9]))
    out = store.consolidate("samples", key_cols=["run", "step", "problem_id"], sort_by=["step", "problem_id"])
    assert len(out) == 4
    assert out["x"].tolist() == [9, 9, 3, 4]  # the later part (by key order) wins
    out = store.consolidate("samples")  # whole-row duplicates only: the changed rows stay
    assert len(out) == 6


def test_newest_part_per_key_prefix_and_moving_parts(tmp_path):
    """newest_per_key_prefix: of parts keyed '<prefix>-<rest>' only the newest per prefix is read (a replaced unit
    never pools with its replacement, even when a crash left both); parts without a prefix all pool; move_part
    shelves a part and brings it back as the newest."""
    import os

    store = Store(tmp_path)
    old = pd.DataFrame({"run": ["r"] * 3, "step": [0] * 3, "problem_id": ["p1", "p2", "p3"], "x": [1, 1, 1]})
    new = pd.DataFrame({"run": ["r"] * 2, "step": [0] * 2, "problem_id": ["p1", "p2"], "x": [2, 2]})
    other = pd.DataFrame({"run": ["r"], "step": [10], "problem_id": ["p1"], "x": [3]})
    extra = pd.DataFrame({"run": ["r"], "step": [10], "problem_id": ["p2"], "x": [4]})
    parts = (("g0-z", old, 1_000), ("g0-a", new, 2_000), ("plain1", other, 1_500), ("plain2", extra, 500))
    for key, df, t in parts:
        store.write_part("samples", key, df)
        os.utime(store.part_path("samples", key), ns=(t * 10**9, t * 10**9))
    sort = ["step", "problem_id"]
    out = store.consolidate("samples", key_cols=["run", "step", "problem_id"], sort_by=sort, newest_per_key_prefix=True)
    assert out["x"].tolist() == [2, 2, 3, 4]  # g0 from its newest part only, though 'g0-z' sorts last; plain parts pool
    store.move_part("samples", "shelf", "g0-a")
    assert not store.has_part("samples", "g0-a") and store.has_part("shelf", "g0-a")
    assert store.consolidate("samples", sort_by=sort, newest_per_key_prefix=True)["x"].tolist() == [1, 1, 1, 3, 4]
    store.move_part("shelf", "samples", "g0-a")  # back, and now the newest of its prefix
    assert store.consolidate("samples", sort_by=sort, newest_per_key_prefix=True)["x"].tolist() == [2, 2, 3, 4]


def test_format_marker_stamped_checked_and_older_stores_name_their_rebuild(tmp_path):
    """The first part write stamps <root>/.parts/format.json; a store without it (from before the marker) is format
    1 and is stamped on its next write; another format stops every parts access with one line."""
    import json

    from tina_probe.errors import TinaError
    from tina_probe.store import FORMAT, FORMAT_FILE

    df = pd.DataFrame({"x": [1]})
    Store(tmp_path).write_part("spectra", "k", df)
    marker = tmp_path / ".parts" / FORMAT_FILE
    assert json.loads(marker.read_text()) == {"format": FORMAT} == {"format": 1}
    assert Store(tmp_path).part_keys("spectra") == {"k"}  # the marker is no part
    marker.unlink()
    assert Store(tmp_path).has_part("spectra", "k") and not marker.exists()  # reading alone does not stamp
    Store(tmp_path).write_part("samples", "g-1", df)
    assert json.loads(marker.read_text()) == {"format": FORMAT}
    marker.write_text(json.dumps({"format": FORMAT - 1}))
    with pytest.raises(TinaError) as err:
        Store(tmp_path).part_keys("samples")
    assert str(err.value) == (f"{tmp_path}: results store of format {FORMAT - 1}, older than this tina-probe's "
                              f"{FORMAT}; rebuild it: rerun tina-probe eval / grade, tina-probe spectra with a new "
                              "--out (or `tina-probe lab` for the lab's store)")
    marker.write_text(json.dumps({"format": FORMAT + 1}))
    with pytest.raises(TinaError, match="newer tina-probe"):
        Store(tmp_path).write_part("samples", "g-2", df)
    marker.write_text("{not json")
    with pytest.raises(TinaError, match=f"{marker}: unreadable store format marker"):
        Store(tmp_path).has_part("samples", "g-1")
    pd.testing.assert_frame_equal(Store(tmp_path).read("nothing"), pd.DataFrame())  # tables carry no version


def test_safe_key_is_file_safe_and_distinct():
    assert safe_key("abc_123-x.y") == "abc_123-x.y"
    a, b = safe_key("runs/a b"), safe_key("runs/a_b")
    assert a != b and not any(ch in a + b for ch in "/ ")
    assert safe_key("runs/a b") == a  # stable
    assert safe_key("runs_a_b") == "runs_a_b"


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    atomic_write_bytes(tmp_path / "sub" / "a.txt", b"bye")
    atomic_write_parquet(tmp_path / "sub" / "t.parquet", pd.DataFrame({"a": [1]}))
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"bye"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt", "t.parquet"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.parquet"
    atomic_write_parquet(target, pd.DataFrame({"a": [1, 2]}))

    class Boom(pd.DataFrame):
        def to_parquet(self, *a, **k):
            Path(a[0]).write_bytes(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_parquet(target, Boom({"a": [3]}))
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


WRITER = """
import sys, pandas as pd
from tina_probe.store import atomic_write_parquet
path = sys.argv[1]
frames = [pd.DataFrame({"v": [i] * 20000, "s": ["x" * 50] * 20000}) for i in (1, 2)]
i = 0
print("ready", flush=True)
while True:
    atomic_write_parquet(path, frames[i % 2])
    i += 1
"""


def test_kill_9_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "t.parquet"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            df = pd.read_parquet(target)  # parses: never torn
            assert len(df) == 20000 and df["v"].nunique() == 1 and df["v"].iloc[0] in (1, 2)
    # leftover temp files (from the killed write) are hidden and never taken for parts or tables
    store = Store(tmp_path)
    assert store.part_keys("x") == set()
