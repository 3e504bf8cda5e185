"""transformers + peft backend: one base load per base model, LoRA adapters hot-swapped on one PeftModel."""

from __future__ import annotations

import copy
import gc
import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tina_probe.errors import TinaError
from tina_probe.generate.base import Completion

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def batch_seed(seed: int, batch_index: int) -> int:
    """The torch seed of one batch: distinct per (seed, batch), so no two batches share a random stream."""
    return (int(seed) * 1_000_003 + int(batch_index)) % (2**63 - 1)


def adapter_name(path: Path) -> str:
    """A module-name-safe adapter name for a folder (peft names become attribute names: no dots or slashes)."""
    return "a" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


def split_completion(tokens: list[int], eos_ids: set[int], max_tokens: int) -> tuple[list[int], int, bool]:
    """(tokens before the first EOS, tokens generated including that EOS, truncated = no EOS within max_tokens)."""
    for i, t in enumerate(tokens[:max_tokens]):
        if t in eos_ids:
            return tokens[:i], i + 1, False
    kept = tokens[:max_tokens]
    return kept, len(kept), True


def _has_tokenizer(folder: str) -> bool:
    p = Path(folder)
    return not p.is_dir() or any((p / f).is_file() for f in _TOKENIZER_FILES)


class HFGenerator:
    """Sampling with transformers' generate; LoRA via load_adapter / set_adapter / delete_adapter on one PeftModel.

    merge=True instead merges each adapter into a copy of the base (faster generation, one copy in memory)."""

    def __init__(self, *, device: str | None = None, dtype: torch.dtype | None = None, batch_size: int = 64,
                 merge: bool = False):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = max(1, int(batch_size))
        self.merge = merge
        self.base: str | None = None
        self.model = None  # the plain base model (wrapped in place by peft once an adapter is used)
        self.tokenizer = None
        self._peft = None
        self._merged: tuple[str, torch.nn.Module] | None = None  # (adapter folder, merged copy)
        self._pristine = None  # a copy of the base kept for merging (merge=True only)

    # ------------------------------------------------------------------ loading

    def load_base(self, base: str, *, adapters: Sequence[Path] = (), tokenizer: str | None = None) -> None:
        """Load `base` once (float32 on CPU, bf16 on CUDA; safetensors only); no-op when already current."""
        base = str(base)
        if self.base == base and self.model is not None:
            return
        self.close()
        try:
            model = AutoModelForCausalLM.from_pretrained(
                base, dtype=self.dtype, use_safetensors=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise TinaError(f"{base}: cannot load model ({str(exc).splitlines()[0]})") from None
        self.model = model.to(self.device).eval()
        tok_source = base if (_has_tokenizer(base) or not tokenizer) else str(tokenizer)
        try:
            tok = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise TinaError(f"{tok_source}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        self.base = base
        if self.merge:
            self._pristine = self.model

    def _adapter_model(self, adapter: Path):
        """The model to generate with for one adapter (hot-swapped, or a merged copy when merge=True)."""
        from peft import PeftModel

        folder = Path(adapter)
        if not (folder / "adapter_model.safetensors").is_file():
            raise TinaError(f"{folder}: no adapter_model.safetensors (only safetensors adapters are read)")
        key = str(folder.resolve())
        if self.merge:
            if self._merged is None or self._merged[0] != key:
                self._merged = None
                gc.collect()
                merged = PeftModel.from_pretrained(copy.deepcopy(self._pristine), key, is_trainable=False)
                self._merged = (key, merged.merge_and_unload().eval())
            return self._merged[1]
        name = adapter_name(folder)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, key, adapter_name=name, is_trainable=False).eval()
        elif name not in self._peft.peft_config:
            self._peft.load_adapter(key, adapter_name=name, is_trainable=False)
        self._peft.set_adapter(name)
        for old in [n for n in list(self._peft.peft_config) if n != name]:
            self._peft.delete_adapter(old)  # one adapter resident at a time: memory stays flat over a sweep
        return self._peft

    def _model_for(self, adapter: Path | None):
        """(model, context) for one call: the base runs with peft's adapters disabled once it has been wrapped."""
        if adapter is not None:
            return self._adapter_model(adapter), nullcontext()
        if self._peft is not None:
            return self._peft, self._peft.disable_adapter()
        return self.model, nullcontext()

    # ------------------------------------------------------------------ generation

    def render(self, prompt: str) -> str:
        """The prompt through the tokenizer's chat template (with the generation prompt) when it has one."""
        tok = self._require()
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt

    def _require(self):
        if self.tokenizer is None:
            raise RuntimeError("HFGenerator: call load_base() before generating")
        return self.tokenizer

    def _eos_ids(self, model) -> set[int]:
        ids = set()
        for source in (getattr(model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return {int(i) for i in ids}

    def _generation_config(self, eos_ids, n, temperature, top_p, max_tokens) -> GenerationConfig:
        """Every sampling knob set explicitly, so a checkpoint's generation_config.json cannot change results."""
        common = dict(
            max_new_tokens=int(max_tokens), min_new_tokens=0, num_return_sequences=int(n), num_beams=1,
            repetition_penalty=1.0, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(eos_ids),
        )
        if temperature > 0:
            return GenerationConfig(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0,
                                    **common)
        return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, **common)

    @torch.inference_mode()
    def generate(self, prompts: list[str], *, adapter: Path | None, n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int) -> list[list[Completion]]:
        """n completions per prompt; left-padded batches, one torch seed per batch."""
        tok = self._require()
        model, ctx = self._model_for(adapter)
        eos_ids = self._eos_ids(model)
        gen_config = self._generation_config(eos_ids, n, temperature, top_p, max_tokens)
        add_special = not getattr(tok, "chat_template", None)  # a chat template already adds what it needs
        per_batch = max(1, self.batch_size // max(1, n))
        out: list[list[Completion]] = []
        with ctx:
            for b, start in enumerate(range(0, len(prompts), per_batch)):
                texts = [self.render(p) for p in prompts[start : start + per_batch]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(self.device)
                torch.manual_seed(batch_seed(seed, b))
                seqs = model.generate(**enc, generation_config=gen_config)
                new = seqs[:, enc["input_ids"].shape[1] :].tolist()
                for i in range(len(texts)):
                    group = []
                    for row in new[i * n : (i + 1) * n]:
                        kept, n_tok, truncated = split_completion(row, eos_ids, max_tokens)
                        group.append(Completion(tok.decode(kept, skip_special_tokens=True), n_tok, truncated))
                    out.append(group)
        return out

    def close(self) -> None:
        """Drop the model, adapters and merged copies."""
        self.model = self._peft = self._merged = self._pristine = self.tokenizer = None
        self.base = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
