"""Small random molecules and exact rotation matrices for the SE(3)-Transformer tests."""
from __future__ import annotations

import torch
from e3nn import o3

from runtime.graph import GraphBatch


def random_molecule(num_atoms: int, generator: torch.Generator, dtype=torch.float64) -> GraphBatch:
    """Fully connected random point cloud with 6-D node and 4-D edge features."""
    pos = torch.randn(num_atoms, 3, generator=generator, dtype=dtype) * 1.5
    src, dst = torch.meshgrid(torch.arange(num_atoms), torch.arange(num_atoms), indexing="ij")
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    return GraphBatch(pos=pos, edge_index=edge_index, batch=torch.zeros(num_atoms, dtype=torch.long),
                      ptr=torch.tensor([0, num_atoms]),
                      node_feats=torch.randn(num_atoms, 6, generator=generator, dtype=dtype),
                      edge_feats=torch.randn(edge_index.shape[1], 4, generator=generator, dtype=dtype))


def random_batch(sizes=(4, 6), seed: int = 0, dtype=torch.float64) -> GraphBatch:
    g = torch.Generator().manual_seed(seed)
    return GraphBatch.collate([random_molecule(n, g, dtype) for n in sizes])


def moved(batch: GraphBatch, rotation: torch.Tensor, translation: torch.Tensor) -> GraphBatch:
    return GraphBatch(pos=batch.pos @ rotation.T + translation, edge_index=batch.edge_index, batch=batch.batch,
                      ptr=batch.ptr, node_feats=batch.node_feats, edge_feats=batch.edge_feats)


def wigner_d(degree: int, rotation: torch.Tensor) -> torch.Tensor:
    """Representation matrix of ``rotation`` for ``degree`` in e3nn's real basis, exact in float64.

    Solved from ``Y(R x) = D Y(x)`` by least squares (e3nn's ``D_from_matrix`` is only accurate
    to ~1e-7, which would hide float64 errors).
    """
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rotation = rotation.to(torch.float64)
    y = o3.spherical_harmonics(degree, x, normalize=True, normalization="component")
    y_rot = o3.spherical_harmonics(degree, x @ rotation.T, normalize=True, normalization="component")
    return torch.linalg.lstsq(y, y_rot).solution.T


# ---- end-to-end runs of the entry points ----------------------------------------------------------------
TINY = ["--num_layers", "1", "--num_degrees", "2", "--num_channels", "8", "--num_heads", "2", "--batch_size", "8",
        "--num_molecules", "40", "--silent", "--learning_rate", "3e-3", "--weight_decay", "0"]


def train_args(out, *extra, ckpt: bool = True):
    """TINY flags writing the log (and checkpoint) under ``out``."""
    args = TINY + ["--log_dir", str(out)] + [str(e) for e in extra]
    if ckpt and "--save_ckpt_path" not in args:
        args += ["--save_ckpt_path", str(out) + "/model.pt"]
    return args


def log_records(log_dir, name: str = "log.json"):
    from runtime.logging import read_dllogger

    return [r for r in read_dllogger(f"{log_dir}/{name}") if r["type"] == "LOG" and r["step"] != "PARAMETER"]


def step_losses(log_dir):
    """(epoch, step, train_loss) of every per-step record."""
    return [(r["step"][0], r["step"][1], r["data"]["train_loss"]) for r in log_records(log_dir)
            if len(r["step"]) == 2 and "train_loss" in r["data"]]


def epoch_records(log_dir):
    """{epoch: data} of the per-epoch records (train and validation metrics)."""
    out = {}
    for r in log_records(log_dir):
        if len(r["step"]) == 1:
            out.setdefault(r["step"][0], {}).update(r["data"])
    return out


def summary(log_dir, name: str = "log.json"):
    data = {}
    for r in log_records(log_dir, name):
        if r["step"] == []:
            data.update(r["data"])
    return data


def weights(path):
    import torch

    return torch.load(path, weights_only=True)["model"]
