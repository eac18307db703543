"""sbjax.graph.channels: the exact channel groups of hand-built models, group masks and counts,
and the group counts of every registry model derived by hand from its architecture."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import models
from sbjax.graph import channels
from sbjax.graph.channels import channel_graph
from sbjax.models import cifar_resnet, cifar_vgg, mobilenet, resnet, vgg
from sbjax.models.layers import flatten_nchw

# ----------------------------------------------------------------------------- hand-built models


class Chain(nn.Module):
    """conv1 (2->4) -> BN -> relu -> conv2 (4->5) -> global mean -> head (5->3)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(4, (3, 3), name="conv1")(x)))
        x = nn.Conv(5, (3, 3), name="conv2")(x)
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class Residual(nn.Module):
    """x = conv_a(x); out = x + conv_b(relu(x)); mean; head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv_a")(x)
        x = x + nn.Conv(4, (3, 3), name="conv_b")(nn.relu(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class Depthwise(nn.Module):
    """conv (2->4) -> relu -> depthwise conv (4 groups, ``multiplier`` outputs each) -> mean -> head."""

    multiplier: int = 1

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        x = nn.Conv(4 * self.multiplier, (3, 3), feature_group_count=4, name="dw")(x)
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


class Concat(nn.Module):
    """conv_a (4) and conv_b (6) of the input, concatenated along channels into conv_c (3); mean; head."""

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(4, (3, 3), name="conv_a")(x))
        b = nn.relu(nn.Conv(6, (3, 3), name="conv_b")(x))
        x = nn.Conv(3, (3, 3), name="conv_c")(jnp.concatenate([a, b], axis=-1))
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


class PadShortcut(nn.Module):
    """a = conv_a(x) (4); out = conv_b(relu(a)) (8) + a zero-padded by 2 channels on each side: option A."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(4, (3, 3), name="conv_a")(x)
        x = nn.Conv(8, (3, 3), name="conv_b")(nn.relu(a)) + jnp.pad(a, ((0, 0), (0, 0), (0, 0), (2, 2)))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class Slice(nn.Module):
    """conv (8) -> relu -> channels 2:6 (and the odd rows) -> conv2 (3) -> mean -> head."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
        x = nn.Conv(3, (3, 3), name="conv2")(x[:, ::2, :, 2:6])
        return nn.Dense(2, name="head")(x.mean(axis=(1, 2)))


class Flatten(nn.Module):
    """conv (3 channels) on a 2x3 image -> relu -> flatten (NHWC or NCHW order) -> fc (the output)."""

    nchw: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), name="conv")(x))
        x = flatten_nchw(x) if self.nchw else x.reshape(x.shape[0], -1)
        return nn.Dense(5, name="fc")(x)


class Pinned(nn.Module):
    """conv1 (4) -> an op that mixes its channels -> relu -> conv2 (5) -> mean -> head."""

    op: str = "layer_norm"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv1")(x)
        if self.op == "layer_norm":
            x = nn.LayerNorm(name="ln")(x)
        elif self.op == "softmax":
            x = jax.nn.softmax(x, axis=-1)
        else:  # cumsum: a primitive the channel graph has no rule for
            x = jnp.cumsum(x, axis=-1)
        x = nn.Conv(5, (3, 3), name="conv2")(nn.relu(x))
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


class ConvOut(nn.Module):
    """conv1 (4) -> relu -> conv2 (5): conv2's channels are the model output."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(5, (3, 3), name="conv2")(nn.relu(nn.Conv(4, (3, 3), name="conv1")(x)))


def _build(module, shape=(2, 6, 6, 2)):
    """The channel graph over the params of ``module``; the apply closes over the batch stats."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)

    def forward(batch_stats, params, x):
        return module.apply({"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}, x)

    apply = jax.tree_util.Partial(forward, variables.get("batch_stats", {}))
    return channel_graph(apply, variables["params"], x), variables


def _members(group):
    return set(group.members)


# ----------------------------------------------------------------------------- exact groups


def test_chain_groups_are_the_channels_of_each_conv():
    graph, _ = _build(Chain())
    assert len(graph) == 4 + 5
    for c in range(4):  # groups come in the order of their first leaf position: bn/... sorts first
        g = graph.groups[c]
        assert _members(g) == {
            ("bn/bias", 0, (c,)), ("bn/scale", 0, (c,)), ("conv1/bias", 0, (c,)), ("conv1/kernel", 3, (c,)),
            ("conv2/kernel", 2, (c,)),
        }  # fmt: skip
        assert g.producers == (("conv1/kernel", 3),) and g.consumers == (("conv2/kernel", 2),)
    for c in range(5):
        g = graph.groups[4 + c]
        assert _members(g) == {("conv2/bias", 0, (c,)), ("conv2/kernel", 3, (c,)), ("head/kernel", 0, (c,))}
        assert g.producers == (("conv2/kernel", 3),) and g.consumers == (("head/kernel", 0),)
    assert graph.producer_axes == (("conv1/kernel", 3), ("conv2/kernel", 3))
    assert graph.consumer_axes == (("conv2/kernel", 2), ("head/kernel", 0))


def test_chain_axes_pin_the_model_input_and_output():
    graph, _ = _build(Chain())
    assert graph.paths == ("bn/bias", "bn/scale", "conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel",
                           "head/bias", "head/kernel")  # fmt: skip
    # every leaf but head/bias, which runs along the output only
    assert set(graph.axes) == set(graph.paths) - {"head/bias"}
    k1, k2, head = graph.axes["conv1/kernel"], graph.axes["conv2/kernel"], graph.axes["head/kernel"]
    assert k1[0] is None and k1[1] is None and k1[2] is None  # the window and the model input's channels
    np.testing.assert_array_equal(k1[3], [0, 1, 2, 3])
    np.testing.assert_array_equal(k2[2], [0, 1, 2, 3])
    np.testing.assert_array_equal(k2[3], [4, 5, 6, 7, 8])
    np.testing.assert_array_equal(head[0], [4, 5, 6, 7, 8])
    assert head[1] is None  # the logits
    assert graph.group_ids("head/kernel", 1) is None and graph.group_ids("head/bias", 0) is None
    assert not any(p == "head/kernel" and a == 1 for g in graph.groups for p, a, _ in g.members)


def test_group_size_counts_each_entry_once():
    graph, _ = _build(Chain())
    # conv1 channel: 3*3*2 kernel + bias + bn scale + bn bias + conv2's 3*3*5 input slice
    assert graph.groups[0].size(graph.shapes) == 18 + 1 + 1 + 1 + 45
    # conv2 channel: 3*3*4 kernel + bias + the head's row of 3
    assert graph.groups[4].size(graph.shapes) == 36 + 1 + 3


def test_whole_variables_tree_puts_batch_stats_in_the_groups():
    module = Chain()
    x = jax.ShapeDtypeStruct((2, 6, 6, 2), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    graph = channel_graph(module.apply, variables, x)
    assert len(graph) == 9
    assert _members(graph.groups[2]) == {
        ("batch_stats/bn/mean", 0, (2,)), ("batch_stats/bn/var", 0, (2,)), ("params/bn/bias", 0, (2,)),
        ("params/bn/scale", 0, (2,)), ("params/conv1/bias", 0, (2,)), ("params/conv1/kernel", 3, (2,)),
        ("params/conv2/kernel", 2, (2,)),
    }  # fmt: skip
    assert graph.groups[2].producers == (("params/conv1/kernel", 3),)


def test_residual_add_ties_both_branches_into_one_group():
    graph, _ = _build(Residual())
    assert len(graph) == 4
    for c, g in enumerate(graph.groups):
        assert _members(g) == {
            ("conv_a/bias", 0, (c,)), ("conv_a/kernel", 3, (c,)), ("conv_b/bias", 0, (c,)), ("conv_b/kernel", 2, (c,)),
            ("conv_b/kernel", 3, (c,)), ("head/kernel", 0, (c,)),
        }  # fmt: skip
        assert g.producers == (("conv_a/kernel", 3), ("conv_b/kernel", 3))
        assert g.consumers == (("conv_b/kernel", 2), ("head/kernel", 0))
    # a group may go only when every kernel producing it may be pruned
    np.testing.assert_array_equal(graph.candidates(["conv_a/kernel"]), [False] * 4)
    np.testing.assert_array_equal(graph.candidates(["conv_b/kernel", "head/kernel"]), [False] * 4)
    np.testing.assert_array_equal(graph.candidates(["conv_a/kernel", "conv_b/kernel"]), [True] * 4)


def test_candidates_select_by_producer():
    graph, _ = _build(Chain())
    np.testing.assert_array_equal(graph.candidates(["conv2/kernel"]), [False] * 4 + [True] * 5)
    np.testing.assert_array_equal(graph.candidates(["head/kernel"]), [False] * 9)


def test_depthwise_conv_ties_its_output_to_its_input_channel():
    graph, _ = _build(Depthwise())
    assert len(graph) == 4
    for c, g in enumerate(graph.groups):
        assert _members(g) == {
            ("conv/bias", 0, (c,)), ("conv/kernel", 3, (c,)), ("dw/bias", 0, (c,)), ("dw/kernel", 3, (c,)),
            ("head/kernel", 0, (c,)),
        }  # fmt: skip
        assert g.producers == (("conv/kernel", 3), ("dw/kernel", 3)) and g.consumers == (("head/kernel", 0),)
    assert graph.shapes["dw/kernel"] == (3, 3, 1, 4)
    assert graph.axes["dw/kernel"][2] is None  # the size-1 input axis of a depthwise kernel


def test_depthwise_multiplier_ties_each_input_channel_to_its_block_of_outputs():
    graph, _ = _build(Depthwise(multiplier=2))
    assert len(graph) == 4
    for c, g in enumerate(graph.groups):
        block = (2 * c, 2 * c + 1)
        assert _members(g) == {
            ("conv/bias", 0, (c,)), ("conv/kernel", 3, (c,)), ("dw/bias", 0, block), ("dw/kernel", 3, block),
            ("head/kernel", 0, block),
        }  # fmt: skip
    np.testing.assert_array_equal(graph.axes["dw/kernel"][3], [0, 0, 1, 1, 2, 2, 3, 3])


def test_concatenation_shifts_the_second_operands_channels():
    graph, _ = _build(Concat())
    assert len(graph) == 4 + 6 + 3
    ids = graph.axes["conv_c/kernel"][2]
    np.testing.assert_array_equal(ids, np.arange(10))
    for c in range(4):
        g = graph.groups[ids[c]]
        assert g.producers == (("conv_a/kernel", 3),)
        assert _members(g) == {("conv_a/bias", 0, (c,)), ("conv_a/kernel", 3, (c,)), ("conv_c/kernel", 2, (c,))}
    for c in range(6):
        g = graph.groups[ids[4 + c]]
        assert g.producers == (("conv_b/kernel", 3),)
        assert _members(g) == {("conv_b/bias", 0, (c,)), ("conv_b/kernel", 3, (c,)), ("conv_c/kernel", 2, (4 + c,))}
    for c in range(3):
        assert _members(graph.groups[10 + c]) == {
            ("conv_c/bias", 0, (c,)), ("conv_c/kernel", 3, (c,)), ("head/kernel", 0, (c,))
        }  # fmt: skip


def test_channel_padding_moves_the_labels_and_ties_the_padded_block():
    graph, _ = _build(PadShortcut())
    assert len(graph) == 8
    ids = graph.axes["conv_b/kernel"][3]  # per position of the sum
    np.testing.assert_array_equal(ids, [4, 5, 0, 1, 2, 3, 6, 7])  # conv_a's leaves sort first
    np.testing.assert_array_equal(graph.axes["conv_a/kernel"][3], ids[2:6])
    for p in range(8):
        g = graph.groups[ids[p]]
        held = {("conv_b/bias", 0, (p,)), ("conv_b/kernel", 3, (p,)), ("head/kernel", 0, (p,))}
        if 2 <= p < 6:  # conv_a's channel p - 2, padded to position p
            held |= {("conv_a/bias", 0, (p - 2,)), ("conv_a/kernel", 3, (p - 2,)), ("conv_b/kernel", 2, (p - 2,))}
            assert g.producers == (("conv_a/kernel", 3), ("conv_b/kernel", 3))
        else:  # the zero-padded positions: conv_b's alone
            assert g.producers == (("conv_b/kernel", 3),)
        assert _members(g) == held


def test_slicing_moves_the_labels():
    graph, _ = _build(Slice())
    assert len(graph) == 8 + 3
    ids = graph.axes["conv/kernel"][3]
    np.testing.assert_array_equal(graph.axes["conv2/kernel"][2], ids[2:6])
    for c in range(8):
        g = graph.groups[ids[c]]
        if 2 <= c < 6:
            assert _members(g) == {("conv/bias", 0, (c,)), ("conv/kernel", 3, (c,)), ("conv2/kernel", 2, (c - 2,))}
        else:  # sliced away: nothing reads them, they can go with their kernel slice and bias
            assert _members(g) == {("conv/bias", 0, (c,)), ("conv/kernel", 3, (c,))} and g.consumers == ()


@pytest.mark.parametrize("nchw", [False, True])
def test_flatten_into_dense_repeats_the_channel_over_its_rows(nchw):
    graph, _ = _build(Flatten(nchw=nchw), shape=(2, 2, 3, 2))  # H=2, W=3, C=3: 18 rows
    assert len(graph) == 3
    rows = np.arange(18)
    owner = rows // 6 if nchw else rows % 3  # NCHW: channel-major blocks of H*W; NHWC: channel fastest
    np.testing.assert_array_equal(graph.axes["fc/kernel"][0], owner)
    assert graph.axes["fc/kernel"][1] is None  # the model output
    for c, g in enumerate(graph.groups):
        assert _members(g) == {
            ("conv/bias", 0, (c,)), ("conv/kernel", 3, (c,)), ("fc/kernel", 0, tuple(rows[owner == c].tolist()))
        }  # fmt: skip
        assert len(dict((p, pos) for p, _, pos in g.members)["fc/kernel"]) == 2 * 3


@pytest.mark.parametrize("op", ["layer_norm", "softmax", "cumsum"])
def test_an_op_mixing_channels_pins_them(op):
    graph, _ = _build(Pinned(op=op))
    assert len(graph) == 5  # only conv2's channels
    assert "conv1/kernel" not in graph.axes and "conv1/bias" not in graph.axes and "ln/scale" not in graph.axes
    assert graph.axes["conv2/kernel"][2] is None
    for c, g in enumerate(graph.groups):
        assert _members(g) == {("conv2/bias", 0, (c,)), ("conv2/kernel", 3, (c,)), ("head/kernel", 0, (c,))}


def test_the_model_output_is_pinned():
    graph, _ = _build(ConvOut())
    assert len(graph) == 4
    assert graph.axes["conv1/kernel"][2] is None  # the model input's channels
    assert graph.axes["conv2/kernel"][3] is None and "conv2/bias" not in graph.axes
    np.testing.assert_array_equal(graph.axes["conv2/kernel"][2], [0, 1, 2, 3])


def test_an_untraceable_model_raises_channel_graph_error():
    with pytest.raises(channels.ChannelGraphError, match=r"cannot trace the forward pass on input \(2, 5\)"):
        channel_graph(lambda p, x: p["w"] @ x, {"w": jnp.ones((3, 4))}, jnp.ones((2, 5)))


# ----------------------------------------------------------------------------- masks and counts


def test_mask_and_kept_count_of_two_removed_channels():
    graph, variables = _build(Chain())
    params = variables["params"]
    removed = np.zeros(9, bool)
    removed[[1, 4]] = True  # conv1's channel 1, conv2's channel 0
    mask = graph.mask(removed, params)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    expected = jax.tree.map(lambda a: np.ones(a.shape, np.float32), params)
    expected["conv1"]["kernel"][..., 1] = 0
    expected["conv1"]["bias"][1] = 0
    expected["bn"]["scale"][1] = 0
    expected["bn"]["bias"][1] = 0
    expected["conv2"]["kernel"][:, :, 1, :] = 0
    expected["conv2"]["kernel"][..., 0] = 0
    expected["conv2"]["bias"][0] = 0
    expected["head"]["kernel"][0, :] = 0
    jax.tree.map(lambda m, e: np.testing.assert_array_equal(m, e), mask, expected)
    assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(mask))
    # 287 entries; conv1's channel 1 holds 18 + 1 + 2 + 45 = 66; conv2's channel 0 then 27 + 1 + 3 = 31
    assert int(graph.kept_count(np.zeros(9, bool))) == 287
    assert int(graph.kept_count(removed)) == 287 - 66 - 31 == 190
    assert int(graph.kept_count(removed, ["conv2/kernel"])) == 3 * 3 * 3 * 4
    assert int(graph.kept_count(removed, ["head/bias"])) == 3


def _expected_mask(graph, removed, params):
    """The mask built from the groups' members: zero on every member slice of a removed group."""
    leaves = {p: np.ones(graph.shapes[p], np.float32) for p in graph.paths}
    for g in np.flatnonzero(removed):
        for path, axis, positions in graph.groups[g].members:
            index = [slice(None)] * leaves[path].ndim
            index[axis] = list(positions)
            leaves[path][tuple(index)] = 0
    return jax.tree.unflatten(jax.tree.structure(params), [leaves[p] for p in graph.paths])


def _registry_params_graph(name):
    shape = models.input_shape(name)
    variables = models.abstract_variables(name, shape=shape)
    model = models.create(name)
    apply = jax.tree_util.Partial(
        lambda bs, p, x: model.apply({"params": p, "batch_stats": bs}, x), variables["batch_stats"]
    )
    return channel_graph(apply, variables["params"], jax.ShapeDtypeStruct((1, *shape), jnp.float32)), variables


@pytest.mark.parametrize("which", ["concat", "residual", "resnet20"])
def test_random_masks_zero_exactly_the_removed_members_and_count_them(which):
    if which == "resnet20":
        graph, variables = _registry_params_graph("resnet20")
    else:
        graph, variables = _build(Concat() if which == "concat" else Residual())
    params = variables["params"]
    traces = []

    def mask_fn(removed, params):
        traces.append(1)
        return graph.mask(removed, params)

    jit_mask, jit_count = jax.jit(mask_fn), jax.jit(graph.kept_count)
    n = len(graph)
    for seed, k in enumerate((1, n // 3, n // 2, n - 1)):  # k random groups removed
        removed = np.random.default_rng(seed).permutation(n) < k
        expected = _expected_mask(graph, removed, params)
        for mask in (graph.mask(removed, params), jit_mask(jnp.asarray(removed), params)):
            jax.tree.map(lambda m, e: np.testing.assert_array_equal(m, e), mask, expected)
        kept = sum(int(np.count_nonzero(e)) for e in jax.tree.leaves(expected))
        assert kept < sum(int(np.prod(graph.shapes[p])) for p in graph.paths)
        assert int(graph.kept_count(removed)) == kept
        assert int(jit_count(jnp.asarray(removed))) == kept
    assert len(traces) == 1  # a new removal never retraces


# ----------------------------------------------------------------------------- registry models


def _cifar_resnet_groups(depth):
    # every block's conv1 channels, plus the residual stream: the option-A shortcuts zero-pad
    # stage 1's 16 channels into the middle of stage 2's 32 and those into stage 3's 64, so
    # the stream's channels are 64 groups in all
    return cifar_resnet.DEPTHS[depth] * (16 + 32 + 64) + 64


def _resnet_groups(depth):
    # stem (64, merged with stage 1's stream when the blocks are basic), each stage's stream
    # (its projection shortcut starts a new one), each block's inner convs
    kind, counts = resnet.STAGES[depth]
    planes = (64, 128, 256, 512)
    if kind == "basic":
        return sum(planes) + sum(n * p for n, p in zip(counts, planes))
    return 64 + sum(4 * p for p in planes) + sum(2 * n * p for n, p in zip(counts, planes))


def _mobilenet_groups():
    # the stem's 32 (tied to the first block's depthwise conv), each stage's output stream,
    # each expanded block's hidden channels (the depthwise conv ties its output to them), the
    # last 1x1 conv's 1280
    total, channels_in = 32, 32
    for t, c, n, _ in mobilenet.SETTINGS:
        total += c
        for r in range(n):
            if t != 1:
                total += channels_in * t
            channels_in = c
    return total + 1280


_CONV_CHANNELS = sum(c for c, n in cifar_vgg.STAGES for _ in range(n))
EXPECTED_GROUPS = {
    "mlp": 300 + 100,
    "mnistnet": 20 + 50 + 500,
    **{f"resnet{d}": _cifar_resnet_groups(d) for d in cifar_resnet.DEPTHS},
    **{f"resnet{d}": _resnet_groups(d) for d in resnet.STAGES},
    "vgg_bn_drop": _CONV_CHANNELS + 512,
    "vgg16_bn": sum(c for c in vgg.CONFIG_D if c != "M") + 4096 + 4096,
    "mobilenet_v2": _mobilenet_groups(),
}
FIRST_KERNEL = {
    "mlp": "fc1/kernel", "mnistnet": "conv1/kernel", "vgg_bn_drop": "features_0/conv/kernel",
    "vgg16_bn": "features_0/kernel", "mobilenet_v2": "features_0_0/kernel",
}  # fmt: skip


def test_expected_counts_are_the_hand_derived_numbers():
    assert _CONV_CHANNELS == 4224 and _mobilenet_groups() == 9128
    assert {k: EXPECTED_GROUPS[k] for k in ("resnet20", "resnet56", "resnet110", "resnet18", "resnet50")} == {
        "resnet20": 400, "resnet56": 1072, "resnet110": 2080, "resnet18": 2880, "resnet50": 11456,
    }  # fmt: skip
    assert set(EXPECTED_GROUPS) == set(WITHOUT_ATTENTION)


def test_resnet20_option_a_shortcuts_chain_the_stages_streams():
    graph, _ = _registry_params_graph("resnet20")
    stem = graph.axes["conv1/kernel"][3]
    stage2 = graph.axes["layer2_0/conv2/kernel"][3]
    stage3 = graph.axes["layer3_2/conv2/kernel"][3]
    np.testing.assert_array_equal(graph.axes["layer1_2/conv2/kernel"][3], stem)
    np.testing.assert_array_equal(stage2[8:24], stem)  # zero-padded by 8 channels on each side
    np.testing.assert_array_equal(stage3[16:48], stage2)  # and by 16
    np.testing.assert_array_equal(graph.axes["linear/kernel"][0], stage3)
    assert len(set(stage3.tolist())) == 64
    fresh = set(stage2[:8].tolist()) | set(stage2[24:].tolist())
    later = [(f"layer{s}_{i}/conv2/kernel", 3) for s in (2, 3) for i in range(3)]  # stage 2's own run on
    assert len(fresh) == 16 and all(graph.groups[g].producers == tuple(later) for g in fresh)
    stream = [("conv1/kernel", 3)] + [(f"layer{s}_{i}/conv2/kernel", 3) for s in (1, 2, 3) for i in range(3)]
    assert all(graph.groups[g].producers == tuple(sorted(stream)) for g in stem)  # the stem's run to the end


# The transformers' groups (attention heads, MLP neurons) are checked in test_channel_graph_transformers.py.
WITHOUT_ATTENTION = [n for n in models.names() if not models.attention(n)]


@pytest.mark.parametrize("name", WITHOUT_ATTENTION)
def test_registry_model_groups(name):
    shape = models.input_shape(name)  # the default input: only shapes are traced, nothing is computed
    variables = models.abstract_variables(name, shape=shape)
    graph = channel_graph(models.create(name).apply, variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    assert len(graph) == EXPECTED_GROUPS[name]
    assert all(g.producers for g in graph.groups)
    kernels = {p for p in graph.paths if p.endswith("/kernel")}
    assert {p for g in graph.groups for p, _ in g.producers} <= kernels
    head = f"params/{models.classifier(name)}/kernel"
    assert graph.axes[head][1] is None  # the logits are pinned
    assert not any(p == head and a == 1 for g in graph.groups for p, a, _ in g.members)
    assert f"params/{models.classifier(name)}/bias" not in graph.axes
    assert (graph.axes[head][0] >= 0).all()  # every classifier row goes with some channel
    first = graph.axes.get("params/" + FIRST_KERNEL.get(name, "conv1/kernel"))
    assert first is not None and first[-2] is None  # the model input's channels (rows for the MLP)
    # every group's producing kernels are among its members, with its other leaves
    for g in graph.groups[:: max(1, len(graph) // 50)]:
        held = {(p, a) for p, a, _ in g.members}
        assert set(g.producers) <= held and set(g.consumers) <= held


class StackPool(nn.Module):
    """A conv, then two pooled copies stacked on a new axis (as adaptive pooling below its size does)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), name="conv")(x)
        x = jnp.stack([x[:, 0:1, 0:1, :].mean(axis=(1, 2))] * 2, axis=1)
        return nn.Dense(2, name="head")(x.reshape(x.shape[0], -1))


def test_stack_pins_its_new_axis_and_keeps_the_channels():
    model, x = StackPool(), jnp.ones((2, 1, 1, 2))
    variables = model.init(jax.random.key(0), x)
    graph = channels.channel_graph(model.apply, variables, x)
    assert len(graph) == 3
    for c, group in enumerate(graph.groups):
        rows = dict(((p, a), pos) for p, a, pos in group.members)[("params/head/kernel", 0)]
        assert rows == (c, 3 + c)  # the flattened (copy, channel) rows of channel c
