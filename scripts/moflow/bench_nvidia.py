"""NVIDIA's MoFlow training step, timed like ours: one ``BENCH {json}`` line with the ``train_*`` figures of
``scripts/moflow/bench_model.py`` (FLOPs included).

    python scripts/moflow/bench_nvidia.py --nvidia_dir /tmp/nv/PyTorch/DrugDiscovery/MoFlow --preset qm9

``--nvidia_dir`` is the ``PyTorch/DrugDiscovery/MoFlow`` folder of NVIDIA/DeepLearningExamples (not on
PyPI: `git archive` it from a clone). Its ``moflow`` package shadows ours in this process only. NVIDIA
ships a zinc250k config alone, so the model is built from their config classes with the sizes of our
``--preset`` (qm9: 9 nodes, bond hidden 128/128 with LU 1x1 convs, 27 atom flows, GNN 64, MLP 128/64).
The step is the one ``scripts/moflow/bench_model.py --phase train`` times: their ``MoFlow`` forward
(dequantised) and ``MoFlowLoss``, backward, clipping to norm 1, torch's Adam (their FusedAdam and
clip come from apex, CPU-less), zero_grad; the same inputs (``bench_model.molecules``). Their ActNorm
initialises itself in the first (warm-up) forward.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.append(HERE)  # bench_model: the argument set, the inputs and the timing
import bench_model  # noqa: E402


def nvidia_config(ours):
    """NVIDIA's ``Config`` with the sizes of our ``ModelConfig``."""
    from moflow.config import AtomFlowConfig, BondFlowConfig, Config, DatasetConfig, ModelConfig

    atomic_numbers = [6, 7, 8, 9, 15, 16, 17, 35, 53][:ours.num_atom_channels - 1]
    dataset = DatasetConfig(dataset_name="bench", atomic_num_list=atomic_numbers, max_num_atoms=ours.max_nodes,
                            labels=[], smiles_col="smiles")
    atoms = AtomFlowConfig(n_flow=ours.a_n_flow, hidden_gnn=list(ours.a_hidden_gnn),
                           hidden_lin=list(ours.a_hidden_lin), n_block=ours.a_n_block,
                           mask_row_size_list=[ours.mask_row_size], mask_row_stride_list=[ours.mask_row_stride])
    bonds = BondFlowConfig(hidden_ch=list(ours.b_hidden_ch), conv_lu=ours.b_conv_lu, n_squeeze=ours.b_n_squeeze,
                           n_block=ours.b_n_block, n_flow=ours.b_n_flow)
    return Config(dataset_config=dataset, model_config=ModelConfig(atoms, bonds, noise_scale=ours.noise_scale,
                                                                   learn_dist=ours.learn_dist),
                  max_num_nodes=ours.max_nodes)


def our_config(preset: str):
    """Our preset's ``ModelConfig``, read in a child process (our package and NVIDIA's share a name)."""
    import json
    import subprocess
    code = ("import dataclasses, json, sys; from moflow.config import make_model_config; "
            "print(json.dumps(dataclasses.asdict(make_model_config(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", code, preset], env=env, stdout=subprocess.PIPE, text=True, check=True)
    from types import SimpleNamespace
    return SimpleNamespace(**json.loads(out.stdout))


def train_step(args):
    """(step function, batch): NVIDIA's model and loss, torch Adam, on ``bench_model.molecules`` inputs.
    ``bench_model.run_phase`` times it like ours (``source`` names NVIDIA's package)."""
    import torch
    from moflow.model.model import MoFlow, MoFlowLoss

    ours = our_config(args.preset)
    torch.manual_seed(args.seed)
    config = nvidia_config(ours)
    model, loss_module = MoFlow(config).train(), MoFlowLoss(config)
    x, adj = bench_model.molecules(args, ours, args.batch_size)
    parameters = [*model.parameters(), *loss_module.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=5e-4, betas=(0.9, 0.99))

    def step(i):
        nll_x, nll_adj = loss_module(*model(adj, x))
        loss = nll_x + nll_adj
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step, args.batch_size


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nvidia_dir", required=True, help="PyTorch/DrugDiscovery/MoFlow of DeepLearningExamples")
    known, rest = parser.parse_known_args(argv)
    if not os.path.isfile(os.path.join(known.nvidia_dir, "moflow", "model", "model.py")):
        parser.error(f"--nvidia_dir {known.nvidia_dir} holds no moflow/model/model.py")
    args = bench_model.parse_args(rest)
    sys.path.insert(0, os.path.abspath(known.nvidia_dir))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.phase = "train"
    print("BENCH " + json.dumps(bench_model.run_phase(args, train_step)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
