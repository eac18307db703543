"""Shared test fixtures: small literal params trees and a tiny Flax CNN."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest


class TinyCNN(nn.Module):
    """conv(bias) -> BN -> relu -> grouped conv -> pool -> dense -> dense (classifier)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = nn.relu(x)
        x = nn.Conv(8, (3, 3), feature_group_count=2, use_bias=False, name="conv2")(x)
        x = x.mean(axis=(1, 2))
        x = nn.relu(nn.Dense(6, name="fc")(x))
        return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drops every compiled program after each test module.

    The suite compiles thousands of programs (every registry model, slimmed and masked, at
    several shapes); kept for the whole session they grow the process until XLA's compiler
    crashed late in the run. Modules rarely share programs, so little is recompiled.
    """
    yield
    jax.clear_caches()


@pytest.fixture(scope="session", autouse=True)
def private_sbjax_dirs(tmp_path_factory):
    """The cache (``$SBJAX_CACHE``) and user directory (``$SBJAX_HOME``) of the whole session are
    temporary: tests, and the commands they start, never touch the user's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SBJAX_CACHE_DIR", raising=False)
        patch.setenv("SBJAX_CACHE", str(tmp_path_factory.mktemp("sbjax-cache")))
        patch.setenv("SBJAX_HOME", str(tmp_path_factory.mktemp("sbjax-home")))
        yield


@pytest.fixture(scope="session")
def tiny_cnn():
    model = TinyCNN()
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 2))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    variables = model.init(jax.random.key(1), x)
    return model, variables, x, y
