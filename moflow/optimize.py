"""Property optimisation in MoFlow's latent space (Zang & Wang, KDD 2020, sections 4.4 and 4.5).

``python -m moflow.optimize --load_ckpt_path CKPT --property qed --num_start 10``
``python -m moflow.optimize --load_ckpt_path CKPT --property plogp --similarity_thresholds 0.0 0.2 0.4 0.6``

The procedure of the reference code (calvin-zcx/moflow ``mflow/optimize_property.py``):

1. a regressor z -> property (MLP, MSE) is fitted on exact latents of ``--num_train`` training
   molecules (reference: ``MoFlowProp`` + ``fit_model``; penalised logP targets clipped to [-10, 5]);
2. from each start molecule's exact latent, ``--steps`` gradient-ascent steps on the regressor:
   ``sign`` steps ``z += step_size * sign(grad)`` (the reference's ``lr * grad / sqrt(grad * grad)``,
   ``lr=0.005``, 100 steps) or ``normalized`` steps ``z += step_size * grad / |grad|``;
3. every point is decoded with valency correction, exactly as generated molecules are.

=================  ====================================  =========================================
mode               start molecules                       result per start
=================  ====================================  =========================================
unconstrained      the ``--num_start`` best training     the best molecule on the path (start
(default)          molecules of the regressor set, or    included); TSV ``start, start_<p>, best,
                   ``--smiles``                          best_<p>, similarity``
constrained        the ``--num_start`` (paper: 800)      per threshold d: among the decoded
(``--similarity_   training molecules with the LOWEST    molecules of steps 1..steps that differ
thresholds``)      property (or ``--smiles``)            from the start and have similarity >= d,
                                                         the best one; success if its improvement
                                                         is >= 0 (reference:
                                                         ``constrain_optimization_smiles``)
=================  ====================================  =========================================

Constrained summary per threshold, as the paper's table (and the reference's ``df.describe()``):
success rate = successes / starts; improvement (and similarity) mean +- sample std over the
successful starts only. The path of a start does not depend on the threshold, so it is computed
once and scored for every threshold.

Definitions (reference ``mflow/utils/environment.py``, from GCPN/JT-VAE):

- penalised logP = logP - SA - max(0, largest cycle - 6), each term standardised with the
  ZINC250k statistics (``--plogp_raw``: unstandardised). Crippen logP, RDKit's contrib SA score,
  cycles from ``networkx.cycle_basis`` (networkx is a torch dependency), as the reference.
- similarity = Tanimoto of Morgan count fingerprints, radius 2 (``GetMorganFingerprint(mol, 2)``).

Difference from the reference: starts are the training graphs as the model encodes them (decoded
back, so without stereochemistry and explicit charges), and their property is computed on that
form. The reference scores the source SMILES and excludes only that string, so a start whose
decoded form merely drops a charge could count as an "improved" new molecule.
"""
import argparse
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, Crippen, rdFingerprintGenerator
from torch import nn

from moflow.chem import decode_graphs, graphs_to_smiles, model_form
from moflow.data.dataset import GraphDataset, MoleculeCache
from moflow.data.encoding import SkipMolecule
from moflow.generate import load_trained_model
from moflow.interpolate import encode
from moflow.model import MoFlow
from runtime.cli import ArgumentParser, positive_int
from runtime.errors import ConfigError, DataError, run_main

# ZINC250k statistics used by the reference (GCPN's penalized_logp) to standardise each term.
PLOGP_STATS = {"logp": (2.4570953396190123, 1.434324401111988), "sa": (-3.0525811293166134, 0.8335207024513095),
               "cycle": (-0.0485696876403053, 0.2860212110245455)}
PLOGP_CLIP = (-10.0, 5.0)  # regression targets, as the reference's load_property_csv
STEP_RULES = ("sign", "normalized")
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2)


def _mol(smiles: Optional[str]):
    return Chem.MolFromSmiles(smiles) if smiles else None


def qed(smiles: Optional[str]) -> float:
    mol = _mol(smiles)
    return float(QED.qed(mol)) if mol is not None else float("nan")


def _sa_score(mol) -> float:
    try:
        from rdkit.Contrib.SA_Score import sascorer
    except ImportError:  # older wheels: the contrib directory is not a package
        from rdkit import RDConfig
        sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
        import sascorer
    return float(sascorer.calculateScore(mol))


def long_cycle_penalty(mol) -> int:
    """max(0, size of the largest cycle of networkx's cycle basis - 6), as the reference."""
    import networkx as nx

    cycles = nx.cycle_basis(nx.Graph(Chem.rdmolops.GetAdjacencyMatrix(mol)))
    return max(0, max((len(c) for c in cycles), default=0) - 6)


def penalized_logp(smiles: Optional[str], normalized: bool = True) -> float:
    """Penalised logP = logP - SA score - long-cycle penalty; standardised terms unless ``normalized=False``."""
    mol = _mol(smiles)
    if mol is None:
        return float("nan")
    logp, sa, cycle = Crippen.MolLogP(mol), _sa_score(mol), long_cycle_penalty(mol)
    if not normalized:
        return logp - sa - cycle
    (lm, ls), (sm, ss), (cm, cs) = PLOGP_STATS["logp"], PLOGP_STATS["sa"], PLOGP_STATS["cycle"]
    return (logp - lm) / ls + (-sa - sm) / ss + (-cycle - cm) / cs


def property_function(name: str, plogp_raw: bool = False) -> Callable[[Optional[str]], float]:
    if name == "qed":
        return qed
    if name == "plogp":
        return lambda s: penalized_logp(s, normalized=not plogp_raw)
    raise ConfigError(f"unknown property {name!r}; choose qed or plogp")


def similarity(a: str, b: str) -> float:
    """Tanimoto similarity of Morgan count fingerprints (radius 2), as the reference."""
    fps = [_MORGAN.GetSparseCountFingerprint(Chem.MolFromSmiles(s)) for s in (a, b)]
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


def ascend(property_model: nn.Module, z0: torch.Tensor, steps: int, step_size: float,
           rule: str = "normalized") -> torch.Tensor:
    """Latents along gradient ascent of the predicted property: z0 [D] -> [steps + 1, D], or a batch
    of independent starts z0 [B, D] -> [steps + 1, B, D]. ``rule``: see the module docstring."""
    if rule not in STEP_RULES:
        raise ConfigError(f"unknown step rule {rule!r}; choose from {STEP_RULES}")
    single = z0.dim() == 1
    z = (z0[None] if single else z0).detach().clone()
    path = [z]
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        grad, = torch.autograd.grad(property_model(z).sum(), z)
        if not torch.isfinite(grad).all():
            raise FloatingPointError("non-finite gradient of the property model")
        if rule == "sign":
            z = z.detach() + step_size * grad.sign()
        else:
            z = z.detach() + step_size * grad / (grad.norm(dim=-1, keepdim=True) + 1e-12)
        path.append(z)
    out = torch.stack(path)
    return out[:, 0] if single else out


@torch.no_grad()
def decode(model: MoFlow, z: torch.Tensor, atomic_nums: List[int], batch_size: int = 1000) -> List[Optional[str]]:
    """Latents [B, z_dim] -> corrected canonical SMILES (None: invalid), as generated molecules."""
    out: List[Optional[str]] = []
    for s in range(0, len(z), batch_size):
        out += graphs_to_smiles(*decode_graphs(*model.reverse(z[s:s + batch_size])), atomic_nums, correct=True)
    return out


@torch.no_grad()
def cache_latents(model: MoFlow, cache: MoleculeCache, indices: Sequence[int], batch_size: int = 256) -> torch.Tensor:
    """Exact latents [len(indices), z_dim] of cached molecules (no SMILES re-encoding)."""
    if cache.spec.max_nodes != model.config.max_nodes:
        raise ConfigError(f"the cache in {cache.data_dir} pads to {cache.spec.max_nodes} nodes, the model to "
                          f"{model.config.max_nodes}; pass the --data_dir the model was trained on")
    data = GraphDataset(cache, list(indices))
    device = model.ln_var.device
    model.eval()
    out = []
    for s in range(0, len(data), batch_size):
        items = [data[i] for i in range(s, min(s + batch_size, len(data)))]
        x = torch.stack([it[0] for it in items]).to(device)
        adj = torch.stack([it[1] for it in items]).to(device)
        z_x, z_adj, _, _ = model(adj, x, dequantize=False)
        out.append(torch.cat([z_x.reshape(len(x), -1), z_adj.reshape(len(x), -1)], 1))
    return torch.cat(out) if out else torch.zeros(0, model.config.z_dim)


class _Scores:
    """Property values and fingerprints memoised per SMILES (paths revisit the same molecules)."""

    def __init__(self, prop: Callable[[Optional[str]], float]):
        self.prop, self._values, self._fps = prop, {}, {}

    def value(self, smiles: str) -> float:
        if smiles not in self._values:
            self._values[smiles] = self.prop(smiles)
        return self._values[smiles]

    def similarity(self, a: str, b: str) -> float:
        for s in (a, b):
            if s not in self._fps:
                self._fps[s] = _MORGAN.GetSparseCountFingerprint(Chem.MolFromSmiles(s))
        return float(DataStructs.TanimotoSimilarity(self._fps[a], self._fps[b]))


def best_per_threshold(start: str, start_value: float, candidates: Sequence[Optional[str]],
                       thresholds: Sequence[float], scores: _Scores) -> List[Dict]:
    """The reference's scoring of one start: distinct valid candidates other than the start, the
    best property among those with similarity >= threshold; success if improvement >= 0."""
    seen, scored = {start}, []
    for s in candidates:
        if s is None or s in seen:
            continue
        seen.add(s)
        scored.append((s, scores.value(s), scores.similarity(start, s)))
    scored.sort(key=lambda t: t[1], reverse=True)  # stable: the earliest step wins a tie
    rows = []
    for d in thresholds:
        best = next((t for t in scored if t[2] >= d), None)
        improvement = best[1] - start_value if best else float("nan")
        rows.append(dict(threshold=d, start=start, start_value=start_value,
                         best=best[0] if best else "", best_value=best[1] if best else float("nan"),
                         improvement=improvement, similarity=best[2] if best else float("nan"),
                         success=int(best is not None and improvement >= 0)))
    return rows


def constrained_optimisation(model: MoFlow, regressor: nn.Module, starts: Sequence[str], start_z: torch.Tensor,
                             thresholds: Sequence[float], prop: Callable[[Optional[str]], float], steps: int,
                             step_size: float, rule: str, atomic_nums: List[int], start_batch: int = 8,
                             decode_batch: int = 1000, log_every: int = 50) -> List[Dict]:
    """Rows (one per start and threshold) of the similarity-constrained optimisation."""
    scores = _Scores(prop)
    rows: List[Dict] = []
    t0 = time.time()
    for b in range(0, len(starts), start_batch):
        z0 = start_z[b:b + start_batch]
        path = ascend(regressor, z0, steps, step_size, rule)[1:]  # [steps, B, D]; the start is not a candidate
        smiles = decode(model, path.transpose(0, 1).reshape(-1, path.shape[-1]), atomic_nums, decode_batch)
        for k, start in enumerate(starts[b:b + start_batch]):
            rows += best_per_threshold(start, scores.value(start), smiles[k * steps:(k + 1) * steps],
                                       thresholds, scores)
        done = min(b + start_batch, len(starts))
        if log_every and (done // log_every > b // log_every or done == len(starts)):
            print(f"optimised {done}/{len(starts)} starts in {time.time() - t0:.0f} s", flush=True)
    return rows


def summarize(rows: Sequence[Dict], thresholds: Sequence[float]) -> List[Dict]:
    """Per threshold: starts, successes, success %, improvement and similarity mean / sample std over successes."""
    out = []
    for d in thresholds:
        mine = [r for r in rows if r["threshold"] == d]
        ok = [r for r in mine if r["success"]]

        def stats(key):
            v = np.array([r[key] for r in ok], dtype=np.float64)
            return (float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))

        imp, sim = stats("improvement"), stats("similarity")
        out.append(dict(threshold=d, starts=len(mine), successes=len(ok),
                        success_rate=100.0 * len(ok) / len(mine) if mine else float("nan"),
                        improvement_mean=imp[0], improvement_std=imp[1],
                        similarity_mean=sim[0], similarity_std=sim[1]))
    return out


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}f}"


def format_summary(summary: Sequence[Dict], prop: str) -> str:
    lines = [f"| similarity >= | success | {prop} improvement (mean ± std) | similarity (mean ± std) |",
             "|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['threshold']:.1f} | {_fmt(s['success_rate'], 1)} % ({s['successes']}/{s['starts']}) | "
                     f"{_fmt(s['improvement_mean'], 2)} ± {_fmt(s['improvement_std'], 2)} | "
                     f"{_fmt(s['similarity_mean'], 2)} ± {_fmt(s['similarity_std'], 2)} |")
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's table and lists every default (mode-dependent ones are in the help text)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m moflow.optimize", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--load_ckpt_path", default="results/moflow/checkpoint.pt", help="a MoFlow checkpoint")
    p.add_argument("--data_dir", default=None, help="cache directory (default: the training one)")
    p.add_argument("--property", default="qed", choices=["qed", "plogp"], help="property to maximise")
    p.add_argument("--plogp_raw", action="store_true",
                   help="unstandardised penalised logP (logP - SA - cycle) instead of the reference's standardised sum")
    p.add_argument("--similarity_thresholds", type=float, nargs="+", default=None,
                   help="constrained mode: report the best molecule with similarity >= each threshold "
                        "(paper: 0.0 0.2 0.4 0.6)")
    p.add_argument("--num_train", type=positive_int, default=10000, help="training molecules for the regressor")
    p.add_argument("--fit_epochs", type=positive_int, default=200, help="full-batch Adam epochs of the regressor")
    p.add_argument("--hidden", type=positive_int, default=128, help="regressor hidden width")
    p.add_argument("--num_start", type=int, default=None,
                   help="start molecules (default 10; constrained: 800, the lowest-property training molecules)")
    p.add_argument("--start_pool", type=int, default=0,
                   help="constrained: choose starts among the first N training molecules (0: all)")
    p.add_argument("--smiles", nargs="*", default=None, help="start from these molecules instead")
    p.add_argument("--steps", type=positive_int, default=None, help="ascent steps (default 20; constrained: 100)")
    p.add_argument("--step_size", type=float, default=None,
                   help="step length (default 2.0 normalized; constrained: 0.005 per coordinate, sign rule)")
    p.add_argument("--step_rule", default=None, choices=STEP_RULES,
                   help="sign: z += step*sign(grad) (reference); normalized: z += step*grad/|grad| "
                        "(default: normalized, constrained: sign)")
    p.add_argument("--start_batch", type=int, default=8, help="starts optimised together")
    p.add_argument("--batch_size", type=int, default=1000, help="latents decoded per reverse pass")
    p.add_argument("--output", default=None,
                   help="per-molecule TSV (default results/moflow/<property>_optimization.tsv, "
                        "constrained: <property>_constrained.tsv)")
    p.add_argument("--summary", default=None, help="constrained: summary TSV (default: <output>_summary.tsv)")
    p.add_argument("--seed", type=int, default=0)
    return p


def _defaults(args) -> None:
    constrained = args.similarity_thresholds is not None
    for name, plain, paper in (("num_start", 10, 800), ("steps", 20, 100), ("step_size", 2.0, 0.005),
                               ("step_rule", "normalized", "sign")):
        if getattr(args, name) is None:
            setattr(args, name, paper if constrained else plain)
    if args.output is None:
        args.output = f"results/moflow/{args.property}_{'constrained' if constrained else 'optimization'}.tsv"
    if constrained and args.summary is None:
        args.summary = os.path.splitext(args.output)[0] + "_summary.tsv"
    for name in ("num_start", "steps", "num_train", "start_batch", "batch_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.step_size <= 0:
        raise ConfigError(f"--step_size must be positive, got {args.step_size}")
    if constrained and not all(0.0 <= d <= 1.0 for d in args.similarity_thresholds):
        raise ConfigError(f"--similarity_thresholds must lie in [0, 1], got {args.similarity_thresholds}")


def _write_tsv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(_fmt(v) if isinstance(v, float) else str(v) for v in r) + "\n")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _defaults(args)
    constrained = args.similarity_thresholds is not None
    prop = property_function(args.property, args.plogp_raw)
    model, extra = load_trained_model(args.load_ckpt_path, "cpu")
    atomic_nums = extra["atomic_nums"]
    cache = MoleculeCache(args.data_dir or extra["data_dir"], extra["dataset"])
    decoded = cache.decoded_smiles("all")  # the training graphs as the model encodes them
    train_idx = [i for i in cache.indices("train") if decoded[i]]
    if not train_idx:
        raise DataError(f"no training molecule of {cache.npz_path} decodes to a valid molecule")

    values: Dict[int, float] = {}

    def value(i: int) -> float:
        if i not in values:
            values[i] = prop(decoded[i])
        return values[i]

    t0 = time.time()
    fit_idx = train_idx[:args.num_train]
    y = torch.tensor([value(i) for i in fit_idx], dtype=torch.float32)
    if args.property == "plogp":
        y = y.clamp(*PLOGP_CLIP)
    z = cache_latents(model, cache, fit_idx)
    n_check = len(fit_idx) // 10 if len(fit_idx) >= 50 else 0  # held out to report the fit's quality
    regressor = fit_property_model(z[n_check:], y[n_check:], args.fit_epochs, hidden=args.hidden, seed=args.seed)
    quality = ""
    if n_check:
        with torch.no_grad():
            r = np.corrcoef(regressor(z[:n_check]).numpy(), y[:n_check].numpy())[0, 1]
        quality = f"; Pearson r {r:.2f} on {n_check} held-out molecules"
    print(f"regressor z -> {args.property} fitted on {len(fit_idx) - n_check} training molecules in "
          f"{time.time() - t0:.0f} s{quality}", flush=True)

    if args.smiles:
        starts = []
        for s in args.smiles:
            form = model_form(s)
            if form is None:
                raise DataError(f"--smiles {s!r} is not a molecule the model can encode")
            starts.append(form)
        try:
            start_z = encode(model, starts, atomic_nums)
        except SkipMolecule as err:
            raise DataError(f"--smiles: {err} (elements the model knows: {atomic_nums})") from err
    else:
        if constrained:
            pool = train_idx[:args.start_pool] if args.start_pool else train_idx
            chosen = sorted(pool, key=value)[:args.num_start]  # the lowest property first, as the reference
        else:
            chosen = sorted(fit_idx, key=value, reverse=True)[:args.num_start]
        starts = [decoded[i] for i in chosen]
        start_z = cache_latents(model, cache, chosen)

    if constrained:
        thresholds = list(args.similarity_thresholds)
        rows = constrained_optimisation(model, regressor, starts, start_z, thresholds, prop, args.steps,
                                        args.step_size, args.step_rule, atomic_nums, args.start_batch,
                                        args.batch_size)
        keys = ("threshold", "start", "start_value", "best", "best_value", "improvement", "similarity", "success")
        header = ["threshold", "start", f"start_{args.property}", "best", f"best_{args.property}",
                  "improvement", "similarity", "success"]
        _write_tsv(args.output, header, [[r[k] for k in keys] for r in rows])
        summary = summarize(rows, thresholds)
        skeys = ("threshold", "starts", "successes", "success_rate", "improvement_mean", "improvement_std",
                 "similarity_mean", "similarity_std")
        _write_tsv(args.summary, skeys, [[s[k] for k in skeys] for s in summary])
        print(format_summary(summary, args.property))
        print(f"wrote {args.output} and {args.summary}")
        return 0

    scores = _Scores(prop)
    rows = []
    for start, z0 in zip(starts, start_z):
        path = ascend(regressor, z0, args.steps, args.step_size, args.step_rule)
        candidates = [s for s in decode(model, path, atomic_nums, args.batch_size) if s]
        best = max(candidates, key=scores.value) if candidates else start
        rows.append((start, scores.value(start), best, scores.value(best), scores.similarity(start, best)))
        print(f"{start} ({rows[-1][1]:.3f}) -> {best} ({rows[-1][3]:.3f}), similarity {rows[-1][4]:.2f}")
    _write_tsv(args.output, ["start", f"start_{args.property}", "best", f"best_{args.property}", "similarity"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
