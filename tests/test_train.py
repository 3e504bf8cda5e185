"""The trainer end to end on a tiny model: checkpoints, manifest, log names, bad input, interruption."""
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tina_probe.cli import app
from tina_probe.lab.tokenizer import build_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"
TINY = ["grpo.max_steps=2", "grpo.save_steps=1", "grpo.max_completion_length=12", "grpo.prompts_per_step=2",
        "grpo.num_generations=4", "dataset.limit=16"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-base")
    tok = build_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _train(args):
    return CliRunner().invoke(app, ["train", *args], catch_exceptions=False)


def _sets(*items):
    return [x for item in items for x in ("--set", item)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, kind", [("lab-lora-r8", "lora"), ("lab-full", "full")])
def test_tiny_run_writes_checkpoints_and_manifest(tiny_base, tmp_path, recipe, kind):
    res = _train(["--recipe", str(RECIPES / f"{recipe}.yaml"), "--out", str(tmp_path),
                  *_sets(f"base={tiny_base}", *TINY)])
    assert res.exit_code == 0, res.output
    run = tmp_path / recipe
    ckpts = sorted(run.glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    weights = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
    assert all((c / weights).is_file() for c in ckpts)
    assert not list(run.rglob("optimizer.pt"))  # save_only_model
    m = json.loads((run / "tina_run.json").read_text())
    assert m["kind"] == kind and m["status"] == "complete" and m["global_step"] == 2
    assert Path(m["base"]) == tiny_base.resolve() and len(m["base_hash"]) == 64 and m["data_hash"]
    assert m["recipe"]["grpo"]["max_steps"] == 2 and "trl" in m["versions"]
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    keys = set().union(*[set(h) for h in state["log_history"]])
    assert {"rewards/accuracy/mean", "rewards/format/mean", "completions/mean_length"} <= keys


@pytest.mark.slow
def test_interrupted_run_keeps_finished_checkpoints(tiny_base, tmp_path):
    from transformers import TrainerCallback

    from train.grpo import train
    from train.recipe import load_recipe

    class StopAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    recipe = load_recipe(RECIPES / "lab-lora-r8.yaml", [f"base={tiny_base}", *TINY, "grpo.max_steps=5"])
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path, callbacks=[StopAtStep3()])
    run = tmp_path / "lab-lora-r8"
    for step in (1, 2):
        from safetensors import safe_open

        with safe_open(run / f"checkpoint-{step}" / "adapter_model.safetensors", "pt") as f:
            assert len(list(f.keys())) > 0
    assert json.loads((run / "tina_run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("override, needle", [
    ("base=/nonexistent/base-model", "base model path not found: /nonexistent/base-model"),
    ("dataset.path=/nonexistent/train.jsonl", "dataset file not found: /nonexistent/train.jsonl"),
    ("grpo.learning_rate=-0.001", "learning_rate` must be > 0"),
    ("grpo.scale_reward=false", "unknown key(s) in `grpo`: 'scale_reward'"),
])
def test_bad_input_gives_one_clear_line(override, needle, tmp_path, tiny_base):
    res = _train(["--recipe", str(RECIPES / "lab-lora-r8.yaml"), "--out", str(tmp_path),
                  "--set", f"base={tiny_base}", "--set", override])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_unreadable_dataset(tmp_path, tiny_base):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n{not json\n')
    res = _train(["--recipe", str(RECIPES / "lab-lora-r8.yaml"), "--out", str(tmp_path),
                  "--set", f"base={tiny_base}", "--set", f"dataset.path={bad}"])
    assert res.exit_code == 2 and "cannot read dataset" in res.output and str(bad) in res.output


def _log_history(ckpt: Path) -> list[dict]:
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    return [{k: v for k, v in h.items() if "time" not in k and "per_second" not in k} for h in history]


@pytest.mark.slow
def test_completion_only_head_trains_the_same_adapter_bit_for_bit(tiny_base, tmp_path, monkeypatch):
    """On CPU a LoRA run scores only the completions through TRL's fused LM head (`completion_only_head_on_cpu`);
    TRL's own way (TINA_PROBE_SLOW_PATHS=1) scores every position. Same adapters bit for bit, same logs, with the
    reference model's head (beta > 0) taking the same path."""
    import trl.trainer.utils as trl_utils
    from safetensors.torch import load_file

    from train.grpo import train
    from train.recipe import load_recipe

    original = trl_utils._use_triton
    recipe = load_recipe(RECIPES / "lab-lora-r8.yaml", [f"base={tiny_base}", *TINY, "grpo.beta=0.04"])
    fast = train(recipe, tmp_path / "fast")
    assert trl_utils._use_triton is original  # restored after the run
    monkeypatch.setenv("TINA_PROBE_SLOW_PATHS", "1")
    slow = train(recipe, tmp_path / "slow")
    for step in (1, 2):
        a = load_file(fast / f"checkpoint-{step}" / "adapter_model.safetensors")
        b = load_file(slow / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_history(fast / "checkpoint-2") == _log_history(slow / "checkpoint-2")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, weights, prompts", [("lab-lora-r8", "adapter_model.safetensors", 2),
                                                      ("lab-full", "model.safetensors", 4)])
def test_sampling_with_finished_rows_leaving_trains_the_same_weights(tmp_path, monkeypatch, recipe, weights, prompts):
    """TRL's completions sampled by sample_like_generate (`finished_rows_leave_on_cpu`) or by generate itself: the
    same checkpoints bit for bit and the same logs, on the lab base (whose completions end at different lengths;
    `prompts` x 4 generations share a prefill of 4 rows: the 4 distinct prompts, or 2 and 2 repeats)."""
    from safetensors.torch import load_file

    import tina_probe.generate.decode as decode
    from train.grpo import train
    from train.recipe import load_recipe

    lab_base = Path(__file__).resolve().parents[1] / "data" / "lab" / "base"
    recipe = load_recipe(RECIPES / f"{recipe}.yaml", [f"base={lab_base}", *TINY, "grpo.max_completion_length=48",
                                                      f"grpo.prompts_per_step={prompts}"])
    taken, sample = [], decode.sample_like_generate
    monkeypatch.setattr(decode, "sample_like_generate", lambda *a, **k: taken.append(sample(*a, **k)) or taken[-1])
    shared, distinct = [], decode._prefill_rows
    monkeypatch.setattr(decode, "_prefill_rows", lambda *a: shared.append(distinct(*a)) or shared[-1])
    fast = train(recipe, tmp_path / "fast")
    assert len(taken) == 2 and all(out is not None for out in taken)  # both steps sampled through it
    assert [c for c in taken[0][:, -1].tolist()].count(0) > 0  # some completions ended before the last column
    assert len(shared) == 2 and all(s is not None and len(s[0]) == 4 and len(s[1]) == 4 * prompts for s in shared)
    monkeypatch.setattr(decode, "sample_like_generate", lambda *a, **k: None)
    slow = train(recipe, tmp_path / "generate")
    for step in (1, 2):
        a, b = (load_file(run / f"checkpoint-{step}" / weights) for run in (fast, slow))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_history(fast / "checkpoint-2") == _log_history(slow / "checkpoint-2")


def test_completion_only_head_only_where_the_head_is_frozen(tiny_base):
    """The switch is on for a frozen head (LoRA), off for a trained one (full FT), and TRL's own test is back after."""
    import trl.trainer.utils as trl_utils
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from train.grpo import completion_only_head_on_cpu

    cpu = torch.device("cpu")
    original = trl_utils._use_triton
    assert not original(cpu)  # what the switch is for: TRL takes CPU for a device that must score every position
    full = AutoModelForCausalLM.from_pretrained(tiny_base)
    with completion_only_head_on_cpu(full) as on:
        assert not on and not trl_utils._use_triton(cpu)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with completion_only_head_on_cpu(lora) as on:
        assert on and trl_utils._use_triton(cpu)
    assert trl_utils._use_triton is original


@pytest.mark.slow
def test_bf16_trains_on_cpu(tiny_base, tmp_path):
    """grpo.bf16 on a machine without an accelerator: the run trains (transformers wants use_cpu, which grpo_config
    sets), with the base in bfloat16 and the LoRA adapters kept in float32 (PEFT's default)."""
    from safetensors.torch import load_file

    res = _train(["--recipe", str(RECIPES / "lab-lora-r8.yaml"), "--out", str(tmp_path),
                  *_sets(f"base={tiny_base}", *TINY, "grpo.bf16=true")])
    assert res.exit_code == 0, res.output
    adapter = load_file(tmp_path / "lab-lora-r8" / "checkpoint-2" / "adapter_model.safetensors")
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    losses = [h["loss"] for h in json.loads((tmp_path / "lab-lora-r8" / "checkpoint-2" / "trainer_state.json")
                                            .read_text())["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(abs(x) < 1e3 for x in losses)
