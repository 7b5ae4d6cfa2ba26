"""A tiny distributed job for the failure tests: ``python tests/runtime/dist_worker.py MODE TIMEOUT_MIN PIDDIR``.

Every rank writes its pid, joins the group (via runtime.distributed, as the recipes do) and
all-reduces in a loop. MODE ``kill``: rank 1 SIGKILLs itself; ``stop``: rank 1 SIGSTOPs itself (a hung
peer); ``run``: nobody fails (the test kills the launcher).
"""
import os
import signal
import sys
import time

import torch

from runtime.distributed import all_reduce_sum, init_distributed
from runtime.errors import run_main


def main(argv):
    mode, timeout_min, pid_dir = argv[0], float(argv[1]), argv[2]
    env = init_distributed(backend="gloo", timeout_minutes=timeout_min)
    with open(os.path.join(pid_dir, f"rank{env.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    all_reduce_sum(torch.ones(1))
    if env.rank == 1 and mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if env.rank == 1 and mode == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    deadline = time.time() + 120
    while time.time() < deadline:
        all_reduce_sum(torch.ones(1))
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
