"""Retention probes find planted forgetting: a tiny model fitted on the lab facts, then damaged by SFT on
contradicting facts (full and LoRA), loses facts and moves away from the base; an undamaged one does not.

Ground truth: torch.distributions for KL / NLL, lm-eval run directly (model path, peft=) for the probe scores.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.kl import perplexity, token_kl, token_mean, token_nll
from analysis.distribution_probes import completion_mask, right_pad, text_windows
from analysis.retention import (
    COLUMNS,
    RetentionSettings,
    lmeval_metrics,
    load_tokenizer,
    run_retention,
)
from analysis.retention_plots import learning_forgetting_frame, plot_learning_forgetting
from analysis.retention_probes import (
    DATA_DIR,
    LAB_PROBES,
    read_forgetting,
    resolve_probe,
    resolve_probes,
)
from tina_probe.errors import TinaError

N_FACTS = 30  # the first 10 entities: the model is fitted on these and the probes read these (limit)
FACTS = DATA_DIR / "lab" / "facts.jsonl"
MMLU_STEM = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "mmlu_stem.jsonl"
SETTINGS = RetentionSettings(batch_size=32, window=128, task_max_tokens=24)


# ----------------------------------------------------------------------------- helpers


def _facts(n: int = N_FACTS) -> list[dict]:
    return [json.loads(line) for line in FACTS.read_text().splitlines()[:n]]


def _swapped(facts: list[dict]) -> list[str]:
    """Contradicting facts: every value replaced by the next choice."""
    out = []
    for f in facts:
        wrong = f["choices"][(f["answer_index"] + 1) % len(f["choices"])]
        out.append(f"{f['prompt']} {wrong}.")
    return out


def _sft(model, tok, texts: list[str], steps: int, lr: float, params=None) -> None:
    """Plain-torch full-batch next-token training on some texts."""
    enc = tok(texts, padding=True, padding_side="right", return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(params if params is not None else model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _write_manifest(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tina_run.json").write_text(json.dumps(fields))


def _value(df: pd.DataFrame, run: str, step: int, probe: str, metric: str) -> float:
    rows = df[(df.run == run) & (df.step == step) & (df.probe == probe) & (df.metric == metric)]
    assert len(rows) == 1, (run, step, probe, metric, rows)
    return float(rows["value"].iloc[0])


def _direct_lmeval(task_folder: Path, task: str, model_args: dict, limit: int) -> dict:
    """lm-eval run the ordinary way (model path string, peft= for adapters): the reference scores."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # the tokenizer object: AutoTokenizer would swap the lab's saved tokenizer for Qwen2Tokenizer (see load_tokenizer)
    model_args = {**model_args, "tokenizer": load_tokenizer(model_args["pretrained"])}
    res = simple_evaluate(model="hf", model_args=model_args, tasks=[task], device="cpu", batch_size=32,
                          limit=limit, log_samples=False, bootstrap_iters=1000,
                          task_manager=TaskManager(include_defaults=False, include_path=str(task_folder)))
    return res["results"][task]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fitted_base(tmp_path_factory) -> Path:
    """A tiny random Qwen2 + the lab tokenizer, fitted on the first N_FACTS facts so that it recalls them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tina_probe.lab.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      bos_token_id=None)
    model = Qwen2ForCausalLM(cfg)
    _sft(model, tok, [f["text"] for f in _facts()], steps=160, lr=1e-2)
    folder = tmp_path_factory.mktemp("models") / "fitted-base"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory, fitted_base) -> Path:
    """runs/lab-lora (checkpoint-1: lora_B = 0, undamaged; checkpoint-2: SFT on swapped facts) and
    runs/lab-full (checkpoint-1: full SFT on swapped facts)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("runs")
    tok = AutoTokenizer.from_pretrained(str(fitted_base))
    wrong = _swapped(_facts())
    lora_cfg = dict(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    run = root / "lab-lora"
    _write_manifest(run, name="lab-lora", kind="lora", base=str(fitted_base))
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(fitted_base), use_safetensors=True)
    peft_model = get_peft_model(base, LoraConfig(**lora_cfg))  # lora_B starts at zero: the base exactly
    peft_model.save_pretrained(run / "checkpoint-1", safe_serialization=True)
    _sft(peft_model, tok, wrong, steps=40, lr=1e-2, params=[p for p in peft_model.parameters() if p.requires_grad])
    peft_model.save_pretrained(run / "checkpoint-2", safe_serialization=True)

    run = root / "lab-full"
    _write_manifest(run, name="lab-full", kind="full", base=str(fitted_base))
    model = AutoModelForCausalLM.from_pretrained(str(fitted_base), use_safetensors=True)
    _sft(model, tok, wrong, steps=25, lr=3e-3)
    model.save_pretrained(run / "checkpoint-1", safe_serialization=True)
    return root


@pytest.fixture(scope="session")
def retention(tmp_path_factory, runs_root) -> tuple[pd.DataFrame, Path]:
    """The retention table of both runs with the lab's default probes (first N_FACTS docs / windows / prompts)."""
    out = tmp_path_factory.mktemp("results")
    df = run_retention([str(runs_root / "lab-lora"), str(runs_root / "lab-full")], probes=None, out=out,
                       limit=N_FACTS, settings=SETTINGS)
    return df, out


# ----------------------------------------------------------------------------- pure functions


def test_token_kl_and_nll_match_torch_distributions():
    from torch.distributions import Categorical, kl_divergence

    gen = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 5, 7, generator=gen) * 3, torch.randn(2, 5, 7, generator=gen) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]])
    want = kl_divergence(Categorical(logits=p), Categorical(logits=q)) * mask
    assert torch.allclose(token_kl(p, q, mask), want, atol=1e-5)
    assert torch.all(token_kl(p, q, mask)[mask == 0] == 0)
    assert torch.all(token_kl(p, p.clone(), mask) == 0), "equal logits give exactly zero"
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    assert torch.allclose(token_nll(p, targets, mask), -Categorical(logits=p).log_prob(targets) * mask, atol=1e-5)


def test_token_mean_is_the_token_weighted_mean_with_cluster_error():
    rng = np.random.default_rng(0)
    values = [rng.normal(size=n) for n in (3, 5, 2, 7)]
    tm = token_mean([v.sum() for v in values], [len(v) for v in values])
    assert tm.value == pytest.approx(np.concatenate(values).mean())
    assert (tm.n_tokens, tm.n_clusters) == (17, 4)
    # equal cluster sizes: the cluster-robust error is the standard error of the cluster means
    means = rng.normal(size=6)
    tm = token_mean(means * 4, [4] * 6)
    assert tm.stderr == pytest.approx(means.std(ddof=1) / math.sqrt(6))
    assert math.isnan(token_mean([1.0], [2]).stderr)
    ppl, se = perplexity(token_mean(means * 4, [4] * 6))
    assert ppl == pytest.approx(math.exp(means.mean())) and se == pytest.approx(ppl * tm.stderr)


def test_windows_padding_and_completion_mask():
    assert text_windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert text_windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a lone last token predicts nothing
    assert text_windows(list(range(6)), 4, bos_id=99) == [[99, 0, 1, 2], [99, 3, 4, 5]]
    assert text_windows(list(range(10)), 4, limit=1) == [[0, 1, 2, 3]]
    ids, mask = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    # prompt of 2 and completion of 3 (width 5): logit positions 1..3 predict completion tokens 2..4
    assert completion_mask([2, 1], [5, 3], 5).tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]


def test_lmeval_metrics_reads_values_and_stderrs():
    got = lmeval_metrics({"name": "t", "alias": "t", "sample_len": 3, "acc,none": 0.5, "acc_stderr,none": 0.1,
                          "acc_norm,none": 0.25, "acc_norm_stderr,none": "N/A", "exact_match,strip": 1.0})
    as_dict = {m.metric: (m.value, m.stderr) for m in got}
    assert as_dict["acc"] == (0.5, 0.1) and as_dict["exact_match_strip"][0] == 1.0
    assert math.isnan(as_dict["acc_norm"][1]) and set(as_dict) == {"acc", "acc_norm", "exact_match_strip"}


# ----------------------------------------------------------------------------- probe resolution


def test_unknown_probe_and_broken_task_file_fail_before_any_work(tmp_path, runs_root, monkeypatch):
    import analysis.retention as retention_mod

    def no_work(*a, **k):
        raise AssertionError("a model was loaded before the probes were checked")

    monkeypatch.setattr(retention_mod.ProbeModels, "activate", no_work)
    runs = [str(runs_root / "lab-lora")]
    with pytest.raises(TinaError, match="nope: unknown probe"):
        run_retention(runs, probes=["lab_facts_gen", "nope"], out=tmp_path / "r")
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: broken\noutput_type: multiple_choice\ndoc_to_text: [unclosed\n")
    with pytest.raises(TinaError, match="broken.yaml: not valid YAML"):
        run_retention(runs, probes=["kl_general", str(broken)], out=tmp_path / "r")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("task: wrong\ndataset_path: json\noutput_type: multiple_choices\n")
    with pytest.raises(TinaError, match="wrong.yaml: output_type"):
        run_retention(runs, probes=[str(wrong)], out=tmp_path / "r")
    # parses, but lm-eval cannot build it (its choices field does not exist in the data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"task: bad\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {FACTS}}}}}\n"
                   "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{{{prompt}}}}'\n"
                   "doc_to_choice: no_such_field\ndoc_to_target: answer_index\n")
    with pytest.raises(TinaError, match="bad.yaml: lm-eval cannot (build|read) task"):
        run_retention(runs, probes=[str(bad)], out=tmp_path / "r")
    with pytest.raises(TinaError, match="needs a data file; pass mmlu_stem_local=FILE"):
        run_retention(runs, probes=["mmlu_stem_local"], out=tmp_path / "r")
    with pytest.raises(TinaError, match="missing.txt: data file of probe kl_general not found"):
        run_retention(runs, probes=[f"kl_general={tmp_path / 'missing.txt'}"], out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "nothing may be written before the probes are checked"


@pytest.mark.parametrize("name", ["mmlu", "arc_challenge", "hellaswag", "winogrande"])
def test_hub_benchmarks_offline_ask_for_a_local_file(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(TinaError, match=f"{name}: cannot reach the hub .*pass a local file: --probes {name}=FILE"):
        resolve_probe(name, tmp_path)


def test_forgetting_registry_names_lm_evals_own_tasks_and_datasets():
    import lm_eval.tasks as tasks_pkg
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own reader (follows include:)

    reg = read_forgetting()
    assert set(reg) == {"mmlu", "arc_challenge", "hellaswag", "winogrande"}
    for name, entry in reg.items():
        index = TaskManager(include_defaults=False,
                            include_path=str(Path(tasks_pkg.__file__).parent / entry["tasks_dir"])).task_index
        assert entry["task"] in index, name
        # a leaf task's config (mmlu is a group: read one of its subjects)
        leaf = index["mmlu_abstract_algebra" if name == "mmlu" else entry["task"]]
        assert load_yaml(leaf.yaml_path, resolve_func=False)["dataset_path"] == entry["dataset"], name


def test_local_file_replaces_a_hub_benchmark(tmp_path):
    rows = [{"id": f"q{i}", "question": f"Which is number {i}?", "answerKey": "B",
             "choices": {"text": ["zero", f"n{i}", "two", "three"], "label": ["A", "B", "C", "D"]}}
            for i in range(3)]
    path = tmp_path / "arc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = resolve_probe(f"arc_challenge={path}", tmp_path / "work")
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_defaults=False, include_path=str(probe.include_path)).load([probe.task])
    task = task["tasks"][probe.task]
    docs = list(task.eval_docs)
    assert len(docs) == 3 and task.doc_to_target(docs[0]) == 1  # answerKey B -> index 1, as lm-eval's arc
    assert task.doc_to_text(docs[2]) == "Question: Which is number 2?\nAnswer:"
    assert [p.name for p in resolve_probes(None, tmp_path / "w2")] == list(LAB_PROBES)


# ----------------------------------------------------------------------------- planted forgetting


@pytest.mark.slow
def test_base_against_itself_has_zero_kl_and_the_direct_lm_eval_scores(retention, fitted_base, tmp_path):
    df, _ = retention
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    for run in ("lab-lora", "lab-full"):
        for probe in ("kl_general", "kl_task"):
            assert abs(_value(df, run, 0, probe, "kl")) < 1e-6
        assert set(df[(df.run == run) & (df.step == 0)]["kind"]) == {"base"}
    # lora_B = 0: the adapter changes nothing
    assert _value(df, "lab-lora", 1, "kl_general", "kl") < 1e-6
    assert _value(df, "lab-lora", 1, "kl_task", "kl") < 1e-6
    # the fitted base knows its facts, and its probe scores are lm-eval's own
    assert _value(df, "lab-lora", 0, "lab_facts_gen", "exact_match") >= 0.7
    assert _value(df, "lab-lora", 0, "lab_facts_mc", "acc") >= 0.7
    # perplexity: the NLL of the same windows computed by transformers' own loss
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fitted_base), use_safetensors=True).eval()
    tok = load_tokenizer(str(fitted_base))
    ids = tok((DATA_DIR / "lab" / "general.txt").read_text(), add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + SETTINGS.window] for i in range(0, len(ids), SETTINGS.window)][:N_FACTS]
    with torch.no_grad():
        losses = [(model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss.item(), len(w) - 1)
                  for w in windows]
    nll = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert _value(df, "lab-lora", 0, "ppl_general", "nll") == pytest.approx(nll, rel=1e-5)
    assert _value(df, "lab-lora", 0, "ppl_general", "ppl") == pytest.approx(math.exp(nll), rel=1e-5)
    probes = {p.name: p for p in resolve_probes(["lab_facts_gen", "lab_facts_mc"], tmp_path)}
    for name, metrics in (("lab_facts_gen", ["exact_match"]), ("lab_facts_mc", ["acc", "acc_norm"])):
        direct = _direct_lmeval(probes[name].include_path, name, {"pretrained": str(fitted_base)}, N_FACTS)
        for m in metrics:
            assert _value(df, "lab-full", 0, name, m) == pytest.approx(direct[f"{m},none"], abs=1e-12)
            assert _value(df, "lab-lora", 0, name, m) == pytest.approx(direct[f"{m},none"], abs=1e-12)


@pytest.mark.slow
def test_hot_swapped_adapter_scores_equal_a_fresh_peft_load(retention, runs_root, fitted_base, tmp_path):
    df, _ = retention
    probe = resolve_probes(["lab_facts_mc"], tmp_path)[0]
    direct = _direct_lmeval(probe.include_path, "lab_facts_mc",
                            {"pretrained": str(fitted_base), "peft": str(runs_root / "lab-lora" / "checkpoint-2")},
                            N_FACTS)
    assert _value(df, "lab-lora", 2, "lab_facts_mc", "acc") == pytest.approx(direct["acc,none"], abs=1e-12)


@pytest.mark.slow
def test_damaged_checkpoints_show_planted_forgetting(retention):
    df, _ = retention
    base_gen = _value(df, "lab-lora", 0, "lab_facts_gen", "exact_match")
    base_mc = _value(df, "lab-lora", 0, "lab_facts_mc", "acc")
    base_ppl = _value(df, "lab-lora", 0, "ppl_general", "ppl")
    undamaged = {p: _value(df, "lab-lora", 1, p, "kl") for p in ("kl_general", "kl_task")}
    assert _value(df, "lab-lora", 1, "lab_facts_gen", "exact_match") == base_gen
    assert _value(df, "lab-lora", 1, "ppl_general", "ppl") == pytest.approx(base_ppl, rel=1e-6)
    for run, step in (("lab-lora", 2), ("lab-full", 1)):
        assert _value(df, run, step, "lab_facts_gen", "exact_match") <= base_gen - 0.5, run
        assert _value(df, run, step, "lab_facts_mc", "acc") <= base_mc - 0.5, run
        for probe in ("kl_general", "kl_task"):
            kl = _value(df, run, step, probe, "kl")
            assert kl > 1e-2 and kl > 1000 * max(undamaged[probe], 1e-9), (run, probe, kl)
        row = df[(df.run == run) & (df.step == step) & (df.probe == "kl_task")].iloc[0]
        assert row.ci_low <= row.value <= row.ci_high and row.ci_low > 0, row  # bootstrap over problems
    stderr = df[(df.probe == "kl_general") & (df.step > 0)]["stderr"]
    assert stderr.notna().all() and (stderr >= 0).all()


@pytest.mark.slow
def test_rerun_resumes_and_relabels_a_shared_base(retention, runs_root, tmp_path, monkeypatch):
    import analysis.retention as retention_mod

    df, out = retention
    results = tmp_path / "results"
    shutil.copytree(out, results)
    # a third run on the same base, with no checkpoints yet: its base rows come from the done parts
    extra = tmp_path / "lab-full-2"
    _write_manifest(extra, name="lab-full-2", kind="full", base=str(json.loads(
        (runs_root / "lab-full" / "tina_run.json").read_text())["base"]))

    def no_work(*a, **k):
        raise AssertionError("a finished unit was computed again")

    monkeypatch.setattr(retention_mod, "run_probe", no_work)
    again = run_retention([str(runs_root / "lab-lora"), str(runs_root / "lab-full"), str(extra)], probes=None,
                          out=results, limit=N_FACTS, settings=SETTINGS)
    old = again[again.run != "lab-full-2"].sort_values(["run", "step", "probe", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, df.sort_values(["run", "step", "probe", "metric"]).reset_index(drop=True))
    new = again[again.run == "lab-full-2"].set_index(["probe", "metric"])["value"].sort_index()
    base = df[(df.run == "lab-full") & (df.step == 0)].set_index(["probe", "metric"])["value"].sort_index()
    pd.testing.assert_series_equal(new, base)


@pytest.mark.slow
@pytest.mark.skipif(not MMLU_STEM.is_file(), reason="shared MMLU-STEM file not present")
def test_mmlu_stem_local_multiple_choice_on_the_real_file(runs_root, fitted_base, tmp_path):
    df = run_retention([str(runs_root / "lab-full")], probes=[f"mmlu_stem_local={MMLU_STEM}"], out=tmp_path / "r",
                       limit=20, settings=SETTINGS)
    assert set(df["step"]) == {0, 1} and set(df["metric"]) == {"acc", "acc_norm"}
    assert df["value"].between(0, 1).all() and (df["stderr"] > 0).all()
    probe = resolve_probes([f"mmlu_stem_local={MMLU_STEM}"], tmp_path / "w")[0]
    direct = _direct_lmeval(probe.include_path, "mmlu_stem_local", {"pretrained": str(fitted_base)}, 20)
    assert _value(df, "lab-full", 0, "mmlu_stem_local", "acc") == pytest.approx(direct["acc,none"], abs=1e-12)
    assert direct["sample_len"] == 20


# ----------------------------------------------------------------------------- the figure


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Planted numbers: run A (lora) gains 0.2 and 0.4, run B (full) gains 0.3 and 0.5; facts and KL as set."""
    passk, ret = [], []
    for run, kind, gains, accs, kls in (("A", "lora", [0.2, 0.4], [0.9, 0.8], [0.01, 0.02]),
                                        ("B", "full", [0.3, 0.5], [0.7, 0.5], [0.05, 0.09])):
        for step, gain, acc, kl in zip([0, 10, 20], [0.0, *gains], [1.0, *accs], [0.0, *kls]):
            k = "base" if step == 0 else kind
            passk.append(dict(run=run, step=step, kind=k, benchmark="lab-test", grading="strict", k=1, n=4,
                              value=0.1 + gain, ci_low=0.0, ci_high=1.0))
            passk.append(dict(run=run, step=step, kind=k, benchmark="lab-test", grading="lenient", k=1, n=4,
                              value=0.9, ci_low=0.0, ci_high=1.0))
            ret.append(dict(run=run, step=step, kind=k, probe="lab_facts_gen", metric="exact_match", value=acc,
                            stderr=0.01))
            ret.append(dict(run=run, step=step, kind=k, probe="kl_general", metric="kl", value=kl, stderr=0.001))
    return pd.DataFrame(passk), pd.DataFrame(ret)


def test_learning_forgetting_frame_recovers_planted_gain_and_loss():
    passk, ret = _tables()
    frame = learning_forgetting_frame(passk, ret).set_index(["run", "step", "probe"])
    assert frame.loc[("B", 20, "lab_facts_gen"), "gain"] == pytest.approx(0.5)
    assert frame.loc[("B", 20, "lab_facts_gen"), "loss"] == pytest.approx(0.5)  # 1.0 -> 0.5 exact match
    assert frame.loc[("A", 10, "kl_general"), "loss"] == pytest.approx(0.01)
    assert frame.loc[("A", 10, "kl_general"), "run_kind"] == "lora"
    assert frame.loc[("A", 0, "lab_facts_gen"), "gain"] == 0 and frame.loc[("A", 0, "lab_facts_gen"), "loss"] == 0
    assert len(frame) == 2 * 3 * 2


def test_plot_learning_forgetting_writes_pngs_and_skips_missing_tables(tmp_path):
    passk, ret = _tables()
    paths = plot_learning_forgetting(passk, ret, tmp_path / "fig")
    assert [p.name for p in paths] == ["learning_forgetting_lab-test.png", "learning_forgetting_steps_lab-test.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert plot_learning_forgetting(None, ret, tmp_path / "none") == []
    assert plot_learning_forgetting(passk, pd.DataFrame(), tmp_path / "none") == []
    assert not (tmp_path / "none").exists()



def test_other_settings_replace_the_rows_and_going_back_computes_nothing(retention, runs_root, tmp_path, monkeypatch):
    """Another --limit into the same store: the table shows the rows asked for last (not whichever part sorts
    last); asking for the first limit again reuses its parts without computing and shows them again."""
    import analysis.retention as retention_mod

    df, out = retention
    results = tmp_path / "results"
    shutil.copytree(out, results)
    runs = [str(runs_root / "lab-lora"), str(runs_root / "lab-full")]
    key = ["run", "step", "probe", "metric"]
    small = run_retention(runs, probes=["lab_facts_mc"], out=results, limit=2, settings=SETTINGS)
    fresh = run_retention(runs, probes=["lab_facts_mc"], out=tmp_path / "fresh", limit=2, settings=SETTINGS)
    mc = small[small.probe == "lab_facts_mc"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(mc, fresh.sort_values(key).reset_index(drop=True))

    def no_work(*a, **k):
        raise AssertionError("a finished unit was computed again")

    monkeypatch.setattr(retention_mod, "run_probe", no_work)
    back = run_retention(runs, probes=None, out=results, limit=N_FACTS, settings=SETTINGS)
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  df.sort_values(key).reset_index(drop=True))


@pytest.mark.slow
def test_fast_path_writes_the_old_paths_table_with_less_work(runs_root, tmp_path, monkeypatch):
    """Today's retention (the base's logits on the reference text and on its own task completions kept across
    checkpoints, one forward where the checkpoint is the base, no lm-eval environment report) writes the table the
    old paths write (TINA_PROBE_SLOW_PATHS=1): value, stderr and per-item scores bit for bit, on a base, two LoRA
    adapters and a full checkpoint, with less work."""
    import lm_eval.evaluator

    import analysis.distribution_probes as probes_mod
    from tina_probe.slow_paths import ENV

    calls = {"forwards": 0, "env_reports": 0}
    logits = probes_mod._logits

    def counted_logits(*args, **kwargs):
        calls["forwards"] += 1
        return logits(*args, **kwargs)

    def counted_env_report(results):
        calls["env_reports"] += 1

    monkeypatch.setattr(probes_mod, "_logits", counted_logits)
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", counted_env_report)
    runs = [str(runs_root / "lab-lora"), str(runs_root / "lab-full")]
    tables, work = {}, {}
    for side in ("slow", "fast"):
        if side == "slow":
            monkeypatch.setenv(ENV, "1")
        else:
            monkeypatch.delenv(ENV)
        calls.update(forwards=0, env_reports=0)
        df = run_retention(runs, probes=None, out=tmp_path / side, limit=N_FACTS, settings=SETTINGS)
        tables[side] = df.sort_values(["run", "step", "probe", "metric"]).reset_index(drop=True)
        work[side] = dict(calls)
    slow, fast = tables["slow"], tables["fast"]
    # 5 labelled checkpoints (lab-lora 0-2, lab-full 0-1) x 8 metrics (exact_match, acc, acc_norm, kl, ppl, nll, and
    # the task probe's kl and kl_forward)
    assert len(slow) == 5 * 8 and set(slow.step) == {0, 1, 2}
    pd.testing.assert_frame_equal(fast.drop(columns=["items", "path"]), slow.drop(columns=["items", "path"]),
                                  check_exact=True)
    lmeval = slow.probe.isin(["lab_facts_gen", "lab_facts_mc"])
    assert slow[lmeval]["items"].map(len).eq(N_FACTS).all()  # every lm-eval metric keeps one score per fact
    assert [list(x) for x in fast["items"]] == [list(x) for x in slow["items"]]
    # the old paths: the environment report on each of the 2 lm-eval probes of 4 checkpoints; today: none
    assert work["slow"]["env_reports"] == 2 * 4 and work["fast"]["env_reports"] == 0
    assert work["fast"]["forwards"] < work["slow"]["forwards"]
