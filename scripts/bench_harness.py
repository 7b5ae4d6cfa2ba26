"""What every ``scripts/<recipe>/bench_model.py`` shares: step timing, memory, profiler tables, the phase driver.

=====================  ===============================================================================
piece                  contract
=====================  ===============================================================================
``rss_mb``             this process's resident set now (MB); ``peak_rss_mb``: its peak so far
``timed``              calls ``step(i)`` for i = 0 .. warmup + steps - 1; returns the wall and CPU
                       seconds of each timed call (lists) and the RSS before the first call
``percentile``         linear-interpolated percentile of a list (q in [0, 1])
``label``              wraps ``owner.name`` (a class's method or a module's function) in a
                       ``record_function("## <text>")`` range, so profiles group time by layer
``profile_steps``      warm-up, then ``steps`` calls under torch.profiler (CPU); (profile, wall s/step)
``print_profile``      two Markdown tables: top ops by self CPU time, then the ``## `` ranges by total
``main``               ``--phase both`` runs every phase in its own child process (each peak RSS its own)
                       and merges their ``BENCH {json}`` lines into one; a single phase prints its own
                       line, or its profile with ``--profile``
=====================  ===============================================================================

Standard library only (torch is imported lazily), and never a recipe: under ``runtime.compare`` the
recipe code comes from the tree under test (``PYTHONPATH``) while this file, like the script that
imports it, always comes from the working tree, so both trees are measured by the same harness.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, List, Sequence, Tuple


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(step: Callable[[int], object], warmup: int, steps: int) -> Tuple[List[float], List[float], float]:
    """Wall and CPU seconds of each of ``steps`` calls after ``warmup`` untimed ones, and the RSS before.
    CPU time (this process, all its threads) is less disturbed than wall time by other jobs on a shared
    machine; with one thread it is the work itself."""
    before = rss_mb()
    wall, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu, before


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def label(owner, name: str, text: str) -> None:
    """Profile ``owner.name`` as the range ``## text``."""
    from torch.profiler import record_function

    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        with record_function(f"## {text}"):
            return fn(*args, **kwargs)
    setattr(owner, name, wrapper)


def profile_steps(step: Callable[[int], object], warmup: int, steps: int):
    """(torch.profiler profile of ``steps`` calls after ``warmup`` untimed ones, wall seconds per call)."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        wall = (time.perf_counter() - t0) / steps
    return prof, wall


def print_profile(prof, steps: int, rows: int, ranges_header: str, digits: int = 2) -> None:
    """Top ``rows`` ops by self CPU time, then the top ``## `` ranges (see :func:`label`) by total time."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted((e for e in events if not e.key.startswith("## ")), key=lambda e: -e.self_cpu_time_total)
    print("| op | self CPU share | self ms/step | calls/step |\n|---|---|---|---|")
    for e in ops[:rows]:
        print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f} % | "
              f"{e.self_cpu_time_total / 1e3 / steps:.{digits}f} | {e.count // steps} |")
    ranges = sorted((e for e in events if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total)
    print(f"\n| {ranges_header} |\n|---|---|---|---|")
    for e in ranges[:rows]:
        print(f"| `{e.key[3:]}` | {100 * e.cpu_time_total / total:.1f} % | "
              f"{e.cpu_time_total / 1e3 / steps:.{digits}f} | {e.count // steps} |")


def main(script: str, args, argv, phases: Sequence[str], run_phase: Callable, profile_phase: Callable) -> int:
    """Drive ``script`` (a bench_model.py) for ``args.phase`` (one of ``phases`` or ``both``)."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.phase != "both":
        if args.profile:
            profile_phase(args)
        else:
            print("BENCH " + json.dumps(run_phase(args)), flush=True)
        return 0
    figures = {}
    argv = list(sys.argv[1:] if argv is None else argv)
    for phase in phases:
        out = subprocess.run([sys.executable, os.path.abspath(script), *argv, "--phase", phase],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        if args.profile:
            print(out, flush=True)
            continue
        lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
        figures.update(json.loads(lines[-1][len("BENCH "):]))
    if not args.profile:
        print("BENCH " + json.dumps(figures), flush=True)
    return 0
