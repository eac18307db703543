import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import sbjax
from sbjax import selection, strategies
from sbjax.selection import Selection, SelectionError


def params():
    return {
        "stem": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
        "norm": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
        "block": {"conv": {"kernel": jnp.ones((3, 3, 8, 8))}, "bn": {"scale": jnp.ones(8), "bias": jnp.ones(8)}},
        "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)},
    }


def test_default_rule_kernels_and_biases_minus_the_only_dense_layer_and_norms():
    assert selection.prunable_paths(params()) == ["block/conv/kernel", "stem/bias", "stem/kernel"]
    flags = selection.prunable(params())
    assert flags["norm"] == {"scale": False, "bias": False}
    assert flags["head"] == {"kernel": False, "bias": False}


def test_kernels_only_and_named_classifier_and_excludes():
    assert selection.prunable_paths(params(), Selection(kinds=("kernel",))) == ["block/conv/kernel", "stem/kernel"]
    named = selection.prunable_paths(params(), Selection(classifier="stem"))
    assert "stem/kernel" not in named and "head/kernel" in named
    assert "head/bias" in selection.prunable_paths(params(), Selection(classifier=None))
    assert selection.prunable_paths(params(), Selection(exclude=("block", "stem"))) == []


def test_unknown_classifier_is_a_clear_error():
    with pytest.raises(SelectionError, match="classifier 'nope' is not a weight layer.*'stem'"):
        selection.prunable_paths(params(), Selection(classifier="nope"))


class ProjHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="head")(nn.relu(nn.Dense(64, name="proj")(x)))


class Twelve(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(11):
            x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(2)(x)  # Dense_11, the classifier


def resolved(model, x):
    p = model.init(jax.random.key(0), x)["params"]
    return p, Selection.from_model(lambda p, x: model.apply({"params": p}, x), p, x)


def test_auto_refuses_when_several_dense_layers_make_the_params_ambiguous():
    p, _ = resolved(ProjHead(), jnp.ones((2, 16)))
    # jax.tree.map sorts keys: "head" < "proj", so "last in dict order" would protect proj.
    with pytest.raises(SelectionError, match=r"2 dense layers \(head, proj\).*Selection.from_model"):
        selection.prunable_paths(sbjax.apply_mask(p, sbjax.ones_like(p)))


@pytest.mark.parametrize("model, classifier, victim", [(ProjHead(), "head", "proj"), (Twelve(), "Dense_11", "Dense_9")])
def test_the_classifier_comes_from_the_forward_pass_whatever_the_dict_order(model, classifier, victim):
    p, sel = resolved(model, jnp.ones((2, 16)))
    assert sel.classifier == classifier
    masked = sbjax.apply_mask(p, sbjax.ones_like(p))  # sorted keys
    assert Selection.from_model(lambda q, x: model.apply({"params": q}, x), masked, jnp.ones((2, 16))) == sel
    fraction = sbjax.fraction_for(4.0, p, sel)
    mask = jax.jit(strategies.global_magnitude, static_argnames="selection")(masked, None, fraction, selection=sel)
    assert all(bool(jnp.all(m == 1)) for m in jax.tree.leaves(mask[classifier]))
    assert int(sum(m.sum() for m in jax.tree.leaves(mask[victim]))) < sum(m.size for m in jax.tree.leaves(mask[victim]))
    assert float(sbjax.compression_of(mask)) == pytest.approx(4.0, rel=1e-2)


def test_a_transformer_style_nested_classifier_is_found_and_the_target_is_met():
    # The names of Hugging Face's ViT: sorted, "vit/encoder/layer/9/output/dense" comes after "classifier".
    key = iter(jax.random.split(jax.random.key(0), 8))
    dense = lambda i, o: {"kernel": jax.random.normal(next(key), (i, o)), "bias": jnp.zeros(o)}  # noqa: E731
    p = {"vit": {"encoder": {"layer": {str(i): {"output": {"dense": dense(16, 16)}} for i in (8, 9)}}},
         "classifier": dense(16, 10)}  # fmt: skip

    def apply_fn(p, x):
        for i in ("8", "9"):
            layer = p["vit"]["encoder"]["layer"][i]["output"]["dense"]
            x = jax.nn.gelu(x @ layer["kernel"] + layer["bias"])
        return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]

    sel = Selection.from_model(apply_fn, p, jnp.ones((1, 16)))
    assert sel.classifier == "classifier"
    mask = jax.jit(strategies.global_magnitude, static_argnames="selection")(p, None, sbjax.fraction_for(4.0, p, sel), selection=sel)
    counts = sbjax.counts(p, sel)
    assert int(sbjax.count_kept(mask)) == counts.unprunable + round(sbjax.fraction_for(4.0, p, sel) * counts.prunable)
    assert float(sbjax.compression_of(mask)) == pytest.approx(4.0, rel=0.01)
    assert bool(jnp.all(mask["classifier"]["kernel"] == 1))


def test_masks_are_identical_eager_jitted_after_tree_map_and_after_a_checkpoint_round_trip(tmp_path):
    model, variables = sbjax.models.init("mnistnet", jax.random.key(0))
    p = variables["params"]
    sel = Selection.from_model(lambda q, x: model.apply({"params": q}, x), p, jnp.ones((1, 28, 28, 1)))
    assert sel.classifier == "fc2"
    path = tmp_path / "ckpt"
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(path, p)
        restored = checkpointer.restore(path)
    fraction = sbjax.fraction_for(8.0, p, sel)
    jitted = jax.jit(strategies.global_magnitude, static_argnames="selection")
    reference = strategies.global_magnitude(p, None, fraction, selection=sel)
    for q, fn in [(p, jitted), (jax.tree.map(lambda a: a + 0, p), strategies.global_magnitude), (restored, jitted)]:
        jax.tree.map(np.testing.assert_array_equal, fn(q, None, fraction, selection=sel), reference)
    assert bool(jnp.all(reference["fc2"]["kernel"] == 1)) and int(reference["fc1"]["kernel"].sum()) < 400_000


def test_from_model_refuses_a_model_without_weight_layers():
    with pytest.raises(SelectionError, match="no convolution or matrix product"):
        Selection.from_model(lambda p, x: x * p["scale"], {"scale": jnp.ones(3)}, jnp.ones((1, 3)))


def test_selection_is_hashable_for_jit_static_args():
    assert hash(Selection()) == hash(Selection(kinds=["kernel", "bias"]))


@pytest.mark.parametrize("name", sbjax.models.names())
def test_every_registry_model_declares_the_classifier_its_forward_pass_ends_with(name):
    model = sbjax.models.create(name)
    variables = sbjax.models.abstract_variables(name)  # shapes only: tracing computes nothing
    rest = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v) for k, v in variables.items() if k != "params"}
    x = sbjax.models.example_input(name)
    apply_fn = lambda p, x: model.apply({**rest, "params": p}, x, train=False)  # noqa: E731
    found = Selection.from_model(apply_fn, variables["params"], x)
    if sbjax.models.task(name) == "lm":  # a tied LM head: no classifier, the embedding excluded
        assert found == sbjax.models.selection(name)
    else:
        assert found.classifier == sbjax.models.classifier(name)
