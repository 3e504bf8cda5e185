"""transformers backend: one base load per base model; LoRA adapters applied by light wrappers around the targeted
nn.Linear modules (several adapters in one batch, one per block of rows), peft for adapters that are not plain LoRA."""

from __future__ import annotations

import copy
import gc
import hashlib
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tina_probe.errors import CheckpointError, TinaError
from tina_probe.generate.base import Completion, GenJob
from tina_probe.generate.decode import BlockSampler, decode_rows, decodes_here
from tina_probe.generate.lora_bank import (PlainLora, RowPlan, lora_bank, lora_compute_dtype, merged_lora,
                                           read_plain_lora)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
ADAPTER_CACHE = 16  # adapters kept read in memory (LRU): a sweep's adapters of one stack and the next
AUTO_MERGE_MAX_BYTES = 1 << 30  # merge=None: merge in place only while the restore copies stay under 1 GiB


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


# ----------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class _Block:
    """One batch of one job: its prompts, adapter folder and torch seed (what one old per-batch generate got)."""

    job: int
    prompts: tuple[str, ...]
    adapter: Path | None
    seed: int


class HFGenerator:
    """Sampling from one base load with transformers models; LoRA adapters applied per batch, several at once.

    Plain LoRA adapters (the usual kind) are read from their safetensors and applied by LoraBankLinear wrappers that
    exist only during generation; jobs with the same prompts and different adapters share one forward pass (rows of
    one block per adapter) within batch_size rows. A batch with a single adapter is merged into the base weights in
    place instead (merge=None, the default: only where the weights are float32, so that merging rounds no more than
    the unmerged sum does, their restore copies stay under AUTO_MERGE_MAX_BYTES and no targeted weight is tied to
    another; base speed) and the weights are restored bit-exactly after. merge=True merges every
    adapter, one at a time (no batching of checkpoints; in bf16 small updates round away); merge=False never merges.
    Adapters that are not plain LoRA (DoRA, LoRA biases, saved modules, ...) go through peft itself. Decoding is
    decode_rows (finished rows leave the batch) where it reproduces HF generate, else HF generate itself."""

    def __init__(self, *, device: str | None = None, dtype: torch.dtype | None = None, batch_size: int = 64,
                 merge: bool | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = max(1, int(batch_size))
        self.merge = merge
        self.base: str | None = None
        self.model = None
        self.tokenizer = None
        self._loras: OrderedDict[tuple, PlainLora | None] = OrderedDict()  # (folder, mtime) -> read adapter
        self._pristine: dict[str, torch.Tensor] = {}  # merged adapters: original weights of merged modules
        self._shared: set[int] = set()
        self._merged_copy: tuple[str, torch.nn.Module] | None = None  # merge=True, peft adapters: merged copy
        self._encoded: OrderedDict[tuple[str, ...], dict] = OrderedDict()  # prompts -> tokenized batch
        self._rendered: dict[str, str] = {}

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
            raise CheckpointError(f"{base}: cannot load model ({str(exc).splitlines()[0]})") from None
        self.model = model.to(self.device).eval()
        ptrs = Counter(p.data_ptr() for _, p in self.model.named_parameters(remove_duplicate=False))
        self._shared = {ptr for ptr, n in ptrs.items() if n > 1}  # tied weights (lm_head = embed_tokens)
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

    def _lora(self, adapter: Path) -> PlainLora | None:
        """The adapter read as plain LoRA (cached, LRU), or None when peft must apply it."""
        folder = Path(adapter)
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{folder}: no adapter_model.safetensors (only safetensors adapters are read)")
        key = (str(folder.resolve()), weights.stat().st_mtime_ns)
        if key not in self._loras:
            try:
                self._loras[key] = read_plain_lora(folder.resolve(), self.model,
                                                   lora_compute_dtype(self.model.dtype), self.device)
            except Exception as exc:  # safetensors' own error type, OSError, ...: one line naming the adapter
                raise CheckpointError(f"{folder}: cannot read adapter ({str(exc).strip().splitlines()[0]})") from None
            while len(self._loras) > ADAPTER_CACHE:
                self._loras.popitem(last=False)
        self._loras.move_to_end(key)
        return self._loras[key]

    @contextmanager
    def _peft_model(self, adapter: Path):
        """peft's own model for an adapter that is not plain LoRA: wrapped for this call and unwrapped after
        (merge=True: merge_and_unload on a copy of the base, kept for the next call with the same adapter)."""
        from peft import PeftModel

        key = str(Path(adapter).resolve())
        if self.merge and not self._touches_shared(Path(key)):  # merging into a tied weight changes its twin too
            if self._merged_copy is None or self._merged_copy[0] != key:
                self._merged_copy = None
                merged = PeftModel.from_pretrained(copy.deepcopy(self.model), key, is_trainable=False)
                self._merged_copy = (key, merged.merge_and_unload().eval())
            yield self._merged_copy[1]
            return
        try:
            wrapped = PeftModel.from_pretrained(self.model, key, adapter_name=adapter_name(Path(key)),
                                                is_trainable=False).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # size mismatch, unreadable config, ...
            base, tokenizer = self.base, self.tokenizer
            self.model = None  # peft may have wrapped modules before it failed: the base is read again
            self.load_base(base)
            self.tokenizer = tokenizer
            raise CheckpointError(f"{key}: cannot load adapter ({str(exc).strip().splitlines()[0]})") from None
        try:
            yield wrapped
        finally:
            self.model = wrapped.unload()  # the base's own modules back in place

    def _touches_shared(self, adapter: Path) -> bool:
        """Whether an adapter's tensors (read from the safetensors header only) name a module whose weight is shared
        with another parameter (the tied lm_head / embed_tokens)."""
        from safetensors import safe_open

        with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
            names = list(f.keys())
        shared = {name for name, module in self.model.named_modules()
                  if getattr(getattr(module, "weight", None), "data_ptr", None) is not None
                  and module.weight.data_ptr() in self._shared}
        for key in names:
            path = key.removeprefix("base_model.model.")
            for marker in (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B", ".base_layer", ".weight"):
                path = path.split(marker)[0]
            if path in shared:
                return True
        return False

    def _mergeable(self, lora: PlainLora, *, forced: bool) -> bool:
        """Whether `lora` may be merged in place: never into a weight shared with another parameter (a LoRA on the
        tied lm_head would change the input embeddings too); unasked, only float32 weights whose restore copies
        (kept while the base is loaded) stay within AUTO_MERGE_MAX_BYTES."""
        weights = [self.model.get_submodule(name).weight for name in lora.weights]
        if any(w.data_ptr() in self._shared for w in weights):
            return False
        size = sum(w.numel() * w.element_size() for w in weights)
        return forced or (self.model.dtype == torch.float32 and size <= AUTO_MERGE_MAX_BYTES)

    @contextmanager
    def _applied(self, adapters: Sequence[Path | None]):
        """(model, row plan or None) to run a stack of blocks with (one adapter per block; all None: the base)."""
        if all(a is None for a in adapters):
            yield self.model, None
            return
        loras = [None if a is None else self._lora(a) for a in adapters]
        if len(adapters) == 1 and loras[0] is None:
            with self._peft_model(adapters[0]) as model:
                yield model, None
        elif len(loras) == 1 and self.merge is not False and self._mergeable(loras[0], forced=bool(self.merge)):
            # one adapter in float32: merged, W + s*B@A, equals the unmerged sum up to float rounding (as batching
            # does) and runs at base speed; unmerged, LoRA's four small extra ops per layer cost 10-20% of a step
            with merged_lora(self.model, loras[0], self._pristine) as model:
                yield model, None
        else:
            with lora_bank(self.model, loras) as (model, plan):
                yield model, plan

    # ------------------------------------------------------------------ generation

    def render(self, prompt: str) -> str:
        """The prompt through the tokenizer's chat template (with the generation prompt) when it has one."""
        tok = self._require()
        if prompt not in self._rendered:
            if len(self._rendered) > 65536:
                self._rendered.clear()
            self._rendered[prompt] = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            ) if getattr(tok, "chat_template", None) else prompt
        return self._rendered[prompt]

    def _require(self):
        if self.tokenizer is None:
            raise RuntimeError("HFGenerator: call load_base() before generating")
        return self.tokenizer

    def _encode(self, prompts: tuple[str, ...]) -> dict:
        """The left-padded token batch of rendered prompts (cached: a sweep sends the same chunks per checkpoint)."""
        if prompts not in self._encoded:
            tok = self.tokenizer
            add_special = not getattr(tok, "chat_template", None)  # a chat template already adds what it needs
            enc = tok([self.render(p) for p in prompts], return_tensors="pt", padding=True,
                      add_special_tokens=add_special, return_token_type_ids=False)
            self._encoded[prompts] = {k: v.to(self.device) for k, v in enc.items()}
            while len(self._encoded) > 256:
                self._encoded.popitem(last=False)
        return self._encoded[prompts]

    def _eos_ids(self, model) -> set[int]:
        ids = set()
        for source in (getattr(model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return {int(i) for i in ids}

    def _generation_config(self, eos_ids, temperature, top_p, max_tokens) -> GenerationConfig:
        """Every sampling knob set explicitly, so a checkpoint's generation_config.json cannot change them (its other
        entries, e.g. no_repeat_ngram_size, still apply in HF generate). One sequence per row: rows come expanded
        n times, as HF's num_return_sequences would expand them (which greedy search refuses for n > 1)."""
        common = dict(
            max_new_tokens=int(max_tokens), min_new_tokens=0, num_return_sequences=1, num_beams=1,
            repetition_penalty=1.0, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(eos_ids),
        )
        if temperature > 0:
            return GenerationConfig(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0,
                                    **common)
        return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, **common)

    def _stacks(self, blocks: Sequence[_Block], n: int) -> list[list[_Block]]:
        """Blocks that run together: same prompts, plain LoRA adapters of equal shapes (the base joins them as a zero
        adapter: its output is unchanged, x + 0 == x), at most batch_size rows; merge=True, peft-applied adapters and
        models that decode_rows does not cover run one block at a time."""
        groups: dict[tuple, list[_Block]] = {}
        together = decodes_here(self.model)  # else HF generate runs each block with its own global seed
        for blk in blocks:
            if not together:
                kind = ("one", blk.job, blk.seed)
            elif blk.adapter is None:
                kind = ("base",)
            else:
                lora = self._lora(blk.adapter)
                kind = ("one", blk.job, blk.seed) if lora is None or self.merge else ("lora", lora.signature)
            groups.setdefault((blk.prompts, kind), []).append(blk)
        for prompts, kind in [key for key in groups if key[1] == ("base",)]:
            joined = next((key for key in groups if key[0] == prompts and key[1][0] == "lora"), None)
            if joined is not None:
                groups[joined] = groups.pop((prompts, kind)) + groups[joined]
        stacks = []
        for (prompts, _), members in groups.items():
            per = max(1, self.batch_size // max(1, len(prompts) * n))
            stacks += [members[i : i + per] for i in range(0, len(members), per)]
        return stacks

    def _hf_generate(self, model, blk: _Block, eos_ids: set[int], *, n: int, temperature: float, top_p: float,
                     max_tokens: int) -> list[list[int]]:
        """New tokens of one block by HF generate, HF's own sampling after torch.manual_seed(block seed): for models
        and adapters that decode_rows does not cover."""
        enc = {name: t.repeat_interleave(n, dim=0) for name, t in self._encode(blk.prompts).items()}
        torch.manual_seed(blk.seed)
        seqs = model.generate(**enc, generation_config=self._generation_config(eos_ids, temperature, top_p,
                                                                               max_tokens))
        return seqs[:, enc["input_ids"].shape[1] :].tolist()

    def _decode_stack(self, model, plan: RowPlan | None, stack: Sequence[_Block], eos_ids: set[int], *, n: int,
                      temperature: float, top_p: float, max_tokens: int) -> list[list[int]]:
        """New tokens of a stack of blocks (same prompts) in one decode_rows batch, block after block."""
        k, rows = len(stack), len(stack[0].prompts) * n
        # each prompt n times in a row (what HF's num_return_sequences does), then the batch once per block
        enc = {name: t.repeat_interleave(n, dim=0).repeat(k, 1) for name, t in self._encode(stack[0].prompts).items()}
        sampler = BlockSampler([blk.seed for blk in stack], rows, temperature, top_p, self.device) \
            if temperature > 0 else None
        return decode_rows(model, enc["input_ids"], enc["attention_mask"], max_tokens=max_tokens, eos_ids=eos_ids,
                           pad_id=self.tokenizer.pad_token_id, sampler=sampler, plan=plan,
                           rows_per_block=rows, prefill_once=True).tolist()

    def _run_stack(self, stack: Sequence[_Block], *, n: int, temperature: float, top_p: float,
                   max_tokens: int) -> list[list[list[Completion]]]:
        """Generate a stack of blocks: per block, n completions per prompt."""
        tok, rows = self.tokenizer, len(stack[0].prompts) * n
        settings = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        with self._applied([blk.adapter for blk in stack]) as (model, plan):
            eos_ids = self._eos_ids(model)
            if decodes_here(model):
                new = self._decode_stack(model, plan, stack, eos_ids, **settings)
            else:
                new = self._hf_generate(model, stack[0], eos_ids, **settings)  # stacks of one (_stacks)
        out = []
        for j, blk in enumerate(stack):
            groups = []
            for i in range(len(blk.prompts)):
                group = []
                for row in new[j * rows + i * n : j * rows + (i + 1) * n]:
                    kept, n_tok, truncated = split_completion(row, eos_ids, max_tokens)
                    group.append(Completion(tok.decode(kept, skip_special_tokens=True), n_tok, truncated))
                groups.append(group)
            out.append(groups)
        return out

    @torch.inference_mode()
    def generate_jobs(self, jobs: Sequence[GenJob], *, n: int, temperature: float, top_p: float,
                      max_tokens: int) -> list[list[list[Completion]]]:
        """Each job's completions as its own generate call would give them (same seeds and random streams; logits equal
        up to float rounding, since batch shapes differ; identical completions on the lab checkpoints, tested): a
        job's prompts go in batches of batch_size // n, batch b sampled from seed batch_seed(job seed, b); batches of
        different jobs with the same prompts share forward passes."""
        self._require()
        per_batch = max(1, self.batch_size // max(1, n))
        blocks = [_Block(j, tuple(job.prompts[s : s + per_batch]), job.adapter, batch_seed(job.seed, b))
                  for j, job in enumerate(jobs) for b, s in enumerate(range(0, len(job.prompts), per_batch))]
        done: dict[int, list[list[Completion]]] = {}
        for stack in self._stacks(blocks, n):
            results = self._run_stack(stack, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
            for blk, res in zip(stack, results):
                done[id(blk)] = res
        out: list[list[list[Completion]]] = [[] for _ in jobs]
        for blk in blocks:
            out[blk.job] += done[id(blk)]
        return out

    def generate(self, prompts: list[str], *, adapter: Path | None, n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int) -> list[list[Completion]]:
        """n completions per prompt; left-padded batches, one torch seed per batch."""
        job = GenJob(tuple(prompts), None if adapter is None else Path(adapter), int(seed))
        return self.generate_jobs([job], n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)[0]

    def close(self) -> None:
        """Drop the model, read adapters and caches (a full gc and cache flush only on CUDA, where memory waits
        for them; on CPU a gc.collect costs ~0.25 s per call and frees nothing reference counting does not)."""
        self.model = self._merged_copy = self.tokenizer = None
        self._loras.clear()
        self._pristine.clear()
        self._encoded.clear()
        self._rendered.clear()
        self.base = None
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
