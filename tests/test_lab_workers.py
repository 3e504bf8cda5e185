"""The lab's child runner (tina_probe/lab/workers.py): progress read from each child's own tqdm line, N at a time,
a failure named with its log and the other children stopped."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tina_probe.errors import TinaError
from tina_probe.lab import workers
from tina_probe.lab.study import FULL, REAL, QUICK, VALIDATE
from tina_probe.lab.workers import Child, log_progress, run_children, shard_children


def test_log_progress_reads_the_last_tqdm_count(tmp_path):
    log = tmp_path / "x.log"
    assert log_progress(log) is None  # not written yet
    log.write_text("loading\n")
    assert log_progress(log) is None  # no bar yet
    log.write_bytes(b"eval units:   0%|  | 0/110 [00:00<?]\reval units:  5%|  | 6/110 [00:09<02:40]\r"
                    b"eval units:  10%|  | 11/110 [00:17<02:30]")
    assert log_progress(log) == (11, 110)


def test_shard_children_cover_every_shard_with_their_own_log(tmp_path):
    kids = shard_children("retention", ("--ckpts", "a", "b", "--out", "o"), tmp_path, 3)
    assert [k.args[-2:] for k in kids] == [("--shard", "0/3"), ("--shard", "1/3"), ("--shard", "2/3")]
    assert all(k.args[:6] == ("retention", "--ckpts", "a", "b", "--out", "o") for k in kids)
    assert len({k.log for k in kids}) == 3


def test_lab_plans_shard_and_the_real_ones_do_not():
    assert FULL.shards == QUICK.shards == VALIDATE.shards == 2
    assert REAL.shards == 1  # the real study keeps one process on every core: its numbers were taken that way


def _fake_cli(script: dict[str, str], started: list):
    """A stand-in for workers.cli that runs a Python snippet per command instead of `tina-probe`."""
    def launch(*args, threads=2, log=None):
        started.append((args, threads, time.monotonic()))
        out = open(log, "w")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        return subprocess.Popen([sys.executable, "-c", script[args[0]]], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    return launch


def test_children_run_n_at_a_time_on_their_share_of_the_cores(tmp_path, monkeypatch):
    ok = ("import os, sys, time\n"
          "for i in range(4):\n"
          "    sys.stderr.write(f'\\rwork: {i}/4 [00:00]'); sys.stderr.flush(); time.sleep(0.3)\n"
          "open('done-' + os.environ['OMP_NUM_THREADS'], 'a').close()\n")
    started: list = []
    monkeypatch.setattr(workers, "cli", _fake_cli({"a": ok}, started))
    monkeypatch.setattr(workers, "POLL_S", 0.05)
    monkeypatch.chdir(tmp_path)
    kids = [Child(f"a{i}", ("a", str(i)), tmp_path / f"a{i}.log") for i in range(3)]
    run_children(kids, parallel=2, threads=1)
    assert len(started) == 3 and all(threads == 1 for _, threads, _ in started)
    assert started[2][2] - started[0][2] >= 0.5  # the third waited for a slot
    assert (tmp_path / "done-1").exists()
    assert all(log_progress(k.log) == (3, 4) for k in kids)


def test_a_child_starts_after_what_it_waits_for_and_a_free_core_takes_the_next_ready_one(tmp_path, monkeypatch):
    """Rules W1-W2: 'b' waits for 'a' (long); 'c', listed after 'b' but ready, takes the free core meanwhile; a
    two-thread child starts only when both threads are free."""
    script = ("import sys, time\n"
              "time.sleep(float(sys.argv[-1]) if len(sys.argv) > 1 else 0)\n")
    started: list = []

    def launch(*args, threads=2, log=None):
        started.append((args[0], threads, time.monotonic()))
        return subprocess.Popen([sys.executable, "-c", script, args[1]], stdout=open(log, "w"),
                                stderr=subprocess.STDOUT)

    monkeypatch.setattr(workers, "cli", launch)
    kids = [Child("a", ("a", "1.0"), tmp_path / "a.log", threads=1),
            Child("b", ("b", "0.1"), tmp_path / "b.log", after=("a",), threads=1),
            Child("c", ("c", "0.1"), tmp_path / "c.log", threads=1),
            Child("d", ("d", "0.1"), tmp_path / "d.log", after=("b", "c"), threads=2)]
    t0 = time.monotonic()
    run_children(kids, parallel=1, threads=2)
    at = {name: t - t0 for name, _, t in started}
    assert [name for name, _, _ in started] == ["a", "c", "b", "d"]
    assert at["c"] < 0.5 and at["b"] >= 0.9  # c did not wait for b's barrier; b waited for a
    assert dict((name, thr) for name, thr, _ in started) == {"a": 1, "b": 1, "c": 1, "d": 2}


def test_a_child_on_every_core_is_not_starved_by_one_thread_children_listed_after_it(tmp_path, monkeypatch):
    """Rule W1: 'wide' (two threads) is ready while 'a' runs; 'b' and 'c' (one thread, listed after it) wait behind
    it instead of taking the free core again and again."""
    script = "import sys, time\ntime.sleep(float(sys.argv[-1]))\n"
    started: list = []

    def launch(*args, threads=2, log=None):
        started.append(args[0])
        return subprocess.Popen([sys.executable, "-c", script, args[1]], stdout=open(log, "w"),
                                stderr=subprocess.STDOUT)

    monkeypatch.setattr(workers, "cli", launch)
    kids = [Child("a", ("a", "0.5"), tmp_path / "a.log", threads=1),
            Child("wide", ("wide", "0.1"), tmp_path / "w.log", threads=2),
            Child("b", ("b", "0.1"), tmp_path / "b.log", threads=1),
            Child("c", ("c", "0.1"), tmp_path / "c.log", threads=1)]
    run_children(kids, parallel=1, threads=2)
    assert started == ["a", "wide", "b", "c"]


def test_children_that_cannot_run_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown labels"):
        run_children([Child("a", ("a",), tmp_path / "a.log", after=("zzz",))], 1)
    with pytest.raises(ValueError, match="wait for one another"):
        run_children([Child("a", ("a",), tmp_path / "a.log", after=("b",)),
                       Child("b", ("b",), tmp_path / "b.log", after=("a",))], 1)


def test_the_study_is_one_batch_each_child_after_only_what_it_reads(tmp_path):
    """study_children: a run's eval shards wait for that run's training (and the shared base's eval), not for the
    other runs, and write samples only; each eval call then writes the tables once, after every eval child; spectra
    wait for every run; phase and retention (its task KL reads eval's completions) for the tables; finished runs
    leave nothing to wait for."""
    from tina_probe.lab.study import study_children

    kids, run_dirs = study_children(FULL, tmp_path / "out", tmp_path / "runs")
    by = {k.label: k for k in kids}
    assert [k.label for k in kids][:6] == [f"train {r}" for r in FULL.recipes]
    base = ("eval-1 base-lab-lora-r8 1/2", "eval-1 base-lab-lora-r8 2/2")
    assert by["eval-1 lab-full 2/2"].after == ("train lab-full", *base)
    assert all(by[b].args[by[b].args.index("--steps") + 1] == "0" and by[b].after == ("train lab-lora-r8",)
               for b in base)
    assert by["eval-2 lab-control 1/2"].after == ("train lab-control",)  # alone on its base: no base child
    parts = {k.label for k in kids if k.args[0] == "eval" and "--no-summary" in k.args}
    assert len(parts) == 2 * 7 and all("--shard" in by[p].args for p in parts)
    tables = {"eval-1 tables", "eval-2 tables"}
    assert all(set(by[t].after) == parts and "--no-summary" not in by[t].args and "--shard" not in by[t].args
               for t in tables)
    trains = {f"train {r}" for r in FULL.recipes}
    assert set(by["phase"].after) == trains | parts | tables == set(by["retention 1/2"].after)
    assert set(by["spectra 2/2"].after) == trains
    cores = os.cpu_count() or 2
    assert by["phase"].threads == cores and by["phase"].args[-2:] == ("--workers", str(cores))  # curves on every core
    assert all(k.threads == 1 for k in kids if k.label != "phase") or cores != 2  # two cores: one thread each
    for d in run_dirs:  # every run's eval is the same call as before, on that run alone
        e = by[f"eval-{2 if d.name == 'lab-control' else 1} {d.name} 1/2"]
        assert e.args[1:3] == ("--ckpts", str(d))
    # a finished run has no train child, and nothing waits for one
    done = run_dirs[0]
    done.mkdir(parents=True)
    (done / "tina_run.json").write_text('{"status": "complete", "global_step": 100}')
    kids, _ = study_children(FULL, tmp_path / "out", tmp_path / "runs")
    assert "train lab-lora-r8" not in {k.label for k in kids}
    assert all("train lab-lora-r8" not in k.after for k in kids)
    real, _ = study_children(REAL, tmp_path / "out", tmp_path / "runs")  # one analysis process on every core
    assert [k.label for k in real] == ["train real-lora", "train real-full", "eval", "spectra", "phase"]
    assert [k.threads for k in real][2:] == [os.cpu_count() or 2] * 3


def test_a_failed_child_is_named_with_its_log_and_stops_the_others(tmp_path, monkeypatch):
    pid_file = tmp_path / "slow.pid"
    slow = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    bad = "import sys, time\ntime.sleep(1)\nprint('loading')\nprint('bad.parquet: not a table')\nsys.exit(3)\n"
    started: list = []
    monkeypatch.setattr(workers, "cli", _fake_cli({"slow": slow, "bad": bad}, started))
    monkeypatch.setattr(workers, "POLL_S", 0.05)
    kids = [Child("slow", ("slow",), tmp_path / "slow.log"), Child("bad", ("bad",), tmp_path / "bad.log")]
    with pytest.raises(TinaError) as err:
        run_children(kids, parallel=2)
    msg = str(err.value)
    assert str(tmp_path / "bad.log") in msg and "exit 3" in msg and "bad.parquet: not a table" in msg
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped: no such process any more
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_the_pool_after_eval_holds_what_needs_only_checkpoints_and_eval(tmp_path):
    from tina_probe.lab.study import after_eval_pool

    ckpts = ["/r/a", "/r/b"]
    full = after_eval_pool(FULL, tmp_path, ckpts)  # retention at every checkpoint: no wait for phase
    assert [c.label for c in full] == ["retention 1/2", "retention 2/2", "spectra 1/2", "spectra 2/2", "phase"]
    assert all(c.args[c.args.index("--out") + 1] == str(tmp_path) for c in full)
    assert full[0].args[full[0].args.index("--probes") + 1] == ",".join(FULL.probes)
    # validate: retention only at the best checkpoints, which phase chooses; no spectra
    assert [c.label for c in after_eval_pool(VALIDATE, tmp_path, ckpts)] == ["phase"]
    real = after_eval_pool(REAL, tmp_path, ckpts)  # one process per stage, retention after phase
    assert [c.label for c in real] == ["spectra", "phase"] and "--shard" not in real[0].args
    assert "--no-intruders" in real[0].args


def test_every_eval_call_in_one_pool_with_its_own_logs(tmp_path):
    from tina_probe.lab.study import eval_calls, eval_children

    run_dirs = [tmp_path / r for r in FULL.recipes]
    calls = eval_calls(FULL, run_dirs)
    assert len(calls) == 2  # lab-control has its own (hard) splits
    kids = eval_children(FULL, tmp_path, run_dirs)
    assert [k.label for k in kids] == ["eval-1 1/2", "eval-1 2/2", "eval-2 1/2", "eval-2 2/2"]
    assert len({k.log for k in kids}) == 4
    for k, (dirs, benches, limit, n) in zip(kids[::2], calls):
        a = k.args
        assert a[a.index("--benchmarks") + 1] == ",".join(benches) and a[a.index("--n") + 1] == str(n)
        assert a[a.index("--limit") + 1] == str(limit) and all(d in a for d in dirs)


def test_two_children_with_one_log_are_refused(tmp_path):
    with pytest.raises(ValueError, match="one log"):
        run_children([Child("a", ("a",), tmp_path / "x.log"), Child("b", ("b",), tmp_path / "x.log")], 2)


def test_children_fork_on_linux_and_start_as_subprocesses_elsewhere_or_on_the_old_paths(monkeypatch, tmp_path):
    """workers.cli forks from the preloaded server (lab/forked.py) on Linux; elsewhere (no safe fork) and with
    TINA_PROBE_SLOW_PATHS=1 (the old paths, for bench_study's before side) it starts `python -m tina_probe.cli`."""
    from tina_probe.lab import forked

    monkeypatch.setattr(forked.sys, "platform", "darwin")
    assert not forked.available()
    popened: list = []
    monkeypatch.setattr(workers.subprocess, "Popen", lambda cmd, **kw: popened.append(cmd) or "proc")
    assert workers.cli("phase", "--help", threads=1, log=tmp_path / "a.log") == "proc"
    monkeypatch.setattr(forked.sys, "platform", "linux")
    monkeypatch.setenv("TINA_PROBE_SLOW_PATHS", "1")
    assert workers.cli("phase", "--help", threads=1, log=tmp_path / "b.log") == "proc"
    assert popened == [[sys.executable, "-m", "tina_probe.cli", "phase", "--help"]] * 2
