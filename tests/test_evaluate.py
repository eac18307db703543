"""Whole-split evaluation: sums over examples, exact with a padded last batch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbjax.data import ImageData, normalize
from sbjax.evaluate import evaluate


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(7)(x.reshape(len(x), -1))


def sum_step(model):
    def step(params, batch_stats, x, y, valid):
        logits = model.apply({"params": params}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        rank = jnp.sum(logits > jnp.take_along_axis(logits, y[:, None], -1), -1)
        w = valid.astype(jnp.float32)
        return {"loss": jnp.sum(w * loss), "top1": jnp.sum(w * (rank < 1)), "top5": jnp.sum(w * (rank < 5)),
                "count": jnp.sum(valid)}

    return jax.jit(step)


def test_evaluate_equals_full_split_computation():
    rng = np.random.default_rng(0)
    data = ImageData(rng.integers(0, 256, (103, 4, 4, 1), dtype=np.uint8), rng.integers(0, 7, 103).astype(np.int32),
                     tuple("abcdefg"), (0.3,), (0.4,))
    model = Linear()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    result = evaluate(sum_step(model), variables, data, mean=(0.3,), std=(0.4,), batch_size=25)
    logits = np.asarray(model.apply(variables, normalize(jnp.asarray(data.images), (0.3,), (0.4,))))
    y = data.labels
    top5 = np.mean([y[i] in np.argsort(-logits[i])[:5] for i in range(103)])
    loss = np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    assert result["count"] == 103
    assert result["top1"] == np.mean(logits.argmax(1) == y) and result["top5"] == top5
    np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)


def test_evaluate_model_rejects_variables_that_do_not_fit_the_data():
    from sbjax import models
    from sbjax.evaluate import evaluate_model

    variables = models.abstract_variables("resnet20")
    with pytest.raises(ValueError, match=r"do not fit inputs of shape \(28, 28, 1\) with 10 classes"):
        evaluate_model("resnet20", variables, "mnist5k", verbose=False)
