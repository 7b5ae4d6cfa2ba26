"""Bounded distributed failure: a dead peer, a hung peer and a dead launcher end the survivors with a message."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("dist_worker.py"))
pytestmark = pytest.mark.distributed


def _env(rank, port):
    return dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _start_pair(mode, timeout_min, tmp_path):
    port = free_port()
    return [subprocess.Popen([sys.executable, WORKER, mode, str(timeout_min), str(tmp_path)], env=_env(r, port),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]


@pytest.mark.parametrize("mode", ["kill", "stop"])
def test_survivor_exits_with_a_message_within_the_timeout(tmp_path, mode):
    timeout_min = 0.05  # 3 s
    rank0, rank1 = _start_pair(mode, timeout_min, tmp_path)
    try:
        started = time.time()
        out, err = rank0.communicate(timeout=90)
        waited = time.time() - started
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
            p.wait()
    assert rank0.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: a peer process died or did not answer"), err
    assert "Traceback" not in err
    assert waited < 60, waited


def test_workers_exit_when_the_launcher_dies(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), WORKER, "run", "10", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    agent = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    try:
        deadline = time.time() + 90
        while not all(p.exists() and p.read_text() for p in pid_files):
            assert time.time() < deadline and agent.poll() is None, agent.stderr.read() if agent.poll() else ""
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in pid_files]
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.time() + 30
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids), "workers outlived their launcher"
    finally:
        for p in pid_files:
            if p.exists() and p.read_text() and _alive(int(p.read_text())):
                os.kill(int(p.read_text()), signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; it only waits for its (new) parent to reap it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
