"""One key derivation per seed: `sbjax prune`, `sbjax metrics` and a sweep draw the same random mask."""

import jax
import numpy as np

from sbjax import cli, experiment, metrics
from sbjax import config as config_lib
from sbjax.seeds import experiment_keys


def test_experiment_keys_are_fixed_by_the_seed_and_distinct():
    data = lambda seed: {k: jax.random.key_data(v).tolist() for k, v in experiment_keys(seed).items()}  # noqa: E731
    assert data(0) == data(0) and data(0) != data(1)
    assert len({str(v) for v in data(0).values()}) == 6
    assert data(3)["init"] == jax.random.key_data(jax.random.key(3)).tolist()  # the seed's own key


def test_cli_prune_and_metrics_random_seed_0_masks_equal_the_sweeps_seed_0_mask(tmp_path, monkeypatch, capsys):
    measured = []  # every mask whose metrics are computed, in order
    compute = metrics.compute_module
    monkeypatch.setattr(metrics, "compute_module", lambda model, variables, mask, *a, **k: (
        measured.append(mask), compute(model, variables, mask, *a, **k))[1])  # fmt: skip
    sets = ["seeds=[0]", 'strategies=["random"]', "compressions=[1,4]", 'finetune={"epochs":0}']
    experiment.run_sweep(config_lib.load_sweep(None, sets), tmp_path, log=lambda _: None)
    sweep_mask = measured[-1]
    flags = ["--model", "mnistnet", "--checkpoint", "mnistnet-mnist5k", "--strategy", "random", "--compression", "4",
             "--seed", "0", "--json"]  # fmt: skip
    for command in ("prune", "metrics"):
        assert cli.main([command, *flags]) == 0, capsys.readouterr().err
        same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), sweep_mask, measured[-1])
        assert all(jax.tree.leaves(same)), command
    kept = sum(int(np.sum(m)) for m in jax.tree.leaves(sweep_mask))
    assert 0 < kept < sum(m.size for m in jax.tree.leaves(sweep_mask))
