"""SNIP, GraSP and SynFlow: hand-computed masks, GraSP's sign, SynFlow's flow, schedule and layer collapse."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

import sbjax
from sbjax import strategies
from sbjax.selection import Selection

ALL = Selection(classifier=None)
HEAD = Selection(classifier="head")


def flat(mask, paths):
    return np.concatenate([np.asarray(mask[p]["kernel"]).ravel() for p in paths]).tolist()


# ----------------------------------------------------------------------------- SNIP


def test_snip_is_global_gradient_under_its_own_name():
    params = {"a": {"kernel": jnp.array([[1.0, -4.0], [2.0, -2.0]])}, "b": {"kernel": jnp.array([[0.5, 3.0]])}}
    grads = {"a": {"kernel": jnp.array([[1.0, 0.25], [1.0, 0.1]])}, "b": {"kernel": jnp.array([[2.0, -2.0]])}}
    # |g * w|: a [1, 1, 2, 0.2], b [1, 6]; keep 3: 6, 2, then the first 1 (a's first entry)
    mask = strategies.snip(params, grads, 0.5, selection=ALL)
    assert flat(mask, ["a", "b"]) == [1, 0, 1, 0, 0, 1]
    snip = strategies.snip
    assert snip.needs == {"grads"} and snip.name == "snip" and "Lee et al., 2019" in snip.doc
    assert strategies.get("snip") is strategies.snip
    with pytest.raises(ValueError, match="'snip' needs gradients"):
        strategies.snip(params, None, 0.5, selection=ALL)


# ----------------------------------------------------------------------------- GraSP

A = np.array([[2.0, 1.0, 0.0, 0.5], [1.0, 3.0, -1.0, 0.0], [0.0, -1.0, 1.5, 0.3], [0.5, 0.0, 0.3, 1.0]])
B = np.array([-3.0, 1.0, 0.5, -2.0])
W = np.array([1.0, -0.5, 2.0, 0.8])


def quadratic_loss(a, b, params):
    w = jnp.concatenate([params["l1"]["kernel"].ravel(), params["l2"]["kernel"].ravel()])
    return 0.5 * w @ a @ w + b @ w


def quadratic():
    params = {"l1": {"kernel": jnp.asarray(W[:2].reshape(1, 2), jnp.float32)},
              "l2": {"kernel": jnp.asarray(W[2:].reshape(2, 1), jnp.float32)}}  # fmt: skip
    return params, Partial(quadratic_loss, jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32))


def test_grasp_score_is_w_times_hessian_times_gradient_on_a_quadratic():
    params, loss = quadratic()
    hg = A @ (A @ W + B)  # H = A, g = A w + b
    scores = strategies.grasp_score(params, None, loss=loss, selection=ALL)
    np.testing.assert_allclose(flat(scores, ["l1", "l2"]), W * hg, rtol=1e-6)


def test_grasp_keeps_the_highest_w_hg_which_the_reference_removes_last():
    params, loss = quadratic()
    score = W * (A @ (A @ W + B))
    np.testing.assert_allclose(score, [-3.75, 4.92, 15.66, 0.4976])
    # The reference prunes the largest -w * Hg, i.e. keeps the lowest -w * Hg = the highest w * Hg.
    # Keeping 3 of 4: w * Hg keeps [0, 1, 1, 1]; |w * Hg| would keep [1, 1, 1, 0]; -w * Hg [1, 1, 0, 1].
    mask = strategies.grasp(params, None, 0.75, loss=loss, selection=ALL)
    assert flat(mask, ["l1", "l2"]) == [0, 1, 1, 1]
    assert flat(strategies.grasp(params, None, 0.5, loss=loss, selection=ALL), ["l1", "l2"]) == [0, 1, 1, 0]
    assert strategies.grasp.needs == {"loss"}


def test_grasp_needs_the_loss():
    params, _ = quadratic()
    with pytest.raises(ValueError, match="'grasp' needs the scoring batch's loss"):
        strategies.grasp(params, None, 0.5, selection=ALL)


# ----------------------------------------------------------------------------- SynFlow


def linear_apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["l1"]["kernel"] @ params["l2"]["kernel"]


W1 = np.array([[0.5, -1.0, 0.2], [-0.3, 0.1, 0.4]])  # (2, 3)
W2 = np.array([[2.0], [-0.25], [1.0]])  # (3, 1)


def two_layer():
    return {"l1": {"kernel": jnp.asarray(W1, jnp.float32)}, "l2": {"kernel": jnp.asarray(W2, jnp.float32)}}


def test_synflow_score_is_the_hand_computed_flow_of_a_two_layer_linear_net():
    # R = 1ᵀ|W1||W2|: dR/dW1[i, j] = |W2[j]|, dR/dW2[j] = sum_i |W1[i, j]|
    expected_1 = np.abs(W1) * np.abs(W2).T
    expected_2 = np.abs(W2) * np.abs(W1).sum(axis=0)[:, None]
    scores = strategies.synflow_score(two_layer(), None, apply=Partial(linear_apply), input_shape=(2,), selection=ALL)
    np.testing.assert_allclose(np.asarray(scores["l1"]["kernel"]), expected_1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scores["l2"]["kernel"]), expected_2, rtol=1e-6)


def test_one_round_of_synflow_keeps_the_highest_flow():
    # scores: l1 [[1, .25, .2], [.6, .025, .4]], l2 [1.6, .275, .6]; keep 4 of 9: 1.6, 1, .6 (l1), .6 (l2)
    one_round = strategies.synflow_strategy(1)
    assert one_round.name == "synflow_1" and one_round.rounds == 1
    mask = one_round(two_layer(), None, 4 / 9, apply=Partial(linear_apply), input_shape=(2,), selection=ALL)
    assert flat(mask, ["l1", "l2"]) == [1, 0, 0, 1, 0, 0, 1, 0, 1]


def test_synflow_needs_apply_and_input_shape():
    params = two_layer()
    with pytest.raises(ValueError, match="'synflow' needs the forward pass"):
        strategies.synflow(params, None, 0.5, selection=ALL)
    with pytest.raises(ValueError, match="'synflow' needs input_shape"):
        strategies.synflow(params, None, 0.5, apply=Partial(linear_apply), selection=ALL)


def test_exponential_fractions_end_exactly_at_the_fraction():
    expected = [0.01 ** (r / 4) for r in (1, 2, 3, 4)]
    np.testing.assert_allclose(strategies.exponential_fractions(0.01, 4), expected, rtol=1e-6)
    assert float(strategies.exponential_fractions(0.3, 7)[-1]) == np.float32(0.3)
    with pytest.raises(ValueError, match="rounds must be a positive int, got 0"):
        strategies.exponential_fractions(0.5, 0)


def test_each_round_rescores_the_masked_params_at_the_exponential_schedules_count():
    seen = []

    def score(params, grads, *, selection, **_):  # records how many entries the round scores
        jax.debug.callback(lambda n: seen.append(int(n)), sum(jnp.count_nonzero(p) for p in jax.tree.leaves(params)),
                           ordered=True)  # fmt: skip
        return sbjax.map_prunable(jnp.abs, params, selection=selection)

    params = {"a": {"kernel": jnp.arange(1.0, 101.0).reshape(10, 10)}}
    strategy = strategies.make(score, "global", rounds=4)
    mask = jax.jit(strategy, static_argnames="selection")(params, None, 0.1, selection=ALL)
    jax.effects_barrier()
    counts = [round(0.1 ** (r / 4) * 100) for r in (1, 2, 3)]  # 56, 32, 18
    assert seen == [100] + counts and int(mask["a"]["kernel"].sum()) == 10
    np.testing.assert_array_equal(mask["a"]["kernel"], (params["a"]["kernel"] > 90).astype(np.float32))


def flow(params):
    return float(jnp.sum(linear_apply(jax.tree.map(jnp.abs, params), jnp.ones((1, 4)))))


def test_iterative_synflow_avoids_the_layer_collapse_of_magnitude_and_of_one_shot_synflow():
    # l1 (4 x 4) small weights, l2 (4 x 1) large ones: at 4 of 20 kept, magnitude keeps only l2
    params = {"l1": {"kernel": 0.1 + 0.001 * jnp.arange(16.0).reshape(4, 4)},
              "l2": {"kernel": jnp.array([[1.0], [1.1], [1.2], [1.3]])}}  # fmt: skip
    inputs = dict(apply=Partial(linear_apply), input_shape=(4,), selection=ALL)
    magnitude = strategies.global_magnitude(params, None, 0.2, selection=ALL)
    one_shot = strategies.synflow_strategy(1)(params, None, 0.2, **inputs)
    iterative = strategies.synflow(params, None, 0.2, **inputs)
    assert int(magnitude["l1"]["kernel"].sum()) == 0 and flow(sbjax.apply_mask(params, magnitude)) == 0
    assert int(one_shot["l1"]["kernel"].sum()) == 0 and flow(sbjax.apply_mask(params, one_shot)) == 0
    assert int(sbjax.count_kept(iterative)) == 4 and flow(sbjax.apply_mask(params, iterative)) > 0
    assert int(iterative["l1"]["kernel"].sum()) >= 1 and int(iterative["l2"]["kernel"].sum()) >= 1


DEPTH, WIDTH = 24, 12


def deep_chain(key):
    keys = jax.random.split(key, DEPTH)
    return {f"d{i}": {"kernel": 5 * jax.random.normal(k, (WIDTH, WIDTH))} for i, k in enumerate(keys)}


def chain_apply(params, x):
    for i in range(len(params)):
        x = x @ params[f"d{i}"]["kernel"]
    return x


def test_synflow_rescales_a_deep_net_whose_float32_flow_overflows_and_keeps_the_exact_ranking():
    params = deep_chain(jax.random.key(0))
    mats = [np.abs(np.asarray(params[f"d{i}"]["kernel"], np.float64)) for i in range(DEPTH)]
    left, right = [np.ones(WIDTH)], [np.ones(WIDTH)]  # 1ᵀ|A_1|...|A_i| and |A_j|...|A_L|1
    for m, n in zip(mats, mats[::-1]):
        left.append(left[-1] @ m)
        right.append(n @ right[-1])
    assert left[-1].sum() > np.finfo(np.float32).max  # the reference's float32 flow is inf here
    exact = [m * np.outer(left[i], right[DEPTH - i - 1]) for i, m in enumerate(mats)]
    order = sorted(range(DEPTH), key=lambda i: f"d{i}")  # the flattened (sorted) leaf order: d0, d1, d10, ...
    everything = np.concatenate([exact[i].ravel() for i in order])
    k = round(0.3 * everything.size)
    expected = everything >= np.sort(everything)[::-1][k - 1]
    one_round = jax.jit(strategies.synflow_strategy(1), static_argnames=("input_shape", "selection"))
    mask = one_round(params, None, 0.3, apply=Partial(chain_apply), input_shape=(WIDTH,), selection=ALL)
    got = np.concatenate([np.asarray(mask[f"d{i}"]["kernel"]).ravel() for i in order])
    assert int(got.sum()) == k == int(expected.sum())
    np.testing.assert_array_equal(got, expected.astype(np.float32))


# ----------------------------------------------------------------------------- on a CNN


def cross_entropy(model, batch_stats, x, y, params):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


TRACES = []  # one entry per trace of the forward pass


def forward(model, batch_stats, params, x):
    TRACES.append(1)
    return model.apply({"params": params, "batch_stats": batch_stats}, x)


@pytest.fixture(scope="module")
def cnn(tiny_cnn):
    model, variables, x, y = tiny_cnn
    params, stats = variables["params"], variables["batch_stats"]
    grads = jax.jit(jax.grad(functools.partial(cross_entropy, model, stats, x, y)))(params)
    loss = Partial(functools.partial(cross_entropy, model), stats, x, y)
    apply = Partial(functools.partial(forward, model), stats)
    return params, dict(grads=grads, loss=loss, apply=apply, input_shape=tuple(x.shape[1:]))


AT_INIT = ["snip", "grasp", "synflow"]


@functools.cache
def jitted(name):
    return jax.jit(strategies.get(name), static_argnames=("selection", "input_shape"))


def run(name, params, inputs, fraction, mask=None, jit=True):
    """The strategy's mask, jitted once per name (a mask is always given: one signature)."""
    strategy = jitted(name) if jit else strategies.get(name)
    mask = sbjax.ones_like(params) if mask is None else mask
    return strategy(params, inputs["grads"], jnp.float32(fraction), loss=inputs["loss"], apply=inputs["apply"],
                    input_shape=inputs["input_shape"], mask=mask, selection=HEAD)  # fmt: skip


def prunable_kept(mask, params):
    paths = sbjax.prunable_paths(params, HEAD)
    return sum(int(mask[p.split("/")[0]][p.split("/")[1]].sum()) for p in paths)


@pytest.mark.parametrize("name", AT_INIT)
def test_at_init_masks_keep_exact_counts_under_jit_as_eager_and_leave_the_rest(name, cnn):
    params, inputs = cnn
    n = sbjax.counts(params, HEAD).prunable
    eager = run(name, params, inputs, 0.3, jit=False)
    jax.tree.map(np.testing.assert_array_equal, eager, run(name, params, inputs, 0.3))
    for fraction in (0.003, 0.3, 1.0):
        mask = run(name, params, inputs, fraction)
        sbjax.check_mask(params, mask)
        assert prunable_kept(mask, params) == round(np.float32(fraction) * n), fraction
        for module in ("bn1", "head"):
            assert all(bool(jnp.all(leaf == 1)) for leaf in jax.tree.leaves(mask[module])), module


@pytest.mark.parametrize("name", AT_INIT)
def test_at_init_already_pruned_weights_stay_pruned(name, cnn):
    params, inputs = cnn
    first = run(name, params, inputs, 0.5)
    second = run(name, sbjax.apply_mask(params, first), inputs, 0.2, mask=first)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)
    assert prunable_kept(second, params) == round(np.float32(0.2) * sbjax.counts(params, HEAD).prunable)


def test_synflow_fractions_and_masks_do_not_retrace_and_vmap_over_fractions_equals_a_loop(cnn):
    params, inputs = cnn
    a = run("synflow", params, inputs, 0.4)
    traced = len(TRACES)
    b = run("synflow", params, inputs, 0.2, mask=a)
    assert traced > 0 and len(TRACES) == traced and prunable_kept(b, params) < prunable_kept(a, params)
    fractions = jnp.array([0.1, 0.6])
    batched = jax.vmap(lambda f: run("synflow", params, inputs, f))(fractions)
    for i in range(2):
        single = run("synflow", params, inputs, fractions[i])
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[i], y), batched, single)


def test_grasp_differs_from_snip_and_synflow_from_magnitude_on_the_cnn(cnn):
    params, inputs = cnn
    masks = {name: run(name, params, inputs, 0.3) for name in AT_INIT + ["global_gradient", "global_magnitude"]}
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), masks[a], masks[b]))
    assert same("snip", "global_gradient")
    assert not same("grasp", "snip") and not same("synflow", "global_magnitude")


def test_from_function_reads_loss_and_apply_from_the_signature():
    def fn(params, _grads, fraction, *, loss, apply, input_shape, selection):
        return strategies.grasp(params, None, fraction, loss=loss, selection=selection)

    strategy = strategies.from_function(fn)
    assert strategy.needs == {"loss", "apply"}
    params, loss = quadratic()
    mask = strategy(params, None, 0.5, loss=loss, apply=Partial(linear_apply), input_shape=(2,), selection=ALL)
    assert flat(mask, ["l1", "l2"]) == [0, 1, 1, 0]


def test_old_callers_and_scores_without_the_new_keywords_still_work():
    def score(params, grads, *, key, activations, selection):  # no loss, apply, input_shape
        return sbjax.map_prunable(jnp.abs, params, selection=selection)

    params = {"c": {"kernel": jnp.array([[1.0, -3.0], [2.0, 0.0]])}}
    mask = strategies.make(score)(params, None, 0.5, key=None, activations=None, mask=None, selection=ALL)
    assert flat(mask, ["c"]) == [0, 1, 1, 0]
