"""Channel strategies: exact group scores, the group scope's choice at the parameter target, jit/vmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import compression, masks, scoring
from sbjax.selection import Selection
from sbjax.strategies import channels as ch

HEAD = Selection(classifier="head")
SHAPE = (6, 6, 2)


class Chain(nn.Module):
    """conv(4) -> BN -> relu -> conv(6) -> BN -> relu -> mean -> dense(5) -> relu -> head(3)."""

    bn: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn1")(x) if self.bn else x
        x = nn.Conv(6, (3, 3), use_bias=False, name="conv2")(nn.relu(x))
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x) if self.bn else x
        x = nn.relu(nn.Dense(5, name="fc")(nn.relu(x).mean(axis=(1, 2))))
        return nn.Dense(3, name="head")(x)


@pytest.fixture(scope="module")
def chain():
    model = Chain()
    x = jax.random.normal(jax.random.key(0), (4, *SHAPE))
    variables = model.init(jax.random.key(1), x)
    stats = {"batch_stats": jax.tree.map(lambda a: a + 0.5, variables["batch_stats"])}
    scale = lambda n, k: jax.random.uniform(jax.random.key(k), (n,), minval=0.1, maxval=2.0)  # noqa: E731
    params = jax.tree.map(lambda a: a, variables["params"])
    params["bn1"] = {"scale": scale(4, 5), "bias": jnp.zeros(4) + 0.1}
    params["bn2"] = {"scale": scale(6, 6), "bias": jnp.zeros(6) - 0.1}
    apply = jax.tree_util.Partial(lambda bs, p, x: model.apply({"params": p, **bs}, x), stats)
    return model, params, apply, x


def run(strategy, params, apply, fraction, **kw):
    return strategy(params, kw.pop("grads", None), fraction, selection=HEAD, apply=apply, input_shape=SHAPE, **kw)


LAYERS = {"conv1": ("conv1/kernel", 3), "conv2": ("conv2/kernel", 3), "fc": ("fc/kernel", 1)}


def group_of(graph, layer, c):
    path, axis = LAYERS[layer]
    return int(graph.group_ids(path, axis)[c])


def expected_global(graph, params, scores, fraction, selection=HEAD, layers=tuple(LAYERS)):
    """Brute force: the fewest lowest-scoring groups (each layer keeping its best) to the target."""
    counts = compression.counts(params, selection)
    target = counts.unprunable + fraction * counts.prunable
    channels = {layer: [group_of(graph, layer, c) for c in range(graph.shapes[LAYERS[layer][0]][LAYERS[layer][1]])]
                for layer in layers}  # fmt: skip
    protected = {max(groups, key=lambda g: scores[g]) for groups in channels.values()}
    order = sorted((g for groups in channels.values() for g in groups if g not in protected),
                   key=lambda g: (scores[g], g))  # fmt: skip
    for k in range(len(order) + 1):
        removed = np.zeros(len(graph), bool)
        removed[order[:k]] = True
        if int(masks.count_kept(graph.mask(jnp.asarray(removed), params))) <= target:
            return removed
    return removed


def removed_of(graph, mask):
    """The groups a mask removes, checking that every group is all kept or all gone."""
    leaves = {p: np.asarray(m) for p, m in zip(graph.paths, jax.tree.leaves(mask))}
    out = []
    for group in graph.groups:
        held = [np.take(leaves[p], pos, axis=a) for p, a, pos in group.members]
        gone = [not h.any() for h in held]
        assert all(gone) or not any(gone), "a group is partly removed"
        out.append(all(gone))
    return np.array(out)


def test_the_chain_has_one_group_per_hidden_channel(chain):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    assert len(graph) == 4 + 6 + 5
    members = {(p, a) for p, a, _ in graph.groups[group_of(graph, "conv1", 2)].members}
    assert members == {("conv1/kernel", 3), ("conv1/bias", 0), ("bn1/scale", 0), ("bn1/bias", 0), ("conv2/kernel", 2)}


def l1_of(graph, params):
    scores = np.zeros(len(graph))
    for layer, (path, axis) in LAYERS.items():
        w = np.abs(np.asarray(params[layer]["kernel"]))
        for c in range(w.shape[axis]):
            scores[group_of(graph, layer, c)] = np.take(w, c, axis=axis).sum()
    return scores


@pytest.mark.parametrize("compression_", [1.3, 2.0, 3.0])
def test_channel_l1_removes_the_lowest_filters_until_the_target(chain, compression_):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    fraction = compression.fraction_for(compression_, params, HEAD)
    mask = run(ch.channel_l1, params, apply, fraction)
    expected = expected_global(graph, params, l1_of(graph, params), fraction)
    np.testing.assert_array_equal(removed_of(graph, mask), expected)
    kept = int(masks.count_kept(mask))
    assert masks.count_total(params) / kept >= compression_ - 1e-9
    assert expected.sum() > 0


def test_channel_bn_ranks_by_batch_norm_scale(chain):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    scores = np.zeros(len(graph))
    for layer, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        for c, s in enumerate(np.abs(np.asarray(params[bn]["scale"]))):
            scores[group_of(graph, layer, c)] = s
    with pytest.raises(ValueError, match="batch-norm scale.*'fc/kernel'"):
        run(ch.channel_bn, params, apply, 0.5)
    no_fc = Selection(classifier="head", exclude=("fc",))
    fraction = compression.fraction_for(1.5, params, no_fc)
    mask = ch.channel_bn(params, None, fraction, selection=no_fc, apply=apply, input_shape=SHAPE)
    expected = expected_global(graph, params, scores, fraction, no_fc, ("conv1", "conv2"))
    np.testing.assert_array_equal(removed_of(graph, mask), expected)
    assert expected.sum() > 0


def test_channel_taylor_is_the_squared_first_order_change_of_removing_the_group(chain):
    model, params, apply, x = chain
    y = jnp.array([0, 1, 2, 0])
    loss = lambda p: -jnp.mean(jax.nn.log_softmax(apply(p, x))[jnp.arange(4), y])  # noqa: E731
    grads = jax.grad(loss)(params)
    graph = ch.channel_graph_of(params, apply, SHAPE)
    flat_w, flat_g = jax.tree.leaves(params), jax.tree.leaves(grads)
    expected = np.zeros(len(graph))
    for g in range(len(graph)):
        removed = np.zeros(len(graph), bool)
        removed[g] = True
        m = jax.tree.leaves(graph.mask(jnp.asarray(removed), params))
        expected[g] = sum(float(jnp.sum(w * d * (1 - mm))) for w, d, mm in zip(flat_w, flat_g, m)) ** 2
    got = ch.taylor_score(params, grads, apply=apply, input_shape=SHAPE, selection=HEAD).scores
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-12)
    fraction = compression.fraction_for(2.0, params, HEAD)
    mask = run(ch.channel_taylor, params, apply, fraction, grads=grads)
    np.testing.assert_array_equal(removed_of(graph, mask), expected_global(graph, params, np.asarray(got), fraction))


def test_channel_activation_is_the_mean_input_at_the_consumers(chain):
    _, params, apply, x = chain
    activations = scoring.input_activations(apply, params, x)
    graph = ch.channel_graph_of(params, apply, SHAPE)
    scores = ch.activation_score(params, None, activations=activations, apply=apply, input_shape=SHAPE,
                                 selection=HEAD).scores  # fmt: skip
    for layer, consumer in (("conv1", "conv2"), ("conv2", "fc"), ("fc", "head")):
        for c in range(3):
            assert float(scores[group_of(graph, layer, c)]) == pytest.approx(float(activations[consumer][c]), rel=1e-6)


def test_layer_channels_shrink_every_layer_by_one_ratio(chain):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    fraction = compression.fraction_for(2.0, params, HEAD)
    removed = removed_of(graph, run(ch.layer_channel_l1, params, apply, fraction))
    kept = {layer: sum(not removed[group_of(graph, layer, c)] for c in range(n)) for layer, n in
            (("conv1", 4), ("conv2", 6), ("fc", 5))}  # fmt: skip
    target = compression.counts(params, HEAD).unprunable + fraction * compression.counts(params, HEAD).prunable
    # the largest ratio r whose per-layer counts max(1, ceil(r n)) keep at most the target
    best = None
    for r in np.linspace(0, 1, 2001):
        counts = {layer: max(1, int(np.ceil(r * n))) for layer, n in (("conv1", 4), ("conv2", 6), ("fc", 5))}
        trial = np.zeros(len(graph), bool)
        for layer, n in (("conv1", 4), ("conv2", 6), ("fc", 5)):
            l1 = l1_of(graph, params)
            ids = sorted(range(n), key=lambda c: -l1[group_of(graph, layer, c)])
            for c in ids[counts[layer]:]:
                trial[group_of(graph, layer, c)] = True
        if int(graph.kept_count(jnp.asarray(trial))) <= target:
            best = counts
    assert kept == best
    assert kept["conv1"] < 4 and kept["conv2"] < 6


def test_channel_random_removes_whole_groups_and_depends_on_the_key(chain):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    a = removed_of(graph, run(ch.channel_random, params, apply, 0.5, key=jax.random.key(0)))
    b = removed_of(graph, run(ch.channel_random, params, apply, 0.5, key=jax.random.key(1)))
    assert a.sum() > 0 and (a != b).any()


def test_jit_and_vmap_over_fractions_equal_eager_calls(chain):
    _, params, apply, _ = chain
    fractions = jnp.array([0.9, 0.6, 0.3])
    one = lambda f: run(ch.channel_l1, params, apply, f)  # noqa: E731
    batched = jax.vmap(one)(fractions)
    for i, f in enumerate(fractions):
        eager = one(float(f))
        jitted = jax.jit(one)(f)
        for e, j, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(batched)):
            np.testing.assert_array_equal(e, j)
            np.testing.assert_array_equal(e, b[i])


def test_an_earlier_mask_stays_and_its_groups_rank_first(chain):
    _, params, apply, _ = chain
    graph = ch.channel_graph_of(params, apply, SHAPE)
    l1 = l1_of(graph, params)
    best = max(range(6), key=lambda c: l1[group_of(graph, "conv2", c)])
    second = sorted(range(6), key=lambda c: -l1[group_of(graph, "conv2", c)])[1]
    earlier = np.zeros(len(graph), bool)
    earlier[group_of(graph, "conv2", second)] = True
    mask = run(ch.channel_l1, params, apply, 0.97, mask=graph.mask(jnp.asarray(earlier), params))
    removed = removed_of(graph, mask)
    assert removed[group_of(graph, "conv2", second)] and not removed[group_of(graph, "conv2", best)]
