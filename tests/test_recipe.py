"""Recipe loading and validation: unknown keys and bad values are refused by name; shipped recipes are valid."""
from pathlib import Path

import pytest
import yaml

from tina_probe.errors import TinaError
from train.grpo import grpo_config, lora_config
from train.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"


def _write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_validate_and_build_trl_config(path, tmp_path):
    import torch

    r = load_recipe(path)
    assert r.name == path.stem
    cfg = grpo_config(r, tmp_path)  # bf16 (the GPU recipes) builds on CPU too: use_cpu, as transformers wants
    g = r.grpo
    assert cfg.bf16 == g.bf16 and (cfg.use_cpu or not g.bf16 or torch.accelerator.is_available())
    assert cfg.learning_rate == g.learning_rate and cfg.beta == g.beta and cfg.loss_type == g.loss_type
    assert cfg.num_generations == g.num_generations and cfg.temperature == g.temperature
    assert cfg.per_device_train_batch_size == g.prompts_per_step * g.num_generations
    assert cfg.save_only_model and cfg.reward_weights == list(r.rewards.values())
    if r.peft is None:
        assert lora_config(r) is None
    else:
        lc = lora_config(r)
        assert lc.r == r.peft.r and lc.lora_alpha == r.peft.alpha


def test_paper_recipes_match_the_paper():
    for name in ("tina-open-rs2", "tina-open-rs3"):
        r = load_recipe(RECIPES / f"{name}.yaml")
        assert (r.peft.r, r.peft.alpha, r.peft.dropout) == (32, 128, 0.05)
        assert sorted(r.peft.target_modules) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])
        g = r.grpo
        assert (g.learning_rate, g.lr_scheduler_type, g.num_generations, g.temperature) == (1e-6, "cosine_with_min_lr", 6, 0.7)
        assert (g.max_completion_length, g.beta, g.use_vllm, g.vllm_mode) == (3584, 0.04, True, "colocate")


def test_lora_and_full_lab_recipes_differ_only_in_peft_and_lr():
    lora, full = load_recipe(RECIPES / "lab-lora-r8.yaml"), load_recipe(RECIPES / "lab-full.yaml")
    a, b = lora.to_dict(), full.to_dict()
    for d in (a, b):
        for k in ("name", "description", "peft"):
            d.pop(k)
        d["grpo"].pop("learning_rate")
    assert a == b


def test_unknown_key_is_refused_by_name(tmp_path):
    data = yaml.safe_load((RECIPES / "lab-lora-r8.yaml").read_text())
    data["grpo"]["scale_reward"] = False  # the paper's recipe key that TRL silently dropped
    with pytest.raises(TinaError, match=r"scale_reward.*did you mean 'scale_rewards'"):
        load_recipe(_write(tmp_path, data))
    data["grpo"].pop("scale_reward")
    data["extra_top"] = 1
    with pytest.raises(TinaError, match="extra_top"):
        load_recipe(_write(tmp_path, data))


def test_reward_options_reach_the_rewards_and_are_checked(tmp_path):
    r = load_recipe(RECIPES / "real-lora.yaml")
    assert r.reward_options["answer_format"] == "boxed"
    for bad, match in (("reward_options={answer_fromat: boxed}", "unknown option 'answer_fromat'"),
                       ("reward_options={answer_format: xml}", "unknown answer format 'xml'")):
        with pytest.raises(TinaError, match=match):
            load_recipe(RECIPES / "real-lora.yaml", [bad])


def test_unknown_grpo_extra_field_is_refused(tmp_path):
    r = load_recipe(RECIPES / "lab-lora-r8.yaml", ["grpo.extra={max_prompt_lenght: 5}"])
    with pytest.raises(TinaError, match="max_prompt_lenght"):
        grpo_config(r, tmp_path)


@pytest.mark.parametrize("override, message", [
    ("grpo.learning_rate=-1e-4", r"learning_rate` must be > 0"),
    ("grpo.num_generations=1", "num_generations"),
    ("grpo.top_p=1.5", "top_p"),
    ("grpo.loss_type=ppo", "loss_type"),
    ("peft.r=0", "peft.r"),
    ("peft.dropout=1.0", "peft.dropout"),
    ("grpo.learning_rate=fast", r"learning_rate` must be float"),
    ("rewards.accuracy=high", "rewards.accuracy"),
])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(TinaError, match=message):
        load_recipe(RECIPES / "lab-lora-r8.yaml", [override])


def test_overrides_and_full_ft_switch():
    r = load_recipe(RECIPES / "lab-lora-r8.yaml", ["grpo.learning_rate=1e-4", "peft=null", "name=x"])
    assert r.grpo.learning_rate == 1e-4 and r.peft is None and r.kind == "full" and r.name == "x"
    with pytest.raises(TinaError, match="key=value"):
        load_recipe(RECIPES / "lab-lora-r8.yaml", ["grpo.learning_rate"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(TinaError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(TinaError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
