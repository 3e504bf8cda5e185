"""A terminated command ends its children: `tina-probe app` (its Streamlit server) and the lab's training runs."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tina_probe.children import run_forwarding, stop

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _await_listening(port: int, proc, why: str) -> None:
    """Until the explorer listens on port (at most 120 s); proc must not end first (why: what to show if it does)."""
    deadline = time.time() + 120
    while not _listening(port) and time.time() < deadline:
        assert proc.poll() is None, why
        time.sleep(0.5)
    assert _listening(port), "the explorer never listened"


def _await_port_free(port: int) -> bool:
    """Whether the port is free within 30 s (the Streamlit server ended)."""
    deadline = time.time() + 30
    while _listening(port) and time.time() < deadline:
        time.sleep(0.5)
    return not _listening(port)


def _wait_pid(pid_file: Path) -> int:
    """The pid a child wrote to pid_file, once it has written it."""
    deadline = time.time() + 30
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
    return int(pid_file.read_text())


def test_app_sent_sigterm_ends_its_streamlit_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tina_probe.cli", "app", "--out", str(tmp_path), "--port",
                             str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _await_listening(port, proc, "tina-probe app ended before its server listened")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert _await_port_free(port), "the Streamlit server outlived tina-probe app (orphaned, holding the port)"
    finally:
        stop(proc, 5)


def test_run_forwarding_passes_sigterm_to_the_child(tmp_path):
    """A parent running a child with run_forwarding, sent SIGTERM, ends the child and exits with its code."""
    pid_file = tmp_path / "child.pid"
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    code = ("import sys\nfrom tina_probe.children import run_forwarding\n"
            f"sys.exit(run_forwarding([sys.executable, {str(sleeper)!r}]))\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    child = _wait_pid(pid_file)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) != 0
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child)


def test_sigterm_as_exit_runs_finally_blocks_that_stop_children(tmp_path):
    """The lab's pattern: children started inside sigterm_as_exit() are stopped by `finally` when SIGTERM comes."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "from tina_probe.children import sigterm_as_exit, stop\n"
        "with sigterm_as_exit():\n"
        f"    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"    open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "    try:\n"
        "        time.sleep(600)\n"
        "    finally:\n"
        "        stop(p)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    child = _wait_pid(pid_file)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    assert not _alive(child)


def test_a_forked_child_runs_the_command_in_the_parents_folder_with_its_log_and_exit_code(tmp_path, monkeypatch):
    """tina_probe/lab/forked.py: the child forked from the preloaded server behaves as `python -m tina_probe.cli`
    would: relative paths from the parent's current folder, output in its log, the command's exit code."""
    from tina_probe.lab.forked import ForkedChild

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    ok = ForkedChild(("phase", "--runs", "run", "--out", "store"), tmp_path / "ok.log", 1, dict(os.environ))
    assert ok.wait(timeout=300) == 0 and ok.returncode == 0
    assert (tmp_path / "store" / "phases.parquet").is_file()  # written under the parent's folder
    assert "no trainer_state.json" in (tmp_path / "ok.log").read_text()
    bad = ForkedChild(("phase", "--runs", "absent", "--out", "store"), tmp_path / "bad.log", 1, dict(os.environ))
    assert bad.wait(timeout=300) == 2
    assert "error: absent: no such run folder" in (tmp_path / "bad.log").read_text()


def test_a_stopped_forked_child_ends_with_its_own_children(tmp_path):
    """`children.stop` ends a forked `tina-probe app` and, through it, its Streamlit server (as for a subprocess)."""
    from tina_probe.lab.forked import ForkedChild

    port = _free_port()
    child = ForkedChild(("app", "--out", str(tmp_path), "--port", str(port)), tmp_path / "app.log", 1,
                        dict(os.environ))
    try:
        _await_listening(port, child, "the forked tina-probe app ended before its server listened")
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.1)
        stop(child, 60)
        assert child.returncode is not None and not _alive(child.pid)
        assert _await_port_free(port), "the Streamlit server outlived its forked tina-probe app"
    finally:
        stop(child, 5)
