"""Optimizer configs match PyTorch's optimizers step for step; presets hold the published values."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbjax.optim import PRESETS, FinetuneConfig, OptimizerConfig, make_optimizer, make_schedule, preset

GRADS = [np.array([0.5, -1.0, 2.0, 0.0, -0.25], np.float32) * (k + 1) * (-1) ** k for k in range(5)]
START = np.array([1.0, -2.0, 0.5, 3.0, 0.0], np.float32)


def _optax_trajectory(config):
    tx = make_optimizer(config)
    params = jnp.asarray(START)
    state = tx.init(params)
    for g in GRADS:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params)


def _torch_trajectory(config):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.tensor(START))
    if config.name == "sgd":
        opt = torch.optim.SGD([p], lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                              weight_decay=config.weight_decay)
    else:
        cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
        opt = cls([p], lr=config.lr, betas=(config.b1, config.b2), eps=config.eps,
                  weight_decay=config.weight_decay)
    for g in GRADS:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize(
    "config",
    [
        OptimizerConfig("sgd", lr=0.1),
        OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        OptimizerConfig("sgd", lr=0.05, momentum=0.8, weight_decay=1e-2),
        OptimizerConfig("adam", lr=3e-4),
        OptimizerConfig("adam", lr=1e-2, weight_decay=1e-2),
        OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1),
    ],
)
def test_same_trajectory_as_pytorch(config):
    np.testing.assert_allclose(_optax_trajectory(config), _torch_trajectory(config), rtol=1e-5, atol=1e-6)


def test_constant_lr_by_default_and_optional_schedules():
    assert make_schedule(OptimizerConfig(lr=0.1)) == 0.1
    cosine = make_schedule(OptimizerConfig(lr=0.1, schedule="cosine", decay_steps=10))
    assert float(cosine(0)) == pytest.approx(0.1) and float(cosine(5)) == pytest.approx(0.05)
    assert float(cosine(10)) == pytest.approx(0.0)
    step = make_schedule(OptimizerConfig(lr=0.1, schedule="step", boundaries=(3, 6), decay_factor=0.5))
    assert [float(step(s)) for s in (0, 2, 3, 5, 6, 9)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_presets_hold_the_thesis_and_shrinkbench_values():
    cifar, imagenet, sb = preset("thesis-cifar"), preset("thesis-imagenet"), preset("shrinkbench")
    assert (cifar.batch_size, cifar.epochs, cifar.optimizer.name, cifar.optimizer.lr) == (64, 30, "adam", 3e-4)
    assert (imagenet.batch_size, imagenet.epochs) == (256, 20)
    assert (sb.batch_size, sb.epochs, sb.patience) == (128, 30, None)
    for config in (imagenet, sb):
        opt = config.optimizer
        assert (opt.name, opt.lr, opt.momentum, opt.nesterov, opt.schedule) == ("sgd", 1e-3, 0.9, True, "constant")
    assert cifar.optimizer.schedule == "constant" and cifar.patience and imagenet.patience
    assert set(PRESETS) == {"thesis-cifar", "thesis-imagenet", "shrinkbench"}


def test_unknown_preset_names_the_bad_value_and_the_choices():
    with pytest.raises(ValueError, match="'cifar'.*thesis-cifar, thesis-imagenet, shrinkbench"):
        preset("cifar")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="rmsprop"), "unknown optimizer 'rmsprop'"),
        (dict(schedule="linear"), "unknown schedule 'linear'"),
        (dict(lr=0.0), "learning rate must be > 0"),
        (dict(momentum=1.0), "momentum must be in"),
        (dict(nesterov=True), "nesterov=True needs"),
        (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(schedule="cosine"), "decay_steps > 0"),
    ],
)
def test_invalid_optimizer_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


def test_finetune_config_is_frozen_and_validated():
    config = FinetuneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    assert config.replace(epochs=3).epochs == 3 and config.epochs == 30
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ValueError, match="patience"):
        FinetuneConfig(patience=0)
