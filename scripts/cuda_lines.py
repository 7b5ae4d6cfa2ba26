"""Count the lines that run only on CUDA: ``python scripts/cuda_lines.py [--list]``.

A line is CUDA-only when it calls ``torch.cuda.*`` (or ``torch.amp.GradScaler("cuda")``), or sits in a
branch taken only on CUDA: the body of an ``if`` whose test asks for CUDA (``device.type == "cuda"``,
``torch.cuda.is_available()``, ``.is_cuda``, ``use_cuda``; not an ``or``, not negated) or the ``else``
of a plain negation (``!= "cuda"``, ``not torch.cuda.is_available()``); ``--cuda_graphs`` branches count
too (the flag is refused without CUDA, so a few refusal lines are over-counted). A static count (no GPU can measure it here); ``--list`` prints the lines.
The CPU tests never run these lines: ``scripts/gpu_check.sh`` does (README, "CUDA-only lines").
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from typing import Dict, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("runtime", "moflow", "se3_transformer", "graph_parallel")


_ON_CUDA = r"== 'cuda'|\.is_cuda\b|torch\.cuda\.is_available\(\)|\buse_cuda\b|\bcuda_graphs\b"
_OFF_CUDA = r"not (torch\.cuda\.is_available\(\)|use_cuda|[\w.]+\.is_cuda)|!= 'cuda'"


def _cuda_branch(test: ast.AST):
    """The branch of an ``if`` taken only on CUDA: "body", "orelse" or None (both run elsewhere too)."""
    text = ast.unparse(test)
    if " or " in text:
        return None
    on, off = re.search(_ON_CUDA, text), re.search(_OFF_CUDA, text)
    if on and not off:
        return "body"
    if off and re.fullmatch(r"not [\w.()]+|[\w.]+ != 'cuda'", text):
        return "orelse"
    return None


def _lines(nodes) -> Set[int]:
    out: Set[int] = set()
    for node in nodes:
        out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def cuda_only_lines(source: str) -> Set[int]:
    tree = ast.parse(source)
    lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _cuda_branch(node.test):
            lines |= _lines(getattr(node, _cuda_branch(node.test)))
        elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("torch.cuda."):
            name = ast.unparse(node.func)
            if not name.endswith(("is_available", "device_count")):     # these run everywhere
                lines |= _lines([node])
    blank = {i + 1 for i, text in enumerate(source.splitlines()) if not text.strip() or text.strip().startswith("#")}
    return lines - blank


def count(root: str = ROOT) -> Dict[str, Set[int]]:
    found: Dict[str, Set[int]] = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        lines = cuda_only_lines(f.read())
                    if lines:
                        found[os.path.relpath(path, root)] = lines
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print every CUDA-only line")
    args = parser.parse_args(argv)
    found = count()
    for path, lines in sorted(found.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(lines):4d}  {path}")
        if args.list:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                text = f.read().splitlines()
            for n in sorted(lines):
                print(f"        {n:4d}: {text[n - 1].strip()}")
    print(f"{sum(len(v) for v in found.values()):4d}  CUDA-only lines in {len(found)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
