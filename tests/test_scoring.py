import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbjax


def test_scoring_inputs_match_a_manual_computation(tiny_cnn):
    model, variables, x, y = tiny_cnn
    before = jax.tree.map(np.asarray, variables["batch_stats"])
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    grads, activations = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)

    expected = jax.grad(lambda p: sbjax.cross_entropy(apply_fn(p, x), y))(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, expected)
    # the first layer's input is the batch itself; the head's is the relu'd fc output
    np.testing.assert_allclose(activations["conv1"], jnp.abs(x).mean(axis=(0, 1, 2)), rtol=1e-6)
    assert sorted(activations) == ["conv1", "conv2", "fc", "head"]
    assert activations["conv2"].shape == (4,) and activations["head"].shape == (6,)
    _, state = model.apply(variables, x, mutable=["batch_stats"], capture_intermediates=True)
    hidden = jnp.maximum(state["intermediates"]["fc"]["__call__"][0], 0)
    np.testing.assert_allclose(activations["head"], hidden.mean(axis=0), rtol=1e-5)
    # stored statistics were not touched
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, variables["batch_stats"]))


def test_scoring_inputs_jit(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    eager = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    jitted = jax.jit(lambda p, x, y: sbjax.scoring_inputs(apply_fn, p, x, y))(variables["params"], x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), eager, jitted)


def _intercepted_inputs(model, variables, x):
    """The reference: each Linen weight module's __call__ input, mean |x| per channel."""
    import flax.linen as nn

    seen = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and args and context.module.has_variable("params", "kernel"):
            a = jnp.abs(jnp.asarray(args[0]))
            seen.setdefault("/".join(context.module.path), []).append(a.mean(axis=tuple(range(a.ndim - 1))))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, x, train=False)
    return {k: sum(v) / len(v) for k, v in seen.items()}


def test_activations_from_the_jaxpr_equal_the_module_inputs_with_grouped_convs():
    model, variables = sbjax.models.init("mobilenet_v2", jax.random.key(0), 10, (32, 32, 3))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    found = sbjax.scoring.input_activations(sbjax.scoring.make_apply_fn(model, variables), variables["params"], x)
    expected = _intercepted_inputs(model, variables, x)
    assert sorted(found) == sorted(expected) and len(found) == 53
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_nnx_params_state_scores_like_any_params_tree():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.fc = nnx.Linear(4, 6, rngs=rngs)
            self.head = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
            return self.head(nnx.relu(self.fc(h)))

    net = Net(nnx.Rngs(0))
    net.eval()
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (5, 6, 6, 2))
    y = jnp.array([0, 1, 2, 0, 1])
    grads, activations = sbjax.scoring_inputs(apply_fn, params, x, y)
    np.testing.assert_allclose(activations["conv"], jnp.abs(x).mean(axis=(0, 1, 2)), rtol=1e-6)
    assert sorted(activations) == ["conv", "fc", "head"] and activations["head"].shape == (6,)
    selection = sbjax.Selection.from_model(apply_fn, params, x)
    assert selection.classifier == "head"
    fraction = sbjax.fraction_for(2.0, params, selection)
    for strategy in (sbjax.strategies.global_activation, sbjax.strategies.layer_gradient):
        mask = strategy(params, grads, fraction, activations=activations, selection=selection)
        assert isinstance(mask, nnx.State) and jax.tree.structure(mask) == jax.tree.structure(params)
        assert bool(jnp.all(mask["head"]["kernel"][...] == 1)) and bool(jnp.all(mask["bn"]["scale"][...] == 1))
        counts = sbjax.counts(params, selection)
        kept = int(sbjax.count_kept(mask)) - counts.unprunable
        assert kept == int(sbjax.keep_count(fraction, counts.prunable)) or strategy.scope == sbjax.strategies.PER_TENSOR
    pruned = sbjax.apply_mask(params, mask)
    assert float(sbjax.compression_of(mask)) == pytest.approx(2.0, rel=0.05)
    assert jnp.isfinite(apply_fn(pruned, x)).all()


def test_train_mode_uses_batch_statistics_and_never_writes_them(tiny_cnn):
    model, variables, x, y = tiny_cnn
    stats = jax.tree.map(lambda s: s + 3.0, variables["batch_stats"])  # far from this batch's statistics
    stored = {**variables, "batch_stats": stats}
    before = jax.tree.map(np.asarray, stats)
    eval_fn = sbjax.scoring.make_apply_fn(model, stored, mode="eval")
    train_fn = sbjax.scoring.make_apply_fn(model, stored, mode="train")
    expected, _ = model.apply(stored, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(train_fn(stored["params"], x), expected, rtol=1e-6)
    assert not np.allclose(eval_fn(stored["params"], x), expected)
    sbjax.scoring_inputs(train_fn, stored["params"], x, y)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, stats))
    with pytest.raises(ValueError, match="unknown scoring mode 'test'; expected one of eval, train"):
        sbjax.scoring.make_apply_fn(model, stored, mode="test")


def _shrinkbench_gradient_mask(torch_model, x, y, fraction):
    """ShrinkBench's GlobalMagGrad: model.train(), |w * dL/dw| of the prunable convs, np.quantile threshold."""
    import torch

    torch_model.train()
    torch_model.zero_grad()
    torch.nn.functional.cross_entropy(torch_model(x), y).backward()
    scores = {name: (p * p.grad).abs().detach().numpy() for name, p in torch_model.named_parameters()
              if name.endswith("conv1.weight") or name.endswith("conv2.weight")}  # fmt: skip
    threshold = np.quantile(np.concatenate([s.ravel() for s in scores.values()]), 1 - fraction)
    return {name: s > threshold for name, s in scores.items()}


@pytest.mark.parametrize("mode, agree", [("train", True), ("eval", False)])
def test_train_mode_gradient_masks_match_shrinkbench(mode, agree):
    import torch
    import torch_reference
    from sbjax.models import porting

    torch.manual_seed(0)
    torch_model = torch_reference.randomize_batch_norm(torch_reference.cifar_resnet(20), (3, 32, 32))
    variables = porting.from_state_dict(torch_model.state_dict(), sbjax.models.abstract_variables("resnet20"))
    x = torch.randn(16, 3, 32, 32) * 2 + 0.5
    y = torch.randint(0, 10, (16,))
    expected = _shrinkbench_gradient_mask(torch_model, x, y, 0.25)

    model = sbjax.models.create("resnet20")
    apply_fn = sbjax.scoring.make_apply_fn(model, variables, mode=mode)
    xj, yj = jnp.asarray(x.permute(0, 2, 3, 1).numpy()), jnp.asarray(y.numpy())
    grads, _ = sbjax.scoring_inputs(apply_fn, variables["params"], xj, yj)
    mask = sbjax.strategies.global_gradient(variables["params"], grads, 0.25)
    differing = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        key = porting.flax_to_torch_key("params", tuple(p.key for p in path))
        if key in expected:
            ours = np.transpose(np.asarray(leaf), (3, 2, 0, 1)) > 0  # HWIO -> OIHW
            differing += int(np.sum(ours != expected.pop(key)))
    assert not expected  # every ShrinkBench-prunable tensor was compared
    total = sbjax.counts(variables["params"]).prunable
    if agree:  # float32 rounding of the batch-norm backward (1e-3 relative) swaps a few entries at the threshold
        assert differing <= 0.001 * total, f"{differing} of {total} entries differ from ShrinkBench's mask"
    else:
        assert differing > 0.05 * total
