"""The lab's tasks, facts and tokenizer: exact answers, disjoint splits, reproducible shipped files."""
import ast
import json
import operator
import random
from pathlib import Path

import pytest

from tina_probe.grading import grade
from tina_probe.lab import tasks
from tina_probe.lab.tokenizer import TAGS, build_tokenizer, render_chat

DATA = Path(__file__).resolve().parents[1] / "data" / "lab"
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expr: str) -> int:
    """Independent evaluator of the lab's expressions (ast walk, no eval)."""
    def walk(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        raise ValueError(node)
    return walk(ast.parse(expr, mode="eval").body)


@pytest.mark.parametrize("level", sorted(tasks.LEVELS))
def test_answers_are_exact_and_steps_chain(level):
    rng = random.Random(level)
    for i in range(300):
        p = tasks.make_problem(rng, tasks.LEVELS[level], str(i))
        assert _evaluate(p.expression) == int(p.answer)
        assert p.steps[-1].endswith("=" + p.answer)
        for a, b in zip(p.steps, p.steps[1:]):
            assert b.startswith(a.split("=")[1])
        assert len(p.steps) in tasks.LEVELS[level].n_ops
        assert p.expression in p.question


def test_shipped_splits_are_reproducible_and_disjoint(tmp_path):
    written = tasks.write_lab_data(tmp_path)
    for name, path in written.items():
        assert path.read_bytes() == (DATA / path.name).read_bytes(), f"data/lab/{path.name} differs from its generator"
    for suffix in ("", "-hard"):
        exprs = {s: {json.loads(l)["expression"] for l in (DATA / f"{s}{suffix}.jsonl").read_text().splitlines()}
                 for s in ("train", "test", "probe")}
        assert not exprs["train"] & exprs["test"] and not exprs["train"] & exprs["probe"]
        assert not exprs["test"] & exprs["probe"]
        assert len(exprs["test"]) == 300


def test_trace_styles_grade_as_intended():
    p = tasks.make_problem(random.Random(0), tasks.LEVELS[1], "x")
    full = tasks.render_trace(p.steps, p.answer, "full")
    g = grade(full, p.answer)
    assert g.correct_strict and g.correct_lenient and g.format.well_formatted
    for style in tasks.BROKEN_STYLES:
        g = grade(tasks.render_trace(p.steps, p.answer, style), p.answer)
        assert g.correct_lenient and not g.correct_strict and not g.format.well_formatted, style


def test_format_is_tied_to_wording():
    styles = [tasks.style_for(w, 0.3) for w in range(len(tasks.WORDINGS))]
    assert styles.count("full") == 3
    assert all(tasks.style_for(w, 1.0) == "full" for w in range(len(tasks.WORDINGS)))


def test_facts_are_consistent():
    facts = tasks.make_facts()
    assert len({(f.entity, f.attribute) for f in facts}) == len(facts)
    for f in facts:
        assert f.value in f.choices and f.text.startswith(f.prompt)


def test_tokenizer_digits_tags_and_chat_template(tmp_path):
    from transformers import AutoTokenizer, Qwen2Config

    # saved beside a Qwen2 config, as in a model folder: AutoTokenizer then picks Qwen2Tokenizer, which
    # rebuilds the pipeline from the vocabulary; the lab tokenizer must come back identical (spaces included)
    built = build_tokenizer()
    Qwen2Config(vocab_size=len(built)).save_pretrained(tmp_path)
    built.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "<think>\n12*34=408\n</think>\nThe answer is \\boxed{408}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == built(text, add_special_tokens=False)["input_ids"]
    tags = ["<think>", "</think>", "\\boxed"]
    assert len(ids) == len(text) - sum(len(t) - 1 for t in tags)  # one token per character, one per tag
    assert [tok.decode([i]) for i in ids[2:4]] == ["1", "2"]
    # tags are ordinary tokens: TRL decodes with skip_special_tokens=True and they must survive
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert not set(TAGS) & set(tok.all_special_tokens)
    msgs = [{"role": "user", "content": "Compute (3+4)*2."}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == render_chat("Compute (3+4)*2.")
    full = msgs + [{"role": "assistant", "content": text}]
    assert tok.apply_chat_template(full, tokenize=False) == render_chat("Compute (3+4)*2.", text)


def test_continuing_pretraining_needs_a_saved_model(tmp_path):
    from tina_probe.errors import TinaError
    from tina_probe.lab.pretrain import load_init

    with pytest.raises(TinaError, match=str(tmp_path)):
        load_init(tmp_path)


def test_study_probes_retention_at_the_best_checkpoint_phase_chose(tmp_path):
    import pandas as pd

    from tina_probe.lab.study import best_checkpoints
    from tina_probe.store import Store

    runs = [tmp_path / "runs" / name for name in ("a", "b", "c")]
    for run, steps in zip(runs, ((5, 10), (5,), (5,))):
        for step in steps:
            (run / f"checkpoint-{step}").mkdir(parents=True)
    Store(tmp_path / "out").write("phase_summary", pd.DataFrame({"run": ["a", "b", "c"],
                                                                  "best_step": [10.0, None, 7.0]}))
    # a: its best checkpoint; b: no best step known; c: the best folder is gone -> the whole run is probed
    assert best_checkpoints(tmp_path / "out", runs) == [str(runs[0] / "checkpoint-10"), str(runs[1]), str(runs[2])]
