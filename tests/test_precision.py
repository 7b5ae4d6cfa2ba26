"""``--amp`` against fp32 on realistic sizes, through CPU bf16 autocast (fp16 autocast has no CPU path).

Reductions (graph sums, energies, losses, metric sums, all-reduces) must stay float32 under
autocast: a bf16 sum of a few hundred terms loses whole percents. Bounds, and what the code measures
(small presets, seeded initialisation; "bf16 sums" is the code before the fp32 accumulation):

=========================================  ==========  ===========  ======
quantity (bf16 vs fp32)                     measured    bf16 sums    bound
=========================================  ==========  ===========  ======
scatter_sum of 2,000 rows into one          < 0.2 %     > 50 %       0.4 %
DimeNet++ energy, 2 x 112-atom cells        0.24 %      5.6 %        0.5 %
GemNet-T / -dT energy, 2 x 112-atom cells   5.8 / 1.6 %              8 / 3 %
SE(3)-Transformer prediction, 32 molecules  3.4 %                    6 %
MoFlow NLL (qm9 preset), 128 graphs         0.014 %                  1 %
=========================================  ==========  ===========  ======

GemNet misses the 0.5 % of DimeNet++ for a reason other than reductions: a 14-atom cell has the
same relative error as its 112-atom 2x2x2 repeat (1.6 % and 1.4 % before the scale-factor fit),
and running any one module type in fp32 does not remove it, so it is the bf16 arithmetic of its
deep edge network. Its energies and forces are accumulated and all-reduced in float32 all the
same (the dtype is checked here).
"""
import pytest
import torch

from runtime.graph import scatter_sum

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def rel(a, b):
    return ((a.double() - b.double()).abs() / b.double().abs()).max().item()


def test_scatter_sum_accumulates_bf16_rows_in_float32():
    rows = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)).add_(0.5)
    index = torch.zeros(2000, dtype=torch.long)
    exact = rows.double().sum(0)
    summed = scatter_sum(rows.bfloat16(), index, 1)
    assert summed.dtype == torch.bfloat16                       # the result keeps the input dtype
    assert rel(summed[0], exact) < 4e-3


def _repeat(frame, reps=(2, 2, 2)):
    """A periodic supercell of an OC20-format frame (the 14-atom EMT slabs become 112-atom cells)."""
    pos, cell = frame["pos"], frame["cell"][0]
    shifts = torch.stack(torch.meshgrid(*[torch.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3).float()
    n = len(shifts)
    out = dict(frame)
    out.update(pos=(pos[None] + (shifts @ cell)[:, None]).reshape(-1, 3),
               cell=(torch.tensor(reps, dtype=torch.float32)[:, None] * cell)[None],
               atomic_numbers=frame["atomic_numbers"].repeat(n), tags=frame["tags"].repeat(n),
               fixed=frame["fixed"].repeat(n), forces=frame["forces"].repeat(n, 1),
               natoms=torch.tensor(pos.shape[0] * n), energy=frame["energy"] * n)
    return out


@pytest.mark.parametrize("name,bound", [("dimenetpp", 5e-3), ("gemnet_t", 8e-2), ("gemnet_dt", 3e-2)])
def test_graph_parallel_energies_under_bf16_autocast(name, bound):
    from graph_parallel.data import EMBEDDED_DATA_DIR, Collater, LmdbDataset
    from graph_parallel.models import build_model, fit_scale_factors, predict

    frames = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    torch.manual_seed(0)
    model = build_model(name, "small")
    with torch.no_grad():     # a trained-like energy head: DimeNet++ starts from zero output layers
        for out in model.outputs:
            for layer in out.modules():
                if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
                    layer.weight.normal_(0, layer.weight.shape[1] ** -0.5)
    collate = Collater(6.0, 50, model.symmetric_graph, 0, 1, model.triplet_kind)
    if name != "dimenetpp":
        fit_scale_factors(model, [collate([frames[i], frames[i + 9]]) for i in (0, 18)])
    batch = collate([_repeat(frames[i]) for i in (0, 27)])
    assert batch.num_atoms == 224
    e32, f32 = predict(model, batch, batch.part, None, compute_forces=True, create_graph=False)
    with torch.autocast(**BF16):
        e16, f16 = predict(model, batch, batch.part, None, compute_forces=True, create_graph=False)
    assert e16.dtype == f16.dtype == torch.float32
    error = rel(e16, e32)
    print(f"{name}: bf16 energy error {100 * error:.2f} %")
    assert error < bound


def test_se3_transformer_prediction_under_bf16_autocast():
    from se3_transformer.data.qm9 import QM9GraphDataset, load_qm9
    from se3_transformer.engine import PRESETS, build_model

    arrays = load_qm9("sample", num_molecules=64)
    data = QM9GraphDataset(arrays, list(range(64)))
    batch = data.collate(list(range(32)))
    torch.manual_seed(0)
    model = build_model(PRESETS["small"]).eval()
    with torch.no_grad():
        p32 = model(batch.graph, batch.basis)
        with torch.autocast(**BF16):
            p16 = model(batch.graph, batch.basis)
    error = ((p16.double() - p32.double()).abs().mean() / p32.double().abs().mean()).item()
    print(f"se3: bf16 prediction error {100 * error:.2f} % of the mean |prediction|")
    assert error < 6e-2


def test_moflow_nll_under_bf16_autocast():
    """The qm9 preset on a batch of 128 QM9-sized graphs (9 atoms, one-hot atoms and bonds)."""
    import torch.nn.functional as F

    from moflow.config import make_model_config
    from moflow.model import MoFlow, initialize_actnorm

    g = torch.Generator().manual_seed(0)
    x = F.one_hot(torch.randint(0, 5, (128, 9), generator=g), 5).float()
    codes = torch.triu(torch.randint(0, 4, (128, 9, 9), generator=g), 1)
    adj = F.one_hot(codes + codes.transpose(1, 2), 4).permute(0, 3, 1, 2).float()
    torch.manual_seed(0)
    model = MoFlow(make_model_config("qm9", num_atom_channels=5))
    initialize_actnorm(model, adj, x)

    def nll(autocast: bool):
        torch.manual_seed(1)                                # the same dequantisation noise
        with torch.no_grad(), torch.autocast(**BF16, enabled=autocast):
            nll_x, nll_adj = model.nll(*model(adj, x, dequantize=True), reduce=False)
        assert nll_x.dtype == nll_adj.dtype == torch.float32
        return nll_x + nll_adj

    error = rel(nll(True).mean(), nll(False).mean())
    print(f"moflow: bf16 NLL error {100 * error:.3f} %")
    assert error < 1e-2
