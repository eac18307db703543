"""sbjax.slim: a group-masked model and its slimmed model compute the same logits.

Every registry model is slimmed under a random removal of about 40% of its channel groups and
checked against the masked model: logits (jitted, batches of 1 and 3), the kept params count,
and the exact shapes of the slimmed leaves.
"""

import doctest
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_channel_graph import Chain, Concat, Depthwise, Flatten, PadShortcut, Residual, Slice

from sbjax import masks, models, selection
from sbjax import slim as slim_lib
from sbjax.graph import channels
from sbjax.graph.channels import channel_graph
from sbjax.slim import SlimError, slim


@functools.cache
def _fast_compile() -> dict:
    """XLA options that compile the many distinct programs here 2-4x faster (the checks are
    about values, not speed): those of them this JAX and backend accept."""
    wanted = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    accepted = {}
    for option, value in wanted.items():
        try:
            jax.jit(lambda a: a + 1).lower(1.0).compile({option: value})
        except Exception:  # noqa: BLE001 - an option this XLA does not know
            continue
        accepted[option] = value
    return accepted


def _jit(fn):
    return jax.jit(fn, compiler_options=_fast_compile())


def _realistic(tree, seed=0):
    """Variables like trained ones: fan-in scaled kernels, small biases and means, BN scales and
    variances near 1 (positive), so that the logits stay of order 1 to 100."""
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        name, shape = selection.leaf_path(path), leaf.shape
        if name.endswith("kernel"):
            value = rng.random(shape, np.float32)  # uniform, variance 1 / fan-in (fast for vgg16_bn's 10^8)
            value -= 0.5
            value *= np.sqrt(12 / np.prod(shape[:-1]))
        elif name.endswith(("var", "scale")):
            value = rng.uniform(0.5, 1.0, shape)
        else:  # biases, BN offsets and means
            value = 0.1 * rng.standard_normal(shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(one, tree)


def _removal(graph, fraction=0.4, seed=0):
    """A random ``fraction`` of the groups of each producing layer (equal counts per layer keep
    the slimmed shapes, and so the compiled programs, shared between a model's blocks)."""
    rng = np.random.default_rng(seed)
    by_producers: dict = {}
    for g, group in enumerate(graph.groups):
        by_producers.setdefault(group.producers, []).append(g)
    removed = np.zeros(len(graph), bool)
    for ids in by_producers.values():
        removed[rng.permutation(ids)[: round(fraction * len(ids))]] = True
    return removed


def _masked_logits_fn(model):
    return _jit(lambda v, m, x: model.apply(dict(v, params=masks.apply_mask(v["params"], m)), x))


def _slim_shapes(graph, removed):
    """Every leaf's shape less the positions of removed groups along each of its axes."""
    shapes = {}
    for path in graph.paths:
        ids = graph.axes.get(path, (None,) * len(graph.shapes[path]))
        shapes[path] = tuple(
            n if a is None else n - int(np.count_nonzero((a >= 0) & removed[np.maximum(a, 0)]))
            for n, a in zip(graph.shapes[path], ids)
        )
    return shapes


def _check_slim(model, variables, shape, seed=0):
    """Slims ``model`` under a random group removal and checks it against the masked model."""
    x = jax.random.normal(jax.random.key(seed), (3, *shape))
    graph = channel_graph(model.apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    removed = _removal(graph, seed=seed)
    assert 0.25 * len(graph) <= removed.sum() <= 0.5 * len(graph)
    mask = _jit(lambda r, v: graph.mask(r, v)["params"])(jnp.asarray(removed), variables)

    slimmed = slim(model.apply, variables, mask, x)
    assert slimmed.removed == int(removed.sum())
    assert slimmed.params_total == sum(int(np.count_nonzero(m)) for m in jax.tree.leaves(mask))  # count_kept
    assert slimmed.params_total < masks.count_total(variables["params"])
    expected = _slim_shapes(graph, removed)
    got = {selection.leaf_path(p): np.shape(a) for p, a in jax.tree_util.tree_flatten_with_path(slimmed.variables)[0]}
    assert got == expected
    assert jax.tree.structure(slimmed.variables) == jax.tree.structure(variables)

    logits = _masked_logits_fn(model)
    masked = logits(variables, mask, x)
    dense = logits(variables, jax.tree.map(lambda m: np.ones(m.shape, m.dtype), mask), x)
    scale = float(jnp.max(jnp.abs(masked)))
    assert 1e-2 < scale < 1e3
    assert float(jnp.max(jnp.abs(dense - masked))) > 1e-2 * scale  # the removal changes the logits
    apply = _jit(slimmed.apply)
    for batch in (x, x[:1]):
        out = apply(slimmed.variables, batch)
        assert out.shape == (batch.shape[0], masked.shape[1])
        np.testing.assert_allclose(out, masked[: batch.shape[0]], rtol=0, atol=1e-5 * scale)


# The transformers are slimmed (heads, MLP neurons) on tiny configs in test_channel_graph_transformers.py.
WITHOUT_ATTENTION = [n for n in models.names() if not models.attention(n)]
IMAGENET = [n for n in WITHOUT_ATTENTION if models.input_shape(n) == (224, 224, 3)]
SMALL = [n for n in WITHOUT_ATTENTION if n not in IMAGENET]


@pytest.mark.parametrize("name", SMALL)
def test_registry_model_slims_to_the_masked_logits(name):
    shape = models.input_shape(name)
    _check_slim(models.create(name), _realistic(models.abstract_variables(name, shape=shape)), shape)


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_model_slims_to_the_masked_logits_at_a_small_input(name):
    shape = (32, 32, 3)  # same layers as at 224 (vgg16_bn's adaptive pool repeats its 1x1 features)
    model = models.create(name, num_classes=10)
    _check_slim(model, _realistic(models.abstract_variables(name, num_classes=10, shape=shape)), shape)


@pytest.mark.parametrize(
    "module",
    [Residual(), Depthwise(multiplier=2), Concat(), Flatten(nchw=True), PadShortcut(), Slice()],
    ids=["residual", "depthwise", "concat", "flatten", "pad", "slice"],
)
def test_hand_built_model_slims_to_the_masked_logits(module):
    shape = (2, 3, 2) if isinstance(module, Flatten) else (6, 6, 2)
    variables = _realistic(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *shape))))
    _check_slim(module, variables, shape, seed=1)


class Net(nn.Module):
    """The docstring's model: proj (3->4) -> relu -> head (4->2)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="proj")(x)))


def _net():
    net = Net()
    x = jax.random.normal(jax.random.key(0), (5, 3))
    variables = _realistic(net.init(jax.random.key(1), x))
    return net, variables, x


def _masked(variables, mask):
    return {"params": masks.apply_mask(variables["params"], mask)}


def test_whole_group_removed_and_partial_group_kept():
    net, variables, x = _net()
    mask = jax.tree.map(np.ones_like, variables["params"])
    mask["proj"]["kernel"][:, 1] = 0  # group 1 entirely: its kernel column, bias and head row
    mask["proj"]["bias"][1] = 0
    mask["head"]["kernel"][1] = 0
    mask["proj"]["kernel"][:, 3] = 0  # group 3 only partly (its bias and head row stay)
    mask["proj"]["kernel"][0, 0] = 0  # and one more single entry in group 0
    slimmed = slim(net.apply, variables, mask, x)
    assert slimmed.removed == 1 and slimmed.keys == frozenset({("params/head/kernel", 0, 1)})
    assert slimmed.variables["params"]["proj"]["kernel"].shape == (3, 3)
    assert slimmed.variables["params"]["proj"]["bias"].shape == (3,)
    assert slimmed.variables["params"]["head"]["kernel"].shape == (3, 2)
    assert slimmed.params_total == 9 + 3 + 6 + 2
    # the partly zeroed entries stay, as zeros, in the slimmed arrays: kept columns 0, 2, 3
    kernel = np.asarray(slimmed.variables["params"]["proj"]["kernel"])
    full = np.asarray(variables["params"]["proj"]["kernel"]) * mask["proj"]["kernel"]
    np.testing.assert_array_equal(kernel, full[:, [0, 2, 3]])
    assert kernel[0, 0] == 0 and (kernel[:, 2] == 0).all() and (kernel[1:, 0] != 0).all()
    expected = net.apply(_masked(variables, mask), x)
    np.testing.assert_allclose(slimmed(x), expected, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(expected))))
    dense = net.apply(variables, x)
    assert float(jnp.max(jnp.abs(dense - expected))) > 1e-3


def test_a_group_zeroed_in_all_but_one_entry_is_not_removed():
    net, variables, x = _net()
    mask = jax.tree.map(np.ones_like, variables["params"])
    mask["proj"]["kernel"][:, 2] = 0
    mask["proj"]["bias"][2] = 0
    mask["head"]["kernel"][2, 1:] = 0  # head row 2, entry 0 kept
    slimmed = slim(net.apply, variables, mask, x)
    assert slimmed.removed == 0
    assert jax.tree.map(np.shape, slimmed.variables) == jax.tree.map(np.shape, variables)
    assert slimmed.params_total == masks.count_total(variables["params"])
    expected = net.apply(_masked(variables, mask), x)
    np.testing.assert_allclose(slimmed(x), expected, rtol=0, atol=1e-6 * float(jnp.max(jnp.abs(expected))))


def test_partly_zeroed_groups_stay_and_keep_the_masked_logits():
    model, shape = Chain(), (6, 6, 2)
    variables = _realistic(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape))))
    x = jax.random.normal(jax.random.key(2), (2, *shape))
    graph = channel_graph(model.apply, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    removed = _removal(graph, 0.3, seed=2)
    # besides the removed groups, zero the producing kernel slices of every 3rd other group
    # (not their biases, batch-norm entries or the next layer's input slices): those groups stay
    partial = np.flatnonzero(~removed)[::3]
    zero: dict = {}
    for g in partial:
        for path, axis in graph.groups[g].producers:
            positions = [q for p, a, pos in graph.groups[g].members if (p, a) == (path, axis) for q in pos]
            zero.setdefault(path, []).append((axis, positions))

    def one(path, m):
        m = np.array(m)
        for axis, positions in zero.get("params/" + selection.leaf_path(path), []):
            index = [slice(None)] * m.ndim
            index[axis] = positions
            m[tuple(index)] = 0
        return m

    group_mask = graph.mask(removed, variables)["params"]
    mask = jax.tree_util.tree_map_with_path(one, group_mask)
    slimmed = slim(model.apply, variables, mask, x)
    assert len(partial) > 0 and slimmed.removed == int(removed.sum()) > 0
    params_paths = [p for p in graph.paths if p.startswith("params/")]
    assert slimmed.params_total == int(graph.kept_count(removed, params_paths))
    zeroed = sum(int(np.count_nonzero(g)) - int(np.count_nonzero(m))
                 for g, m in zip(jax.tree.leaves(group_mask), jax.tree.leaves(mask)))  # fmt: skip
    assert zeroed > 0 and slimmed.params_total == int(masks.count_kept(mask)) + zeroed  # the zeros stay
    logits = _masked_logits_fn(model)
    expected = logits(variables, mask, x)
    out = _jit(slimmed.apply)(slimmed.variables, x)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(expected))))
    group_masked = logits(variables, group_mask, x)
    assert float(jnp.max(jnp.abs(group_masked - expected))) > 1e-2 * float(jnp.max(jnp.abs(expected)))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: {**m, "proj": {**m["proj"], "kernel": np.ones((3, 5), np.float32)}},
         r"cannot slim: mask leaf proj/kernel has shape \(3, 5\), expected \(3, 4\)"),
        (lambda m: {**m, "head": {"kernel": m["head"]["kernel"]}}, r"cannot slim: .*missing leaves \['head/bias'\]"),
        (lambda m: {**m, "proj": {**m["proj"], "bias": np.ones(4, np.int32)}},
         r"cannot slim: mask leaf proj/bias has dtype int32, expected float32"),
    ],
    ids=["shape", "missing", "dtype"],
)  # fmt: skip
def test_a_mask_not_matching_the_params_raises_slim_error(change, message):
    net, variables, x = _net()
    mask = change(jax.tree.map(np.ones_like, variables["params"]))
    with pytest.raises(SlimError, match=message):
        slim(net.apply, variables, mask, x)


def test_an_untraceable_model_raises_slim_error():
    variables = {"params": {"w": jnp.ones((3, 4))}}
    with pytest.raises(SlimError, match=r"cannot slim: cannot trace the forward pass on input \(2, 5\)"):
        slim(lambda v, x: x @ v["params"]["w"], variables, masks.ones_like(variables["params"]), jnp.ones((2, 5)))


def test_a_mask_over_the_whole_variables_tree():
    module = Chain()
    variables = _realistic(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 6, 6, 2))))
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 2))
    graph = channel_graph(module.apply, variables, x)
    removed = np.zeros(9, bool)
    removed[[0, 2, 5]] = True  # conv1's channels 0 and 2, conv2's channel 1
    mask = graph.mask(removed, variables)  # batch stats included
    assert float(mask["batch_stats"]["bn"]["var"].sum()) == 2
    slimmed = slim(module.apply, variables, mask, x)
    assert slimmed.removed == 3
    assert jax.tree.map(np.shape, slimmed.variables) == {
        "params": {"conv1": {"kernel": (3, 3, 2, 2), "bias": (2,)}, "bn": {"scale": (2,), "bias": (2,)},
                   "conv2": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "head": {"kernel": (4, 3), "bias": (3,)}},
        "batch_stats": {"bn": {"mean": (2,), "var": (2,)}},
    }  # fmt: skip
    assert slimmed.params_total == 36 + 2 + 4 + 72 + 4 + 12 + 3
    var = np.asarray(variables["batch_stats"]["bn"]["var"])
    np.testing.assert_array_equal(slimmed.variables["batch_stats"]["bn"]["var"], var[[1, 3]])  # the kept channels
    expected = module.apply(dict(variables, params=masks.apply_mask(variables["params"], mask["params"])), x)
    np.testing.assert_allclose(slimmed(x), expected, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("module", [slim_lib, channels])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
