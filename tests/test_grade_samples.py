"""`tina-probe grade`: completions made elsewhere, JSONL or parquet, one row per completion or per problem."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tina_probe.errors import TinaError
from tina_probe.grade_samples import run_grade

GOOD = "<think>\n2+3=5\n</think>\n\\boxed{5}"
LOOSE = "I think it is 5"  # right answer, no format: lenient only
WRONG = "<think>\n2+3=6\n</think>\n\\boxed{6}"
# problem p1 (gold 5): good, loose, wrong, good; problem p2 (gold 7): all wrong
PER_PROBLEM = [
    {"id": "p1", "gold": "5", "responses": [GOOD, LOOSE, WRONG, GOOD], "model": "m", "ckpt": 30},
    {"id": "p2", "gold": 7, "responses": [WRONG] * 4, "model": "m", "ckpt": 30},
]
MAP = {"problem_id": "id", "answer": "gold", "completions": "responses", "run": "model", "step": "ckpt"}


def _per_completion():
    rows = []
    for r in PER_PROBLEM:
        for c in r["responses"]:
            rows.append({"id": r["id"], "gold": r["gold"], "response": c, "model": r["model"], "ckpt": r["ckpt"]})
    return rows


def _check(tables):
    s = tables["samples"]
    assert len(s) == 8
    assert s.groupby("problem_id")["sample_idx"].apply(sorted).to_dict() == {"p1": [0, 1, 2, 3], "p2": [0, 1, 2, 3]}
    p1 = s[s.problem_id == "p1"].sort_values("sample_idx")
    assert p1["correct_strict"].tolist() == [True, False, False, True]
    assert p1["correct_lenient"].tolist() == [True, True, False, True]
    assert p1["well_formatted"].tolist() == [True, False, True, True]
    assert not s[s.problem_id == "p2"]["correct_lenient"].any()
    assert set(s["run"]) == {"m"} and set(s["step"]) == {30}
    p = tables["passk"].set_index(["grading", "k"])["value"]
    # pass@1 = mean over problems of c/n: strict (2/4 + 0)/2, lenient (3/4 + 0)/2
    assert p[("strict", 1)] == pytest.approx(0.25) and p[("lenient", 1)] == pytest.approx(0.375)
    # pass@2 for p1 strict: 1 - C(2,2)/C(4,2) = 5/6
    assert p[("strict", 2)] == pytest.approx(5 / 12)
    f = tables["format"].set_index("metric")["value"]
    assert f["format_rate"] == pytest.approx(7 / 8)


def test_jsonl_one_row_per_completion_with_map(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _per_completion()))
    mapping = {k: v for k, v in MAP.items() if k != "completions"} | {"completion": "response"}
    tables = run_grade(path, tmp_path / "res", mapping)
    _check(tables)
    assert (tmp_path / "res" / "samples.parquet").is_file() and (tmp_path / "res" / "passk.parquet").is_file()


def test_jsonl_one_row_per_problem_with_list(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PER_PROBLEM))
    _check(run_grade(path, tmp_path / "res", MAP))


def test_parquet_both_layouts(tmp_path):
    per_problem = tmp_path / "pp.parquet"
    pd.DataFrame([{**r, "gold": str(r["gold"])} for r in PER_PROBLEM]).to_parquet(per_problem)
    _check(run_grade(per_problem, tmp_path / "a", MAP))
    per_completion = tmp_path / "pc.parquet"
    pd.DataFrame(_per_completion()).astype({"gold": str}).to_parquet(per_completion)
    mapping = {k: v for k, v in MAP.items() if k != "completions"} | {"completion": "response"}
    _check(run_grade(per_completion, tmp_path / "b", mapping))


def test_defaults_and_regrading_the_same_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"problem_id": 1, "answer": "5", "completion": GOOD}) + "\n")
    first = run_grade(path, tmp_path / "res")
    again = run_grade(path, tmp_path / "res")  # the same file again: no duplicate rows
    assert len(again["samples"]) == len(first["samples"]) == 1
    row = again["samples"].iloc[0]
    assert (row.run, row.step, row.benchmark, row.problem_id, row.sample_idx) == ("mine", 0, "mine", "1", 0)
    assert bool(row.correct_strict)


def test_missing_columns_name_the_file_and_column(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"problem_id": "a", "response": GOOD}) + "\n")
    with pytest.raises(TinaError, match=r"x\.jsonl: missing column 'completion'"):
        run_grade(path, tmp_path / "res", {})
    with pytest.raises(TinaError, match=r"x\.jsonl: missing column 'answer'"):
        run_grade(path, tmp_path / "res", {"completion": "response"})
    with pytest.raises(TinaError, match=r"x\.jsonl: --map completion=resp: no column 'resp'"):
        run_grade(path, tmp_path / "res", {"completion": "resp"})
    with pytest.raises(TinaError, match="no such samples file"):
        run_grade(tmp_path / "nope.jsonl", tmp_path / "res", {})


def _per_problem_under(name):
    """PER_PROBLEM with the list of completions under column `name` (the ids/golds/runs renamed to our names)."""
    return [{"problem_id": r["id"], "answer": str(r["gold"]), name: r["responses"], "run": r["model"],
             "step": r["ckpt"]} for r in PER_PROBLEM]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_list_under_completion_column_jsonl_and_parquet(tmp_path):
    rows = _per_problem_under("completion")
    _check(run_grade(_write_jsonl(tmp_path / "pp.jsonl", rows), tmp_path / "a"))
    pd.DataFrame(rows).to_parquet(tmp_path / "pp.parquet")
    _check(run_grade(tmp_path / "pp.parquet", tmp_path / "b"))


def test_map_completion_to_a_list_column(tmp_path):
    rows = _per_problem_under("responses")
    mapped = run_grade(_write_jsonl(tmp_path / "pp.jsonl", rows), tmp_path / "a", {"completion": "responses"})
    _check(mapped)
    flat = [{**{k: v for k, v in r.items() if k != "responses"}, "completion": c} for r in rows for c in r["responses"]]
    same = run_grade(_write_jsonl(tmp_path / "pc.jsonl", flat), tmp_path / "b")
    key = ["grading", "k"]
    pd.testing.assert_frame_equal(mapped["passk"].sort_values(key).reset_index(drop=True)[key + ["value"]],
                                  same["passk"].sort_values(key).reset_index(drop=True)[key + ["value"]])


def test_one_problem_by_hand(tmp_path):
    # 4 completions: 1 strict-correct, 2 lenient-correct (GOOD and LOOSE) -> pass@1 0.25 strict, 0.5 lenient
    row = {"problem_id": "q", "answer": "5", "completion": [GOOD, LOOSE, WRONG, WRONG]}
    tables = run_grade(_write_jsonl(tmp_path / "one.jsonl", [row]), tmp_path / "res")
    assert tables["samples"]["sample_idx"].tolist() == [0, 1, 2, 3]
    p = tables["passk"].set_index(["grading", "k"])["value"]
    assert p[("strict", 1)] == pytest.approx(0.25) and p[("lenient", 1)] == pytest.approx(0.5)


def test_mixed_strings_and_lists(tmp_path):
    rows = [{"problem_id": "p1", "answer": "5", "completion": [GOOD, LOOSE]},
            {"problem_id": "p1", "answer": "5", "completion": WRONG},
            {"problem_id": "p2", "answer": "7", "completion": ""}]  # an empty completion is just wrong
    s = run_grade(_write_jsonl(tmp_path / "mix.jsonl", rows), tmp_path / "res")["samples"]
    assert s.groupby("problem_id")["sample_idx"].apply(sorted).to_dict() == {"p1": [0, 1, 2], "p2": [0]}
    assert s.sort_values(["problem_id", "sample_idx"])["correct_lenient"].tolist() == [True, True, False, False]


def test_ambiguous_list_layouts_are_errors(tmp_path):
    both = {"problem_id": "a", "answer": "5", "completion": GOOD, "completions": [GOOD]}
    with pytest.raises(TinaError, match=r"both\.jsonl: both 'completion' and 'completions'"):
        run_grade(_write_jsonl(tmp_path / "both.jsonl", [both]), tmp_path / "res")
    with_idx = {"problem_id": "a", "answer": "5", "completion": [GOOD, WRONG], "sample_idx": 0}
    with pytest.raises(TinaError, match=r"idx\.jsonl: sample_idx given with lists"):
        run_grade(_write_jsonl(tmp_path / "idx.jsonl", [with_idx]), tmp_path / "res")


@pytest.mark.parametrize("gold", [None, float("nan"), "", "  "])
def test_missing_answer_names_the_rows(tmp_path, gold):
    rows = [{"problem_id": "a", "answer": "5", "completion": GOOD},
            {"problem_id": "b", "answer": gold, "completion": GOOD}]
    with pytest.raises(TinaError, match=r"x\.jsonl: missing gold answer at line 2$"):
        run_grade(_write_jsonl(tmp_path / "x.jsonl", rows), tmp_path / "res")
    pd.DataFrame(rows).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(TinaError, match=r"x\.parquet: missing gold answer at row 1$"):
        run_grade(tmp_path / "x.parquet", tmp_path / "res")


def test_missing_problem_id_and_completion_name_the_rows(tmp_path):
    rows = [{"problem_id": None, "answer": "5", "completion": GOOD}] * 7
    with pytest.raises(TinaError, match=r"missing problem_id at line 1, line 2, line 3, line 4, line 5 and 2 more"):
        run_grade(_write_jsonl(tmp_path / "x.jsonl", rows), tmp_path / "res")
    for bad in (None, [GOOD, None], []):
        rows = [{"problem_id": "a", "answer": "5", "completion": GOOD},
                {"problem_id": "b", "answer": "5", "completion": bad}]
        with pytest.raises(TinaError, match=r"y\.jsonl: missing completion .* at line 2$"):
            run_grade(_write_jsonl(tmp_path / "y.jsonl", rows), tmp_path / "res")


@pytest.mark.parametrize("benchmark", ["gpqa-diamond", "my-mc-dump"])
def test_multiple_choice_dumps_are_graded_by_their_answer_line(tmp_path, benchmark):
    """A registered choice benchmark (by name) or an unknown one whose golds are all letters: graded by the final
    `Answer: X` line (what the choice template asks for), not by a boxed math answer."""
    rows = [{"problem_id": "q1", "answer": "B", "benchmark": benchmark, "completion": c} for c in
            ("<think>\nB fits\n</think>\nAnswer: B", "<think>\nA fits\n</think>\nAnswer: A", "The answer is (B).")]
    path = tmp_path / "mc.jsonl"
    _write_jsonl(path, rows)
    s = run_grade(path, tmp_path / "res")["samples"].sort_values("sample_idx")
    assert s["correct_strict"].tolist() == [True, False, False]
    assert s["correct_lenient"].tolist() == [True, False, True]
    assert s["extracted_answer"].tolist() == ["B", "A", "B"]


def test_samples_of_a_number_kind_benchmark_are_regraded_under_it(tmp_path):
    """Completions named for real-test (answer_kind number in the registry): the echoed question is wrong there and
    right under an unregistered name (the math kind)."""
    comps = ["\\boxed{7 + 5}", "\\boxed{12}", "7 + 5 = \\boxed{}."]
    rows = [{"problem_id": "q1", "answer": "12", "benchmark": b, "completion": c}
            for b in ("real-test", "mine") for c in comps]
    s = run_grade(_write_jsonl(tmp_path / "real.jsonl", rows), tmp_path / "res")["samples"]
    by = s.sort_values("sample_idx").groupby("benchmark")
    assert by.get_group("real-test")["correct_lenient"].tolist() == [False, True, False]
    assert by.get_group("mine")["correct_lenient"].tolist() == [True, True, True]
    # the format is the boxed one: the echo is well formatted (a wrong answer in the right place), the empty box not
    assert by.get_group("real-test")["well_formatted"].tolist() == [True, True, False]
