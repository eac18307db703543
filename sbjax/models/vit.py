"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), torchvision's layout.

Module names mirror torchvision's ``VisionTransformer`` state_dict (``encoder.layers.encoder_layer_0
.self_attention.in_proj_weight`` is ``encoder/layers/encoder_layer_0/self_attention/in_proj/kernel``,
``...mlp.3.bias`` is ``.../mlp_3/bias``), so its weights port one-to-one
(``sbjax.models.porting.from_vit_state_dict``). Inputs are NHWC float images of exactly
``image_size`` (the position embedding has one row per patch); outputs are logits.

Attention is written as two explicit matrix products (``q @ k^T`` and ``p @ v``), so jaxpr-based
metrics count them as products of two activations.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated

__all__ = ["ViT", "ViTConfig", "VIT_B_16", "VIT_CIFAR", "self_attention_probs"]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Sizes of a ViT (the arguments of torchvision's ``VisionTransformer``)."""

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be a multiple of num_heads ({self.num_heads})")

    @property
    def seq_len(self) -> int:
        """Tokens per image: one per patch plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


#: torchvision's ``vit_b_16``: 86,567,656 parameters with 1000 classes.
VIT_B_16 = ViTConfig()
#: A small ViT for 32x32 inputs: 4x4 patches (64 tokens + the class token), 6 layers of width 192, 3 heads.
VIT_CIFAR = ViTConfig(image_size=32, patch_size=4, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=768)

_XAVIER = nn.initializers.xavier_uniform()


def self_attention_probs(q: jax.Array, k: jax.Array) -> jax.Array:
    """Softmax attention probabilities ``(batch, heads, seq, seq)`` of ``(batch, seq, heads, head_dim)`` q, k."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return jax.nn.softmax(scores, axis=-1)


class SelfAttention(nn.Module):
    """torchvision's ``nn.MultiheadAttention`` (batch first): fused ``in_proj`` (q, k, v), ``out_proj``."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, seq, width = x.shape
        qkv = nn.Dense(3 * width, kernel_init=_XAVIER, name="in_proj")(x)
        q, k, v = (t.reshape(batch, seq, self.num_heads, -1) for t in jnp.split(qkv, 3, axis=-1))
        out = jnp.einsum("bhqk,bkhd->bqhd", self_attention_probs(q, k), v).reshape(batch, seq, width)
        return nn.Dense(width, name="out_proj")(out)


class EncoderBlock(nn.Module):
    """``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` with an exact-GELU MLP (``mlp_0``, ``mlp_3``)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_epsilon)
        x = x + SelfAttention(c.num_heads, name="self_attention")(norm(name="ln_1")(x))
        y = jax.nn.gelu(nn.Dense(c.mlp_dim, name="mlp_0")(norm(name="ln_2")(x)), approximate=False)
        return x + nn.Dense(c.hidden_dim, name="mlp_3")(y)


class _Layers(nn.Module):
    """torchvision's ``encoder.layers`` (an ``OrderedDict`` of ``encoder_layer_<i>``)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_layers):
            x = EncoderBlock(self.config, name=f"encoder_layer_{i}")(x)
        return x


class Encoder(nn.Module):
    """Adds the position embedding, runs the blocks, and a final layer norm (``ln``)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, c.seq_len, c.hidden_dim))
        x = _Layers(c, name="layers")(x + pos)
        return nn.LayerNorm(epsilon=c.layer_norm_epsilon, name="ln")(x)


class _Heads(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


class ViT(nn.Module):
    """ViT classifier: ``conv_proj`` patch embedding, class token, encoder, ``heads/head`` on the class token.

    ``train`` is accepted for the registry's calling convention; the model has no dropout or
    batch norm, so it changes nothing.
    """

    config: ViTConfig = VIT_B_16
    num_classes: int = 1000
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        c = self.config
        if x.shape[1:3] != (c.image_size, c.image_size):
            raise ValueError(f"ViT built for {c.image_size}x{c.image_size} images, got input of shape {x.shape}")
        fan_in = 3 * c.patch_size**2
        init = nn.initializers.truncated_normal(math.sqrt(1 / fan_in))
        x = layers.conv(c.hidden_dim, c.patch_size, c.patch_size, padding=0, use_bias=True, kernel_init=init,
                        conv_general_dilated=self.conv_general_dilated, name="conv_proj")(x)  # fmt: skip
        x = x.reshape(x.shape[0], -1, c.hidden_dim)  # row-major patches, as torchvision flattens them
        token = self.param("class_token", nn.initializers.zeros, (1, 1, c.hidden_dim))
        x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, c.hidden_dim)), x], axis=1)
        x = Encoder(c, name="encoder")(x)
        return _Heads(self.num_classes, name="heads")(x[:, 0])
