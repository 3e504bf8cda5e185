"""GGUF file -> an ordinary Hugging Face model folder (float32 safetensors, tokenizer, chat template).

transformers reads and dequantizes GGUF itself (`from_pretrained(..., gguf_file=...)`, with the `gguf` package),
but refuses to `save_pretrained` such a model; so the weights are moved into a fresh model built from the same
config (without its `quantization_config`) and that one is saved. The folder is written beside its destination,
checked by loading it back without gguf, and renamed into place: a failure leaves nothing half written.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tina_probe.errors import TinaError

GGUF_MAGIC = b"GGUF"
MARKER = "tina_import.json"  # the conversion's facts and every file's size; its presence marks a complete folder


@dataclass(frozen=True)
class GGUFFacts:
    """What the GGUF header says, read before any weight is: architecture, name, tensor count, quantization."""

    path: str
    architecture: str
    name: str
    n_tensors: int
    file_type: str
    size_bytes: int


@dataclass(frozen=True)
class ConversionFacts:
    """What a conversion produced and measured (written to the folder's tina_import.json and its model card)."""

    gguf: GGUFFacts
    model_class: str
    n_params: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    has_chat_template: bool
    default_system_prompt: str | None
    load_seconds: float
    save_seconds: float
    transformers_version: str
    gguf_version: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_gguf_header(path: Path) -> GGUFFacts:
    """The GGUF's architecture and tensor table, checked: a non-GGUF, a truncated file (a tensor's data past the end)
    or an architecture transformers cannot load raise one TinaError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TinaError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise TinaError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TinaError(f"{path}: reading GGUF needs the `gguf` package (make setup installs it)") from None
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError / IndexError / struct errors on a cut-off header
        raise TinaError(f"{path}: unreadable GGUF header, truncated or corrupt ({type(exc).__name__})") from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise TinaError(f"{path}: truncated GGUF: its tensors need {end} bytes, the file has {size}")

    def field(key: str) -> str:
        f = reader.fields.get(key)
        if f is None:
            return ""
        value = f.parts[f.data[0]]
        return bytes(value).decode("utf-8", "replace") if value.dtype.kind == "u" and value.itemsize == 1 \
            else str(value.tolist()[0] if len(value) else "")

    arch = field("general.architecture")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise TinaError(f"{path}: GGUF architecture {arch or '(none)'!r} cannot be loaded by transformers "
                        f"(it loads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return GGUFFacts(str(path), arch, field("general.name"), len(reader.tensors), "/".join(types), size)


def default_system_prompt(tokenizer) -> str | None:
    """The system prompt the chat template adds when the conversation has none (None when it adds none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00USER\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=False)
    bare = tokenizer.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": marker}],
                                         tokenize=False, add_generation_prompt=False)
    if text == bare:
        return None
    # the template's own system turn: what precedes the user turn, less the empty-system rendering's frame
    head, bare_head = text.split(marker)[0], bare.split(marker)[0]
    common = 0
    while common < min(len(head), len(bare_head)) and head[common] == bare_head[common]:
        common += 1
    extra = head[common:len(head) - (len(bare_head) - common)]
    return extra.strip() or None


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied weight once


def convert_gguf(gguf_path: Path, out_dir: Path, *, overwrite: bool = False) -> ConversionFacts:
    """Convert one GGUF into `out_dir` (float32 safetensors + tokenizer + chat template) atomically."""
    import torch
    import gguf as gguf_pkg
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise TinaError(f"{out_dir}: already exists (the conversion never writes over a folder; remove it first)")
    header = read_gguf_header(gguf_path)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # transformers raises ValueError / KeyError / RuntimeError for what it cannot map
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TinaError(f"{gguf_path}: transformers cannot load this GGUF ({msg})") from None
    load_s = time.time() - t0
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model is "not serializable"; the fresh copy is plain float32
    t1 = time.time()
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise TinaError(f"{gguf_path}: converted weights do not fit {type(fresh).__name__} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tied:
        fresh.tie_weights()
    del loaded
    fresh.generation_config.max_new_tokens = None  # a saved max_new_tokens would override lm-eval's max_gen_toks
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_s = time.time() - t1
        cfg = fresh.config
        heads = cfg.num_attention_heads
        facts = ConversionFacts(
            gguf=header, model_class=type(fresh).__name__, n_params=_params(fresh),
            num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size, num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", heads),
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, vocab_size=cfg.vocab_size,
            tied_embeddings=tied, has_chat_template=bool(getattr(tok, "chat_template", None)),
            default_system_prompt=default_system_prompt(tok), load_seconds=round(load_s, 1),
            save_seconds=round(save_s, 1), transformers_version=transformers.__version__,
            gguf_version=gguf_pkg.__version__ if hasattr(gguf_pkg, "__version__") else _dist_version("gguf"),
        )
        check_loads(tmp)
        marker = facts.to_dict() | {"files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir())
                                              if f.is_file()}}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last: the folder is complete
        for f in tmp.iterdir():  # mkdtemp (and safetensors' own temp files) leave owner-only modes
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out_dir.exists():  # overwrite=True: the old folder goes only once the new one is complete
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return facts


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def check_loads(folder: Path) -> None:
    """Load a written folder back the ordinary way (safetensors, no gguf) and compare one forward with nothing
    missing; raises TinaError naming the folder when it does not load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
        ids = tok("2 + 3 =", return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = model(ids).logits
    except Exception as exc:
        raise TinaError(f"{folder}: the converted folder does not load back ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if not torch.isfinite(logits).all():
        raise TinaError(f"{folder}: the converted model gives non-finite logits")
