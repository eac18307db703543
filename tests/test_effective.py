"""Effective sparsity: exact dead sets of hand-built nets, and random pruning of LeNet-300-100.

Every expected count is worked out by hand in the comments: an entry is effective when it is
kept and lies on a path from the input to the output (constants fold into the next layer).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbjax import metrics


def _ones(params):
    return jax.tree.map(lambda p: np.ones(p.shape, np.float32), params)


def _compute(model, variables, mask, shape):
    return metrics.compute_module(model, variables, mask, shape, on_untraced="error")


def _rows(m):
    return {r.name: (r.effective, r.collapsed) for r in m.layers}


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """3 -> 5 -> 4 -> 2, ReLU, biases."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(5, name="fc1")(x))
        x = nn.relu(nn.Dense(4, name="fc2")(x))
        return nn.Dense(2, name="fc3")(x)


def _mlp_mask(params):
    mask = _ones(params)
    mask["fc1"]["kernel"][:, 0] = 0  # unit 0 of fc1 cut from the input: relu(bias) is a constant
    mask["fc1"]["kernel"][:, 1] = 0  # unit 1 too, bias pruned as well: exactly zero
    mask["fc1"]["bias"][1] = 0
    mask["fc3"]["kernel"][1, :] = 0  # unit 1 of fc2 cut from the output
    return mask


def test_mlp_units_cut_from_input_and_output():
    model = MLP()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    m = _compute(model, variables, _mlp_mask(variables["params"]), (3,))
    assert m.params_total == 15 + 5 + 20 + 4 + 8 + 2 == 54
    assert m.params_nonzero == 54 - 6 - 1 - 2 == 45
    # fc1: kernel columns 2-4 (9), biases 2-4 (3); fc2: rows 2-4 (fc1's live units) x columns 0, 2, 3 (9),
    # biases 0, 2, 3 (3); fc3: rows 0, 2, 3 (6) and both biases (2)
    assert m.params_effective == 9 + 3 + 9 + 3 + 6 + 2 == 32
    assert _rows(m) == {"fc1/kernel": (9, False), "fc2/kernel": (9, False), "fc3/kernel": (6, False)}
    assert m.macs == 15 + 20 + 8 and m.macs_effective == 9 + 9 + 6
    assert m.compression_effective == 54 / 32 and m.speedup_effective == 43 / 24
    assert m.layers_collapsed == 0
    assert m.params_effective < m.params_nonzero


def test_unpruned_everything_is_effective():
    model = MLP()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    m = _compute(model, variables, None, (3,))
    assert (m.params_effective, m.macs_effective, m.compression_effective, m.layers_collapsed) == (54, 43, 1.0, 0)


def test_whole_layer_pruned_collapses():
    model = MLP()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    mask = _ones(variables["params"])
    mask["fc2"]["kernel"][:] = 0  # fc2's output is relu(bias): the network output is a constant
    m = _compute(model, variables, mask, (3,))
    assert m.params_effective == 0 and m.macs_effective == 0
    assert m.compression_effective == float("inf") and m.to_dict()["compression_effective"] is None
    assert m.layers_collapsed == 3 and all(r.collapsed for r in m.layers)


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2 = nnx.Linear(3, 5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs)
        self.fc3 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def test_nnx_mlp_same_dead_set():
    graphdef, params = nnx.split(NnxMLP(nnx.Rngs(0)), nnx.Param)
    apply_fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    mask = jax.tree.map(lambda p: np.ones(p.shape, np.float32), params)
    mask["fc1"]["kernel"][:, :2] = 0
    mask["fc1"]["bias"][1] = 0
    mask["fc3"]["kernel"][1, :] = 0
    m = metrics.compute(apply_fn, params, mask, (3,), on_untraced="error")
    assert (m.params_total, m.params_effective, m.layers_collapsed) == (54, 32, 0)


# ----------------------------------------------------------------------------- conv + batch norm


class ConvBN(nn.Module):
    """conv 3x3 3->4 | BN | ReLU | conv 3x3 4->3 | BN | ReLU | mean over space | dense 3->2."""

    @nn.compact
    def __call__(self, x):
        bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
        x = nn.relu(bn("bn1")(nn.Conv(4, (3, 3), use_bias=False, name="c1")(x)))
        x = nn.relu(bn("bn2")(nn.Conv(3, (3, 3), use_bias=False, name="c2")(x)))
        return nn.Dense(2, name="fc")(x.mean(axis=(1, 2)))


def test_conv_bn_dead_channels():
    model = ConvBN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
    mask = _ones(variables["params"])
    mask["c1"]["kernel"][..., 0] = 0  # c1 channel 0: a constant after BN (its offset), not zero
    mask["fc"]["kernel"][2, :] = 0  # c2 channel 2 reaches nothing
    m = _compute(model, variables, mask, (6, 6, 3))
    assert m.params_total == 108 + 8 + 108 + 6 + 6 + 2 == 238
    # c1: 81 kept, all effective; bn1: scale and offset of channels 1-3; c2: inputs 1-3 x outputs 0-1 x 9 taps;
    # bn2: channels 0-1; fc: rows 0-1 and both biases
    assert m.params_effective == 81 + 6 + 54 + 4 + 4 + 2 == 151
    assert _rows(m) == {"c1/kernel": (81, False), "c2/kernel": (54, False), "fc/kernel": (4, False)}
    assert m.macs_effective == 6 * 6 * 3 * 27 + 6 * 6 * 6 * 9 + 4  # c1: 3 of 4 outputs; c2: 6 of 12 (in, out) pairs


# ----------------------------------------------------------------------------- residual block, concatenation


class Residual(nn.Module):
    """stem conv 3->4 | ReLU | h + conv(ReLU(conv(h))) | ReLU | mean | dense 4->2."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
        branch = nn.Conv(4, (3, 3), name="b2")(nn.relu(nn.Conv(4, (3, 3), name="b1")(h)))
        y = nn.relu(h + branch)
        return nn.Dense(2, name="fc")(y.mean(axis=(1, 2)))


def test_residual_dead_branch_skip_keeps_channels():
    model = Residual()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
    mask = _ones(variables["params"])
    mask["b1"]["kernel"][:] = 0  # the branch's first conv is gone: the branch adds a constant
    m = _compute(model, variables, mask, (5, 5, 3))
    # stem (108 + 4) and fc (8 + 2) only: b1's bias and all of b2 only shape a constant
    assert m.params_effective == 108 + 4 + 8 + 2 == 122
    assert _rows(m) == {"stem/kernel": (108, False), "b1/kernel": (0, True), "b2/kernel": (0, True),
                        "fc/kernel": (8, False)}  # fmt: skip
    assert m.layers_collapsed == 2


def test_residual_partly_dead_branch():
    model = Residual()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))
    mask = _ones(variables["params"])
    mask["b1"]["kernel"][..., 1] = 0  # b1 channel 1: relu(bias), a constant; its weights into b2 fold
    mask["fc"]["kernel"][3, :] = 0  # channel 3 of the sum reaches nothing, in either branch
    m = _compute(model, variables, mask, (5, 5, 3))
    # stem: outputs 0-2 feed the sum's live channels directly, output 3 still feeds b1 (108 + 4);
    # b1: 4 inputs x outputs 0, 2, 3 (108 + 3); b2: inputs 0, 2, 3 x outputs 0-2 (81 + 3); fc: rows 0-2 (6 + 2)
    assert m.params_effective == 112 + 111 + 84 + 8 == 315
    assert _rows(m)["b1/kernel"] == (108, False) and _rows(m)["b2/kernel"] == (81, False)


class Concat(nn.Module):
    """two dense branches 3->2 and 3->3, concatenated, flattened with a max pool in between."""

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(2, (1, 1), name="a")(x))
        b = nn.relu(nn.Conv(3, (1, 1), name="b")(x))
        y = nn.max_pool(jnp.concatenate([a, b], axis=-1), (2, 2), strides=(2, 2))
        return nn.Dense(2, name="fc")(y.reshape(y.shape[0], -1))


def test_concatenate_pool_reshape():
    model = Concat()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
    mask = _ones(variables["params"])
    mask["a"]["kernel"][..., 1] = 0
    mask["a"]["bias"][1] = 0  # channel 1 of the concatenation is zero everywhere
    mask["fc"]["kernel"][4::5] = 0  # channel 4 (b's last) reaches nothing at any of the 2 x 2 positions
    m = _compute(model, variables, mask, (4, 4, 3))
    # a: channel 0 (3 + 1); b: channels 0-1 (6 + 2); fc: 4 positions x channels 0, 2, 3 x 2 outputs, biases
    assert m.params_effective == 4 + 8 + 24 + 2 == 38
    assert _rows(m) == {"a/kernel": (3, False), "b/kernel": (6, False), "fc/kernel": (24, False)}


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4, name="embed")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name="attn")(x)
        return nn.Dense(2, name="head")(x.mean(axis=1))


def test_attention_is_conservative():
    model = Attention()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3, 5)))
    mask = _ones(variables["params"])
    m = _compute(model, variables, mask, (3, 5))
    assert m.params_effective == m.params_total and m.macs_effective == m.macs
    mask["head"]["kernel"][:] = 0
    assert _compute(model, variables, mask, (3, 5)).params_effective == 0


# ----------------------------------------------------------------------------- LeNet-300-100


def test_random_pruning_lenet_effective_above_nominal_and_growing():
    from sbjax import experiment, setups
    from sbjax.config import ExperimentConfig

    ratios = []  # seed 0: about 1.003, 1.08, 1.3, 1.9, 47
    for compression in (16, 32, 64, 128, 256):
        config = ExperimentConfig(setups.NO_DATA, "mlp", "random", compression, 0)
        setup = experiment.prepare(config)
        row = experiment.efficiency(setup, experiment.make_mask(setup, config))
        assert 0 < row["params_effective"] < row["params_nonzero"] and row["layers_collapsed"] == 0
        ratios.append(row["compression_effective"] / row["real_compression"])
    assert 1 < ratios[0] < ratios[1] < ratios[2] < ratios[3] < ratios[4]


# ----------------------------------------------------------------------------- results, report card, plots


def _effective_rows():
    from test_results import sweep_rows

    rows = []
    for r in sweep_rows():
        c, random = r["compression"], r["strategy"] == "random"
        effective = 2.0 * c if random and c >= 4 else float(c)  # random disconnects weights from 4 on
        collapsed = int(random and c == 8 and r["seed"] == 1)
        rows.append(r | dict(params_effective=int(1000 / effective), compression_effective=effective,
                             speedup_effective=effective, macs_effective=1.0, layers_collapsed=collapsed))  # fmt: skip
    return rows


def test_report_card_flags_effective_gap_and_collapse():
    import pandas as pd

    from sbjax import plots, results
    from test_results import sweep_rows

    old = [p for p in plots.report_card(results.aggregate(sweep_rows())) if "effective" in p or "collapse for" in p]
    assert old == []  # rows written before effective sparsity: unknown, nothing flagged
    rows = _effective_rows()
    problems = plots.report_card(results.aggregate(rows))
    assert ("m on d: effective compression differs from the nominal by more than 10% for random at 4 (x2), 8 (x2): "
            "weights cut off by other pruned weights; compare at effective compression too (sbjax plot --effective)"
            ) in problems  # fmt: skip
    assert ("m on d: layer collapse for random at 8 (1 layer in 1 of 2 seeds): the output no longer depends on the "
            "input through some weight layers") in problems  # fmt: skip
    assert not any("global_magnitude" in p and ("effective" in p or "collapse for" in p) for p in problems)
    mixed = results.aggregate(rows + sweep_rows()[:1])  # old and new rows side by side: never a crash
    assert isinstance(plots.report_card(mixed), list) and isinstance(mixed, pd.DataFrame)


def test_plots_against_effective_compression(tmp_path):
    from sbjax import plots, results
    from test_results import sweep_rows

    rows = _effective_rows()
    rows[-1] = rows[-1] | dict(params_effective=0, compression_effective=None)  # nothing effective: left out
    written = {p.name for p in plots.plot_sweep(results.aggregate(rows), tmp_path, effective=True)}
    assert {"top1_vs_compression_effective.png", "top1_vs_speedup_effective_change.svg",
            "compression_effective_vs_compression.png", "top1_vs_compression.png"} <= written  # fmt: skip
    assert len(written) == 2 * (4 * 2 + 1)
    assert len(plots.plot_sweep(results.aggregate(rows), tmp_path / "plain")) == 8
    assert len(plots.plot_sweep(results.aggregate(sweep_rows()), tmp_path / "old", effective=True)) == 8
