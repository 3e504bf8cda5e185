"""Run and checkpoint discovery: kinds, base, steps, corrupt checkpoints skipped with one warning; training logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from tina_probe.errors import TinaError
from tina_probe.runs import discover_runs, training_log, unify_metric_name, weights_identity


def _by_name(runs):
    return {r.name: r for r in runs}


def test_lora_and_full_runs(runs_dir, tiny_base):
    runs = _by_name(discover_runs([runs_dir / "lab-lora", runs_dir / "lab-full"]))
    lora, full = runs["lab-lora"], runs["lab-full"]
    assert lora.kind == "lora" and full.kind == "full"
    assert lora.base == full.base == str(tiny_base.resolve())
    assert [(c.step, c.kind) for c in lora.checkpoints] == [(0, "base"), (10, "lora"), (20, "lora")]
    assert [(c.step, c.kind) for c in full.checkpoints] == [(0, "base"), (10, "full")]
    assert lora.checkpoints[0].path == Path(tiny_base.resolve())
    assert lora.checkpoints[2].path == (runs_dir / "lab-lora" / "checkpoint-20").resolve()
    assert lora.manifest["eval_benchmark"]


def test_identity_is_read_once_at_discovery(runs_dir, tiny_base):
    """Each checkpoint carries its files (name, size, mtime) and, for LoRA, its base's; the base's step 0 carries
    the base's files; saving a checkpoint again gives it a new identity."""
    runs = _by_name(discover_runs([runs_dir / "lab-lora", runs_dir / "lab-full"]))
    base, lora10, _ = runs["lab-lora"].checkpoints
    base_files = weights_identity(tiny_base.resolve())
    assert base.files == base_files and base.base_files is None
    assert {f[0] for f in base_files} >= {"config.json", "model.safetensors"}
    weights = lora10.path / "adapter_model.safetensors"
    assert lora10.base_files == base_files and ("adapter_model.safetensors", weights.stat().st_size,
                                                weights.stat().st_mtime_ns) in lora10.files
    full10 = runs["lab-full"].checkpoints[1]
    assert full10.files == weights_identity(full10.path) and full10.base_files is None
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(1, 1))
    again = discover_runs([runs_dir / "lab-lora"])[0].checkpoints[1]
    assert again.files != lora10.files and again.base_files == lora10.base_files


def test_glob_and_steps_filter(runs_dir):
    runs = _by_name(discover_runs([str(runs_dir / "*")], steps={20}))
    assert set(runs) == {"lab-lora", "lab-full"}
    assert [c.step for c in runs["lab-lora"].checkpoints] == [20]
    assert runs["lab-full"].checkpoints == ()
    runs = _by_name(discover_runs([str(runs_dir / "*")], steps=[0, 10]))
    assert [c.step for c in runs["lab-lora"].checkpoints] == [0, 10]


def test_single_checkpoint_folder(runs_dir):
    (run,) = discover_runs([runs_dir / "lab-lora" / "checkpoint-20"])
    assert run.name == "lab-lora"
    assert [c.step for c in run.checkpoints] == [0, 20]
    # the whole run and one of its checkpoints: the run wins, nothing twice
    (run,) = discover_runs([runs_dir / "lab-lora", runs_dir / "lab-lora" / "checkpoint-20"])
    assert [c.step for c in run.checkpoints] == [0, 10, 20]


def test_final_save_at_the_run_top_and_a_lone_adapter_folder(runs_dir, tmp_path, tiny_base):
    run = runs_dir / "lab-lora"
    for f in ("adapter_config.json", "adapter_model.safetensors"):  # trainer.save_model(output_dir)
        shutil.copy(run / "checkpoint-20" / f, run / f)
    (found,) = discover_runs([run])
    assert [c.step for c in found.checkpoints] == [0, 10, 20]
    lone = tmp_path / "downloaded-adapter"  # no manifest, no checkpoint-N name, no trainer state
    shutil.copytree(run / "checkpoint-10", lone)
    (lone / "trainer_state.json").unlink()
    (found,) = discover_runs([lone])
    assert found.name == "downloaded-adapter" and found.base == str(tiny_base.resolve())
    assert [(c.step, c.kind) for c in found.checkpoints] == [(0, "base"), (1, "lora")]


def test_base_from_adapter_config_when_no_manifest(runs_dir, tiny_base, monkeypatch, tmp_path):
    # relative base in adapter_config.json: resolved against the working folder
    (runs_dir / "lab-lora" / "tina_run.json").unlink()
    monkeypatch.chdir(tiny_base.parent)
    for ck in ("checkpoint-10", "checkpoint-20"):
        cfg_path = runs_dir / "lab-lora" / ck / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = tiny_base.name
        cfg_path.write_text(json.dumps(cfg))
    (run,) = discover_runs([runs_dir / "lab-lora"])
    assert run.base == str(tiny_base.resolve())
    assert run.kind == "lora" and run.name == "lab-lora"
    assert [c.step for c in run.checkpoints] == [0, 10, 20]


def test_hub_id_base_is_kept_verbatim(runs_dir):
    manifest = runs_dir / "lab-lora" / "tina_run.json"
    m = json.loads(manifest.read_text())
    m["base"] = "someorg/some-model"
    manifest.write_text(json.dumps(m))
    with_hub = discover_runs([runs_dir / "lab-lora"])[0]
    assert with_hub.base == "someorg/some-model"
    # the adapters were made for the local base, not for this hub id: both skipped
    assert [c.kind for c in with_hub.checkpoints] == ["base"]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_truncated_safetensors_is_skipped_with_one_warning(runs_dir, caplog):
    weights = runs_dir / "lab-lora" / "checkpoint-10" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        (run,) = discover_runs([runs_dir / "lab-lora"])
    assert [c.step for c in run.checkpoints] == [0, 20]
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "checkpoint-10" in msgs[0]


def test_truncated_full_weights_and_missing_config(runs_dir, caplog):
    full = runs_dir / "lab-full"
    shutil.copytree(full / "checkpoint-10", full / "checkpoint-20")
    shutil.copytree(full / "checkpoint-10", full / "checkpoint-30")
    w = full / "checkpoint-20" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # header intact, data cut
    (full / "checkpoint-30" / "config.json").unlink()
    (full / "checkpoint-40").mkdir()  # an empty, unfinished save
    with caplog.at_level(logging.WARNING):
        (run,) = discover_runs([full])
    assert [c.step for c in run.checkpoints] == [0, 10]
    msgs = _warnings(caplog)
    assert len(msgs) == 3
    assert any("checkpoint-20" in m for m in msgs)
    assert any("checkpoint-30" in m and "config.json" in m for m in msgs)
    assert any("checkpoint-40" in m for m in msgs)


def _rewrite_adapter(folder: Path, change) -> None:
    """Rewrite an adapter's safetensors with change(name, tensor) -> tensor applied to every tensor."""
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: change(k, v) for k, v in tensors.items()}, str(weights))


def test_adapters_that_do_not_fit_their_base_or_config_are_skipped(runs_dir, caplog):
    """Broken adapter_config.json, tensors shaped for another model, and a rank that disagrees with the config (peft
    would load it with another scale): each skipped with one warning at discovery, the rest of the run kept."""
    import torch

    run = runs_dir / "lab-lora"
    for step in (30, 40, 50):
        shutil.copytree(run / "checkpoint-10", run / f"checkpoint-{step}")
    (run / "checkpoint-30" / "adapter_config.json").write_text("{bad")
    _rewrite_adapter(run / "checkpoint-40", lambda k, v: torch.cat([v, v[:, :32]], 1) if "lora_A" in k else v)
    cfg_path = run / "checkpoint-50" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = cfg["r"] * 2
    cfg_path.write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        (found,) = discover_runs([run])
    assert [c.step for c in found.checkpoints] == [0, 10, 20]
    msgs = _warnings(caplog)
    assert len(msgs) == 3
    assert any("checkpoint-30" in m and "adapter_config.json" in m for m in msgs)
    assert any("checkpoint-40" in m and "does not fit the base" in m for m in msgs)
    assert any("checkpoint-50" in m and "rank" in m for m in msgs)


def test_stray_entries_beside_runs_are_skipped_and_a_folder_of_runs_alone_is_expanded(runs_dir, caplog, tmp_path):
    """runs/* may match notes, plots or a folder holding more runs: those are skipped with one warning each; a folder
    of runs given alone evaluates the runs inside; nothing evaluable at all is still an error."""
    (runs_dir / "NOTES.md").write_text("notes")
    nested = runs_dir / "validate"
    shutil.copytree(runs_dir / "lab-lora", nested / "lab-lora-copy")
    manifest = json.loads((nested / "lab-lora-copy" / "tina_run.json").read_text())
    (nested / "lab-lora-copy" / "tina_run.json").write_text(json.dumps({**manifest, "name": "lab-lora-copy"}))
    with caplog.at_level(logging.WARNING):
        runs = _by_name(discover_runs([str(runs_dir / "*")]))
    assert set(runs) == {"lab-lora", "lab-full"}
    msgs = _warnings(caplog)
    assert len(msgs) == 2 and any("NOTES.md" in m for m in msgs) and any("folder of runs" in m for m in msgs)
    assert set(_by_name(discover_runs([nested]))) == {"lab-lora-copy"}
    assert set(_by_name(discover_runs([runs_dir]))) == {"lab-lora", "lab-full"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(TinaError, match="no run or checkpoint folder"):
        discover_runs([tmp_path / "a", tmp_path / "b.txt"])


def test_sharded_full_checkpoint(runs_dir):
    from safetensors.torch import load_file, save_file

    ck = runs_dir / "lab-full" / "checkpoint-10"
    tensors = load_file(str(ck / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(ck / fname), metadata={"format": "pt"})
    (ck / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    (run,) = discover_runs([runs_dir / "lab-full"])
    assert [(c.step, c.kind) for c in run.checkpoints] == [(0, "base"), (10, "full")]
    (ck / "model-00002-of-00002.safetensors").unlink()
    (run,) = discover_runs([runs_dir / "lab-full"])
    assert [c.step for c in run.checkpoints] == [0]


def test_adapter_for_another_base_is_skipped(runs_dir, caplog, tmp_path):
    cfg_path = runs_dir / "lab-lora" / "checkpoint-20" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    other = tmp_path / "other-base"
    other.mkdir()
    cfg["base_model_name_or_path"] = str(other)
    cfg_path.write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        (run,) = discover_runs([runs_dir / "lab-lora"])
    assert [c.step for c in run.checkpoints] == [0, 10]
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "checkpoint-20" in msgs[0] and "other-base" in msgs[0]


def test_user_errors(tmp_path):
    with pytest.raises(TinaError, match="no file or folder matches"):
        discover_runs([str(tmp_path / "nothing-*")])
    with pytest.raises(TinaError, match="no such file"):
        discover_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinaError, match="neither a run folder"):
        discover_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tina_run.json").write_text("{not json")
    with pytest.raises(TinaError, match="tina_run.json"):
        discover_runs([bad])


def test_metric_names_unified():
    assert unify_metric_name("rewards/format_reward/mean") == "format_reward"
    assert unify_metric_name("rewards/format_reward") == "format_reward"
    assert unify_metric_name("rewards/accuracy/mean") == "accuracy_reward"
    assert unify_metric_name("rewards/format_reward/std") == "format_reward_std"
    assert unify_metric_name("completions/mean_length") == "completion_length"
    assert unify_metric_name("completion_length") == "completion_length"
    assert unify_metric_name("completions/clipped_ratio") == "clipped_ratio"
    for same in ("kl", "entropy", "loss", "reward", "learning_rate"):
        assert unify_metric_name(same) == same


def test_training_log_new_and_old_trl_names(runs_dir):
    new = training_log(runs_dir / "lab-lora")  # newest checkpoint: checkpoint-20
    assert set(new.columns) == {"step", "metric", "value"}
    fr = new[new.metric == "format_reward"].sort_values("step")
    assert fr["step"].tolist() == list(range(1, 21))
    assert fr["value"].tolist() == pytest.approx([0.1 * s for s in range(1, 21)])
    assert {"accuracy_reward", "completion_length", "clipped_ratio", "kl", "entropy", "loss", "reward",
            "learning_rate"} <= set(new.metric)
    assert new[(new.metric == "completion_length") & (new.step == 5)]["value"].item() == 25.0
    old = training_log(runs_dir / "lab-full")
    assert {"format_reward", "accuracy_reward", "completion_length", "kl", "loss"} <= set(old.metric)
    assert old[(old.metric == "accuracy_reward") & (old.step == 10)]["value"].item() == pytest.approx(0.1)
    assert not old.duplicated(["step", "metric"]).any()


def test_training_log_without_state_is_an_error(tmp_path):
    with pytest.raises(TinaError, match="trainer_state.json"):
        training_log(tmp_path)


def test_an_adapter_on_a_tied_lm_head_passes_discovery(tiny_base, tmp_path):
    """The tied lm_head is saved once, as the input embeddings: an adapter on it is not 'for another model'."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    run = tmp_path / "tied-run"
    get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head", "q_proj"])).save_pretrained(run / "checkpoint-5")
    (run / "tina_run.json").write_text(json.dumps({"name": "tied-run", "base": str(tiny_base)}))
    (found,) = discover_runs([run])
    assert [c.step for c in found.checkpoints] == [0, 5]


def test_an_all_zero_update_is_told_from_the_adapter_file(runs_dir, tiny_base, tmp_path):
    """lora_update_is_zero: B = 0 (or A = 0) in every pair is no update; the fixture's random adapters are one; an
    adapter that also saves other tensors (embeddings) changes the model on its own."""
    from safetensors.torch import load_file, save_file

    from tina_probe.runs import lora_update_is_zero

    ckpt = runs_dir / "lab-lora" / "checkpoint-10"
    assert not lora_update_is_zero(ckpt)
    weights = ckpt / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    for factor in (".lora_B", ".lora_A"):
        save_file({k: v.clone().zero_() if factor in k else v for k, v in tensors.items()}, str(weights))
        assert lora_update_is_zero(ckpt)
    one_pair = sorted(k for k in tensors if ".lora_B" in k)[0]  # all but one pair zero: an update
    save_file({k: v if k == one_pair or ".lora_A" in k else v.clone().zero_() for k, v in tensors.items()},
              str(weights))
    assert not lora_update_is_zero(ckpt)
    extra = {k: v.clone().zero_() if ".lora_B" in k else v for k, v in tensors.items()}
    extra["base_model.model.model.embed_tokens.weight"] = tensors[one_pair].clone()
    save_file(extra, str(weights))
    assert not lora_update_is_zero(ckpt)
