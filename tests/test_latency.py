"""sbjax.latency: the figures' structure and definitions, the interleaved order, the errors."""

import doctest
import gc
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import latency
from sbjax.latency import Latency, LatencyError, Timing, measure


class MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(self.hidden)(x)))


def mlp(hidden: int):
    model = MLP(hidden)
    return model.apply, model.init(jax.random.key(0), jnp.zeros((1, 8)))


@pytest.fixture(scope="module")
def measured() -> Latency:
    return measure({"dense": mlp(16), "slim": mlp(4)}, (8,), batches=(1, 5), repeats=3, warmup=1)


def recording_jit(names: dict, calls: list):
    """A ``jit`` for :func:`measure` that records ``(model, batch, x)`` of every call, in order."""

    def jit(apply):
        compiled = jax.jit(apply)

        def call(variables, x):
            calls.append((names[apply], x.shape[0], x))
            return compiled(variables, x)

        return call

    return jit


def test_to_dict_holds_every_batch_and_model_and_is_json_ready(measured):
    out = json.loads(json.dumps(measured.to_dict()))
    assert set(out) == {"device", "platform", "repeats", "warmup", "input_shape", "dtype", "batches"}
    assert (out["device"], out["platform"]) == (jax.devices()[0].device_kind, jax.devices()[0].platform)
    assert (out["repeats"], out["warmup"], out["input_shape"], out["dtype"]) == (3, 1, [8], "float32")
    assert list(out["batches"]) == ["1", "5"]
    for row in out["batches"].values():
        assert list(row) == ["dense", "slim"]
        for figures in row.values():
            assert set(figures) == {"median_ms", "min_ms", "iqr_ms", "throughput"}
            assert 0 < figures["min_ms"] <= figures["median_ms"] and figures["iqr_ms"] >= 0


def test_throughput_and_speedup_are_defined_by_the_medians(measured):
    assert measured.batches == (1, 5) and measured.models == ("dense", "slim")
    for batch in (1, 5):
        dense, slim = measured.timing(batch, "dense"), measured.timing(batch, "slim")
        assert len(dense.times_ms) == len(slim.times_ms) == 3
        assert dense.throughput == batch / dense.median_ms * 1000
        assert measured.to_dict()["batches"][str(batch)]["slim"]["throughput"] == batch / slim.median_ms * 1000
        assert measured.speedup(batch) == dense.median_ms / slim.median_ms
        assert measured.speedup(batch, base="slim", other="dense") == slim.median_ms / dense.median_ms


def test_timing_statistics_on_literal_times():
    t = Timing(4, (3.0, 1.0, 10.0, 2.0, 4.0))
    assert (t.median_ms, t.min_ms, t.iqr_ms) == (3.0, 1.0, 2.0)  # inclusive quartiles 2 and 4
    assert t.throughput == 4 / 3.0 * 1000
    assert Timing(1, (5.0,)).to_dict() == {"median_ms": 5.0, "min_ms": 5.0, "iqr_ms": 0.0, "throughput": 200.0}


def test_models_are_warmed_up_then_timed_round_robin_on_one_fixed_input_per_batch():
    a, b = mlp(4), mlp(6)
    names, calls = {a[0]: "a", b[0]: "b"}, []
    jitted = []
    jit = recording_jit(names, calls)
    measure({"a": a, "b": b}, (8,), batches=(2, 3), repeats=3, warmup=2,
            jit=lambda f: jitted.append(f) or jit(f))  # fmt: skip
    assert jitted == [a[0], b[0]]  # one jit per model, for every batch size
    expected = []
    for batch in (2, 3):
        warm = [("a", batch)] * 3 + [("b", batch)] * 3  # the compiling call and 2 warmup calls each
        expected += warm + [("a", batch), ("b", batch)] * 3
    assert [(name, batch) for name, batch, _ in calls] == expected
    for batch in (2, 3):
        inputs = [x for _, n, x in calls if n == batch]
        assert all(x is inputs[0] for x in inputs) and inputs[0].shape == (batch, 8)


def test_inputs_come_from_the_key():
    def inputs(key, dtype=jnp.float32):
        calls = []
        apply = lambda v, x: x  # noqa: E731
        measure({"m": (apply, {})}, (4,), batches=(2,), repeats=1, warmup=0, key=key, dtype=dtype,
                jit=recording_jit({apply: "m"}, calls))  # fmt: skip
        return np.asarray(calls[0][2])

    assert np.array_equal(inputs(None), inputs(jax.random.key(0)))
    assert not np.array_equal(inputs(jax.random.key(0)), inputs(jax.random.key(1)))
    tokens = inputs(None, jnp.int32)
    assert tokens.dtype == np.int32 and set(np.unique(tokens)) <= {0, 1}


def test_each_model_is_traced_once_per_batch_size_and_gc_is_restored():
    traces = []

    def apply(variables, x):
        traces.append(x.shape)
        return x @ variables

    lat = measure({"m": (apply, jnp.ones((8, 2)))}, (8,), batches=(1, 4), repeats=4, warmup=2)
    assert traces == [(1, 8), (4, 8)]
    assert gc.isenabled() and lat.timing(4, "m").batch == 4


def test_a_model_with_far_more_work_measures_slower():
    w = jax.random.normal(jax.random.key(0), (256, 256)) / 16

    def heavy(w, x):  # 200 dependent 256 x 256 matmuls: about 1000x the work of `light`
        return jax.lax.fori_loop(0, 200, lambda _, h: jnp.tanh(h @ w), x)

    lat = measure({"heavy": (heavy, w), "light": (lambda w, x: x[:, :1], w)}, (256,), batches=(64,), repeats=3)
    assert lat.timing(64, "heavy").min_ms > lat.timing(64, "light").median_ms
    assert lat.speedup(64, base="heavy", other="light") > 1


def test_format_has_a_row_per_batch_and_model(measured):
    text = measured.format()
    rows = text.splitlines()[2:]
    assert len(rows) == 4 and [r.split()[:2] for r in rows] == [["1", "dense"], ["1", "slim"], ["5", "dense"],
                                                                ["5", "slim"]]  # fmt: skip
    assert rows[0].split()[-1] == "1.00x" and "vs dense" in text
    assert measured.format(base="slim").splitlines()[3].split()[-1] == "1.00x"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": {}}, "non-empty mapping"),
        ({"models": [("dense", mlp(4))]}, "non-empty mapping"),
        ({"models": {"dense": mlp(4)[0]}}, "model 'dense' must be a pair"),
        ({"models": {"dense": ("apply", {})}}, "callable apply"),
        ({"models": {1: mlp(4)}}, "names must be strings"),
        ({"input_shape": [8]}, "input_shape must be a tuple of positive ints"),
        ({"input_shape": (8, 0)}, "input_shape must be a tuple of positive ints"),
        ({"input_shape": (8.0,)}, "input_shape must be a tuple of positive ints"),
        ({"batches": (1, 0)}, "batches must be distinct ints >= 1"),
        ({"batches": (-2,)}, "batches must be distinct ints >= 1"),
        ({"batches": (2.5,)}, "batches must be distinct ints >= 1"),
        ({"batches": (True,)}, "batches must be distinct ints >= 1"),
        ({"batches": (4, 4)}, "batches must be distinct ints >= 1"),
        ({"batches": ()}, "non-empty sequence"),
        ({"batches": 128}, "non-empty sequence"),
        ({"repeats": 0}, "repeats must be an int >= 1"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    args = {"models": {"dense": mlp(4)}, "input_shape": (8,), **kwargs}
    with pytest.raises(LatencyError, match=message):
        measure(args.pop("models"), args.pop("input_shape"), **args)


def test_a_model_failing_on_the_input_is_named_with_the_shape():
    with pytest.raises(LatencyError, match=r"model 'slim' failed on an input of shape \(3, 5\) \(float32\)"):
        measure({"dense": (lambda v, x: x, {}), "slim": mlp(4)}, (5,), batches=(3,), repeats=1)


def test_speedup_of_an_unmeasured_batch_or_model_names_what_was_measured(measured):
    with pytest.raises(LatencyError, match=r"batch 128 was not measured; measured batches: \[1, 5\]"):
        measured.speedup(128)
    with pytest.raises(LatencyError, match=r"model 'pruned' was not measured; measured models: \['dense', 'slim'\]"):
        measured.speedup(1, other="pruned")


def test_numpy_ints_are_accepted_and_reported_as_ints():
    lat = measure({"m": (lambda v, x: x, {})}, (np.int64(2),), batches=(np.int32(3),), repeats=1, warmup=0)
    assert lat.to_dict()["input_shape"] == [2] and list(lat.to_dict()["batches"]) == ["3"]
    assert lat.batches == (3,) and type(lat.batches[0]) is int


def test_doctests():
    result = doctest.testmod(latency)
    assert result.attempted > 0 and result.failed == 0
