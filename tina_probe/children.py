"""Child processes that end with their parent: a terminated `tina-probe` command must not leave a server or a
training run behind (measured before this module: `tina-probe app` sent SIGTERM left Streamlit holding its port)."""
from __future__ import annotations

import contextlib
import signal
import subprocess

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 20


def stop(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM a running child, then SIGKILL it if it has not ended within grace_s seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_forwarding(cmd: list[str], **popen_kw) -> int:
    """Run cmd to its end and return its exit code; SIGTERM, SIGINT and SIGHUP sent to this process are passed on
    to the child (which is then waited for, and killed after a grace period)."""
    proc = subprocess.Popen(cmd, **popen_kw)
    got: list[int] = []

    def forward(signum, _frame):
        got.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                code = proc.wait(timeout=GRACE_S if got else None)
                return code
            except subprocess.TimeoutExpired:  # told to stop, still running after the grace period
                stop(proc, 1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def sigterm_as_exit():
    """Within the block, SIGTERM (and SIGHUP) raise SystemExit(143) so that `finally` blocks run and stop children
    (Python's default for SIGTERM is to die at once, leaving them orphaned)."""
    def to_exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, to_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
