"""scripts/perf_table.py: cells from a runtime.compare record, the README block kept and rewritten,
and one real (tiny) MoFlow comparison through its benchmark script."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import perf_table  # noqa: E402

SUMMARY = {  # runtime.compare's summary: working / baseline medians, ratio, paired
    "train_cpu_ms": {"baseline": 400.0, "working": 200.0, "ratio": 0.5, "paired": 0.4, "rounds": 3},
    "train_peak_memory_mb": {"baseline": 500.0, "working": 400.0, "ratio": 0.8, "paired": 0.8, "rounds": 3},
    "train_gflop_per_step": {"baseline": 15.0, "working": 14.96, "ratio": 1.0, "paired": 1.0, "rounds": 3},
    "train_gflops": {"baseline": 9.0, "working": 17.34, "ratio": 2.0, "paired": 2.0, "rounds": 3},
    "train_peak_fraction": {"baseline": 0.3, "working": 0.526, "ratio": 2.0, "paired": 2.0, "rounds": 3},
}
README = f"""# title

before
{perf_table.START}
| recipe, path | old header |
|---|---|
| MoFlow qm9, training step, batch 128 | 1.1x | -1 % | 1 | 1 | 0.1 | was 1.12x of NVIDIA's | `old` |
| SE(3) default, inference, batch 32 | 1.68x | -3 % | 15.3 | 9.6 | 0.33 | a \\| b | `cmd` |

- `se3_inference`: kept note
- `moflow_train`: old note
{perf_table.END}
after
"""


def record(summary=SUMMARY):
    return {"summary": summary, "rounds": 3, "omp_num_threads": "1", "working_head": "abcdef0123", "working_dirty": True}


def test_cells_from_a_compare_summary():
    cells = perf_table.row_cells(perf_table.ROWS["moflow_train"], SUMMARY, "11b8e8f")
    assert cells == ["MoFlow qm9, training step, batch 128", "2.00x (paired 2.50x)", "-20 %", "15.0", "17.3",
                     "0.53", "", "`bash scripts/moflow/benchmark_training.sh --baseline 11b8e8f`"]
    close = dict(SUMMARY, train_cpu_ms=dict(SUMMARY["train_cpu_ms"], paired=0.49))
    assert perf_table.row_cells(perf_table.ROWS["moflow_train"], close, "x")[1] == "2.00x"  # paired within 5 %
    no_flops = {k: v for k, v in SUMMARY.items() if "flop" not in k and "peak_fraction" not in k}
    assert perf_table.row_cells(perf_table.ROWS["moflow_train"], no_flops, "x")[3:6] == ["-", "-", "-"]


def test_regenerating_one_row_keeps_the_others_and_the_reference_cell():
    calls = []

    def run(job, baseline, rounds, bench_args):
        calls.append((job.script, baseline, rounds, tuple(bench_args)))
        return record()
    text = perf_table.regenerate(["moflow_train"], "11b8e8f", 3, ["--steps", "2"], README, "python x", run=run)
    assert calls == [("scripts/moflow/benchmark_training.sh", "11b8e8f", 3, ("--steps", "2"))]
    assert text.startswith("# title\n\nbefore\n") and text.endswith("\nafter\n")
    _, rows, notes, _ = perf_table.read_block(text)
    assert rows["MoFlow qm9, training step, batch 128"][1:7] == ["2.00x (paired 2.50x)", "-20 %", "15.0", "17.3",
                                                                "0.53", "was 1.12x of NVIDIA's"]
    assert rows["SE(3) default, inference, batch 32"] == ["SE(3) default, inference, batch 32", "1.68x", "-3 %",
                                                          "15.3", "9.6", "0.33", "a \\| b", "`cmd`"]
    assert notes["se3_inference"] == "- `se3_inference`: kept note"
    assert "old note" not in notes["moflow_train"] and "`python x`" in notes["moflow_train"]
    assert "OMP_NUM_THREADS=1" in notes["moflow_train"] and "3 round(s)" in notes["moflow_train"]
    assert "| recipe, path | vs `11b8e8f` (CPU time) | peak memory | GFLOP/step | GFLOP/s | fraction of CPU peak |" in text
    # rows come out in ROWS order and a second pass reads back what the first wrote
    assert text.index("MoFlow qm9, training") < text.index("SE(3) default, inference")
    assert perf_table.read_block(perf_table.regenerate([], "11b8e8f", None, [], text, "y"))[1:3] == (rows, notes)


def test_one_run_feeds_both_dimenet_rows():
    jobs = []
    summary = {f"{p}_{k}": v for p in ("train", "inference") for k, v in
               (("cpu_ms", SUMMARY["train_cpu_ms"]), ("peak_memory_mb", SUMMARY["train_peak_memory_mb"]))}
    text = perf_table.regenerate(["dimenetpp_train_8", "dimenetpp_inference_8"], "r", None, [], README, "z",
                                 run=lambda job, *a: jobs.append(job) or record(summary))
    assert len(jobs) == 1 and jobs[0].env == {"BATCH_SIZE": "8"}
    assert "| DimeNet++ base, inference, batch 8 | 2.00x (paired 2.50x) | -20 % | - | - | - | - |" in text


def test_a_readme_without_the_markers_is_refused():
    with pytest.raises(SystemExit, match="perf-table:start"):
        perf_table.read_block("# no table here\n")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_real_moflow_row_through_its_benchmark_script(tmp_path):
    """benchmark_training.sh --baseline HEAD, one round, one tiny step: the parser reads the real output."""
    readme = tmp_path / "README.md"
    readme.write_text(README)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "perf_table.py"), "--baseline", "HEAD",
                    "--rows", "moflow_train", "--rounds", "1", "--bench_args", "--steps 1 --warmup 0 --batch_size 4",
                    "--write", str(readme)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    _, rows, notes, _ = perf_table.read_block(readme.read_text())
    cells = rows["MoFlow qm9, training step, batch 128"]
    assert cells[1].endswith("x") or "(paired" in cells[1]
    assert float(cells[1].split("x")[0]) > 0 and cells[2].endswith(" %")
    assert float(cells[3]) > 0 and float(cells[4]) > 0 and float(cells[5]) > 0   # GFLOP/step, GFLOP/s, fraction
    assert cells[6] == "was 1.12x of NVIDIA's"
    assert "--bench_args '--steps 1 --warmup 0 --batch_size 4'" in notes["moflow_train"]
    assert notes["se3_inference"] == "- `se3_inference`: kept note"
