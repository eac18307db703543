"""The channel graph of the transformers: every attention head and every MLP neuron is one group."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import masks, models
from sbjax.graph.channels import channel_graph
from sbjax.models import gpt2, vit
from sbjax.slim import slim

TINY_GPT2 = gpt2.GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4, dropout=0.0)
TINY_VIT = vit.ViTConfig(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


def _kinds(graph):
    return sorted({tuple(sorted(p for p, _ in g.producers)) for g in graph.groups})


def _tiny_gpt2():
    model = gpt2.GPT2(TINY_GPT2)
    x = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    return model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype))), x


def test_gpt2_heads_and_mlp_neurons_are_the_groups():
    model, variables, x = _tiny_gpt2()
    graph = channel_graph(model.apply, variables, x)
    assert len(graph) == 2 * (4 * 64) + 2 * 4  # MLP neurons and heads of two blocks
    assert _kinds(graph) == [(f"params/h_{i}/{m}/kernel",) for i in range(2) for m in ("attn/c_attn", "mlp/c_fc")]
    heads = [g for g in graph.groups if g.producers == (("params/h_1/attn/c_attn/kernel", 1),)]
    assert len(heads) == 4
    d = 16
    cols = lambda h: tuple(range(h * d, (h + 1) * d)) + tuple(range(64 + h * d, 64 + (h + 1) * d)) + \
        tuple(range(128 + h * d, 128 + (h + 1) * d))  # noqa: E731  (q, k and v columns of head h)
    members = {(p, a): pos for p, a, pos in heads[2].members}
    assert members == {
        ("params/h_1/attn/c_attn/kernel", 1): cols(2),
        ("params/h_1/attn/c_attn/bias", 0): cols(2),
        ("params/h_1/attn/c_proj/kernel", 0): tuple(range(2 * d, 3 * d)),
    }
    neuron = next(g for g in graph.groups if g.producers == (("params/h_0/mlp/c_fc/kernel", 1),))
    assert {(p, a) for p, a, _ in neuron.members} == {
        ("params/h_0/mlp/c_fc/kernel", 1), ("params/h_0/mlp/c_fc/bias", 0), ("params/h_0/mlp/c_proj/kernel", 0)}


@pytest.mark.parametrize(
    "name, expected",
    [("vit_cifar", 6 * 768 + 6 * 3), ("vit_b_16", 12 * 3072 + 12 * 12), ("gpt2", 12 * 3072 + 12 * 12)],
)
def test_registry_transformer_group_counts(name, expected):
    shape = (16,) if models.task(name) == "lm" else None  # the groups do not depend on the sequence length
    variables = models.abstract_variables(name, shape=shape)
    graph = channel_graph(models.create(name).apply, variables, models.example_input(name, shape))
    assert len(graph) == expected
    heads = sum(1 for g in graph.groups if any(p.endswith(("c_attn/kernel", "in_proj/kernel")) for p, _ in g.producers))
    assert heads == sum(a.num_heads for a in models.attention(name))


def _removal(graph, seed=0):
    rng = np.random.default_rng(seed)
    by_producers: dict = {}
    for g, group in enumerate(graph.groups):
        by_producers.setdefault(group.producers, []).append(g)
    removed = np.zeros(len(graph), bool)
    for ids in by_producers.values():
        removed[rng.permutation(ids)[: len(ids) // 2]] = True
    return removed


def _check_slim(model, variables, x):
    graph = channel_graph(model.apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    removed = _removal(graph)
    mask = graph.mask(jnp.asarray(removed), variables)["params"]
    slimmed = slim(model.apply, variables, mask, x)
    assert slimmed.removed == int(removed.sum())
    masked = model.apply(dict(variables, params=masks.apply_mask(variables["params"], mask)), x)
    dense = model.apply(variables, x)
    assert float(jnp.max(jnp.abs(dense - masked))) > 1e-3  # the removal changes the output
    np.testing.assert_allclose(slimmed.apply(slimmed.variables, x), masked, rtol=0, atol=1e-4)
    return slimmed


def test_gpt2_slims_heads_and_neurons_to_the_masked_logits():
    model = gpt2.GPT2(TINY_GPT2)
    x = jax.random.randint(jax.random.key(1), (2, 8), 0, 97)
    variables = model.init(jax.random.key(0), x)
    slimmed = _check_slim(model, variables, x)
    block = slimmed.variables["params"]["h_0"]
    assert block["attn"]["c_attn"]["kernel"].shape == (64, 3 * 32) and block["attn"]["c_proj"]["kernel"].shape == (32, 64)
    assert block["mlp"]["c_fc"]["kernel"].shape == (64, 128)


def test_vit_slims_heads_and_neurons_to_the_masked_logits():
    model = vit.ViT(TINY_VIT, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), variables)  # no zero head
    _check_slim(model, variables, x)
