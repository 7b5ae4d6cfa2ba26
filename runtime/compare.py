"""Compare the working tree with a git revision, side by side in one run, on a shared noisy machine.

    python -m runtime.compare --baseline 11b8e8f --rounds 5 -- python scripts/moflow/bench_model.py

Method:

1. ``git worktree add --detach`` checks ``--baseline`` out into a temporary directory (removed, and
   the worktree pruned, when the comparison ends, however it ends).
2. COMMAND runs ``--rounds`` times against each tree, interleaved: baseline, working, baseline,
   working, ... so both trees see the same slow and fast moments of a shared machine.
3. The tree under test is chosen by ``PYTHONPATH`` (its root first; inherited entries naming either
   tree are dropped) with ``PYTHONSAFEPATH=1``, so neither the current directory nor the script's
   directory shadows it. COMMAND itself is the same file (taken from the working tree) in every run:
   the harness is identical and only the imported package code differs. ``COMPARE_TREE`` and
   ``COMPARE_LABEL`` (``baseline`` / ``working``) tell the command which run it is in;
   ``OMP_NUM_THREADS`` is 1 unless the caller set it.
4. COMMAND prints one line ``BENCH {json}``; its numeric fields are the figures. A string field
   ``source`` (the directory a package was imported from) must lie inside the tree under test, which
   catches a harness that measured the wrong tree.
5. Per figure: the median over rounds for each tree, ``ratio`` = working median / baseline median
   (> 1: more throughput; < 1: less latency or memory) and ``paired`` = the median of the per-round
   ratios (robust to drift across rounds). Printed as a table; ``--json PATH`` also writes it.

Claims about speed should quote medians and ratios from such interleaved runs, not single times.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from runtime.errors import ConfigError, UserError, run_main

TREES = ("baseline", "working")


class BenchError(UserError):
    """The benchmarked command failed or printed no usable ``BENCH`` line."""


def _git(tree: str, *args: str) -> str:
    out = subprocess.run(["git", "-C", tree, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {tree}: {out.stderr.strip()}")
    return out.stdout.strip()


def repository_root(path: Optional[str] = None) -> str:
    """The git working tree holding ``path`` (default: the tree this module belongs to)."""
    here = path or os.path.dirname(os.path.abspath(__file__))
    return os.path.realpath(_git(here, "rev-parse", "--show-toplevel"))


def tree_env(tree: str, label: str, other_trees: Sequence[str], base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of one run: ``tree`` first on PYTHONPATH, no entry naming another tree."""
    env = dict(os.environ if base is None else base)
    trees = {os.path.realpath(t) for t in (tree, *other_trees)}
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.realpath(p) not in trees]
    env["PYTHONPATH"] = os.pathsep.join([tree, *kept])
    env["PYTHONSAFEPATH"] = "1"
    env["COMPARE_TREE"] = tree
    env["COMPARE_LABEL"] = label
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def parse_bench(stdout: str, tree: str) -> Dict[str, float]:
    """The numeric figures of the last ``BENCH {json}`` line; checks ``source`` lies inside ``tree``."""
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise BenchError("the command printed no line starting with 'BENCH ' (expected: BENCH {json})")
    try:
        data = json.loads(lines[-1][len("BENCH "):])
    except json.JSONDecodeError as err:
        raise BenchError(f"the BENCH line is not JSON ({err}): {lines[-1][:200]}") from err
    source = data.get("source")
    if isinstance(source, str):
        real, root = os.path.realpath(source), os.path.realpath(tree)
        if os.path.commonpath([real, root]) != root:
            raise BenchError(f"the command imported its code from {source}, not from the tree under test {tree}; "
                             f"run it as `python path/to/script.py` and let PYTHONPATH choose the package")
    figures = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not figures:
        raise BenchError(f"the BENCH line has no numeric figure: {lines[-1][:200]}")
    return figures


def run_once(command: Sequence[str], tree: str, label: str, other_trees: Sequence[str]) -> Dict[str, float]:
    proc = subprocess.run(list(command), env=tree_env(tree, label, other_trees), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BenchError(f"the command failed on the {label} tree ({tree}) with exit code {proc.returncode}:\n{tail}")
    return parse_bench(proc.stdout, tree)


def summarise(runs: List[dict]) -> Dict[str, Dict[str, float]]:
    """Per figure: medians of both trees, ratio of medians, median of per-round ratios, rounds."""
    by_round: Dict[int, Dict[str, Dict[str, float]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["tree"]] = r["figures"]
    names = [k for r in runs if r["tree"] == "baseline" for k in r["figures"]]
    summary = {}
    for name in dict.fromkeys(names):
        pairs = [(v["baseline"][name], v["working"][name]) for v in by_round.values()
                 if name in v.get("baseline", {}) and name in v.get("working", {})]
        if not pairs:
            continue
        base = statistics.median(p[0] for p in pairs)
        work = statistics.median(p[1] for p in pairs)
        paired = [w / b for b, w in pairs if b]
        summary[name] = {"baseline": base, "working": work, "ratio": work / base if base else float("nan"),
                         "paired": statistics.median(paired) if paired else float("nan"), "rounds": len(pairs)}
    return summary


def format_table(summary: Dict[str, Dict[str, float]], baseline: str) -> str:
    rows = [("figure", f"baseline {baseline}", "working", "ratio", "paired")]
    for name, s in summary.items():
        rows.append((name, f"{s['baseline']:.4g}", f"{s['working']:.4g}", f"{s['ratio']:.3f}", f"{s['paired']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(command: Sequence[str], baseline: str, rounds: int = 5, tree: Optional[str] = None,
            log=print) -> dict:
    """Run ``command`` ``rounds`` times per tree, interleaved; returns the record written by ``--json``."""
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    if not command:
        raise ConfigError("no command given: python -m runtime.compare --baseline REV -- COMMAND ...")
    working = repository_root(tree)
    try:
        commit = _git(working, "rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}")
    except ConfigError:
        commit = ""
    if not commit:
        raise ConfigError(f"--baseline {baseline!r} is not a commit of {working} (git rev-parse found nothing; "
                          f"fetch it or give a hash, tag or branch name)")
    head = _git(working, "rev-parse", "HEAD")
    dirty = bool(_git(working, "status", "--porcelain", "--untracked-files=no"))
    tmp = tempfile.mkdtemp(prefix="compare-")
    base_tree = os.path.join(tmp, "baseline")
    try:
        _git(working, "worktree", "add", "--detach", "--quiet", base_tree, commit)
        paths = {"baseline": base_tree, "working": working}
        log(f"baseline {baseline} = {commit[:12]} in {base_tree}; working tree {working} "
            f"(HEAD {head[:12]}{', uncommitted changes' if dirty else ''}); {rounds} round(s), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
        runs = []
        for i in range(rounds):
            for label in TREES:
                figures = run_once(command, paths[label], label, [p for p in paths.values() if p != paths[label]])
                runs.append({"round": i, "tree": label, "figures": figures})
                shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
                log(f"round {i + 1}/{rounds} {label:8s} {shown}")
    finally:
        subprocess.run(["git", "-C", working, "worktree", "remove", "--force", base_tree],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", working, "worktree", "prune"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    summary = summarise(runs)
    log(format_table(summary, baseline))
    return {"baseline": baseline, "baseline_commit": commit, "working_tree": working, "working_head": head,
            "working_dirty": dirty, "rounds": rounds, "command": list(command),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1"), "runs": runs, "summary": summary}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git revision to compare the working tree with")
    p.add_argument("--rounds", type=int, default=5, help="runs per tree, interleaved")
    p.add_argument("--json", default=None, help="also write the runs and the summary to this JSON file")
    p.add_argument("--tree", default=None, help="working tree (default: the repository holding runtime/)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ... printing one 'BENCH {json}' line")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    record = compare(command, args.baseline, args.rounds, args.tree)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
