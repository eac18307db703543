import pytest

from sbjax import compression, selection

HEAD = selection.Selection(classifier="head")  # tiny_cnn's classifier; it has two dense layers


def test_accounting_on_a_flax_cnn_matches_the_formula_by_hand(tiny_cnn):
    _, variables, _, _ = tiny_cnn
    p = variables["params"]
    # conv1 3*3*2*4 + 4, bn1 4 + 4, conv2 3*3*2*8 (groups 2), fc 8*6 + 6, head 6*3 + 3
    total = 72 + 4 + 8 + 144 + 48 + 6 + 18 + 3
    prunable = 72 + 4 + 144 + 48 + 6
    c = compression.counts(p, HEAD)
    assert (c.total, c.prunable, c.unprunable) == (total, prunable, total - prunable)
    assert compression.fraction_for(4, p, HEAD) == pytest.approx((total / 4 - (total - prunable)) / prunable)
    assert compression.max_compression(p, HEAD) == pytest.approx(total / (total - prunable))
    assert compression.fraction_for(1, p, HEAD) == 1.0


@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), float("inf")])
def test_compression_below_one_is_rejected(bad, tiny_cnn):
    with pytest.raises(compression.CompressionError, match="must be a finite number >= 1"):
        compression.fraction_for(bad, tiny_cnn[1]["params"])


def test_compression_beyond_reach_names_the_limit(tiny_cnn):
    p = tiny_cnn[1]["params"]
    limit = compression.max_compression(p, HEAD)
    with pytest.raises(compression.CompressionError, match=f"largest reachable compression {limit:.4g}"):
        compression.fraction_for(limit * 1.01, p, HEAD)
    with pytest.raises(compression.CompressionError):
        compression.fraction_for(limit, p, HEAD)  # fraction 0 is not in (0, 1]


def test_kernels_only_selection_changes_the_accounting(tiny_cnn):
    p = tiny_cnn[1]["params"]
    assert compression.counts(p, selection.Selection(kinds=("kernel",), classifier="head")).prunable == 72 + 144 + 48


def test_the_params_alone_cannot_name_one_of_two_dense_layers(tiny_cnn):
    with pytest.raises(selection.SelectionError, match=r"2 dense layers \(fc, head\)"):
        compression.counts(tiny_cnn[1]["params"])
