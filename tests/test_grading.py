"""Strict and lenient grading with math-verify, on hand-made traps and on real benchmark answer formats."""

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from tina_probe.benchmarks import load_benchmark
from tina_probe.errors import TinaError
from tina_probe.grading import grade, grade_many, normalize_gold, scientific_latex

BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def wrap(answer_region: str, think: str = "7-3=4\n4*5=20") -> str:
    """A completion with a closed think block followed by answer_region."""
    return f"<think>\n{think}\n</think>\n{answer_region}"


@pytest.mark.parametrize(
    "completion, gold, strict, lenient",
    [
        (wrap(r"\boxed{20}"), "20", True, True),
        ("<think>\n\\boxed{20}\n</think>\nThat is all.", "20", False, True),  # boxed inside think only
        (wrap(r"\boxed{20} \boxed{20}"), "20", False, True),  # two boxed
        ("<think>\n4*5=20\n\\boxed{20}", "20", False, True),  # unclosed think
        ("<think>\na\n</think>\nb\n</think>\n\\boxed{20}", "20", False, True),  # </think> twice
        (wrap("The answer is 20"), "20", False, True),  # right number, not boxed
        (wrap(r"\boxed{21}"), "20", False, False),  # wrong boxed, right number in the think
        (wrap(r"\boxed{\frac{1}{2}}"), "0.5", True, True),
        (wrap(r"\boxed{0.5}"), r"\frac{1}{2}", True, True),
        (wrap(r"\boxed{1/2}"), r"\frac{1}{2}", True, True),
        (wrap(r"\boxed{\dfrac{1}{2}}"), "1/2", True, True),
        (wrap(r"\boxed{\frac{3}{4}}"), "3/4", True, True),
        (wrap(r"\boxed{\frac{1}{3}}"), "0.5", False, False),
        (wrap(r"\boxed {7}"), r"$\boxed{7}$", True, True),
        (wrap(r"\fbox{7}"), "7", True, True),
        (wrap(r"\boxed{C}"), "(C)", True, True),
        (wrap(r"\boxed{D}"), "(C)", False, False),
        (wrap(r"\boxed{25}"), "025", True, True),  # AIME golds keep leading zeros
        (wrap(r"\boxed{\sqrt{2}}"), r"\sqrt{2}", True, True),
        (wrap(r"\boxed{2}"), r"\sqrt{2}", False, False),
    ],
)
def test_grade_cases(completion, gold, strict, lenient):
    g = grade(completion, gold)
    assert (g.correct_strict, g.correct_lenient) == (strict, lenient)


def test_truncated_is_never_strict():
    g = grade(wrap(r"\boxed{20}"), "20", truncated=True)
    assert g.format.truncated and not g.correct_strict and g.correct_lenient


def test_think_in_prompt():
    g = grade("4*5=20\n</think>\n\\boxed{20}", "20", think_in_prompt=True)
    assert g.correct_strict and g.format.think_opened


def test_extracted_answer():
    assert grade(wrap(r"\boxed{\frac{1}{2}}"), "0.5").extracted_answer == r"\frac{1}{2}"
    assert grade(wrap(r"\boxed{3} \boxed{4}"), "4").extracted_answer == "4"  # last boxed after </think>
    assert grade(wrap("so it is 20"), "20").extracted_answer == "20"  # lenient's reading
    assert grade("<think>\nnothing here", "20").extracted_answer is None


def test_numeric_golds_from_json():
    assert normalize_gold(27.0) == "27" and normalize_gold(-1.0) == "-1" and normalize_gold(0.25) == "0.25"
    assert normalize_gold(7) == "7" and normalize_gold(" 3/4 ") == "3/4"
    assert grade(wrap(r"\boxed{27}"), 27.0).correct_strict
    with pytest.raises(TinaError, match="empty"):
        grade(wrap(r"\boxed{1}"), "  ")
    with pytest.raises(TinaError):
        normalize_gold(None)


def test_grade_many_pairs_and_checks_lengths():
    grades = grade_many([wrap(r"\boxed{1}"), wrap(r"\boxed{2}")], ["1", "1"], truncated=[False, True])
    assert [g.correct_strict for g in grades] == [True, False]
    assert grades[1].format.truncated
    with pytest.raises(ValueError):
        grade_many(["a"], ["1", "2"])


def test_grading_works_off_the_main_thread():
    cases = [(wrap(r"\boxed{\frac{1}{2}}"), "0.5"), (wrap(r"\boxed{3}"), "4"), (wrap("it is 9"), "9")]
    expected = [grade(c, g) for c, g in cases]

    def run(case):
        assert threading.current_thread() is not threading.main_thread()
        return grade(*case)

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(run, cases)) == expected


def _rows(name: str) -> list[dict]:
    path = BENCHMARKS / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["aime24.jsonl", "amc23.jsonl"])
def test_real_benchmark_answers(name):
    rows = _rows(name)
    assert rows
    for row in rows:
        gold = row["answer"]
        right = grade(wrap(f"\\boxed{{{normalize_gold(gold)}}}", think="work"), gold)
        assert right.correct_strict and right.correct_lenient, row
        as_text = grade(wrap(f"\\boxed{{{normalize_gold(gold)}}}", think="work"), str(gold))  # "27.0", "025"
        assert as_text.correct_strict, row
        wrong = float(gold) + 1
        off = grade(wrap(f"\\boxed{{{normalize_gold(wrong)}}}", think=f"maybe {gold}"), gold)
        assert not off.correct_strict and not off.correct_lenient, row


# ----------------------------------------------------------------------------- multiple choice (letters)

THINK = "<think>\nA is tempting, but the answer is (C)... no.\n</think>\n"


@pytest.mark.parametrize(
    "completion, strict, lenient",
    [
        (THINK + "Answer: B", True, True),  # the requested last line
        ("<think>x</think>\nAnswer: B", True, True),
        (THINK + "Answer: (B)", True, True),
        (THINK + "**Answer:** B", True, True),
        (THINK + "**Answer: B**", True, True),
        (THINK + "Answer: $B$", True, True),  # the template's $LETTER taken literally
        (THINK + "Answer: B.", True, True),
        (THINK + r"\boxed{B}", True, True),  # a single boxed letter is an equivalent final answer
        (THINK + r"$\boxed{\text{B}}$", True, True),
        (THINK + "B is right: the answer is (B).\nAnswer: B", True, True),  # restated, consistent
        (THINK + "Answer: B\nAnswer: B", True, True),
        (THINK + "Answer: A\nAnswer: B", False, True),  # hedging: not strict; lenient reads the last one
        (THINK + "Answer: B\nAnswer: A", False, False),
        ("<think>\nAnswer: A\n</think>\nAnswer: B", True, True),  # an answer inside the thinking is not hedging
        (THINK + "Answer: b", True, True),  # a lower-case final Answer line is read upper-cased
        (THINK + "The answer is (B).", False, True),  # no Answer line
        (THINK + "The answer is B", False, True),
        (THINK + r"\boxed{\text{B}} is my answer", False, True),  # the box is not the last line
        (THINK + r"\boxed{B} \boxed{B}", False, True),  # two boxes
        (THINK + "Answer: C", False, False),  # wrong letter
        (THINK + "Answer: B) because 42", False, True),  # the Answer line is not just the letter
        (THINK + "I am not sure.", False, False),  # no answer after </think>; the think's (C) is wrong
        (THINK + "Answer: $LETTER", False, False),  # the template echoed
        (THINK + "the answer is I think B", False, True),  # "I" before a word is not a choice: B is read
        ("Answer: B", False, True),  # no thinking
        ("<think>\nreasoning... Answer: B", False, True),  # thinking never closed
        ("<think>\na\n</think>\nb\n</think>\nAnswer: B", False, True),  # </think> twice
    ],
)
def test_grade_choice_cases(completion, strict, lenient):
    g = grade(completion, "B", choice=True)
    assert (g.correct_strict, g.correct_lenient) == (strict, lenient)
    assert g.format.well_formatted or not strict  # strict = well formatted and the right letter


@pytest.mark.parametrize(
    "answer_region, strict, lenient, extracted",
    [
        # no letter stated: a lower-case bare letter, a symbol in an equation, a lower-case or non-letter box
        ("So the answer is a 7-digit number.", False, False, None),
        ("the answer is $E = mc^2$", False, False, None),
        ("Answer: n = 5", False, False, None),
        (r"\boxed{x}", False, False, None),
        (r"\boxed{E = mc^2}", False, False, None),
        # ... so they do not make a right final Answer line look like hedging
        ("the answer is $E = 5$ eV.\nAnswer: B", True, True, "B"),
        ("So the answer is a 7-digit number.\nAnswer: B", True, True, "B"),
        ("Answer: n = 5\nAnswer: B", True, True, "B"),
        ("\\boxed{x}\nAnswer: B", True, True, "B"),
        # a bare upper-case letter followed by a lower-case word is stated; "I think" is not the letter I
        ("The answer is B because the field vanishes.", False, True, "B"),
        ("Answer: B is correct", False, True, "B"),
        ("the answer is I think B", False, True, "B"),
        ("the answer is I.", False, False, "I"),
        ("The answer is B because of A.\nAnswer: B", True, True, "B"),
        # the final line takes what choice_answers takes: \text{B} in $...$, a lower-case letter (upper-cased)
        (r"Answer: $\text{B}$", True, True, "B"),
        ("answer: b", True, True, "B"),
        ("**Answer:** b", True, True, "B"),
        (r"\boxed{(B)}", True, True, "B"),
        (r"\boxed{\text{b}}", True, True, "B"),
        ("the answer is (b)", False, True, "B"),
    ],
)
def test_grade_choice_letter_reading(answer_region, strict, lenient, extracted):
    g = grade(wrap(answer_region), "B", choice=True)
    assert (g.correct_strict, g.correct_lenient, g.extracted_answer) == (strict, lenient, extracted)
    assert g.format.well_formatted == strict  # gold B: every well-formatted case here is right


def test_grade_choice_extracted_answer_format_and_flags():
    g = grade(wrap("Answer: A\nAnswer: D"), "D", choice=True)
    assert g.extracted_answer == "D" and not g.format.well_formatted
    wrong = grade(wrap("Answer: C"), "D", choice=True)
    assert wrong.format.well_formatted and wrong.extracted_answer == "C" and not wrong.correct_lenient
    assert grade(wrap("the answer is (b)"), "B", choice=True).extracted_answer == "B"
    assert grade(wrap("no letter here"), "B", choice=True).extracted_answer is None
    truncated = grade(wrap("Answer: B"), "B", truncated=True, choice=True)
    assert not truncated.correct_strict and truncated.correct_lenient and not truncated.format.well_formatted
    assert grade("reasoning\n</think>\nAnswer: B", "B", think_in_prompt=True, choice=True).format.think_opened
    # the same completion graded as math keeps the math meaning: no box, not well formatted, not correct
    math = grade(wrap("Answer: B"), "B")
    assert not math.format.well_formatted and not math.correct_strict


def test_choice_golds():
    assert grade(wrap("Answer: C"), "(C)", choice=True).correct_strict
    assert grade(wrap("Answer: C"), " c ", choice=True).correct_strict
    with pytest.raises(TinaError, match="not a choice letter"):
        grade(wrap("Answer: C"), "42", choice=True)
    grades = grade_many([wrap("Answer: A"), wrap("Answer: B")], ["A", "A"], choice=True)
    assert [g.correct_strict for g in grades] == [True, False]


def _choice_benchmarks(tmp_path):
    """The shared MMLU-STEM file as registered (choice_index) and rewritten as a GPQA file (choice_shuffle)."""
    rows = _rows("mmlu_stem.jsonl")
    gpqa = tmp_path / "gpqa.jsonl"
    with gpqa.open("w") as f:
        for i, r in enumerate(rows[:500]):
            wrong = [c for j, c in enumerate(r["choices"]) if j != r["answer"]]
            f.write(json.dumps({"Record ID": f"rec{i}", "Question": r["question"],
                                "Correct Answer": r["choices"][r["answer"]],
                                **{f"Incorrect Answer {k + 1}": w for k, w in enumerate(wrong)}}) + "\n")
    return [load_benchmark(f"mmlu-stem={BENCHMARKS / 'mmlu_stem.jsonl'}"), load_benchmark(f"gpqa-diamond={gpqa}")]


def test_real_choice_benchmarks_grade_the_requested_answer_line(tmp_path):
    for bench in _choice_benchmarks(tmp_path):
        assert bench.choice and "Answer: $LETTER" in bench.problems[0].prompt
        for p in bench.problems:
            right = grade(f"<think>\nweighing the options\n</think>\nAnswer: {p.answer}", p.answer, choice=bench.choice)
            assert right.correct_strict and right.correct_lenient and right.extracted_answer == p.answer, p.id
            other = "ABCD"[("ABCD".index(p.answer) + 1) % 4]
            wrong = grade(f"<think>\nmaybe {p.answer}\n</think>\nAnswer: {other}", p.answer, choice=bench.choice)
            assert not wrong.correct_strict and not wrong.correct_lenient, p.id


# ----------------------------------------------------------------------------- scientific notation (Minerva)


def test_e_notation_gold_is_a_power_of_ten():
    assert scientific_latex("4.5e33") == r"4.5 \times 10^{33}"
    assert scientific_latex("+1e-05") == r"1 \times 10^{-5}" and scientific_latex("3E+8") == r"3 \times 10^{8}"
    assert scientific_latex("e^{2}") == "e^{2}" and scientific_latex("2e") == "2e"  # not plain numbers
    for pred in (r"4.5 \times 10^{33}", r"4.5\cdot10^{33}", "4.5e33", r"45 \times 10^{32}", "4.5E33"):
        g = grade(wrap(f"\\boxed{{{pred}}}"), "4.5e33")
        assert g.correct_strict and g.correct_lenient, pred
    g = grade(wrap(r"\boxed{4.6 \times 10^{33}}"), "4.5e33")
    assert not g.correct_strict and not g.correct_lenient
    assert grade(wrap(r"\boxed{4.5 \times 10^{33}}"), r"4.5 \times 10^{33}").correct_strict  # LaTeX golds unchanged
    assert not grade(wrap(r"\boxed{4.5e33}"), "12").correct_lenient


def test_minerva_e_notation_golds():
    _rows("minerva_math.jsonl")  # skips when the shared file is absent
    bench = load_benchmark(f"minerva={BENCHMARKS / 'minerva_math.jsonl'}")
    golds = [p.answer for p in bench.problems if re.fullmatch(r"[+-]?\d+(\.\d+)?[eE][+-]?\d+", p.answer)]
    assert len(golds) == 58
    for gold in golds:
        mantissa, exponent = re.split("[eE]", gold)
        as_latex = f"{mantissa} \\times 10^{{{int(exponent)}}}"
        right = grade(wrap(f"\\boxed{{{as_latex}}}"), gold)
        assert right.correct_strict and right.correct_lenient, gold
        assert grade(wrap(f"\\boxed{{{gold}}}"), gold).correct_strict, gold  # the e-notation itself, boxed
        # a doubled mantissa is wrong; math-verify's chop calls differences below ~1e-18 zero (3 golds), so skip those
        if int(exponent) > -18:
            doubled = f"{Decimal(mantissa) * 2} \\times 10^{{{int(exponent)}}}"
            assert not grade(wrap(f"\\boxed{{{doubled}}}"), gold).correct_lenient, gold


def test_boxed_answer_format_grades_without_thinking_tags():
    """answer_format boxed: one box anywhere is the strict answer; think_boxed wants it after </think>."""
    text = "7 + 5 = 12. So the answer is \\boxed{12}."
    assert not grade(text, "12").correct_strict and grade(text, "12").correct_lenient
    g = grade(text, "12", answer_format="boxed")
    assert g.correct_strict and g.format.well_formatted and g.extracted_answer == "12"
    assert not grade(text, "13", answer_format="boxed").correct_strict
    assert not grade(text, "12", answer_format="boxed", truncated=True).correct_strict
    assert not grade("\\boxed{12} \\boxed{12}", "12", answer_format="boxed").correct_strict
    tagged = "<think>maybe \\boxed{11}</think> \\boxed{12}"  # tags: the answer after </think>, as think_boxed
    assert grade(tagged, "12", answer_format="boxed").correct_strict == grade(tagged, "12").correct_strict is True
    assert grade_many([text, "no"], ["12", "12"], answer_format="boxed")[0].correct_strict


def test_unknown_answer_format_in_registry_is_one_line(tmp_path):
    from tina_probe.benchmarks import registry

    reg = tmp_path / "benchmarks.yaml"
    reg.write_text("benchmarks:\n  x:\n    path: x.jsonl\n    answer_format: xml\n")
    with pytest.raises(TinaError, match=r"benchmark 'x'.*unknown answer format 'xml'"):
        registry(reg)


# ----- answer kind `number`: the answer must be written as a number, not the question's expression

NUMBER_KIND_CASES = [  # (completion, gold, strict under number, lenient under number, strict / lenient under math)
    ("\\boxed{7 + 5}", "12", False, False, True, True),  # the question echoed: math-verify evaluates it
    ("7 + 5 = \\boxed{}.", "12", False, False, False, True),  # an empty box: lenient math reads the expression
    ("\\boxed{12}", "12", True, True, True, True),
    ("7 + 5 = 12, so \\boxed{12}.", "12", True, True, True, True),
    ("\\boxed{7 + 5 = 12}", "12", True, True, True, True),  # an equation ending in the number states it
    ("\\boxed{x = 12}", "12", True, True, True, True),
    ("\\boxed{12 = 7 + 5}", "12", False, False, True, True),  # its right side is an expression
    ("\\boxed{2^3}", "8", False, False, True, True),
    ("\\boxed{4 \\times 2}", "8", False, False, True, True),
    ("\\boxed{-3}", "-3", True, True, True, True),
    ("\\boxed{\\frac{3}{4}}", "3/4", True, True, True, True),
    ("\\boxed{0.75}", "3/4", True, True, True, True),
    ("7 + 5 = 12", "12", False, True, False, True),  # no box: lenient reads the last number
    ("\\boxed{13}", "12", False, False, False, False),
]


@pytest.mark.parametrize("completion,gold,strict,lenient,strict_math,lenient_math", NUMBER_KIND_CASES)
def test_number_answer_kind(completion, gold, strict, lenient, strict_math, lenient_math):
    """answer_kind number refuses an expression (the echoed question) that math-verify would evaluate to the gold;
    the math kind, the default, grades as before."""
    g = grade(completion, gold, answer_format="boxed", answer_kind="number")
    assert (g.correct_strict, g.correct_lenient) == (strict, lenient)
    m = grade(completion, gold, answer_format="boxed")
    assert (m.correct_strict, m.correct_lenient) == (strict_math, lenient_math)
    assert grade_many([completion], [gold], answer_format="boxed", answer_kind="number")[0] == g


def test_number_answer_kind_fast_and_slow_paths_agree(monkeypatch):
    """The plain-integer path and math-verify alone (TINA_PROBE_SLOW_PATHS=1) grade every case alike."""
    from tina_probe.grading import _grade

    fast = [grade(c, g, answer_format="boxed", answer_kind="number") for c, g, *_ in NUMBER_KIND_CASES]
    _grade.cache_clear()
    monkeypatch.setenv("TINA_PROBE_SLOW_PATHS", "1")
    slow = [grade(c, g, answer_format="boxed", answer_kind="number") for c, g, *_ in NUMBER_KIND_CASES]
    _grade.cache_clear()
    pairs = [((f.correct_strict, f.correct_lenient), (s.correct_strict, s.correct_lenient)) for f, s in zip(fast, slow)]
    assert all(a == b for a, b in pairs)


def test_number_kind_never_passes_what_math_fails():
    """Rule `number` only narrows: on every arithmetic answer shape, correct under number implies correct under math."""
    shapes = ("\\boxed{{{a} {op} {b}}}", "\\boxed{{{v}}}", "{a} {op} {b} = {v}", "\\boxed{{{a} {op} {b} = {v}}}",
              "{a} {op} {b} = \\boxed{{}}", "The answer is {v}.", "\\boxed{{{w}}}")
    for a in range(2, 12, 3):
        for b in range(2, 9, 2):
            for op, v in (("+", a + b), ("-", a - b), ("\\times", a * b)):
                for shape in shapes:
                    text = shape.format(a=a, b=b, op=op, v=v, w=v + 1)
                    n = grade(text, str(v), answer_format="boxed", answer_kind="number")
                    m = grade(text, str(v), answer_format="boxed")
                    assert (not n.correct_strict or m.correct_strict) and (not n.correct_lenient or m.correct_lenient)
                    if shape.startswith("\\boxed{{{a}") and "=" not in shape:  # the echoed expression
                        assert not n.correct_lenient and m.correct_lenient, text


def test_unknown_answer_kind_is_one_line(tmp_path):
    from tina_probe.benchmarks import registry

    with pytest.raises(TinaError, match="answer_kind must be one of math, number, got 'integer'"):
        grade("\\boxed{1}", "1", answer_kind="integer")
    reg = tmp_path / "benchmarks.yaml"
    reg.write_text("benchmarks:\n  x:\n    path: x.jsonl\n    answer_kind: integer\n")
    with pytest.raises(TinaError, match=r"benchmarks.yaml: benchmark 'x': answer_kind must be one of"):
        registry(reg)


def test_real_benchmarks_grade_number_answers():
    """The real task's splits are graded under rule `number`, so the echoed question is wrong; the lab's stay math."""
    from tina_probe.benchmarks import registry

    specs = registry()
    assert specs["real-test"].answer_kind == specs["real-probe"].answer_kind == "number"
    assert specs["lab-test"].answer_kind == "math"
    bench = load_benchmark("real-test", limit=1)
    assert bench.answer_kind == "number"
