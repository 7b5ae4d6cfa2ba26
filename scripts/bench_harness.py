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
``count_flops``        model FLOPs of one ``step(i)`` (``torch.utils.flop_counter.FlopCounterMode``:
                       matmuls, convolutions, attention; elementwise ops count zero)
``cpu_peak_gflops``    a float32 matmul microbenchmark at the current torch thread count (best of
                       repeats); ``main`` measures it once per run and hands it to the phase processes
``GPU_PEAK_TFLOPS``    NVIDIA datasheet peaks (dense, no sparsity) of A100 and H100 in fp32, tf32, bf16
``flop_figures``       ``<phase>_gflop_per_step``, ``<phase>_gflops`` (achieved: FLOPs per step / seconds
                       per step) and ``<phase>_peak_fraction``; ``measure_flops`` counts the FLOPs by
                       calling the timed steps once more, after (outside) the timing. On CPU both the
                       peak and the step are timed in CPU seconds per thread (a shared machine
                       stretches wall time); a GPU step would be timed in wall seconds
``compare_allocators`` runs a BENCH command under each ``MOLRECIPES_ALLOCATOR`` (scripts/env.sh), rounds
                       interleaved, and prints each figure's median and paired ratio to the first one:
                       ``python scripts/bench_harness.py --allocators system,jemalloc --rounds 3 -- CMD``
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
from typing import Callable, List, Optional, Sequence, Tuple

PEAK_ENV = "MOLRECIPES_CPU_PEAK_GFLOPS"  # the parent's CPU peak, so every phase process uses the same one
# Dense Tensor Core / CUDA core peaks, TFLOP/s, from NVIDIA's A100 (SXM and PCIe) and H100 datasheets;
# the datasheets' larger TF32/BF16 figures are "with sparsity", twice these.
GPU_PEAK_TFLOPS = {
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},  # SXM5
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},  # the same compute as H100 SXM5
}


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


def count_flops(step: Callable[[int], object], indices: Sequence[int] = (0,)) -> float:
    """Model FLOPs of ``step(i)`` (forward and backward, counted by torch's FlopCounterMode), the mean
    over ``indices`` (steps may see batches of other sizes)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _TotalOnly()
    with counter:
        for i in indices:
            step(i)
    return counter.get_total_flops() / len(indices)


class _TotalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks fail inside
    ``torch.autograd.grad`` (forces as -dE/dpos); only the total is used here."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cpu_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Best float32 ``size x size`` matmul rate (GFLOP/s) at the current torch thread count, timed in
    CPU seconds per thread (like :func:`cpu_seconds_per_thread`), so other jobs on the cores do not
    lower it."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        torch.mm(a, b, out=out)
        best = min(best, time.process_time() - c0)
    return 2 * size ** 3 / (best / torch.get_num_threads()) / 1e9


def cpu_seconds_per_thread(cpu_seconds: float) -> float:
    """A step's CPU seconds (all threads) per torch thread: its duration had it had the cores to itself."""
    import torch
    return cpu_seconds / torch.get_num_threads()


def gpu_peak_gflops(device_name: str, precision: str) -> Optional[float]:
    """Datasheet peak (GFLOP/s) of a CUDA device by name for ``fp32``/``tf32``/``bf16``; None if unknown."""
    for key in ("H100 PCIe", "H100 NVL", "H100", "H200", "A100"):  # most specific first
        if all(word in device_name for word in key.split()):
            return GPU_PEAK_TFLOPS[key][precision] * 1e3
    return None


def device_peak_gflops(device: str = "cpu", precision: str = "fp32") -> Optional[float]:
    """The peak this run compares against: CUDA from the table, CPU measured (once per run, see ``main``)."""
    if device.startswith("cuda"):
        import torch
        return gpu_peak_gflops(torch.cuda.get_device_name(torch.device(device)), precision)
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    os.environ[PEAK_ENV] = repr(cpu_peak_gflops())
    return float(os.environ[PEAK_ENV])


def flop_figures(phase: str, flops: int, seconds: float, peak_gflops: Optional[float]) -> dict:
    """The FLOP columns of a BENCH line: per step, achieved rate, fraction of ``peak_gflops``."""
    achieved = flops / seconds / 1e9
    out = {f"{phase}_gflop_per_step": flops / 1e9, f"{phase}_gflops": achieved}
    if peak_gflops:
        out.update({f"{phase}_peak_fraction": achieved / peak_gflops, "peak_gflops": peak_gflops})
    return out


def measure_flops(phase: str, step: Callable[[int], object], indices: Sequence[int], seconds: float,
                  device: str = "cpu", precision: str = "fp32") -> dict:
    """:func:`flop_figures` of ``step`` at the timed ``indices`` (called again, after the timing) and
    ``seconds`` per step (CPU: :func:`cpu_seconds_per_thread` of the median) against this device's peak."""
    return flop_figures(phase, count_flops(step, indices), seconds, device_peak_gflops(device, precision))


def compare_allocators(command: Sequence[str], allocators: Sequence[str], rounds: int, log=print) -> dict:
    """Medians and ratios (to ``allocators[0]``) of ``command``'s BENCH figures under each allocator."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from runtime.compare import parse_bench, summarise

    launcher = ["bash", "-c", 'source "$0" && exec "$@"', os.path.join(root, "scripts", "env.sh")]
    runs = {a: [] for a in allocators}
    for r in range(rounds):
        for name in allocators:
            env = dict(os.environ, MOLRECIPES_ALLOCATOR=name)
            env.setdefault("OMP_NUM_THREADS", "1")
            out = subprocess.run(launcher + list(command), env=env, stdout=subprocess.PIPE, text=True, check=True)
            runs[name].append(parse_bench(out.stdout, root))
            log(f"round {r + 1}/{rounds} {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in runs[name][-1].items()))
    reference = allocators[0]
    summary = {name: summarise([{"round": i, "tree": tree, "figures": figures}
                                for tree, label in (("baseline", reference), ("working", name))
                                for i, figures in enumerate(runs[label])]) for name in allocators[1:]}
    figures = list(summary[allocators[1]]) if len(allocators) > 1 else list(runs[reference][0])
    log("| figure | " + " | ".join(f"{a} (ratio, paired)" if a != reference else a for a in allocators) + " |")
    log("|---" * (len(allocators) + 1) + "|")
    for fig in figures:
        cells = [f"{statistics.median(f[fig] for f in runs[reference]):.4g}"]
        cells += [f"{summary[a][fig]['working']:.4g} ({summary[a][fig]['ratio']:.3f}, {summary[a][fig]['paired']:.3f})"
                  for a in allocators[1:]]
        log(f"| {fig} | " + " | ".join(cells) + " |")
    return {"runs": runs, "summary": summary}


def main(script: str, args, argv, phases: Sequence[str], run_phase: Callable, profile_phase: Callable) -> int:
    """Drive ``script`` (a bench_model.py) for ``args.phase`` (one of ``phases`` or ``both``)."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if not args.profile and not os.environ.get(PEAK_ENV):
        import torch
        torch.set_num_threads(args.threads)
        os.environ[PEAK_ENV] = repr(cpu_peak_gflops())  # inherited by the phase processes
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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="compare allocators on a BENCH command (see compare_allocators)")
    parser.add_argument("--allocators", default="system,glibc,jemalloc,tcmalloc")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the runs and medians to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND printing one 'BENCH {json}' line")
    cli = parser.parse_args()
    record = compare_allocators(cli.command[1:] if cli.command[:1] == ["--"] else cli.command,
                                cli.allocators.split(","), cli.rounds)
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(record, f, indent=2)
