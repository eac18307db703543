import jax.numpy as jnp
import numpy as np

from sbjax import train


def test_ties_go_to_the_lower_class_index_like_argmax():
    logits = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [1.0, 2.0, 2.0], [3.0, 1.0, 2.0]])
    y = jnp.array([0, 2, 1, 2, 2])
    top1, top2 = train.correct_counts(logits, y, ks=(1, 2))
    np.testing.assert_array_equal(top1, [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(top2, [1, 0, 1, 1, 1])
    np.testing.assert_array_equal(top1, jnp.argmax(logits, axis=-1) == y)


def test_a_collapsed_model_scores_chance_not_perfect():
    logits = jnp.zeros((100, 10))
    y = jnp.arange(100) % 10
    top1, top5 = train.correct_counts(logits, y)
    assert int(top1.sum()) == 10 and int(top5.sum()) == 50
