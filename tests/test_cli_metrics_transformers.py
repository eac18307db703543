"""`sbjax metrics` on the transformers: exact sizes of the PyTorch models, MACs with attention, per sequence."""

import json

import pytest

from sbjax import cli


def _json(capsys, *argv):
    assert cli.main(["metrics", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vit_b_16_counts_like_torchvision_with_attention_matmuls(capsys):
    d = _json(capsys, "--model", "vit_b_16")
    assert d["params_total"] == 86_567_656 and d["untraced"] == []
    tokens, e = 197, 768
    projections = tokens * (e * 3 * e + e * e + 2 * e * 3072)
    attention = [layer for layer in d["layers"] if layer["kind"] == "matmul"]
    assert len(attention) == 24 and all(layer["macs"] == tokens * tokens * e for layer in attention)
    assert not any(layer["prunable"] for layer in attention)
    patches = 196 * 768 * 16 * 16 * 3
    assert d["macs"] == patches + 12 * (projections + 2 * tokens * tokens * e) + 768 * 1000 == 17_563_828_224


def test_gpt2_per_sequence_at_seq_len_with_heads(capsys):
    d = _json(capsys, "--model", "gpt2", "--seq-len", "64", "--heads")
    assert d["params_total"] == 124_439_808  # the tied LM head counted once
    assert (d["seq_len"], d["input_shape"], d["num_classes"]) == (64, [64], 50257)
    per_layer = 64 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 2 * 64 * 64 * 768
    assert d["macs"] == 12 * per_layer + 64 * 768 * 50257
    assert len(d["heads"]) == 144 and d["heads"][0] == {
        "layer": "h_0/attn", "head": 0, "params": 768 * 192 + 64 * 768, "nonzero": 768 * 192 + 64 * 768,
        "density": 1.0, "macs": 64 * (768 * 192 + 64 * 768) + 2 * 64 * 64 * 64,
        "macs_nonzero": 64 * (768 * 192 + 64 * 768) + 2 * 64 * 64 * 64,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "gpt2", "--input-shape", "32,32,3"], "--input-shape is for image models; gpt2 reads token ids"),
        (["--model", "gpt2", "--seq-len", "2048"], "--seq-len 2048 must be between 1 and gpt2's context length 1024"),
        (["--model", "resnet20", "--seq-len", "8"], "--seq-len is for language models; resnet20 reads images"),
        (["--model", "gpt2", "--strategy", "global_magnitude", "--compression", "2"], "gpt2 is a language model"),
        (["--model", "resnet20", "--strategy", "random", "--compression", "2", "--seq-len", "8"],
         "--seq-len is for language models; resnet20 reads images"),
        (["--model", "resnet20", "--heads"], "--heads is for models with attention; resnet20 has none"),
    ],
)
def test_clear_errors(capsys, argv, message):
    assert cli.main(["metrics", *argv]) != 0
    assert message in capsys.readouterr().err


def test_heads_table_in_text_mode(capsys):
    assert cli.main(["metrics", "--model", "vit_cifar", "--heads"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].endswith("/self_attention")]
    assert out.startswith("vit_cifar (32,32,3, 10 classes)")
    params = 192 * 3 * 64 + 64 * 192  # head dim 64: its q, k, v columns and its output rows
    assert len(rows) == 18 and rows[4][:3] == ["encoder/layers/encoder_layer_1/self_attention", "1", f"{params:,}"]
    per_head = 65 * params + 2 * 65 * 65 * 64  # 65 tokens
    assert all(row[4] == f"{per_head:,}" for row in rows)
