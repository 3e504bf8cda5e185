"""Retention probe names -> checked, runnable probe specs (lm-eval tasks over local files or the hub, KL/perplexity).

Every problem a user can cause (unknown name, unreadable or invalid task YAML, missing data file, an
unreachable hub) is found here, before any model is loaded, and raised as one TinaError.

Spec strings: `NAME` (a shipped probe), `NAME=FILE` (the same probe over another file), or a path to an
lm-eval task YAML. lm-eval reads relative `data_files` against the working directory, so every task is
rendered into a small YAML of its own (`include:` of the original plus absolute data paths) in a work folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from tina_probe.errors import TinaError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
RETENTION_DIR = DATA_DIR / "retention"
FORGETTING_FILE = "forgetting.yaml"

# the lab organism's default probes: facts recall and recognition, KL / perplexity on its reference text,
# and the forward KL on the RL task's own prompts (RL's Razor)
LAB_PROBES = ("lab_facts_gen", "lab_facts_mc", "kl_general", "ppl_general", "kl_task")
# distribution probes: name -> (family, default data file relative to data/)
DISTRIBUTION = {
    "kl_general": ("kl_ref", "lab/general.txt"),
    "ppl_general": ("ppl_ref", "lab/general.txt"),
    "kl_task": ("kl_task", "lab/probe.jsonl"),
    # the real task's held-out prompts as training renders them (question + the boxed instruction)
    "kl_task_real": ("kl_task", "real/probe.jsonl"),
    # real English text for real models (data/retention/real/SOURCE.md): 40 GSM8K test solutions
    "kl_real": ("kl_ref", "retention/real/gsm8k_text.txt"),
    "ppl_real": ("ppl_ref", "retention/real/gsm8k_text.txt"),
}
# a real model's offline probes: multiple choice on 100 MMLU-STEM questions (letters, and the cloze form that
# small models answer above chance), KL to the base and perplexity on real text
REAL_PROBES = ("real_mmlu_stem", "real_mmlu_stem_cloze", "kl_real", "ppl_real")
PROMPT_FIELDS = ("prompt", "question", "problem", "input")  # "prompt" first: a real task's rendered prompt
_LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow"}
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Probe:
    """One checked probe: its family and what it reads.

    family: "lmeval" (an lm-eval task), "kl_ref" / "ppl_ref" (KL to the base / perplexity on a reference
    text), "kl_task" (KL(ckpt || base) on completions the checkpoint samples for the RL task's prompts)."""

    name: str
    family: str
    data: Path | None = None  # local data file, when there is one
    task: str | None = None  # lm-eval task (or group) name
    include_path: Path | None = None  # folder lm-eval's TaskManager indexes to find `task`
    fingerprint: str = ""  # hash of what the results depend on (task YAML, data file), for resume keys

    @property
    def key(self) -> str:
        """The probe's identity in resume keys."""
        return f"{self.name}|{self.family}|{self.data}|{self.task}|{self.fingerprint}"


# ----------------------------------------------------------------------------- small readers


def _sha(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    """A short content hash of a file (data files change results; their names alone do not)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class _TaskLoader(yaml.SafeLoader):
    """A safe YAML loader that reads lm-eval's `!function` tags as plain strings (for checking only)."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(path: Path) -> dict:
    """An lm-eval task YAML as a dict, or a TinaError naming the file and what is wrong."""
    try:
        cfg = yaml.load(Path(path).read_text(), Loader=_TaskLoader)  # noqa: S506 (a SafeLoader subclass)
    except OSError as exc:
        raise TinaError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise TinaError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(cfg, dict):
        raise TinaError(f"{path}: expected a YAML mapping (an lm-eval task config)")
    if not isinstance(cfg.get("task"), str) or not cfg["task"]:
        raise TinaError(f"{path}: no `task` name (an lm-eval task config needs one)")
    if cfg.get("output_type") not in {"generate_until", "multiple_choice", "loglikelihood",
                                      "loglikelihood_rolling"}:
        raise TinaError(f"{path}: output_type {cfg.get('output_type')!r} is not an lm-eval output type")
    if not cfg.get("dataset_path"):
        raise TinaError(f"{path}: no dataset_path")
    return cfg


def read_forgetting(folder: Path | None = None) -> dict[str, dict]:
    """The forgetting-benchmark registry (data/retention/forgetting.yaml): probe name -> built-in task entry."""
    path = Path(folder or RETENTION_DIR) / FORGETTING_FILE
    if not path.is_file():
        return {}
    try:
        reg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TinaError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(reg, dict) or not all(isinstance(v, dict) and "task" in v for v in reg.values()):
        raise TinaError(f"{path}: expected `name: {{task: ..., tasks_dir: ..., dataset: ...}}` entries")
    return reg


def available_probes(folder: Path | None = None) -> list[str]:
    """Every probe name that resolves without a file argument or with one (sorted)."""
    folder = Path(folder or RETENTION_DIR)
    names = {p.stem for p in folder.glob("*.yaml") if p.name != FORGETTING_FILE}
    return sorted(names | set(DISTRIBUTION) | set(read_forgetting(folder)))


def _normal(name: str) -> str:
    """A probe name with '-' read as '_' (task file paths stay as they are)."""
    return name if name.endswith((".yaml", ".yml")) else name.replace("-", "_")


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """`NAME` or `NAME=FILE` -> (name, file or None); names are matched with '-' read as '_'."""
    spec = str(spec).strip()
    if not spec:
        raise TinaError("--probes: empty probe name")
    if "=" in spec:
        name, file = spec.split("=", 1)
        if not file.strip():
            raise TinaError(f"{spec}: expected NAME=FILE")
        return _normal(name.strip()), Path(file.strip()).expanduser()
    return _normal(spec), None


# ----------------------------------------------------------------------------- the hub


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub's host does not answer within `timeout` s."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def dataset_cached(dataset: str) -> bool:
    """Whether a datasets id was downloaded before (hub cache or datasets cache), so offline mode can read it."""
    org_name = dataset.replace("/", "--")
    roots = []
    try:
        from huggingface_hub import constants

        roots.append(Path(constants.HF_HUB_CACHE) / f"datasets--{org_name}")
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    ds_cache = os.environ.get("HF_DATASETS_CACHE") or str(Path(os.environ.get("HF_HOME", Path.home() / ".cache"
                                                                                           / "huggingface"))
                                                          / "datasets")
    roots.append(Path(ds_cache) / dataset.replace("/", "___"))
    return any(r.is_dir() and any(r.iterdir()) for r in roots)


def require_hub(name: str, dataset: str) -> None:
    """Raise a TinaError before a long run when the probe's hub dataset cannot be read."""
    offline = any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline and dataset_cached(dataset):
        return
    if not offline and hub_reachable():
        return
    raise TinaError(f"{name}: cannot reach the hub (lm-eval reads the dataset {dataset}); "
                    f"pass a local file: --probes {name}=FILE")


# ----------------------------------------------------------------------------- lm-eval tasks


def _resolve_data(raw: str, anchors: list[Path]) -> Path | None:
    """An existing absolute path for a data file named relative to one of the anchors (or absolute)."""
    p = Path(raw).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for anchor in anchors:
        if (anchor / p).is_file():
            return (anchor / p).resolve()
    return None


def _scored_split(cfg: dict) -> str:
    """The split lm-eval scores: test_split, else validation_split."""
    return str(cfg.get("test_split") or cfg.get("validation_split") or "test")


def _write_rendered(workdir: Path, probe: str, rendered: dict) -> Path:
    """Write one rendered task YAML into a folder of the probe's own (TaskManager indexes the whole folder)."""
    folder = Path(workdir) / probe
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rendered['task']}.yaml").write_text(yaml.safe_dump(rendered, sort_keys=False))
    return folder


def check_task(name: str, folder: Path, task: str, source: Path) -> None:
    """Build the task with lm-eval (reads its local data) so a config lm-eval rejects fails before any work."""
    from lm_eval.tasks import TaskManager

    try:
        loaded = TaskManager(include_defaults=False, include_path=str(folder)).load([task])
    except Exception as exc:  # lm-eval raises KeyError/ValueError/TypeError/datasets errors for bad configs
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise TinaError(f"{source}: lm-eval cannot build task {task!r} ({msg[:300]})") from None
    if not loaded["tasks"]:
        raise TinaError(f"{source}: lm-eval built no task for {task!r}")
    for built in loaded["tasks"].values():  # render the first document: bad templates and fields show here
        try:
            doc = next(iter(built.eval_docs), None)
            if doc is None:
                raise ValueError("no documents")
            built.doc_to_text(doc)
            built.doc_to_target(doc)
            if built.OUTPUT_TYPE == "multiple_choice":
                built.doc_to_choice(doc)
        except Exception as exc:  # jinja / KeyError / TypeError from the task's templates
            msg = " ".join(str(exc).split()) or type(exc).__name__
            raise TinaError(f"{source}: lm-eval cannot read task {task!r}'s first document ({msg[:300]})") from None


def yaml_probe(name: str, yaml_path: Path, data: Path | None, workdir: Path, *, check: bool = True) -> Probe:
    """A probe from an lm-eval task YAML: local data paths made absolute, or the hub dataset checked."""
    yaml_path = Path(yaml_path).resolve()
    cfg = read_task_yaml(yaml_path)
    task = cfg["task"]
    rendered: dict = {"include": str(yaml_path), "task": task}
    fingerprint = [yaml_path.read_bytes()]
    anchors = [yaml_path.parent, DATA_DIR, Path.cwd()]
    if str(cfg["dataset_path"]) in _LOCAL_LOADERS:
        kwargs = dict(cfg.get("dataset_kwargs") or {})
        files = kwargs.get("data_files")
        if data is not None:
            files = {_scored_split(cfg): str(data)}
        if files is None or (isinstance(files, dict) and not any(files.values())):
            raise TinaError(f"{name}: needs a data file; pass {name}=FILE")
        if isinstance(files, (str, list)):
            files = {_scored_split(cfg): files}
        absolute = {}
        for split, raw in files.items():
            paths = raw if isinstance(raw, list) else [raw]
            found = []
            for one in paths:
                hit = _resolve_data(str(one), anchors)
                if hit is None:
                    raise TinaError(f"{one}: data file of probe {name} not found")
                found.append(str(hit))
                fingerprint.append(_file_sha(hit).encode())
            absolute[split] = found if isinstance(raw, list) else found[0]
        kwargs["data_files"] = absolute
        rendered["dataset_kwargs"] = kwargs
        first = next(iter(absolute.values()))
        data = Path(first[0] if isinstance(first, list) else first)
    else:
        if data is not None:
            raise TinaError(f"{name}={data}: this task reads the hub dataset {cfg['dataset_path']}, not a file")
        require_hub(name, str(cfg["dataset_path"]))
        check = False  # building it would download the dataset
    folder = _write_rendered(workdir, name, rendered)
    if check:
        check_task(name, folder, task, yaml_path)
    return Probe(name=name, family="lmeval", data=data, task=task, include_path=folder,
                 fingerprint=_sha(*fingerprint))


def _builtin_yaml(entry: dict, name: str) -> Path:
    """The YAML file of an lm-eval built-in task, found by indexing only its folder."""
    import lm_eval.tasks as tasks_pkg
    from lm_eval.tasks import TaskManager

    folder = Path(tasks_pkg.__file__).parent / str(entry.get("tasks_dir", entry["task"]))
    hit = TaskManager(include_defaults=False, include_path=str(folder)).task_index.get(entry["task"])
    if hit is None or hit.yaml_path is None:
        raise TinaError(f"{name}: lm-eval {_lm_eval_version()} has no built-in task {entry['task']!r} in {folder}")
    return Path(hit.yaml_path)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def forgetting_probe(name: str, entry: dict, data: Path | None, workdir: Path, folder: Path) -> Probe:
    """A forgetting benchmark: lm-eval's built-in task over the hub, or the same task over a local file."""
    import lm_eval.tasks as tasks_pkg

    if data is None:
        require_hub(name, str(entry.get("dataset", entry["task"])))
        tasks_dir = Path(tasks_pkg.__file__).parent / str(entry.get("tasks_dir", entry["task"]))
        return Probe(name=name, family="lmeval", task=str(entry["task"]), include_path=tasks_dir,
                     fingerprint=_sha(f"{entry['task']}@lm-eval {_lm_eval_version()}".encode()))
    if entry.get("local"):
        local = folder / f"{entry['local']}.yaml"
        if not local.is_file():
            raise TinaError(f"{local}: task file of probe {name} missing")
        return _renamed(yaml_probe(name, local, data, workdir), name)
    # the built-in config with its hub dataset swapped for the local file (same row layout)
    path = _resolve_data(str(data), [Path.cwd()])
    if path is None:
        raise TinaError(f"{data}: data file of probe {name} not found")
    task = f"{entry['task']}_local"
    # the file is the only split: scored as "test", no train/validation/few-shot splits to look for
    rendered = {"include": str(_builtin_yaml(entry, name)), "task": task, "dataset_path": "json",
                "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(path)}},
                "test_split": "test", "validation_split": None, "training_split": None, "fewshot_split": None}
    out = _write_rendered(workdir, name, rendered)
    check_task(name, out, task, path)
    return Probe(name=name, family="lmeval", data=path, task=task, include_path=out,
                 fingerprint=_sha(task.encode(), _file_sha(path).encode(), _lm_eval_version().encode()))


def _renamed(probe: Probe, name: str) -> Probe:
    """The same probe under another table name."""
    return Probe(name=name, family=probe.family, data=probe.data, task=probe.task,
                 include_path=probe.include_path, fingerprint=probe.fingerprint)


# ----------------------------------------------------------------------------- distribution probes


def read_prompts(path: Path) -> list[str]:
    """The prompts of a JSONL file (first present field of PROMPT_FIELDS per row), or a TinaError."""
    prompts = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TinaError(f"{path}: unreadable ({exc})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise TinaError(f"{path}: line {i} is not JSON") from None
        field = next((f for f in PROMPT_FIELDS if isinstance(row, dict) and isinstance(row.get(f), str)), None)
        if field is None:
            raise TinaError(f"{path}: line {i} has none of the prompt fields {', '.join(PROMPT_FIELDS)}")
        prompts.append(row[field])
    if not prompts:
        raise TinaError(f"{path}: no prompts")
    return prompts


def distribution_probe(name: str, data: Path | None) -> Probe:
    """A KL / perplexity probe over its default lab file or the given one."""
    family, default = DISTRIBUTION[name]
    path = Path(data) if data is not None else DATA_DIR / default
    hit = _resolve_data(str(path), [Path.cwd()])
    if hit is None:
        raise TinaError(f"{path}: data file of probe {name} not found")
    if family == "kl_task":
        read_prompts(hit)
    else:
        try:
            text = hit.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TinaError(f"{hit}: not a readable text file ({exc})") from None
        if not text.strip():
            raise TinaError(f"{hit}: empty reference text")
    return Probe(name=name, family=family, data=hit, fingerprint=_file_sha(hit))


# ----------------------------------------------------------------------------- resolution


def resolve_probe(spec: str, workdir: Path, folder: Path | None = None) -> Probe:
    """One spec string -> a checked Probe (see the module docstring for the forms)."""
    folder = Path(folder or RETENTION_DIR)
    name, data = parse_spec(spec)
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if not path.is_file():
            raise TinaError(f"{path}: no such task file")
        cfg_name = read_task_yaml(path)["task"]
        return yaml_probe(cfg_name, path, data, workdir)
    if name in DISTRIBUTION:
        return distribution_probe(name, data)
    forgetting = read_forgetting(folder)
    if name in forgetting:
        return forgetting_probe(name, forgetting[name], data, workdir, folder)
    own = folder / f"{name}.yaml"
    if own.is_file():
        return yaml_probe(name, own, data, workdir)
    raise TinaError(f"{name}: unknown probe (known: {', '.join(available_probes(folder))}; "
                    f"or a path to an lm-eval task YAML)")


def resolve_probes(specs: list[str] | None, workdir: Path, folder: Path | None = None) -> list[Probe]:
    """Spec strings (None: the lab's defaults) -> checked Probes, in order, without repeats; errors first."""
    specs = list(specs) if specs else list(LAB_PROBES)
    probes: list[Probe] = []
    for spec in specs:
        probe = resolve_probe(spec, Path(workdir), folder)
        if any(p.name == probe.name for p in probes):
            raise TinaError(f"{probe.name}: probe given twice")
        probes.append(probe)
    return probes
