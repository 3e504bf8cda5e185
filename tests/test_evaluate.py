"""The evaluation sweep: tables and their columns, planted correctness, base reuse, resume, crash, shards."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tina_probe.errors import CheckpointError, TinaError
from tina_probe.evaluate import SAMPLE_KEY_COLS, run_eval, summary_frame
from tina_probe.generate.base import Completion
from tina_probe.generate.hf import HFGenerator

SAMPLES_COLS = {"run", "step", "kind", "benchmark", "problem_id", "sample_idx", "completion", "extracted_answer",
                "correct_strict", "correct_lenient", "think_closed", "boxed", "truncated", "n_tokens",
                "well_formatted", "answer_tag"}
PASSK_COLS = {"run", "step", "kind", "benchmark", "grading", "k", "n", "value", "ci_low", "ci_high"}
FORMAT_COLS = {"run", "step", "kind", "benchmark", "metric", "value", "ci_low", "ci_high"}
SETTINGS = dict(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=3, show=False)


class Counting:
    """Wraps a generator: counts generate calls and model loads; can fail after a number of calls."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after = inner, fail_after
        self.calls: list[Path | None] = []
        self.loads: list[str] = []

    def load_base(self, base, **kw):
        self.loads.append(str(base))
        return self.inner.load_base(base, **kw)

    def render(self, prompt):
        return self.inner.render(prompt)

    def generate(self, prompts, **kw):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(kw["adapter"])
        return self.inner.generate(prompts, **kw)

    def close(self):
        self.inner.close()


class Planted:
    """A fake generator with known answers: sample j of a problem is right iff j < right[model] (well formatted)."""

    def __init__(self, right: dict[str, int]):
        self.right, self.model = right, None

    def load_base(self, base, **kw):
        self.model = Path(base).name

    def render(self, prompt):
        return prompt

    def generate(self, prompts, *, adapter, n, temperature, top_p, max_tokens, seed):
        who = Path(adapter).name if adapter is not None else self.model
        out = []
        for p in prompts:
            gold = eval(p.rstrip("=?"))  # the lab fixture's questions are "a+b=?"
            group = []
            for j in range(n):
                ans = gold if j < self.right[who] else gold + 1
                group.append(Completion(f"<think>\n{p[:-1]}\n</think>\n\\boxed{{{ans}}}", 7 + j, False))
            out.append(group)
        return out

    def close(self):
        pass


def _runs(runs_dir):
    return [str(runs_dir / "lab-lora"), str(runs_dir / "lab-full")]


def test_sweep_on_tiny_qwen2(runs_dir, tmp_path, tiny_base):
    gen = Counting(HFGenerator(batch_size=16))
    tables = run_eval(_runs(runs_dir), out=tmp_path / "res", generator=gen, **SETTINGS)
    samples, passk, fmt = tables["samples"], tables["passk"], tables["format"]
    assert SAMPLES_COLS <= set(samples.columns)
    assert PASSK_COLS <= set(passk.columns) and FORMAT_COLS <= set(fmt.columns)
    for name in ("samples", "passk", "format"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "res" / f"{name}.parquet"), tables[name])
    # (run, step, kind): base of each run as step 0, 3 problems x 2 samples each
    got = samples.groupby(["run", "step", "kind"]).size().to_dict()
    assert got == {("lab-full", 0, "base"): 6, ("lab-full", 10, "full"): 6, ("lab-lora", 0, "base"): 6,
                   ("lab-lora", 10, "lora"): 6, ("lab-lora", 20, "lora"): 6}
    assert not samples.duplicated(SAMPLE_KEY_COLS).any()
    # the shared base was generated once and reused for both runs' step 0
    assert gen.calls.count(None) == 2  # base once + the full checkpoint (its own model, no adapter)
    assert gen.loads == [str(tiny_base.resolve()), str((runs_dir / "lab-full" / "checkpoint-10").resolve())]
    base_rows = [samples[(samples.run == r) & (samples.step == 0)].reset_index(drop=True) for r in
                 ("lab-lora", "lab-full")]
    pd.testing.assert_frame_equal(base_rows[0].drop(columns="run"), base_rows[1].drop(columns="run"))
    by_step = samples[samples.run == "lab-lora"].groupby("step")["completion"].apply(tuple)
    assert by_step[0] != by_step[10] != by_step[20], "each adapter changes the samples"
    assert samples["n_tokens"].between(1, 8).all()
    assert (~samples["truncated"] | (samples["n_tokens"] == 8)).all()  # truncated: hit max_tokens
    # passk rows: 5 groups x 2 gradings x k in {1, 2}
    assert len(passk) == 5 * 2 * 2 and set(passk["k"]) == {1, 2} and (passk["n"] == 2).all()


def test_resume_skips_done_units_and_crash_then_rerun_gives_same_tables(runs_dir, tmp_path):
    full_out, crash_out = tmp_path / "full", tmp_path / "crash"
    reference = run_eval(_runs(runs_dir), out=full_out, generator=Counting(HFGenerator()), **SETTINGS)
    again = Counting(HFGenerator())
    second = run_eval(_runs(runs_dir), out=full_out, generator=again, **SETTINGS)
    assert again.calls == [] and again.loads == []  # everything was done: no generation, no model load
    for name in reference:
        pd.testing.assert_frame_equal(second[name], reference[name])

    crashing = Counting(HFGenerator(), fail_after=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_eval(_runs(runs_dir), out=crash_out, generator=crashing, **SETTINGS)
    # the first generation (the base) survived, as the step-0 part of both runs
    assert len(list((crash_out / ".parts" / "samples").glob("*.parquet"))) == 2
    assert len(list((crash_out / ".parts" / "base_samples").glob("*.parquet"))) == 1
    assert not (crash_out / "samples.parquet").exists()
    resumed_gen = Counting(HFGenerator())
    resumed = run_eval(_runs(runs_dir), out=crash_out, generator=resumed_gen, **SETTINGS)
    assert len(resumed_gen.calls) == 3  # lora-10, lora-20, full-10: the base was not generated again
    for name in reference:
        pd.testing.assert_frame_equal(resumed[name], reference[name])
    assert not resumed["samples"].duplicated(SAMPLE_KEY_COLS).any()


def test_planted_correctness_gives_known_pass_at_k(runs_dir, tmp_path, tiny_base):
    gen = Planted({tiny_base.name: 0, "checkpoint-10": 1, "checkpoint-20": 2})
    tables = run_eval([str(runs_dir / "lab-lora")], out=tmp_path / "res", generator=gen, **SETTINGS)
    p = tables["passk"].set_index(["step", "grading", "k"])["value"]
    for grading in ("strict", "lenient"):
        assert p[(0, grading, 1)] == 0.0 and p[(10, grading, 1)] == 0.5 and p[(20, grading, 1)] == 1.0
        assert p[(10, grading, 2)] == 1.0 and p[(0, grading, 2)] == 0.0
    s = tables["samples"]
    assert s["well_formatted"].all() and (s["boxed"] == 1).all() and s["think_closed"].all()
    right = s[s.step == 10].sort_values(["problem_id", "sample_idx"])
    assert right["correct_strict"].tolist() == [True, False] * 3
    assert (right["extracted_answer"] == [a if c else str(int(a) + 1) for a, c in
                                          zip(right["answer"], right["correct_strict"])]).all()
    f = tables["format"].set_index(["step", "metric"])["value"]
    assert f[(10, "format_rate")] == 1.0 and f[(20, "mean_tokens")] == 7.5
    summary = summary_frame(tables, ["lab-lora"])
    assert summary.loc[summary.best, "step"].tolist() == [20]


def test_bad_benchmark_fails_before_any_generation(runs_dir, tmp_path):
    gen = Planted({})
    with pytest.raises(TinaError, match="nosuch: unknown benchmark"):
        run_eval(_runs(runs_dir), benchmarks=["nosuch"], out=tmp_path / "res", generator=gen, **SETTINGS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=?", "answer": "2"}\n{"question": "x"}\n')
    with pytest.raises(TinaError, match="bad.jsonl:2: missing field 'answer'"):
        run_eval(_runs(runs_dir), benchmarks=[str(bad)], out=tmp_path / "res", generator=gen, **SETTINGS)
    assert gen.model is None and not (tmp_path / "res").exists()


def test_shards_together_equal_one_sweep(runs_dir, tmp_path, tiny_base):
    right = {tiny_base.name: 1, "checkpoint-10": 1, "checkpoint-20": 2}
    one = run_eval(_runs(runs_dir), out=tmp_path / "one", generator=Planted(right), **SETTINGS)
    first = run_eval(_runs(runs_dir), out=tmp_path / "sh", shard=(0, 2), generator=Planted(right), **SETTINGS)
    assert 0 < len(first["samples"]) < len(one["samples"])  # consolidation uses only the parts present
    both = run_eval(_runs(runs_dir), out=tmp_path / "sh", shard=(1, 2), generator=Planted(right), **SETTINGS)
    for name in one:
        pd.testing.assert_frame_equal(both[name], one[name])


def test_per_run_parts_without_summary_then_one_summary_equal_one_sweep(runs_dir, tmp_path, tiny_base):
    """The lab study's split (lab/study.py per_run_eval_children): the base alone, then each run in shards, all with
    summary=False (samples parts only, no tables), then the whole call once: the same tables as one sweep, and the
    base generated once."""
    right = {tiny_base.name: 1, "checkpoint-10": 1, "checkpoint-20": 2}
    one = run_eval(_runs(runs_dir), out=tmp_path / "one", generator=Planted(right), **SETTINGS)
    store = tmp_path / "split"
    calls: list = []

    class Counting(Planted):
        def generate(self, prompts, *, adapter, **kw):
            calls.append(Path(adapter).name if adapter is not None else self.model)
            return super().generate(prompts, adapter=adapter, **kw)

    gen = Counting(right)
    assert run_eval(_runs(runs_dir)[:1], out=store, steps={0}, generator=gen, summary=False, **SETTINGS) == {}
    base_calls = len(calls)
    for run in _runs(runs_dir):
        for shard in ((0, 2), (1, 2)):
            assert run_eval([run], out=store, shard=shard, generator=gen, summary=False, **SETTINGS) == {}
    assert not (store / "passk.parquet").exists() and not (store / "samples.parquet").exists()
    assert base_calls and calls.count(tiny_base.name) == base_calls  # each run's step 0 copied, not generated again
    tables = run_eval(_runs(runs_dir), out=store, generator=gen, **SETTINGS)
    for name in one:
        pd.testing.assert_frame_equal(tables[name], one[name])


def test_steps_subset_and_explicit_benchmark(runs_dir, tmp_path, tiny_base, lab_data):
    gen = Planted({tiny_base.name: 0, "checkpoint-10": 1, "checkpoint-20": 2})
    tables = run_eval([str(runs_dir / "lab-lora")], benchmarks=[f"lab-test={lab_data}"], steps={0, 20},
                      limit=2, out=tmp_path / "res", generator=gen, **SETTINGS)
    s = tables["samples"]
    assert sorted(s["step"].unique()) == [0, 20] and set(s["benchmark"]) == {"lab-test"}
    assert s["problem_id"].nunique() == 2


def test_manifest_without_eval_benchmark(runs_dir, tmp_path):
    import json

    m = runs_dir / "lab-lora" / "tina_run.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "eval_benchmark": None}))
    with pytest.raises(TinaError, match="no eval_benchmark"):
        run_eval([str(runs_dir / "lab-lora")], out=tmp_path / "res", generator=Planted({}), **SETTINGS)


def test_batched_sweep_equals_unit_by_unit_sweep(runs_dir, tmp_path):
    """The HF generator batches a wave of units (base and adapters in shared forward passes); the tables equal a sweep
    that generates unit by unit through generate() (Counting hides generate_jobs), sampled settings included."""
    batched = HFGenerator(batch_size=64)
    one_by_one = Counting(HFGenerator(batch_size=64))
    assert not hasattr(one_by_one, "generate_jobs")
    a = run_eval(_runs(runs_dir), out=tmp_path / "batched", generator=batched, **SETTINGS)
    b = run_eval(_runs(runs_dir), out=tmp_path / "single", generator=one_by_one, **SETTINGS)
    assert len(one_by_one.calls) == 4  # base, lora-10, lora-20, full-10
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_waves_group_small_units_within_batch_size(runs_dir):
    from tina_probe.eval_generate import waves as _waves
    from tina_probe.eval_units import plan_units
    from tina_probe.generate.base import SamplingSettings
    from tina_probe.runs import discover_runs

    runs = discover_runs([str(runs_dir / "lab-lora")])
    from tina_probe.benchmarks import load_benchmark

    bench = load_benchmark(runs[0].manifest["eval_benchmark"])  # 3 problems
    units = plan_units(runs, {"lab-lora": [bench]}, SamplingSettings(n=2))  # 6 rows each
    assert [len(w) for w in _waves(units, SamplingSettings(n=2), batch_size=12)] == [2, 1]
    assert [len(w) for w in _waves(units, SamplingSettings(n=2), batch_size=4)] == [1, 1, 1]
    assert [len(w) for w in _waves(units, SamplingSettings(n=2), batch_size=12, batched=False)] == [1, 1, 1]


def test_unit_keys_come_from_discovery_without_touching_the_disk(runs_dir, monkeypatch):
    """Keys are built from the identity each Checkpoint carries: planning reads no file; a checkpoint whose
    recorded files differ gets another key in the same group, and a LoRA's key follows its base's files."""
    import dataclasses

    from tina_probe.benchmarks import load_benchmark
    from tina_probe.eval_units import plan_units
    from tina_probe.generate.base import SamplingSettings
    from tina_probe.runs import discover_runs
    from tina_probe.store import Store

    runs = discover_runs([str(runs_dir / "lab-lora")])
    benches = {"lab-lora": [load_benchmark(runs[0].manifest["eval_benchmark"])]}
    s = SamplingSettings(n=2)

    def no_disk(*a, **kw):
        raise AssertionError("planning touched the disk")

    with monkeypatch.context() as m:
        for name in ("stat", "iterdir", "is_dir", "exists", "is_file"):
            m.setattr(Path, name, no_disk)
        units = plan_units(runs, benches, s)
    assert len(units) == 3 and len({u.key for u in units}) == 3
    base, lora = runs[0].checkpoints[:2]
    resaved = dataclasses.replace(lora, files=(("adapter_model.safetensors", 1, 2),))
    new_base = dataclasses.replace(lora, base_files=(("model.safetensors", 1, 2),))
    keys = [plan_units([dataclasses.replace(runs[0], checkpoints=(c,))], benches, s)[0].key
            for c in (lora, resaved, new_base)]
    assert len(set(keys)) == 3 and len({Store.key_prefix(k) for k in keys}) == 1


def test_other_settings_under_the_same_names_replace_rather_than_pool(runs_dir, tmp_path, tiny_base):
    """Another --limit, another backend or a checkpoint saved again under the same path: the tables show what was
    asked for last, never a mix; the replaced results are kept aside and come back without generating again."""
    right = {tiny_base.name: 1, "checkpoint-10": 1, "checkpoint-20": 2}
    out, run = tmp_path / "res", [str(runs_dir / "lab-lora")]
    three = run_eval(run, out=out, generator=Planted(right), **SETTINGS)
    two = run_eval(run, out=out, limit=2, generator=Planted(right), **SETTINGS)
    assert two["samples"].groupby("step")["problem_id"].nunique().eq(2).all()
    assert (two["passk"]["n_problems"] == 2).all()
    fresh_two = run_eval(run, out=tmp_path / "fresh", limit=2, generator=Planted(right), **SETTINGS)
    for name in fresh_two:
        pd.testing.assert_frame_equal(two[name], fresh_two[name])
    back = Counting(Planted(right))
    again = run_eval(run, out=out, generator=back, **SETTINGS)
    assert back.calls == [] and back.loads == []  # the 3-problem parts came back from the shelf
    for name in three:
        pd.testing.assert_frame_equal(again[name], three[name])
    # another backend: its own samples (other random streams), not the stored ones
    other = run_eval(run, out=out, backend="vllm", generator=Planted({**right, "checkpoint-20": 0}), **SETTINGS)
    assert set(other["samples"]["backend"]) == {"vllm"}
    assert not other["samples"][other["samples"].step == 20]["correct_strict"].any()
    # a checkpoint replaced under the same path is generated again; the others are reused
    weights = runs_dir / "lab-lora" / "checkpoint-10" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    counted = Counting(Planted(right))
    run_eval(run, out=out, backend="vllm", generator=counted, **SETTINGS)
    assert [Path(a).name for a in counted.calls] == ["checkpoint-10"]


def test_a_checkpoint_that_fails_to_load_is_skipped_and_the_rest_goes_on(runs_dir, tmp_path, monkeypatch, caplog):
    """A broken adapter that discovery cannot see (the generator's CheckpointError): one warning naming it; the base
    and the other checkpoints are generated and stored, and results stored earlier for it are not shown as current;
    any other error (a bad gold answer, a crash) still stops the sweep."""
    import logging

    real = HFGenerator._lora

    def broken(self, adapter):
        if Path(adapter).name == "checkpoint-10":
            raise CheckpointError(f"{adapter}: cannot read adapter (simulated)")
        return real(self, adapter)

    monkeypatch.setattr(HFGenerator, "_lora", broken)
    with caplog.at_level(logging.WARNING):
        tables = run_eval([str(runs_dir / "lab-lora")], out=tmp_path / "res", generator=HFGenerator(), **SETTINGS)
    assert sorted(tables["samples"]["step"].unique()) == [0, 20]
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "checkpoint-10" in msgs[0] and "simulated" in msgs[0]
    # results of an earlier checkpoint-10 in the same store: shelved once it is saved again and cannot be loaded
    monkeypatch.setattr(HFGenerator, "_lora", real)
    out = tmp_path / "again"
    run_eval([str(runs_dir / "lab-lora")], out=out, generator=HFGenerator(), **SETTINGS)
    weights = runs_dir / "lab-lora" / "checkpoint-10" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    monkeypatch.setattr(HFGenerator, "_lora", broken)
    stale = run_eval([str(runs_dir / "lab-lora")], out=out, generator=HFGenerator(), **SETTINGS)
    assert sorted(stale["samples"]["step"].unique()) == [0, 20]

    def bad_grade(*a, **kw):
        raise TinaError("gold answer: empty")

    monkeypatch.setattr("tina_probe.eval_generate.grade_rows", bad_grade)
    with pytest.raises(TinaError, match="gold answer"):
        run_eval([str(runs_dir / "lab-lora")], out=tmp_path / "third", generator=HFGenerator(), **SETTINGS)


def test_a_choice_benchmark_is_graded_by_letters(runs_dir, tmp_path, tiny_base):
    """run_eval on a multiple-choice benchmark (choice_index golds): a completion ending `Answer: A` is right exactly
    where the gold letter is A (the grader reads the letter, not a boxed math answer)."""
    rows = [{"question": f"Pick {i}", "choices": ["w", "x", "y", "z"], "answer": i % 2, "id": f"q{i}"}
            for i in range(4)]
    bench = tmp_path / "mc.jsonl"
    bench.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))

    class SaysA(Planted):
        def generate(self, prompts, *, n, **kw):
            return [[Completion("<think>\nhm\n</think>\nAnswer: A", 5, False)] * n for _ in prompts]

    tables = run_eval([str(runs_dir / "lab-lora")], benchmarks=[f"mmlu-stem={bench}"], steps={0}, out=tmp_path / "r",
                      generator=SaysA({}), **SETTINGS)
    s = tables["samples"]
    assert set(s["answer"]) == {"A", "B"}
    assert (s["correct_strict"] == (s["answer"] == "A")).all() and (s["extracted_answer"] == "A").all()


def test_grade_parts_pool_and_a_store_of_another_format_stops_before_generating(runs_dir, tmp_path, tiny_base):
    """Parts of `tina-probe grade` (no group prefix) pool with eval's and are never shelved; a store whose format
    marker says another format stops eval with one line naming the command that rebuilds it, before any model load;
    a store from before the marker (format 1's layout) is stamped and used."""
    import json

    from tina_probe.store import FORMAT, FORMAT_FILE, Store

    right = {tiny_base.name: 1, "checkpoint-10": 1, "checkpoint-20": 2}
    out, run = tmp_path / "res", [str(runs_dir / "lab-lora")]
    first = run_eval(run, out=out, generator=Planted(right), **SETTINGS)
    marker = out / ".parts" / FORMAT_FILE
    assert json.loads(marker.read_text()) == {"format": FORMAT}
    external = first["samples"][first["samples"].step == 20].assign(run="dump", kind="external", sampling="external")
    Store(out).write_part("samples", "fedcba98765432100000", external)
    again = run_eval(run, out=out, generator=Planted(right), **SETTINGS)
    assert (again["samples"].run == "dump").sum() == len(external)
    pd.testing.assert_frame_equal(again["samples"][again["samples"].run != "dump"].reset_index(drop=True),
                                  first["samples"])
    marker.unlink()  # a store written before the marker: format 1, stamped again on the next part write
    run_eval(run, out=out, steps={0}, limit=1, generator=Planted(right), **SETTINGS)
    assert json.loads(marker.read_text()) == {"format": FORMAT}
    for found, says in ((FORMAT - 1, "older than .*rerun tina-probe eval / grade with a new --out"),
                        (FORMAT + 1, "newer tina-probe")):
        marker.write_text(json.dumps({"format": found}))
        gen = Planted(right)
        with pytest.raises(TinaError, match=f"{out}: results store of format {found}.*{says}"):
            run_eval(run, out=out, generator=gen, **SETTINGS)
        assert gen.model is None


def test_a_lora_on_a_tied_weight_is_never_merged_in_place(tiny_base, tmp_path):
    """Merging a LoRA on the tied lm_head would change the input embeddings too: such an adapter runs unmerged even
    with merge=True, and its completions equal peft's."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "tied")
    prompts = ["1+2=?", "3+4=?"]
    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=6, seed=0)
    texts = {}
    for merge in (None, True):
        gen = HFGenerator(merge=merge)
        gen.load_base(str(tiny_base))
        texts[merge] = [g[0].text for g in gen.generate(prompts, adapter=tmp_path / "tied", **greedy)]
        assert torch.equal(gen.model.lm_head.weight, gen.model.model.embed_tokens.weight)
    tok = AutoTokenizer.from_pretrained(str(tiny_base), padding_side="left")
    ref_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32), str(tmp_path / "tied")).eval()
    ref = []
    for p in prompts:
        enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = ref_model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        ids = out[0, enc["input_ids"].shape[1]:].tolist()
        ids = ids[: ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
        ref.append(tok.decode(ids, skip_special_tokens=True))
    assert texts[None] == texts[True] == ref


def _zero_b_copy(src: Path, dst: Path) -> Path:
    """A copy of an adapter folder with every lora_B set to zero (B A = 0: the base, unchanged)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v.zero_() if ".lora_B" in k else v for k, v in tensors.items()}, str(weights))
    return dst


def test_a_lora_identical_to_its_base_is_flagged_and_warned(runs_dir, tmp_path, caplog):
    """A zero-B adapter (checkpoint-30) gets identical_to_base 1.0 in the format table and one warning line naming it;
    the random adapters get 0.0; with greedy decoding (real tiny Qwen2) its completions also equal the base's. The
    other format rows are exactly format_table's, and passk/samples know nothing of the check."""
    import logging

    from tina_probe.passk import format_table

    lora = runs_dir / "lab-lora"
    _zero_b_copy(lora / "checkpoint-10", lora / "checkpoint-30")
    greedy = {**SETTINGS, "n": 1, "temperature": 0.0}
    with caplog.at_level(logging.WARNING):
        tables = run_eval([str(lora)], out=tmp_path / "res", generator=HFGenerator(), **greedy)
    fmt = tables["format"]
    same = fmt[fmt.metric == "identical_to_base"].set_index("step")
    assert same["value"].to_dict() == {10: 0.0, 20: 0.0, 30: 1.0}
    assert (same["kind"] == "lora").all() and same["ci_low"].isna().all() and same["ci_high"].isna().all()
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "checkpoint-30" in msgs[0] and "all zeros" in msgs[0]
    s = tables["samples"]
    by_step = s.sort_values(["problem_id", "sample_idx"]).groupby("step")["completion"].apply(tuple)
    assert by_step[30] == by_step[0] != by_step[10]  # the zero adapter generates the base's completions
    groups = ["run", "step", "kind", "benchmark", "sampling"]
    pd.testing.assert_frame_equal(fmt[fmt.metric != "identical_to_base"].reset_index(drop=True),
                                  format_table(s, group_cols=groups), check_dtype=False)
    assert "identical_to_base" not in set(tables["passk"].columns) | set(s.columns)
    # a rerun generates nothing, keeps the flags and warns again
    caplog.clear()
    again = Counting(HFGenerator())
    with caplog.at_level(logging.WARNING):
        second = run_eval([str(lora)], out=tmp_path / "res", generator=again, **greedy)
    assert again.calls == []
    pd.testing.assert_frame_equal(second["format"], fmt)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_greedy_completions_equal_to_the_base_are_flagged_only_when_greedy(runs_dir, tmp_path, tiny_base):
    """Planted completions: checkpoint-20 answers exactly as the base, checkpoint-10 does not. Under greedy decoding
    checkpoint-20 is identical_to_base; under sampling (T=1) equal samples prove nothing, so no flag; and a LoRA
    group without its base (steps without 0) is not flagged either."""
    right = {tiny_base.name: 1, "checkpoint-10": 0, "checkpoint-20": 1}
    run = [str(runs_dir / "lab-lora")]

    def flags(**kw):
        fmt = run_eval(run, generator=Planted(right), **{**SETTINGS, **kw})["format"]
        return fmt[fmt.metric == "identical_to_base"].set_index("step")["value"].to_dict()

    assert flags(out=tmp_path / "greedy", temperature=0.0) == {10: 0.0, 20: 1.0}
    assert flags(out=tmp_path / "sampled", temperature=1.0) == {10: 0.0, 20: 0.0}
    assert flags(out=tmp_path / "no-base", temperature=0.0, steps={10, 20}) == {10: 0.0, 20: 0.0}


def test_identical_to_base_by_hand():
    """The pure rule on hand-made rows: equal completions on every problem (greedy) or a zero adapter; a problem
    missing or one completion different is not identical."""
    from tina_probe.eval_identical import identical_to_base

    def rows(step, kind, texts, temperature=0.0):
        return pd.DataFrame({"run": "r", "step": step, "kind": kind, "benchmark": "b", "sampling": "greedy",
                             "temperature": temperature, "problem_id": [f"p{i}" for i in range(len(texts))],
                             "sample_idx": 0, "completion": texts})

    base = rows(0, "base", ["a", "b", "c"])
    samples = pd.concat([base, rows(1, "lora", ["a", "b", "c"]), rows(2, "lora", ["a", "b", "x"]),
                         rows(3, "lora", ["a", "b"]), rows(4, "lora", ["q", "q", "q"])], ignore_index=True)
    checks = pd.DataFrame({"run": ["r"], "step": [4], "benchmark": ["b"], "sampling": ["greedy"],
                           "zero_update": [True]})
    got = identical_to_base(samples, checks).set_index("step")
    assert got["greedy_same"].to_dict() == {1: True, 2: False, 3: False, 4: False}
    assert got["identical"].to_dict() == {1: True, 2: False, 3: False, 4: True}
