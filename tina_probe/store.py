"""The results store: one folder of parquet tables, written atomically, with per-unit parts for resume.

The store has a format version (FORMAT, in <root>/.parts/format.json): the layout of the resume parts that every
resuming writer (eval and grade, spectra, retention) relies on: which part tables exist, how their keys are built,
what rows a part holds. One number for the whole folder; a change to any writer's parts bumps it. A store of another
format stops the first command that touches its parts with one line naming the commands that rebuild it. Format 1
is the layout every tina-probe so far has written, so a store from before the marker is format 1 and is stamped on
its next part write. The consolidated tables (<root>/<table>.parquet) are the interchange and carry no version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock (the store's writes stay atomic; see Store.lock)
    fcntl = None

import pandas as pd

from tina_probe.errors import TinaError

_SAFE = re.compile(r"[^A-Za-z0-9._-]")

FORMAT = 1  # see the module docstring; bump it when a writer's parts change layout
FORMAT_FILE = "format.json"  # in <root>/.parts/
# which command rebuilds the rows of a part table (every other table: the command of its name)
_REBUILT_BY = {t: "eval / grade" for t in ("samples", "base_samples", "samples_superseded", "adapter_checks")}


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so a rename survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The existing file's mode, else 0666 minus the process umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, write) -> Path:
    """Write through `write(tmp_path)` into a temp file beside `path`, fsync it, then os.replace it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; keep the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write bytes so that a crash leaves either the old file or the new one, never a torn one."""
    return _atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Write text atomically (see atomic_write_bytes)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: Path | str, obj) -> Path:
    """Write an object as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: Path | str, df: pd.DataFrame) -> Path:
    """Write a DataFrame as parquet atomically (index dropped)."""
    return _atomic_write(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def read_parquet_file(path: Path | str, columns: list[str] | None = None, filters: list | None = None) -> pd.DataFrame:
    """Read a parquet file through one open handle. pyarrow given a path may open it more than once (footer, then
    pages); a table replaced in between (os.replace by a concurrent writer) would then be read torn. One handle
    keeps reading the file as it was when opened. `filters`: pyarrow row filters, applied while reading. The handle is
    Arrow's own (pa.OSFile), not a Python file: with a Python file, Arrow's reader threads call back into Python, and
    1 process in 10-40 then aborted at exit ("terminate called without an active exception", pyarrow 26.0.1,
    apache/arrow#34314); measured here: 0 of 150 with OSFile, 4 of 150 with open() (a minimal script)."""
    import pyarrow as pa  # here, not at import: most commands never read a table

    with pa.OSFile(str(path), "rb") as fh:
        return pd.read_parquet(fh, columns=columns, filters=filters)


def safe_key(key: str) -> str:
    """A file-name-safe form of a part key; unsafe keys get a short hash so distinct keys stay distinct."""
    cleaned = _SAFE.sub("_", key)[:120]
    if cleaned == key:
        return key
    return f"{cleaned}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def stable_key(*fields) -> str:
    """A short stable hash of some JSON-able fields, used as a resume key."""
    blob = json.dumps([str(f) if isinstance(f, Path) else f for f in fields], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


LOCK_FILE = ".lock"  # in <root>/: held while a process consolidates tables (Store.lock)
_held: dict[str, list] = {}  # lock path -> [open file, depth]: the lock is re-entrant within one process


class Store:
    """One folder of parquet tables: <root>/<table>.parquet; resume parts in <root>/.parts/<table>/<key>.parquet."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._format_checked = self._stamped = False

    @contextmanager
    def lock(self):
        """Hold the store's lock (an exclusive flock on <root>/.lock), re-entrant within a process.

        Parts need no lock (each is one atomic write). Consolidating does: a process that read the parts, then
        replaced the table after another process wrote a newer part and its own table, would put back a table
        without that part. Under the lock the last consolidation reads every part written before it started.
        flock is advisory and local: on a network filesystem without flock support, consolidate from one node.
        Do not fork while holding it: the child would inherit the open lock and could release it."""
        path = str((self.root / LOCK_FILE).resolve())
        if fcntl is None:
            yield
            return
        entry = _held.get(path)
        if entry is None:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+b")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except BaseException:
                fh.close()
                raise
            entry = _held[path] = [fh, 0]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                fcntl.flock(entry[0].fileno(), fcntl.LOCK_UN)
                entry[0].close()

    def table_path(self, table: str) -> Path:
        """Where a consolidated table lives."""
        return self.root / f"{table}.parquet"

    def _part_dir(self, table: str) -> Path:
        if not self._format_checked:
            self.check_format()
        return self.root / ".parts" / table

    def check_format(self) -> None:
        """Raise a TinaError (one line: which commands rebuild it) when the parts are of another format than FORMAT;
        a store without the marker is format 1 (module docstring)."""
        marker = self.root / ".parts" / FORMAT_FILE
        if marker.is_file():
            try:
                found = int(json.loads(marker.read_text())["format"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise TinaError(f"{marker}: unreadable store format marker ({exc})") from None
            if found > FORMAT:
                raise TinaError(f"{self.root}: results store of format {found}, written by a newer tina-probe "
                                f"(this one reads format {FORMAT}); upgrade tina-probe or use another --out")
            if found < FORMAT:
                tables = sorted(p.name for p in (self.root / ".parts").iterdir() if p.is_dir())
                commands = dict.fromkeys(f"tina-probe {_REBUILT_BY.get(t, t)}" for t in tables)
                raise TinaError(f"{self.root}: results store of format {found}, older than this tina-probe's "
                                f"{FORMAT}; rebuild it: rerun {', '.join(commands) or 'the commands that wrote it'} "
                                f"with a new --out (or `tina-probe lab` for the lab's store)")
        self._format_checked = True

    def _stamp_format(self) -> None:
        """Write the format marker beside the parts when it is missing."""
        marker = self.root / ".parts" / FORMAT_FILE
        if not self._stamped and not marker.is_file():
            atomic_write_json(marker, {"format": FORMAT})
        self._stamped = True

    def part_path(self, table: str, key: str) -> Path:
        """Where one part of a table lives."""
        return self._part_dir(table) / f"{safe_key(key)}.parquet"

    def read(self, table: str) -> pd.DataFrame:
        """The consolidated table, or an empty DataFrame when it was never written."""
        try:
            return read_parquet_file(self.table_path(table))
        except FileNotFoundError:
            return pd.DataFrame()

    def write(self, table: str, df: pd.DataFrame) -> Path:
        """Replace a whole table atomically."""
        return atomic_write_parquet(self.table_path(table), df)

    def write_part(self, table: str, key: str, df: pd.DataFrame) -> Path:
        """Write one unit's rows atomically; its presence marks the unit as done."""
        path = atomic_write_parquet(self.part_path(table, key), df)
        self._stamp_format()
        return path

    def has_part(self, table: str, key: str) -> bool:
        """Whether the part for `key` was written."""
        return self.part_path(table, key).exists()

    def read_part(self, table: str, key: str) -> pd.DataFrame:
        """One part's rows."""
        return read_parquet_file(self.part_path(table, key))

    def part_keys(self, table: str) -> set[str]:
        """The (file-safe) keys of the parts written so far; temp files of interrupted writes are ignored."""
        folder = self._part_dir(table)
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*.parquet") if not p.name.startswith(".")}

    def move_part(self, table: str, to_table: str, key: str) -> None:
        """Move one part to another table's parts (atomic rename), marking it as just written (its mtime)."""
        target = self.part_path(to_table, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path(table, key), target)
        os.utime(target)
        _fsync_dir(target.parent)

    @staticmethod
    def key_prefix(key: str) -> str | None:
        """The group of a part keyed '<prefix>-<rest>' (newest_per_key_prefix keeps one part per group), else None."""
        prefix, sep, _ = key.partition("-")
        return prefix if sep else None

    def _mtimes(self, table: str, keys) -> dict[str, int]:
        """Write times (ns) of the parts still present among `keys` (another process may move parts meanwhile)."""
        folder, stamps = self._part_dir(table), {}
        for k in keys:
            try:
                stamps[k] = (folder / f"{k}.parquet").stat().st_mtime_ns
            except FileNotFoundError:
                continue
        return stamps

    def touch_part(self, table: str, key: str) -> None:
        """Mark a part as just written (its mtime): with newest_last it then wins over older parts' duplicates."""
        os.utime(self.part_path(table, key))

    def consolidate(self, table: str, key_cols: list[str] | None = None, sort_by: list[str] | None = None,
                    newest_per_key_prefix: bool = False, newest_last: bool = False, write: bool = True) -> pd.DataFrame:
        """Concatenate the parts present (in key order; newest_last: in the order they were written), drop
        duplicate rows, write the table atomically.

        Duplicates are judged on `key_cols` when given (the last part wins), else on whole rows;
        `newest_per_key_prefix`: of parts keyed '<prefix>-<rest>' only the one written last per prefix is read (its
        replacements are moved away when written; this covers a crash between the write and the move); parts
        without a prefix are all read. A part moved away meanwhile (another process) is left out.
        `sort_by` orders the rows (stable) before writing; write=False returns them without writing a table.
        Runs under the store's lock (Store.lock), so concurrent consolidations cannot drop each other's parts."""
        with self.lock():
            return self._consolidate(table, key_cols, sort_by, newest_per_key_prefix, newest_last, write)

    def _consolidate(self, table, key_cols, sort_by, newest_per_key_prefix, newest_last, write) -> pd.DataFrame:
        folder = self._part_dir(table)
        keys = sorted(self.part_keys(table))
        if newest_per_key_prefix or newest_last:
            stamps = self._mtimes(table, keys)
            keys = sorted(stamps, key=lambda k: (stamps[k], k))  # oldest first
            if newest_per_key_prefix:  # the last of each group is its newest
                newest = {self.key_prefix(k) or k: k for k in keys}
                keys = sorted(newest.values(), key=lambda k: (stamps[k], k) if newest_last else k)
        frames = []
        for k in keys:
            try:
                frames.append(read_parquet_file(folder / f"{k}.parquet"))
            except FileNotFoundError:
                continue
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
        subset = [c for c in key_cols if c in df.columns] if key_cols else None
        df = df.drop_duplicates(subset=subset or None, keep="last")
        if sort_by:
            df = df.sort_values([c for c in sort_by if c in df.columns], kind="stable")
        if not write:
            return df.reset_index(drop=True)
        self.write(table, df.reset_index(drop=True))
        return self.read(table)  # as stored: dtypes exactly as every later reader sees them
