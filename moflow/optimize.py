"""QED optimisation in latent space (as in the MoFlow paper).

``python -m moflow.optimize --load_ckpt_path CKPT --num_start 10``

1. encode training molecules exactly and fit an MLP regressor z -> QED;
2. from each start molecule (the highest-QED training molecules, or ``--smiles``) take
   ``--steps`` normalised gradient-ascent steps on the regressor in latent space;
3. decode every point (with valency correction) and keep the molecule with the best RDKit QED.
"""
import argparse
import sys
from typing import List, Optional

import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, rdFingerprintGenerator
from torch import nn

from moflow.chem import decode_graphs, graphs_to_smiles
from moflow.data.dataset import MoleculeCache
from moflow.generate import load_trained_model
from moflow.interpolate import encode
from moflow.model import MoFlow


def qed(smiles: Optional[str]) -> float:
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return float(QED.qed(mol)) if mol is not None else float("nan")


def similarity(a: str, b: str) -> float:
    """Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits)."""
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in (a, b)]
    return float(DataStructs.TanimotoSimilarity(*fps))


class LatentRegressor(nn.Module):
    """MLP on standardised latents: z [B, z_dim] -> property [B]."""

    def __init__(self, z_mean: torch.Tensor, z_std: torch.Tensor, hidden: int = 128):
        super().__init__()
        self.register_buffer("z_mean", z_mean)
        self.register_buffer("z_std", z_std)
        self.net = nn.Sequential(nn.Linear(z_mean.numel(), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net((z - self.z_mean) / self.z_std).squeeze(-1)


def fit_property_model(z: torch.Tensor, y: torch.Tensor, epochs: int = 200, lr: float = 1e-3,
                       hidden: int = 128, seed: int = 0) -> LatentRegressor:
    """Full-batch Adam regression of ``y`` on latents ``z``."""
    torch.manual_seed(seed)
    # one global scale: per-dimension scaling would blow up near-constant latent dimensions
    model = LatentRegressor(z.mean(0), z.std().expand(z.shape[1]).clone(), hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(z), y)
        loss.backward()
        opt.step()
    return model.eval()


def ascend(property_model: nn.Module, z0: torch.Tensor, steps: int, step_size: float) -> torch.Tensor:
    """Latents [steps + 1, z_dim] along normalised gradient ascent of the predicted property."""
    path = [z0.detach()]
    z = z0.detach().clone()
    for _ in range(steps):
        z.requires_grad_(True)
        grad, = torch.autograd.grad(property_model(z[None]).sum(), z)
        if not torch.isfinite(grad).all():
            raise FloatingPointError("non-finite gradient of the property model")
        z = (z + step_size * grad / (grad.norm() + 1e-12)).detach()
        path.append(z)
    return torch.stack(path)


@torch.no_grad()
def decode(model: MoFlow, z: torch.Tensor, atomic_nums: List[int]) -> List[Optional[str]]:
    return graphs_to_smiles(*decode_graphs(*model.reverse(z)), atomic_nums, correct=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--load_ckpt_path", default="results/moflow/moflow.pt")
    p.add_argument("--data_dir", default=None, help="cache directory (default: the training one)")
    p.add_argument("--num_train", type=int, default=10000, help="training molecules for the regressor")
    p.add_argument("--fit_epochs", type=int, default=200)
    p.add_argument("--num_start", type=int, default=10, help="start from the top-QED training molecules")
    p.add_argument("--smiles", nargs="*", default=None, help="start from these molecules instead")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step_size", type=float, default=2.0, help="latent distance per step")
    p.add_argument("--output", default="results/moflow/qed_optimization.tsv")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    model, extra = load_trained_model(args.load_ckpt_path, "cpu")
    atomic_nums = extra["atomic_nums"]
    cache = MoleculeCache(args.data_dir or extra["data_dir"], extra["dataset"])
    train_smiles = cache.subset("train").smiles()[:args.num_train]
    z_train = torch.cat([encode(model, train_smiles[i:i + 256], atomic_nums)
                         for i in range(0, len(train_smiles), 256)])
    y_train = torch.tensor([qed(s) for s in train_smiles], dtype=torch.float32)
    regressor = fit_property_model(z_train, y_train, args.fit_epochs, seed=args.seed)
    starts = args.smiles or [train_smiles[i] for i in torch.argsort(y_train, descending=True)[:args.num_start]]
    rows = []
    for start in starts:
        z0 = encode(model, [start], atomic_nums)[0]
        candidates = [s for s in decode(model, ascend(regressor, z0, args.steps, args.step_size), atomic_nums) if s]
        best = max(candidates, key=qed)
        rows.append((start, qed(start), best, qed(best), similarity(start, best)))
    with open(args.output, "w") as f:
        f.write("start\tstart_qed\tbest\tbest_qed\tsimilarity\n")
        for r in rows:
            f.write(f"{r[0]}\t{r[1]:.4f}\t{r[2]}\t{r[3]:.4f}\t{r[4]:.3f}\n")
            print(f"{r[0]} ({r[1]:.3f}) -> {r[2]} ({r[3]:.3f}), similarity {r[4]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
