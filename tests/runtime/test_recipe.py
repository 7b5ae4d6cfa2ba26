"""runtime.recipe: the phases run in order on frozen flags, and finish runs whatever fails."""
import argparse
import types

import pytest

import runtime.distributed
from runtime.errors import ConfigError
from runtime.loop import Position
from runtime.recipe import PHASES, Flags, Optimization, RecipeConfig, train_main


def _recipe(calls, fail_at=None, tmp_path="."):
    """A recipe whose phases record their order; ``fail_at`` raises a ConfigError there."""
    def phase(name, result):
        def run(*args):
            calls.append(name)
            if name == fail_at:
                raise ConfigError(f"{name} failed")
            return result(*args) if callable(result) else result
        return run

    def parse(argv):
        return argparse.Namespace(dist_timeout=1, gpu_affinity="none", device="cpu", tf32=None, log_dir=str(tmp_path),
                                  dllogger_name="log.json", wandb=False, wandb_project=None, tensorboard=False,
                                  silent=True, finetune=False)

    def config(args, env):
        return RecipeConfig(flags=args, recipe="moflow", run_name="test", save_path="")

    def loop(config, env, data, model, optimization, position, logger):
        logger.log((), {"world_size": 1})
        return {"steps": position.step, "flags": config.flags}

    return types.SimpleNamespace(parse_args=phase("parse_args", parse), build_config=phase("build_config", config),
                                 load_data=phase("load_data", "data"), build_model=phase("build_model", "model"),
                                 build_optimizer=phase("build_optimizer", Optimization("optimizer")),
                                 resume=phase("resume", Position(step=3)), run_loop=phase("run_loop", loop))


def test_phases_run_in_order_on_frozen_flags(tmp_path, monkeypatch):
    calls, shutdowns = [], []
    monkeypatch.setattr(runtime.distributed, "shutdown", lambda: shutdowns.append(1))
    result = train_main(_recipe(calls, tmp_path=tmp_path), [])
    assert calls == list(PHASES) and shutdowns == [1]
    assert result["steps"] == 3 and isinstance(result["flags"], Flags)
    with pytest.raises(AttributeError, match="frozen"):
        result["flags"].log_dir = "elsewhere"
    assert (tmp_path / "log.json").exists()


@pytest.mark.parametrize("fail_at", PHASES[1:])
def test_finish_runs_when_a_phase_fails(tmp_path, monkeypatch, fail_at):
    calls, shutdowns = [], []
    monkeypatch.setattr(runtime.distributed, "shutdown", lambda: shutdowns.append(1))
    with pytest.raises(ConfigError, match=f"{fail_at} failed"):
        train_main(_recipe(calls, fail_at=fail_at, tmp_path=tmp_path), [])
    assert calls == list(PHASES[:PHASES.index(fail_at) + 1]) and shutdowns == [1]


def test_flags_are_read_only_and_pickle():
    import copy
    import pickle

    flags = Flags(argparse.Namespace(model=None, cutoff=6.0))
    for write in (lambda: setattr(flags, "model", "gemnet_t"), lambda: delattr(flags, "cutoff")):
        with pytest.raises(AttributeError, match="frozen"):
            write()
    assert vars(pickle.loads(pickle.dumps(flags))) == vars(copy.deepcopy(flags)) == {"model": None, "cutoff": 6.0}


def test_recipe_config_is_frozen():
    config = RecipeConfig(flags=Flags(argparse.Namespace(finetune=True)), recipe="r", run_name="r", save_path="",
                          checkpoint={"extra": {"a": 1}})
    with pytest.raises(Exception, match="cannot assign"):
        config.save_path = "x"
    assert not config.resuming and config.checkpoint_extra == {"a": 1}   # --finetune: weights only
