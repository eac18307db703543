"""Pruning schedules: the ramp, the rounds, rewinding, drop/grow counts, zeros, traces, K models, resume."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import compression, experiment, finetune, schedules, selection, setups, threshold
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig
from sbjax.schedules.gradual import kept_fraction

TESTS = Path(__file__).parent
FINETUNE = {"epochs": 2, "steps_per_epoch": 5, "batch_size": 32}
BASE = dict(dataset="mnist5k", model="mlp", seed=0, test_size=100, finetune=FINETUNE)
TOTAL = 10  # 2 epochs of 5 steps


def config(strategy="global_magnitude", compression=8, schedule="oneshot", **changes) -> ExperimentConfig:
    return setups.resolve(ExperimentConfig(strategy=strategy, compression=compression, schedule=schedule,
                                           **{**BASE, **changes}))  # fmt: skip


@pytest.fixture(scope="module")
def setup():
    return setups.prepare(config(), verbose=False)


def prunable_counts(params, mask, sel):
    flags = jax.tree.leaves(selection.prunable(params, sel))
    return [int(np.sum(np.asarray(m) != 0)) for f, m in zip(flags, jax.tree.leaves(mask)) if f]


def n_prunable(setup):
    return compression.counts(setup.variables["params"], setup.selection).prunable


class Recording:
    """Wraps a schedule's ``update``: records (step, params before, mask before, mask after)."""

    calls: list = []

    def update(self, step, ctx, variables, mask):
        new = super().update(step, ctx, variables, mask)
        type(self).calls.append((step, variables["params"], mask, new, ctx.fraction))
        return new


@dataclasses.dataclass(frozen=True)
class RecordedGradual(Recording, schedules.Gradual):
    calls = []


@dataclasses.dataclass(frozen=True)
class RecordedRigL(Recording, schedules.RigL):
    calls = []


@dataclasses.dataclass(frozen=True)
class RecordedSet(Recording, schedules.Set):
    calls = []


def test_gradual_sparsity_at_each_update_equals_the_formula(setup):
    RecordedGradual.calls.clear()
    schedule = RecordedGradual(frequency=2, end=0.8)
    row = experiment.run_experiment(setup, config(schedule=schedule))
    steps = [c[0] for c in RecordedGradual.calls]
    assert steps == [0, 2, 4, 6, 8]
    n = n_prunable(setup)
    fraction = RecordedGradual.calls[0][4]
    for step, _, _, new, _ in RecordedGradual.calls:
        want = int(threshold.keep_count(jnp.float32(kept_fraction(step, fraction, 0.0, 0, 8)), n))
        assert sum(prunable_counts(setup.variables["params"], new, setup.selection)) == want, step
    assert sum(prunable_counts(setup.variables["params"], RecordedGradual.calls[-1][3], setup.selection)) == \
        int(threshold.keep_count(jnp.float32(fraction), n))
    assert row["real_compression"] == pytest.approx(8, rel=1e-4) and row["schedule"] == "gradual(end=0.8, frequency=2)"
    # epoch 1 (steps 0-4) ends before the ramp does: it is logged but never selected
    assert [h["final"] for h in row["history"]] == [False, True]


def test_kept_fraction_follows_zhu_and_gupta():
    assert kept_fraction(0, 0.1, 0.0, 0, 100) == 1.0
    assert kept_fraction(50, 0.1, 0.0, 0, 100) == pytest.approx(1 - (0.9 + (0 - 0.9) * 0.5**3))
    assert kept_fraction(30, 0.1, 0.5, 20, 60) == pytest.approx(1 - (0.9 + (0.5 - 0.9) * 0.75**3))
    assert kept_fraction(100, 0.1, 0.0, 0, 100) == 0.1


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero_between_updates(setup, optimizer):
    RecordedGradual.calls.clear()
    schedule = RecordedGradual(frequency=3, end=0.9)
    finetune_ = {**FINETUNE, "optimizer": optimizer, "lr": 0.01, "weight_decay": 0.01}
    experiment.run_experiment(setup, config(schedule=schedule, finetune=finetune_))
    assert len(RecordedGradual.calls) >= 3
    for (_, _, _, previous, _), (step, params, _, _, _) in zip(RecordedGradual.calls, RecordedGradual.calls[1:]):
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(previous)):
            assert np.all(np.asarray(p)[np.asarray(m) == 0] == 0), f"a pruned weight moved before step {step}"


@pytest.mark.parametrize("cls", [RecordedRigL, RecordedSet])
def test_drop_grow_keeps_every_layer_count_exact(setup, cls):
    cls.calls.clear()
    schedule = cls(frequency=2, end=1.0, alpha=0.5, distribution="erk")
    row = experiment.run_experiment(setup, config(strategy="random", schedule=schedule))
    assert [c[0] for c in cls.calls] == [2, 4, 6, 8]
    first = prunable_counts(setup.variables["params"], cls.calls[0][2], setup.selection)
    changed = 0
    for _, params, before, after, _ in cls.calls:
        assert prunable_counts(params, after, setup.selection) == first
        changed += sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert changed > 0, "drop/grow should move connections"
    assert sum(first) == int(threshold.keep_count(jnp.float32(cls.calls[0][4]), n_prunable(setup)))
    assert row["real_compression"] == pytest.approx(8, rel=1e-4)


def test_iterative_rounds_compressions_and_rows(setup):
    row = experiment.run_experiment(setup, config(schedule={"name": "iterative", "rounds": 3}))
    rounds = [*row["rounds"], row]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["compression"] for r in rounds] == [2.0, 4.0, 8.0]
    params = setup.variables["params"]
    counts = compression.counts(params, setup.selection)
    for r in rounds:
        f = jnp.float32(compression.fraction_for(r["compression"], params, setup.selection))
        assert r["params_nonzero"] == counts.unprunable + int(threshold.keep_count(f, counts.prunable))
        assert r["real_compression"] == pytest.approx(r["compression"], rel=1e-4)
    assert len(row["history"]) == 3 * FINETUNE["epochs"] and row["history"][-1]["round"] == 3


def trainings(monkeypatch) -> list:
    """Records the (variables, masks) of every training the runner starts."""
    calls, real = [], experiment.finetune_many

    def spy(model, variables, masks, *args, **kwargs):
        calls.append((variables, masks))
        return real(model, variables, masks, *args, **kwargs)

    monkeypatch.setattr(experiment, "finetune_many", spy)
    return calls


def test_rewinding_restores_the_exact_saved_weights(setup, monkeypatch):
    """From scratch, rewind to step 3: rounds 1 and 2 start from the weights after 3 steps of the dense training."""
    calls = trainings(monkeypatch)
    cfg = config(schedule={"name": "iterative", "rounds": 2, "rewind": 3})
    experiment.run_experiment(setup, cfg)
    assert len(calls) == 3  # round 0 (dense), rounds 1 and 2
    monkeypatch.undo()
    settings = dataclasses.replace(cfg.settings, epochs=1, steps_per_epoch=3)
    after_3 = finetune.finetune(setup.model, setup.variables, jax.tree.map(jnp.ones_like, setup.variables["params"]),
                                setup.train, setup.val, settings, experiment.experiment_keys(0)["finetune"],
                                transform_train=setup.transform(True), transform_eval=setup.transform(False),
                                log=lambda _: None).variables  # fmt: skip
    for variables, _ in calls[1:]:
        jax.tree.map(np.testing.assert_array_equal, variables[0], after_3)
    assert not np.array_equal(jax.tree.leaves(calls[0][0][0])[0], jax.tree.leaves(after_3)[0])


def test_a_mask_update_does_not_retrace(setup):
    cfg = config(schedule={"name": "gradual", "frequency": 1, "end": 1.0})
    step = finetune._steps(setup.model, cfg.settings.optimizer, "sequential")[1]  # cached: the loop's own
    strategy = experiment._jitted(experiment.strategies.resolve("global_magnitude"))
    swap = experiment._with_masks(cfg.settings.optimizer)

    def sizes():  # other tests may have compiled these functions for other shapes already
        return step._cache_size(), strategy._cache_size(), swap._cache_size()

    before = sizes()
    experiment.run_experiment(setup, cfg)  # ten mask updates
    first = sizes()
    experiment.run_experiment(setup, config(compression=4, schedule={"name": "gradual", "frequency": 1, "end": 1.0}))
    assert sizes() == first
    assert first[0] - before[0] <= 1 and first[2] - before[2] <= 1  # one trace of the train step and of the swap


@pytest.mark.parametrize("schedule", [{"name": "gradual", "frequency": 2}, {"name": "rigl", "frequency": 2}])
def test_k_stacked_models_with_a_schedule_equal_k_single_runs(setup, schedule):
    configs = [config(compression=c, schedule=schedule, seed=0) for c in (4, 8)]
    together = experiment.run_experiments(setup, configs)
    for got, cfg in zip(together, configs):
        want = experiment.run_experiment(setup, cfg)
        for key in ("params_nonzero", "real_compression", "top1", "pre_top1", "epochs", "compression"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_schedules_in_sweeps_ids_and_references():
    sweep = SweepConfig(("mnist5k",), ("mlp",), ("global_magnitude",), (1, 8), (0,),
                        schedules=("oneshot", {"name": "iterative", "scratch": True}, "gradual"))  # fmt: skip
    experiments = sweep.experiments()
    refs = [c for c in experiments if c.strategy == "none"]
    assert [c.schedule.name for c in refs] == ["oneshot", "at_init"]  # one reference per starting point
    assert [c.schedule.name for c in experiments if c.strategy != "none"] == ["oneshot", "iterative", "gradual"]
    resolved = setups.resolve_all(experiments)
    assert len({c.id for c in resolved}) == len(resolved)
    plain = ExperimentConfig(**{**BASE, "strategy": "random", "compression": 4})
    assert "schedule" not in setups.resolve(plain).identity()  # oneshot keeps the ids of earlier results
    with pytest.raises(ConfigError, match="unknown schedule 'slow'"):
        SweepConfig(("mnist5k",), ("mlp",), ("random",), (4,), (0,), schedules=("slow",))
    with pytest.raises(ConfigError, match="frequency must be a int"):
        ExperimentConfig(**{**BASE, "strategy": "random", "compression": 4}, schedule={"name": "gradual", "frequency": "x"})


SETS = ['models=["mlp"]', "checkpoints={}", 'strategies=["global_magnitude"]', "compressions=[8]", "seeds=[0]",
        'schedules=[{"name":"gradual","frequency":2,"end":0.9}]', 'finetune={"epochs":4,"steps_per_epoch":5}',
        "test_size=100"]  # fmt: skip
KILLABLE = f"""
import sys
from sbjax import config, experiment
experiment.run_sweep(config.load_sweep(None, {SETS!r}), sys.argv[1], log=print)
"""


def test_kill_9_during_a_gradual_run_resumes_to_identical_results(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    from sbjax import config as config_lib

    experiment.run_sweep(config_lib.load_sweep(None, SETS), tmp_path / "reference", log=lambda _: None)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    reference_done = False
    for line in proc.stdout:
        reference_done = reference_done or line.startswith("[1/2]")
        if reference_done and line.startswith("epoch 2/"):  # the ramp is under way: the masks have changed
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "killed")], env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 1/" not in resumed.stdout + resumed.stderr  # resumed, not restarted
    from sbjax import results

    tables = [results.aggregate(results.Store.open(tmp_path / f).rows()).drop(columns=["wall_time"])
              for f in ("reference", "killed")]  # fmt: skip
    import pandas as pd

    pd.testing.assert_frame_equal(tables[0], tables[1])  # NaN (a column a row lacks) equals NaN


def test_the_reinit_control_of_iterative_pruning_keeps_the_tickets_masks(setup, monkeypatch):
    """reinit(M) trains M's masks from a fresh initialization; a shadow ticket follows M's rounds."""
    calls = trainings(monkeypatch)
    schedule = {"name": "iterative", "rounds": 2}
    ticket = experiment.run_experiment(setup, config(schedule=schedule))
    tickets, calls[:] = list(calls), []
    control = experiment.run_experiment(setup, config(strategy="reinit(global_magnitude)", schedule=schedule))
    assert [len(v) for v, _ in tickets] == [1, 1, 1] and [len(v) for v, _ in calls] == [1, 2, 1]  # round 0 is dense
    for (_, want), (_, got) in zip(tickets, calls):
        for m in got:  # the control and its shadow train the ticket's masks
            jax.tree.map(np.testing.assert_array_equal, m, want[0])
    for (v_ticket, _), (v_control, _) in zip(tickets[1:], calls[1:]):
        assert not np.array_equal(jax.tree.leaves(v_control[0])[-1], jax.tree.leaves(v_ticket[0])[-1])  # reinitialized
        if len(v_control) == 2:
            jax.tree.map(np.testing.assert_array_equal, v_control[1], v_ticket[0])  # the shadow is the ticket
    assert [r["compression"] for r in (*control["rounds"], control)] == [r["compression"] for r in (*ticket["rounds"], ticket)]


def test_the_runner_gives_a_strategy_the_loss_and_the_forward_pass_it_declares(setup):
    seen = {}

    def spy(params, _grads, fraction, *, loss, apply, input_shape, selection, mask=None):
        seen.update(logits=apply(params, jax.numpy.ones((2, *input_shape))).shape, shape=input_shape)
        jax.debug.callback(lambda value: seen.update(loss=float(value)), loss(params))  # the spy runs under jit
        return experiment.strategies.global_magnitude(params, None, fraction, selection=selection, mask=mask)

    strategy = experiment.strategies.from_function(spy, name="spy")
    assert strategy.needs == {"loss", "apply"}
    cfg = config(strategy="global_magnitude")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment.strategies, "resolve", lambda name: strategy)
        experiment.make_mask(setup, cfg)
    x, y = experiment._scoring_batch(setup, experiment.experiment_keys(0)["score"], FINETUNE["batch_size"])
    logits = setup.model.apply(setup.variables, x, train=False)
    assert seen["loss"] == pytest.approx(float(experiment.scoring.cross_entropy(logits, y)), rel=1e-5)
    assert seen["shape"] == setup.input_shape and seen["logits"] == (2, 10)
