"""Training on several processes: `accelerate launch --multi_gpu --num_processes 2` on the CPU (torchrun, gloo,
one thread each) writes one run as one process would, with the recipe's batch as the GLOBAL batch; and the
DeepSpeed ZeRO-2 accelerate config (train/accelerate/zero2.yaml) agrees with the recipe it is written for.

`accelerate launch --cpu --num_processes N` is not the way: without mpirun accelerate starts ONE process for it
(its simple launcher); train/grpo.py refuses that rather than train alone."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tina_probe.errors import TinaError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "train" / "recipes" / "lab-lora-r8.yaml"
ZERO2 = ROOT / "train" / "accelerate" / "zero2.yaml"
TINA_RS3 = ROOT / "train" / "recipes" / "tina-open-rs3.yaml"
STEPS = ["--set", "grpo.max_steps=2", "--set", "grpo.save_steps=1"]

# Loaded first by every Python process of the launch (PYTHONPATH): a training process (RANK set) records each
# file it opens for writing, or moves into place, under the runs folder, so the test sees who wrote what.
WRITE_RECORDER = '''
import os, sys
_rank = os.environ.get("RANK")
if _rank is not None:
    _root = os.environ["TINA_TEST_RUNS"]
    _fd = os.open(os.environ["TINA_TEST_WRITES"] + "." + _rank, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def _record(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return
        if path.startswith(_root):
            os.write(_fd, (path + "\\n").encode())

    def _hook(event, args):
        if event == "open" and args[0] is not None:
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                _record(args[0])
        elif event == "os.rename":
            _record(args[1])

    sys.addaudithook(_hook)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, runs: Path) -> dict:
    """One thread per process, no distributed settings leaking in from outside, the write recorder loaded."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(WRITE_RECORDER)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ACCELERATE_") and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "PYTHONPATH")}
    return env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(hook),
                  "TINA_TEST_RUNS": str(runs.resolve()), "TINA_TEST_WRITES": str(tmp_path / "writes")}


def _log_rows(state_file: Path) -> list[dict]:
    return [h for h in json.loads(state_file.read_text())["log_history"] if "loss" in h]


def _prompt_tokens(rows: list[dict]) -> list[int]:
    """Prompt tokens of each step's global batch: TRL's num_tokens adds prompt + completion tokens of every
    completion (gathered over processes); completions/count x completions/mean_length is the completion part."""
    seen, out = 0, []
    for r in rows:
        out.append(round(r["num_tokens"] - seen - r["completions/count"] * r["completions/mean_length"]))
        seen = r["num_tokens"]
    return out


@pytest.mark.slow
def test_two_processes_train_one_run_with_the_one_process_batch(tmp_path):
    pytest.importorskip("accelerate", reason="accelerate is not installed: no multi-process launch to test")
    accelerate = Path(sys.executable).with_name("accelerate")
    work = tmp_path / "work"  # relative --out, run from a folder that is not the repository
    work.mkdir()
    env = _env(tmp_path, work / "runs")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "tina_probe.cli", "train", "--recipe", str(RECIPE), "--out", "runs", *STEPS]
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]

    runs = work / "runs"
    assert [p.name for p in runs.iterdir()] == ["lab-lora-r8"]  # exactly one run folder
    run = runs / "lab-lora-r8"
    ckpts = sorted(p.name for p in run.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-1", "checkpoint-2"]
    from safetensors import safe_open

    for c in ckpts:
        with safe_open(run / c / "adapter_model.safetensors", "pt") as f:
            assert any("lora_A" in k for k in f.keys())
    assert not [p for p in run.rglob(".*")], "temporary files left behind"

    m = json.loads((run / "tina_run.json").read_text())
    assert m["status"] == "complete" and m["global_step"] == 2
    g = m["recipe"]["grpo"]
    per_step = g["prompts_per_step"] * g["num_generations"]  # 8 x 8: the recipe's global batch
    assert (m["processes"], m["per_device_train_batch_size"], m["completions_per_step"]) == (2, per_step // 2,
                                                                                             per_step)

    # only the first process wrote into the runs folder: checkpoints, trainer state and the manifest
    writes = {rank: (tmp_path / f"writes.{rank}").read_text().splitlines()
              if (tmp_path / f"writes.{rank}").exists() else [] for rank in ("0", "1")}
    assert writes["1"] == [], writes["1"][:5]
    names = [Path(p).name for p in writes["0"]]
    assert names.count("tina_run.json") == 2  # moved into place twice: status running, then complete
    assert names.count("trainer_state.json") == 2  # one per checkpoint

    # the training log: one row per step, in order, each the global batch of the recipe
    rows = _log_rows(run / "checkpoint-2" / "trainer_state.json")
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["completions/count"] for r in rows] == [per_step, per_step]
    assert _log_rows(run / "checkpoint-1" / "trainer_state.json") == rows[:1]
    assert out.count("'completions/count'") == 2  # printed once per step (by the first process only)

    # one process, same recipe and seed: the same global batch, step by step (the same prompts: the prompt
    # tokens of each step agree; the completions are sampled anew, so only their count is compared)
    one = tmp_path / "one"
    one.mkdir()
    res1 = subprocess.run([sys.executable, "-m", "tina_probe.cli", "train", "--recipe", str(RECIPE),
                           "--out", "runs", *STEPS], cwd=one, env=_env(tmp_path, one / "runs"),
                          capture_output=True, text=True, timeout=600)
    assert res1.returncode == 0, (res1.stdout + res1.stderr)[-4000:]
    run1 = one / "runs" / "lab-lora-r8"
    m1 = json.loads((run1 / "tina_run.json").read_text())
    assert (m1["processes"], m1["per_device_train_batch_size"], m1["completions_per_step"]) == (1, per_step,
                                                                                               per_step)
    rows1 = _log_rows(run1 / "checkpoint-2" / "trainer_state.json")
    assert [r["completions/count"] for r in rows1] == [r["completions/count"] for r in rows]
    assert _prompt_tokens(rows1) == _prompt_tokens(rows)


def test_the_recipe_batch_is_global_and_split_over_processes(tmp_path):
    from train.grpo import grpo_config
    from train.recipe import load_recipe

    r = load_recipe(RECIPE)
    per_step = r.grpo.prompts_per_step * r.grpo.num_generations
    assert grpo_config(r, tmp_path, num_processes=1).per_device_train_batch_size == per_step
    assert grpo_config(r, tmp_path, num_processes=2).per_device_train_batch_size == per_step // 2
    with pytest.raises(TinaError) as e:
        grpo_config(r, tmp_path, num_processes=3)
    msg = str(e.value)
    assert "\n" not in msg and f"{per_step} completions per step" in msg and "3 processes" in msg


def test_a_cpu_launch_that_started_one_process_is_refused(monkeypatch):
    from train.grpo import launched_processes

    for k in ("WORLD_SIZE", "RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MASTER_ADDR",
              "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(k, raising=False)
    assert launched_processes() == 1  # plain `tina-probe train`
    # what `accelerate launch --cpu --num_processes 2` leaves (accelerate's simple launcher, no mpirun)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(TinaError, match=r"started one process.*--multi_gpu --num_processes N"):
        launched_processes()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun (accelerate launch --multi_gpu) or mpirun
    monkeypatch.setenv("RANK", "1")
    assert launched_processes() == 2


# ---------------------------------------------------------------------------------- DeepSpeed ZeRO-2 config

def test_zero2_config_is_what_accelerate_launch_reads_and_agrees_with_the_recipe(monkeypatch):
    """Everything short of running DeepSpeed (not installed here; no GPU): the YAML, accelerate's loader for
    `--config_file`, the launch arguments and DeepSpeed environment it derives, and agreement with the values
    of tina-open-rs3 that transformers matches against a DeepSpeed config (it stops on a mismatch)."""
    pytest.importorskip("accelerate", reason="accelerate is not installed")
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    from train.recipe import load_recipe

    raw = yaml.safe_load(ZERO2.read_text())
    assert isinstance(raw, dict)
    cfg = load_config_from_file(str(ZERO2))
    assert isinstance(cfg, ClusterConfig) and cfg.distributed_type == DistributedType.DEEPSPEED
    assert cfg.deepspeed_config["zero_stage"] == 2 and not cfg.use_cpu

    # as `accelerate launch --config_file zero2.yaml -m tina_probe.cli train ...` reads it
    parser = launch_command_parser()
    dests = {a.dest for a in parser._actions}
    assert set(cfg.deepspeed_config) <= dests, "a deepspeed_config key accelerate launch does not know"
    for k in [k for k in os.environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(k)
    args = parser.parse_args(["--config_file", str(ZERO2), "-m", "tina_probe.cli", "train", "--recipe", "r.yaml"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    assert args.use_deepspeed and args.zero_stage == 2 and args.mixed_precision == "bf16"
    args.deepspeed_fields_from_accelerate_config = ",".join(
        list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else []))
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"

    # the DeepSpeed config the training processes would build from that environment (no deepspeed needed)
    for k, v in env.items():
        if k.startswith("ACCELERATE_"):
            monkeypatch.setenv(k, v)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2

    # ... agrees with the recipe where transformers checks it (HfTrainerDeepSpeedConfig.trainer_config_process)
    g = load_recipe(TINA_RS3).grpo
    assert ds["bf16"]["enabled"] is g.bf16 and ds["fp16"]["enabled"] is False
    assert ds["gradient_accumulation_steps"] == g.gradient_accumulation_steps
    assert ds["gradient_clipping"] == g.max_grad_norm
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["train_batch_size"] == "auto"
    # the recipe's batch is global: it must split evenly over the config's processes
    assert (g.prompts_per_step * g.num_generations) % args.num_processes == 0
