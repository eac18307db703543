"""Transformers: GPT-2 and ViT against their PyTorch twins (random weights), exact sizes of the full models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sbjax import models
from sbjax.models import gpt2, porting, torchfile

transformers = pytest.importorskip("transformers")  # in the `test` extra

TOL = 1e-4
TINY_GPT2 = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)


def _size(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _hf_gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**TINY_GPT2, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _tiny_gpt2():
    return gpt2.GPT2(gpt2.GPT2Config(**TINY_GPT2))


def _gpt2_parity(state_dict, torch_model, seq=16):
    ids = torch.randint(0, TINY_GPT2["vocab_size"], (2, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch_model(ids).logits.numpy()
    model = _tiny_gpt2()
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32)))
    variables = porting.from_gpt2_state_dict(state_dict, target)
    logits = np.asarray(model.apply(variables, ids.numpy().astype(np.int32)))
    assert logits.shape == expected.shape == (2, seq, TINY_GPT2["vocab_size"])
    assert np.abs(expected).max() > 0.1
    return np.abs(logits - expected).max()


def test_gpt2_parameter_count_and_layout():
    variables = models.abstract_variables("gpt2")
    assert set(variables) == {"params"}
    assert _size(variables) == 124_439_808  # Hugging Face's gpt2, the tied LM head counted once
    params = variables["params"]
    assert sorted(params) == ["h_" + str(i) for i in sorted(range(12), key=str)] + ["ln_f", "wpe", "wte"]
    shapes = jax.tree.map(lambda s: s.shape, params["h_0"])
    assert shapes["attn"]["c_attn"]["kernel"] == (768, 2304) and shapes["attn"]["c_proj"]["kernel"] == (768, 768)
    assert shapes["mlp"]["c_fc"]["kernel"] == (768, 3072) and shapes["mlp"]["c_proj"]["kernel"] == (3072, 768)
    assert params["wte"]["embedding"].shape == (50257, 768) and params["wpe"]["embedding"].shape == (1024, 768)


def test_gpt2_registry_entry():
    assert models.task("gpt2") == "lm" and models.task("resnet20") == "image"
    assert models.input_shape("gpt2") == (1024,) and models.num_classes("gpt2") == 50257
    assert models.example_input("gpt2", (8,), 3) == jax.ShapeDtypeStruct((3, 8), jnp.int32)
    model = models.create("gpt2", 101)  # num_classes is the vocabulary size
    assert model.config.vocab_size == 101 and model.config.n_layer == 12
    models.check_input_shape("gpt2", (1024,), (128,))  # any shorter sequence is fine
    with pytest.raises(ValueError, match="built for inputs of shape"):
        models.check_input_shape("gpt2", (1024,), (2048,))


def test_gpt2_parity_with_transformers_state_dict():
    torch_model = _hf_gpt2()
    assert _gpt2_parity(torch_model.state_dict(), torch_model) <= TOL


def test_gpt2_parity_from_a_safetensors_file(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    torch_model = _hf_gpt2(seed=3)
    # the hub's layout: GPT2Model keys (no "transformer." prefix, no lm_head) plus the causal-mask buffers
    tensors = {k[len("transformer."):]: v.numpy() for k, v in torch_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(TINY_GPT2["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    loaded = torchfile.load_weights(path)
    assert sorted(loaded) == sorted(tensors) and all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
    assert _gpt2_parity(loaded, torch_model) <= TOL


def test_gpt2_causal():
    model = _tiny_gpt2()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    ids = jnp.arange(8, dtype=jnp.int32)[None]
    changed = ids.at[0, 5].set(40)
    a, b = model.apply(variables, ids), model.apply(variables, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # the future never leaks into the past
    assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


def test_gpt2_porting_errors():
    torch_model = _hf_gpt2()
    model = _tiny_gpt2()
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    state = dict(torch_model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(porting.PortingError, match="lm_head.weight differs from wte.weight"):
        porting.from_gpt2_state_dict(state, target)
    state = {k: v for k, v in torch_model.state_dict().items() if "h.1.mlp.c_fc" not in k}
    with pytest.raises(porting.PortingError, match=r"2 missing key\(s\): h.1.mlp.c_fc.bias, h.1.mlp.c_fc.weight"):
        porting.from_gpt2_state_dict(state, target)


def test_gpt2_rejects_float_or_too_long_inputs():
    model = _tiny_gpt2()
    with pytest.raises(ValueError, match="int token ids of shape"):
        model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="exceeds n_positions=32"):
        model.init(jax.random.key(0), jnp.zeros((1, 33), jnp.int32))


TINY_VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


def _torch_vit(seed=0, num_classes=10, **sizes):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(**(sizes or TINY_VIT), num_classes=num_classes).eval()
    with torch.no_grad():  # torchvision zeroes the head and the class token: make them count
        model.heads.head.weight.normal_(0, 0.5)
        model.heads.head.bias.normal_(0, 0.5)
        model.class_token.normal_(0, 1.0)
    return model


def test_vit_b_16_parameter_count_and_layout():
    variables = models.abstract_variables("vit_b_16")
    assert _size(variables) == 86_567_656  # torchvision's vit_b_16
    params = variables["params"]
    assert sorted(params) == ["class_token", "conv_proj", "encoder", "heads"]
    block = jax.tree.map(lambda s: s.shape, params["encoder"]["layers"]["encoder_layer_11"])
    assert block["self_attention"]["in_proj"]["kernel"] == (768, 2304)
    assert block["mlp_0"]["kernel"] == (768, 3072) and block["mlp_3"]["kernel"] == (3072, 768)
    assert params["encoder"]["pos_embedding"].shape == (1, 197, 768)
    assert models.classifier("vit_b_16") == "heads/head" and models.spec("vit_b_16").exclude == ("conv_proj",)


def test_vit_cifar_parameter_count():
    # 192*(3*16) + 192 conv, 192 class token, 65*192 positions, 6 blocks, final norm, 192*10 + 10 head
    block = 2 * 2 * 192 + (192 * 576 + 576) + (192 * 192 + 192) + (192 * 768 + 768) + (768 * 192 + 192)
    expected = 192 * 48 + 192 + 192 + 65 * 192 + 6 * block + 2 * 192 + 1930
    assert _size(models.abstract_variables("vit_cifar")) == expected
    import torchvision

    twin = torchvision.models.VisionTransformer(32, 4, 6, 3, 192, 768, num_classes=10)
    assert expected == sum(p.numel() for p in twin.parameters())


def test_vit_parity_with_torchvision():
    from sbjax.models import vit

    torch_model = _torch_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch_model(x).numpy()
    model = vit.ViT(vit.ViTConfig(**TINY_VIT), num_classes=10)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    variables = porting.from_vit_state_dict(torch_model.state_dict(), target)
    logits = np.asarray(model.apply(variables, x.permute(0, 2, 3, 1).numpy()))
    assert logits.shape == expected.shape == (2, 10) and np.abs(expected).max() > 0.1
    assert np.abs(logits - expected).max() <= TOL


def test_vit_port_state_dict_uses_the_registry_layout():
    import torchvision

    torch_model = torchvision.models.VisionTransformer(32, 4, 6, 3, 192, 768, num_classes=10)
    variables = porting.port_state_dict("vit_cifar", torch_model.state_dict(), models.abstract_variables("vit_cifar"))
    kernel = variables["params"]["encoder"]["layers"]["encoder_layer_5"]["self_attention"]["in_proj"]["kernel"]
    np.testing.assert_array_equal(kernel, torch_model.encoder.layers[5].self_attention.in_proj_weight.detach().numpy().T)
    with pytest.raises(porting.PortingError, match="missing key"):
        porting.port_state_dict("resnet20", torch_model.state_dict(), models.abstract_variables("resnet20"))
