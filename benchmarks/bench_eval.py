"""Benchmark: `tina-probe eval` over 8 lab LoRA checkpoints vs a fresh model load per checkpoint (per backend:
tina-probe's hf generator loaded anew, a fresh vLLM engine; a plain transformers + peft loop as information) and vs
lm-eval per checkpoint (same problems, greedy, one sample each); LoRA vs base tokens/s; vLLM vs hf tokens/s.

Every part runs in this process (vLLM's engine too) or in child processes it waits for (lm-eval's), so goals are
judged on CPU seconds, with the wall clock printed beside them: on a shared machine the wall clock swings 2-10x
with other jobs.

--real runs the same sides on the real pretrained base (SmolLM2-135M-Instruct, `tina-probe lab real-base`): 4 LoRA
checkpoints of the real recipe's shape (r16, every projection, random weights: speed does not depend on their values)
on the real task's test split, graded in its boxed answer format. There loading is cheap next to generating, so the
load and generation costs are printed beside the ratios that depend on them. `--real --quick` took 15 min alone on
2 quiet cores.

Run: python benchmarks/bench_eval.py [--base PATH] [--quick] [--real]   (threads: whatever OMP_NUM_THREADS says)"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                     ("TOKENIZERS_PARALLELISM", "false"), ("VLLM_CPU_KVCACHE_SPACE", "1"),
                     ("VLLM_LOGGING_LEVEL", "ERROR")):
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tina_probe.benchmarks import load_benchmark, registry  # noqa: E402
from tina_probe.evaluate import run_eval  # noqa: E402
from tina_probe.generate.base import GenJob  # noqa: E402
from tina_probe.generate.hf import HFGenerator  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_CKPTS, RANK, MAX_TOKENS, BENCH = 8, 8, 64, "lab-test"
GREEDY = dict(n=1, temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=0)
TASK = "tina_bench_lab"
GRADER = '''"""process_results for the benchmark's lm-eval task: tina-probe's grader on lm-eval's completions."""
from transformers import AutoTokenizer

from tina_probe.grading import grade

_TOK = AutoTokenizer.from_pretrained({base!r})


def process_results(doc, results):
    text = results[0]
    truncated = len(_TOK(text, add_special_tokens=False)["input_ids"]) >= {max_tokens}
    g = grade(text, str(doc["answer"]), truncated=truncated, answer_format={answer_format!r})
    exact = (g.extracted_answer or "").strip() == str(doc["answer"]).strip()
    return {{"strict": float(g.correct_strict), "lenient": float(g.correct_lenient), "exact_match": float(exact)}}
'''


# ----------------------------------------------------------------------------- fixtures on disk


def make_run(base: Path, root: Path, seed: int = 0) -> Path:
    """A fake LoRA run: tina_run.json + checkpoint-N/ (r=8 on every projection, small random A and B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = root / "bench-lora"
    run.mkdir(parents=True)
    (run / "tina_run.json").write_text(json.dumps(
        {"name": "bench-lora", "kind": "lora", "base": str(base), "eval_benchmark": BENCH}))
    model = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=PROJECTIONS,
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    for i in range(1, N_CKPTS + 1):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
                elif "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.03 * i)  # drifts like training
        peft_model.save_pretrained(run / f"checkpoint-{10 * i}", safe_serialization=True)
    return run


def make_lmeval_task(folder: Path, base: Path, problems) -> Path:
    """A local generate_until task over the same problems, graded by tina-probe's grader (process_results)."""
    folder.mkdir(parents=True)
    data = folder / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "question": p.prompt, "answer": p.answer}) + "\n"
                            for p in problems))
    answer_format = registry()[BENCH].answer_format
    (folder / "grade_lm.py").write_text(GRADER.format(base=str(base), max_tokens=MAX_TOKENS,
                                                      answer_format=answer_format))
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                      for m in ("strict", "lenient", "exact_match"))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: \"{{question}}\"\ndoc_to_target: \"{{answer}}\"\n"
        f"generation_kwargs:\n  until: [\"<|endoftext|>\"]\n  do_sample: false\n  max_gen_toks: {MAX_TOKENS}\n"
        f"process_results: !function grade_lm.process_results\nmetric_list:\n{metrics}")
    return folder


# ----------------------------------------------------------------------------- the timed parts


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (lm-eval runs subprocesses)."""
    t = os.times()  # children at clock-tick resolution; this process at process_time's finer one
    return time.process_time() + t.children_user + t.children_system


def timed(fn, *args, **kwargs):
    """((wall s, CPU s), fn's result). Every timed part runs in this process (vLLM in process) or in children it
    waits for, so CPU seconds count the work done, whatever else the machine is running."""
    w0, c0 = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - w0, cpu_seconds() - c0), result


def sweep_run_eval(run: Path, steps: list[int], limit: int, backend: str, out: Path):
    """One `tina-probe eval` sweep over the checkpoints into a fresh store; its samples table."""
    return run_eval([str(run)], benchmarks=[BENCH], limit=limit, backend=backend, out=out, steps=steps,
                    show=False, **GREEDY)["samples"]


def sweep_reload(base: Path, ckpts: list[Path], prompts: list[str]) -> dict:
    """For each checkpoint, a fresh generator: base and adapter loaded from disk, then the same generation (the same
    HFGenerator code, so the ratio isolates what loading once and batching checkpoints saves)."""
    texts = {}
    for ck in ckpts:
        gen = HFGenerator(device="cpu")
        gen.load_base(str(base))
        texts[ck] = [g[0].text for g in gen.generate(prompts, adapter=ck, **GREEDY)]
        del gen  # dropped, as a plain loop would (close() adds a gc.collect that costs ~0.25 s here)
    return texts


def sweep_reload_vllm(base: Path, ckpts: list[Path], prompts: list[str]) -> dict:
    """For each checkpoint, a fresh vLLM engine with that one adapter, then the same generation: what evaluating
    checkpoint by checkpoint with vLLM costs (the usual lighteval / lm-eval + vLLM loop starts an engine per
    checkpoint), against run_eval's one engine per base with every adapter as a LoRARequest."""
    from tina_probe.generate.vllm_backend import VLLMGenerator

    texts = {}
    for ck in ckpts:
        gen = VLLMGenerator()
        gen.load_base(str(base), adapters=[ck])
        texts[ck] = [g[0].text for g in gen.generate(prompts, adapter=ck, **GREEDY)]
        gen.close()
    return texts


def sweep_reload_peft(base: Path, ckpts: list[Path], prompts: list[str], batch_size: int = 64) -> dict:
    """The loop a user writes without tina-probe: per checkpoint, transformers' from_pretrained + peft's
    PeftModel.from_pretrained, then generate (greedy, left-padded chat-template prompts); no tina-probe code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = {}
    for ck in ckpts:
        tok = AutoTokenizer.from_pretrained(str(base))
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, use_safetensors=True)
        model = PeftModel.from_pretrained(model, str(ck)).eval()
        rendered = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=False) for p in prompts]
        out = []
        with torch.inference_mode():
            for i in range(0, len(rendered), batch_size):
                enc = tok(rendered[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                seqs = model.generate(**enc, do_sample=False, max_new_tokens=MAX_TOKENS, pad_token_id=tok.pad_token_id)
                out += tok.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        texts[ck] = out
        del model
    return texts


def sweep_lmeval(base: Path, ckpts: list[Path], task_dir: Path, batch_size: int) -> dict:
    """lm_eval.simple_evaluate once per checkpoint (hf model + peft): {ckpt: (metrics, responses, prompts)}."""
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    out = {}
    for ck in ckpts:
        res = simple_evaluate(
            model="hf", model_args=f"pretrained={base},peft={ck},dtype=float32", tasks=[TASK], device="cpu",
            batch_size=batch_size, apply_chat_template=True, log_samples=True, bootstrap_iters=0,
            task_manager=TaskManager(include_defaults=False, include_path=str(task_dir)),
        )
        rows = sorted(res["samples"][TASK], key=lambda s: s["doc_id"])
        out[ck] = ({m: res["results"][TASK][f"{m},none"] for m in ("strict", "lenient", "exact_match")},
                   [s["resps"][0][0] for s in rows], [s["arguments"][0][0] for s in rows])
    return out


def time_sweeps(base, run, ckpts, steps, problems, task_dir, tmp, repeats, has_vllm):
    """(wall, CPU) seconds of each sweep (run_eval hf, fresh reloads, lm-eval, run_eval vllm), back to back per
    repeat; and the last repeat's outputs."""
    names = ("run_eval(hf)", "reload loop", "reload (peft)", "lm-eval") + \
        (("run_eval(vllm)", "vllm reload") if has_vllm else ())
    times = {k: [] for k in names}
    prompts, out = [p.prompt for p in problems], {}
    for r in range(repeats):
        t, out["samples"] = timed(sweep_run_eval, run, steps, len(problems), "hf", tmp / f"results-hf-{r}")
        times["run_eval(hf)"].append(t)
        t, out["reload"] = timed(sweep_reload, base, ckpts, prompts)
        times["reload loop"].append(t)
        t, out["reload_peft"] = timed(sweep_reload_peft, base, ckpts, prompts)
        times["reload (peft)"].append(t)
        t, out["lm"] = timed(sweep_lmeval, base, ckpts, task_dir, batch_size=64)
        times["lm-eval"].append(t)
        if has_vllm:
            t, out["samples_vllm"] = timed(sweep_run_eval, run, steps, len(problems), "vllm",
                                           tmp / f"results-vllm-{r}")
            times["run_eval(vllm)"].append(t)
            t, out["reload_vllm"] = timed(sweep_reload_vllm, base, ckpts, prompts)
            times["vllm reload"].append(t)
    return times, out


def measure_rates(base: Path, ckpts: list[Path], prompts: list[str], has_vllm: bool, repeats: int):
    """Tokens per (wall, CPU) second of hf and vllm on the base and a LoRA checkpoint, back to back in each repeat;
    ratios are taken within a repeat. hf runs as eval runs it (a batch with one adapter merged in place, float32)
    and with --no-merge; "bank" is 8 checkpoints in one batch against the base on the same rows (8 base jobs).
    Returns ({(backend, model): [(wall rate, cpu rate)]}, {ratio: [(w, c)]})."""
    gens = {"hf": HFGenerator(device="cpu"), "hf-unmerged": HFGenerator(device="cpu", merge=False)}
    for g in gens.values():
        g.load_base(str(base))
    if has_vllm:
        from tina_probe.generate.vllm_backend import VLLMGenerator

        gens["vllm"] = VLLMGenerator()
        gens["vllm"].load_base(str(base), adapters=ckpts)

    def rate(g, adapters):
        jobs = [GenJob(tuple(prompts), a, 0) for a in adapters]
        settings = {k: v for k, v in GREEDY.items() if k != "seed"}
        (wall, cpu), out = timed(g.generate_jobs, jobs, **settings)
        tokens = sum(c.n_tokens for job in out for group in job for c in group)
        return tokens / wall, tokens / cpu

    models = {"base": [None], "lora": [ckpts[0]], "base x8": [None] * len(ckpts), "bank": list(ckpts)}
    runs = [(b, m) for b in gens for m in models if not (m in ("base x8", "bank") and b != "hf")]
    for b, m in runs:  # warm-up: first calls pay one-time costs (adapter reads, allocations)
        rate(gens[b], models[m])
    rates = {key: [] for key in runs}
    pairs = {"hf lora/base": (("hf", "lora"), ("hf", "base")),
             "hf unmerged lora/base": (("hf-unmerged", "lora"), ("hf-unmerged", "base")),
             "hf bank/base x8": (("hf", "bank"), ("hf", "base x8"))}
    if has_vllm:
        pairs.update({"vllm lora/base": (("vllm", "lora"), ("vllm", "base")),
                      "vllm/hf lora": (("vllm", "lora"), ("hf", "lora")),
                      "vllm/hf base": (("vllm", "base"), ("hf", "base"))})
    ratios = {k: [] for k in pairs}
    for _ in range(repeats):
        now = {}
        for key in runs:
            now[key] = rate(gens[key[0]], models[key[1]])
            rates[key].append(now[key])
        for k, (num, den) in pairs.items():
            ratios[k].append(tuple(x / y for x, y in zip(now[num], now[den])))
    for g in gens.values():
        g.close()
    return rates, ratios


# ----------------------------------------------------------------------------- report


def line(name: str, value: tuple[float, float], goal: float | None, unit: str = "x") -> None:
    """One result line: name, CPU-time value, goal, PASS/FAIL (or info), and the wall-clock value beside it."""
    wall, cpu = value
    verdict = "info" if goal is None else ("PASS" if cpu >= goal else "FAIL")
    goal_text = "-" if goal is None else f">= {goal:g}{unit}"
    print(f"{name:<48} {cpu:>8.2f}{unit:<2} {goal_text:<9} {verdict:<5} (wall clock: {wall:.2f}{unit})", flush=True)


def per_repeat_ratio(times: dict[str, list], slow: str, fast: str) -> tuple[float, float]:
    """(wall, CPU) medians over repeats of slow/fast, each ratio taken within one repeat."""
    return tuple(statistics.median(a[i] / b[i] for a, b in zip(times[slow], times[fast])) for i in (0, 1))


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """(wall, CPU) medians of a list of (wall, CPU) values."""
    return tuple(statistics.median(p[i] for p in pairs) for i in (0, 1))


def accuracies(samples) -> dict[int, tuple[float, float, float]]:
    """step -> (strict, lenient, exact match of the extracted answer) of run_eval's samples."""
    exact = samples["extracted_answer"].fillna("").astype(str).str.strip() == samples["answer"].astype(str)
    frame = samples.assign(exact=exact)
    g = frame.groupby("step")[["correct_strict", "correct_lenient", "exact"]].mean()
    return {int(s): tuple(float(v) for v in row) for s, row in g.iterrows()}


def check_same_work(base, ckpts, steps, problems, out) -> None:
    """Print whether every side produced the same completions from the same prompts (else timings mislead)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    samples, lm = out["samples"], out["lm"]
    by_step = {s: list(samples[samples["step"] == s].sort_values("problem_id")["completion"]) for s in steps}
    order = sorted(range(len(problems)), key=lambda i: problems[i].id)
    same_reload = all(by_step[s] == [out["reload"][c][i] for i in order] for s, c in zip(steps, ckpts))
    same_peft = sum(by_step[s] == [out["reload_peft"][c][i] for i in order] for s, c in zip(steps, ckpts))
    same_lm = sum(by_step[s] == [lm[c][1][i] for i in order] for s, c in zip(steps, ckpts))
    if "reload_vllm" in out:
        same_v = sum(by_step[s] == [out["reload_vllm"][c][i] for i in order] for s, c in zip(steps, ckpts))
        print(f"check    fresh-vLLM-engine completions == run_eval(hf)'s on {same_v}/{len(ckpts)} checkpoints")
    rendered = [tok.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                        tokenize=False) for p in problems]
    same_ctx = all(lm[c][2] == rendered for c in ckpts)
    print(f"check    transformers+peft reload loop completions == run_eval's on {same_peft}/{len(ckpts)} checkpoints")
    print(f"check    reload-loop completions == run_eval's: {same_reload}; lm-eval prompts == ours: {same_ctx}; "
          f"lm-eval completions == run_eval's on {same_lm}/{len(ckpts)} checkpoints")
    if "samples_vllm" in out:
        key = ["step", "problem_id"]
        same_v = (out["samples_vllm"].sort_values(key)["completion"].tolist()
                  == samples.sort_values(key)["completion"].tolist())
        print(f"check    run_eval(vllm) completions == run_eval(hf)'s: {same_v}")


def compare_accuracies(ckpts, steps, out) -> bool:
    """Print run_eval's and lm-eval's greedy accuracies per checkpoint; True when all agree."""
    acc, agree = accuracies(out["samples"]), True
    print("accuracy step  run_eval strict / lenient / exact   lm-eval strict / lenient / exact_match")
    for s, c in zip(steps, ckpts):
        ours, theirs = acc[s], tuple(out["lm"][c][0][m] for m in ("strict", "lenient", "exact_match"))
        agree &= all(abs(a - b) < 1e-9 for a, b in zip(ours, theirs))
        print(f"         {s:>4}  {ours[0]:.3f} / {ours[1]:.3f} / {ours[2]:.3f}            "
              f"{theirs[0]:.3f} / {theirs[1]:.3f} / {theirs[2]:.3f}")
    print(f"accuracy run_eval and lm-eval greedy accuracies agree on every checkpoint: {agree}")
    return agree


def vllm_imports() -> bool:
    """Whether `import vllm` works here (the vLLM parts are skipped otherwise)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def use_real_base() -> Path:
    """Switch the workload to the real base (4 r16 checkpoints, the real task's test split); its folder."""
    global N_CKPTS, RANK, BENCH
    from tina_probe.errors import TinaError
    from tina_probe.real.models import ensure_base

    N_CKPTS, RANK, BENCH = 4, 16, "real-test"
    try:
        return ensure_base("smollm2-135m-instruct")
    except TinaError as exc:
        sys.exit(f"real base: {exc}")


def load_and_generate_costs(base: Path, ckpt: Path, prompts: list[str], has_vllm: bool) -> None:
    """What the reload ratios weigh: (wall, CPU) s of loading the base, of a first generation with one adapter (its
    load included) and of the same generation again, per backend (vLLM: starting the engine)."""
    gen = HFGenerator(device="cpu")
    t_load, _ = timed(gen.load_base, str(base))
    t_first, _ = timed(gen.generate, prompts, adapter=ckpt, **GREEDY)
    t_again, _ = timed(gen.generate, prompts, adapter=ckpt, **GREEDY)
    gen.close()
    costs = [("hf", t_load, t_first, t_again)]
    if has_vllm:
        from tina_probe.generate.vllm_backend import VLLMGenerator

        v = VLLMGenerator()
        t_load, _ = timed(v.load_base, str(base), adapters=[ckpt])
        t_first, _ = timed(v.generate, prompts, adapter=ckpt, **GREEDY)
        t_again, _ = timed(v.generate, prompts, adapter=ckpt, **GREEDY)
        v.close()
        costs.append(("vllm", t_load, t_first, t_again))
    for name, load, first, again in costs:
        print(f"costs    {name:<5} load base {load[1]:.1f} CPU-s ({load[0]:.1f} wall); first generation with the adapter "
              f"{first[1]:.1f} CPU-s ({first[0]:.1f}); again {again[1]:.1f} CPU-s ({again[0]:.1f}); "
              f"{len(prompts)} prompts, greedy, <= {MAX_TOKENS} tokens", flush=True)


def main() -> None:
    """Build the checkpoints, time every side by side (interleaved repeats, medians), print ratios and goals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=ROOT / "data" / "lab" / "base")
    ap.add_argument("--quick", action="store_true", help="8 problems, fewer token repeats (~2 minutes on a quiet CPU)")
    ap.add_argument("--real", action="store_true", help="the real pretrained base (SmolLM2-135M-Instruct) instead of "
                    "the lab one: 4 r16 checkpoints, the real task; one repeat of the sweeps")
    args = ap.parse_args()
    base = use_real_base() if args.real else args.base.resolve()
    if not (base / "config.json").is_file():
        sys.exit(f"{base}: no model there (pass --base PATH to a lab base model folder)")
    n_problems, repeats, tok_repeats = (8, 3, 5) if args.quick else (32, 3, 7)
    if args.real:  # a real model generates ~50x slower than the lab one: fewer problems and repeats
        n_problems, repeats, tok_repeats = (8, 1, 2) if args.quick else (16, 1, 3)
    has_vllm = vllm_imports()
    print(f"threads  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  cpus={os.cpu_count()}  "
          f"load={os.getloadavg()[0]:.1f}  base={base}")
    print(f"model    {'real: SmolLM2-135M-Instruct' if args.real else 'the lab organism'}")
    print(f"workload {N_CKPTS} LoRA checkpoints (r={RANK}, all projections) x {n_problems} {BENCH} problems, "
          f"greedy, 1 sample, max_tokens={MAX_TOKENS}; {repeats} repeats of the sweeps back to back, "
          "ratios taken within a repeat, medians over repeats", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        tmp = Path(tmp)
        run = make_run(base, tmp / "runs")
        ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        steps = [int(p.name.split("-")[1]) for p in ckpts]
        problems = load_benchmark(BENCH, limit=n_problems).problems
        task_dir = make_lmeval_task(tmp / "lmeval", base, problems)
        times, out = time_sweeps(base, run, ckpts, steps, problems, task_dir, tmp, repeats, has_vllm)
        for k, v in times.items():
            print(f"seconds  {k:<15} wall {[round(w, 1) for w, _ in v]}  CPU {[round(c, 1) for _, c in v]}")
        check_same_work(base, ckpts, steps, problems, out)
        agree = compare_accuracies(ckpts, steps, out)
        load_and_generate_costs(base, ckpts[0], [p.prompt for p in problems], has_vllm)
        rates, ratios = measure_rates(base, ckpts, [p.prompt for p in problems], has_vllm, tok_repeats)
        for (b, a), v in rates.items():
            print(f"tokens/s {b} {a:<7}  per wall s {[round(w) for w, _ in v]}  per CPU s {[round(c) for _, c in v]}")
    print(f"load     {os.getloadavg()[0]:.1f} (1-minute load average at the end)")
    print("\nname                                              value  goal      (judged on CPU time; wall clock beside)")
    line("run_eval(hf) vs fresh load per checkpoint (hf)", per_repeat_ratio(times, "reload loop", "run_eval(hf)"), 3)
    line("  vs transformers+peft load per checkpoint", per_repeat_ratio(times, "reload (peft)", "run_eval(hf)"), None)
    line("run_eval(hf) vs lm-eval per checkpoint", per_repeat_ratio(times, "lm-eval", "run_eval(hf)"), 5)
    if has_vllm:
        line("run_eval(vllm) vs fresh vLLM engine per ckpt", per_repeat_ratio(times, "vllm reload", "run_eval(vllm)"),
             3)
        line("run_eval(vllm) vs lm-eval (hf) per checkpoint", per_repeat_ratio(times, "lm-eval", "run_eval(vllm)"), 5)
    line("greedy accuracies equal (run_eval, lm-eval)", (float(agree), float(agree)), 1, unit="")
    line("LoRA tokens/s / base tokens/s (hf, as eval runs)", medians(ratios["hf lora/base"]), 0.9)
    line("  same, adapter unmerged (hf, --no-merge)", medians(ratios["hf unmerged lora/base"]), None)
    line("  8 checkpoints in one batch / base, same rows", medians(ratios["hf bank/base x8"]), None)
    if has_vllm:
        line("LoRA tokens/s / base tokens/s (vllm)", medians(ratios["vllm lora/base"]), 0.9)
        line("vLLM / hf tokens/s (LoRA checkpoint)", medians(ratios["vllm/hf lora"]), 2)
        line("vLLM / hf tokens/s (base)", medians(ratios["vllm/hf base"]), None)
    else:
        print("vLLM / hf tokens/s: skipped (vllm is not installed)")


if __name__ == "__main__":
    main()
