"""runtime.compare: interleaved runs of one command against a git revision and the working tree."""
import json
import os
import subprocess
import sys

import pytest

from runtime.compare import BenchError, compare, main, parse_bench, summarise

# The fake benchmark: imports `fakepkg` (whichever tree PYTHONPATH names), logs which run it is, and
# prints its package's VALUE times the run's index within its tree as the figure.
FAKE_BENCH = """
import json, os, sys
import fakepkg
log = sys.argv[1]
with open(log, "a") as f:
    f.write(json.dumps([os.environ["COMPARE_LABEL"], os.environ["COMPARE_TREE"], fakepkg.__file__]) + "\\n")
with open(log) as f:
    n = sum(json.loads(line)[0] == os.environ["COMPARE_LABEL"] for line in f)
print("noise line")
print("BENCH " + json.dumps({"speed": fakepkg.VALUE * n, "memory_mb": 100.0 * fakepkg.VALUE,
                             "source": os.path.dirname(fakepkg.__file__), "note": "text is ignored"}))
"""


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def repo(tmp_path):
    """A git repository whose committed fakepkg has VALUE 1 and whose working tree has VALUE 2."""
    root = tmp_path / "repo"
    (root / "fakepkg").mkdir(parents=True)
    (root / "fakepkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "bench.py").write_text(FAKE_BENCH)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "baseline")
    (root / "fakepkg" / "__init__.py").write_text("VALUE = 2\n")
    return root


def _worktrees(repo):
    out = subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def test_interleaves_trees_and_reports_medians_and_ratios(repo, tmp_path, monkeypatch):
    log = tmp_path / "runs.log"
    monkeypatch.chdir(repo)  # the cwd holds the working fakepkg: PYTHONSAFEPATH must keep it off sys.path
    lines = []
    record = compare([sys.executable, str(repo / "bench.py"), str(log)], "HEAD", rounds=3, tree=str(repo),
                     log=lines.append)
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r[0] for r in runs] == ["baseline", "working"] * 3
    base_tree = runs[0][1]
    assert all(r[1] == base_tree for r in runs[0::2]) and all(r[1] == str(repo.resolve()) for r in runs[1::2])
    assert all(r[2].startswith(r[1]) for r in runs)  # each run imported its own tree's package
    # the baseline worktree is gone, and git no longer lists it
    assert not os.path.exists(base_tree)
    assert len(_worktrees(repo)) == 1
    s = record["summary"]
    assert set(s) == {"speed", "memory_mb"}  # strings are not figures
    assert s["speed"]["baseline"] == 2.0 and s["speed"]["working"] == 4.0  # medians of 1,2,3 and 2,4,6
    assert s["speed"]["ratio"] == pytest.approx(2.0) and s["speed"]["paired"] == pytest.approx(2.0)
    assert s["memory_mb"]["ratio"] == pytest.approx(2.0) and s["memory_mb"]["rounds"] == 3
    assert any(line.startswith("speed") and "2.000" in line for line in "\n".join(map(str, lines)).splitlines())


def test_main_writes_json_and_cleans_up_after_a_failing_command(repo, tmp_path):
    out = tmp_path / "cmp.json"
    assert main(["--baseline", "HEAD", "--rounds", "1", "--tree", str(repo), "--json", str(out), "--",
                 sys.executable, str(repo / "bench.py"), str(tmp_path / "a.log")]) == 0
    assert json.loads(out.read_text())["summary"]["speed"]["ratio"] == pytest.approx(2.0)
    with pytest.raises(BenchError, match="exit code 3"):
        compare([sys.executable, "-c", "import sys; sys.exit(3)"], "HEAD", rounds=2, tree=str(repo), log=lambda s: None)
    assert len(_worktrees(repo)) == 1
    with pytest.raises(ValueError, match="not a commit"):
        compare(["true"], "no-such-revision", tree=str(repo), log=lambda s: None)


def test_bench_line_parsing_and_source_check(tmp_path):
    tree = str(tmp_path)
    assert parse_bench('x\nBENCH {"a": 1}\nBENCH {"a": 2, "ok": true}\n', tree) == {"a": 2.0}
    assert parse_bench(f'BENCH {{"a": 1, "source": "{tree}/pkg"}}', tree) == {"a": 1.0}
    with pytest.raises(BenchError, match="not from the tree under test"):
        parse_bench('BENCH {"a": 1, "source": "/elsewhere/pkg"}', tree)
    with pytest.raises(BenchError, match="no line"):
        parse_bench("nothing here", tree)


def test_summarise_pairs_rounds():
    runs = [{"round": i, "tree": t, "figures": {"x": v}}
            for i, (b, w) in enumerate([(10, 5), (20, 30), (30, 9)]) for t, v in (("baseline", b), ("working", w))]
    s = summarise(runs)["x"]
    assert (s["baseline"], s["working"]) == (20, 9)
    assert s["ratio"] == pytest.approx(0.45) and s["paired"] == pytest.approx(0.5)
