"""--fairchem_config: a fairchem training YAML read as graph_parallel.train flags (command-line flags win),
fields with no meaning here refused by name; a tiny run trains the architecture the file describes."""
import textwrap

import pytest

from graph_parallel import train
from graph_parallel.fairchem_config import fairchem_defaults
from runtime.errors import ConfigError, run_main
from tests.graph_parallel.gp_helpers import tiny_dataset

BASE = """\
trainer: forces
dataset:
  train:
    src: {data}/train.lmdb
    normalize_labels: True
    target_mean: -0.7554
    target_std: 2.8873
    grad_target_mean: 0.0
    grad_target_std: 2.8873
  val:
    src: {data}/val.lmdb
logger: tensorboard
task:
  dataset: trajectory_lmdb
  primary_metric: forces_mae
"""
GEMNET_DT = """\
includes:
  - {base}
model:
  name: gemnet_t
  num_spherical: 4
  num_radial: 8
  num_blocks: 1
  emb_size_atom: 16
  emb_size_edge: 16
  emb_size_trip: 8
  emb_size_rbf: 4
  emb_size_cbf: 4
  emb_size_bil_trip: 8
  num_before_skip: 1
  num_after_skip: 1
  num_concat: 1
  num_atom: 1
  cutoff: 4.5
  max_neighbors: 12
  rbf: {{name: gaussian}}
  envelope: {{name: polynomial, exponent: 5}}
  cbf: {{name: spherical_harmonics}}
  extensive: True
  otf_graph: False
  output_init: HeOrthogonal
  activation: silu
  regress_forces: True
  direct_forces: True
optim:
  batch_size: 4
  eval_batch_size: 4
  num_workers: 0
  lr_initial: 0.002
  optimizer: AdamW
  scheduler: ReduceLROnPlateau
  mode: min
  factor: 0.5
  patience: 2
  max_epochs: 1
  force_coefficient: 100
  energy_coefficient: 1
  ema_decay: 0.99
  clip_grad_norm: 10
  loss_energy: mae
  loss_force: l2mae
  weight_decay: 0
"""


@pytest.fixture
def config(tmp_path):
    data = tiny_dataset(tmp_path / "s2ef")
    (tmp_path / "base.yml").write_text(BASE.format(data=data))
    path = tmp_path / "gemnet-dT.yml"
    path.write_text(GEMNET_DT.format(base=tmp_path / "base.yml"))
    return path, data


def test_fields_map_to_flags_and_command_line_flags_win(config, capsys):
    path, data = config
    args = train.parse_args(["--fairchem_config", str(path)])
    assert (args.model, args.dataset, args.cutoff, args.max_neighbors, args.batch_size, args.learning_rate,
            args.optimizer, args.scheduler, args.lr_factor, args.lr_patience, args.epochs, args.force_coef,
            args.energy_coef, args.ema_decay, args.gradient_clip, args.tensorboard) == (
        "gemnet_dt", str(data), 4.5, 12, 4, 0.002, "adamw", "plateau", 0.5, 2, 1, 100.0, 1.0, 0.99, 10.0, True)
    assert args.model_config == {"symmetric_edges": "one_sided", "force_mlp_dense": True, "num_spherical": 4,
                                 "num_radial": 8, "num_blocks": 1, "emb_size_atom": 16, "emb_size_edge": 16,
                                 "emb_size_trip": 8, "emb_size_rbf": 4, "emb_size_cbf": 4, "emb_size_bil_trip": 8,
                                 "num_before_skip": 1, "num_after_skip": 1, "num_concat": 1, "num_atom": 1,
                                 "envelope_exponent": 5}
    assert "ignoring dataset.train.target_mean" in capsys.readouterr().out
    mine = train.parse_args(["--fairchem_config", str(path), "--learning_rate", "3e-3", "--batch_size", "2",
                             "--dataset", "elsewhere"])
    assert (mine.learning_rate, mine.batch_size, mine.dataset, mine.optimizer) == (3e-3, 2, "elsewhere", "adamw")


def test_a_tiny_run_trains_the_architecture_the_file_describes(config, tmp_path):
    import torch

    path, _ = config
    out = tmp_path / "run"
    result = train.main(["--fairchem_config", str(path), "--max_steps", "2", "--log_dir", str(out), "--silent",
                         "--fit_scale_batches", "1", "--warmup_steps", "1"])
    assert result["save_ckpt_path"] == str(out / "checkpoint.pt")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    cfg = state["meta"]["config"]
    assert state["meta"]["model"] == "gemnet_dt" and state["extra"]["max_neighbors"] == 12
    assert (cfg["num_blocks"], cfg["emb_size_atom"], cfg["cutoff"], cfg["symmetric_edges"], cfg["direct_forces"]) == (
        1, 16, 4.5, "one_sided", True)


def test_fields_without_a_meaning_here_are_refused_by_name(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "s2ef")
    path = tmp_path / "other.yml"
    path.write_text(textwrap.dedent(f"""\
        trainer: forces
        dataset:
          train: {{src: {data}/train.lmdb}}
          val: {{src: /elsewhere/val_id}}
        model: {{name: gemnet_t, activation: tanh, cutoff: 6.0}}
        optim:
          eval_every: 5000
          optimizer_params: {{amsgrad: True}}
          warmup_factor: 0.2
        slurm: {{partition: gpu}}
        """))
    with pytest.raises(ConfigError) as info:
        fairchem_defaults(str(path))
    message = str(info.value)
    for name in ("dataset.*.src", "model.activation: 'tanh'", "optim.eval_every: 5000 (evaluation runs every "
                 "--eval_interval", "optim.optimizer_params.amsgrad", "optim.warmup_factor", "slurm.partition"):
        assert name in message, name
    assert "dataset.*.src" not in str(pytest.raises(ConfigError, fairchem_defaults, str(path),
                                                    dataset_given=True).value)
    assert run_main(train.main, ["--fairchem_config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --fairchem_config")
    assert run_main(train.main, ["--fairchem_config", str(tmp_path / "absent.yml")]) == 2
    (tmp_path / "bad.yml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        fairchem_defaults(str(tmp_path / "bad.yml"))
