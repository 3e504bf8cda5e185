"""Recipe: one YAML file that gives a LoRA run (`peft:` block) or a full fine-tune (`peft: null`).

Every key is validated: an unknown key is refused by name (the paper's released recipe says
`scale_reward`, which TRL silently ignored), and out-of-range values are refused with the allowed range.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tina_probe.errors import TinaError

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr")
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DatasetSpec:
    """Where the RL prompts come from and how to render them."""

    path: str = "data/lab/train.jsonl"
    split: str = "train"
    question_field: str = "question"
    answer_field: str = "answer"
    prompt_template: str = "{question}"
    system_prompt: str | None = None
    limit: int | None = None


@dataclass
class GRPOSpec:
    """GRPO settings; every value the recipe relies on is explicit (TRL 1.16 defaults differ from TRL 0.15).

    The batch is GLOBAL: `prompts_per_step` x `num_generations` completions per micro-step on all processes
    together; with N processes (accelerate/torchrun) each gets 1/N of them (TRL's per_device_train_batch_size), and
    N must divide the product. TRL generates once per `gradient_accumulation_steps` micro-steps (its
    steps_per_generation), so an optimizer step sees prompts_per_step x num_generations x
    gradient_accumulation_steps completions, on 1 process or on N. A prompt's group may span processes: rewards
    are gathered before the group's advantages are computed."""

    num_generations: int = 8
    prompts_per_step: int = 8
    max_completion_length: int = 64
    learning_rate: float = 5e-4
    lr_scheduler_type: str = "constant"
    min_lr_rate: float = 0.1
    warmup_ratio: float = 0.0
    beta: float = 0.02
    loss_type: str = "dr_grpo"
    scale_rewards: str = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    max_steps: int = 120
    save_steps: int = 10
    logging_steps: int = 1
    seed: int = 42
    gradient_accumulation_steps: int = 1
    num_iterations: int = 1
    epsilon: float = 0.2
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.4
    torch_threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PeftSpec:
    """LoRA settings (PEFT LoraConfig)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    use_rslora: bool = False


@dataclass
class Recipe:
    """A whole training recipe."""

    name: str
    base: str
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    rewards: dict[str, float] = field(default_factory=lambda: {"accuracy": 2.0, "format": 1.0})
    grpo: GRPOSpec = field(default_factory=GRPOSpec)
    peft: PeftSpec | None = field(default_factory=PeftSpec)
    eval_benchmark: str = "lab-test"
    description: str = ""
    # options of the rewards (tina_probe.rewards.get_reward_funcs): answer_format, answer_kind, max_completion_length,
    # think_in_prompt, cosine_*; e.g. {answer_format: boxed} for a base that never writes thinking tags,
    # {answer_kind: number} where the question holds the expression that math-verify would evaluate to the gold
    reward_options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "full" if self.peft is None else "lora"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str, source: str):
    """Build dataclass `cls` from a mapping, refusing unknown keys by name (with a suggestion)."""
    if not isinstance(data, dict):
        raise TinaError(f"{source}: `{where}` must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, names, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TinaError(f"{source}: unknown key(s) in `{where}`: {', '.join(hints)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = {"dataset": DatasetSpec, "grpo": GRPOSpec, "peft": PeftSpec}.get(f.name) if cls is Recipe else None
        if sub is not None and value is not None:
            value = _build(sub, value, f"{where}.{f.name}" if where != "recipe" else f.name, source)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise TinaError(f"{source}: `{where}`: {e}") from None


def _check(cond: bool, source: str, msg: str) -> None:
    if not cond:
        raise TinaError(f"{source}: {msg}")


def _coerce_types(obj, source: str, where: str) -> None:
    """YAML gives '5e-4' as a string: coerce numbers by the field's annotation, refusing what cannot be."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        t = str(f.type)
        try:
            if t.startswith("float") and isinstance(v, (str, int)) and not isinstance(v, bool):
                setattr(obj, f.name, float(v))
            elif t.startswith("int") and isinstance(v, str):
                setattr(obj, f.name, int(v))
            elif t == "bool" and not isinstance(v, bool):
                raise ValueError
        except ValueError:
            raise TinaError(f"{source}: `{where}.{f.name}` must be {t}, got {v!r}") from None


def validate(recipe: Recipe, source: str = "recipe") -> Recipe:
    """Check ranges and names; raise TinaError naming the first problem."""
    g = recipe.grpo
    _coerce_types(g, source, "grpo")
    if recipe.peft is not None:
        _coerce_types(recipe.peft, source, "peft")
    _check(bool(recipe.name) and "/" not in recipe.name, source, "`name` must be a non-empty name without '/'")
    _check(bool(recipe.base), source, "`base` (model path or hub id) is required")
    _check(g.learning_rate > 0, source, f"`grpo.learning_rate` must be > 0, got {g.learning_rate}")
    _check(g.num_generations >= 2, source, f"`grpo.num_generations` must be >= 2, got {g.num_generations}")
    _check(g.prompts_per_step >= 1, source, f"`grpo.prompts_per_step` must be >= 1, got {g.prompts_per_step}")
    _check(g.max_completion_length >= 1, source, "`grpo.max_completion_length` must be >= 1")
    _check(g.beta >= 0, source, f"`grpo.beta` must be >= 0, got {g.beta}")
    _check(0 < g.temperature <= 5, source, f"`grpo.temperature` must be in (0, 5], got {g.temperature}")
    _check(0 < g.top_p <= 1, source, f"`grpo.top_p` must be in (0, 1], got {g.top_p}")
    _check(g.max_steps >= 1, source, f"`grpo.max_steps` must be >= 1, got {g.max_steps}")
    _check(1 <= g.save_steps, source, f"`grpo.save_steps` must be >= 1, got {g.save_steps}")
    _check(0 <= g.warmup_ratio < 1, source, f"`grpo.warmup_ratio` must be in [0, 1), got {g.warmup_ratio}")
    _check(0 <= g.min_lr_rate <= 1, source, f"`grpo.min_lr_rate` must be in [0, 1], got {g.min_lr_rate}")
    _check(g.loss_type in LOSS_TYPES, source, f"`grpo.loss_type` must be one of {LOSS_TYPES}, got {g.loss_type!r}")
    _check(g.scale_rewards in SCALE_REWARDS, source,
           f"`grpo.scale_rewards` must be one of {SCALE_REWARDS}, got {g.scale_rewards!r}")
    _check(g.lr_scheduler_type in SCHEDULERS, source,
           f"`grpo.lr_scheduler_type` must be one of {SCHEDULERS}, got {g.lr_scheduler_type!r}")
    _check(g.vllm_mode in ("colocate", "server"), source, "`grpo.vllm_mode` must be colocate or server")
    _check(isinstance(g.extra, dict), source, "`grpo.extra` must be a mapping of GRPOConfig fields")
    _check(isinstance(recipe.rewards, dict) and recipe.rewards, source, "`rewards` must map reward names to weights")
    for name, w in recipe.rewards.items():
        _check(isinstance(w, (int, float)) and not isinstance(w, bool), source,
               f"`rewards.{name}` weight must be a number, got {w!r}")
    _check(isinstance(recipe.reward_options, dict), source, "`reward_options` must be a mapping of reward options")
    cut = recipe.reward_options.get("max_completion_length", g.max_completion_length)
    _check(cut == g.max_completion_length, source, f"`reward_options.max_completion_length` ({cut}) must equal "
           f"`grpo.max_completion_length` ({g.max_completion_length}): completions cut there count as truncated")
    from tina_probe.rewards import get_reward_funcs

    try:  # unknown rewards, options or answer formats, named with the recipe file
        get_reward_funcs(list(recipe.rewards), **recipe.reward_options)
    except TinaError as e:
        raise TinaError(f"{source}: {e}") from None
    if recipe.peft is not None:
        p = recipe.peft
        _check(isinstance(p.r, int) and p.r >= 1, source, f"`peft.r` must be an integer >= 1, got {p.r!r}")
        _check(p.alpha > 0, source, f"`peft.alpha` must be > 0, got {p.alpha}")
        _check(0 <= p.dropout < 1, source, f"`peft.dropout` must be in [0, 1), got {p.dropout}")
        _check(bool(p.target_modules), source, "`peft.target_modules` must name at least one module")
    return recipe


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise TinaError(f"--set {text!r}: expected key=value, e.g. grpo.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set a.b=value` overrides (values parsed as YAML) to the raw recipe mapping."""
    for text in overrides or []:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise TinaError(f"--set {text!r}: {part!r} is not a mapping")
        node[path[-1]] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise TinaError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TinaError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TinaError(f"{path}: a recipe must be a YAML mapping")
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    missing = [k for k in ("base",) if k not in data]
    if missing:
        raise TinaError(f"{path}: missing required key(s): {', '.join(missing)}")
    recipe = _build(Recipe, data, "recipe", str(path))
    recipe.base = _locate(recipe.base)
    if recipe.dataset is not None:
        recipe.dataset.path = _locate(recipe.dataset.path)
    return validate(recipe, str(path))


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _locate(value: str) -> str:
    """A relative path that is missing from the working directory is looked up in the project root
    (so shipped recipes work from anywhere); hub ids and absolute paths pass through."""
    if not isinstance(value, str) or Path(value).is_absolute() or Path(value).exists():
        return value
    candidate = PROJECT_ROOT / value
    return str(candidate) if candidate.exists() else value
