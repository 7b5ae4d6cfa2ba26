"""scripts/cuda_lines.py: which lines run only on CUDA (the README quotes its count)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cuda_lines import count, cuda_only_lines  # noqa: E402

SOURCE = '''\
import torch
def f(device, x, use_cuda):
    if device.type == "cuda":
        torch.cuda.synchronize()
        y = 1
    else:
        y = 2
    if device.type != "cuda":
        z = 3
    else:
        z = 4
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no cuda")
    if torch.cuda.is_available() or x:
        w = 5
    torch.cuda.is_available()
    return y, z, torch.cuda.max_memory_allocated()
'''


def test_cuda_only_lines_of_a_known_source():
    assert cuda_only_lines(SOURCE) == {4, 5, 11, 17}


def test_the_repository_count_is_what_the_readme_says():
    found = count()
    total = sum(len(v) for v in found.values())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"**{total} CUDA-only lines in {len(found)} files**" in readme
