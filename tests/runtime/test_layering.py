"""Arrows point down only: runtime imports no model package; model packages never import each other."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ("moflow", "se3_transformer", "graph_parallel")


def _imported_top_levels(package: str):
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", ("runtime",) + MODELS)
def test_no_upward_or_sideways_imports(package):
    imported = _imported_top_levels(package)
    forbidden = [m for m in MODELS if m != package]
    bad = {m: sorted(imported[m]) for m in forbidden if m in imported}
    assert not bad, f"{package} imports {bad}"
