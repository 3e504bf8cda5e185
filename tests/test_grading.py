"""Strict and lenient grading with math-verify, on hand-made traps and on real benchmark answer formats."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tina_probe.errors import TinaError
from tina_probe.grading import grade, grade_many, normalize_gold

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
