"""Regenerate the root README's performance table from the benchmark scripts, all rows or some.

    python scripts/perf_table.py --baseline 11b8e8f --rows moflow_train,moflow_reverse --write
    python scripts/perf_table.py --list

Contract:
- Each row names a ``scripts/<recipe>/benchmark_*.sh --baseline REV`` run (``runtime.compare``: working
  tree against REV, interleaved, ``COMPARE_JSON`` kept); one run can feed several rows (DimeNet++ train
  and inference). ``--rounds`` and ``--bench_args`` (flags for the ``bench_model.py`` behind the script)
  are passed through.
- From that JSON, per row (phase ``p``): the speed-up in CPU time per step (``1 / ratio`` of
  ``p_cpu_ms``; in brackets the paired median when it differs by 5 % or more), peak memory change
  (``p_peak_memory_mb``), and of the working tree ``p_gflop_per_step``, ``p_gflops`` and
  ``p_peak_fraction`` (FLOP efficiency: achieved rate over the CPU matmul peak, ``peak_gflops``).
- The table lives between ``<!-- perf-table:start -->`` and ``<!-- perf-table:end -->`` in the README.
  Rows not regenerated keep their cells; the "vs the reference implementation" cell is never
  regenerated (it comes from the scripts named there) and is kept as written. Under the table, one
  line per row records when, where and how its figures were made; regenerated rows get a new one.
- ``--write [README]`` writes it (default: the root README.md); without, the new table is printed only.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
COLUMNS = ("recipe, path", "vs `{baseline}` (CPU time)", "peak memory", "GFLOP/step", "GFLOP/s",
           "fraction of CPU peak", "vs the reference implementation", "command")
REFERENCE_COLUMN = 6


@dataclass(frozen=True)
class Job:
    """One ``--baseline`` run of a benchmark script (environment: its sizes)."""
    script: str
    env: Dict[str, str] = field(default_factory=dict)

    def command(self, baseline: str) -> str:
        env = "".join(f"{k}={v} " for k, v in sorted(self.env.items()))
        return f"{env}bash {self.script} --baseline {baseline}"


@dataclass(frozen=True)
class Row:
    label: str
    job: Job
    phase: str


MOFLOW_TRAIN = Job("scripts/moflow/benchmark_training.sh")
MOFLOW_REVERSE = Job("scripts/moflow/benchmark_inference.sh")
SE3_TRAIN = Job("scripts/se3_transformer/benchmark_train.sh")
SE3_INFERENCE = Job("scripts/se3_transformer/benchmark_inference.sh")
DIMENET_8 = Job("scripts/graph_parallel/benchmark.sh", {"BATCH_SIZE": "8"})
DIMENET_32 = Job("scripts/graph_parallel/benchmark.sh", {"BATCH_SIZE": "32"})
GEMNET_T = Job("scripts/graph_parallel/benchmark.sh", {"MODEL": "gemnet_t", "BATCH_SIZE": "2"})
ROWS = {
    "moflow_reverse": Row("MoFlow qm9, reverse pass (generation), batch 1000", MOFLOW_REVERSE, "reverse"),
    "moflow_train": Row("MoFlow qm9, training step, batch 128", MOFLOW_TRAIN, "train"),
    "se3_train": Row("SE(3) default (nvidia preset), training step, batch 32", SE3_TRAIN, "train"),
    "se3_inference": Row("SE(3) default, inference, batch 32", SE3_INFERENCE, "inference"),
    "dimenetpp_train_8": Row("DimeNet++ base, training with forces, batch 8", DIMENET_8, "train"),
    "dimenetpp_train_32": Row("DimeNet++ base, training with forces, batch 32", DIMENET_32, "train"),
    "dimenetpp_inference_8": Row("DimeNet++ base, inference, batch 8", DIMENET_8, "inference"),
    "dimenetpp_inference_32": Row("DimeNet++ base, inference, batch 32", DIMENET_32, "inference"),
    "gemnet_t_train": Row("GemNet-T base, training with forces, batch 2", GEMNET_T, "train"),
}


def row_cells(row: Row, summary: Dict[str, dict], baseline: str) -> List[str]:
    """The measured cells of ``row`` from a ``runtime.compare`` summary (reference cell left empty)."""
    p = row.phase
    cpu = summary[f"{p}_cpu_ms"]
    speedup, paired = 1 / cpu["ratio"], 1 / cpu["paired"]
    speed = f"{speedup:.2f}x" + (f" (paired {paired:.2f}x)" if abs(paired / speedup - 1) >= 0.05 else "")
    memory = summary.get(f"{p}_peak_memory_mb")
    work = {name: s["working"] for name, s in summary.items()}

    def figure(name: str, digits: int) -> str:
        return f"{work[name]:.{digits}f}" if name in work else "-"
    return [row.label, speed, f"{100 * (memory['ratio'] - 1):+.0f} %" if memory else "-",
            figure(f"{p}_gflop_per_step", 1), figure(f"{p}_gflops", 1), figure(f"{p}_peak_fraction", 2),
            "", f"`{row.job.command(baseline)}`"]


def split_row(line: str) -> List[str]:
    """Cells of a Markdown table line (``\\|`` inside a cell is not a separator)."""
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in cells[1:-1]]


def format_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") if "\\|" not in c else c for c in cells) + " |"


def read_block(text: str) -> tuple:
    """(text before, {label: cells}, {row key: provenance line}, text after) of the marked block."""
    if START not in text or END not in text:
        raise SystemExit(f"error: the README has no {START} ... {END} block")
    before, rest = text.split(START, 1)
    block, after = rest.split(END, 1)
    rows, notes = {}, {}
    for line in block.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            cells = split_row(line)
            if cells and cells[0] != COLUMNS[0]:
                rows[cells[0]] = cells
        match = re.match(r"- `(\w+)`: ", line)
        if match:
            notes[match.group(1)] = line
    return before, rows, notes, after


def render_block(rows: Dict[str, List[str]], notes: Dict[str, str], baseline: str) -> str:
    header = [c.format(baseline=baseline) for c in COLUMNS]
    lines = [format_row(header), "|" + "---|" * len(header)]
    lines += [format_row(rows[r.label]) for r in ROWS.values() if r.label in rows]
    lines += ["", "How each row was made (`python scripts/perf_table.py --list` names the rows; the reference "
              "column is kept as written, from the scripts it names, not regenerated):", ""]
    lines += [notes[key] for key in ROWS if key in notes]
    return "\n".join(["", *lines, ""])


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def allocator() -> str:
    out = subprocess.run(["bash", "-c", 'source "$0" && echo "$MOLRECIPES_ALLOCATOR_USED"',
                          os.path.join(ROOT, "scripts", "env.sh")], stdout=subprocess.PIPE, text=True)
    return out.stdout.strip() or "unknown"


def provenance(key: str, record: dict, invocation: str, when: str) -> str:
    return (f"- `{key}`: {when}, {machine()}, OMP_NUM_THREADS={record.get('omp_num_threads', '?')}, "
            f"allocator {allocator()}, {record['rounds']} round(s), working tree {record['working_head'][:9]}"
            f"{' + changes' if record.get('working_dirty') else ''}: `{invocation}`")


def run_job(job: Job, baseline: str, rounds: Optional[int], bench_args: Sequence[str]) -> dict:
    """The ``runtime.compare`` record of ``job`` (its output is shown as it runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "compare.json")
        env = dict(os.environ, **job.env, COMPARE_JSON=path)
        if rounds:
            env["ROUNDS"] = str(rounds)
        subprocess.run(["bash", os.path.join(ROOT, job.script), "--baseline", baseline, *bench_args],
                       env=env, check=True)
        with open(path) as f:
            return json.load(f)


def regenerate(keys: Sequence[str], baseline: str, rounds: Optional[int], bench_args: Sequence[str],
               readme_text: str, invocation: str, run=run_job) -> str:
    """``readme_text`` with the rows ``keys`` measured again (``run(job, ...)`` gives a compare record)."""
    before, rows, notes, after = read_block(readme_text)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    records = {}
    for key in keys:
        row = ROWS[key]
        job = row.job.command(baseline)
        if job not in records:
            records[job] = run(row.job, baseline, rounds, bench_args)
        cells = row_cells(row, records[job]["summary"], baseline)
        cells[REFERENCE_COLUMN] = rows.get(row.label, cells)[REFERENCE_COLUMN] or "-"
        rows[row.label] = cells
        notes[key] = provenance(key, records[job], invocation, when)
    return before + START + render_block(rows, notes, baseline) + END + after


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="11b8e8f", help="git revision the working tree is compared with")
    p.add_argument("--rows", default="all", help="comma-separated row keys (--list), or all")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per tree (default: each script's)")
    p.add_argument("--bench_args", default="", help="flags for the bench_model.py behind each script, one string")
    p.add_argument("--write", nargs="?", const=os.path.join(ROOT, "README.md"), default=None, metavar="README",
                   help="write the table into README (default: the root README.md); else print it only")
    p.add_argument("--list", action="store_true", help="list the row keys and their commands")
    args = p.parse_args(argv)
    if args.list:
        for key, row in ROWS.items():
            print(f"{key:24s} {row.job.command(args.baseline)}  ({row.phase})")
        return 0
    keys = list(ROWS) if args.rows == "all" else [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(ROWS)}")
    with open(args.write or os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    invocation = "python scripts/perf_table.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    new = regenerate(keys, args.baseline, args.rounds, shlex.split(args.bench_args), text, invocation)
    if args.write:
        with open(args.write, "w") as f:
            f.write(new)
    print(new.split(START, 1)[1].split(END, 1)[0].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
