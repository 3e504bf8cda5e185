"""Shared fixtures: a tiny random Qwen2 + char-level tokenizer on disk, LoRA / full checkpoints, fake run folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reference import save_random_lora

# tests never reach the network, and stay on one thread (the machine is shared)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

# Files whose tests take minutes (the validation study, the calibration's short form, concurrent shards, the real
# model): collected first, so that under `make test`'s pytest-xdist workers (--dist loadfile --no-loadscope-reorder
# hands out files in collection order) they start at once and the short files fill the other worker, instead of one
# of them running alone at the end. A stable sort: every file's tests stay together and in their order.
LONG_FILES = ("test_lab_validation.py", "test_verdict_calibration.py", "test_real_model.py", "test_shards.py",
              "test_multiprocess_train.py", "test_real_vllm.py", "test_real_probes.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))

EOS = "<|end|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TAGS = ["<think>", "</think>", "\\boxed"]
CHARS = "0123456789+-*/=() \n{}.,?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def make_tokenizer():
    """A char-level fast tokenizer: one token per character, think/boxed tags as ordinary added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([EOS, "<unk>", USER, ASSISTANT])}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (EOS, "<unk>", USER, ASSISTANT)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


def make_model(vocab_size: int, eos_id: int, seed: int = 0):
    """A tiny random Qwen2: hidden 64, 2 layers, head_dim 32 (vLLM CPU attention accepts 32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=None,
    )
    return Qwen2ForCausalLM(cfg).eval()


def trainer_state(step: int, *, old_names: bool = False) -> dict:
    """A trainer_state.json body with a log_history of `step` entries (old or new TRL metric names)."""
    history = []
    for s in range(1, step + 1):
        if old_names:
            entry = {"step": s, "rewards/format_reward": 0.1 * s, "rewards/accuracy_reward": 0.01 * s,
                     "completion_length": 20.0 + s, "kl": 0.001 * s, "loss": 1.0 / s, "reward": 0.11 * s,
                     "learning_rate": 1e-4, "epoch": s / 10}
        else:
            entry = {"step": s, "rewards/format_reward/mean": 0.1 * s, "rewards/format_reward/std": 0.2,
                     "rewards/accuracy_reward/mean": 0.01 * s, "completions/mean_length": 20.0 + s,
                     "completions/clipped_ratio": 0.5 / s, "kl": 0.001 * s, "entropy": 2.0 - 0.01 * s,
                     "loss": 1.0 / s, "reward": 0.11 * s, "learning_rate": 1e-4}
        history.append(entry)
    history.append({"step": step, "train_runtime": 12.5, "train_loss": 0.3})
    return {"global_step": step, "log_history": history}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny base model + tokenizer saved to a folder (safetensors)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-base"
    tok = make_tokenizer()
    model = make_model(len(tok), tok.eos_token_id)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def save_lora(base: Path, folder: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter of the base with random non-zero lora_B (so its outputs differ from the base)."""
    return save_random_lora(base, folder, seed=seed, r=r, target_modules=["q_proj", "v_proj"], scale=0.5)


def save_full(base: Path, folder: Path, seed: int) -> Path:
    """A full checkpoint: the base with every weight nudged; no tokenizer files (they come from the base)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_manifest(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "tina_run.json").write_text(json.dumps(fields))


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory) -> Path:
    """A tiny lab-style benchmark file (JSONL rows: id, question, answer)."""
    path = tmp_path_factory.mktemp("bench") / "tiny.jsonl"
    rows = [{"id": f"t-{i}", "question": f"{i}+{i+1}=?", "answer": str(2 * i + 1)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def session_runs(tmp_path_factory, tiny_base, lab_data) -> Path:
    """runs/ with a LoRA run (checkpoint-20, checkpoint-10) and a full run (checkpoint-10), manifests included."""
    root = tmp_path_factory.mktemp("runs")
    lora = root / "lab-lora"
    write_manifest(lora, name="lab-lora", kind="lora", base=str(tiny_base), eval_benchmark=str(lab_data),
                   recipe={"lr": 1e-4})
    for step, seed in ((20, 2), (10, 1)):
        ckpt = save_lora(tiny_base, lora / f"checkpoint-{step}", seed)
        (ckpt / "trainer_state.json").write_text(json.dumps(trainer_state(step)))
    full = root / "lab-full"
    write_manifest(full, name="lab-full", kind="full", base=str(tiny_base), eval_benchmark=str(lab_data),
                   recipe={"lr": 1e-5})
    ckpt = save_full(tiny_base, full / "checkpoint-10", 3)
    (ckpt / "trainer_state.json").write_text(json.dumps(trainer_state(10, old_names=True)))
    return root


@pytest.fixture
def runs_dir(tmp_path, session_runs) -> Path:
    """A private copy of the run folders, safe to corrupt."""
    dst = tmp_path / "runs"
    shutil.copytree(session_runs, dst)
    return dst
