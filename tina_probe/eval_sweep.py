"""The sweep: which units are done, which stored results they replace, which come back, and the loop that generates
the rest (each model loaded once, and only when it has work).

The rules the code follows (README "The store"):
1. Done: a unit (checkpoint x benchmark x sampling settings, eval_units.Unit) is done when the samples part under
   its key exists; a rerun skips it. The key is '<group>-<hash>': the group names the tables' row group (run, step,
   benchmark, sampling label), the hash everything that makes the rows differ (the checkpoint's path and files, for
   LoRA its base's too; the benchmark's problems, i.e. --limit; the sampling settings; the backend).
2. The base once: a run's step 0 is generated once per base model, benchmark, settings and backend, into BASE_CACHE
   (keyed by the generation key); each run's step-0 part is a copy of those rows under its run name.
3. Replaced: a unit asked for becomes its group's only current part as soon as it is finished (generated, copied
   from BASE_CACHE, or found done): every other part of its group moves to SUPERSEDED. Tables never mix units.
4. Back: a unit asked for whose part is in SUPERSEDED moves back (marked as just written) instead of generating.
5. Not shown stale: a unit that cannot be generated (its checkpoint fails to load) shelves every part of its group.
6. Read: consolidation reads the newest part of each group (this also covers a crash between writing a part and
   shelving the others); parts without a group prefix (`tina-probe grade`) all pool.
7. Shards: each shard runs its own units on the same store; a part another shard moved meanwhile is left alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from tina_probe.errors import CheckpointError
from tina_probe.eval_generate import generate_wave, waves
from tina_probe.eval_units import Unit
from tina_probe.generate import Generator, SamplingSettings
from tina_probe.store import Store

log = logging.getLogger(__name__)

BASE_CACHE = "base_samples"  # rule 2: parts of graded base completions, shared by every run with that base
SUPERSEDED = "samples_superseded"  # rule 3: parts replaced by a later unit of the same group, kept for rule 4


def needs_generation(store: Store, u: Unit) -> bool:
    """Rules 1 and 2: whether a unit still needs generating (no part of its own and, for a base, no cached rows)."""
    if store.has_part("samples", u.key):
        return False
    return not (u.ckpt.kind == "base" and store.has_part(BASE_CACHE, u.gen_key))


def save_generated(store: Store, u: Unit, rows) -> None:
    """Store a generated unit: a base's rows go to BASE_CACHE (every run's step 0 reads them), others to samples."""
    if u.ckpt.kind == "base":
        store.write_part(BASE_CACHE, u.gen_key, rows.drop(columns=["run"]))
    else:
        store.write_part("samples", u.key, rows)


def finish_unit(store: Store, u: Unit) -> bool:
    """Write a unit's samples part from what is stored (a base from BASE_CACHE); False while not generated."""
    if store.has_part("samples", u.key):
        return True
    if u.ckpt.kind != "base" or not store.has_part(BASE_CACHE, u.gen_key):
        return False
    rows = store.read_part(BASE_CACHE, u.gen_key)
    rows.insert(0, "run", u.ckpt.run)
    store.write_part("samples", u.key, rows)
    return True


class GroupParts:
    """The samples parts of each group (key prefix), so that a finished unit becomes its group's only part (rule 3)
    and a shelved one comes back (rule 4). Parts without a prefix (`tina-probe grade`) belong to no group."""

    def __init__(self, store: Store):
        self.store = store
        self.parts: dict[str, set[str]] = {}
        for key in store.part_keys("samples"):
            prefix = Store.key_prefix(key)
            if prefix:
                self.parts.setdefault(prefix, set()).add(key)

    @classmethod
    def current(cls, store: Store, units: Sequence[Unit]) -> "GroupParts":
        """The store's parts with every unit asked for brought back from SUPERSEDED first."""
        parts = cls(store)
        for u in units:
            parts.bring_back(u)
        return parts

    def bring_back(self, u: Unit) -> None:
        """Rule 4: move u's part back from SUPERSEDED when it is there and not among the current parts."""
        if not self.store.has_part("samples", u.key) and self.store.has_part(SUPERSEDED, u.key):
            self.store.move_part(SUPERSEDED, "samples", u.key)
            self.parts.setdefault(Store.key_prefix(u.key), set()).add(u.key)

    def make_current(self, u: Unit, *, done: bool = True) -> None:
        """Rule 3: shelve every other part of u's group (u's own part exists: it was written or brought back first);
        done=False (rule 5, u could not be generated): every part of its group."""
        prefix = Store.key_prefix(u.key)
        keep = {u.key} if done else set()
        for key in self.parts.get(prefix, set()) - keep:
            if self.store.has_part("samples", key):
                try:
                    self.store.move_part("samples", SUPERSEDED, key)
                except FileNotFoundError:  # rule 7: another shard moved it first
                    pass
        self.parts[prefix] = keep


def _pending(store: Store, group: Sequence[Unit]) -> list[Unit]:
    """The units to generate, in order: one per generation key (runs sharing a base generate its step 0 once)."""
    pending: dict[str, Unit] = {}
    for u in group:
        if needs_generation(store, u):
            pending.setdefault(u.gen_key, u)
    return list(pending.values())


def _model_groups(units: Sequence[Unit]) -> list[tuple[str, str | None, list[Unit]]]:
    """(model to load, tokenizer fallback, its units): one group per base (base + LoRA), one per full checkpoint."""
    groups: dict[tuple[str, str | None], list[Unit]] = {}
    for u in units:
        key = (str(u.ckpt.path), u.ckpt.base) if u.ckpt.kind == "full" else (u.ckpt.base, None)
        groups.setdefault(key, []).append(u)
    return [(model, tok, us) for (model, tok), us in groups.items()]


def sweep(store: Store, gen: Generator | None, units: Sequence[Unit], s: SamplingSettings, *, batch_size: int,
          backend: str, parts: GroupParts | None = None) -> int:
    """Run every unit not done yet and make each unit asked for its group's current part. Returns units run.
    gen may be None when nothing needs generating (needs_generation is False for every unit)."""
    parts = parts or GroupParts.current(store, units)
    todo = {u.key for u in units if needs_generation(store, u)}
    bar = tqdm(total=len(todo), desc="eval units", unit="unit", disable=not todo)
    finished: set[str] = set()

    def finish(candidates):
        for u in candidates:
            if u.key not in finished and finish_unit(store, u):
                parts.make_current(u)
                finished.add(u.key)
                bar.update(u.key in todo)

    for model, tokenizer, group in _model_groups(units):
        pending = _pending(store, group)
        if pending:
            adapters = list(dict.fromkeys(Path(u.ckpt.path) for u in group if u.ckpt.kind == "lora"))
            try:
                gen.load_base(model, adapters=adapters, tokenizer=tokenizer)
            except CheckpointError as exc:
                if group[0].ckpt.kind != "full":
                    raise  # the base of every run in the group: nothing to go on with
                log.warning("skipping %s: %s", model, exc)
                continue
            for wave in waves(pending, s, batch_size, batched=hasattr(gen, "generate_jobs")):
                for u, rows in generate_wave(gen, wave, s, batch_size, backend):
                    save_generated(store, u, rows)
                    finish(v for v in group if v.gen_key == u.gen_key)
        finish(group)
    for u in units:
        if u.key not in finished:  # rule 5: skipped (could not be loaded): its group shows nothing rather than old rows
            parts.make_current(u, done=False)
    bar.close()
    return len(todo)
