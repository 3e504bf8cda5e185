"""`tina-probe` children forked from one server that has imported the heavy libraries once (multiprocessing's
forkserver, with `set_forkserver_preload`).

Why: every child that starts as `python -m tina_probe.cli` imports torch, transformers, peft, pandas, statsmodels
and seaborn again: ~6-7 s of CPU each on this machine (peft alone ~3 s, it pulls in much of transformers), and a
study starts 13 children (`lab --quick`) or more. The server pays that once; a child forks from it in milliseconds
and runs the same command line, with the same environment, thread count and log, as the subprocess would have.
Nothing runs in the server but imports (no torch op, so no OpenMP pool exists to be broken by the fork).
`TINA_PROBE_SLOW_PATHS=1` starts subprocesses instead (the path before this module).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
from pathlib import Path

# The imports that cost seconds in every stage (the server ignores any that fail). Not TRL: `train/grpo.py` must
# patch it before its trainer is imported (`_quiet_trl`), and its own import is cheap.
PRELOAD = ("torch", "transformers", "peft", "pandas", "pyarrow.parquet", "scipy.stats", "statsmodels.api",
           "math_verify", "seaborn")


_SERVER_STARTS: bool | None = None  # whether the server started, once tried in this process


def available() -> bool:
    """Whether children can be forked from the server here: Linux only (macOS's system libraries are not safe to use
    after a fork, and Windows has no fork), and not where the server failed to start (then subprocesses, once
    warned). The server is started on the first call only; each `ForkedChild` makes sure it still runs."""
    global _SERVER_STARTS
    if not sys.platform.startswith("linux"):
        return False
    if _SERVER_STARTS is None:
        try:
            _context()
            _SERVER_STARTS = True
        except (OSError, ValueError) as e:
            _SERVER_STARTS = False
            print(f"warning: the lab's forkserver did not start ({e}); children start as subprocesses",
                  file=sys.stderr)
    return _SERVER_STARTS


def _context():
    """The forkserver context; its server starts once per process, with one thread for every library that reads
    OMP_NUM_THREADS as it loads (numpy's and scipy's OpenBLAS create their pools then), so that a one-thread child,
    the study's usual kind, is in the state a subprocess started with OMP_NUM_THREADS=1 would be in."""
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return ctx


def _child_main(args: tuple[str, ...], log: str | None, threads: int, env: dict[str, str], cwd: str,
                append: bool) -> None:
    """In the forked child: the subprocess's folder, environment and output (the log truncated, or appended to),
    then `tina-probe ARGS` to its exit code."""
    os.chdir(cwd)  # the server's folder is the one it started in, not necessarily the parent's now
    os.environ.clear()
    os.environ.update(env)
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import torch
    from threadpoolctl import threadpool_limits

    # The server's libraries read OMP_NUM_THREADS=1 as they loaded; this child's count is set where they look now.
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    sys.argv = ["tina-probe", *args]
    # A copy the parent's main module brought in (multiprocessing imports it into the child) would make runpy warn.
    sys.modules.pop("tina_probe.cli", None)
    code: int | str | None = 0
    try:  # what `python -m tina_probe.cli ARGS` runs (the face is run, not imported by this core module)
        runpy.run_module("tina_probe.cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        atexit._run_exitfuncs()  # what a process's normal exit runs; multiprocessing ends its children with _exit
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


class ForkedChild:
    """A forked `tina-probe` child with the part of `subprocess.Popen`'s interface the lab uses (poll, wait,
    terminate, kill, send_signal, returncode, pid), so `children.stop` ends it the same way."""

    def __init__(self, args: tuple[str, ...], log: Path | None, threads: int, env: dict[str, str], *,
                 cwd: Path | None = None, append: bool = False):
        self._proc = _context().Process(target=_child_main, args=(tuple(args), str(log) if log else None, threads,
                                                                   dict(env), str(cwd or os.getcwd()), append),
                                        daemon=False)
        self._proc.start()
        self.pid = self._proc.pid
        self.args = args

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(["tina-probe", *self.args], timeout)
        return self._proc.exitcode

    def send_signal(self, signum: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self._proc.terminate()

    def kill(self) -> None:
        self._proc.kill()


def server_cpu_seconds() -> float:
    """CPU seconds of this process's forkserver so far, its own and its finished children's (the forked commands);
    0 before it starts. Linux /proc only: for benchmarks/bench_study.py, whose children are not this process's own."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # private, but the only handle on the server
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the command name: utime, stime, cutime, cstime are fields 14-17 of proc(5), here 11-14 (0-based)
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
