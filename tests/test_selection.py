import jax.numpy as jnp
import pytest

from sbjax import selection
from sbjax.selection import Selection


def params():
    # Insertion order is call order; "aux" is a dense layer called before the head.
    return {
        "stem": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
        "norm": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
        "block": {"conv": {"kernel": jnp.ones((3, 3, 8, 8))}, "bn": {"scale": jnp.ones(8), "bias": jnp.ones(8)}},
        "aux": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones(4)},
        "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)},
    }


def test_default_rule_kernels_and_biases_minus_classifier_and_norms():
    assert selection.prunable_paths(params()) == ["stem/kernel", "stem/bias", "block/conv/kernel", "aux/kernel", "aux/bias"]
    flags = selection.prunable(params())
    assert flags["norm"] == {"scale": False, "bias": False}
    assert flags["head"] == {"kernel": False, "bias": False}


def test_kernels_only_and_named_classifier_and_excludes():
    assert selection.prunable_paths(params(), Selection(kinds=("kernel",))) == ["stem/kernel", "block/conv/kernel", "aux/kernel"]
    named = selection.prunable_paths(params(), Selection(classifier="aux"))
    assert "aux/kernel" not in named and "head/kernel" in named
    assert "head/bias" in selection.prunable_paths(params(), Selection(classifier=None))
    assert selection.prunable_paths(params(), Selection(exclude=("block", "stem"))) == ["aux/kernel", "aux/bias"]


def test_unknown_classifier_is_a_clear_error():
    with pytest.raises(ValueError, match="classifier 'nope' is not a weight layer.*'stem'"):
        selection.prunable_paths(params(), Selection(classifier="nope"))


def test_weight_layers_on_a_real_flax_model(tiny_cnn):
    _, variables, _, _ = tiny_cnn
    p = variables["params"]
    assert selection.weight_layers(p) == ["conv1", "conv2", "fc", "head"]
    assert selection.prunable_paths(p) == ["conv1/kernel", "conv1/bias", "conv2/kernel", "fc/kernel", "fc/bias"]


def test_selection_is_hashable_for_jit_static_args():
    assert hash(Selection()) == hash(Selection(kinds=["kernel", "bias"]))
