"""One GPU check: every CUDA-only test, then each recipe's training and inference benchmark, one table.

    bash scripts/gpu_check.sh [--out results/gpu_check] [--quick] [--share_gpu] [--dry_run]

Steps, each in its own process (a failure is recorded in the table, and the check goes on):

1. ``pytest -m cuda tests``: every test marked CUDA-only (they skip without a GPU).
2. Correctness rows: bf16 and fp16 autocast against fp32 (``tests/test_precision.py`` on CUDA, stated
   bounds); MoFlow graphed against eager at ``--accumulate_grad_batches 2`` (gradients compared, and a
   graphed training run that fails if no graph was captured); ten training steps of every recipe
   under ``torch.cuda.set_sync_debug_mode("error")`` (``MOLRECIPES_SYNC_DEBUG``); a resume on CUDA
   (``--ckpt_steps 2``, then resume) and ``evaluate`` and ``predict`` from its checkpoint, per recipe;
   GemNet-T with its scale-factor fit, and a graph_parallel run with evaluation.
3. Benchmarks at a short setting, FP32 and AMP, plus the CUDA-only variants: MoFlow training with
   CUDA graphs and with ``--compile``, MoFlow generation with CUDA graphs; SE(3)-Transformer training
   and inference (``--compile`` too); graph_parallel DimeNet++ and GemNet-T training on NCCL at
   gp_size 1, and at gp_size 2 under torchrun when two GPUs are visible.
4. ``--share_gpu`` (opt-in): two ranks on the one GPU over gloo (``MOLRECIPES_SHARE_GPU=1``): DDP with
   accumulation and ``--max_minutes``, ``--gp_size 2`` for all three graph_parallel models, and one
   rank raising alone (its ``error:`` line must appear and both ranks end).
5. ``OUT/summary.md`` and ``OUT/summary.json``: pass/fail, throughput, latency p50/p99, peak memory of
   every row, beside NVIDIA's published A100 figures where they exist (MoFlow: 4,524 molecules/s
   training with AMP at batch 512, 12,524 molecules/s inference; SE(3): 3.23 molecules/ms training
   with AMP at batch 240, 9.71 molecules/ms inference at batch 1600).

``--quick`` fits one H100 in about 8 minutes: 3 warm-up and 10 timed steps, 120 s per row, one
``--compile`` row. ``--dry_run`` lists every row and runs the plumbing on CPU at toy sizes (FP32 rows
that need no CUDA; the others are listed as not run), so CI proves the script works where no GPU is
lent. Exit code: 0 when no row failed.
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
    expect_error: str = ""      # the row passes when the command fails with this text in its output
    forbid: str = ""            # the row fails when its output holds this text


@dataclass
class Plan:
    rows: List[Row] = field(default_factory=list)


def cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def plan(out: str, dry: bool, gpus: int, quick: bool = False, share_gpu: bool = False) -> Plan:
    """Every row of the check, with its command line."""
    py = sys.executable
    p = Plan()
    moflow_data = os.path.join(out, "data", "moflow")
    compile_rows: List[str] = []

    def add(recipe, phase, variant, cmd, needs_cuda=False, needs_gpus=1, unit="molecules/s", env=None, **checks):
        if "compile" in variant:
            compile_rows.append(variant)
        prefix = ["env", *[f"{k}={v}" for k, v in (env or {}).items()]] if env else []
        row = Row(recipe, phase, variant, " ".join(shlex.quote(c) for c in prefix + cmd), unit=unit,
                  reference=NVIDIA_A100.get((recipe, phase, variant), ""), **checks)
        if quick and "compile" in variant and len(compile_rows) > 1:
            row.status, row.note = "not run", "--quick: one --compile row only"
        elif share_gpu is False and env and "MOLRECIPES_SHARE_GPU" in env:
            row.status, row.note = "not run", "opt-in: --share_gpu"
        elif dry and (variant not in ("fp32", "check") or needs_cuda):
            row.status, row.note = "not run", "dry run: FP32 rows without CUDA-only parts"
        elif needs_cuda and gpus == 0:
            row.status, row.note = "skipped", "no CUDA device"
        elif gpus < needs_gpus and not dry:
            row.status, row.note = "skipped", f"needs {needs_gpus} GPUs, {gpus} visible"
        else:
            row.status = "pending"
        p.rows.append(row)

    def log(name):
        return ["--log_dir", os.path.join(out, "logs", name), "--silent"]

    warmup, timed = ("1", "2") if dry else ("3", "10") if quick else ("10", "50")
    steps = ["--benchmark_warmup", warmup, "--benchmark_steps", timed]
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

    # ---- correctness on the GPU -----------------------------------------------------------------------
    add("all", "amp vs fp32", "check", [*tests, "-s", os.path.join(ROOT, "tests", "test_precision.py")],
        needs_cuda=True, env={"MOLRECIPES_TEST_DEVICE": "cuda"})
    add("moflow", "graphed vs eager", "check",
        [*tests, os.path.join(ROOT, "tests", "moflow", "test_cuda_graphs.py")], needs_cuda=True)

    # MoFlow: the reference zinc250k config at batch 512 (NVIDIA's setting) on the embedded ZINC-like sample
    mf = ["--dataset", "sample", "--data_dir", moflow_data]
    mf_small = ["--preset", "qm9_quick", "--b_n_squeeze", "5"]
    mf_model = mf_small if dry else ["--preset", "zinc250k"]
    mf_ckpt = os.path.join(out, "logs", "moflow_resume", "checkpoint.pt")
    mf_run = ["-m", "moflow.train", *mf, *mf_small, "--batch_size", "16", "--val_samples", "8",
              "--save_ckpt_path", mf_ckpt]
    add("moflow", "graphed training", "check",
        [py, "-m", "moflow.train", *mf, *mf_small, "--batch_size", "16", "--cuda_graphs", "--cuda_graph_warmup", "2",
         "--accumulate_grad_batches", "2", "--max_steps", "6", *log("moflow_graphed")],
        needs_cuda=True, forbid="no CUDA graph was captured")
    add("moflow", "sync debug", "check", [py, "-m", "moflow.train", *mf, *mf_small, "--batch_size", "16",
                                          "--max_steps", "10", "--log_interval", "5", *log("moflow_sync")],
        needs_cuda=True, env={"MOLRECIPES_SYNC_DEBUG": "error"})
    add("moflow", "resume", "fp32", [py, *mf_run, "--max_steps", "2", "--ckpt_steps", "2", *log("moflow_resume")])
    add("moflow", "resume", "check", [py, *mf_run, "--max_steps", "4", "--load_ckpt_path", mf_ckpt,
                                      *log("moflow_resume")])
    add("moflow", "evaluate", "fp32", [py, "-m", "moflow.evaluate", "--load_ckpt_path", mf_ckpt, "--num_samples", "16",
                                       "--num_molecules", "32", *log("moflow_evaluate")])
    add("moflow", "predict", "fp32", [py, "-m", "moflow.predict", "--load_ckpt_path", mf_ckpt, "--num_samples", "16",
                                      "--output", os.path.join(out, "logs", "moflow_predict", "molecules.smi"),
                                      *log("moflow_predict")])
    mf_bs = ["--batch_size", "16" if dry else "512"]
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
    se3_tiny = ["--num_layers", "1", "--num_degrees", "2", "--num_channels", "8", "--num_heads", "2",
                "--num_molecules", "60"]
    se3_model = se3_tiny if dry else []
    se3_ckpt = os.path.join(out, "se3_transformer.pt")
    se3_run = ["-m", "se3_transformer.train", "--dataset", "sample", *se3_tiny, "--batch_size", "8",
               "--save_ckpt_path", se3_ckpt]
    add("se3_transformer", "sync debug", "check", [py, "-m", "se3_transformer.train", "--dataset", "sample",
                                                   *se3_tiny, "--batch_size", "4", "--max_steps", "10",
                                                   "--log_interval", "5", *log("se3_sync")],
        needs_cuda=True, env={"MOLRECIPES_SYNC_DEBUG": "error"})
    add("se3_transformer", "resume", "fp32", [py, *se3_run, "--max_steps", "2", "--ckpt_steps", "2",
                                              *log("se3_resume")])
    add("se3_transformer", "resume", "check", [py, *se3_run, "--max_steps", "4", "--load_ckpt_path", se3_ckpt,
                                               *log("se3_resume")])
    add("se3_transformer", "evaluate", "fp32", [py, "-m", "se3_transformer.evaluate", "--load_ckpt_path", se3_ckpt,
                                                "--split", "val", *log("se3_evaluate")])
    add("se3_transformer", "predict", "fp32", [py, "-m", "se3_transformer.predict", "--load_ckpt_path", se3_ckpt,
                                               "--split", "val", *log("se3_predict")])
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+compile", ["--amp", "--compile"])):
        add("se3_transformer", "train", variant,
            [py, "-m", "se3_transformer.train", "--dataset", "sample", *se3_model, "--batch_size",
             "8" if dry else "240", "--benchmark", *steps, *extra, *log(f"se3_train_{variant}")])
    for variant, extra in (("fp32", []), ("amp", ["--amp"]), ("amp+compile", ["--amp", "--compile"])):
        add("se3_transformer", "inference", variant,
            [py, "-m", "se3_transformer.evaluate", "--load_ckpt_path", se3_ckpt, "--split", "train",
             "--batch_size", "8" if dry else "1600", "--benchmark", *steps, *extra, *log(f"se3_inference_{variant}")])

    # graph_parallel: DimeNet++ and GemNet-T (scale-factor fit) on the embedded EMT data, NCCL at gp_size 1
    gp_small = ["--preset", "small", "--cutoff", "4.5", "--max_neighbors", "20"]
    gp_model = gp_small if dry else ["--preset", "base"]
    gp_ckpt = os.path.join(out, "logs", "gp_resume", "checkpoint.pt")
    gp_run = ["-m", "graph_parallel.train", "--model", "gemnet_t", *gp_small, "--batch_size", "2",
              "--fit_scale_batches", "2", "--save_ckpt_path", gp_ckpt]
    add("graph_parallel", "sync debug", "check", [py, "-m", "graph_parallel.train", *gp_small, "--batch_size", "2",
                                                  "--max_steps", "10", "--log_interval", "5", *log("gp_sync")],
        needs_cuda=True, env={"MOLRECIPES_SYNC_DEBUG": "error"})
    add("graph_parallel", "resume", "fp32", [py, *gp_run, "--max_steps", "2", "--ckpt_steps", "2", *log("gp_resume")])
    add("graph_parallel", "resume", "check", [py, *gp_run, "--max_steps", "4", "--load_ckpt_path", gp_ckpt,
                                              *log("gp_resume")])
    add("graph_parallel", "evaluate", "fp32", [py, "-m", "graph_parallel.evaluate", "--load_ckpt_path", gp_ckpt,
                                               *log("gp_evaluate")], unit="structures/s")
    add("graph_parallel", "predict", "fp32", [py, "-m", "graph_parallel.predict", "--load_ckpt_path", gp_ckpt,
                                              *log("gp_predict")], unit="structures/s")
    for model in ("dimenetpp", "gemnet_t"):
        gp = ["--model", model, *gp_model, "--batch_size", "2" if dry or model != "dimenetpp" else "8",
              "--benchmark", *steps]
        for variant, extra in (("fp32", []), ("amp", ["--amp"])):
            add("graph_parallel", "train", f"{variant}" if model == "dimenetpp" else f"{variant} {model}",
                [py, "-m", "graph_parallel.train", *gp, *extra, *log(f"gp_train_gp1_{model}_{variant}")],
                unit="structures/s", needs_cuda=model != "dimenetpp" and dry)
            add("graph_parallel", "train", f"{variant} gp_size 2" + ("" if model == "dimenetpp" else f" {model}"),
                [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                 "graph_parallel.train", "--gp_size", "2", *gp, *extra, *log(f"gp_train_gp2_{model}_{variant}")],
                needs_gpus=2, unit="structures/s")

    # ---- two ranks on one GPU over gloo (--share_gpu) --------------------------------------------------
    share = {"MOLRECIPES_SHARE_GPU": "1"}
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    add("moflow", "2 ranks, 1 GPU", "check", [*torchrun, *mf_run[:-2], "--accumulate_grad_batches", "2",
                                              "--max_minutes", "1", "--max_steps", "6", *log("share_moflow")],
        needs_cuda=True, env=share)
    add("se3_transformer", "2 ranks, 1 GPU", "check",
        [*torchrun, *se3_run[:-2], "--accumulate_grad_batches", "2", "--max_steps", "4", *log("share_se3")],
        needs_cuda=True, env=share)
    for model in ("dimenetpp", "gemnet_t", "gemnet_dt"):
        add("graph_parallel", "2 ranks, 1 GPU", f"gp_size 2 {model}",
            [*torchrun, "-m", "graph_parallel.train", "--model", model, "--gp_size", "2", *gp_small, "--batch_size",
             "2", "--fit_scale_batches", "2", "--max_steps", "4", *log(f"share_gp_{model}")], needs_cuda=True, env=share)
    add("graph_parallel", "one rank raises", "check",
        [*torchrun, "-m", "graph_parallel.train", "--gp_size", "2", *gp_small, "--batch_size", "2", "--max_steps", "4",
         *log("share_raise")], needs_cuda=True, env={**share, "MOLRECIPES_RAISE_AT": "logger:1"},
        expect_error="error: injected failure at logger")
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
    with open(log_path) as f:
        output = f.read()
    if row.expect_error:
        ok = code != 0 and code != "timeout" and row.expect_error in output
        row.status = "ok" if ok else "failed"
        row.note = "" if ok else f"expected a failure with {row.expect_error!r}, got exit {code} ({log_path})"
        return
    if code == 0 and row.forbid and row.forbid in output:
        code = f"0, but the output says {row.forbid!r}"
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
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per row (default: 900, or 120 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="about 8 minutes on one H100: 3 warm-up + 10 timed steps, 120 s per row, one compile row")
    parser.add_argument("--share_gpu", action="store_true",
                        help="also run the two-rank rows with both ranks on cuda:0 over gloo")
    parser.add_argument("--skip_tests", action="store_true", help="leave out the CUDA-only pytest run")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    gpus = cuda_devices()
    if not args.dry_run and gpus == 0:
        print("gpu_check: no CUDA device is visible; run with --dry_run for the CPU plumbing check", file=sys.stderr)
        return 2
    steps = plan(out, args.dry_run, gpus, quick=args.quick, share_gpu=args.share_gpu)
    timeout = args.timeout or (120 if args.quick else 900)
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
        run(row, out, timeout)
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
