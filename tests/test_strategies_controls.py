"""The checklist's controls: per-leaf counts of a method, random or by magnitude, and the reinit flag."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbjax
from sbjax import strategies
from sbjax.selection import Selection

ALL = Selection(classifier=None)
HEAD = Selection(classifier="head")


def literal():
    params = {"c": {"kernel": jnp.array([[[[1.0, -4.0], [2.0, -2.0]]]]), "bias": jnp.array([0.5, -3.0])},
              "head": {"kernel": jnp.array([[0.1], [0.2]]), "bias": jnp.array([0.0])}}  # fmt: skip
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    grads["c"]["kernel"] = jnp.array([[[[1.0, 0.25], [1.0, 1.0]]]])
    return params, grads


def kept(mask):
    return np.asarray(mask["c"]["kernel"]).ravel().tolist(), np.asarray(mask["c"]["bias"]).tolist()


def jit(strategy):
    return jax.jit(strategy, static_argnames=("selection", "input_shape"))


def per_leaf(mask, params, selection=HEAD):
    return {p: int(mask[p.split("/")[0]][p.split("/")[1]].sum()) for p in sbjax.prunable_paths(params, selection)}


# ----------------------------------------------------------------------------- names and values


def test_controls_resolve_by_name_to_equal_hashable_values_named_by_the_string():
    a, b = strategies.resolve("random_proportions(snip)"), strategies.resolve("random_proportions( snip )")
    assert a == b and hash(a) == hash(b) and a.name == "random_proportions(snip)"
    assert a.method is strategies.snip and a.needs == {"grads", "key"} and "snip" in a.doc
    assert strategies.resolve("magnitude_proportions(global_magnitude)").needs == frozenset()
    assert strategies.resolve("reinit(layer_activation)").needs == {"activations"}
    nested = strategies.resolve("reinit(random_proportions(grasp))")
    assert nested.name == "reinit(random_proportions(grasp))" and nested.needs == {"loss", "key"} and nested.reinit
    assert strategies.random_proportions(strategies.snip) == a


def test_only_reinit_controls_ask_for_a_fresh_initialization():
    assert strategies.resolve("reinit(snip)").reinit is True
    assert strategies.resolve("random_proportions(reinit(snip))").reinit is True
    for name in ("random_proportions(snip)", "magnitude_proportions(synflow)", *strategies.names()):
        assert getattr(strategies.resolve(name), "reinit", False) is False, name
    assert getattr(strategies.from_function(lambda params, grads, fraction: params), "reinit", False) is False


def test_controls_are_templates_not_names():
    assert strategies.templates() == {
        "random_proportions(METHOD)": strategies.CONTROLS["random_proportions"],
        "magnitude_proportions(METHOD)": strategies.CONTROLS["magnitude_proportions"],
        "reinit(METHOD)": strategies.CONTROLS["reinit"],
    }
    assert not any("(" in name for name in strategies.names())
    assert strategies.names()[-3:] == ["snip", "grasp", "synflow"]


def test_unknown_methods_and_controls_are_clear_errors():
    with pytest.raises(ValueError, match="unknown strategy 'magnitude'; known strategies: random, .*random_proport"):
        strategies.resolve("random_proportions(magnitude)")
    with pytest.raises(ValueError, match=r"unknown strategy 'shuffled\(snip\)'.*a control of one: random_proportions\(METHOD"):
        strategies.resolve("shuffled(snip)")
    with pytest.raises(ValueError, match="unknown control 'shuffled'"):
        strategies.Control("shuffled", strategies.snip)
    with pytest.raises(ValueError, match="'random_proportions\\(global_magnitude\\)' needs a jax.random key"):
        strategies.resolve("random_proportions(global_magnitude)")(*literal(), 0.5, selection=HEAD)


def test_a_control_of_an_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_controls.py").write_text(
        "import sbjax\n"
        "def squared(params, _grads, fraction, *, mask=None, selection=sbjax.Selection()):\n"
        "    return sbjax.strategies.global_magnitude(params, None, fraction, mask=mask, selection=selection)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    control = strategies.resolve("magnitude_proportions(my_controls:squared)")
    assert control == strategies.resolve("magnitude_proportions(my_controls:squared)")
    assert control.name == "magnitude_proportions(my_controls:squared)" and control.needs == frozenset()
    params, _ = literal()
    assert kept(control(params, None, 0.5, selection=HEAD)) == ([0, 1, 1, 0], [0, 1])


# ----------------------------------------------------------------------------- masks


def test_magnitude_proportions_keeps_the_methods_counts_per_leaf_by_magnitude():
    params, grads = literal()
    # global_gradient at 0.5: |w*g| kernel [1, 1, 2, 2], bias [1, 6] -> kernel keeps 2, bias 1
    assert kept(strategies.global_gradient(params, grads, 0.5, selection=HEAD)) == ([0, 0, 1, 1], [0, 1])
    control = strategies.resolve("magnitude_proportions(global_gradient)")
    # |w| kernel [1, 4, 2, 2]: 4 and the first 2; bias [0.5, 3]: 3
    assert kept(control(params, grads, 0.5, selection=HEAD)) == ([0, 1, 1, 0], [0, 1])
    mask = control(params, grads, 0.5, selection=HEAD)
    assert all(bool(jnp.all(leaf == 1)) for leaf in jax.tree.leaves(mask["head"]))


def test_magnitude_proportions_of_global_magnitude_is_global_magnitude(tiny_cnn):
    params = tiny_cnn[1]["params"]
    method = jit(strategies.global_magnitude)
    control = jit(strategies.magnitude_proportions(strategies.global_magnitude))
    for fraction in (0.05, 0.37, 1.0):
        jax.tree.map(np.testing.assert_array_equal, control(params, None, jnp.float32(fraction), selection=HEAD),
                     method(params, None, jnp.float32(fraction), selection=HEAD))  # fmt: skip


def test_reinit_returns_the_methods_mask_exactly():
    params, grads = literal()
    mask = strategies.resolve("reinit(global_gradient)")(params, grads, 0.5, selection=HEAD)
    jax.tree.map(np.testing.assert_array_equal, mask, strategies.global_gradient(params, grads, 0.5, selection=HEAD))


def cnn_inputs(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    grads, _ = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    return variables["params"], grads


def test_random_proportions_under_jit_equals_eager(tiny_cnn):
    params, grads = cnn_inputs(tiny_cnn)
    control = strategies.resolve("random_proportions(global_gradient)")
    eager = control(params, grads, 0.3, key=jax.random.key(4), selection=HEAD)
    jitted = jit(control)(params, grads, jnp.float32(0.3), key=jax.random.key(4), selection=HEAD)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)


@pytest.mark.parametrize("method", ["global_gradient", "layer_magnitude", "random"])
def test_random_proportions_keeps_the_methods_exact_counts_per_leaf_and_depends_on_the_key(method, tiny_cnn):
    params, grads = cnn_inputs(tiny_cnn)
    control = jit(strategies.resolve(f"random_proportions({method})"))
    fraction, key = jnp.float32(0.3), jax.random.key(4)
    found = jit(strategies.get(method))(params, grads, fraction, key=key, selection=HEAD)
    mask = control(params, grads, fraction, key=key, selection=HEAD)
    sbjax.check_mask(params, mask)
    assert per_leaf(mask, params) == per_leaf(found, params)
    again = control(params, grads, fraction, key=key, selection=HEAD)
    other = control(params, grads, fraction, key=jax.random.key(5), selection=HEAD)
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))
    assert same(mask, again) and not same(mask, other) and not same(mask, found)
    assert all(bool(jnp.all(leaf == 1)) for m in ("bn1", "head") for leaf in jax.tree.leaves(mask[m]))


def test_random_proportions_is_uniform_within_each_leaf():
    params = {"a": {"kernel": jnp.arange(1.0, 9.0).reshape(2, 4)},
              "b": {"kernel": 0.1 * jnp.arange(1.0, 5.0).reshape(2, 2)}}  # fmt: skip
    control = jax.jit(strategies.random_proportions(strategies.global_magnitude), static_argnames="selection")
    # global magnitude at 0.5 keeps 6 of 12: a's 3..8, none of b
    counts = per_leaf(strategies.global_magnitude(params, None, 0.5, selection=ALL), params, ALL)
    assert counts == {"a/kernel": 6, "b/kernel": 0}
    keys = jax.random.split(jax.random.key(0), 400)
    masks = jax.vmap(lambda k: control(params, None, 0.5, key=k, selection=ALL))(keys)
    a = np.asarray(masks["a"]["kernel"]).reshape(400, -1)
    assert (a.sum(axis=1) == 6).all() and (np.asarray(masks["b"]["kernel"]) == 0).all()
    np.testing.assert_allclose(a.mean(axis=0), 0.75, atol=0.1)  # each entry kept with probability 6/8


@pytest.mark.parametrize("name", ["random_proportions(global_gradient)", "magnitude_proportions(global_gradient)"])
def test_controls_keep_already_pruned_weights_pruned(name, tiny_cnn):
    params, grads = cnn_inputs(tiny_cnn)
    control, fraction = jit(strategies.resolve(name)), jnp.float32(0.2)
    first = jit(strategies.random)(params, None, jnp.float32(0.5), key=jax.random.key(1), selection=HEAD)
    masked = sbjax.apply_mask(params, first)
    second = control(masked, grads, fraction, key=jax.random.key(2), mask=first, selection=HEAD)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)
    method = jit(strategies.global_gradient)(masked, grads, fraction, mask=first, selection=HEAD)
    assert per_leaf(second, params) == per_leaf(method, params)


def test_controls_pass_loss_and_apply_to_the_method():
    def linear_apply(params, x):
        return x @ params["l1"]["kernel"] @ params["l2"]["kernel"]

    params = {"l1": {"kernel": jnp.array([[0.5, -1.0, 0.2], [-0.3, 0.1, 0.4]])},
              "l2": {"kernel": jnp.array([[2.0], [-0.25], [1.0]])}}  # fmt: skip
    inputs = dict(apply=jax.tree_util.Partial(linear_apply), input_shape=(2,), selection=ALL)
    method = strategies.synflow_strategy(5)
    found = jit(method)(params, None, 4 / 9, **inputs)
    mask = jit(strategies.magnitude_proportions(method))(params, None, 4 / 9, **inputs)
    counts = per_leaf(found, params, ALL)
    assert per_leaf(mask, params, ALL) == counts and counts != {"l1/kernel": 4, "l2/kernel": 0}
    for leaf in ("l1", "l2"):
        w = np.abs(np.asarray(params[leaf]["kernel"])).ravel()
        top = np.argsort(-w, kind="stable")[: counts[f"{leaf}/kernel"]]
        assert np.flatnonzero(np.asarray(mask[leaf]["kernel"]).ravel()).tolist() == sorted(top.tolist()), leaf


# ----------------------------------------------------------------------------- count_mask


@pytest.mark.parametrize("sort_above", [0, 2**22])
def test_count_mask_keeps_exact_counts_with_ties_by_either_path(sort_above):
    scores = {"a": jnp.array([[2.0, 1.0, 2.0], [0.0, 2.0, 1.0]]), "b": jnp.array([5.0, 5.0, 5.0, 5.0]), "c": None}
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(4), "c": jnp.ones(2)}
    count = functools.partial(strategies.count_mask, sort_above=sort_above)
    mask = count(scores, {"a": 4, "b": 3, "c": None}, params)
    assert np.asarray(mask["a"]).tolist() == [[1, 1, 1], [0, 1, 0]]  # 2, 2, 2, then the first 1
    assert np.asarray(mask["b"]).tolist() == [1, 1, 1, 0] and np.asarray(mask["c"]).tolist() == [1, 1]
    pruned = {"a": jnp.array([[0.0, 1, 1], [1, 1, 1]]), "b": jnp.ones(4), "c": jnp.array([1.0, 0])}
    mask = jax.jit(count)(scores, {"a": jnp.int32(1), "b": jnp.int32(0), "c": None}, params, mask=pruned)
    assert np.asarray(mask["a"]).tolist() == [[0, 0, 1], [0, 0, 0]]  # the pruned 2 stays pruned
    assert np.asarray(mask["b"]).tolist() == [0, 0, 0, 0] and np.asarray(mask["c"]).tolist() == [1, 0]


def test_count_mask_paths_agree_on_random_scores_and_every_count():
    scores = jnp.round(jax.random.normal(jax.random.key(0), (257,)), 1)  # many ties
    by_threshold = jax.jit(lambda k: strategies.count_mask({"s": scores}, {"s": k}, {"s": scores})["s"])
    by_sort = jax.jit(lambda k: strategies.count_mask({"s": scores}, {"s": k}, {"s": scores}, sort_above=0)["s"])
    for k in (0, 1, 100, 128, 256, 257):
        a, b = by_threshold(jnp.int32(k)), by_sort(jnp.int32(k))
        assert int(a.sum()) == k
        np.testing.assert_array_equal(a, b)
