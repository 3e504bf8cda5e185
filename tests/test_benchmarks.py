"""Benchmark registry and loading, checked on the real public benchmark files in shared/benchmarks/."""

from __future__ import annotations

import json
import time

import pytest

from conftest import SHARED_BENCHMARKS
from tina_probe import benchmarks
from tina_probe.benchmarks import (
    after_hashes,
    last_boxed,
    load_benchmark,
    registry,
    render_prompt,
)
from tina_probe.errors import TinaError


def shared(name):
    path = SHARED_BENCHMARKS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def _raw(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_registry_has_the_paper_benchmarks_and_lab():
    specs = registry()
    for name in ("lab-test", "lab-probe", "aime24", "aime25", "amc23", "math500", "minerva", "gpqa-diamond",
                 "gsm8k"):
        assert name in specs
    assert specs["lab-test"].path == "lab/test.jsonl" and specs["lab-test"].template == "{question}"
    assert specs["gsm8k"].extract == "after_hashes" and specs["minerva"].extract == "boxed_in_field"
    paper = specs["aime24"].template
    assert "Therefore, the final answer is: $\\boxed{ANSWER}$" in paper and paper.endswith("{question}")
    assert specs["gsm8k"].template == "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_pure_extractors():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert after_hashes("x\n#### 1,234") == "1234"
    assert render_prompt("Q: {question} \\boxed{}", "1+1") == "Q: 1+1 \\boxed{}"


def test_gsm8k_answers_after_hashes():
    path = shared("gsm8k.jsonl")
    bench = load_benchmark(f"gsm8k={path}")
    raw = _raw(path)
    assert len(bench.problems) == len(raw) == 1319
    assert bench.problems[0].answer == "18"  # Janet's ducks
    for p, r in zip(bench.problems, raw):
        assert p.answer == r["answer"].split("####")[-1].strip().replace(",", "")
        assert "####" not in p.answer and p.answer
        assert p.prompt.startswith(r["question"]) and p.prompt.endswith("within \\boxed{}.")
    assert bench.name == "gsm8k"


def test_minerva_answers_are_the_last_boxed_of_the_solution():
    path = shared("minerva_math.jsonl")
    bench = load_benchmark(f"minerva={path}")
    raw = _raw(path)
    assert len(bench.problems) == 272
    assert bench.problems[0].answer == "1.6"
    for p, r in zip(bench.problems, raw):
        rest = r["solution"][r["solution"].rindex("\\boxed{") + len("\\boxed{"):].lstrip()
        assert rest.startswith(p.answer) and rest[len(p.answer):].lstrip().startswith("}")
        assert r["problem"] in p.prompt and "Therefore, the final answer is" in p.prompt


def test_aime_and_amc_answers():
    aime = load_benchmark(f"aime24={shared('aime24.jsonl')}")
    assert len(aime.problems) == 30
    assert aime.problems[0].answer == "204" and aime.problems[0].id == "60"
    assert all(p.answer.isdigit() for p in aime.problems)
    amc = load_benchmark(f"amc23={shared('amc23.jsonl')}", limit=5)
    assert len(amc.problems) == 5
    assert amc.problems[0].answer == "27"  # 27.0 in the file


def test_mmlu_choice_index_gives_a_letter():
    path = shared("mmlu_stem.jsonl")
    bench = load_benchmark(str(path), limit=50)  # ad hoc: answer index + choices detected
    raw = _raw(path)[:50]
    for p, r in zip(bench.problems, raw):
        assert p.answer == "ABCD"[r["answer"]]
        assert f"\n{p.answer}) {r['choices'][r['answer']]}" in p.question
    assert bench.choice  # letters: graded as multiple choice
    assert load_benchmark(f"mmlu-stem={path}", limit=5).choice


def test_only_choice_benchmarks_grade_letters(lab_data):
    assert not load_benchmark(f"minerva={shared('minerva_math.jsonl')}", limit=5).choice
    assert not load_benchmark(f"gsm8k={shared('gsm8k.jsonl')}", limit=5).choice
    assert not load_benchmark(str(lab_data)).choice
    specs = registry()
    assert {n for n, s in specs.items() if s.extract in benchmarks.CHOICE_EXTRACTIONS} == {"gpqa-diamond", "mmlu-stem"}


def test_gpqa_choice_shuffle_is_deterministic(tmp_path):
    row = {"Record ID": "rec1", "Question": "Which?", "Correct Answer": "right",
           "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}
    path = tmp_path / "gpqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    a = load_benchmark(f"gpqa-diamond={path}").problems[0]
    b = load_benchmark(f"gpqa-diamond={path}").problems[0]
    assert a == b
    assert f"{a.answer}) right" in a.question
    assert sorted(line[3:] for line in a.question.splitlines()[-4:]) == ["right", "w1", "w2", "w3"]
    assert "LETTER" in a.prompt
    assert load_benchmark(f"gpqa-diamond={path}").choice


def test_ad_hoc_file_default_fields(tmp_path, lab_data):
    bench = load_benchmark(str(lab_data))
    assert bench.name == "tiny"
    assert [p.id for p in bench.problems] == ["t-0", "t-1", "t-2"]
    assert bench.problems[1].prompt == "1+2=?" and bench.problems[1].answer == "3"


def test_lab_name_with_file_override(lab_data):
    bench = load_benchmark(f"lab-test={lab_data}")
    assert bench.name == "lab-test" and bench.problems[0].prompt == "0+1=?"


def test_malformed_files_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": \n')
    with pytest.raises(TinaError, match=r"bad\.jsonl:2: bad JSON"):
        load_benchmark(str(bad))
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n')
    with pytest.raises(TinaError, match=r"missing\.jsonl:2: missing field 'answer'"):
        load_benchmark(str(missing))
    nohash = tmp_path / "g.jsonl"
    nohash.write_text('{"question": "q", "answer": "no hashes here"}\n')
    with pytest.raises(TinaError, match=r"g\.jsonl:1: field 'answer' has no '####'"):
        load_benchmark(f"gsm8k={nohash}")


def test_unknown_name_and_offline_dataset():
    with pytest.raises(TinaError, match="nosuchbench: unknown benchmark"):
        load_benchmark("nosuchbench")
    with pytest.raises(TinaError, match="nosuch: unknown benchmark"):
        load_benchmark("nosuch=/tmp/x.jsonl")
    # conftest sets HF_HUB_OFFLINE: a datasets id without a local file fails at once, with the way out
    start = time.monotonic()
    with pytest.raises(TinaError, match=r"aime24: cannot load dataset 'HuggingFaceH4/aime_2024': offline "
                                        r"\(HF_HUB_OFFLINE is set\).*--benchmarks aime24=FILE"):
        load_benchmark("aime24")
    assert time.monotonic() - start < 10


def test_unreachable_hub_fails_fast_without_retrying(monkeypatch):
    """No offline variable and no network: one quick probe, then the error, before datasets could retry."""
    import datasets
    from huggingface_hub import constants

    for var in benchmarks.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed local port: refused at once
    asked, before = [], (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)

    def cache_only(*a, **k):  # datasets with the hub unreachable: only its local cache, in offline mode
        asked.append(datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE)
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(datasets, "load_dataset", cache_only)
    assert benchmarks.offline_var() is None and benchmarks.hub_unreachable()
    start = time.monotonic()
    with pytest.raises(TinaError) as err:
        load_benchmark("gpqa-diamond")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert msg.startswith("gpqa-diamond: cannot load dataset 'Idavidrein/gpqa': the Hugging Face hub could not be")
    assert "offline" in msg and msg.endswith("--benchmarks gpqa-diamond=FILE.jsonl") and "\n" not in msg
    assert asked == [True] and (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before  # restored
    # a dataset in the local cache still loads while the hub is unreachable
    row = {"Question": "Which?", "Correct Answer": "x", "Incorrect Answer 1": "y", "Incorrect Answer 2": "z",
           "Incorrect Answer 3": "w", "Record ID": "r1"}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [row])
    assert len(load_benchmark("gpqa-diamond").problems) == 1


def test_offline_variables(monkeypatch):
    for var in benchmarks.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert benchmarks.offline_var() is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert benchmarks.offline_var() is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "yes")
    assert benchmarks.offline_var() == "HF_DATASETS_OFFLINE"
