"""Reward functions called the way TRL 1.16 calls them, with string and conversational completions."""

import math
import pickle

import pytest

from tina_probe.errors import TinaError
from tina_probe.rewards import REWARDS, completion_text, get_reward_funcs, make_cosine

GOOD = "<think>\n7-3=4\n4*5=20\n</think>\n\\boxed{20}"
BOXED_IN_THINK = "<think>\n4*5=20\n\\boxed{20}\n</think>\nDone."
WRONG = "<think>\n4*5=20\n</think>\n\\boxed{21}"
R1 = "<think>\n4*5=20\n</think>\n<answer>\n20\n</answer>"
COMPLETIONS = [GOOD, BOXED_IN_THINK, WRONG, R1]


def trl_call(func, completions, answers, conversational=False, ids=None):
    """Call a reward function with TRL 1.16's keyword arguments (dataset columns repeated per completion)."""
    if conversational:
        completions = [[{"role": "assistant", "content": c}] for c in completions]
        prompts = [[{"role": "user", "content": "q"}] for _ in completions]
    else:
        prompts = ["q"] * len(completions)
    ids = ids if ids is not None else [[0] * len(completion_text(c)) for c in completions]
    return func(prompts=prompts, completions=completions, completion_ids=ids, answer=answers,
                id=list(range(len(completions))), trainer_state=None, log_extra=None, log_metric=None)


@pytest.mark.parametrize("conversational", [False, True])
def test_registry_rewards(conversational):
    answers = ["20"] * len(COMPLETIONS)
    call = lambda name: trl_call(REWARDS[name], COMPLETIONS, answers, conversational)  # noqa: E731
    assert call("accuracy") == [1.0, 1.0, 0.0, 1.0]  # lenient: the boxed-in-think and <answer> ones count
    assert call("format") == [1.0, 0.0, 1.0, 0.0]  # well formatted says nothing about correctness
    assert call("format_r1") == [0.0, 0.0, 0.0, 1.0]
    assert call("tag_count") == [0.5, 0.5, 0.5, 1.0]


def test_names_for_trl_logging():
    for name, func in REWARDS.items():
        assert func.__name__ == name
    funcs = get_reward_funcs(["accuracy", "format", "format_r1", "tag_count", "cosine"])
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "format_r1", "tag_count", "cosine"]
    assert pickle.loads(pickle.dumps(funcs[4]))(completions=[GOOD], answer=["20"]) == funcs[4](
        completions=[GOOD], answer=["20"])


def test_solution_column_and_missing_gold():
    solution = r"So the total is $4 \cdot 5 = \boxed{20}$."
    assert REWARDS["accuracy"](completions=[GOOD, WRONG], solution=[solution] * 2) == [1.0, 0.0]
    assert REWARDS["accuracy"](completions=[GOOD], answer=[None]) == [None]  # TRL turns None into NaN
    with pytest.raises(TinaError, match="answer"):
        REWARDS["accuracy"](completions=[GOOD], question=["q"])


def test_think_in_prompt_and_truncation_options():
    no_open = ["4*5=20\n</think>\n<answer>\n20\n</answer>"]
    plain = get_reward_funcs(["format_r1", "tag_count"])
    templ = get_reward_funcs(["format_r1", "tag_count"], think_in_prompt=True)
    assert [f(completions=no_open)[0] for f in plain] == [0.0, 0.75]
    assert [f(completions=no_open)[0] for f in templ] == [1.0, 1.0]
    (fmt,) = get_reward_funcs(["format"], max_completion_length=8)
    assert fmt(completions=[GOOD, GOOD], completion_ids=[[1] * 8, [1] * 7]) == [0.0, 1.0]


def test_answer_format_option():
    """answer_format boxed rewards one box without thinking tags; an unknown format is refused by name."""
    plain = ["7 + 5 = 12, so \\boxed{12}", GOOD, "\\boxed{1} \\boxed{2}"]
    (think_boxed,) = get_reward_funcs(["format"])
    (boxed,) = get_reward_funcs(["format"], answer_format="boxed")
    assert think_boxed(completions=plain) == [0.0, 1.0, 0.0]
    assert boxed(completions=plain) == [1.0, 1.0, 0.0]
    with pytest.raises(TinaError, match="unknown answer format 'xml'"):
        get_reward_funcs(["format"], answer_format="xml")


def test_cosine_reward_shape():
    cos = make_cosine(max_len=100, min_value_wrong=-1.0, max_value_wrong=-0.5,
                      min_value_correct=0.5, max_value_correct=1.0)
    assert cos.__name__ == "cosine"

    def at(completion, length):
        return cos(completions=[completion], completion_ids=[[0] * length], answer=["20"])[0]

    assert at(GOOD, 0) == pytest.approx(1.0) and at(GOOD, 100) == pytest.approx(0.5)
    assert at(GOOD, 50) == pytest.approx(0.75) and at(GOOD, 500) == pytest.approx(0.5)  # capped at max_len
    assert at(WRONG, 0) == pytest.approx(-1.0) and at(WRONG, 100) == pytest.approx(-0.5)
    assert at(GOOD, 10) > at(GOOD, 60)  # shorter correct earns more
    assert at(WRONG, 60) > at(WRONG, 10)  # longer wrong is penalized less
    expected = 0.5 + 0.25 * (1 + math.cos(math.pi * 0.3))
    assert at(GOOD, 30) == pytest.approx(expected)
    (configured,) = get_reward_funcs(["cosine"], cosine_max_len=100)
    assert configured(completions=[GOOD], completion_ids=[[0] * 50], answer=["20"]) == [pytest.approx(0.75)]


def test_bad_names_and_options():
    with pytest.raises(TinaError, match="'acuracy'"):
        get_reward_funcs(["acuracy"])
    with pytest.raises(TinaError, match="'cosine_maxlen'"):
        get_reward_funcs(["cosine"], cosine_maxlen=10)
    with pytest.raises(TinaError, match="max_len"):
        make_cosine(max_len=0)


def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]) == "x"


def test_answer_kind_number_pays_no_echo():
    """answer_kind number: accuracy (and cosine) pay a computed number, not the question's expression in the box and
    not an empty box (what two real runs learned under the math kind); the format reward refuses an empty box."""
    completions = ["\\boxed{7 + 5}", "7 + 5 = \\boxed{}.", "7 + 5 = 12, \\boxed{12}", "\\boxed{13}"]
    answers = ["12"] * 4
    (acc_math,) = get_reward_funcs(["accuracy"])
    (acc_num,) = get_reward_funcs(["accuracy"], answer_kind="number")
    assert trl_call(acc_math, completions, answers) == [1.0, 1.0, 1.0, 0.0]
    assert trl_call(acc_num, completions, answers) == [0.0, 0.0, 1.0, 0.0]
    (cos_num,) = get_reward_funcs(["cosine"], answer_kind="number", cosine_max_len=100)
    rewards = trl_call(cos_num, completions, answers)
    assert rewards[2] > 0 > max(rewards[0], rewards[1], rewards[3])
    (fmt,) = get_reward_funcs(["format"], answer_format="boxed")
    assert trl_call(fmt, completions, answers) == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(TinaError, match="answer_kind must be one of math, number"):
        get_reward_funcs(["accuracy"], answer_kind="numbers")
    with pytest.raises(TinaError, match="cosine reward: answer_kind"):
        make_cosine(answer_kind="numbers")


def test_real_recipes_reward_number_answers():
    """Both real recipes bind answer_kind number to their accuracy reward: the echo earns format only (1 of 3)."""
    from pathlib import Path

    from train.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "train" / "recipes"
    for name in ("real-lora", "real-full"):
        recipe = load_recipe(root / f"{name}.yaml")
        funcs = get_reward_funcs(list(recipe.rewards), **recipe.reward_options)
        total = [sum(recipe.rewards[f.name] * r for f, r in zip(funcs, rs))
                 for rs in zip(*(trl_call(f, ["\\boxed{7 + 5}", "\\boxed{12}"], ["12", "12"], ids=[[1], [1]])
                                 for f in funcs))]
        assert total == [1.0, 3.0], name
