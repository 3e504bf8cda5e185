"""Resume keys of spectra and retention from the identity each Checkpoint carries: equal in value to the keys the
per-call weights_identity path built (stores written before still resume), and built without reading a folder."""

from dataclasses import asdict
from pathlib import Path

import pytest

import tina_probe.runs as runs_module
from analysis import retention, spectra
from analysis.retention_probes import resolve_probes
from tina_probe.runs import Checkpoint, checkpoint_identity, discover_runs, weights_identity
from tina_probe.slow_paths import ENV
from tina_probe.store import stable_key

SETTINGS = (64, "dense", True, 8)


# The two key formulas as they were before the identity was carried (commit 54a3361): what existing stores hold.
def _old_spectra_key(ckpt, prev, settings):
    files = (weights_identity(ckpt.path), weights_identity(ckpt.base) if ckpt.kind == "lora" else None,
             None if prev is None else (str(prev.path), weights_identity(prev.path)))
    return f"{ckpt.run}@{int(ckpt.step)}.{stable_key('spectra', spectra.PART_VERSION, str(ckpt.path), files, *settings)}"


def _old_retention_key(ck, probe, limit, settings):
    files = weights_identity(ck.path), weights_identity(ck.base) if ck.kind == "lora" else None
    fields = ["retention", str(ck.path), ck.kind, probe.key, limit, asdict(settings), files]
    if probe.family == "kl_task":  # changed on purpose when the task probe gained kl_forward: recomputed once
        fields.append(["kl+kl_forward", "sampled", "sampled"])
    return f"{probe.name}-{stable_key(*fields)}"


def _checkpoints(runs_dir):
    runs = discover_runs([runs_dir / "lab-lora", runs_dir / "lab-full"])
    return [ck for run in runs for ck in run.checkpoints]


def _old_keys(cks, probes):
    settings = retention.RetentionSettings()
    spectra_keys = [_old_spectra_key(ck, prev, SETTINGS) for prev, ck in zip([None, *cks], cks) if ck.kind != "base"]
    retention_keys = [_old_retention_key(ck, p, 16, settings) for ck in cks for p in probes]
    return spectra_keys, retention_keys


def _new_keys(cks, probes):
    settings = retention.RetentionSettings()
    spectra_keys = [spectra._part_key(ck, prev, SETTINGS) for prev, ck in zip([None, *cks], cks) if ck.kind != "base"]
    retention_keys = [retention._unit_key(ck, p, 16, settings) for ck in cks for p in probes]
    return spectra_keys, retention_keys


def test_keys_equal_the_per_call_keys(runs_dir, monkeypatch, tmp_path):
    cks = _checkpoints(runs_dir)
    hub = Checkpoint(run="hub", step=0, kind="base", path=Path("org/model"), base="org/model",
                     files=weights_identity("org/model"))
    cks.append(hub)
    probes = resolve_probes(None, tmp_path)
    before = _old_keys(cks, probes)
    assert {ck.kind for ck in cks} == {"base", "lora", "full"} and len(set(before[0])) == 3
    monkeypatch.setattr(runs_module, "weights_identity", pytest.fail)  # carried: no folder is read again
    assert _new_keys(cks, probes) == before


def test_slow_paths_read_the_identity_per_call(runs_dir, monkeypatch, tmp_path):
    cks = _checkpoints(runs_dir)
    probes = resolve_probes(None, tmp_path)
    before = _old_keys(cks, probes)
    calls = []
    monkeypatch.setattr(runs_module, "weights_identity", lambda p: calls.append(p) or weights_identity(p))
    monkeypatch.setenv(ENV, "1")
    assert _new_keys(cks, probes) == before and calls


def test_identity_of_a_checkpoint_built_by_hand(runs_dir):
    """A Checkpoint made without discovery (no files carried) gets its identity read from its folders."""
    lora = next(ck for ck in _checkpoints(runs_dir) if ck.kind == "lora")
    bare = Checkpoint(run=lora.run, step=lora.step, kind="lora", path=lora.path, base=lora.base)
    assert checkpoint_identity(bare) == (lora.files, lora.base_files) == (
        weights_identity(lora.path), weights_identity(lora.base))


def test_a_number_kind_benchmark_is_a_new_unit():
    """Results graded under another answer kind are not resumed as these; the default kind keeps earlier keys."""
    from dataclasses import replace

    from tina_probe.benchmarks import load_benchmark
    from tina_probe.eval_units import benchmark_fingerprint

    bench = load_benchmark("real-test", limit=3)
    as_math = replace(bench, answer_kind="math")
    assert benchmark_fingerprint(bench) != benchmark_fingerprint(as_math)
    assert benchmark_fingerprint(as_math) == benchmark_fingerprint(replace(as_math, name="other"))
