"""Perplexity by the strided protocol, text sources and tokenizers, calibration sets, the LM experiment's id."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import language, perplexity
from sbjax.data import text as text_lib
from sbjax.models import GPT2, GPT2Config
from sbjax.perplexity import Protocol, Window, windows
from sbjax.selection import Selection


def test_windows_are_the_strided_protocol():
    assert windows(10, Protocol(4, 2)) == [Window(0, 4, 3), Window(2, 6, 2), Window(4, 8, 2), Window(6, 10, 2)]
    assert windows(9, Protocol(4, 4)) == [Window(0, 4, 3), Window(4, 8, 3), Window(8, 9, 0)]
    assert windows(3, Protocol(8, 4)) == [Window(0, 3, 2)]


@pytest.mark.parametrize("n,length,stride", [(50, 8, 3), (50, 8, 8), (17, 5, 1), (64, 16, 16)])
def test_each_token_is_scored_once_with_context_in_its_window(n, length, stride):
    scored = []
    for begin, end, count in windows(n, Protocol(length, stride)):
        assert end - begin <= length and end - count > begin  # every scored token has context in its window
        scored += list(range(end - count, end))
    overlapping = stride < length
    assert scored == (list(range(1, n)) if overlapping else [t for t in range(1, n) if t % length])


def test_protocol_id_and_errors():
    assert Protocol(1024, 512).id == "strided:max_length=1024,stride=512"
    with pytest.raises(ValueError, match="stride <= max_length"):
        Protocol(4, 8)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        Protocol(4, 0)


def bigram(params, ids):
    """A toy causal model: the logits at position t depend on token t only."""
    return params["table"][ids]


def test_perplexity_of_a_bigram_model_by_hand():
    rng = np.random.default_rng(0)
    params = {"table": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)}
    tokens = rng.integers(0, 5, 41)
    logp = jax.nn.log_softmax(params["table"], axis=-1)
    by_hand = -np.mean([float(logp[tokens[t - 1], tokens[t]]) for t in range(1, 41)])
    got = perplexity.perplexity(bigram, params, tokens, Protocol(8, 3), batch_size=4)
    assert got == pytest.approx(math.exp(by_hand), rel=1e-5)


def causal_sum(params, ids):
    """A toy causal model whose logits depend on the whole prefix in the window (a running sum)."""
    return jnp.cumsum(params["emb"][ids], axis=1) @ params["out"]


def test_windows_padding_and_batches_match_a_direct_loop():
    rng = np.random.default_rng(1)
    params = {"emb": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32), "out": jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)}
    tokens = rng.integers(0, 7, 45)
    protocol = Protocol(10, 4)
    total = count = 0.0
    for begin, end, scored in windows(len(tokens), protocol):  # each window alone, unpadded
        ids = jnp.asarray(tokens[begin:end])[None]
        logp = jax.nn.log_softmax(causal_sum(params, ids[:, :-1]), axis=-1)[0]
        for pos in range(end - begin - scored, end - begin):
            total -= float(logp[pos - 1, tokens[begin + pos]])
            count += 1
    got_total, got_count = perplexity.nll_sums(causal_sum, params, tokens, protocol, batch_size=3)
    assert got_count == count == len(tokens) - 1
    assert got_total == pytest.approx(total, rel=1e-5)


def test_text_sources_and_the_byte_tokenizer(tmp_path):
    (tmp_path / "b.txt").write_text("world")
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("!")
    (tmp_path / "skip.py").write_text("x = 1")
    assert text_lib.load_text(f"local:{tmp_path}") == "hello\n\nworld\n\n!"
    assert text_lib.load_text(f"local:{tmp_path}", recursive=False) == "hello\n\nworld"
    assert text_lib.load_text(f"local:{tmp_path}", suffix=".py") == "x = 1"
    assert text_lib.load_text(f"local:{tmp_path / 'a.txt'}") == "hello"
    tok = text_lib.tokenizer("bytes")
    assert tok.vocab_size == 256 and text_lib.encode("hi", tok).tolist() == [104, 105]
    assert text_lib.text_fingerprint("hello") == "2cf24dba5fb0a30e"
    with pytest.raises(ValueError, match="unknown text source 'c4'"):
        text_lib.load_text("c4")
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        text_lib.load_text(f"local:{tmp_path / 'missing'}")


def test_calibration_batches_are_seeded_windows():
    tokens = np.arange(1000, dtype=np.int32)
    a = language.calibration_batch(tokens, language.Calibration(samples=6, length=16, seed=3))
    b = language.calibration_batch(tokens, language.Calibration(samples=6, length=16, seed=3))
    c = language.calibration_batch(tokens, language.Calibration(samples=6, length=16, seed=4))
    assert a.shape == (6, 16) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.diff(a, axis=1), np.ones((6, 15)))  # consecutive tokens
    assert language.Calibration(samples=128, length=2048, seed=0).id == "train:128x2048:seed0"
    with pytest.raises(ValueError, match="calibration samples must be a positive int"):
        language.Calibration(samples=0)


def experiment(**fields):
    base = dict(text="local:/x", text_fingerprint="0" * 16, tokenizer="bytes", model="gpt2-tiny", weights="1" * 16)
    return language.LMExperiment(**(base | fields))


def test_the_id_pins_calibration_and_protocol():
    wanda = experiment(strategy="wanda", fraction=0.5)
    assert wanda.id != experiment(strategy="wanda", fraction=0.5, calibration=language.Calibration(seed=1)).id
    assert wanda.id != experiment(strategy="wanda", fraction=0.5, protocol=Protocol(1024, 1024)).id
    assert wanda.identity()["calibration"] == "train:128x128:seed0"
    assert wanda.identity()["protocol"] == "strided:max_length=1024,stride=512"
    magnitude = experiment(strategy="layer_magnitude", fraction=0.5)  # no calibration: seeds are one experiment
    assert magnitude.id == experiment(strategy="layer_magnitude", fraction=0.5, calibration=language.Calibration(seed=1)).id
    with pytest.raises(ValueError, match="unknown strategy 'wandaa'"):
        experiment(strategy="wandaa")


MODEL = GPT2(GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2, dropout=0.0))


def tiny_apply(params, ids):
    return MODEL.apply({"params": params}, ids)


def test_an_lm_experiment_prunes_and_scores_a_gpt2():
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (300,), 0, 16), np.int32)
    protocol = Protocol(16, 8)
    dense = language.run_lm_experiment(experiment(protocol=protocol), tiny_apply, params, tokens[:200], tokens[200:],
                                       selection=Selection(classifier=None))  # fmt: skip
    assert dense["perplexity"] == pytest.approx(perplexity.perplexity(tiny_apply, params, tokens[200:], protocol))
    assert dense["scored_tokens"] == 99
    cal = language.Calibration(samples=4, length=8)
    row = language.run_lm_experiment(experiment(strategy="sparsegpt", fraction=0.5, calibration=cal, protocol=protocol),
                                     tiny_apply, params, tokens[:200], tokens[200:],
                                     selection=Selection(classifier=None))  # fmt: skip
    assert row["calibration"] == "train:4x8:seed0" and row["perplexity"] != dense["perplexity"]
    # the four dense kernels (8x24, 8x8, 8x32, 32x8: 768 entries) lose half of them
    total = sum(x.size for x in jax.tree.leaves(params))
    assert row["compression"] == pytest.approx(total / (total - 384))


def test_the_perplexity_command_prunes_and_prints_a_row(tmp_path, capsys, monkeypatch):
    """The command's plumbing, on the tiny GPT-2 above in place of the registry's 124M one."""
    import json

    from sbjax import cli

    tiny = MODEL.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    monkeypatch.setattr(language, "_lm", lambda model, weights, seed: (tiny_apply, tiny) if model == "gpt2"
                        else pytest.fail("unexpected model"))  # fmt: skip

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(map(chr, range(16))) * 4)  # bytes 0..15: the tiny model has 16 tokens
    args = ["perplexity", "--text", f"local:{corpus}", "--tokenizer", "bytes", "--max-length", "16", "--stride", "8",
            "--limit-tokens", "40", "--strategy", "nm_wanda", "--calibration-samples", "2", "--calibration-length", "8"]
    assert cli.main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["strategy"] == "nm_wanda" and row["scored_tokens"] == 39 and math.isfinite(row["perplexity"])
    assert row["calibration"] == f"local:{corpus}:2x8:seed0" and row["protocol"] == "strided:max_length=16,stride=8"
    assert row["tokenizer"] == "bytes" and len(row["id"]) == 16
    monkeypatch.undo()
    assert cli.main(["perplexity", "--model", "mlp", "--text", f"local:{corpus}", "--tokenizer", "bytes"]) == 2
    assert "is not a language model" in capsys.readouterr().err
