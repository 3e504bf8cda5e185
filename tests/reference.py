"""Ground-truth helpers shared by the generation tests: random LoRA adapters and fresh-model greedy tokens."""
from __future__ import annotations

from pathlib import Path


def save_random_lora(base: Path, folder: Path, *, seed: int, r: int, target_modules: list[str],
                     scale: float) -> Path:
    """A PEFT LoRA of `base` with random non-zero lora_B (N(0, scale^2)), saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules,
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def fresh_greedy_tokens(base: Path, adapter: Path | None, prompts: list[str], *, max_new_tokens: int,
                        min_new_tokens: int = 0) -> list[list[int]]:
    """Reference: a fresh transformers (+ peft) model, one prompt at a time (no padding), greedy token ids."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            seq = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens,
                                 min_new_tokens=min_new_tokens, pad_token_id=tok.eos_token_id,
                                 eos_token_id=tok.eos_token_id)
        out.append(seq[0, ids["input_ids"].shape[1]:].tolist())
    return out


def vllm_forced_tokens(gen, adapter: Path | None, prompts: list[str], length: int) -> list[list[int]]:
    """vLLM greedy (a VLLMGenerator's engine) with min_tokens = max_tokens (EOS may be the true argmax: ignore_eos
    would not match HF)."""
    import vllm

    params = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=length, min_tokens=length)
    outs = gen.llm.generate([gen._token_prompt(p) for p in prompts], params,
                            lora_request=gen._lora_request(adapter), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]
