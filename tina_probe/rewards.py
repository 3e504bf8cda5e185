"""TRL reward functions built on formats + grading, so training and evaluation judge completions one way.

TRL 1.16 calls each as f(prompts=..., completions=..., completion_ids=..., **dataset_columns) and logs
rewards/<f.__name__>/mean. Completions are strings or conversational lists of {"role", "content"} dicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tina_probe.errors import TinaError
from tina_probe.formats import THINK_CLOSE, THINK_OPEN, check_answer_format, format_report
from tina_probe.grading import check_answer_kind, grade, normalize_gold

# open-r1's <think>/<answer> layout, anchored at both ends.
_R1_FORMAT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL)
# tag_count: each tag spelled with its newlines should occur exactly once; 0.25 per tag that does.
_TAGS = (THINK_OPEN + "\n", "\n" + THINK_CLOSE + "\n", "\n<answer>\n", "\n</answer>")


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the concatenated contents of conversational messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # content as typed parts: [{"type": "text", "text": ...}]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "".join(parts)


def _golds(n: int, kwargs: dict) -> list:
    """The gold answers from the dataset column `answer` (or `solution`); a TinaError when neither is there."""
    for column in ("answer", "solution"):
        if kwargs.get(column) is not None:
            golds = list(kwargs[column])
            if len(golds) != n:
                raise TinaError(f"reward dataset column '{column}': {len(golds)} values for {n} completions")
            return golds
    raise TinaError("reward dataset: no 'answer' or 'solution' column for the accuracy rewards")


def _usable_gold(gold: Any) -> str | None:
    """The gold as text, or None when the row has no usable gold (TRL turns a None reward into NaN)."""
    try:
        return normalize_gold(gold)
    except TinaError:
        return None


def _lenient_correct(text: str, gold: Any, answer_kind: str = "math") -> bool | None:
    """Lenient correctness (the paper's accuracy reward) under the answer kind (grading.ANSWER_KINDS), None where the
    gold is missing."""
    gold_text = _usable_gold(gold)
    return None if gold_text is None else grade(text, gold_text, answer_kind=answer_kind).correct_lenient


def _truncated(ids: Sequence[int] | None, max_completion_length: int | None) -> bool:
    """A completion whose token count reached the generation limit was cut off."""
    return max_completion_length is not None and ids is not None and len(ids) >= max_completion_length


def accuracy_reward(completions: list, *, answer_kind: str = "math", **kwargs: Any) -> list[float | None]:
    """1.0 when math-verify finds the gold answer in the completion (lenient grading), else 0.0; answer_kind
    "number" pays only an answer written as a number (grading.ANSWER_KINDS), not the question's expression."""
    texts = [completion_text(c) for c in completions]
    golds = _golds(len(texts), kwargs)
    oks = (_lenient_correct(text, gold, answer_kind) for text, gold in zip(texts, golds))
    return [None if ok is None else float(ok) for ok in oks]


def format_reward(
    completions: list,
    completion_ids: list | None = None,
    *,
    think_in_prompt: bool = False,
    max_completion_length: int | None = None,
    answer_format: str = "think_boxed",
    **kwargs: Any,
) -> list[float]:
    """1.0 when the completion is well formatted: thinking closed once, one \\boxed{} after it, not cut off
    (answer_format "boxed": thinking tags optional)."""
    ids = completion_ids if completion_ids is not None else [None] * len(completions)
    return [
        float(
            format_report(
                completion_text(c), truncated=_truncated(i, max_completion_length), think_in_prompt=think_in_prompt,
                answer_format=answer_format,
            ).well_formatted
        )
        for c, i in zip(completions, ids)
    ]


def format_r1_reward(completions: list, *, think_in_prompt: bool = False, **kwargs: Any) -> list[float]:
    """1.0 when the completion is exactly <think>\\n...\\n</think>\\n<answer>\\n...\\n</answer> (open-r1's layout)."""
    prefix = THINK_OPEN + "\n" if think_in_prompt else ""  # the template's prompt already opened the thinking
    return [float(_R1_FORMAT.match(prefix + completion_text(c)) is not None) for c in completions]


def tag_count_reward(completions: list, *, think_in_prompt: bool = False, **kwargs: Any) -> list[float]:
    """0.25 for each of <think>\\n, \\n</think>\\n, \\n<answer>\\n, \\n</answer> that occurs exactly once."""
    prefix = THINK_OPEN + "\n" if think_in_prompt else ""
    texts = [prefix + completion_text(c) for c in completions]
    return [sum(0.25 for tag in _TAGS if text.count(tag) == 1) for text in texts]


def cosine_reward(
    completions: list,
    completion_ids: list | None = None,
    *,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    answer_kind: str = "math",
    **kwargs: Any,
) -> list[float | None]:
    """Cosine-scaled length reward: short correct answers earn most, long wrong ones are penalized least.

    Length is the completion's token count (completion_ids), or its characters when ids are not given.
    """
    texts = [completion_text(c) for c in completions]
    ids = completion_ids if completion_ids is not None else [None] * len(texts)
    rewards: list[float | None] = []
    for text, tokens, gold in zip(texts, ids, _golds(len(texts), kwargs)):
        ok = _lenient_correct(text, gold, answer_kind)
        if ok is None:
            rewards.append(None)
            continue
        length = len(tokens) if tokens is not None else len(text)
        cosine = math.cos(math.pi * min(length, max_len) / max_len)  # 1 at length 0, -1 at max_len
        # Correct: from max_value_correct (short) down to min_value_correct (long).
        # Wrong: from min_value_wrong (short) up to max_value_wrong (long).
        short, long = (max_value_correct, min_value_correct) if ok else (min_value_wrong, max_value_wrong)
        rewards.append(long + 0.5 * (short - long) * (1.0 + cosine))
    return rewards


@dataclass(frozen=True)
class RewardFunc:
    """A reward function with its options bound; named like the registry entry so TRL logs rewards/<name>/mean."""

    name: str
    func: Callable[..., list]
    options: tuple[tuple[str, Any], ...] = ()  # (keyword, value) pairs: a tuple keeps the record hashable

    def __post_init__(self) -> None:
        object.__setattr__(self, "__name__", self.name)  # TRL reads __name__ for its log keys

    def __call__(self, *args: Any, **kwargs: Any) -> list:
        return self.func(*args, **{**kwargs, **dict(self.options)})


def make_cosine(
    max_len: int = 1000,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    answer_kind: str = "math",
) -> RewardFunc:
    """The `cosine` reward with its length scale, reward range and answer kind set (checked for sense)."""
    if max_len <= 0:
        raise TinaError(f"cosine reward: max_len must be positive, got {max_len}")
    if min_value_wrong > max_value_wrong or min_value_correct > max_value_correct:
        raise TinaError("cosine reward: each min_value must not exceed its max_value")
    options = dict(max_len=max_len, min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
                   min_value_correct=min_value_correct, max_value_correct=max_value_correct,
                   answer_kind=check_answer_kind(answer_kind, "cosine reward"))
    return RewardFunc("cosine", cosine_reward, tuple(options.items()))


REWARDS: dict[str, RewardFunc] = {
    "accuracy": RewardFunc("accuracy", accuracy_reward),
    "format": RewardFunc("format", format_reward),
    "format_r1": RewardFunc("format_r1", format_r1_reward),
    "tag_count": RewardFunc("tag_count", tag_count_reward),
    "cosine": make_cosine(),
}

# get_reward_funcs options: name -> the rewards that take it (as which keyword).
_OPTIONS = {
    "think_in_prompt": {"format": "think_in_prompt", "format_r1": "think_in_prompt", "tag_count": "think_in_prompt"},
    "max_completion_length": {"format": "max_completion_length"},
    "answer_format": {"format": "answer_format"},
    "answer_kind": {"accuracy": "answer_kind", "cosine": "answer_kind"},
    **{
        f"cosine_{opt}": {"cosine": opt}
        for opt in ("max_len", "min_value_wrong", "max_value_wrong", "min_value_correct", "max_value_correct")
    },
}


def get_reward_funcs(names: Sequence[str], **cfg: Any) -> list[RewardFunc]:
    """Reward functions by registry name, configured by cfg (think_in_prompt, max_completion_length, answer_format,
    answer_kind, cosine_*)."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise TinaError(f"rewards: unknown reward {unknown[0]!r} (known: {', '.join(REWARDS)})")
    bad = [k for k in cfg if k not in _OPTIONS]
    if bad:
        raise TinaError(f"rewards: unknown option {bad[0]!r} (known: {', '.join(_OPTIONS)})")
    if "answer_format" in cfg:
        check_answer_format(cfg["answer_format"], "rewards: answer_format")
    if "answer_kind" in cfg:
        check_answer_kind(cfg["answer_kind"], "rewards")
    funcs = []
    for name in names:
        options = {kw: cfg[key] for key, targets in _OPTIONS.items() for target, kw in targets.items()
                   if target == name and key in cfg}
        if name == "cosine":
            funcs.append(make_cosine(**options))
        else:
            funcs.append(RewardFunc(name, REWARDS[name].func, tuple(options.items())))
    return funcs
