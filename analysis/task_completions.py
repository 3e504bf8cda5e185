"""The completions a task-KL probe scores: a checkpoint's stored eval samples where they fit, else fresh samples.

RL's Razor's task KL is E_{x ~ task, y ~ pi_t(.|x)} [log pi_t(y|x) - log pi_0(y|x)]; `eval` has often sampled exactly
such y already. Rules for reusing them (each function names the rule it applies):
  K1 only samples drawn from the checkpoint's own distribution: temperature 1 and top_p 1 (any other setting
     samples another distribution, and the KL on it is not the paper's).
  K2 only a benchmark whose problems are the probe's prompts: the probe's first L prompts equal the benchmark's first
     L questions (or their rendered prompts), in order. The completions are scored after the benchmark's own prompt,
     the text they were sampled after.
  K3 only when the stored samples cover all L prompts (L: the probe's --limit, else its whole file); every stored
     sample of those problems counts, and the problem is the bootstrap's resampling unit.
  K4 of several fitting samplings, the one with the most samples per problem, then the longest completions.
  K5 otherwise the probe samples its own completions (distribution_probes.task_kl); the table's `source` column says which:
     `eval:<benchmark>/<sampling label>` or `sampled`.
  K6 a reused completion is scored on its first `cap` tokens at most (the probe's task_max_tokens, the sampled path's
     own cap), so both paths measure the same thing and a 32k-token reasoning trace never needs its whole logits.
Completions are stored as text: they are tokenized again (the EOS appended where the sample was not cut off), so a
reused completion's tokens can differ from the sampled ones where a tokenizer does not round-trip its own output, or
where the generator decoded with skip_special_tokens and dropped one inside it; completion_rows logs how many
lengths differ from the stored n_tokens. K2 also requires the stored gold answers to equal the benchmark's, so that a
file that merely shares a benchmark's name is not taken for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tina_probe.errors import TinaError
from tina_probe.store import Store, read_parquet_file, stable_key

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["checkpoint", "benchmark", "sampling", "problem_id", "sample_idx", "completion", "truncated",
                  "temperature", "top_p", "max_tokens", "n_samples", "answer", "n_tokens"]


@dataclass(frozen=True)
class TaskCompletions:
    """Completions to score, one entry per completion; `problems` are the clusters of the bootstrap."""

    source: str
    prompts: tuple[str, ...]  # the text each completion was sampled after (before the chat template)
    texts: tuple[str, ...]
    ended: tuple[bool, ...]  # True: the model ended it (its EOS is scored too); False: cut off at max_tokens
    problems: tuple[str, ...]
    n_tokens: tuple[int, ...] = ()  # as the generator counted them (EOS included): a check on re-tokenization

    @property
    def fingerprint(self) -> str:
        """What the scores depend on (part of the resume key): a re-run eval gives other completions."""
        return stable_key("task-completions", self.source, self.prompts, self.texts, self.ended)


def read_eval_samples(store: Store, checkpoints: list[str] | None = None) -> pd.DataFrame:
    """The store's samples rows that rule K1 admits, of the given checkpoints only (read filtered: a store of long
    completions need not fit in memory whole); empty when the store has none."""
    path = store.table_path("samples")
    if not path.is_file():
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    if not set(SAMPLE_COLUMNS) <= have:
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    filters = [("temperature", "==", 1.0), ("top_p", "==", 1.0)]  # K1
    if checkpoints is not None:
        filters.append(("checkpoint", "in", sorted(set(map(str, checkpoints)))))
    return read_parquet_file(path, columns=SAMPLE_COLUMNS, filters=filters)


def _benchmark_problems(name: str, cache: dict, probe_file: Path | None = None):
    """A benchmark's problems by the name the samples table holds: a registered name, or the probe's own file when
    the benchmark was that file (named by its stem); None when it cannot be loaded here."""
    if name not in cache:
        from tina_probe.benchmarks import load_benchmark

        source = str(probe_file) if probe_file is not None and Path(probe_file).stem == name else name
        try:
            cache[name] = load_benchmark(source).problems
        except (TinaError, OSError, ValueError) as exc:
            log.info("task KL: benchmark %s not loadable for reuse (%s)", name, exc)
            cache[name] = None
    return cache[name]


def stored_completions(samples: pd.DataFrame, checkpoint: str, prompts: list[str], cache: dict,
                       probe_file: Path | None = None) -> TaskCompletions | None:
    """The checkpoint's stored eval completions for these probe prompts (rules K1-K4), else None (K5); `cache`
    holds the benchmarks' problems by name across calls."""
    mine = samples[samples["checkpoint"] == str(checkpoint)]
    if mine.empty:
        return None
    fits = []
    for (bench, sampling), rows in mine.groupby(["benchmark", "sampling"], sort=True):
        problems = _benchmark_problems(str(bench), cache, probe_file)
        if problems is None or len(problems) < len(prompts):
            continue
        head = problems[: len(prompts)]
        if any(p not in (q.question, q.prompt) for p, q in zip(prompts, head)):  # K2
            continue
        wanted = [str(q.id) for q in head]
        rows = rows.drop_duplicates(["problem_id", "sample_idx"])  # a shared base is stored once per run
        rows = rows[rows["problem_id"].astype(str).isin(wanted)]
        if rows["problem_id"].astype(str).nunique() < len(wanted):  # K3
            continue
        gold = {str(q.id): str(q.answer) for q in head}
        if any(str(a) != gold[str(i)] for i, a in zip(rows["problem_id"], rows["answer"])):  # K2: the same problems
            continue
        n = int(rows.groupby("problem_id").size().min())
        fits.append((n, int(rows["max_tokens"].max()), str(bench), str(sampling), rows, head))
    if not fits:
        return None
    n, _, bench, sampling, rows, head = sorted(fits, key=lambda f: (-f[0], -f[1], f[2], f[3]))[0]  # K4
    order = {str(q.id): i for i, q in enumerate(head)}
    prompt_of = {str(q.id): q.prompt for q in head}
    rows = rows.assign(_order=rows["problem_id"].astype(str).map(order)).sort_values(["_order", "sample_idx"])
    ids = [str(p) for p in rows["problem_id"]]
    return TaskCompletions(
        source=f"eval:{bench}/{sampling}", prompts=tuple(prompt_of[i] for i in ids),
        texts=tuple(str(t) for t in rows["completion"]), ended=tuple(not bool(t) for t in rows["truncated"]),
        problems=tuple(ids), n_tokens=tuple(int(n) for n in rows["n_tokens"]))


def completion_rows(tokenizer, stored: TaskCompletions, render, cap: int
                    ) -> tuple[list[list[int]], list[int], list[str]]:
    """(token rows prompt + completion, prompt lengths, cluster per row) of stored completions, tokenized as the
    generator tokenizes a rendered prompt, each completion cut to `cap` tokens (rule K6);
    `render(tokenizer, prompt)` -> (text, add_special_tokens)."""
    eos = tokenizer.eos_token_id
    rows, prompt_lens, clusters, differ = [], [], [], 0
    counted = stored.n_tokens or (None,) * len(stored.texts)
    rendered_of: dict = {}
    for prompt, text, ended, problem, n in zip(stored.prompts, stored.texts, stored.ended, stored.problems, counted):
        if prompt not in rendered_of:
            rendered, add_special = render(tokenizer, prompt)
            rendered_of[prompt] = tokenizer(rendered, add_special_tokens=add_special, verbose=False)["input_ids"]
        p_ids = rendered_of[prompt]
        c_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if ended and eos is not None:
            c_ids = [*c_ids, int(eos)]
        differ += n is not None and len(c_ids) != n
        c_ids = c_ids[:cap]
        if not c_ids:
            continue
        rows.append([*p_ids, *c_ids])
        prompt_lens.append(len(p_ids))
        clusters.append(problem)
    if differ:
        log.warning("task KL (%s): %d of %d stored completions re-tokenize to another length than generated",
                    stored.source, differ, len(stored.texts))
    return rows, prompt_lens, clusters


def limited_prompts(path: Path, limit: int | None) -> list[str]:
    """The probe's prompts as task_kl reads them (its first `limit`)."""
    from analysis.retention_probes import read_prompts

    prompts = read_prompts(path)
    return prompts[:limit] if limit is not None else prompts
