"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), Hugging Face layout.

Module names mirror the keys of Hugging Face's ``GPT2LMHeadModel`` state_dict without its
``transformer.`` prefix (``transformer.h.0.attn.c_attn.weight`` is ``h_0/attn/c_attn/kernel``), and
dense kernels are stored ``(in, out)`` as Flax does, which is also the layout of Hugging Face's
``Conv1D`` weights, so they port as they are (``sbjax.models.porting.from_gpt2_state_dict``).

The model takes int token ids of shape ``(batch, seq)`` (``seq <= n_positions``) and returns
next-token logits of shape ``(batch, seq, vocab_size)``. The LM head is tied to the token
embedding: ``logits = ln_f(h) @ wte.T``, with no parameter of its own. Attention is written as two
explicit matrix products (``q @ k^T`` and ``p @ v``) so jaxpr-based metrics count them as
products of two activations.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GPT2", "GPT2Config", "GPT2_SMALL", "causal_probs"]


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Sizes of a GPT-2 model (the fields of Hugging Face's ``GPT2Config`` that matter here).

    Attributes:
        vocab_size: tokens of the vocabulary (and rows of the tied LM head).
        n_positions: the longest sequence (rows of the position embedding).
        n_embd: width of the residual stream.
        n_layer: transformer blocks.
        n_head: attention heads per block (``n_embd % n_head == 0``).
        n_inner: hidden units of each MLP; ``None`` means ``4 * n_embd``.
        layer_norm_epsilon: the epsilon of every layer norm.
        dropout: dropout rate of embeddings, attention probabilities and residual branches
            (Hugging Face's ``embd_pdrop = attn_pdrop = resid_pdrop``); active only with ``train=True``.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.1

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


#: ``gpt2`` of the Hugging Face hub: 124,439,808 parameters (tied embeddings counted once).
GPT2_SMALL = GPT2Config()


def causal_probs(q: jax.Array, k: jax.Array) -> jax.Array:
    """Causal attention probabilities ``(batch, heads, seq, seq)`` of ``(batch, seq, heads, head_dim)`` q, k.

    The scores are one explicit matrix product, ``q @ k^T / sqrt(head_dim)``.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    seq = q.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    return jax.nn.softmax(scores, axis=-1)


def _layer_norm(config: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, name=name)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.normal(0.02), name=name)


class Attention(nn.Module):
    """Multi-head causal self-attention: fused ``c_attn`` (q, k, v), then ``c_proj``."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        batch, seq, width = x.shape
        head_dim = width // c.n_head
        qkv = _dense(3 * width, "c_attn")(x)
        q, k, v = (t.reshape(batch, seq, c.n_head, head_dim) for t in jnp.split(qkv, 3, axis=-1))
        probs = causal_probs(q, k)
        probs = nn.Dropout(c.dropout, deterministic=not train)(probs)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq, width)
        return nn.Dropout(c.dropout, deterministic=not train)(_dense(width, "c_proj")(out))


class MLP(nn.Module):
    """``c_fc`` to ``n_inner`` units, GELU (tanh approximation, Hugging Face's ``gelu_new``), ``c_proj``."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        hidden = c.n_inner or 4 * c.n_embd
        x = jax.nn.gelu(_dense(hidden, "c_fc")(x), approximate=True)
        return nn.Dropout(c.dropout, deterministic=not train)(_dense(c.n_embd, "c_proj")(x))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    config: GPT2Config

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x + Attention(self.config, name="attn")(_layer_norm(self.config, "ln_1")(x), train)
        return x + MLP(self.config, name="mlp")(_layer_norm(self.config, "ln_2")(x), train)


class GPT2(nn.Module):
    """GPT-2 language model: token ids ``(batch, seq)`` -> next-token logits ``(batch, seq, vocab_size)``.

    >>> model = GPT2(GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
    >>> model.apply(variables, jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 11)
    """

    config: GPT2Config = GPT2_SMALL

    @nn.compact
    def __call__(self, ids: jax.Array, train: bool = False) -> jax.Array:
        c = self.config
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"GPT2 takes int token ids of shape (batch, seq), got {ids.dtype} {ids.shape}")
        if ids.shape[1] > c.n_positions:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds n_positions={c.n_positions}")
        wte = nn.Embed(c.vocab_size, c.n_embd, embedding_init=nn.initializers.normal(0.02), name="wte")
        wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=nn.initializers.normal(0.01), name="wpe")
        x = wte(ids) + wpe(jnp.arange(ids.shape[1])[None, :])
        x = nn.Dropout(c.dropout, deterministic=not train)(x)
        for i in range(c.n_layer):
            x = Block(c, name=f"h_{i}")(x, train)
        return wte.attend(_layer_norm(c, "ln_f")(x))
