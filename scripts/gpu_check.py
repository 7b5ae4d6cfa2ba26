"""One GPU check: every CUDA-only test, then each recipe's training and inference benchmark, one table.

    bash scripts/gpu_check.sh [--out results/gpu_check] [--dry_run]

Steps, each in its own process (a failure is recorded in the table, and the check goes on):

1. ``pytest -m cuda tests``: every test marked CUDA-only (they skip without a GPU).
2. Benchmarks at a short setting, FP32 and AMP, plus the CUDA-only variants: MoFlow training with
   CUDA graphs and with ``--compile``, MoFlow generation with CUDA graphs; SE(3)-Transformer training
   and inference (``--compile`` too); graph_parallel DimeNet++ training on NCCL at gp_size 1, and at
   gp_size 2 under torchrun when two GPUs are visible.
3. ``OUT/summary.md`` and ``OUT/summary.json``: throughput, latency p50/p99, peak memory and status of
   every row, beside NVIDIA's published A100 figures where they exist (MoFlow: 4,524 molecules/s
   training with AMP at batch 512, 12,524 molecules/s inference; SE(3): 3.23 molecules/ms training
   with AMP at batch 240, 9.71 molecules/ms inference at batch 1600).

``--dry_run`` runs the same plumbing on CPU at toy sizes, FP32 rows only (the others are listed as not
run), so CI proves the script works where no GPU is lent. Exit code: 0 when no row failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime.logging import read_dllogger  # noqa: E402

NVIDIA_A100 = {("moflow", "train", "amp"): "4,524 molecules/s (AMP, batch 512)",
               ("moflow", "inference", "amp"): "12,524 molecules/s",
               ("se3_transformer", "train", "amp"): "3,230 molecules/s (3.23/ms, AMP, batch 240)",
               ("se3_transformer", "inference", "amp"): "9,710 molecules/s (9.71/ms, batch 1600)"}


@dataclass
class Row:
    recipe: str
    phase: str
    variant: str
    command: str
    status: str = "not run"
    seconds: float = 0.0
    throughput: Optional[float] = None
    unit: str = ""
    latency_p50_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    reference: str = ""
    note: str = ""


@dataclass
class Plan:
    rows: List[Row] = field(default_factory=list)


def cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def plan(out: str, dry: bool, gpus: int) -> Plan:
    """Every row of the check, with its command line."""
    py = sys.executable
    p = Plan()
    moflow_data = os.path.join(out, "data", "moflow")

    def add(recipe, phase, variant, cmd, needs_cuda=False, needs_gpus=1, unit="molecules/s"):
        row = Row(recipe, phase, variant, " ".join(shlex.quote(c) for c in cmd), unit=unit,
                  reference=NVIDIA_A100.get((recipe, phase, variant), ""))
        if dry and variant != "fp32":
            row.status, row.note = "not run", "dry run: FP32 rows only"
        elif needs_cuda and gpus == 0:
            row.status, row.note = "skipped", "no CUDA device"
        elif gpus < needs_gpus and not dry:
            row.status, row.note = "skipped", f"needs {needs_gpus} GPUs, {gpus} visible"
        else:
            row.status = "pending"
        p.rows.append(row)

    def log(name):
        return ["--log_dir", os.path.join(out, "logs", name), "--silent"]

    # MoFlow: the reference zinc250k config at batch 512 (NVIDIA's setting) on the embedded ZINC-like sample
    mf = ["--dataset", "sample", "--data_dir", moflow_data]
    mf_model = ["--preset", "qm9_quick", "--b_n_squeeze", "5"] if dry else ["--preset", "zinc250k"]
    mf_bs = ["--batch_size", "16" if dry else "512"]
    steps = ["--benchmark_warmup", "1" if dry else "10", "--benchmark_steps", "2" if dry else "50"]
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+cuda_graphs", ["--amp", "--cuda_graphs",
                                                                                   "--cuda_graph_warmup", "5"]),
                           ("amp+compile", ["--amp", "--compile"])):
        add("moflow", "train", variant, [py, "-m", "moflow.train", *mf, *mf_model, *mf_bs, "--benchmark", *steps,
                                         *extra, *log(f"moflow_train_{variant}")],
            needs_cuda="cuda_graphs" in variant)
    infer_bs = ["--batch_size", "16" if dry else "512"]
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+cuda_graphs", ["--amp", "--cuda_graphs"]),
                           ("amp+compile", ["--amp", "--compile"])):
        add("moflow", "inference", variant,
            [py, "-m", "moflow.predict", "--allow_untrained", *(["--preset", "qm9_quick"] if dry else
                                                               ["--preset", "zinc250k"]),
             *infer_bs, "--benchmark", *steps, *extra, *log(f"moflow_inference_{variant}")],
            needs_cuda="cuda_graphs" in variant)

    # SE(3): NVIDIA's default model at batch 240 (training) and 1600 (inference) on the embedded QM9 sample
    se3_model = ["--num_layers", "1", "--num_degrees", "2", "--num_channels", "8", "--num_heads", "2",
                 "--num_molecules", "60"] if dry else []
    se3_ckpt = os.path.join(out, "se3_transformer.pt")
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+compile", ["--amp", "--compile"])):
        add("se3_transformer", "train", variant,
            [py, "-m", "se3_transformer.train", "--dataset", "sample", *se3_model, "--batch_size",
             "8" if dry else "240", "--benchmark", *steps, *extra, *log(f"se3_train_{variant}")])
    add("se3_transformer", "checkpoint", "fp32",
        [py, "-m", "se3_transformer.train", "--dataset", "sample", *se3_model, "--epochs", "1", "--max_steps", "2",
         "--batch_size", "8", "--save_ckpt_path", se3_ckpt, *log("se3_checkpoint")])
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+compile", ["--amp", "--compile"])):
        add("se3_transformer", "inference", variant,
            [py, "-m", "se3_transformer.evaluate", "--load_ckpt_path", se3_ckpt, "--split", "train",
             "--batch_size", "8" if dry else "1600", "--benchmark", *steps, *extra, *log(f"se3_inference_{variant}")])

    # graph_parallel: DimeNet++ base on the embedded EMT data, NCCL at gp_size 1 (and 2 on two GPUs)
    gp_model = ["--preset", "small", "--cutoff", "4.5", "--max_neighbors", "20"] if dry else ["--preset", "base"]
    gp = [*gp_model, "--batch_size", "2" if dry else "8", "--benchmark", *steps]
    for variant, extra in (("fp32", []), ("amp", ["--amp"])):
        add("graph_parallel", "train", variant,
            [py, "-m", "graph_parallel.train", *gp, *extra, *log(f"gp_train_gp1_{variant}")], unit="structures/s")
        add("graph_parallel", "train", f"{variant} gp_size 2",
            [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "graph_parallel.train",
             "--gp_size", "2", *gp, *extra, *log(f"gp_train_gp2_{variant}")], needs_gpus=2, unit="structures/s")
    return p


def figures(log_dir: str, phase: str) -> Dict[str, float]:
    names = [n for n in os.listdir(log_dir) if n.endswith("log.json")] if os.path.isdir(log_dir) else []
    data: Dict[str, float] = {}
    for name in names:
        for r in read_dllogger(os.path.join(log_dir, name)):
            if r.get("type") == "LOG" and r.get("step") == []:
                data.update(r["data"])
    key = "train" if phase == "train" else "inference"
    return {"throughput": data.get(f"{key}_throughput"), "p50": data.get(f"{key}_latency_p50"),
            "p99": data.get(f"{key}_latency_p99"), "memory": data.get("peak_memory_mb")}


def run(row: Row, out: str, timeout: float) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_path = os.path.join(out, "output", f"{row.recipe}_{row.phase}_{row.variant}.txt".replace(" ", "_"))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    started = time.time()
    with open(log_path, "w") as f:
        try:
            proc = subprocess.run(shlex.split(row.command), stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    row.seconds = round(time.time() - started, 1)
    if code != 0:
        row.status = "failed"
        with open(log_path) as f:
            tail = [line.strip() for line in f.read().splitlines() if line.strip()][-1:] or [str(code)]
        row.note = f"exit {code}: {tail[0][:200]} (full output: {log_path})"
        return
    row.status = "ok"
    if row.phase in ("train", "inference"):
        log_dir = shlex.split(row.command)[shlex.split(row.command).index("--log_dir") + 1]
        got = figures(log_dir, row.phase)
        row.throughput, row.latency_p50_ms, row.latency_p99_ms, row.peak_memory_mb = (
            got["throughput"], got["p50"], got["p99"], got["memory"])


def table(rows: List[Row]) -> str:
    def fmt(v, spec=",.1f"):
        return "" if v is None else format(v, spec)

    lines = ["| recipe | phase | variant | status | throughput | p50 ms | p99 ms | peak MB | NVIDIA A100 | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        thr = f"{fmt(r.throughput)} {r.unit}" if r.throughput is not None else ""
        lines.append(f"| {r.recipe} | {r.phase} | {r.variant} | {r.status} | {thr} | {fmt(r.latency_p50_ms)} | "
                     f"{fmt(r.latency_p99_ms)} | {fmt(r.peak_memory_mb, ',.0f')} | {r.reference} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/gpu_check", help="directory for logs, outputs and the summary")
    parser.add_argument("--dry_run", action="store_true", help="CPU plumbing check at toy sizes (FP32 rows only)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per step")
    parser.add_argument("--skip_tests", action="store_true", help="leave out the CUDA-only pytest run")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    gpus = cuda_devices()
    if not args.dry_run and gpus == 0:
        print("gpu_check: no CUDA device is visible; run with --dry_run for the CPU plumbing check", file=sys.stderr)
        return 2
    steps = plan(out, args.dry_run, gpus)
    py = sys.executable
    prepare = Row("moflow", "data", "fp32", " ".join(shlex.quote(c) for c in [
        py, "-m", "moflow.preprocess", "--dataset", "sample", "--data_dir", os.path.join(out, "data", "moflow")]
        + (["--max_molecules", "400", "--max_atoms", "20", "--max_nodes", "20"] if args.dry_run else [])))
    rows = [prepare]
    if not args.skip_tests:
        rows.append(Row("all", "cuda tests", "-", " ".join([py, "-m", "pytest", "-q", "-m", "cuda",
                                                              "-p", "no:cacheprovider", os.path.join(ROOT, "tests")])))
    rows += [r for r in steps.rows]
    print(f"gpu_check: {gpus} CUDA device(s); {'dry run on CPU' if args.dry_run else 'full run'}; output in {out}",
          flush=True)
    for row in rows:
        if row.status in ("skipped",) or (row.status == "not run" and row.note):
            continue
        print(f"--> {row.recipe} {row.phase} {row.variant}", flush=True)
        run(row, out, args.timeout)
        print(f"    {row.status} in {row.seconds} s {row.note}", flush=True)
    summary = table(rows)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump([asdict(r) for r in rows], f, indent=2)
    print(summary)
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
