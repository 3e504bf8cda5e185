"""The plain-integer fast path against math-verify (the reference): every grade field equal on lab-kind completions."""

import itertools
from pathlib import Path

import pytest

from tina_probe.grading import grade
from tina_probe.integer_answers import answer_is_integer, lenient_integer, lone_box_integer, plain_integer
from tina_probe.lab import tasks
from tina_probe.slow_paths import ENV

LAB = Path(__file__).resolve().parents[1] / "data" / "lab"
SPLITS = ("train", "probe", "test", "train-hard", "probe-hard", "test-hard")
# Golds beyond the lab's (all non-negative, no leading zeros): the signs, zeros and sizes the fast path must handle.
EXTRA_GOLDS = ("-3", "-0", "+5", "007", "1000", "123456789012345", "-40")
# Grading flags: (truncated, think_in_prompt, answer_format).
FLAGS = ((False, False, "think_boxed"), (True, False, "think_boxed"), (False, True, "think_boxed"),
         (False, False, "boxed"), (False, True, "boxed"))
# Completion shapes around an answer string {a}: the lab's own endings, and near misses of each fast shape.
TEMPLATES = (
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}}",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}}.",
    "{steps}\nThe answer is {a}.",
    "{steps}\nThe answer is {a}",
    "{steps}\nThe answer is {a}.\n",
    "<think>\n{steps}\n\\boxed{{{a}}}",
    "<think>\n\\boxed{{{a}}}\n</think>\nso {a}",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}} \\boxed{{{a}}}",
    "<think>\n{steps}\n</think>\n\\boxed{{3}}\n\\boxed{{{a}}}",
    "<think>\n{steps}\n</think>\n</think>\n\\boxed{{{a}}}",
    "{steps}\nThe final answer is {a}.",
    "{steps}\nThe final answer is {a}. I hope it is correct.",
    "{steps}\nThe answer is ${a}$.",
    "<think>\n{steps}\n</think>\n\\fbox{{{a}}}",
    "<think>\n{steps}\n</think>\n\\boxed {{{a}}}",
    "<think>\n{steps}\n</think>\n$\\boxed{{{a}}}$",
    "<think>\n{steps}\n</think>\n<answer>\n{a}\n</answer>",
    "{steps}\nAnswer: {a}",
    "{steps}\nThe answer is {a}. The answer is 7.",
    "{steps}\n= {a}",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}} and {{x}}",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}} [note]",
    "<think>\n{steps}\n</think>\n\\boxed{{\\frac{{{a}}}{{1}}}}",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}}\nThe ANSWER is 9.",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}}}\nThe final answer is 7. I hope it is correct.",
    "<think>\n{steps}\n</think>\n\\boxed{{{a}e2}}",
)


def _predictions(gold: str) -> list[str]:
    """Answer strings around a gold: itself, neighbours, and spellings math-verify reads its own way."""
    bare = gold.lstrip("+-")
    value = int(gold)
    preds = [gold, str(value + 1), str(value - 1), str(-value), "0" + bare, "00" + bare, "-0", "+" + bare,
             bare + ".0", " " + gold + " ", "\u2212" + bare, "1,000", f"{value:,}", bare + "%", "٥", "\uff15"]
    return list(dict.fromkeys(preds))


def _lab_golds() -> list[tuple[str, str]]:
    """(gold, steps text) of every distinct gold of the lab's task splits, then the extra golds."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for p in tasks.read_problems(LAB / f"{split}.jsonl"):
            seen.setdefault(p.answer, "\n".join(p.steps))
    return sorted(seen.items()) + [(g, "1+2=3") for g in EXTRA_GOLDS]


def _both(monkeypatch, completion: str, gold: str, truncated: bool, think_in_prompt: bool, answer_format: str):
    """(fast grade, math-verify grade) of one completion."""
    kw = dict(truncated=truncated, think_in_prompt=think_in_prompt, answer_format=answer_format)
    monkeypatch.delenv(ENV, raising=False)
    fast = grade(completion, gold, **kw)
    monkeypatch.setenv(ENV, "1")
    slow = grade(completion, gold, **kw)
    monkeypatch.delenv(ENV)
    return fast, slow


def _cases():
    """Every lab gold with every prediction, each in one template under one flag set (rotating), and for three golds
    every template under every flag set."""
    golds = _lab_golds()
    rotate = itertools.count()
    for gold, steps in golds:
        for pred in _predictions(gold):
            i = next(rotate)
            yield TEMPLATES[i % len(TEMPLATES)].format(steps=steps, a=pred), gold, FLAGS[i % len(FLAGS)]
    for gold, steps in (golds[0], golds[len(golds) // 2], golds[-1]):
        for template, pred, flags in itertools.product(TEMPLATES, _predictions(gold), FLAGS):
            yield template.format(steps=steps, a=pred), gold, flags


@pytest.mark.slow
def test_fast_path_agrees_with_math_verify_on_lab_golds(monkeypatch):
    n_fast = 0
    for completion, gold, flags in _cases():
        fast, slow = _both(monkeypatch, completion, gold, *flags)
        assert fast == slow, (completion, gold, flags)
        n_fast += lenient_integer(completion.replace("\\fbox{", "\\boxed{")) is not None
    assert n_fast > 1000  # the fast shapes were exercised, not just the fallback


def test_shapes():
    assert plain_integer(" -12 ") == -12 and plain_integer("+5") == 5 and plain_integer("007") == 7
    assert plain_integer("5.0") is None and plain_integer("1,000") is None and plain_integer("\u22125") is None
    assert plain_integer("1" * 16) is None
    assert lone_box_integer("<think>\n4*5=20\n</think>\n\\boxed{ 20 }") == "20"
    for text in ("\\boxed{20} \\boxed{20}", "$\\boxed{20}$", "\\boxed{20} and {x}", "\\boxed{20} [x]",
                 "\\boxed{\\frac{1}{2}}", "\\boxed{20}. The final answer is 3", "\\boxed{20}\u2003"):
        assert lone_box_integer(text) is None, text
    assert answer_is_integer("7+2=9\n9-1=8\nThe answer is 8.") == "8"
    assert answer_is_integer("The answer is -0") == "-0"
    for text in ("The answer is 08.", "The answer is +8.", "The answer is 8.\n", "Answer: the answer is 8.",
                 "The answer is 8 apples.", "The final answer is 8."):
        assert answer_is_integer(text) is None, text


@pytest.mark.slow
def test_fast_path_agrees_on_lab_base_samples(monkeypatch):
    """Sampled completions of the three shipped lab bases (T=1 and a hotter T=1.6 for stranger text) on lab problems:
    every grade equal with and without the fast path."""
    from tina_probe.generate import make_generator

    problems = tasks.read_problems(LAB / "test.jsonl")[:60] + tasks.read_problems(LAB / "test-hard.jsonl")[:20]
    gen = make_generator("hf")
    n, n_fast = 0, 0
    try:
        for base in ("base", "control", "planted"):
            gen.load_base(str(LAB / base))
            for temperature in (1.0, 1.6):
                outs = gen.generate([p.question for p in problems], adapter=None, n=3, temperature=temperature,
                                    top_p=1.0, max_tokens=64, seed=0)
                for p, group in zip(problems, outs):
                    for c in group:
                        for flags in ((c.truncated, False, "think_boxed"), (c.truncated, False, "boxed")):
                            fast, slow = _both(monkeypatch, c.text, p.answer, *flags)
                            assert fast == slow, (c.text, p.answer, flags)
                            n += 1
                        n_fast += lenient_integer(c.text) is not None
    finally:
        gen.close()
    assert n == 2 * 3 * 2 * 3 * len(problems) and n_fast > n // 8
