"""Exact efficiency metrics on hand-computable models (every expected number is worked out here)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import fastconv, metrics


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    """4 -> 5 (ReLU) -> 2, both with bias."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(5, name="fc1")(x))
        return nn.Dense(2, name="fc2")(x)


class ConvNet(nn.Module):
    """conv 3x3 3->8 | conv 3x3 stride 2, groups 2, 8->8 | conv 3x3 dilation 2, 8->6 | dense -> 5."""

    padding: str = "SAME"
    conv: object = jax.lax.conv_general_dilated

    @nn.compact
    def __call__(self, x):
        p = self.padding
        x = nn.Conv(8, (3, 3), padding=p, use_bias=False, name="c1", conv_general_dilated=self.conv)(x)
        x = nn.Conv(8, (3, 3), strides=2, padding=p, feature_group_count=2, use_bias=False, name="c2")(x)
        x = nn.Conv(6, (3, 3), kernel_dilation=2, padding=p, use_bias=False, name="c3")(x)
        return nn.Dense(5, use_bias=False, name="fc")(x.reshape(x.shape[0], -1))


def _init(model, shape):
    return model.init(jax.random.key(0), jnp.zeros((1, *shape)))


def _compute(model, variables, mask=None, shape=None, **kw):
    return metrics.compute_module(model, variables, mask, shape, **kw)


def _half_mask(params):
    """Keeps exactly the first half (flattened order) of every leaf."""

    def half(p):
        flat = np.zeros(p.size, np.float32)
        flat[: p.size // 2] = 1
        return jnp.asarray(flat.reshape(p.shape))

    return jax.tree.map(half, params)


def _mask_at(params, density):
    if density == 1.0:
        return jax.tree.map(jnp.ones_like, params)
    if density == 0.0:
        return jax.tree.map(jnp.zeros_like, params)
    return _half_mask(params)


# ----------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("density", [1.0, 0.5, 0.0])
def test_mlp_exact(density):
    model = MLP()
    variables = _init(model, (4,))
    mask = _mask_at(variables["params"], density)
    m = _compute(model, variables, mask, (4,))
    assert m.params_total == 4 * 5 + 5 + 5 * 2 + 2 == 37
    kept = {1.0: 37, 0.5: 10 + 2 + 5 + 1, 0.0: 0}[density]
    assert m.params_nonzero == kept
    assert m.macs == 4 * 5 + 5 * 2 == 30
    assert m.flops == 60
    assert m.macs_nonzero == {1.0: 30, 0.5: 15, 0.0: 0}[density]
    assert m.speedup == {1.0: 1.0, 0.5: 2.0, 0.0: math.inf}[density]
    assert m.compression == (37 / kept if kept else math.inf)
    assert m.memory == 4 + 4 + 5
    # all pruned: fc1's outputs (bias pruned too) are zero, ReLU keeps them zero -> fc2's input
    assert m.memory_zero == {1.0: 0, 0.5: 0, 0.0: 5}[density]
    assert m.other_ops == {"add": 5 + 2, "max": 5}
    assert [(r.name, r.shape, r.params, r.nonzero, r.macs, r.macs_nonzero) for r in m.layers] == [
        ("fc1/kernel", (4, 5), 20, {1.0: 20, 0.5: 10, 0.0: 0}[density], 20, {1.0: 20, 0.5: 10, 0.0: 0}[density]),
        ("fc2/kernel", (5, 2), 10, {1.0: 10, 0.5: 5, 0.0: 0}[density], 10, {1.0: 10, 0.5: 5, 0.0: 0}[density]),
    ]
    assert m.untraced == () and m.notes == ()


def test_mlp_dead_channel_needs_pruned_bias():
    model = MLP()
    params = _init(model, (4,))["params"]
    mask = jax.tree.map(jnp.ones_like, params)
    mask["fc1"]["kernel"] = mask["fc1"]["kernel"].at[:, :2].set(0)  # units 0, 1 get no weights
    mask["fc1"]["bias"] = mask["fc1"]["bias"].at[0].set(0)  # only unit 0 loses its bias too
    m = _compute(model, {"params": params}, mask, (4,))
    assert m.memory_zero == 1  # unit 0 only: unit 1 still outputs relu(bias)
    assert m.memory_nonzero == 13 - 1


# ----------------------------------------------------------------------------- conv net


def _conv_macs(out_hw, c_out, k, c_in_per_group):
    return out_hw * out_hw * c_out * k * k * c_in_per_group


# (c1 output side, c2 output side, c3 output side) for a 16x16 input
_SIDES = {"SAME": (16, 8, 8), "VALID": (14, (14 - 3) // 2 + 1, 6 - 5 + 1)}


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.0])
def test_conv_net_exact(padding, density):
    model = ConvNet(padding)
    variables = _init(model, (16, 16, 3))
    mask = _mask_at(variables["params"], density)
    m = _compute(model, variables, mask, (16, 16, 3))
    s1, s2, s3 = _SIDES[padding]
    expected = [
        ("c1/kernel", (3, 3, 3, 8), _conv_macs(s1, 8, 3, 3)),
        ("c2/kernel", (3, 3, 4, 8), _conv_macs(s2, 8, 3, 8 // 2)),  # groups: 4 inputs per output
        ("c3/kernel", (3, 3, 8, 6), _conv_macs(s3, 6, 3, 8)),  # dilation 2: a 5x5 footprint
        ("fc/kernel", (s3 * s3 * 6, 5), s3 * s3 * 6 * 5),
    ]
    if padding == "SAME":
        assert [e[2] for e in expected] == [55296, 18432, 27648, 1920]
    else:
        assert [e[2] for e in expected] == [42336, 10368, 1728, 120]
    assert [(r.name, r.shape, r.macs) for r in m.layers] == expected
    total = sum(e[2] for e in expected)
    assert m.macs == total and m.flops == 2 * total
    assert m.macs_nonzero == {1.0: total, 0.5: total // 2, 0.0: 0}[density]
    for row, (_, shape, macs) in zip(m.layers, expected):
        assert row.params == math.prod(shape)
        assert row.nonzero == {1.0: row.params, 0.5: row.params // 2, 0.0: 0}[density]
        assert row.macs_nonzero == {1.0: macs, 0.5: macs // 2, 0.0: 0}[density]
    inputs = 16 * 16 * 3 + 16 * 16 * 3 + s1 * s1 * 8 + s2 * s2 * 8 + s3 * s3 * 6
    assert m.memory == inputs
    # no biases: with everything pruned, every layer input after the first is zero
    assert m.memory_zero == {1.0: 0, 0.5: 0, 0.0: s1 * s1 * 8 + s2 * s2 * 8 + s3 * s3 * 6}[density]
    assert m.other_ops == {}


def test_dead_channels_propagate_through_groups():
    model = ConvNet("SAME")
    params = _init(model, (16, 16, 3))["params"]
    mask = jax.tree.map(jnp.ones_like, params)
    mask["c1"]["kernel"] = mask["c1"]["kernel"].at[..., :4].set(0)  # c1 channels 0-3 dead
    m = _compute(model, {"params": params}, mask, (16, 16, 3))
    # c2 input: 4 of 8 channels zero. c2 group 0 (outputs 0-3) reads only those: c3 input 4 of 8.
    assert m.memory_zero == 16 * 16 * 4 + 8 * 8 * 4
    assert m.layers[0].nonzero == 27 * 4 and m.layers[0].macs_nonzero == 16 * 16 * 27 * 4


def test_fastconv_custom_jvp_is_seen_through():
    plain = _compute(ConvNet("SAME"), _init(ConvNet("SAME"), (16, 16, 3)), shape=(16, 16, 3))
    model = ConvNet("SAME", fastconv.conv_general_dilated)
    variables = _init(model, (16, 16, 3))
    assert "custom_jvp_call" in str(jax.make_jaxpr(lambda x: model.apply(variables, x))(jnp.zeros((1, 16, 16, 3))))
    fast = _compute(model, variables, shape=(16, 16, 3))
    assert fast.layers == plain.layers and fast.untraced == ()


# ----------------------------------------------------------------------------- sequences, attention, reuse


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: (batch, 7 tokens, 4 features)
        q = nn.Dense(4, use_bias=False, name="q")(x)
        k = nn.Dense(4, use_bias=False, name="k")(x)
        scores = jnp.einsum("btd,bsd->bts", q, k)
        return nn.Dense(3, use_bias=False, name="out")(scores)


def test_leading_sequence_dims_and_activation_products():
    model = Attention()
    variables = _init(model, (7, 4))
    m = _compute(model, variables, _half_mask(variables["params"]), (7, 4))
    dense = 7 * 4 * 4  # per projection, per example: 7 tokens x 4 x 4
    attention = 7 * 7 * 4  # (7 x 4) @ (4 x 7)
    out = 7 * 7 * 3
    assert [(r.name, r.kind, r.macs, r.prunable) for r in m.layers] == [
        ("q/kernel", "dense", dense, True),
        ("k/kernel", "dense", dense, True),
        ("<activation matmul #1>", "matmul", attention, False),
        ("out/kernel", "dense", out, True),
    ]
    assert m.macs == 2 * dense + attention + out
    # half masks (q, k: 8 of 16 kept; out: 10 of 21 kept); the attention product is not prunable
    assert m.macs_nonzero == 2 * dense // 2 + attention + 7 * 10
    assert m.memory == 28 + 28 + 28 + 49  # the input, q and k's input (x twice), out's input


class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        layer = nn.Dense(4, use_bias=False, name="tied")
        return layer(layer(x))


def test_weight_sharing_counts_calls_not_params():
    model = Shared()
    variables = _init(model, (4,))
    m = _compute(model, variables, _half_mask(variables["params"]), (4,))
    assert m.params_total == 16
    [row] = m.layers
    assert (row.name, row.calls, row.macs, row.macs_nonzero) == ("tied/kernel", 2, 32, 16)


# ----------------------------------------------------------------------------- control flow


class Looped(nn.Module):
    kind: str = "scan"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4))
        step = lambda h: jnp.tanh(h @ kernel)
        if self.kind == "scan":
            x, _ = jax.lax.scan(lambda h, _: (step(h), None), x, None, length=5)
        elif self.kind == "fori":
            x = jax.lax.fori_loop(0, 5, lambda i, h: step(h), x)
        elif self.kind == "while":
            x = jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, step(c[1])), (0, x))[1]
        elif self.kind == "while_unknown":
            n = jnp.sum(x > 0).astype(jnp.int32)
            x = jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, step(c[1])), (0, x))[1]
        elif self.kind == "remat":
            x = jax.checkpoint(step)(x)
        elif self.kind == "jit":
            x = jax.jit(step)(x)
        return x


@pytest.mark.parametrize("kind,trips", [("scan", 5), ("fori", 5), ("while", 5), ("remat", 1), ("jit", 1)])
def test_loops_multiply_trip_counts(kind, trips):
    model = Looped(kind)
    variables = _init(model, (4,))
    m = _compute(model, variables, None, (4,))
    [row] = m.layers
    assert (row.name, row.macs, row.calls) == ("kernel", 16 * trips, trips)
    assert m.other_ops["tanh"] == 4 * trips
    assert m.notes == ()


def test_while_with_unknown_trip_count_is_counted_once_and_said():
    model = Looped("while_unknown")
    m = _compute(model, _init(model, (4,)), None, (4,))
    assert m.macs == 16
    assert len(m.notes) == 1 and "trip count unknown" in m.notes[0]


class Branchy(nn.Module):
    @nn.compact
    def __call__(self, x):
        big = self.param("big", nn.initializers.ones, (4, 8))
        small = self.param("small", nn.initializers.ones, (4, 2))
        return jax.lax.cond(x.sum() > 0, lambda v: (v @ big)[:, :2], lambda v: v @ small, x)


def test_cond_counts_the_most_expensive_branch():
    model = Branchy()
    m = _compute(model, _init(model, (4,)), None, (4,))
    assert [(r.name, r.macs) for r in m.layers] == [("big", 32)]
    assert any("most expensive branch" in n for n in m.notes)


class _Layer(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return nn.Dense(4, use_bias=False, name="dense")(h), None


class _Stack(nn.Module):
    """Three dense layers stacked by ``nn.scan``: one (3, 4, 4) kernel leaf."""

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(_Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return stack(name="layers")(x, None)[0]


def test_nn_scan_over_stacked_params():
    model = _Stack()
    variables = _init(model, (4,))
    assert variables["params"]["layers"]["dense"]["kernel"].shape == (3, 4, 4)
    m = _compute(model, variables, _half_mask(variables["params"]), (4,))
    [row] = m.layers
    assert (row.name, row.macs, row.calls, row.macs_nonzero) == ("layers/dense/kernel", 48, 3, 24)


# ----------------------------------------------------------------------------- untraced kernels


class Standardized(nn.Module):
    """A weight-standardized dense layer: the kernel is computed from the param, not moved."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (4, 3))
        w = (w - w.mean(0)) / (w.std(0) + 1e-5)
        return x @ w


def test_untraced_kernel_warns_errors_or_passes():
    model = Standardized()
    variables = _init(model, (4,))
    with pytest.warns(UserWarning, match="could not be traced"):
        m = _compute(model, variables, None, (4,))
    assert m.macs == 12 and len(m.untraced) == 1 and "dot_general" in m.untraced[0]
    assert [(r.name, r.prunable, r.density) for r in m.layers] == [("<untraced dense #1>", False, 1.0)]
    with pytest.raises(metrics.UntracedKernelError, match="could not be traced"):
        _compute(model, variables, None, (4,), on_untraced="error")
    assert _compute(model, variables, None, (4,), on_untraced="ignore").untraced == m.untraced


def test_bad_arguments_are_clear():
    model = MLP()
    variables = _init(model, (4,))
    with pytest.raises(ValueError, match="on_untraced"):
        _compute(model, variables, None, (4,), on_untraced="loud")
    with pytest.raises(ValueError, match="batch_size"):
        _compute(model, variables, None, (4,), batch_size=0)
    with pytest.raises(ValueError, match="mask"):
        _compute(model, variables, {"fc1": {}}, (4,))


def test_batch_size_does_not_change_per_example_counts():
    model = ConvNet("SAME")
    variables = _init(model, (16, 16, 3))
    one = _compute(model, variables, _half_mask(variables["params"]), (16, 16, 3))
    three = _compute(model, variables, _half_mask(variables["params"]), (16, 16, 3), batch_size=3)
    assert one.to_dict() | {"batch_size": 3} == three.to_dict()


# ----------------------------------------------------------------------------- XLA cross-check


class ValidNet(nn.Module):
    extras: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), padding="VALID", use_bias=self.extras)(x)
        x = nn.Conv(8, (3, 3), strides=2, padding="VALID", feature_group_count=4, use_bias=False)(x)
        x = nn.Conv(6, (3, 3), kernel_dilation=2, padding="VALID", use_bias=False)(x)
        x = x.reshape(x.shape[0], -1)
        if self.extras:
            x = nn.relu(x)
        return nn.Dense(5, use_bias=self.extras)(x)


def _xla_flops(model, variables, shape):
    x = jnp.zeros((1, *shape))
    analysis = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return analysis["flops"]


def test_xla_cost_analysis_agrees_on_valid_loop_free_model():
    model = ValidNet()
    variables = _init(model, (16, 16, 3))
    m = _compute(model, variables, None, (16, 16, 3))
    assert m.other_ops_total == 0
    assert _xla_flops(model, variables, (16, 16, 3)) == m.flops == 2 * (42336 + 5184 + 1728 + 120)


def test_xla_counts_elementwise_ops_like_other_ops():
    model = ValidNet(extras=True)
    variables = _init(model, (16, 16, 3))
    m = _compute(model, variables, None, (16, 16, 3))
    assert m.other_ops == {"add": 14 * 14 * 8 + 5, "max": 24}  # two bias adds, one ReLU
    assert _xla_flops(model, variables, (16, 16, 3)) == m.flops + m.other_ops_total


def test_xla_skips_padding_taps_so_same_padding_differs():
    model = ConvNet("SAME")
    variables = _init(model, (16, 16, 3))
    m = _compute(model, variables, None, (16, 16, 3))
    assert _xla_flops(model, variables, (16, 16, 3)) < m.flops


# ----------------------------------------------------------------------------- report


def test_to_dict_and_table():
    model = MLP()
    variables = _init(model, (4,))
    m = _compute(model, variables, _mask_at(variables["params"], 0.0), (4,))
    d = m.to_dict()
    assert d["compression"] is None and d["speedup"] is None  # infinities are not JSON
    assert d["layers"][0] == {
        "name": "fc1/kernel", "kind": "dense", "shape": [4, 5], "params": 20, "nonzero": 0, "macs": 20,
        "macs_nonzero": 0, "density": 0.0, "calls": 1, "prunable": True, "effective": 0, "macs_effective": 0,
        "collapsed": True,
    }
    assert d["params_effective"] == 0 and d["compression_effective"] is None and d["layers_collapsed"] == 2
    table = metrics.format_table(_compute(model, variables, None, (4,)))
    assert "fc1/kernel" in table and "MACs" in table and "30" in table


# ----------------------------------------------------------------------------- any function, other layouts


def test_plain_function_with_nchw_convolutions():
    """Not Flax: a function of a params dict, NCHW / OIHW dimension numbers."""

    def apply_fn(p, x):
        dn = ("NCHW", "OIHW", "NCHW")
        h = jax.lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h)
        return jax.lax.conv_general_dilated(h, p["w2"], (2, 2), "VALID", dimension_numbers=dn)

    params = {"w1": jnp.ones((4, 3, 3, 3)), "w2": jnp.ones((5, 4, 2, 2))}
    mask = {"w1": jnp.ones((4, 3, 3, 3)).at[1].set(0), "w2": jnp.ones((5, 4, 2, 2))}
    m = metrics.compute(apply_fn, params, mask, (3, 8, 8))
    assert [(r.name, r.macs, r.nonzero) for r in m.layers] == [
        ("w1", 8 * 8 * 4 * 27, 81),
        ("w2", 4 * 4 * 5 * 16, 80),
    ]
    assert m.macs_nonzero == 8 * 8 * 81 + 4 * 4 * 80
    assert m.memory == 192 + 192 + 4 * 64
    assert m.memory_zero == 64  # channel 1 of w2's input: no weights feed it, ReLU keeps it zero


class Shortcut(nn.Module):
    """conv (no bias) -> ReLU6 -> 2x2 average pool -> option-A shortcut (zero-pad channels) -> dense."""

    @nn.compact
    def __call__(self, x):
        h = jax.nn.relu6(nn.Conv(4, (3, 3), use_bias=False, name="conv")(x))
        h = nn.avg_pool(h, (2, 2), (2, 2))
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (2, 2)))  # 4 -> 8 channels, the new ones zero
        return nn.Dense(3, name="fc")(h.reshape(h.shape[0], -1))


def test_zero_channels_through_relu6_pooling_and_zero_padding():
    model = Shortcut()
    params = _init(model, (8, 8, 1))["params"]
    mask = jax.tree.map(jnp.ones_like, params)
    m = _compute(model, {"params": params}, mask, (8, 8, 1))
    assert m.memory == 64 + 64 + 4 * 4 * 8 and m.memory_zero == 4 * 4 * 4  # the padded channels
    mask["conv"]["kernel"] = mask["conv"]["kernel"].at[..., 0].set(0)
    m = _compute(model, {"params": params}, mask, (8, 8, 1))
    assert m.memory_zero == 4 * 4 * 5  # and conv channel 0, through ReLU6 and the pool


def test_batch_norm_makes_a_dead_channel_nonzero():
    """After batch norm a dead channel is offset - scale * mean / std: not provably zero."""

    class ConvBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
            h = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(h))
            return nn.Dense(2, name="fc")(h.mean((1, 2)))

    model = ConvBN()
    variables = _init(model, (8, 8, 1))
    mask = jax.tree.map(jnp.ones_like, variables["params"])
    mask["conv"]["kernel"] = jnp.zeros_like(mask["conv"]["kernel"])
    m = _compute(model, variables, mask, (8, 8, 1))
    assert m.layers[0].macs_nonzero == 0 and m.memory_zero == 0
    # masking batch norm's scale and offset too (not a default rule) makes the channels zero again
    mask["bn"] = jax.tree.map(jnp.zeros_like, mask["bn"])
    assert _compute(model, variables, mask, (8, 8, 1)).memory_zero == 4


def test_batch_group_count_matches_xla():
    """``batch_group_count`` (as in a kernel-gradient convolution) enters through the output shape."""

    def apply_fn(p, x):
        return jax.lax.conv_general_dilated(
            x, p["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2
        )

    params = {"w": jnp.ones((3, 3, 4, 6))}
    m = metrics.compute(apply_fn, params, None, (7, 7, 4), batch_size=2)
    # output (1, 5, 5, 6) for the batch of 2: 150 outputs x 9 taps x 4 inputs, over 2 examples
    assert m.macs == 150 * 9 * 4 // 2
    x = jnp.ones((2, 7, 7, 4))
    analysis = jax.jit(apply_fn).lower(params, x).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    assert analysis["flops"] == 2 * m.macs * 2
