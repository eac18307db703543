"""A user's strategy runs in a sweep by import path; the runner gives each strategy what it declares."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from sbjax import config as config_lib
from sbjax import experiment, results

MODULE = '''
import jax.numpy as jnp
import sbjax

def squared(params, _grads, fraction, *, mask=None, selection=sbjax.Selection()):
    """w**2: global magnitude by construction."""
    return sbjax.global_mask(sbjax.map_prunable(jnp.square, params, selection=selection), fraction, params, mask=mask)

def spy(params, grads, fraction, *, key, selection=sbjax.Selection(), **rest):
    """Declares grads and key (not activations); records what the runner passed, then prunes at random."""
    CALLS.append({"grads": grads is not None, "key": key is not None, "activations": rest.get("activations") is not None})
    return sbjax.strategies.random(params, None, fraction, key=key, selection=selection)

CALLS = []
'''
SETS = ['models=["mnistnet"]', "compressions=[1,8]", "seeds=[0]", 'finetune={"epochs":1,"steps_per_epoch":2}']
SAME = ["dataset", "model", "checkpoint", "compression", "seed", "params_total", "params_nonzero", "real_compression",
        "macs", "macs_nonzero", "flops", "speedup", "memory", "pre_top1", "pre_top5", "pre_loss", "top1", "top5",
        "loss", "val_top1", "epochs"]  # fmt: skip


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mystrategies.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_import_path_strategy_gives_global_magnitudes_rows_and_carries_its_name(user_module, tmp_path):
    sets = SETS + ['strategies=["global_magnitude","mystrategies:squared"]']
    rows = experiment.run_sweep(config_lib.load_sweep("default", sets), tmp_path / "out", log=lambda _: None)
    frame = results.aggregate(rows).set_index("strategy")
    assert sorted(frame.index) == ["global_magnitude", "mystrategies:squared", "none"]
    pd.testing.assert_series_equal(frame.loc["mystrategies:squared", SAME], frame.loc["global_magnitude", SAME],
                                   check_names=False)  # fmt: skip
    assert frame.loc["global_magnitude", "real_compression"] == pytest.approx(8.0, rel=1e-3)


def test_the_runner_passes_exactly_the_declared_inputs(user_module, tmp_path):
    import mystrategies

    sets = SETS + ['strategies=["mystrategies:spy"]', 'finetune={"epochs":0}']
    experiment.run_sweep(config_lib.load_sweep("default", sets), tmp_path / "out", log=lambda _: None)
    assert mystrategies.CALLS and mystrategies.CALLS[-1] == {"grads": True, "key": True, "activations": False}


def test_the_cli_runs_a_strategy_from_pythonpath(user_module, tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{user_module}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    args = [sys.executable, "-m", "sbjax.cli", "run", "--results", str(tmp_path / "cli")]
    for item in SETS + ['strategies=["mystrategies:squared"]', 'finetune={"epochs":0}']:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frame = results.aggregate(results.Store.open(tmp_path / "cli").rows())
    assert sorted(frame.strategy) == ["mystrategies:squared", "none"]


def test_the_scoring_mode_reaches_the_gradient_scores_and_nothing_else():
    import jax
    import numpy as np

    from sbjax.config import ExperimentConfig

    base = dict(dataset="mnist5k", model="resnet20", compression=4.0, seed=0, finetune={"epochs": 0})
    setup = experiment.prepare(ExperimentConfig(strategy="global_gradient", **base), verbose=False)

    def mask(strategy, scoring):
        return experiment.make_mask(setup, ExperimentConfig(strategy=strategy, scoring=scoring, **base))

    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), mask("global_gradient", "eval"),
                        mask("global_gradient", "train"))  # fmt: skip
    assert not all(jax.tree.leaves(same))  # seeded batch-norm statistics are not the batch's
    jax.tree.map(np.testing.assert_array_equal, mask("global_magnitude", "eval"), mask("global_magnitude", "train"))
