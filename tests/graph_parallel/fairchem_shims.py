"""Pure-PyTorch stand-ins for the parts of torch_scatter and torch_sparse that fairchem-core 1.x's
GemNet-T and DimeNet++ call, so fairchem's forward passes run without those compiled packages
(used by tests/graph_parallel/test_convert.py and scripts/graph_parallel/make_fairchem_fixtures.py).
"""
import importlib.util
import types

import torch


def _scatter(src, index, dim=0, out=None, dim_size=None, reduce="sum"):
    size = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    total = src.new_zeros((size,) + src.shape[1:]).scatter_add(0, idx, src)
    if reduce == "mean":
        counts = torch.bincount(index, minlength=size).clamp(min=1).to(src.dtype)
        return total / counts.view(-1, *([1] * (src.dim() - 1)))
    return total


def _segment_csr(src, indptr, reduce="sum"):
    counts = indptr[1:] - indptr[:-1]
    return _scatter(src, torch.repeat_interleave(torch.arange(len(counts)), counts), dim_size=len(counts))


class _SparseRows:
    """Just enough of torch_sparse.SparseTensor for fairchem's triplets: row selection of a COO matrix."""

    def __init__(self, row, col, value=None, sparse_sizes=None, _sorted=False):
        if not _sorted:
            order = torch.argsort(row * (int(col.max()) + 1 if col.numel() else 1) + col, stable=True)
            row, col, value = row[order], col[order], value[order] if value is not None else None
        self._row, self._col, self._value, self.sizes = row, col, value, sparse_sizes
        self.storage = self

    def row(self):
        return self._row

    def col(self):
        return self._col

    def value(self):
        return self._value

    def __getitem__(self, idx):
        counts = torch.bincount(self._row, minlength=self.sizes[0])
        ptr, c = torch.cumsum(counts, 0) - counts, counts[idx]
        src = torch.repeat_interleave(ptr[idx], c) + torch.arange(int(c.sum())) - torch.repeat_interleave(
            torch.cumsum(c, 0) - c, c)
        return _SparseRows(torch.repeat_interleave(torch.arange(len(idx)), c), self._col[src],
                           self._value[src] if self._value is not None else None, (len(idx), self.sizes[1]), True)

    def set_value(self, value, layout=None):
        return _SparseRows(self._row, self._col, value, self.sizes, True)

    def sum(self, dim=1):
        return torch.bincount(self._row, minlength=self.sizes[0])


def shim_modules() -> dict:
    """name -> stand-in module for each of torch_scatter, torch_sparse, huggingface_hub not installed."""
    import torch_geometric  # noqa: F401 - before the shims, so PyG does not pick them up

    contents = {"torch_scatter": {"scatter": _scatter, "segment_csr": _segment_csr,
                                  "segment_coo": lambda s, i, dim_size=None, reduce="sum":
                                  _scatter(s, i, dim_size=dim_size)},
                "torch_sparse": {"SparseTensor": _SparseRows},
                "huggingface_hub": {"hf_hub_download": None}}
    modules = {}
    for name, attrs in contents.items():
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            modules[name] = module
    return modules
