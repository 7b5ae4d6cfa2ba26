"""Pieces of graph_parallel training: the EMA, device-side losses and metric sums, baselines, the partition
made in the collate function, scale-factor broadcast."""
import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from graph_parallel.checkpoints import model_from_checkpoint
from graph_parallel.data import EMBEDDED_DATA_DIR, Collater, LmdbDataset, collate_frames
from graph_parallel.ema import EMA
from graph_parallel.losses import SUMS, EnergyBaselines, Normalizer, energy_statistics, s2ef_error_sums, \
    s2ef_loss, s2ef_metrics
from graph_parallel.models import build_model
from graph_parallel.parallel import partition_graph
from runtime.checkpoint import save_checkpoint
from runtime.testing import run_distributed

FRAMES = (0, 9, 18)


def batch_of(frames=FRAMES, symmetric=False):
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    return collate_frames([ds[i] for i in frames], 4.5, 20, symmetric=symmetric)


def test_ema_matches_averaged_model_and_checkpoints_read_it(tmp_path):
    torch.manual_seed(0)
    model = build_model("gemnet_t", "small", cutoff=4.5)
    decay = 0.9

    def avg_fn(averaged, current, n):             # the formula graph_parallel used with AveragedModel
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return d * averaged + (1.0 - d) * current

    reference, ema = AveragedModel(model, avg_fn=avg_fn), EMA(model, decay)
    for _ in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        reference.update_parameters(model)
        ema.update(model)
    assert isinstance(ema.num_updates, int) and ema.num_updates == 30
    for (name, a), b in zip(reference.module.named_parameters(), ema.module.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    state = ema.state_dict()
    assert set(state) == set(reference.state_dict()) and int(state["n_averaged"]) == 30
    path = tmp_path / "ema.pt"
    save_checkpoint(str(path), model, meta={"recipe": "graph_parallel", "model": "gemnet_t",
                                            "config": model.config_dict()},
                    extra={"normalizer": {"mean": 0.0, "std": 1.0}, "cutoff": 4.5, "max_neighbors": 20, "ema": state})
    loaded, info = model_from_checkpoint(str(path))
    assert info["ema"]
    for a, b in zip(loaded.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)
    again = EMA(model, decay)
    again.load_state_dict(torch.load(path, weights_only=True)["extra"]["ema"])
    assert again.num_updates == 30 and all(torch.equal(a, b) for a, b in zip(again.parameters(), ema.parameters()))


def test_loss_and_metric_sums_stay_on_the_device_without_syncs():
    """On the meta device a CPU tensor in a stack, ``.item()`` or boolean-mask indexing (nonzero) raise."""
    batch = batch_of().to("meta")
    energy = torch.zeros(batch.num_structures, device="meta", requires_grad=True)
    forces = torch.zeros(batch.num_atoms, 3, device="meta")
    loss, value = s2ef_loss(energy, forces, batch, Normalizer(1.0, 2.0))
    assert loss.device.type == value.device.type == "meta"
    sums = s2ef_error_sums(energy, forces, batch, Normalizer(1.0, 2.0), EnergyBaselines())
    assert sums.device.type == "meta" and sums.shape == (len(SUMS),)


def test_metrics_and_baselines_from_sums():
    batch = batch_of()
    norm = Normalizer(3.0, 2.0)
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    _, baselines = energy_statistics(ds)
    perfect_e = (batch.energy.double() - norm.mean) / norm.std
    metrics = s2ef_metrics(s2ef_error_sums(perfect_e, batch.forces / norm.std, batch, norm, baselines).tolist(), norm)
    assert metrics["energy_mae"] < 1e-6 and metrics["forces_mae"] < 1e-6 and metrics["efwt"] == 100.0
    assert metrics["forces_cos"] == pytest.approx(1.0) and metrics["size"] == 3
    free = batch.fixed == 0
    energies = batch.energy.double().numpy()
    weights = np.array(baselines.linref)
    linref = np.array([weights[batch.atomic_numbers[batch.batch == k].numpy()].sum() for k in range(3)])
    assert metrics["energy_mae_baseline_mean"] == pytest.approx(np.abs(energies - baselines.mean).mean())
    assert metrics["energy_mae_baseline_linref"] == pytest.approx(np.abs(energies - linref - baselines.bias).mean())
    assert metrics["forces_mae_baseline_zero"] == pytest.approx(float(batch.forces[free].abs().double().mean()))
    zero = s2ef_metrics(s2ef_error_sums(perfect_e * 0 - norm.mean / norm.std, batch.forces * 0, batch, norm).tolist(),
                        norm, baselines=False)
    assert zero["forces_mae"] == pytest.approx(metrics["forces_mae_baseline_zero"])
    assert zero["energy_mae"] == pytest.approx(np.abs(energies).mean()) and "energy_mae_baseline_mean" not in zero


def test_linear_reference_recovers_element_energies():
    rng = np.random.default_rng(0)
    counts = np.zeros((40, 101))
    counts[:, [1, 8, 29]] = rng.integers(0, 6, size=(40, 3))
    energies = counts[:, 1] * -0.5 + counts[:, 8] * -3.0 + counts[:, 29] * -1.25 + 2.0
    fit = EnergyBaselines.fit(counts, energies)
    assert fit.linref[8] == pytest.approx(-3.0) and fit.linref[29] == pytest.approx(-1.25)
    assert fit.bias == pytest.approx(2.0) and fit.linref[50] == 0.0 and fit.mean == pytest.approx(energies.mean())
    assert EnergyBaselines.from_state(fit.state_dict()) == fit


@pytest.mark.parametrize("model, gp_rank", [("dimenetpp", 1), ("gemnet_t", 0)])
def test_collate_partitions_on_the_cpu(model, gp_rank):
    net = build_model(model, "small")
    ds = LmdbDataset(EMBEDDED_DATA_DIR / "train.lmdb")
    collate = Collater(4.5, 20, net.symmetric_graph, gp_rank, 2, net.triplet_kind)
    batch = collate([ds[i] for i in FRAMES])
    ref = partition_graph(batch.edge_index, batch.cell_offsets, batch.num_atoms, gp_rank, 2, net.triplet_kind)
    assert (batch.part.atom_start, batch.part.edge_sizes) == (ref.atom_start, ref.edge_sizes)
    for name in ("id_kj", "id_ji_local", "id3_ba_local", "id3_ca_local", "id3_ragged", "id_swap"):
        a, b = getattr(batch.part, name), getattr(ref, name)
        assert (a is None and b is None) or torch.equal(a, b), name
    moved = batch.to("cpu", dtype=torch.float64, non_blocking=True)
    assert moved.pos.dtype == torch.float64 and moved.part is not batch.part and moved.part.atom_sizes == ref.atom_sizes
    assert Collater(4.5, 20)([ds[0]]).part is None


def _new_run_worker(rank, world):
    from graph_parallel import train
    from graph_parallel.models import scale_factors_by_name

    torch.manual_seed(rank)                                   # a different initialisation per rank
    model = build_model("gemnet_t", "small")
    fitted = []

    def fake_fit(m, batches):                                 # what rank 0's fit would set
        fitted.append(rank)
        for k, factor in enumerate(scale_factors_by_name(m).values()):
            factor.scale.fill_(2.0 + k)

    train.fit_scale_factors = fake_fit
    train.scale_factor_batches = lambda *a: []
    args = train.build_parser().parse_args(["--model", "gemnet_t"])
    train.start_new_run(model, "gemnet_t", args, None, None, "cpu")
    source = train.scale_source(args, "gemnet_t", None)
    factors = [float(f.scale) for f in scale_factors_by_name(model).values()]
    return source, fitted, factors, [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.distributed
def test_new_run_fits_scale_factors_on_rank_0_and_broadcasts_the_whole_model():
    """Rank 1 fits nothing; both ranks end with rank 0's initial weights and fitted factors."""
    (src0, fit0, f0, state0), (src1, fit1, f1, state1) = run_distributed(_new_run_worker, 2)
    assert (src0, src1, fit0, fit1) == ("fitted", "fitted", [0], [])
    assert f0 == f1 == [2.0 + k for k in range(len(f0))] and len(f0) == 9
    assert all(torch.equal(a, b) for a, b in zip(state0, state1))
    torch.manual_seed(0)
    assert torch.equal(state1[0], next(build_model("gemnet_t", "small").parameters()).detach())


@pytest.mark.parametrize("name,overrides", [("dimenetpp", {}), ("gemnet_t", {}), ("gemnet_dt", {}),
                                            ("gemnet_t", {"symmetric_edges": "one_sided"})])
def test_graph_kinds_of_a_config_are_those_of_the_built_model(name, overrides):
    """Training builds its collater from the config (before the model exists); evaluate, predict and
    the calculator from the model: both must ask for the same radius graph and triplets."""
    from graph_parallel.models import edge_kind, graph_kinds, preset_config

    model = build_model(name, "small", **overrides)
    assert graph_kinds(name, preset_config(name, "small", **overrides)) == (edge_kind(model), model.triplet_kind)
